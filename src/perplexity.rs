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

/// Checks the sizes (as llama-perplexity and llama-imatrix do: at least two chunks) and returns
/// the number of chunks to evaluate.
pub(crate) fn chunk_count(n_tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> Result<usize> {
    if n_ctx < 4 {
        crate::bail_input!("the chunk size (-c) must be at least 4 tokens");
    }
    if n_tokens < 2 * n_ctx {
        crate::bail_input!("the text tokenizes to {n_tokens} tokens; chunks of {n_ctx} need at least {}", 2 * n_ctx);
    }
    Ok((n_tokens / n_ctx).min(max_chunks.unwrap_or(usize::MAX)))
}

/// Adds -log p(next token) of each row of `rows` (`n_vocab` logits a row; row i predicts
/// `next[i]`) to `nll`, and its square to `nll2`.
pub(crate) fn score_rows(rows: &[f32], n_vocab: usize, next: &[u32], nll: &mut f64, nll2: &mut f64) {
    for (row, &t) in rows.chunks_exact(n_vocab).zip(next) {
        let v = -log_softmax(row, t as usize);
        *nll += v;
        *nll2 += v * v;
    }
}

/// Evaluates chunk `c` of `tokens` from an empty cache and gives `score` the logits of its
/// scored rows: row i (of n_ctx - 1 - n_ctx/2) predicts `tokens[c*n_ctx + n_ctx/2 + i + 1]`.
fn eval_chunk(dec: &mut Decoder, tokens: &[u32], n_ctx: usize, bos: Option<u32>, c: usize, logits: &mut Vec<f32>) -> Result<()> {
    let first = n_ctx / 2;
    let outputs: Vec<u32> = (first as u32..n_ctx as u32).collect();
    let start = c * n_ctx;
    let mut chunk = tokens[start..start + n_ctx].to_vec();
    if let Some(b) = bos {
        chunk[0] = b;
    }
    dec.kv.clear();
    logits.clear();
    dec.decode(&chunk, 0, &outputs, logits)?;
    logits.truncate((n_ctx - 1 - first) * dec.n_vocab());
    Ok(())
}

/// Mean and standard error from a sum and a sum of squares, as llama-perplexity reports them.
fn mean_err(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / count as f64;
    let var = sum2 / count as f64 - mean * mean;
    (mean, if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() } else { 0.0 })
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
    let n_chunks = chunk_count(tokens.len(), n_ctx, max_chunks)?;
    let (first, n_vocab) = (n_ctx / 2, dec.n_vocab());
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut logits = Vec::with_capacity((n_ctx - first) * n_vocab);
    for c in 0..n_chunks {
        eval_chunk(dec, tokens, n_ctx, bos, c, &mut logits)?;
        score_rows(&logits, n_vocab, &tokens[c * n_ctx + first + 1..(c + 1) * n_ctx], &mut nll, &mut nll2);
        count += n_ctx - 1 - first;
        progress(c + 1, n_chunks, (nll / count as f64).exp());
    }
    let (mean, err) = mean_err(nll, nll2, count);
    let ppl = mean.exp();
    Ok(Perplexity { ppl, ppl_err: err * ppl, chunks: n_chunks, count })
}

// ---- KL-divergence (llama-perplexity's --kl-divergence-base / --kl-divergence) ----
//
// The base file, as llama-perplexity writes it (tools/perplexity/perplexity.cpp), all
// little-endian: "_logits_", n_ctx (i32), n_vocab (i32), n_chunk (i32), the n_chunk*n_ctx
// evaluated tokens (i32, as in the text: not replaced by BOS), then for every chunk its
// n_ctx - 1 - n_ctx/2 scored rows of `row_len(n_vocab)` u16 each: two f32 (scale, min_log_prob)
// then one u16 per token, log p ≈ scale*q + min_log_prob over [max - 16, max], 0 below.

/// The base file's magic.
pub const BASE_MAGIC: &[u8; 8] = b"_logits_";

