//! Splitting raw text at the texts of special tokens (control, user-defined and unknown tokens),
//! before the text pieces in between go to the BPE pipeline.
//!
//! The rule is llama.cpp's `tokenizer_st_partition` (src/llama-vocab.cpp): special tokens are
//! taken one at a time, longest text first; each takes all its leftmost non-overlapping
//! occurrences in the text that earlier (longer) ones left over. Without special parsing only
//! user-defined tokens are taken. A token with the LSTRIP/RSTRIP attribute also swallows the
//! ASCII whitespace on that side. This is not the leftmost-longest rule of `tokenizers`'
//! added vocabulary, so ferrite does this step itself.
//!
//! To stay linear in the text, one trie walk first finds which special tokens occur at all;
//! only those then run the search. (llama.cpp searches for every one of its special tokens.)

use super::rules::attr;

/// The special tokens of a vocabulary in llama.cpp's order, with a trie over their texts.
pub(crate) struct Specials {
    /// Token ids, longest text first; equal lengths by id (llama.cpp's sort leaves that order
    /// unspecified).
    order: Vec<u32>,
    nodes: Vec<Node>,
}

struct Node {
    /// (byte, child node), sorted by byte.
    next: Vec<(u8, u32)>,
    /// Index into `order` of the token whose text ends here.
    token: Option<u32>,
}

/// A piece of partitioned text: raw text (a byte range of the input) or a special token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frag {
    Text(usize, usize),
    Token(u32),
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

impl Specials {
    pub(crate) fn new(texts: &[String], attrs: &[u16]) -> Specials {
        let mut order: Vec<u32> =
            (0..texts.len() as u32).filter(|&i| attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i as usize].len()));
        let mut nodes = vec![Node { next: Vec::new(), token: None }];
        for (k, &id) in order.iter().enumerate() {
            let mut at = 0usize;
            for &b in texts[id as usize].as_bytes() {
                at = match nodes[at].next.binary_search_by_key(&b, |e| e.0) {
                    Ok(j) => nodes[at].next[j].1 as usize,
                    Err(j) => {
                        let child = nodes.len();
                        nodes.push(Node { next: Vec::new(), token: None });
                        nodes[at].next.insert(j, (b, child as u32));
                        child
                    }
                };
            }
            nodes[at].token = Some(k as u32);
        }
        Specials { order, nodes }
    }

    /// Which entries of `order` occur somewhere in `text`.
    fn present(&self, text: &[u8]) -> Vec<bool> {
        let mut seen = vec![false; self.order.len()];
        if self.order.is_empty() {
            return seen;
        }
        for start in 0..text.len() {
            let mut at = 0usize;
            for &b in &text[start..] {
                match self.nodes[at].next.binary_search_by_key(&b, |e| e.0) {
                    Ok(j) => at = self.nodes[at].next[j].1 as usize,
                    Err(_) => break,
                }
                if let Some(k) = self.nodes[at].token {
                    seen[k as usize] = true;
                }
            }
        }
        seen
    }

    /// Partitions `text` into raw pieces and special tokens, appending to `out`.
    pub(crate) fn partition(&self, text: &str, parse_special: bool, texts: &[String], attrs: &[u16], out: &mut Vec<Frag>) {
        if text.is_empty() {
            return;
        }
        let bytes = text.as_bytes();
        let mut frags = vec![Frag::Text(0, text.len())];
        let present = self.present(bytes);
        for (k, &id) in self.order.iter().enumerate() {
            let a = attrs[id as usize];
            if !present[k] || (!parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0) {
                continue;
            }
            let pat = texts[id as usize].as_str();
            if !frags.iter().any(|f| matches!(*f, Frag::Text(s, e) if text[s..e].contains(pat))) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Frag::Text(mut s, e) = f else {
                    next.push(f);
                    continue;
                };
                while s < e {
                    let Some(m) = text[s..e].find(pat).map(|m| s + m) else {
                        next.push(Frag::Text(s, e));
                        break;
                    };
                    let mut left_end = m;
                    if a & attr::LSTRIP != 0 {
                        while left_end > s && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > s {
                        next.push(Frag::Text(s, left_end));
                    }
                    next.push(Frag::Token(id));
                    s = m + pat.len();
                    if a & attr::RSTRIP != 0 {
                        while s < e && is_c_space(bytes[s]) {
                            s += 1;
                        }
                    }
                }
            }
            frags = next;
        }
        out.extend(frags);
    }
}
