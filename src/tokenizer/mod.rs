//! The tokenizer: a GGUF vocabulary turned into an encoder that gives exactly llama.cpp's token
//! ids (a `tokenizers::Tokenizer` for gpt2 vocabularies), plus llama.cpp's special-token handling, BOS/EOS and end-of-generation
//! rules, and a streaming detokenizer.
//!
//! Supported vocabularies: `gpt2` (byte-level BPE; the pre-tokenizer is chosen by
//! `tokenizer.ggml.pre`, see [`pre`]) and `llama` (SentencePiece-style BPE over scores with byte
//! fallback, as Llama 2, Mistral and Gemma use). Encoding runs in three steps, as in llama.cpp's
//! `llama_vocab::impl::tokenize`: split the raw text at special-token texts ([`special`]), run
//! each text piece through the `tokenizers` pipeline ([`hf`]) or the SentencePiece merger
//! ([`spm`]), and add BOS/EOS when asked.

mod decode;
mod hf;
mod pre;
mod rules;
mod special;
mod spm;
#[cfg(test)]
mod tests;

pub use decode::StreamDecoder;

use crate::gguf::vocab::VocabMeta;
use crate::gguf::GgufFile;
use crate::{bad_input, bail_input};
use anyhow::{Context, Result};
use rules::{attr, VocabKind};
use special::{Frag, Specials};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash (rustc's hasher): token texts are looked up millions of times while building.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Token text → id.
pub(crate) type TextIndex<'a> = HashMap<&'a str, u32, BuildHasherDefault<FxHasher>>;

/// Choices the file does not make (or that override it).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Use this pre-tokenizer instead of the file's `tokenizer.ggml.pre` (gpt2 vocabularies).
    pub pre: Option<String>,
    /// `general.name`: llama.cpp gives some models' special tokens strip attributes by name.
    pub model_name: Option<String>,
    /// `general.architecture`, for the same purpose.
    pub arch: Option<String>,
}

/// What splits the text between special tokens.
enum Engine {
    /// gpt2 vocabularies: the `tokenizers` pipeline (pre-tokenizer regexes, byte level, BPE).
    Hf(Box<tokenizers::Tokenizer>),
    /// llama vocabularies: SentencePiece-style merges by score.
    Spm(Box<spm::Spm>),
}

/// A vocabulary's tokenizer. Cheap to share (`&Tokenizer` is `Sync`).
pub struct Tokenizer {
    kind: VocabKind,
    engine: Engine,
    /// Token texts (an empty text reads "[EMPTY_<id>]", as in llama.cpp).
    tokens: Vec<String>,
    /// llama.cpp token attributes ([`rules::attr`]).
    attrs: Vec<u16>,
    specials: Specials,
    /// The byte-level alphabet inverted, for gpt2 vocabularies.
    byte_level: Option<Vec<Option<u8>>>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    pre: Option<String>,
    chat_template: Option<String>,
    /// How grammars see this vocabulary, made on first use ([`Tokenizer::grammar_table`]).
    grammar_table: std::sync::OnceLock<std::sync::Arc<crate::grammar::TokenTable>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("n_vocab", &self.tokens.len())
            .field("pre", &self.pre)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// The tokenizer of a GGUF file (reads only metadata, never the weights).
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer> {
        Tokenizer::from_gguf_with(f, Options::default())
    }

    /// [`Tokenizer::from_gguf`] with options; `general.name` and `general.architecture` are
    /// taken from the file unless given.
    pub fn from_gguf_with(f: &GgufFile, mut opts: Options) -> Result<Tokenizer> {
        let mut meta = VocabMeta::from_gguf(f)?;
        if opts.model_name.is_none() {
            opts.model_name = f.get_str("general.name")?.map(str::to_string);
        }
        if opts.arch.is_none() {
            opts.arch = f.get_str("general.architecture")?.map(str::to_string);
        }
        // the texts move into the tokenizer: a copy would be ~11 MB more for Gemma's vocabulary
        let texts = std::mem::take(&mut meta.tokens);
        Tokenizer::build(&meta, texts, &opts).with_context(|| format!("tokenizer of {}", f.path().display()))
    }