/// u16 entries of one stored row: 4 for the two f32, then the vocabulary rounded up to even.
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Round to nearest (ties to even) by the 1.5·2^23 trick, as llama-perplexity's `nearest_int`.
fn nearest_int(f: f32) -> i32 {
    ((f + 12582912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Stores one row's log-probabilities in `out` (`row_len` entries) and returns -log p(tok),
/// each step in llama-perplexity's precision (f32 arithmetic, the exponentials summed in f64).
pub fn encode_row(logits: &[f32], tok: usize, out: &mut [u16]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = logits.iter().copied().fold(f32::INFINITY, f32::min).max(max - 16.0);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_sum = sum.ln() as f32;
    let min_log_prob = min - max - log_sum;
    let scale = (max - min) / 65535.0;
    // the two f32 as four little-endian u16 halves
    for (i, f) in [scale, min_log_prob].into_iter().enumerate() {
        (out[2 * i], out[2 * i + 1]) = (f.to_bits() as u16, (f.to_bits() >> 16) as u16);
    }
    let q = &mut out[4..4 + logits.len()];
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (q, &l) in q.iter_mut().zip(logits) {
            *q = if l > min { nearest_int(inv * (l - min)) as u16 } else { 0 };
        }
    } else {
        q.fill(0);
    }
    (max + log_sum - logits[tok]) as f64
}

/// The two f32 at the head of a stored row.
fn row_head(row: &[u16]) -> (f32, f32) {
    let f = |i: usize| f32::from_bits(row[i] as u32 | (row[i + 1] as u32) << 16);
    (f(0), f(2))
}

/// Running sums of a comparison (llama-perplexity's `kl_divergence_result`).
#[derive(Clone, Debug, Default)]
struct KldSums {
    nll: f64,
    nll2: f64,
    nll_base: f64,
    nll_base2: f64,
    nll_nll_base: f64,
    kld: f64,
    kld2: f64,
    p_diff: f64,
    p_diff2: f64,
    p_diff4: f64,
    same_top: usize,
    count: usize,
}

/// Compares one row of the model's logits with the stored base row; returns (KLD, Δp).
fn compare_row(logits: &[f32], base: &[u16], tok: usize, s: &mut KldSums) -> (f64, f32) {
    let (mut max, mut imax) = (logits[0], 0usize);
    for (i, &l) in logits.iter().enumerate().skip(1) {
        if l > max {
            (max, imax) = (l, i);
        }
    }
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_sum = sum.ln() as f32;
    let (scale, min_log_prob) = row_head(base);
    let q = &base[4..4 + logits.len()];
    let nll = max + log_sum - logits[tok];
    let nll_base = -(scale * q[tok] as f32 + min_log_prob);
    s.nll += nll as f64;
    s.nll2 += (nll * nll) as f64;
    s.nll_base += nll_base as f64;
    s.nll_base2 += (nll_base * nll_base) as f64;
    s.nll_nll_base += (nll * nll_base) as f64;
    let log_z = max + log_sum;
    let (mut kld, mut imax_base, mut best) = (0f64, 0usize, f32::NEG_INFINITY);
    for (i, (&qi, &l)) in q.iter().zip(logits).enumerate() {
        let lp_base = scale * qi as f32 + min_log_prob;
        // the first index wins ties, as in llama-perplexity
        if i == 0 || lp_base > best {
            (best, imax_base) = (lp_base, i);
        }
        if lp_base > -16.0 {
            kld += (lp_base.exp() * (lp_base - l + log_z)) as f64;
        }
    }
    s.kld += kld;
    s.kld2 += kld * kld;
    s.count += 1;
    s.same_top += usize::from(imax == imax_base);
    let p_diff = (-nll).exp() - (-nll_base).exp();
    let d2 = (p_diff * p_diff) as f64;
    s.p_diff += p_diff as f64;
    s.p_diff2 += d2;
    s.p_diff4 += d2 * d2;
    (kld, p_diff)
}

/// Evaluates the base model as [`perplexity`] does and writes its log-probabilities to `out`
/// in llama-perplexity's format. The perplexity returned is computed from the stored
/// (f32) log-probabilities, as llama-perplexity's in this mode.
pub fn save_base(
    dec: &mut Decoder,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    out: &mut crate::atomic_file::AtomicFile,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    let n_chunks = chunk_count(tokens.len(), n_ctx, max_chunks)?;
    let (first, n_vocab) = (n_ctx / 2, dec.n_vocab());
    let nv = row_len(n_vocab);
    let mut head = BASE_MAGIC.to_vec();
    for v in [n_ctx as i32, n_vocab as i32, n_chunks as i32] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    for &t in &tokens[..n_chunks * n_ctx] {
        head.extend_from_slice(&(t as i32).to_le_bytes());
    }
    out.write_all(&head)?;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut logits = Vec::with_capacity((n_ctx - first) * n_vocab);
    let mut rows = vec![0u16; (n_ctx - 1 - first) * nv];
    let mut bytes = Vec::with_capacity(rows.len() * 2);
    for c in 0..n_chunks {
        eval_chunk(dec, tokens, n_ctx, bos, c, &mut logits)?;
        for (i, (row, stored)) in logits.chunks_exact(n_vocab).zip(rows.chunks_exact_mut(nv)).enumerate() {
            let v = encode_row(row, tokens[c * n_ctx + first + i + 1] as usize, stored);
            nll += v;
            nll2 += v * v;
        }
        bytes.clear();
        bytes.extend(rows.iter().flat_map(|q| q.to_le_bytes()));
        out.write_all(&bytes)?;
        count += n_ctx - 1 - first;
        progress(c + 1, n_chunks, (nll / count as f64).exp());
    }
    let (mean, err) = mean_err(nll, nll2, count);
    let ppl = mean.exp();
    Ok(Perplexity { ppl, ppl_err: err * ppl, chunks: n_chunks, count })
}

/// A base file opened for comparison: its header read and its size checked against it.
pub struct BaseFile {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunks: usize,
    /// The evaluated tokens (n_chunks * n_ctx).
    pub tokens: Vec<u32>,
    reader: std::io::BufReader<std::fs::File>,
    name: String,
    /// One chunk's bytes, reused from chunk to chunk.
    scratch: Vec<u8>,
}

impl BaseFile {
    /// Opens `path` (a regular file: the caller checks) and validates its header and length.
    pub fn open(path: &std::path::Path) -> Result<BaseFile> {
        use std::io::Read;
        let name = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|e| crate::bad_input!("{name}: {e}"))?;
        let len = f.metadata()?.len();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, f);
        let not_base = || crate::bad_input!("{name}: not a file of base log-probabilities (written by --kl-divergence-base)");
        let mut head = [0u8; 20];
        reader.read_exact(&mut head).map_err(|_| not_base())?;
        if &head[..8] != BASE_MAGIC {
            return Err(not_base());
        }
        let int = |i: usize| i32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let (n_ctx, n_vocab, n_chunks) = (int(8), int(12), int(16));
        if !(4..=1 << 20).contains(&n_ctx) || !(1..=1 << 24).contains(&n_vocab) || !(1..=1 << 24).contains(&n_chunks) {
            crate::bail_input!("{name}: damaged header (context {n_ctx}, vocabulary {n_vocab}, chunks {n_chunks})");
        }
        let (n_ctx, n_vocab, n_chunks) = (n_ctx as usize, n_vocab as usize, n_chunks as usize);
        let want = 20 + 4 * (n_ctx * n_chunks) as u64 + (n_chunks * (n_ctx - 1 - n_ctx / 2) * row_len(n_vocab) * 2) as u64;
        if len != want {
            crate::bail_input!("{name}: {len} bytes where its header implies {want}: truncated or damaged");
        }
        let mut raw = vec![0u8; 4 * n_ctx * n_chunks];
        reader.read_exact(&mut raw)?;
        let mut tokens = Vec::with_capacity(n_ctx * n_chunks);
        for b in raw.chunks_exact(4) {
            let t = i32::from_le_bytes(b.try_into().expect("4 bytes"));
            if t < 0 || t as usize >= n_vocab {
                crate::bail_input!("{name}: damaged: token {t} is outside the vocabulary of {n_vocab}");
            }
            tokens.push(t as u32);
        }
        Ok(BaseFile { n_ctx, n_vocab, n_chunks, tokens, reader, name, scratch: Vec::new() })
    }

    /// The next chunk's stored rows.
    fn read_chunk(&mut self, rows: &mut [u16]) -> Result<()> {
        use std::io::Read;
        self.scratch.resize(rows.len() * 2, 0);
        self.reader.read_exact(&mut self.scratch).map_err(|e| crate::bad_input!("{}: {e}", self.name))?;
        for (q, b) in rows.iter_mut().zip(self.scratch.chunks_exact(2)) {
            *q = u16::from_le_bytes([b[0], b[1]]);
        }
        Ok(())
    }
}

