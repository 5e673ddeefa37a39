//! Candidate lists and the pure sampling steps over them: softmax, top-k, top-p, min-p, typical-p,
//! temperature, logit bias, greedy and the distribution draw.
//!
//! Each step follows the matching sampler of llama.cpp's `src/llama-sampler.cpp` (the math, the
//! order it leaves the list in and its edge cases), so llama.cpp's `tests/test-sampling.cpp`
//! tables hold for them. Where llama.cpp leaves the order of equal logits to `std::sort`, ferrite
//! fixes it: descending logit, then ascending token id.

use super::config::LogitBias;
use super::rng::Xoshiro256;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// One token of the candidate list: its id, its (adjusted) logit and, once a step computed it,
/// its probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
    pub p: f32,
}

/// The list the sampling steps narrow down, plus scratch buffers the steps reuse so that sampling
/// a token allocates nothing once the buffers have grown.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    pub data: Vec<Candidate>,
    /// `data` is in [`order`] (descending logit, ties by ascending id).
    pub sorted: bool,
    /// (sort key, index) pairs for large sorts and typical-p's ranking.
    keys: Vec<(u64, u32)>,
    scratch: Vec<Candidate>,
    heap: BinaryHeap<Reverse<HeapKey>>,
}

/// The candidate order every sort uses: descending logit, ties by ascending id. `+ 0.0` turns
/// -0.0 into +0.0 so that the two zeros tie, as they do under `>`.
pub fn order(a: &Candidate, b: &Candidate) -> Ordering {
    (b.logit + 0.0).total_cmp(&(a.logit + 0.0)).then(a.id.cmp(&b.id))
}

/// The bits of `x` as a u32 that orders like `f32::total_cmp`.
#[inline]
fn total_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// A u64 whose ascending order is [`order`]: the inverted logit bits, then the id.
#[inline]
fn order_key(c: &Candidate) -> u64 {
    (u64::from(!total_bits(c.logit + 0.0)) << 32) | u64::from(c.id)
}

/// Sorts `data` into [`order`]. Long slices sort (u64 key, index) pairs, which compare as plain
/// integers, and then gather the candidates: about twice as fast at 262144 entries as sorting
/// the candidates with the comparator.
fn sort_slice(data: &mut [Candidate], keys: &mut Vec<(u64, u32)>, scratch: &mut Vec<Candidate>) {
    if data.len() <= 4096 {
        data.sort_unstable_by(order);
        return;
    }
    keys.clear();
    keys.extend(data.iter().enumerate().map(|(i, c)| (order_key(c), i as u32)));
    keys.sort_unstable_by_key(|k| k.0);
    scratch.clear();
    scratch.extend(keys.iter().map(|k| data[k.1 as usize]));
    data.copy_from_slice(scratch);
}

/// NaN logits (a broken model) count as -inf: never chosen, and sorts stay total.
#[inline]
fn sanitize(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else {
        l
    }
}

/// exp(l - max), where the undefined inf - inf counts as 0: tokens at +inf share the mass, and a
/// list where everything is -inf (every token banned) becomes uniform instead of NaN.
#[inline]
fn exp_rel(l: f32, max: f32) -> f32 {
    let d = l - max;
    if d.is_nan() {
        1.0
    } else {
        d.exp()
    }
}

/// A kept candidate of the streaming top-k: greater means better (higher logit, then lower id).
#[derive(Clone, Copy, Debug, PartialEq)]
struct HeapKey {
    logit: f32,
    id: u32,
}

impl Eq for HeapKey {}

impl Ord for HeapKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.logit.total_cmp(&other.logit).then(other.id.cmp(&self.id))
    }
}

impl PartialOrd for HeapKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Candidates {
    pub fn new() -> Candidates {
        Candidates::default()
    }

    /// Every token of `logits`, in id order, with p = 0 (NaN logits become -inf).
    pub fn from_logits(logits: &[f32]) -> Candidates {
        let mut c = Candidates::new();
        c.fill(logits);
        c
    }

    /// Candidates with logit = ln(p) and the given p, as llama.cpp's `sampler_tester` builds them.
    pub fn from_probs(probs: &[f32]) -> Candidates {
        let data = probs.iter().enumerate().map(|(i, &p)| Candidate { id: i as u32, logit: p.ln(), p }).collect();
        Candidates { data, ..Candidates::default() }
    }