    /// The tokenizer of validated vocabulary metadata.
    pub fn from_vocab(meta: &VocabMeta, opts: &Options) -> Result<Tokenizer> {
        Tokenizer::build(meta, meta.tokens.clone(), opts)
    }

    /// `from_vocab` with the token texts given apart (`meta.tokens` is not read).
    fn build(meta: &VocabMeta, texts: Vec<String>, opts: &Options) -> Result<Tokenizer> {
        let kind = match meta.model.as_str() {
            "llama" => VocabKind::Spm,
            "gpt2" => VocabKind::Bpe,
            other => bail_input!(
                "tokenizer model '{other}' is not supported (ferrite reads 'gpt2' byte-level BPE and 'llama' SentencePiece vocabularies)"
            ),
        };
        let tokens: Vec<String> =
            texts.into_iter().enumerate().map(|(i, t)| if t.is_empty() { format!("[EMPTY_{i}]") } else { t }).collect();
        let mut index = TextIndex::with_capacity_and_hasher(tokens.len(), Default::default());
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = index.insert(t, i as u32) {
                // llama.cpp refuses these too (it asserts the text→id map is one-to-one)
                bail_input!("tokens {first} and {i} have the same text {t:?}");
            }
        }

        let pre_name = opts.pre.as_deref().or(meta.pre.as_deref());
        let pre_spec = match kind {
            VocabKind::Spm => None,
            VocabKind::Bpe => {
                let Some(name) = pre_name else {
                    bail_input!(
                        "the vocabulary has no tokenizer.ggml.pre, so its pre-tokenizer is unknown; name one with --tokenizer-pre (e.g. default, gpt-2, llama-bpe)"
                    );
                };
                Some(pre::lookup(name).ok_or_else(|| {
                    bad_input!(
                        "unknown pre-tokenizer '{name}' (tokenizer.ggml.pre); known: {}; override with --tokenizer-pre",
                        pre::KNOWN.join(", ")
                    )
                })?)
            }
        };

        let mut attrs: Vec<u16> = meta.token_types.iter().map(|&t| rules::attr_of(t)).collect();
        let resolved = rules::resolve(
            &rules::Vocab {
                kind,
                tokens: &tokens,
                special: &meta.special,
                no_default_bos: pre_spec.as_ref().is_some_and(|p| p.no_default_bos),
                pre: pre_name,
                model_name: opts.model_name.as_deref(),
                arch: opts.arch.as_deref(),
            },
            &mut attrs,
        );

