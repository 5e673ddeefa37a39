//! Perplexity with llama-perplexity's method: the text's tokens are cut into chunks of n_ctx;
//! each chunk is evaluated from an empty cache (its first token replaced by BOS when the model
//! adds one), and only the second half of each chunk is scored, so every scored token has at
//! least n_ctx/2 tokens of context. PPL = exp(mean negative log-likelihood).

use crate::decoder::Decoder;
use anyhow::Result;

/// The outcome of a perplexity run.
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of the estimate, as llama-perplexity reports it.
    pub ppl_err: f64,
    pub chunks: usize,
    /// Tokens scored.
    pub count: usize,
}

/// log p(tok) from raw logits, computed as llama-perplexity does (f32 exponentials summed in f64).
pub fn log_softmax(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    (logits[tok] - max) as f64 - sum.ln()
}

/// Evaluates `tokens` (the whole text, BOS already prepended when the model adds one) in chunks
/// of `n_ctx`; `progress(chunk, n_chunks, running_ppl)` is called after each chunk.
pub fn perplexity(
    dec: &mut Decoder,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    if n_ctx < 4 {
        crate::bail_input!("the perplexity context must be at least 4 tokens");
    }
    if tokens.len() < 2 * n_ctx {
        crate::bail_input!(
            "the text tokenizes to {} tokens; perplexity with a context of {n_ctx} needs at least {}",
            tokens.len(),
            2 * n_ctx
        );
    }
    let n_chunks = (tokens.len() / n_ctx).min(max_chunks.unwrap_or(usize::MAX));
    let first = n_ctx / 2;
    let n_vocab = dec.n_vocab();
    let outputs: Vec<u32> = (first as u32..n_ctx as u32).collect();
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut logits = Vec::with_capacity((n_ctx - first) * n_vocab);
    for c in 0..n_chunks {
        let start = c * n_ctx;
        let mut chunk = tokens[start..start + n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        dec.kv.clear();
        logits.clear();
        dec.decode(&chunk, 0, &outputs, &mut logits)?;
        // row i predicts the token after position first + i
        for i in 0..(n_ctx - 1 - first) {
            let row = &logits[i * n_vocab..(i + 1) * n_vocab];
            let v = -log_softmax(row, tokens[start + first + i + 1] as usize);
            nll += v;
            nll2 += v * v;
        }
        count += n_ctx - 1 - first;
        progress(c + 1, n_chunks, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let ppl_err = if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
    Ok(Perplexity { ppl, ppl_err, chunks: n_chunks, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_the_definition() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        assert!((log_softmax(&l, 2) - (3.0f64.exp() / z).ln()).abs() < 1e-6);
    }
}