/// A value and its standard error.
pub type Estimate = (f64, f64);

/// The comparison of a model with a base file: llama-perplexity's statistics.
#[derive(Clone, Debug)]
pub struct Kld {
    pub chunks: usize,
    pub count: usize,
    pub ppl: Estimate,
    pub ppl_base: Estimate,
    /// Correlation of ln PPL(Q) and ln PPL(base).
    pub cor: f64,
    pub ln_ratio: Estimate,
    pub ratio: Estimate,
    /// PPL(Q) - PPL(base).
    pub diff: Estimate,
    pub kld: Estimate,
    /// (fraction, KLD) for the maximum, 99.9 %, 99 %, 95 %, 90 %, median, 10 %, 5 %, 1 %, 0.1 %, minimum.
    pub kld_percentiles: Vec<(f32, f32)>,
    /// Mean Δp = p(token) - p_base(token).
    pub dp: Estimate,
    /// (fraction, Δp) for the maximum, 99.9 %, 99 %, 95 %, 90 %, 75 %, median, 25 %, 10 %, 5 %, 1 %, 0.1 %, minimum.
    pub dp_percentiles: Vec<(f32, f32)>,
    pub rms_dp: Estimate,
    /// Fraction of rows whose most likely token is the base's.
    pub same_top: Estimate,
}