        let (engine, byte_level, add_bos_default, add_space_prefix_default, clean_spaces) = match kind {
            VocabKind::Spm => {
                let zeros;
                let scores = match &meta.scores {
                    Some(s) => s.as_slice(),
                    None => {
                        zeros = vec![0.0; tokens.len()];
                        &zeros
                    }
                };
                (Engine::Spm(Box::new(spm::Spm::new(&tokens, &index, scores, meta.special.unk))), None, true, true, false)
            }
            VocabKind::Bpe => {
                let p = pre_spec.as_ref().expect("gpt2 has a pre-tokenizer");
                let (hf, _dropped) = hf::byte_level_bpe(&tokens, &index, &meta.merges, p)?;
                (Engine::Hf(Box::new(hf)), Some(decode::byte_level_decoder()), p.add_bos, false, p.clean_spaces)
            }
        };
        drop(index);
        let specials = Specials::new(&tokens, &attrs);
        Ok(Tokenizer {
            kind,
            engine,
            specials,
            byte_level,
            bos: resolved.bos,
            eos: resolved.eos,
            eot: resolved.eot,
            eog: resolved.eog.into_iter().collect(),
            add_bos: meta.add_bos.unwrap_or(add_bos_default),
            add_eos: meta.add_eos.unwrap_or(false),
            add_space_prefix: meta.add_space_prefix.unwrap_or(add_space_prefix_default),
            clean_spaces,
            pre: if kind == VocabKind::Bpe { pre_name.map(str::to_string) } else { None },
            chat_template: meta.chat_template.clone(),
            tokens,
            attrs,
            grammar_table: std::sync::OnceLock::new(),
        })
    }

    /// Every token's text as grammars match it, computed once (a few ms per 100k tokens).
    pub fn grammar_table(&self) -> std::sync::Arc<crate::grammar::TokenTable> {
        self.grammar_table.get_or_init(|| std::sync::Arc::new(crate::grammar::TokenTable::new(self))).clone()
    }

    /// Token ids of `text`. `add_special`: add BOS/EOS where the vocabulary asks for them.
    /// `parse_special`: special-token texts in `text` (e.g. `<|im_start|>`) become those tokens;
    /// without it only user-defined tokens are recognised, as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.encode_segments(&[(text, parse_special)], add_special)
    }

    /// Token ids of the concatenation of `segments`, each `(text, parse_special)`: special-token
    /// texts are recognised only inside segments that allow it and never across a boundary, so
    /// user text can sit between template segments without becoming control tokens. Text on both
    /// sides of a boundary is tokenized as one piece, so the ids equal those of the concatenated
    /// string whenever the user segments hold no special-token text.
    pub fn encode_segments(&self, segments: &[(&str, bool)], add_special: bool) -> Result<Vec<u32>> {
        enum Piece<'t> {
            Text(Cow<'t, str>),
            Token(u32),
        }
        let mut pieces: Vec<Piece> = Vec::new();
        let mut frags = Vec::new();
        for &(text, parse_special) in segments {
            frags.clear();
            self.specials.partition(text, parse_special, &self.tokens, &self.attrs, &mut frags);
            for f in &frags {
                match *f {
                    Frag::Token(id) => pieces.push(Piece::Token(id)),
                    Frag::Text(s, e) => match pieces.last_mut() {
                        Some(Piece::Text(prev)) => prev.to_mut().push_str(&text[s..e]),
                        _ => pieces.push(Piece::Text(Cow::Borrowed(&text[s..e]))),
                    },
                }
            }
        }

        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.push(self.bos.ok_or_else(|| bad_input!("the vocabulary asks for a BOS token but defines none"))?);
        }
        let mut prev_special = true;
        for p in &pieces {
            match p {
                Piece::Token(id) => {
                    out.push(*id);
                    prev_special = true;
                }
                Piece::Text(t) => {
                    // SentencePiece: a space before text that starts the input or follows a special token
                    if self.kind == VocabKind::Spm && self.add_space_prefix && prev_special {
                        self.encode_piece(&format!(" {t}"), &mut out)?;
                    } else {
                        self.encode_piece(t, &mut out)?;
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.push(self.eos.ok_or_else(|| bad_input!("the vocabulary asks for an EOS token but defines none"))?);
        }
        Ok(out)
    }

    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        match &self.engine {
            Engine::Hf(hf) => {
                let enc = hf.encode_fast(text, false).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
                out.extend_from_slice(enc.get_ids());
            }
            // llama.cpp's whitespace escaping (llama_escape_whitespace)
            Engine::Spm(spm) => spm.encode(&self.tokens, &text.replace(' ', "\u{2581}"), out)?,
        }
        Ok(())
    }

    /// Whether generating `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation tokens, ascending (llama.cpp's `special_eog_ids`).
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token (from the file, else found by its text).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether encoding with `add_special` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether encoding with `add_special` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// The stored text of token `id` (▁ and byte-level characters as in the vocabulary).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether `id` is a control or unknown token (rendered only on request).
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & (attr::CONTROL | attr::UNKNOWN) != 0)
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The pre-tokenizer name in use (gpt2 vocabularies).
    pub fn pre(&self) -> Option<&str> {
        self.pre.as_deref()
    }
}
