//! Throughput measurement with llama-bench's method: per test a fresh context of exactly the
//! tokens it needs, a warm-up run, then `reps` timed runs from an empty cache; prompt processing
//! (pp) decodes one prompt of random tokens in batches, text generation (tg) decodes single
//! random tokens one after another. Reported: mean ± sample standard deviation of tokens/s.

use crate::decoder::{ContextOptions, Decoder};
use crate::model::Model;
use anyhow::Result;
use std::rc::Rc;
use std::time::Instant;

/// One benchmark test: `n_prompt` tokens of prompt processing or `n_gen` of generation.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub n_prompt: u32,
    pub n_gen: u32,
    pub samples_ns: Vec<u64>,
}

impl BenchResult {
    /// "pp512" / "tg128".
    pub fn name(&self) -> String {
        if self.n_prompt > 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        }
    }

    fn n_tokens(&self) -> u64 {
        (self.n_prompt + self.n_gen) as u64
    }

    pub fn samples_ts(&self) -> Vec<f64> {
        self.samples_ns.iter().map(|&ns| 1e9 * self.n_tokens() as f64 / ns as f64).collect()
    }

    pub fn avg_ts(&self) -> f64 {
        mean(&self.samples_ts())
    }

    pub fn stddev_ts(&self) -> f64 {
        stddev(&self.samples_ts())
    }

    pub fn avg_ns(&self) -> f64 {
        mean(&self.samples_ns.iter().map(|&x| x as f64).collect::<Vec<_>>())
    }

    pub fn stddev_ns(&self) -> f64 {
        stddev(&self.samples_ns.iter().map(|&x| x as f64).collect::<Vec<_>>())
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n − 1), 0 for fewer than two samples, as llama-bench.
fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// glibc's `rand()` from its default seed (1): the token ids llama-bench draws with
/// `std::rand() % n_vocab`, so that both tools time the very same tokens. Which tokens matter:
/// a prompt of rarely used ids (Gemma's 262k vocabulary has thousands of unused ones) gives
/// other activations and other attention weights, and flash attention's time depends on them
/// (glibc's `random_r`, TYPE_3: an additive feedback generator, r[i] = r[i-3] + r[i-31]).
pub struct BenchRng {
    r: [u32; 34],
    i: usize,
}

impl Default for BenchRng {
    fn default() -> Self {
        let mut r = [0u32; 34];
        r[0] = 1;
        for i in 1..31 {
            // 16807 * r mod (2^31 - 1), Schrage's method as glibc writes it
            let prev = r[i - 1] as i32;
            let (hi, lo) = (prev / 127_773, prev % 127_773);
            let mut word = 16_807 * lo - 2_836 * hi;
            if word < 0 {
                word += 2_147_483_647;
            }
            r[i] = word as u32;
        }
        for i in 31..34 {
            r[i] = r[i - 31];
        }
        let mut g = BenchRng { r, i: 34 };
        // glibc discards the first 310 outputs
        for _ in 34..344 {
            g.step();
        }
        g
    }
}

impl BenchRng {
    fn step(&mut self) -> u32 {
        // r[i-31] and r[i-3] in a ring of the last 34 values
        let v = self.r[(self.i + 3) % 34].wrapping_add(self.r[(self.i + 31) % 34]);
        self.r[self.i % 34] = v;
        self.i += 1;
        v
    }

    /// `rand()`: a value in [0, 2^31).
    pub fn rand(&mut self) -> u32 {
        self.step() >> 1
    }

    /// `rand() % n`.
    fn next(&mut self, n: u32) -> u32 {
        self.rand() % n
    }
}

/// Runs one test (`n_prompt` > 0 xor `n_gen` > 0) with `reps` timed repetitions. `rng` goes on
/// from test to test, as llama-bench's process-wide `rand()` does.
pub fn run_test(
    model: &Rc<Model>,
    opts: &ContextOptions,
    bos: Option<u32>,
    n_prompt: u32,
    n_gen: u32,
    reps: u32,
    rng: &mut BenchRng,
) -> Result<BenchResult> {
    let mut o = opts.clone();
    o.n_ctx = n_prompt + n_gen;
    let mut dec = Decoder::new(model.clone(), &o)?;
    let n_vocab = model.hparams.n_vocab;
    let mut run = |dec: &mut Decoder, n_prompt: u32, n_gen: u32| -> Result<()> {
        dec.kv.clear();
        let mut logits = Vec::new();
        if n_prompt > 0 {
            let n_batch = dec.cparams.n_batch;
            let mut done = 0u32;
            while done < n_prompt {
                let n = (n_prompt - done).min(n_batch);
                let tokens: Vec<u32> = (0..n)
                    .map(|i| match (done + i, bos) {
                        (0, Some(b)) => b,
                        _ => rng.next(n_vocab),
                    })
                    .collect();
                logits.clear();
                dec.decode(&tokens, done as i32, &[n - 1], &mut logits)?;
                done += n;
            }
        }
        let mut token = bos.unwrap_or_else(|| rng.next(n_vocab));
        for i in 0..n_gen {
            logits.clear();
            dec.decode(&[token], i as i32, &[0], &mut logits)?;
            token = rng.next(n_vocab);
        }
        Ok(())
    };
    // warm-up, as llama-bench: the whole prompt, or one generated token
    if n_prompt > 0 {
        run(&mut dec, n_prompt, 0)?;
    } else {
        run(&mut dec, 0, 1)?;
    }
    let mut samples_ns = Vec::with_capacity(reps as usize);
    for _ in 0..reps {
        let t = Instant::now();
        run(&mut dec, n_prompt, n_gen)?;
        samples_ns.push(t.elapsed().as_nanos() as u64);
    }
    Ok(BenchResult { n_prompt, n_gen, samples_ns })
}

