//! Building the `tokenizers::Tokenizer` that does the BPE work on text between special tokens.
//!
//! - gpt2 vocabularies: the pre-tokenizer's split regexes (`Split`, isolated), then `ByteLevel`
//!   (bytes → GPT-2 alphabet, no regex of its own), then `BPE` over the file's merges in order;
//!   llama.cpp's merge loop (lowest rank first, leftmost on ties) is HF's.
//! - llama (SentencePiece) vocabularies: the normalizer `Replace(" ", "▁")` (llama.cpp's
//!   whitespace escaping), no pre-tokenizer (the whole piece is one word), and `BPE` with byte
//!   fallback whose merges are every split `a + b = t` of a token into two tokens, ranked by the
//!   score of `t`, highest first. llama.cpp's `llm_tokenizer_spm` merges the adjacent pair whose
//!   concatenation is the best-scoring token, leftmost first, and spells out as `<0xNN>` bytes
//!   what is left unmerged and not a token; that is this BPE. (Equal scores: llama.cpp takes the
//!   leftmost pair; here the lower-id token first. Real vocabularies score their normal tokens
//!   distinctly.)

use super::pre::{for_oniguruma, PreSpec};
use super::TextIndex;
use anyhow::{anyhow, Result};
use rayon::prelude::*;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{NormalizerWrapper, SplitDelimiterBehavior, Tokenizer};

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
pub(crate) fn byte_level_bpe(
    tokens: &[String],
    index: &TextIndex,
    merges: &[String],
    pre: &PreSpec,
) -> Result<(Tokenizer, Dropped)> {
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
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(tokens), pairs)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| hf_err("BPE", e))?;
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

/// The SentencePiece-style BPE tokenizer of a llama vocabulary (see the module notes).
pub(crate) fn sentencepiece_bpe(tokens: &[String], index: &TextIndex, scores: &[f32]) -> Result<Tokenizer> {
    // (score of the merged token, its id, split position)
    let mut splits: Vec<(f32, u32, u32)> = tokens
        .par_iter()
        .enumerate()
        .flat_map_iter(|(id, t)| {
            t.char_indices()
                .skip(1)
                .filter(|&(k, _)| index.contains_key(&t[..k]) && index.contains_key(&t[k..]))
                .map(move |(k, _)| (scores[id], id as u32, k as u32))
        })
        .collect();
    splits.par_sort_unstable_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let pairs: Vec<(String, String)> = splits
        .par_iter()
        .map(|&(_, id, k)| {
            let t = &tokens[id as usize];
            (t[..k as usize].to_string(), t[k as usize..].to_string())
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(tokens), pairs)
        .byte_fallback(true)
        .build()
        .map_err(|e| hf_err("BPE", e))?;
    let mut tok = Tokenizer::new(bpe);
    let escape = Replace::new(" ", "\u{2581}").map_err(|e| hf_err("normalizer", e))?;
    tok.with_normalizer(Some(NormalizerWrapper::Replace(escape)));
    Ok(tok)
}
