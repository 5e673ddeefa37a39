//! Importance matrices, by llama-imatrix's method and in its GGUF format: the sum of squares of
//! every input column of every weight product over a text, per weight (per expert for mixtures),
//! with the number of rows summed. `quantize --imatrix` reads them (llama-quantize's way: sums
//! over counts) to weight each column's rounding error by how much that column matters.

use crate::decoder::Decoder;
use crate::gguf::writer::{TensorEntry, Writer, DEFAULT_ALIGNMENT};
use crate::gguf::{Array, GgufFile, Value};
use anyhow::Result;
use ggml::{MatMulEval, Type};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

/// One weight's statistics: `values[mat * ne0 + j]` sums x_j² over the rows multiplied by matrix
/// `mat` (an expert, or the one matrix of a dense weight), `counts[mat]` counts those rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub values: Vec<f32>,
    pub counts: Vec<i64>,
}

/// Gathers the statistics as the products are computed (llama-imatrix's `collect_imatrix`).
#[derive(Debug, Default)]
pub struct Collector {
    pub stats: BTreeMap<String, Stats>,
    /// Also `output.weight` (llama-imatrix's `--process-output`).
    pub process_output: bool,
    /// The first problem met (non-finite values, inconsistent shapes); the run stops on it.
    pub error: Option<String>,
    /// The rows of the micro-batch llama.cpp would compute at once, where [`compute`] runs its
    /// pieces one at a time (its "fewer than 16 rows" rule is about that micro-batch).
    pub batch_rows: Option<i64>,
    /// Expert products seen piece by piece while `batch_rows` is set, summed by [`flush`]
    /// (Self::flush) as the one micro-batch llama.cpp computes: its loop takes each expert slot
    /// over all the micro-batch's tokens, so the order of the sums depends on the whole.
    pending: Vec<Pending>,
}

/// One piece of an expert product held for [`Collector::flush`].
#[derive(Debug)]
struct Pending {
    weight: String,
    weight_ne: [i64; 4],
    input: Vec<f32>,
    input_ne: [i64; 4],
    ids: Vec<i32>,
    n_ids: usize,
}

impl Collector {
    /// An empty collector; `process_output`: also `output.weight`.
    pub fn new(process_output: bool) -> Collector {
        Collector { process_output, ..Default::default() }
    }

    /// Whether a product is observed: every `mul_mat_id`; a `mul_mat` of a layer's weight (or
    /// of `output.weight` with `process_output`) over at least 16 rows, as llama-imatrix (small
    /// batches are generation steps, not the text).
    pub fn wants(&self, weight: &str, is_id: bool, input_ne: [i64; 4]) -> bool {
        if is_id {
            return true;
        }
        self.batch_rows.unwrap_or(input_ne[1]) >= 16 && (weight.starts_with("blk.") || (self.process_output && weight == "output.weight"))
    }

    /// Adds one product's activations.
    pub fn see(&mut self, e: &MatMulEval<'_>) {
        if self.error.is_some() {
            return;
        }
        if let (Some(_), Some((ids, n_ids))) = (self.batch_rows, e.ids) {
            self.pending.push(Pending {
                weight: e.weight.to_string(),
                weight_ne: e.weight_ne,
                input: e.input.to_vec(),
                input_ne: e.input_ne,
                ids: ids.to_vec(),
                n_ids,
            });
            return;
        }
        if let Err(msg) = self.add(e) {
            self.error = Some(msg);
        }
    }