/// Linear interpolation between the closest ranks of sorted `v`, as llama-perplexity.
fn percentile(v: &[f32], fraction: f32) -> f32 {
    if fraction <= 0.0 {
        return v[0];
    }
    if fraction >= 1.0 {
        return v[v.len() - 1];
    }
    let p = fraction * (v.len() - 1) as f32;
    let ip = p as usize;
    let p = p - ip as f32;
    (1.0 - p) * v[ip] + p * v[(ip + 1).min(v.len() - 1)]
}

impl KldSums {
    fn report(&self, chunks: usize, mut kld_values: Vec<f32>, mut dp_values: Vec<f32>) -> Kld {
        let n = self.count;
        // llama-perplexity's uncertainties need more than 10 values; its covariance, 10
        let me = |sum: f64, sum2: f64| -> Estimate {
            let (m, e) = mean_err(sum, sum2, n);
            (m, if n > 10 { e } else { 0.0 })
        };
        let cov =
            if n < 10 { 0.0 } else { (self.nll_nll_base / n as f64 - (self.nll / n as f64) * (self.nll_base / n as f64)) / (n - 1) as f64 };
        let (lp, lb) = (me(self.nll, self.nll2), me(self.nll_base, self.nll_base2));
        let ppl = (lp.0.exp(), lp.0.exp() * lp.1);
        let ppl_base = (lb.0.exp(), lb.0.exp() * lb.1);
        let ln_ratio = (lp.0 - lb.0, (lp.1 * lp.1 + lb.1 * lb.1 - 2.0 * cov).sqrt());
        let ratio = (ln_ratio.0.exp(), ln_ratio.0.exp() * ln_ratio.1);
        let ppl_cov = ppl.0 * ppl_base.0 * cov;
        let diff = (ppl.0 - ppl_base.0, (ppl.1 * ppl.1 + ppl_base.1 * ppl_base.1 - 2.0 * ppl_cov).sqrt());
        let mse = me(self.p_diff2, self.p_diff4);
        let rms = mse.0.sqrt();
        let top = self.same_top as f64 / n.max(1) as f64;
        kld_values.sort_by(f32::total_cmp);
        dp_values.sort_by(f32::total_cmp);
        let pct = |v: &[f32], fs: &[f32]| -> Vec<(f32, f32)> {
            if v.is_empty() {
                return Vec::new();
            }
            fs.iter().map(|&f| (f, percentile(v, f))).collect()
        };
        Kld {
            chunks,
            count: n,
            ppl,
            ppl_base,
            cor: cov / (lp.1 * lb.1),
            ln_ratio,
            ratio,
            diff,
            kld: me(self.kld, self.kld2),
            kld_percentiles: pct(&kld_values, &[1.0, 0.999, 0.99, 0.95, 0.9, 0.5, 0.1, 0.05, 0.01, 0.001, 0.0]),
            dp: me(self.p_diff, self.p_diff2),
            dp_percentiles: pct(&dp_values, &[1.0, 0.999, 0.99, 0.95, 0.9, 0.75, 0.5, 0.25, 0.1, 0.05, 0.01, 0.001, 0.0]),
            rms_dp: (rms, if rms > 0.0 { 0.5 / rms * mse.1 } else { 0.0 }),
            same_top: (top, if n > 1 { (top * (1.0 - top) / (n - 1) as f64).sqrt() } else { 0.0 }),
        }
    }
}

