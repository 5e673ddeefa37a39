//! `ferrite tokenize`: a model's token ids for a text, as llama.cpp's `llama-tokenize` prints them.
//! Reads only the GGUF metadata (the vocabulary), never the weights.

use super::files;
use super::ModelArgs;
use anyhow::Result;
use ferrite::catalogue;
use ferrite::gguf::GgufFile;
use ferrite::tokenizer::{Options, Tokenizer};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "Output: one line per token, `ID<TAB>PIECE`; in the piece, \\ tab newline and carriage return \
are written \\\\ \\t \\n \\r, other control characters \\u{N}, bytes that are not UTF-8 \\xNN. With --ids: one JSON \
array on one line. Unlike llama-tokenize, TEXT is taken as is (no escape processing).")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the ids as one JSON array on one line (as `llama-tokenize --ids`)
    #[arg(long)]
    pub ids: bool,
    /// Do not add BOS even if the model asks for it
    #[arg(long = "no-bos")]
    pub no_bos: bool,
    /// Treat special-token texts such as <|im_start|> as plain text
    #[arg(long = "no-parse-special")]
    pub no_parse_special: bool,
    /// Print only the number of tokens
    #[arg(long)]
    pub count: bool,
    /// Pre-tokenizer to use instead of the file's tokenizer.ggml.pre (gpt2 vocabularies)
    #[arg(long = "tokenizer-pre", value_name = "NAME")]
    pub tokenizer_pre: Option<String>,
    /// The text; `-` or nothing reads standard input (all of it, byte for byte)
    #[arg(value_name = "TEXT", conflicts_with_all = ["prompt", "file"])]
    pub text: Option<OsString>,
    /// The text, as llama-tokenize's -p (the same as TEXT)
    #[arg(short = 'p', long = "prompt", value_name = "TEXT", conflicts_with = "file")]
    pub prompt: Option<OsString>,
    /// Read the text from a file (a regular file of at most 256 MiB), as llama-tokenize's -f
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Read the text from standard input (the default without TEXT, -p or -f; as llama-tokenize's)
    #[arg(long, conflicts_with_all = ["text", "prompt", "file"])]
    pub stdin: bool,
}

/// The most text `tokenize` reads from a file or standard input: far beyond any context, yet a
/// bound, so `/dev/zero` or an endless pipe is refused instead of filling memory.
const TEXT_CAP: u64 = 256 << 20;

fn read_text(a: &Args) -> Result<String> {
    const HINT: &str = "split the text";
    if let Some(f) = &a.file {
        return files::utf8(files::read_capped(f, TEXT_CAP, "text file", HINT)?, &f.display().to_string());
    }
    match a.text.as_ref().or(a.prompt.as_ref()) {
        Some(t) if t != "-" => files::utf8(t.as_encoded_bytes().to_vec(), "TEXT"),
        _ => files::utf8(files::read_stdin_capped(TEXT_CAP, "text", HINT)?, "standard input"),
    }
}

/// A piece on one line: escapes that keep the line structure and show bytes that are not text.
fn escape_piece(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

pub fn main(a: Args) -> Result<()> {
    let path = catalogue::resolve(a.model.model.as_deref())?;
    let text = read_text(&a)?;
    let file = GgufFile::open(&path)?;
    let tok = Tokenizer::from_gguf_with(&file, Options { pre: a.tokenizer_pre, ..Options::default() })?;
    // as llama-tokenize: BOS (and EOS, if asked for) only when the model adds BOS
    let add_special = tok.add_bos() && !a.no_bos;
    let ids = tok.encode(&text, add_special, !a.no_parse_special)?;
    if a.count {
        return super::output::println(&ids.len().to_string());
    }
    if a.ids {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        return super::output::println(&format!("[{}]", list.join(", ")));
    }
    let mut out = String::new();
    for &id in &ids {
        out.push_str(&format!("{id}\t{}\n", escape_piece(&tok.token_to_piece(id, true))));
    }
    super::output::print(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_stay_on_one_line() {
        assert_eq!(escape_piece(b"a\tb\nc\\"), "a\\tb\\nc\\\\");
        assert_eq!(escape_piece(&[0xe4, b'x']), "\\xe4x");
        assert_eq!(escape_piece("\u{1b}é".as_bytes()), "\\u{1b}é");
    }

    #[test]
    fn bad_utf8_names_the_offset() {
        let e = files::utf8(vec![b'o', b'k', 0xff], "TEXT").unwrap_err();
        assert_eq!(ferrite::error::exit_code(&e), 2);
        assert!(e.to_string().contains("byte offset 2"), "{e}");
    }
}