    /// Sums the held expert products, each weight's pieces joined along the tokens in the order
    /// they came (the micro-batch's order).
    pub fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let mut done = vec![false; pending.len()];
        for i in 0..pending.len() {
            if done[i] || self.error.is_some() {
                continue;
            }
            let p = &pending[i];
            let (mut input, mut ids, mut n_tok) = (Vec::new(), Vec::new(), 0i64);
            for (j, q) in pending.iter().enumerate().skip(i).filter(|(_, q)| q.weight == p.weight) {
                if q.input_ne[..2] != p.input_ne[..2] || q.n_ids != p.n_ids || q.input_ne[3] != 1 {
                    self.error = Some(format!("inconsistent pieces of {}", p.weight));
                    return;
                }
                input.extend_from_slice(&q.input);
                ids.extend_from_slice(&q.ids);
                n_tok += q.input_ne[2];
                done[j] = true;
            }
            let e = MatMulEval {
                weight: &p.weight,
                weight_ne: p.weight_ne,
                input: &input,
                input_ne: [p.input_ne[0], p.input_ne[1], n_tok, 1],
                ids: Some((&ids, p.n_ids)),
            };
            if let Err(msg) = self.add(&e) {
                self.error = Some(msg);
            }
        }
    }

    fn add(&mut self, e: &MatMulEval<'_>) -> Result<(), String> {
        let ne0 = e.input_ne[0] as usize;
        let st = self.stats.entry(e.weight.to_string()).or_default();
        match e.ids {
            Some((ids, n_ids)) => {
                // input [ne0, 1 or n_ids, n_tokens]; ids [n_ids, n_tokens]
                let n_as = e.weight_ne[2] as usize;
                let (ne1, n_tokens) = (e.input_ne[1] as usize, e.input_ne[2] as usize);
                if st.counts.len() == 1 && n_as > 1 {
                    st.counts.resize(n_as, st.counts[0]);
                }
                if st.values.is_empty() {
                    st.values = vec![0.0; ne0 * n_as];
                    st.counts = vec![0; n_as];
                } else if st.values.len() != ne0 * n_as || st.counts.len() != n_as {
                    return Err(format!("inconsistent sizes for {}", e.weight));
                }
                let mut touched = vec![false; n_as];
                for idx in 0..n_ids {
                    for row in 0..n_tokens {
                        let ex = ids[row * n_ids + idx];
                        if ex < 0 || ex as usize >= n_as {
                            return Err(format!("{}: expert {ex} out of range", e.weight));
                        }
                        let ex = ex as usize;
                        let x = &e.input[(row * ne1 + idx % ne1) * ne0..][..ne0];
                        st.counts[ex] += 1;
                        touched[ex] = true;
                        accumulate(&mut st.values[ex * ne0..(ex + 1) * ne0], x);
                    }
                }
                for (ex, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
                    if !st.values[ex * ne0..(ex + 1) * ne0].iter().all(|v| v.is_finite()) {
                        return Err(format!("non-finite values in {}", e.weight));
                    }
                }
            }
            None => {
                let (w2, w3) = (e.weight_ne[2] as usize, e.weight_ne[3] as usize);
                let n_mat = w2 * w3;
                if st.values.is_empty() {
                    st.values = vec![0.0; ne0 * n_mat];
                    st.counts = vec![0];
                } else if st.values.len() != ne0 * n_mat {
                    return Err(format!("inconsistent sizes for {}", e.weight));
                }
                let [_, ne1, ne2, ne3] = e.input_ne.map(|n| n as usize);
                for i3 in 0..ne3 {
                    for i2 in 0..ne2 {
                        // 3-D activations against a 2-D weight are flattened onto its one matrix
                        let mat = (i3 % w3) * w2 + (i2 % w2);
                        for row in 0..ne1 {
                            let x = &e.input[((i3 * ne2 + i2) * ne1 + row) * ne0..][..ne0];
                            accumulate(&mut st.values[mat * ne0..(mat + 1) * ne0], x);
                        }
                    }
                }
                if !st.values.iter().all(|v| v.is_finite()) {
                    return Err(format!("non-finite values in {}", e.weight));
                }
                let rows = (ne1 * ne2 * ne3 / n_mat) as i64;
                for c in &mut st.counts {
                    *c += rows;
                }
            }
        }
        Ok(())
    }

    /// Chunks covered (llama-imatrix's `m_last_chunk`): the largest count over `chunk_size`.
    pub fn chunk_count(&self, chunk_size: usize) -> u32 {
        let max = self.stats.values().flat_map(|s| s.counts.iter().copied()).max().unwrap_or(0);
        (max / chunk_size.max(1) as i64) as u32
    }

    /// Writes the GGUF imatrix (llama-imatrix's `save_imatrix`): `general.type` "imatrix", the
    /// datasets, chunk count and size, then per weight, by name, `NAME.in_sum2` [ne0, n_mat] and
    /// `NAME.counts` [1, n_mat], F32.
    pub fn write(&self, path: &Path, datasets: &[String], chunk_size: usize) -> Result<()> {
        let kv = vec![
            ("general.type".to_string(), Value::Str("imatrix".into())),
            ("imatrix.datasets".to_string(), Value::Array(Array::Str(datasets.to_vec()))),
            ("imatrix.chunk_count".to_string(), Value::U32(self.chunk_count(chunk_size))),
            ("imatrix.chunk_size".to_string(), Value::U32(chunk_size as u32)),
        ];
        let mut tensors = Vec::new();
        let mut data: Vec<Vec<u8>> = Vec::new();
        for (name, st) in self.stats.iter().filter(|(_, s)| !s.values.is_empty() && !s.counts.is_empty()) {
            let n_mat = st.counts.len();
            // ggml_n_dims: trailing ones are not dimensions
            let n_dims = if n_mat > 1 { 2 } else { 1 };
            let ne0 = (st.values.len() / n_mat) as i64;
            tensors.push(TensorEntry { name: format!("{name}.in_sum2"), ty: Type::F32, ne: [ne0, n_mat as i64, 1, 1], n_dims });
            data.push(st.values.iter().flat_map(|v| v.to_le_bytes()).collect());
            tensors.push(TensorEntry { name: format!("{name}.counts"), ty: Type::F32, ne: [1, n_mat as i64, 1, 1], n_dims });
            data.push(st.counts.iter().flat_map(|&c| (c as f32).to_le_bytes()).collect());
        }
        if tensors.is_empty() {
            anyhow::bail!("no weight products were observed: nothing to write");
        }
        let mut w = Writer::create(path, &kv, tensors, DEFAULT_ALIGNMENT)?;
        for d in &data {
            w.write_tensor(d)?;
        }
        w.finish()
    }
}

