//! Token ids back to text: the bytes of one token (llama.cpp's `token_to_piece`), the
//! detokenizer's space clean-up, and a streaming decoder that emits text as soon as it is final.
//!
//! Source: `token_to_piece` and `detokenize` in llama.cpp's src/llama-vocab.cpp. A stream of ids
//! decodes to exactly what decoding them all at once gives: the clean-up passes and UTF-8
//! assembly hold back only the few bytes whose fate depends on what comes next.

use super::rules::attr;
use super::Tokenizer;
use std::ops::Deref;

/// The GPT-2 byte-level alphabet inverted: code point (< 0x144) → byte.
pub(crate) fn byte_level_decoder() -> Vec<Option<u8>> {
    let mut table = vec![None; 0x144];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let cp = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        table[cp as usize] = Some(b as u8);
    }
    table
}

impl Tokenizer {
    /// The bytes of token `id`, as llama.cpp's `token_to_piece` (no space stripping): control and
    /// unknown tokens only when `render_special`; user-defined tokens always; byte tokens as their
    /// byte; ids outside the vocabulary give nothing.
    pub fn token_to_piece(&self, id: u32, render_special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        let a = self.attrs[id as usize];
        if !render_special && a & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return Vec::new();
        }
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            return text.as_bytes().to_vec();
        }
        if a & attr::NORMAL != 0 {
            return match self.byte_level.as_deref() {
                None => text.replace('\u{2581}', " ").into_bytes(),
                Some(table) => byte_level_piece(text, table),
            };
        }
        if a & attr::BYTE != 0 {
            return crate::gguf::vocab::parse_byte_token(text).map(|b| vec![b]).unwrap_or_default();
        }
        Vec::new()
    }

    /// Text of `ids` as llama.cpp's `llama_detokenize(remove_special = false, unparse_special =
    /// render_special)`: with `add_space_prefix` the first token loses one leading space, and
    /// vocabularies with `clean_spaces` drop spaces before punctuation and contractions. Bytes
    /// that do not form UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.token_to_piece(id, render_special);
            let strip = i == 0 && self.add_space_prefix && piece.first() == Some(&b' ');
            bytes.extend_from_slice(&piece[strip as usize..]);
        }
        if self.clean_spaces {
            bytes = clean_spaces(&bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A normal token of a byte-level vocabulary: each character names one byte; a character outside
/// the alphabet is written out as llama.cpp's `llama_decode_text` does.
fn byte_level_piece(text: &str, table: &[Option<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match table.get(c as usize).copied().flatten() {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// llama.cpp's `clean_spaces` post-processing, three passes over the bytes:
/// 1. a space before `?`, `!`, `.` or `,` goes;
/// 2. a lone apostrophe between spaces (" ' ") loses both spaces, and the byte after it no
///    longer counts as preceded by a space;
/// 3. a space before `'s`, `'m`, `'re` or `'ve` goes.
pub(crate) fn clean_spaces(bytes: &[u8]) -> Vec<u8> {
    let mut pass = [Pass::new(1), Pass::new(2), Pass::new(3)];
    let mut out = Vec::with_capacity(bytes.len());
    run_passes(&mut pass, bytes, true, &mut out);
    out
}

fn run_passes(passes: &mut [Pass; 3], input: &[u8], finish: bool, out: &mut Vec<u8>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    passes[0].feed(input, finish, &mut a);
    passes[1].feed(&a, finish, &mut b);
    passes[2].feed(&b, finish, out);
}

/// One clean-up pass as a stream: it decides a byte once the bytes it looks ahead at have come
/// (or the stream has ended), and keeps its last output byte back because the next decision may
/// delete it.
#[derive(Clone, Debug)]
struct Pass {
    which: u8,
    /// Input bytes not yet decided.
    pending: Vec<u8>,
    /// Whether a byte was decided already (the first byte is never examined).
    started: bool,
    /// The byte before the next one, as the pass sees it (None: the position was blanked).
    prev: Option<u8>,
    /// Skip the next input byte (pass 2 swallowed it).
    skip: bool,
    held: Option<u8>,
}

impl Pass {
    fn new(which: u8) -> Pass {
        Pass { which, pending: Vec::new(), started: false, prev: None, skip: false, held: None }
    }

    /// Bytes of look-ahead a decision needs.
    fn lookahead(&self) -> usize {
        match self.which {
            1 => 0,
            2 => 1,
            _ => 2,
        }
    }

    fn feed(&mut self, input: &[u8], finish: bool, out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        let mut i = 0;
        while i < self.pending.len() && (finish || i + self.lookahead() < self.pending.len()) {
            let x = self.pending[i];
            if self.skip {
                self.skip = false;
                self.prev = None;
                i += 1;
                continue;
            }
            let next = |k: usize| self.pending.get(i + k).copied();
            let after_space = self.started && self.prev == Some(b' ');
            let drop_prev = after_space
                && match self.which {
                    1 => matches!(x, b'?' | b'!' | b'.' | b','),
                    2 => x == b'\'' && next(1) == Some(b' '),
                    _ => x == b'\'' && matches!((next(1), next(2)), (Some(b's' | b'm'), _) | (Some(b'r' | b'v'), Some(b'e'))),
                };
            if drop_prev {
                self.held = None;
                if self.which == 2 {
                    self.skip = true;
                }
            }
            if let Some(h) = self.held.take() {
                out.push(h);
            }
            self.held = Some(x);
            self.prev = Some(x);
            self.started = true;
            i += 1;
        }
        self.pending.drain(..i);
        if finish {
            out.extend(self.held.take());
        }
    }
}

/// Turns ids into text one at a time: each call returns the text that became final, never half
/// a character; the concatenation of all returns plus [`StreamDecoder::finish`] equals
/// [`Tokenizer::decode`] of all ids (or, for a continuation, the pieces of the ids concatenated).
pub struct StreamDecoder<T: Deref<Target = Tokenizer>> {
    tok: T,
    render_special: bool,
    first: bool,
    passes: Option<[Pass; 3]>,
    utf8: Vec<u8>,
}

impl<T: Deref<Target = Tokenizer>> StreamDecoder<T> {
    /// A decoder equal to [`Tokenizer::decode`] over the whole stream. `tok`: a reference, or an
    /// `Rc` for a decoder that outlives the caller's borrow (one per sequence of an engine).
    pub fn new(tok: T, render_special: bool) -> StreamDecoder<T> {
        let (first, clean) = (tok.add_space_prefix, tok.clean_spaces);
        StreamDecoder { tok, render_special, first, passes: clean.then(|| [Pass::new(1), Pass::new(2), Pass::new(3)]), utf8: Vec::new() }
    }

    /// A decoder for tokens that continue earlier text (a reply after its prompt): the first
    /// token keeps its leading space.
    pub fn continuation(tok: T, render_special: bool) -> StreamDecoder<T> {
        let mut d = StreamDecoder::new(tok, render_special);
        d.first = false;
        d
    }

    /// Adds one token; returns the text that is now final (often empty or one piece).
    pub fn push(&mut self, id: u32) -> String {
        let piece = self.tok.token_to_piece(id, self.render_special);
        let strip = std::mem::take(&mut self.first) && piece.first() == Some(&b' ');
        self.feed(&piece[strip as usize..], false)
    }

    /// Ends the stream: returns what was held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        self.feed(&[], true)
    }

    fn feed(&mut self, bytes: &[u8], finish: bool) -> String {
        match &mut self.passes {
            Some(p) => {
                let mut cleaned = Vec::new();
                run_passes(p, bytes, finish, &mut cleaned);
                self.utf8.extend_from_slice(&cleaned);
            }
            None => self.utf8.extend_from_slice(bytes),
        }
        let mut text = String::new();
        let mut at = 0;
        loop {
            match std::str::from_utf8(&self.utf8[at..]) {
                Ok(s) => {
                    text.push_str(s);
                    at = self.utf8.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.utf8[at..at + valid]).unwrap_or_default());
                    at += valid;
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{FFFD}');
                            at += n;
                        }
                        None if finish => {
                            text.push('\u{FFFD}');
                            at = self.utf8.len();
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
        self.utf8.drain(..at);
        text
    }
}
