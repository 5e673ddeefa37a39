//! Building the `tokenizers::Tokenizer` that does the BPE work on text between special tokens.
//!
//! - gpt2 vocabularies: the pre-tokenizer's split regexes (`Split`, isolated), then `ByteLevel`
//!   (bytes → GPT-2 alphabet, no regex of its own), then `BPE` over the file's merges in order;
//!   llama.cpp's merge loop (lowest rank first, leftmost on ties) is HF's.
//!
//! (llama vocabularies have their own engine, `spm.rs`, which says why.)

use super::pre::{for_oniguruma, PreSpec};
use super::TextIndex;
use anyhow::{anyhow, Result};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

fn vocab_of(tokens: &[String]) -> Vocab {
    let mut v = Vocab::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        v.insert(t.clone(), i as u32);
    }
    v
}

fn hf_err(what: &str, e: tokenizers::Error) -> anyhow::Error {
    anyhow!("building the tokenizer ({what}): {e}")
}

/// Counts of what the builder had to leave out, for the caller to report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Merges naming a token the vocabulary lacks (llama.cpp would apply them and then spell the
    /// result out byte by byte; they never apply to real vocabularies).
    pub merges: usize,
}

/// The byte-level BPE tokenizer of a gpt2 vocabulary.
pub(crate) fn byte_level_bpe(tokens: &[String], index: &TextIndex, merges: &[String], pre: &PreSpec) -> Result<(Tokenizer, Dropped)> {
    let mut seen = std::collections::HashSet::with_capacity(merges.len());
    let mut pairs = Vec::with_capacity(merges.len());
    let mut dropped = Dropped::default();
    for m in merges {
        // llama.cpp splits at the first space after the first byte; VocabMeta checked there is one
        let Some(sp) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
            dropped.merges += 1;
            continue;
        };
        let (a, b) = (&m[..sp], &m[sp + 1..]);
        // the first of duplicate merges keeps its rank, as in llama.cpp's bpe_ranks.emplace
        if !seen.insert((a, b)) {
            continue;
        }
        let joined = format!("{a}{b}");
        if !index.contains_key(a) || !index.contains_key(b) || !index.contains_key(joined.as_str()) {
            dropped.merges += 1;
            continue;
        }
        pairs.push((a.to_string(), b.to_string()));
    }
    let bpe =
        BPE::builder().vocab_and_merges(vocab_of(tokens), pairs).ignore_merges(pre.ignore_merges).build().map_err(|e| hf_err("BPE", e))?;
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for re in pre.regexes {
        let split = Split::new(SplitPattern::Regex(for_oniguruma(re)), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| hf_err(&format!("regex {re}"), e))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(steps))));
    Ok((tok, dropped))
}