/// acc_j += x_j², in f32 as llama-imatrix accumulates.
fn accumulate(acc: &mut [f32], x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v * v;
    }
}

/// Evaluates `tokens` in chunks of `n_ctx` (each from an empty cache, its first token BOS when
/// the model adds one, every row an output so the last layer sees them all) while `collector`
/// gathers the statistics, in llama-imatrix's order: it decodes `n_batch / n_ctx` chunks at once
/// as that many sequences, which llama.cpp cuts into micro-batches holding an equal share of
/// each (`split_equal`), so the rows reach the sums interleaved — here each share is its own
/// piece, in the same order, and the float sums come out bit for bit the same.
/// `progress(chunk, n_chunks, running_ppl)` after each chunk (the perplexity of the chunks'
/// second halves, as llama-imatrix prints it). Returns the chunks evaluated.
#[allow(clippy::too_many_arguments)]
pub fn compute(
    dec: &mut Decoder,
    tokens: &[u32],
    n_ctx: usize,
    n_batch: usize,
    n_ubatch: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    collector: Rc<RefCell<Collector>>,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<usize> {
    let n_chunks = crate::perplexity::chunk_count(tokens.len(), n_ctx, max_chunks)?;
    let n_seq = sequences(n_ctx, n_batch);
    if (dec.kv.n_seq() as usize) < n_seq {
        anyhow::bail!("the context holds {} sequences; chunks of {n_ctx} in batches of {n_batch} need {n_seq}", dec.kv.n_seq());
    }
    let (c1, c2) = (collector.clone(), collector.clone());
    dec.set_matmul_observer(Some(ggml::MatMulObserver {
        wants: Box::new(move |w, is_id, ne| c1.borrow().wants(w, is_id, ne)),
        see: Box::new(move |e| c2.borrow_mut().see(e)),
    }));
    let result = (|| -> Result<usize> {
        let n_vocab = dec.n_vocab();
        let first = n_ctx / 2;
        let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
        let mut logits: Vec<Vec<f32>> = vec![Vec::with_capacity(n_ctx * n_vocab); n_seq];
        for g in (0..n_chunks).step_by(n_seq) {
            let k = n_seq.min(n_chunks - g);
            let chunk = |s: usize, from: usize, to: usize| -> Vec<u32> {
                let mut t = tokens[(g + s) * n_ctx + from..(g + s) * n_ctx + to].to_vec();
                if let (0, Some(b)) = (from, bos) {
                    t[0] = b;
                }
                t
            };
            dec.kv.clear();
            logits.iter_mut().for_each(Vec::clear);
            // one sequence: pieces of n_batch, cut into micro-batches as usual; several: each
            // micro-batch's share of every sequence in turn
            let (piece, batch_rows) = if k == 1 { (n_batch.min(n_ctx), None) } else { ((n_ubatch / k).max(1), Some(k)) };
            for from in (0..n_ctx).step_by(piece) {
                let to = (from + piece).min(n_ctx);
                collector.borrow_mut().batch_rows = batch_rows.map(|k| (k * (to - from)) as i64);
                for (s, out) in logits.iter_mut().enumerate().take(k) {
                    let mut b = crate::decoder::Batch::default();
                    for (i, &t) in chunk(s, from, to).iter().enumerate() {
                        b.add(t, (from + i) as i32, s as u32, true);
                    }
                    dec.decode_batch(&b, out)?;
                }
                let mut c = collector.borrow_mut();
                c.flush();
                if let Some(e) = c.error.take() {
                    anyhow::bail!("importance matrix: {e}");
                }
            }
            for (s, l) in logits.iter().enumerate().take(k) {
                let c = g + s;
                let rows = &l[first * n_vocab..(n_ctx - 1) * n_vocab];
                crate::perplexity::score_rows(rows, n_vocab, &tokens[c * n_ctx + first + 1..(c + 1) * n_ctx], &mut nll, &mut nll2);
                count += n_ctx - 1 - first;
                progress(c + 1, n_chunks, (nll / count as f64).exp());
            }
        }
        Ok(n_chunks)
    })();
    collector.borrow_mut().batch_rows = None;
    dec.set_matmul_observer(None);
    result
}

/// Chunks decoded at once, as llama-imatrix: as many as a batch holds, at least one.
pub fn sequences(n_ctx: usize, n_batch: usize) -> usize {
    (n_batch / n_ctx.max(1)).max(1)
}

/// An importance matrix as `quantize` uses it: per weight, the mean square of each input column
/// (per expert), and where it came from.
#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    pub entries: HashMap<String, Vec<f32>>,
    pub datasets: Vec<String>,
    pub chunk_count: u32,
}

