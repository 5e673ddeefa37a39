//! Repetition, frequency and presence penalties over a window of the last N accepted tokens
//! (llama.cpp's `penalties` sampler in `src/llama-sampler.cpp`).
//!
//! For a token seen `count` > 0 times in the window:
//!   logit' = logit * repeat   if logit <= 0,   logit / repeat   otherwise
//!            - count * frequency - presence
//! Multiplying non-positive logits (instead of dividing everything, as CTRL, Keskar et al. 2019,
//! does) keeps a penalty from making a negative logit more likely. Only the tokens in the window
//! are touched: per-token counts and the list of distinct tokens are kept up to date on accept.

use super::candidates::Candidates;
use std::collections::VecDeque;

const NONE: u32 = u32::MAX;

/// The penalty window and its parameters.
#[derive(Clone, Debug)]
pub struct Penalties {
    /// Window length: 0 disables, -1 means every token accepted since the last reset.
    last_n: i32,
    repeat: f32,
    frequency: f32,
    presence: f32,
    n_vocab: usize,
    window: VecDeque<u32>,
    /// Occurrences of each token id in the window (empty while disabled).
    counts: Vec<u32>,
    /// The distinct tokens of the window, in no particular order.
    present: Vec<u32>,
    /// Index of each token in `present`, or NONE.
    slot: Vec<u32>,
}

impl Penalties {
    /// Penalties for a vocabulary of `n_vocab` tokens. Disabled (no memory, accept records
    /// nothing) when `last_n` is 0 or when repeat = 1, frequency = 0 and presence = 0.
    pub fn new(n_vocab: usize, last_n: i32, repeat: f32, frequency: f32, presence: f32) -> Penalties {
        let mut p = Penalties {
            last_n,
            repeat,
            frequency,
            presence,
            n_vocab,
            window: VecDeque::new(),
            counts: Vec::new(),
            present: Vec::new(),
            slot: Vec::new(),
        };
        if p.is_enabled() {
            p.counts = vec![0; n_vocab];
            p.slot = vec![NONE; n_vocab];
            // The window never holds more than last_n tokens; a huge or unbounded window grows
            // on demand instead of reserving it all up front.
            let cap = if last_n > 0 { (last_n as usize).min(4096) } else { 256 };
            p.window.reserve(cap);
            p.present.reserve(cap.min(n_vocab));
        }
        p
    }

    pub fn is_enabled(&self) -> bool {
        self.last_n != 0 && !(self.repeat == 1.0 && self.frequency == 0.0 && self.presence == 0.0)
    }

    /// The window length: None when unbounded (-1).
    pub fn window_len(&self) -> Option<usize> {
        (self.last_n >= 0).then_some(self.last_n as usize)
    }

    /// Records a generated (or prompt) token, dropping the oldest once the window is full.
    /// Ids outside the vocabulary can never be penalised and are not recorded.
    pub fn accept(&mut self, token: u32) {
        if !self.is_enabled() || token as usize >= self.n_vocab {
            return;
        }
        if let Some(n) = self.window_len() {
            if self.window.len() >= n {
                if let Some(old) = self.window.pop_front() {
                    self.decrement(old);
                }
            }
        }
        self.window.push_back(token);
        self.increment(token);
    }

    /// Empties the window.
    pub fn reset(&mut self) {
        for &t in &self.present {
            self.counts[t as usize] = 0;
            self.slot[t as usize] = NONE;
        }
        self.present.clear();
        self.window.clear();
    }

    /// Occurrences of `token` in the window.
    pub fn count(&self, token: u32) -> u32 {
        self.counts.get(token as usize).copied().unwrap_or(0)
    }

    /// The window, oldest first.
    pub fn window(&self) -> impl Iterator<Item = u32> + '_ {
        self.window.iter().copied()
    }

    fn increment(&mut self, t: u32) {
        let i = t as usize;
        if self.counts[i] == 0 {
            self.slot[i] = self.present.len() as u32;
            self.present.push(t);
        }
        self.counts[i] += 1;
    }

    fn decrement(&mut self, t: u32) {
        let i = t as usize;
        self.counts[i] -= 1;
        if self.counts[i] == 0 {
            let s = self.slot[i] as usize;
            self.present.swap_remove(s);
            if let Some(&moved) = self.present.get(s) {
                self.slot[moved as usize] = s as u32;
            }
            self.slot[i] = NONE;
        }
    }

    /// The penalised logit of a token seen `count` > 0 times (same f32 operations as llama.cpp).
    #[inline]
    pub fn penalize(&self, logit: f32, count: u32) -> f32 {
        let l = if logit <= 0.0 { logit * self.repeat } else { logit / self.repeat };
        l - (count as f32 * self.frequency + if count > 0 { self.presence } else { 0.0 })
    }

    /// Penalises a dense logit vector indexed by token id.
    pub fn apply_to_logits(&self, logits: &mut [f32]) {
        if !self.is_enabled() {
            return;
        }
        for &t in &self.present {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = self.penalize(*l, self.counts[t as usize]);
            }
        }
    }

    /// Penalises a candidate list: directly while each windowed token still sits at index == id,
    /// otherwise by one pass over the list with a count lookup per candidate.
    pub fn apply(&self, c: &mut Candidates) {
        if !self.is_enabled() {
            return;
        }
        let direct = self.present.iter().all(|&t| c.data.get(t as usize).is_some_and(|x| x.id == t));
        if direct {
            for &t in &self.present {
                let x = &mut c.data[t as usize];
                x.logit = self.penalize(x.logit, self.counts[t as usize]);
            }
        } else {
            for x in c.data.iter_mut() {
                let n = self.count(x.id);
                if n > 0 {
                    x.logit = self.penalize(x.logit, n);
                }
            }
        }
        c.sorted = false;
    }
}
