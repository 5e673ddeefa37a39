//! The token sampler: turns a row of logits into the next token through a fixed chain of
//! sampling steps, with a seeded RNG, a penalty window and reusable buffers.
//!
//! # Chain
//!
//! llama.cpp's default chain (`common/sampling.cpp` with the default `samplers` list), in this
//! order:
//!
//! 1. logit bias (`SamplerConfig::logit_bias`; -inf bans a token)
//! 2. repetition / frequency / presence penalties over the last `repeat_last_n` accepted tokens
//! 3. top-k
//! 4. typical-p
//! 5. top-p
//! 6. min-p
//! 7. temperature
//! 8. draw from softmax of what is left (xoshiro256**, see [`rng`])
//!
//! With `temp <= 0` the chain stops after step 2 and takes the highest logit, ties to the lowest
//! id. Steps that are off at their value (top_k 0, typical_p 1, top_p 1, min_p 0, temp 1,
//! penalties at 1/0/0) are skipped.
//!
//! # Use
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use ferrite::sampling::{LogitBias, Sampler, SamplerConfig};
//! let config = SamplerConfig { logit_bias: vec![LogitBias::parse("2-inf")?], ..SamplerConfig::default() };
//! let mut sampler = Sampler::new(config, 32000)?;
//! eprintln!("seed: {}", sampler.seed());
//! # let logits = vec![0.0f32; 32000];
//! let token = sampler.sample(&logits)?;
//! sampler.accept(token);
//! # Ok(()) }
//! ```
//!
//! The prompt's tokens should be passed to [`Sampler::accept`] (or [`Sampler::set_history`])
//! too, as llama.cpp does, so that penalties see them.
//!
//! # Speed
//!
//! With logit biases or penalties, `sample` copies the logits into a buffer owned by the sampler
//! and adjusts the handful of tokens concerned there; otherwise it reads the caller's logits in
//! place. Greedy then takes the argmax with a vectorised scan. With top-k on, the vocabulary
//! streams through a k-element heap (blocks that cannot beat the k-th best are skipped with one
//! vector compare), so only k candidates are ever built and sorted; the later steps work on
//! those k. Buffers keep their capacity, so steady-state sampling allocates nothing. Without
//! top-k, top-p over the whole vocabulary sorts only the best 256 unless they hold less than
//! `top_p` of the mass (as llama.cpp does); long sorts go through integer keys. Per token at a
//! 262144-token vocabulary (the ignored test `bench_sample`), on a loaded 2-core machine: greedy
//! ~30 us, default chain ~40 us, and ~35 us more for the copy when biases or penalties are on.
//!
//! # Differences from llama.cpp
//!
//! - Greedy (`temp <= 0`) ignores typical-p; llama.cpp applies the truncation samplers before
//!   its temperature step, and typical-p can there drop the top token.
//! - Ties are broken by token id everywhere (sorts, top-k, greedy) instead of by `std::sort`.
//! - The RNG is xoshiro256** seeded with a u64 through SplitMix64, not mt19937; the same seed
//!   gives different tokens than llama.cpp (but the same tokens run after run).
//! - `reset` rewinds the RNG to the same seed; llama.cpp draws a new seed when none was given.
//! - `repeat_last_n = -1` is an unbounded window (every token since the last reset); current
//!   llama.cpp's library clamps negative windows to 0 (off).
//! - The draw picks the first candidate whose running sum exceeds u*S (llama.cpp: reaches it),
//!   so a candidate of probability 0 is never drawn.
//! - Typical-p counts p == 0 tokens as adding 0 to the entropy instead of NaN.

pub mod candidates;
pub mod config;
pub mod penalties;
pub mod rng;

#[cfg(test)]
mod tests;

pub use candidates::{Candidate, Candidates};
pub use config::{LogitBias, SamplerConfig};
pub use penalties::Penalties;
pub use rng::Xoshiro256;

use crate::grammar::GrammarState;

use crate::bail_input;
use anyhow::Result;

