//! `ferrite tokenize`: a model's token ids for a text, as llama.cpp's `llama-tokenize` prints them.
//! Reads only the GGUF metadata (the vocabulary), never the weights.

use super::ModelArgs;
use anyhow::{Context, Result};
use ferrite::gguf::GgufFile;
use ferrite::tokenizer::{Options, Tokenizer};
use ferrite::{bad_input, catalogue};
use std::ffi::OsString;
use std::io::Read;

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
    #[arg(value_name = "TEXT")]
    pub text: Option<OsString>,
}

/// The input as UTF-8; otherwise a BadInput error naming the first bad byte's offset.
fn utf8(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        bad_input!("{what} is not valid UTF-8: invalid byte 0x{:02x} at byte offset {at}", e.as_bytes()[at])
    })
}

fn read_text(arg: Option<OsString>) -> Result<String> {
    match arg {
        Some(a) if a != "-" => utf8(a.into_encoded_bytes(), "TEXT"),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin().lock().read_to_end(&mut buf).context("reading standard input")?;
            utf8(buf, "standard input")
        }
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
    let text = read_text(a.text)?;
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
        let e = utf8(vec![b'o', b'k', 0xff], "TEXT").unwrap_err();
        assert_eq!(ferrite::error::exit_code(&e), 2);
        assert!(e.to_string().contains("byte offset 2"), "{e}");
    }
}