impl Imatrix {
    /// Reads a GGUF imatrix (llama-imatrix's format; its older `.dat` format is not read), each
    /// entry's sums divided by its counts as llama-quantize does (1 where a count is 0).
    pub fn load(path: &Path) -> Result<Imatrix> {
        let f = GgufFile::open(path)?;
        let name = path.display();
        let (Some(datasets), Some(chunk_count), Some(_)) =
            (f.get_str_array("imatrix.datasets", None)?, f.get_u32("imatrix.chunk_count")?, f.get_u32("imatrix.chunk_size")?)
        else {
            crate::bail_input!(
                "{name}: not an importance matrix (no imatrix.datasets, chunk_count, chunk_size; the old .dat format is not read)"
            );
        };
        let mut pairs: BTreeMap<&str, (Option<&crate::gguf::TensorInfo>, Option<&crate::gguf::TensorInfo>)> = BTreeMap::new();
        for t in f.tensors() {
            if let Some(n) = t.name.strip_suffix(".in_sum2") {
                pairs.entry(n).or_default().0 = Some(t);
            } else if let Some(n) = t.name.strip_suffix(".counts") {
                pairs.entry(n).or_default().1 = Some(t);
            }
        }
        if pairs.is_empty() {
            crate::bail_input!("{name}: an importance matrix without entries");
        }
        let floats = |t: &crate::gguf::TensorInfo| -> Result<Vec<f32>> {
            if t.ty != Type::F32 {
                crate::bail_input!("{name}: {} is {}, not f32", t.name, t.ty.name());
            }
            Ok(f.tensor_data(t).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        let mut entries = HashMap::new();
        for (weight, pair) in pairs {
            let (Some(sums), Some(counts)) = pair else { crate::bail_input!("{name}: {weight} lacks its sums or its counts") };
            let (sums, counts) = (floats(sums)?, floats(counts)?);
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                crate::bail_input!("{name}: {weight}: {} sums do not divide into {} counts", sums.len(), counts.len());
            }
            let ne0 = sums.len() / counts.len();
            let mut e = vec![0f32; sums.len()];
            for (j, &c) in counts.iter().enumerate() {
                // llama.cpp rounds the stored counts to integers first
                let c = c.round() as i64 as f32;
                for i in 0..ne0 {
                    e[j * ne0 + i] = if c > 0.0 { sums[j * ne0 + i] / c } else { 1.0 };
                }
            }
            if let Some(v) = e.iter().find(|v| !v.is_finite()) {
                crate::bail_input!("{name}: {weight} holds a non-finite value ({v})");
            }
            entries.insert(weight.to_string(), e);
        }
        Ok(Imatrix { entries, datasets: datasets.to_vec(), chunk_count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_expert_products_accumulate_as_llama_imatrix() {
        let mut c = Collector::default();
        assert!(!c.wants("blk.0.attn_q.weight", false, [4, 8, 1, 1]), "fewer than 16 rows");
        assert!(c.wants("blk.0.attn_q.weight", false, [4, 16, 1, 1]) && !c.wants("output.weight", false, [4, 16, 1, 1]));
        assert!(c.wants("anything", true, [4, 1, 1, 1]));
        let input: Vec<f32> = (0..8).map(|i| i as f32).collect();
        c.see(&MatMulEval { weight: "w", weight_ne: [4, 3, 1, 1], input: &input, input_ne: [4, 2, 1, 1], ids: None });
        assert_eq!(c.stats["w"], Stats { values: vec![16.0, 26.0, 40.0, 58.0], counts: vec![2] });
        // two experts of three chosen per token, one input row broadcast to both
        let ids = [0, 2, 2, 1];
        c.see(&MatMulEval { weight: "e", weight_ne: [4, 3, 3, 1], input: &input, input_ne: [4, 1, 2, 1], ids: Some((&ids, 2)) });
        let e = &c.stats["e"];
        assert_eq!(e.counts, vec![1, 1, 2]);
        assert_eq!(&e.values[..4], &[0.0, 1.0, 4.0, 9.0]);
        assert_eq!(&e.values[8..], &[16.0, 26.0, 40.0, 58.0]);
        assert_eq!(c.chunk_count(1), 2);
        let bad = [f32::NAN; 4];
        c.see(&MatMulEval { weight: "w", weight_ne: [4, 3, 1, 1], input: &bad, input_ne: [4, 1, 1, 1], ids: None });
        assert!(c.error.as_deref().is_some_and(|e| e.contains("non-finite")));
    }

    #[test]
    fn a_written_matrix_loads_as_means() {
        let dir = std::env::temp_dir().join(format!("ferrite-imatrix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        let mut c = Collector::default();
        c.stats.insert("blk.0.ffn_up.weight".into(), Stats { values: vec![2.0, 4.0], counts: vec![2] });
        c.stats.insert("blk.0.ffn_up_exps.weight".into(), Stats { values: vec![3.0, 6.0, 1.0, 1.0], counts: vec![3, 0] });
        c.write(&path, &["text.txt".into()], 1).unwrap();
        let m = Imatrix::load(&path).unwrap();
        assert_eq!(m.entries["blk.0.ffn_up.weight"], vec![1.0, 2.0]);
        assert_eq!(m.entries["blk.0.ffn_up_exps.weight"], vec![1.0, 2.0, 1.0, 1.0]);
        assert_eq!((m.datasets.as_slice(), m.chunk_count), (&["text.txt".to_string()][..], 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