    /// Refills the list with every token of `logits`, reusing the buffer.
    pub fn fill(&mut self, logits: &[f32]) {
        self.data.clear();
        self.data.extend(logits.iter().enumerate().map(|(i, &l)| Candidate { id: i as u32, logit: sanitize(l), p: 0.0 }));
        self.sorted = false;
    }

    /// Refills the list with the `k` best tokens of `logits`, sorted: the same list as
    /// [`fill`](Self::fill) followed by [`top_k`], without materialising the whole vocabulary.
    ///
    /// One pass keeps the k best in a min-heap. Blocks of 32 logits are first tested against the
    /// worst kept logit with a vectorisable any-greater test, so a block with nothing better
    /// costs a few vector compares; with logits in no particular order a token beats the k-th
    /// best only about k ln(n/k) times. Ids are scanned in ascending order, so a later token
    /// with an equal logit never displaces a kept one: ties keep the lower id, as [`order`]
    /// does. Should the heap churn anyway (logits ascending with id), it gives up and falls back
    /// to the O(n) partial selection of [`top_k`].
    pub fn fill_top_k(&mut self, logits: &[f32], k: usize) {
        const BLOCK: usize = 32;
        let n = logits.len();
        let k = k.min(n);
        self.data.clear();
        self.sorted = true;
        if k == 0 {
            return;
        }
        if k * 8 >= n {
            self.fill(logits);
            top_k(self, k as i32);
            return;
        }
        let heap = &mut self.heap;
        heap.clear();
        for (i, &l) in logits[..k].iter().enumerate() {
            heap.push(Reverse(HeapKey { logit: sanitize(l) + 0.0, id: i as u32 }));
        }
        let mut worst = heap.peek().map_or(f32::NEG_INFINITY, |r| r.0.logit);
        let budget = n / 32 + 4 * k;
        let mut replaced = 0;
        let mut start = k;
        while start < n {
            let end = (start + BLOCK).min(n);
            let block = &logits[start..end];
            // NaN fails every comparison: it stays out, as -inf would.
            if block.iter().fold(false, |any, &l| any | (l > worst)) {
                for (j, &l) in block.iter().enumerate() {
                    if l > worst {
                        if let Some(mut top) = heap.peek_mut() {
                            *top = Reverse(HeapKey { logit: l + 0.0, id: (start + j) as u32 });
                        }
                        worst = heap.peek().map_or(f32::NEG_INFINITY, |r| r.0.logit);
                        replaced += 1;
                    }
                }
                if replaced > budget {
                    self.fill(logits);
                    top_k(self, k as i32);
                    return;
                }
            }
            start = end;
        }
        self.data.extend(heap.drain().map(|Reverse(h)| Candidate { id: h.id, logit: h.logit, p: 0.0 }));
        self.sort_from(0);
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn ids(&self) -> Vec<u32> {
        self.data.iter().map(|c| c.id).collect()
    }

    pub fn probs(&self) -> Vec<f32> {
        self.data.iter().map(|c| c.p).collect()
    }

    /// Sorts the whole list into [`order`] unless it already is.
    pub fn sort(&mut self) {
        if !self.sorted {
            self.sort_from(0);
            self.sorted = true;
        }
    }

    /// Sorts `data[start..]` into [`order`] (does not touch `sorted`).
    fn sort_from(&mut self, start: usize) {
        sort_slice(&mut self.data[start..], &mut self.keys, &mut self.scratch);
    }

    fn max_logit(&self) -> f32 {
        if self.sorted {
            return self.data.first().map_or(f32::NEG_INFINITY, |c| c.logit);
        }
        self.data.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.logit))
    }
}

/// p = softmax(logits) over the list, without reordering it (llama.cpp's
/// `llama_sampler_softmax_impl` with `do_sort = false`; f32 throughout, as there).
pub fn softmax(c: &mut Candidates) {
    if c.is_empty() {
        return;
    }
    let max = c.max_logit();
    let mut sum = 0.0f32;
    for x in c.data.iter_mut() {
        x.p = exp_rel(x.logit, max);
        sum += x.p;
    }
    for x in c.data.iter_mut() {
        x.p /= sum;
    }
}

