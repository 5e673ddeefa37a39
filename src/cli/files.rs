//! Files and standard input named by the user, read defensively: only regular files are opened
//! (a FIFO nobody writes to would block the open forever, `/dev/zero` never ends), and every read
//! is bounded by a byte cap decided before reading, so memory stays bounded and a hostile input is
//! a one-line BadInput (exit 2) within milliseconds.

use anyhow::Result;
use std::io::Read;
use std::path::Path;

/// Bytes of prompt text allowed per token of context. Real text averages 3–5 bytes a token and
/// even whitespace runs or long words rarely pass 16, so a prompt over this many bytes a token
/// cannot fit the context anyway; refusing it from its size saves tokenizing megabytes first.
pub const PROMPT_BYTES_PER_TOKEN: u64 = 16;

/// The smallest prompt cap, so that a small `-c` still reports an over-long prompt in tokens
/// (the clearer message) rather than in bytes.
const PROMPT_CAP_FLOOR: u64 = 64 << 10;

/// The byte cap of a prompt (argument, file or stdin, each) for `-c` (None or 0: the model's
/// default context, which is at most `DEFAULT_CTX_CAP`).
pub fn prompt_cap(ctx_size: Option<u32>) -> u64 {
    let n_ctx = match ctx_size {
        Some(n) if n > 0 => n,
        _ => ferrite::decoder::DEFAULT_CTX_CAP,
    };
    (n_ctx as u64 * PROMPT_BYTES_PER_TOKEN).max(PROMPT_CAP_FLOOR)
}

/// A size for messages: bytes, or MiB for large ones.
pub fn size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{n} bytes")
    }
}

/// Checks, from its metadata and without opening it, that `path` is a regular file of at most
/// `cap` bytes (`what` names it in messages, `hint` says how to raise the cap). Symlinks are
/// followed, as an open would.
pub fn check_regular(path: &Path, cap: u64, what: &str, hint: &str) -> Result<std::fs::Metadata> {
    let md = std::fs::metadata(path).map_err(|e| ferrite::bad_input!("{}: {}", path.display(), io_message(&e)))?;
    if md.is_dir() {
        ferrite::bail_input!("{}: is a directory, cannot be a {what}", path.display());
    }
    if !md.is_file() {
        ferrite::bail_input!("{}: not a regular file ({}), cannot be a {what}", path.display(), ferrite::gguf::file_kind(&md));
    }
    if md.len() > cap {
        ferrite::bail_input!("{}: {} is larger than a {what} can be here (at most {}: {hint})", path.display(), size(md.len()), size(cap));
    }
    Ok(md)
}

/// Reads a regular file of at most `cap` bytes (see `check_regular`). The read itself is bounded
/// too, in case the file grows between the check and the read.
pub fn read_capped(path: &Path, cap: u64, what: &str, hint: &str) -> Result<Vec<u8>> {
    check_regular(path, cap, what, hint)?;
    let f = std::fs::File::open(path).map_err(|e| ferrite::bad_input!("{}: {}", path.display(), io_message(&e)))?;
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf).map_err(|e| ferrite::bad_input!("{}: {}", path.display(), io_message(&e)))?;
    if buf.len() as u64 > cap {
        ferrite::bail_input!("{}: grew past {} while being read, larger than a {what} can be here ({hint})", path.display(), size(cap));
    }
    Ok(buf)
}

/// Reads standard input (a `what`, as `read_capped` names it) up to `cap` bytes: more is refused
/// as soon as the cap is crossed (stdin may be `/dev/zero` or an endless pipe, so its size cannot
/// be known first).
pub fn read_stdin_capped(cap: u64, what: &str, hint: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin().lock().take(cap + 1).read_to_end(&mut buf).map_err(|e| anyhow::Error::new(e).context("reading standard input"))?;
    if buf.len() as u64 > cap {
        ferrite::bail_input!("standard input is larger than a {what} can be here (at most {}: {hint})", size(cap));
    }
    Ok(buf)
}

/// UTF-8 text from bytes, naming the offset of the first invalid byte.
pub fn utf8(bytes: Vec<u8>, name: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        ferrite::bad_input!("{name} is not valid UTF-8: invalid byte 0x{:02x} at byte offset {at}", e.as_bytes()[at])
    })
}

/// An I/O error's message without the "(os error N)" suffix (one plain line for stderr).
pub fn io_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_cap_follows_the_context() {
        assert_eq!(prompt_cap(None), 4096 * 16);
        assert_eq!(prompt_cap(Some(0)), 4096 * 16);
        assert_eq!(prompt_cap(Some(32768)), 32768 * 16);
        assert_eq!(prompt_cap(Some(256)), 64 << 10, "the floor");
    }

    #[test]
    fn special_files_are_refused_from_their_metadata() {
        let e = check_regular(Path::new("/dev/zero"), 100, "prompt file", "").unwrap_err();
        assert!(e.to_string().contains("not a regular file (a character device), cannot be a prompt file"), "{e}");
        let e = check_regular(Path::new("/"), 100, "prompt file", "").unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = check_regular(Path::new("/no/such/file"), 100, "prompt file", "").unwrap_err();
        assert!(e.to_string().ends_with("No such file or directory"), "{e}");
    }
}
