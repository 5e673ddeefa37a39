//! SentencePiece-style BPE of `llama` vocabularies (Llama 2, Mistral, Gemma): llama.cpp's
//! `llm_tokenizer_spm` algorithm over the token texts and scores.
//!
//! The text (spaces already escaped to `▁`) starts as one symbol per UTF-8 character; the adjacent
//! pair whose concatenation is a token with the highest score merges first, the leftmost on equal
//! scores; what ends unmerged and is not a token is spelled as `<0xNN>` byte tokens.
//!
//! Why not the `tokenizers` crate here (it serves gpt2 vocabularies): its BPE needs this algorithm
//! restated as a merge table — every split of every token into two tokens, 515k entries for
//! Gemma's 262k-token vocabulary — which took a second and ~120 MB at every start, more than
//! llama.cpp's whole load. This needs only a text → id table.

use super::TextIndex;
use std::collections::BinaryHeap;

/// The merger's tables; the token texts stay with the [`super::Tokenizer`] and are passed in.
pub(crate) struct Spm {
    /// Open-addressing table of token ids keyed by their text (`EMPTY`: free slot): 4 bytes per
    /// slot instead of an owned copy of every text.
    slots: Vec<u32>,
    shift: u32,
    scores: Vec<f32>,
    /// `<0xNN>` token of each byte (or the byte's one-character token), for byte fallback.
    byte_tokens: [Option<u32>; 256],
    unk: Option<u32>,
}

const EMPTY: u32 = u32::MAX;

fn hash(text: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = super::FxHasher::default();
    h.write(text.as_bytes());
    // Fibonacci hashing: the high bits are well mixed
    h.finish().wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// The greatest bigram is popped first: highest score, then leftmost (llama.cpp's comparator).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Spm {
    pub(crate) fn new(tokens: &[String], index: &TextIndex, scores: &[f32], unk: Option<u32>) -> Spm {
        let bits = (2 * tokens.len().max(1)).next_power_of_two().trailing_zeros().max(1);
        let mut spm = Spm { slots: vec![EMPTY; 1 << bits], shift: 64 - bits, scores: scores.to_vec(), byte_tokens: [None; 256], unk };
        let mask = spm.slots.len() - 1;
        for (id, t) in tokens.iter().enumerate() {
            let mut i = (hash(t) >> spm.shift) as usize;
            while spm.slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            spm.slots[i] = id as u32;
        }
        for (b, slot) in spm.byte_tokens.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            *slot = index.get(hex.as_str()).copied().or_else(|| {
                // llama.cpp falls back to the byte as a one-character string
                std::str::from_utf8(&[b as u8]).ok().and_then(|s| index.get(s).copied())
            });
        }
        spm
    }

    /// The id of the token whose text is `text` (token texts are unique).
    fn find(&self, tokens: &[String], text: &str) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = (hash(text) >> self.shift) as usize;
        loop {
            match self.slots[i] {
                EMPTY => return None,
                id if tokens[id as usize] == text => return Some(id),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Appends the ids of `text` (whitespace already escaped as `▁`).
    pub(crate) fn encode(&self, tokens: &[String], text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let len = c.len_utf8();
            let next = if start + len == text.len() { -1 } else { i as isize + 1 };
            symbols.push(Symbol { start, len, prev: i as isize - 1, next });
        }
        if symbols.is_empty() {
            return Ok(());
        }
        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for i in 1..symbols.len() {
            self.try_add_bigram(tokens, text, &symbols, i as isize - 1, i as isize, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // a side already merged into something else: stale entry
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if r.next >= 0 {
                symbols[r.next as usize].prev = b.left as isize;
            }
            let prev = symbols[b.left].prev;
            let next = symbols[b.left].next;
            self.try_add_bigram(tokens, text, &symbols, prev, b.left as isize, &mut queue);
            self.try_add_bigram(tokens, text, &symbols, b.left as isize, next, &mut queue);
        }
        let mut i = 0isize;
        while i >= 0 {
            let s = symbols[i as usize];
            let piece = &text[s.start..s.start + s.len];
            match self.find(tokens, piece) {
                Some(id) => out.push(id),
                // only single characters can be unmerged non-tokens: spell their bytes
                None => {
                    for &byte in piece.as_bytes() {
                        let id = self.byte_tokens[byte as usize]
                            .or(self.unk)
                            .ok_or_else(|| anyhow::anyhow!("the vocabulary has no token for byte 0x{byte:02X} and no unknown token"))?;
                        out.push(id);
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }

    fn try_add_bigram(&self, tokens: &[String], text: &str, symbols: &[Symbol], left: isize, right: isize, queue: &mut BinaryHeap<Bigram>) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
        let joined = &text[l.start..l.start + l.len + r.len];
        if let Some(id) = self.find(tokens, joined) {
            queue.push(Bigram { score: self.scores[id as usize], left: left as usize, right: right as usize, size: joined.len() });
        }
    }
}