/// Adds each bias to its token's logit (several biases on one token add up). Tokens absent from
/// the list are skipped. Like llama.cpp's logit-bias sampler, a token still at index == id is
/// found directly; the others are searched for.
pub fn logit_bias(c: &mut Candidates, biases: &[LogitBias]) {
    for b in biases {
        match c.data.get_mut(b.token as usize) {
            Some(x) if x.id == b.token => x.logit += b.bias,
            _ => {
                if let Some(x) = c.data.iter_mut().find(|x| x.id == b.token) {
                    x.logit += b.bias;
                }
            }
        }
    }
    c.sorted = false;
}

/// Keeps the `k` highest logits, sorted (llama.cpp `top_k`): k <= 0 leaves the list alone;
/// k >= len sorts it. Selection is partial: `select_nth_unstable_by` puts the k best first in
/// O(n), and only those k are sorted.
pub fn top_k(c: &mut Candidates, k: i32) {
    if k <= 0 || c.is_empty() {
        return;
    }
    let k = (k as usize).min(c.len());
    if !c.sorted {
        if k < c.len() {
            c.data.select_nth_unstable_by(k - 1, order);
            c.data.truncate(k);
        }
        c.sort_from(0);
        c.sorted = true;
    }
    c.data.truncate(k);
}

/// Nucleus sampling (Holtzman et al. 2019; llama.cpp `top_p`): keeps the shortest prefix of the
/// sorted list whose probabilities sum to at least `p` (and at least `min_keep` tokens).
/// p >= 1 leaves the list alone. Probabilities come from a softmax over the whole list. An
/// unsorted list longer than 1024 is first sorted only in its best 256 and the rest is sorted
/// only if the prefix did not reach `p`, as llama.cpp's adaptive partial sort does.
pub fn top_p(c: &mut Candidates, p: f32, min_keep: usize) {
    if p >= 1.0 || c.is_empty() {
        return;
    }
    softmax(c);
    let n = c.len();
    let mut head = n;
    if !c.sorted {
        if n > 1024 {
            head = 256;
            c.data.select_nth_unstable_by(head - 1, order);
            c.data[..head].sort_unstable_by(order);
        } else {
            c.sort_from(0);
        }
        c.sorted = true;
    }
    let mut cum = 0.0f32;
    let mut last = n;
    for i in 0..n {
        if i == head {
            // Everything past `head` is below everything before it: sorting the tail completes
            // the order.
            c.sort_from(head);
            head = n;
        }
        cum += c.data[i].p;
        if cum >= p && i + 1 >= min_keep {
            last = i + 1;
            break;
        }
    }
    c.data.truncate(last);
}

/// Min-p (Nguyen et al. 2024; llama.cpp `min_p`): keeps the tokens whose probability is at least
/// `p` times the best one's, i.e. logit >= max_logit + ln(p). p <= 0 leaves the list alone. An
/// unsorted list is filtered in place, keeping its order; if that would keep nothing (p > 1) or
/// fewer than `min_keep`, the list is sorted and cut, always keeping the best token.
pub fn min_p(c: &mut Candidates, p: f32, min_keep: usize) {
    if p <= 0.0 || c.is_empty() {
        return;
    }
    if !c.sorted {
        let max = c.data.iter().fold(-f32::MAX, |m, x| m.max(x.logit));
        let min_logit = max + p.ln();
        let kept = c.data.iter().filter(|x| x.logit >= min_logit).count();
        if kept > 0 && kept >= min_keep {
            c.data.retain(|x| x.logit >= min_logit);
            return;
        }
        c.sort();
    }
    let min_logit = c.data[0].logit + p.ln();
    let mut i = 1;
    while i < c.len() {
        if c.data[i].logit < min_logit && i >= min_keep {
            break;
        }
        i += 1;
    }
    c.data.truncate(i);
}

