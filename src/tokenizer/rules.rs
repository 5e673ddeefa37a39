//! llama.cpp's vocabulary rules on top of the GGUF metadata: per-token attributes (with the
//! fix-ups llama.cpp applies by token text and model name), default special ids per vocabulary
//! type, and the set of end-of-generation tokens.
//!
//! Source: `llama_vocab::impl::load` in llama.cpp's `src/llama-vocab.cpp` (llama-cpp-sys-2 0.1.161).

use crate::gguf::vocab::{SpecialIds, TokenType};
use std::collections::BTreeSet;

/// llama.cpp's `llama_token_attr` bits.
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

pub(crate) fn attr_of(t: TokenType) -> u16 {
    match t {
        TokenType::Undefined => 0,
        TokenType::Normal => attr::NORMAL,
        TokenType::Unknown => attr::UNKNOWN,
        TokenType::Control => attr::CONTROL,
        TokenType::UserDefined => attr::USER_DEFINED,
        TokenType::Unused => attr::UNUSED,
        TokenType::Byte => attr::BYTE,
    }
}

/// Texts that make a token the end-of-turn token when the file names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] =
    &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"];
const FIM_SUF_TEXTS: &[&str] =
    &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"];
const FIM_MID_TEXTS: &[&str] =
    &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Texts of tokens that end generation, whatever the file says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// gpt-oss tokens that are always rendered (llama.cpp turns them into user-defined tokens).
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// The vocabulary type, as far as the rules depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VocabKind {
    /// `llama`: SentencePiece-style BPE over scores.
    Spm,
    /// `gpt2`: byte-level BPE over merges.
    Bpe,
}

/// The special ids and attributes after llama.cpp's rules.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eog: BTreeSet<u32>,
}

/// An id from the file, else llama.cpp's default for the vocabulary type when that lies inside
/// the vocabulary.
fn or_default(from_file: Option<u32>, default: Option<u32>, n: usize) -> Option<u32> {
    from_file.or(default.filter(|&d| (d as usize) < n))
}

/// What the rules read besides the token attributes.
pub(crate) struct Vocab<'a> {
    pub kind: VocabKind,
    pub tokens: &'a [String],
    pub special: &'a SpecialIds,
    /// The pre-tokenizer drops the default BOS id (chatglm).
    pub no_default_bos: bool,
    /// `tokenizer.ggml.pre` (or its override).
    pub pre: Option<&'a str>,
    /// `general.name`.
    pub model_name: Option<&'a str>,
    /// `general.architecture`.
    pub arch: Option<&'a str>,
}

/// Applies llama.cpp's load-time rules: fills `attrs` (one per token, from the token types) with
/// the fix-ups, and returns the resolved special ids and the end-of-generation set.
pub(crate) fn resolve(v: &Vocab, attrs: &mut [u16]) -> Resolved {
    let Vocab { kind, tokens, special, no_default_bos, pre, model_name, arch } = *v;
    let n = tokens.len();
    let (default_bos, default_eos) = match kind {
        VocabKind::Spm => (Some(1), Some(2)),
        VocabKind::Bpe => (Some(11), Some(11)),
    };
    let default_bos = if no_default_bos { None } else { default_bos };
    let bos = or_default(special.bos, default_bos, n);
    let eos = or_default(special.eos, default_eos, n);
    let mut eot = special.eot;
    let mut eom = special.eom;
    let mut fim_pre = special.fim_pre;
    let mut fim_suf = special.fim_suf;
    let mut fim_mid = special.fim_mid;
    let mut fim_pad = special.fim_pad;
    let mut fim_rep = special.fim_rep;
    let mut fim_sep = special.fim_sep;

    // Auto-detection by text of the ids the file does not give; a detected token becomes a
    // control token. llama.cpp walks a hash map here, so with several candidates its pick is
    // arbitrary; ferrite takes the lowest id.
    for (i, text) in tokens.iter().enumerate() {
        let id = i as u32;
        for (slot, texts) in [
            (&mut eot, EOT_TEXTS),
            (&mut eom, EOM_TEXTS),
            (&mut fim_pre, FIM_PRE_TEXTS),
            (&mut fim_suf, FIM_SUF_TEXTS),
            (&mut fim_mid, FIM_MID_TEXTS),
            (&mut fim_pad, FIM_PAD_TEXTS),
            (&mut fim_rep, FIM_REP_TEXTS),
            (&mut fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_none() && texts.contains(&text.as_str()) {
                *slot = Some(id);
                attrs[i] |= attr::CONTROL;
            }
        }
    }

    // control tokens named "unused…" are unused
    for (i, text) in tokens.iter().enumerate() {
        if attrs[i] & attr::CONTROL != 0 && text.contains("unused") {
            attrs[i] |= attr::UNUSED;
        }
    }

    let mut eog = BTreeSet::new();
    eog.extend(fim_pad);
    eog.extend(fim_rep);
    eog.extend(fim_sep);
    for (i, text) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(&text.as_str()) {
            eog.insert(i as u32);
            attrs[i] |= attr::CONTROL;
        }
    }
    for (i, text) in tokens.iter().enumerate() {
        if ALWAYS_RENDERED.contains(&text.as_str()) {
            attrs[i] = attr::USER_DEFINED;
        }
    }
    eog.extend(eos);
    eog.extend(eot);
    eog.extend(eom);

    // o200k_harmony and solar-open: "<|end|>" ends a message, not the generation
    let text_of = |id: u32| tokens[id as usize].as_str();
    let has = |eog: &BTreeSet<u32>, t: &str| eog.iter().any(|&id| text_of(id) == t);
    let has_call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
    if has_call && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
        if let Some(&end) = eog.iter().find(|&&id| text_of(id) == "<|end|>") {
            eog.remove(&end);
            attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    // gemma4 and plamo2 have an ordinary "</s>"
    if has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>") {
        if let Some(&s) = eog.iter().find(|&&id| text_of(id) == "</s>") {
            eog.remove(&s);
            attrs[s as usize] = attr::NORMAL;
        }
    }

    // per-model strip attributes of special tokens
    let name = model_name.map(str::to_lowercase).unwrap_or_default();
    let pre = pre.unwrap_or("");
    let arch = arch.unwrap_or("");
    let find = |t: &str| tokens.iter().position(|x| x == t);
    if ["jina-v2-de", "jina-v2-es", "jina-v2-code", "mmbert"].iter().any(|p| pre.contains(p))
        || ["nomic-bert-moe", "jina-bert-v3"].iter().any(|a| arch.contains(a))
    {
        if let Some(i) = find("<mask>") {
            attrs[i] |= attr::LSTRIP;
        }
    } else if name.contains("phi-3") || name.contains("phi3") {
        for a in attrs.iter_mut() {
            if *a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0 {
                *a |= attr::RSTRIP;
            }
        }
        if let Some(i) = find("</s>") {
            attrs[i] |= attr::RSTRIP;
        }
        for t in ["<unk>", "<s>", "<|endoftext|>"] {
            if let Some(i) = find(t) {
                attrs[i] &= !attr::RSTRIP;
            }
        }
    } else if name.contains("modern-bert") {
        if let Some(i) = find("[MASK]") {
            attrs[i] |= attr::LSTRIP;
        }
    }

    Resolved { bos, eos, eot, eog }
}