/// Compares the model of `dec` (whose context must hold `base.n_ctx`) with the base file,
/// chunk by chunk over the base's own tokens; `progress(chunk, n_chunks, &running)` after each.
pub fn kl_divergence(
    dec: &mut Decoder,
    base: &mut BaseFile,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    progress: &mut dyn FnMut(usize, usize, &Kld),
) -> Result<Kld> {
    let (n_ctx, n_vocab) = (base.n_ctx, dec.n_vocab());
    if base.n_vocab != n_vocab {
        crate::bail_input!("{}: log-probabilities over {} tokens, but this model has {n_vocab}", base.name, base.n_vocab);
    }
    let n_chunks = base.n_chunks.min(max_chunks.unwrap_or(usize::MAX));
    let first = n_ctx / 2;
    let nv = row_len(n_vocab);
    let tokens = std::mem::take(&mut base.tokens);
    let mut sums = KldSums::default();
    let (mut kld_values, mut dp_values) = (Vec::new(), Vec::new());
    let mut logits = Vec::with_capacity((n_ctx - first) * n_vocab);
    let mut rows = vec![0u16; (n_ctx - 1 - first) * nv];
    for c in 0..n_chunks {
        base.read_chunk(&mut rows)?;
        eval_chunk(dec, &tokens, n_ctx, bos, c, &mut logits)?;
        for (i, (row, stored)) in logits.chunks_exact(n_vocab).zip(rows.chunks_exact(nv)).enumerate() {
            let (k, dp) = compare_row(row, stored, tokens[c * n_ctx + first + i + 1] as usize, &mut sums);
            kld_values.push(k as f32);
            dp_values.push(dp);
        }
        progress(c + 1, n_chunks, &sums.report(c + 1, Vec::new(), Vec::new()));
    }
    base.tokens = tokens;
    Ok(sums.report(n_chunks, kld_values, dp_values))
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

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!([0.4f32, 0.5, 1.5, 2.5, 65534.6].map(nearest_int), [0, 0, 2, 2, 65535]);
    }

    #[test]
    fn a_stored_row_decodes_to_its_log_probabilities() {
        let logits: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 * 0.9 - 8.0).collect();
        let mut row = vec![0u16; row_len(logits.len())];
        let nll = encode_row(&logits, 5, &mut row);
        assert!((nll + log_softmax(&logits, 5)).abs() < 1e-4);
        let (scale, min_log_prob) = row_head(&row);
        for (i, &q) in row[4..4 + logits.len()].iter().enumerate() {
            let exact = log_softmax(&logits, i) as f32;
            if q > 0 {
                assert!((scale * q as f32 + min_log_prob - exact).abs() <= scale, "token {i}");
            }
        }
        // the same logits against their own row: no divergence, same top
        let mut s = KldSums::default();
        let (kld, dp) = compare_row(&logits, &row, 5, &mut s);
        assert!(kld.abs() < 1e-3 && dp.abs() < 1e-3, "{kld} {dp}");
        assert_eq!(s.same_top, 1);
    }

    #[test]
    fn percentiles_interpolate_as_llama_perplexity() {
        let v = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
    }
}