/// Locally typical sampling (Meister et al. 2022; llama.cpp `typical`, after the reference
/// implementation linked there): with H the entropy of the sorted softmax, ranks tokens by
/// |-ln p - H| and keeps the best-ranked ones until their probabilities sum to more than `p`
/// (and at least `min_keep`). p >= 1 leaves the list alone. The list ends up in rank order,
/// unsorted, with the pre-cut probabilities. Tokens with p == 0 add nothing to H (the limit of
/// p ln p), where llama.cpp would add NaN.
pub fn typical(c: &mut Candidates, p: f32, min_keep: usize) {
    if p >= 1.0 || c.is_empty() {
        return;
    }
    c.sort();
    softmax(c);
    let entropy: f32 = c.data.iter().filter(|x| x.p > 0.0).map(|x| -x.p * x.p.ln()).sum();
    c.keys.clear();
    // Ascending score, ties by position (the sorted order), as one integer key.
    c.keys
        .extend(c.data.iter().enumerate().map(|(i, x)| ((u64::from(total_bits((-x.p.ln() - entropy).abs())) << 32) | i as u64, i as u32)));
    c.keys.sort_unstable_by_key(|k| k.0);
    let mut cum = 0.0f32;
    let mut last = c.keys.len();
    for (i, &(_, idx)) in c.keys.iter().enumerate() {
        cum += c.data[idx as usize].p;
        if cum > p && (min_keep == 0 || i + 1 >= min_keep) {
            last = i + 1;
            break;
        }
    }
    c.scratch.clear();
    c.scratch.extend(c.keys[..last].iter().map(|&(_, idx)| c.data[idx as usize]));
    c.data.clear();
    c.data.extend_from_slice(&c.scratch);
    c.sorted = false;
}

/// Divides the logits by `temp` (llama.cpp `temp`). temp <= 0 keeps only the first highest
/// logit and sets every other to -inf, so that the draw becomes greedy.
pub fn temperature(c: &mut Candidates, temp: f32) {
    if c.is_empty() || temp == 1.0 {
        return;
    }
    if temp <= 0.0 {
        let best = greedy(c).unwrap_or(0);
        for (i, x) in c.data.iter_mut().enumerate() {
            if i != best {
                x.logit = f32::NEG_INFINITY;
            }
        }
        return;
    }
    for x in c.data.iter_mut() {
        x.logit /= temp;
    }
}

/// Index of the first highest logit (llama.cpp `greedy`: strict `>`, so ties go to the earlier
/// candidate, which is the lower id in an id-ordered or sorted list). None if the list is empty.
pub fn greedy(c: &Candidates) -> Option<usize> {
    if c.is_empty() {
        return None;
    }
    let mut best = 0;
    let mut max = f32::NEG_INFINITY;
    for (i, x) in c.data.iter().enumerate() {
        if x.logit > max {
            max = x.logit;
            best = i;
        }
    }
    Some(best)
}

/// Index of the first highest value (ties to the lowest index); 0 when nothing beats -inf
/// (empty, all -inf or NaN). The maximum is taken in 16 independent lanes, which compiles to
/// vector max instructions, and its first occurrence is then found block by block.
pub fn argmax(values: &[f32]) -> usize {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let blocks = values.chunks_exact(LANES);
    let tail = blocks.remainder();
    for b in blocks {
        for (m, &v) in lanes.iter_mut().zip(b) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = tail.iter().chain(lanes.iter()).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for (bi, b) in values.chunks(LANES).enumerate() {
        if b.iter().fold(false, |hit, &v| hit | (v == max)) {
            return bi * LANES + b.iter().position(|&v| v == max).unwrap_or(0);
        }
    }
    0
}

/// Draws a candidate from softmax(logits) and leaves the normalised probabilities in `p`
/// (llama.cpp `dist`, its single-pass variant): with S the sum (f64) of exp(logit - max) and u
/// uniform in [0, 1), picks the first candidate whose running sum exceeds u*S. One uniform is
/// drawn per call, even for a single candidate, so the k-th token always consumes the k-th draw.
/// None if the list is empty.
pub fn dist(c: &mut Candidates, rng: &mut Xoshiro256) -> Option<usize> {
    let u = rng.next_f64();
    if c.is_empty() {
        return None;
    }
    if c.len() == 1 {
        c.data[0].p = 1.0;
        return Some(0);
    }
    let max = c.max_logit();
    let mut sum = 0.0f64;
    for x in c.data.iter_mut() {
        x.p = exp_rel(x.logit, max);
        sum += x.p as f64;
    }
    let target = sum * u;
    let mut run = 0.0f64;
    let mut selected = None;
    for (i, x) in c.data.iter_mut().enumerate() {
        if selected.is_none() {
            run += x.p as f64;
            // `>` rather than llama.cpp's `>=`: a candidate of probability 0 is never drawn,
            // even for u == 0.
            if run > target {
                selected = Some(i);
            }
        }
        x.p = (x.p as f64 / sum) as f32;
    }
    // Unreachable while S > 0 (the best candidate contributes exp(0) = 1); kept for safety.
    Some(selected.unwrap_or(c.len() - 1))
}
