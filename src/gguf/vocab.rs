//! The tokenizer metadata of a GGUF file (`tokenizer.ggml.*`), typed and validated: list
//! lengths agree, token types are known, special ids lie inside the vocabulary, byte tokens are
//! well formed. The tokenizer is built from this (see `crate::tokenizer`).

use super::{GgufFile, Value};
use anyhow::Result;

/// Upper bound on vocabulary size (the largest real vocabularies are ~260k).
pub const MAX_VOCAB: usize = 1 << 22;

/// llama.cpp's token types (`llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    fn from_i64(v: i64) -> Option<TokenType> {
        Some(match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// Special token ids as stored in the file (None: absent or explicitly -1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// Validated tokenizer metadata.
#[derive(Clone, Debug)]
pub struct VocabMeta {
    /// `tokenizer.ggml.model`: "gpt2", "llama", "bert", "t5", "none"…
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (gpt2-style vocabularies).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Vec<TokenType>,
    /// BPE merges, each "left right".
    pub merges: Vec<String>,
    pub special: SpecialIds,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_sep: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub remove_extra_whitespaces: Option<bool>,
    pub chat_template: Option<String>,
}

impl VocabMeta {
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// Reads and validates `tokenizer.ggml.*`. Files without a vocabulary are an error.
    pub fn from_gguf(f: &GgufFile) -> Result<VocabMeta> {
        VocabMeta::read(f, true)
    }

    /// Validates `tokenizer.ggml.*` as `from_gguf` does and returns the vocabulary size, without
    /// copying the token texts and merges (a 262k-token vocabulary is ~11 MB of strings).
    pub fn check(f: &GgufFile) -> Result<usize> {
        VocabMeta::without_texts(f)?;
        Ok(f.get_str_array("tokenizer.ggml.tokens", None)?.map_or(0, <[String]>::len))
    }

    /// `from_gguf` without copying the token texts and merges (`tokens` and `merges` empty): for
    /// callers that need only the flags and special ids.
    pub fn without_texts(f: &GgufFile) -> Result<VocabMeta> {
        VocabMeta::read(f, false)
    }

    /// `from_gguf`; with `copy` false, `tokens` and `merges` are left empty.
    fn read(f: &GgufFile, copy: bool) -> Result<VocabMeta> {
        let model = f.require("tokenizer.ggml.model", f.get_str("tokenizer.ggml.model"))?.to_string();
        let pre = f.get_str("tokenizer.ggml.pre")?.map(str::to_string);
        let tokens = f.require("tokenizer.ggml.tokens", f.get_str_array("tokenizer.ggml.tokens", None))?;
        let n = tokens.len();
        if n == 0 || n > MAX_VOCAB {
            return Err(f.error("tokenizer.ggml.tokens", format!("{n} tokens is out of range 1..={MAX_VOCAB}")));
        }
        let scores = f.get_f32_array("tokenizer.ggml.scores", Some(n))?.map(<[f32]>::to_vec);
        if let Some(s) = &scores {
            if let Some(i) = s.iter().position(|x| !x.is_finite()) {
                return Err(f.error("tokenizer.ggml.scores", format!("score of token {i} is {}", s[i])));
            }
        }
        let token_types = match f.get_int_array("tokenizer.ggml.token_type", Some(n))? {
            None => vec![TokenType::Normal; n],
            Some(v) => v
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    TokenType::from_i64(t).ok_or_else(|| f.error("tokenizer.ggml.token_type", format!("token {i} has unknown type {t}")))
                })
                .collect::<Result<_>>()?,
        };
        for (i, (tok, ty)) in tokens.iter().zip(&token_types).enumerate() {
            if *ty == TokenType::Byte && parse_byte_token(tok).is_none() {
                return Err(f.error("tokenizer.ggml.tokens", format!("byte token {i} is {tok:?}, not <0xHH>")));
            }
        }
        let merges: &[String] = f.get_str_array("tokenizer.ggml.merges", None)?.unwrap_or(&[]);
        // llama.cpp splits at the first space after the first byte (`word.find(' ', 1)`)
        if let Some(i) = merges.iter().position(|w| !w.as_bytes().iter().skip(1).any(|&b| b == b' ')) {
            return Err(f.error("tokenizer.ggml.merges", format!("merge {i} ({:?}) is not \"left right\"", merges[i])));
        }
        if model == "gpt2" && merges.is_empty() {
            return Err(f.error("tokenizer.ggml.merges", "missing: a gpt2 (BPE) vocabulary needs merges"));
        }
        let id = |key: &str| -> Result<Option<u32>> {
            let full = format!("tokenizer.ggml.{key}");
            let v = match f.get(&full) {
                None => return Ok(None),
                // -1 (as i32) marks an absent token in some converters
                Some(Value::I32(-1)) | Some(Value::I64(-1)) => return Ok(None),
                Some(_) => f.get_u32(&full)?.expect("present"),
            };
            if v as usize >= n {
                return Err(f.error(&full, format!("token id {v} is outside the vocabulary of {n} tokens")));
            }
            Ok(Some(v))
        };
        let special = SpecialIds {
            bos: id("bos_token_id")?,
            eos: id("eos_token_id")?,
            eot: id("eot_token_id")?,
            eom: id("eom_token_id")?,
            unk: id("unknown_token_id")?,
            sep: id("seperator_token_id")?,
            pad: id("padding_token_id")?,
            mask: id("mask_token_id")?,
            fim_pre: id("fim_pre_token_id")?,
            fim_suf: id("fim_suf_token_id")?,
            fim_mid: id("fim_mid_token_id")?,
            fim_pad: id("fim_pad_token_id")?,
            fim_rep: id("fim_rep_token_id")?,
            fim_sep: id("fim_sep_token_id")?,
        };
        Ok(VocabMeta {
            model,
            pre,
            tokens: if copy { tokens.to_vec() } else { Vec::new() },
            scores,
            token_types,
            merges: if copy { merges.to_vec() } else { Vec::new() },
            special,
            add_bos: f.get_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: f.get_bool("tokenizer.ggml.add_eos_token")?,
            add_sep: f.get_bool("tokenizer.ggml.add_sep_token")?,
            add_space_prefix: f.get_bool("tokenizer.ggml.add_space_prefix")?,
            remove_extra_whitespaces: f.get_bool("tokenizer.ggml.remove_extra_whitespaces")?,
            chat_template: f.get_str("tokenizer.chat_template")?.map(str::to_string),
        })
    }
}

/// The byte of a `<0xHH>` token.
pub fn parse_byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