/// One test of llama-batched-bench's method: `n_parallel` sequences each prefill `n_prompt`
/// random tokens in one batch, then generate `n_gen` tokens together (one per sequence a step).
#[derive(Clone, Debug)]
pub struct ParallelResult {
    pub n_prompt: u32,
    pub n_gen: u32,
    pub n_parallel: u32,
    /// Seconds of prompt processing and of generation, per repetition.
    pub t_pp: Vec<f64>,
    pub t_tg: Vec<f64>,
}

impl ParallelResult {
    /// Aggregate prompt tokens/s (all sequences), mean over repetitions.
    pub fn speed_pp(&self) -> f64 {
        mean(&self.t_pp.iter().map(|t| (self.n_parallel * self.n_prompt) as f64 / t).collect::<Vec<_>>())
    }

    /// Aggregate generated tokens/s (all sequences), mean over repetitions.
    pub fn speed_tg(&self) -> f64 {
        mean(&self.t_tg.iter().map(|t| (self.n_parallel * self.n_gen) as f64 / t).collect::<Vec<_>>())
    }

    pub fn t_pp(&self) -> f64 {
        mean(&self.t_pp)
    }

    pub fn t_tg(&self) -> f64 {
        mean(&self.t_tg)
    }

    /// Every token over the whole time.
    pub fn speed(&self) -> f64 {
        let n = (self.n_parallel * (self.n_prompt + self.n_gen)) as f64;
        mean(&self.t_pp.iter().zip(&self.t_tg).map(|(a, b)| n / (a + b)).collect::<Vec<_>>())
    }
}

/// Runs llama-batched-bench's test for `n_parallel` sequences (`reps` timed repetitions after a
/// warm-up of 16 tokens, as it does): a context of one stream per sequence, each of the tokens it
/// needs; the prompts in one batch (split into micro-batches by the decoder), then `n_gen` steps
/// of one token per sequence. Token ids come from `rng` (glibc's `rand()`, as llama's tools).
pub fn run_parallel(
    model: &Rc<Model>,
    opts: &ContextOptions,
    n_prompt: u32,
    n_gen: u32,
    n_parallel: u32,
    reps: u32,
    rng: &mut BenchRng,
) -> Result<ParallelResult> {
    use crate::decoder::Batch;
    let mut o = opts.clone();
    o.n_ctx = (n_prompt + n_gen).max(1);
    o.n_seq = n_parallel;
    let mut dec = Decoder::new(model.clone(), &o)?;
    let n_vocab = model.hparams.n_vocab;
    let mut logits = Vec::new();
    let mut batch = Batch::default();
    for i in 0..16.min(dec.n_ctx() as i32) {
        batch.add(rng.next(n_vocab), i, 0, false);
    }
    dec.decode_batch(&batch, &mut logits)?;
    let mut res = ParallelResult { n_prompt, n_gen, n_parallel, t_pp: Vec::new(), t_tg: Vec::new() };
    for _ in 0..reps {
        dec.kv.clear();
        batch.clear();
        for j in 0..n_parallel {
            for i in 0..n_prompt {
                batch.add(rng.next(n_vocab), i as i32, j, i + 1 == n_prompt);
            }
        }
        logits.clear();
        let t = Instant::now();
        dec.decode_batch(&batch, &mut logits)?;
        res.t_pp.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..n_gen {
            batch.clear();
            for j in 0..n_parallel {
                batch.add(rng.next(n_vocab), (n_prompt + i) as i32, j, true);
            }
            logits.clear();
            dec.decode_batch(&batch, &mut logits)?;
        }
        res.t_tg.push(t.elapsed().as_secs_f64());
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::BenchRng;

    #[test]
    fn rng_is_glibc_rand() {
        // glibc's rand() without srand: the 1st to 5th and the 1001st values
        let mut g = BenchRng::default();
        let first: Vec<u32> = (0..5).map(|_| g.rand()).collect();
        assert_eq!(first, [1804289383, 846930886, 1681692777, 1714636915, 1957747793]);
        let v1001 = (0..996).map(|_| g.rand()).last();
        assert_eq!(v1001, Some(981914693));
    }
}