/// A configured sampler for one sequence. See the module documentation for the chain.
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplerConfig,
    n_vocab: usize,
    seed: u64,
    rng: Xoshiro256,
    penalties: Penalties,
    /// Working copy of the logits (biases and penalties are applied here).
    logits: Vec<f32>,
    cands: Candidates,
    /// Where the sequence stands in the grammar, when one constrains it.
    grammar: Option<GrammarState>,
    /// Time the grammar took at each sampled token (checking, masking, advancing), in µs, and
    /// how many tokens needed the whole-vocabulary mask; since the last [`restart_grammar`].
    grammar_us: Vec<f32>,
    grammar_masks: usize,
}

impl Sampler {
    /// A sampler for a vocabulary of `n_vocab` tokens. Fails with `BadInput` if the config is
    /// out of range or a logit bias names a token outside the vocabulary. Draws a random seed
    /// when the config has none; [`seed`](Self::seed) reports it.
    pub fn new(config: SamplerConfig, n_vocab: usize) -> Result<Sampler> {
        config.validate()?;
        if n_vocab == 0 || n_vocab > u32::MAX as usize {
            bail_input!("cannot sample from a vocabulary of {n_vocab} tokens");
        }
        if let Some(b) = config.logit_bias.iter().find(|b| b.token as usize >= n_vocab) {
            bail_input!("logit bias {b}: token {} is outside the vocabulary (0..{n_vocab})", b.token);
        }
        if let Some(g) = &config.grammar {
            if g.n_vocab() != n_vocab {
                bail_input!("the grammar was made for a vocabulary of {} tokens, not {n_vocab}", g.n_vocab());
            }
        }
        let seed = config.seed.unwrap_or_else(rng::random_seed);
        let penalties =
            Penalties::new(n_vocab, config.repeat_last_n, config.repeat_penalty, config.frequency_penalty, config.presence_penalty);
        let mut cands = Candidates::new();
        let k = config.top_k as usize;
        let n_cands = if config.is_greedy() {
            1
        } else if k > 0 && k < n_vocab {
            k
        } else {
            n_vocab
        };
        cands.data.reserve(n_cands);
        let adjusted = !config.logit_bias.is_empty() || penalties.is_enabled();
        Ok(Sampler {
            n_vocab,
            seed,
            rng: Xoshiro256::from_seed(seed),
            penalties,
            logits: Vec::with_capacity(if adjusted { n_vocab } else { 0 }),
            cands,
            grammar: config.grammar.as_ref().map(|g| g.start()),
            grammar_us: Vec::new(),
            grammar_masks: 0,
            config,
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// The seed in use: the configured one, or the random one drawn by `new`.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The penalty window (empty when penalties are off).
    pub fn penalties(&self) -> &Penalties {
        &self.penalties
    }

    /// Runs the chain over `logits` (one per token id; normally `n_vocab` of them) and returns
    /// the chosen id. The caller's logits are not modified. Does not record the token for the
    /// penalties: call [`accept`](Self::accept) with the token actually used. Empty logits yield
    /// token 0.
    ///
    /// Under a grammar the pick is checked and, if the grammar refuses it, the chain runs again
    /// on the logits with every refused token at -inf (llama.cpp's `common_sampler_sample`:
    /// the same token as masking first when greedy, and the mask is computed only when needed);
    /// the grammar then advances past the token. A grammar that allows no token is an error
    /// ([`BadInput`](crate::error::BadInput)), never an unconstrained token.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        let Some(mut g) = self.grammar.take() else {
            return Ok(self.run_chain(logits, None));
        };
        let mut id = self.run_chain(logits, None);
        let t = std::time::Instant::now();
        let mut spent = 0.0;
        if !g.allows(id) {
            self.grammar_masks += 1;
            let mask = g.mask();
            spent += t.elapsed().as_secs_f64();
            id = self.run_chain(logits, Some(mask));
            if !mask.get(id as usize).copied().unwrap_or(false) {
                self.grammar = Some(g);
                bail_input!("the grammar allows no token here (or logit biases exclude every token it allows)");
            }
        } else {
            spent += t.elapsed().as_secs_f64();
        }
        let t = std::time::Instant::now();
        let accepted = g.accept(id);
        spent += t.elapsed().as_secs_f64();
        self.grammar_us.push((spent * 1e6) as f32);
        self.grammar = Some(g);
        accepted?;
        Ok(id)
    }

    /// The chain itself; `allowed` (one flag per token) sets every other token to -inf first.
    fn run_chain(&mut self, logits: &[f32], allowed: Option<&[bool]>) -> u32 {
        // Biases, penalties and masks go to a copy; without them the caller's logits are read in
        // place. Either way NaN (a broken model) ends up as -inf: replaced here, skipped by
        // `argmax` and `fill_top_k`, replaced by `fill`.
        let adjusted = !self.config.logit_bias.is_empty() || self.penalties.is_enabled() || allowed.is_some();
        let src: &[f32] = if adjusted {
            let buf = &mut self.logits;
            buf.clear();
            buf.extend(logits.iter().map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l }));
            if let Some(allowed) = allowed {
                for (l, &ok) in buf.iter_mut().zip(allowed) {
                    if !ok {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            for b in &self.config.logit_bias {
                if let Some(l) = buf.get_mut(b.token as usize) {
                    *l += b.bias;
                }
            }
            self.penalties.apply_to_logits(buf);
            buf
        } else {
            logits
        };

        let c = &mut self.cands;
        let cfg = &self.config;
        if cfg.is_greedy() {
            let id = candidates::argmax(src);
            c.data.clear();
            c.data.push(Candidate { id: id as u32, logit: src.get(id).copied().unwrap_or(0.0), p: 1.0 });
            c.sorted = true;
            return id as u32;
        }
        let k = cfg.top_k as usize;
        if k > 0 && k < src.len() {
            c.fill_top_k(src, k);
        } else {
            c.fill(src);
            candidates::top_k(c, cfg.top_k);
        }
        candidates::typical(c, cfg.typical_p, 0);
        candidates::top_p(c, cfg.top_p, 0);
        candidates::min_p(c, cfg.min_p, 0);
        candidates::temperature(c, cfg.temp);
        match candidates::dist(c, &mut self.rng) {
            Some(i) => c.data[i].id,
            None => 0,
        }
    }

    /// The candidates that survived the chain in the last [`sample`](Self::sample), with their
    /// final probabilities (after temperature); greedy leaves only the chosen token, at p = 1.
    pub fn candidates(&self) -> &Candidates {
        &self.cands
    }

    /// Puts the grammar (if any) back at its start, for a new answer; the RNG and the penalty
    /// history are left as they are.
    pub fn restart_grammar(&mut self) {
        if let Some(g) = &mut self.grammar {
            g.reset();
        }
        self.grammar_us.clear();
        self.grammar_masks = 0;
    }

    /// The grammar's cost since [`restart_grammar`](Self::restart_grammar): per sampled token in
    /// µs, and how many tokens needed the whole-vocabulary mask (None without a grammar).
    pub fn grammar_cost(&self) -> Option<(&[f32], usize)> {
        self.grammar.as_ref().map(|_| (self.grammar_us.as_slice(), self.grammar_masks))
    }

    /// Records a token of the sequence (prompt or generated) for the penalties.
    pub fn accept(&mut self, token: u32) {
        self.penalties.accept(token);
    }

    /// Forgets the history and rewinds the RNG to the start of the seed's stream: the sampler
    /// then behaves exactly as a new one with the same seed.
    pub fn reset(&mut self) {
        self.penalties.reset();
        if let Some(g) = &mut self.grammar {
            g.reset();
        }
        self.rng = Xoshiro256::from_seed(self.seed);
    }

    /// Replaces the history with `tokens` (e.g. a resumed conversation); only the last
    /// `repeat_last_n` of them matter. The RNG is left as it is.
    pub fn set_history(&mut self, tokens: &[u32]) {
        self.penalties.reset();
        let start = match self.penalties.window_len() {
            Some(n) => tokens.len().saturating_sub(n),
            None => 0,
        };
        for &t in &tokens[start..] {
            self.penalties.accept(t);
        }
    }
}
