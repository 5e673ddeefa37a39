//! The grammar's state while a sequence is generated: the pushdown stacks, which tokens they
//! allow (one token, or the whole vocabulary as a mask), and advancing them by a chosen token.

use super::{Grammar, Kind};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use std::collections::HashSet;
use std::sync::Arc;

/// A stack of positions (indices into the grammar's elements); the top is the last.
type Stack = Vec<u32>;

/// An unfinished UTF-8 char at the end of a token: its bits so far and the bytes it still
/// needs; `n_remain < 0` marks bytes that are not UTF-8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Partial {
    value: u32,
    n_remain: i32,
}

/// Decodes `bytes` (up to the first NUL) into code points, continuing the char `start` left
/// unfinished, as llama.cpp's `decode_utf8`: the code points completed, and the char left
/// unfinished at the end. Bytes that are not UTF-8 give no code points and `n_remain = -1`.
pub(crate) fn decode(bytes: &[u8], start: Partial) -> (Vec<u32>, Partial) {
    const LEN: [i32; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4];
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let bytes = &bytes[..end];
    let mut cps = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut value = start.value;
    let mut n_remain = start.n_remain;
    while i < bytes.len() && n_remain > 0 {
        if bytes[i] >> 6 != 2 {
            return (Vec::new(), Partial { value: 0, n_remain: -1 });
        }
        value = (value << 6) + (bytes[i] & 0x3f) as u32;
        i += 1;
        n_remain -= 1;
    }
    if start.n_remain > 0 && n_remain == 0 {
        cps.push(value);
    }
    while i < bytes.len() {
        let first = bytes[i];
        n_remain = LEN[(first >> 4) as usize] - 1;
        if n_remain < 0 {
            return (Vec::new(), Partial { value: 0, n_remain });
        }
        value = (first & ((1u16 << (7 - n_remain)) - 1) as u8) as u32;
        i += 1;
        while i < bytes.len() && n_remain > 0 {
            value = (value << 6) + (bytes[i] & 0x3f) as u32;
            i += 1;
            n_remain -= 1;
        }
        if n_remain == 0 {
            cps.push(value);
        }
    }
    (cps, Partial { value, n_remain })
}

/// How the grammar sees each token of a vocabulary, computed once per tokenizer.
pub struct TokenTable {
    /// Per token: its text with special tokens rendered.
    pieces: Vec<Vec<u8>>,
    /// Per token: an end-of-generation token?
    eog: Vec<bool>,
    /// Tokens that can ever be allowed by text (not end-of-generation, not empty, not starting
    /// with byte 0), sorted by their code points.
    sorted: Vec<Entry>,
    /// Code points of the sorted tokens, back to back.
    cps: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Entry {
    id: u32,
    /// Range of this token's code points in `TokenTable::cps` (or in a caller's buffer).
    start: u32,
    len: u32,
    partial: Partial,
}

impl TokenTable {
    pub fn new(tok: &Tokenizer) -> TokenTable {
        let n = tok.n_vocab();
        let pieces: Vec<Vec<u8>> = (0..n as u32).map(|id| tok.token_to_piece(id, true)).collect();
        let eog: Vec<bool> = (0..n as u32).map(|id| tok.is_eog(id)).collect();
        let mut decoded: Vec<(u32, Vec<u32>, Partial)> = Vec::new();
        for (id, p) in pieces.iter().enumerate() {
            if eog[id] || p.is_empty() || p[0] == 0 {
                continue;
            }
            let (cps, partial) = decode(p, Partial::default());
            decoded.push((id as u32, cps, partial));
        }
        decoded.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        let mut cps = Vec::new();
        let mut sorted = Vec::with_capacity(decoded.len());
        for (id, c, partial) in decoded {
            sorted.push(Entry { id, start: cps.len() as u32, len: c.len() as u32, partial });
            cps.extend_from_slice(&c);
        }
        TokenTable { pieces, eog, sorted, cps }
    }

    pub fn n_vocab(&self) -> usize {
        self.pieces.len()
    }
}

/// One sequence's position in a grammar.
#[derive(Clone)]
pub struct GrammarState {
    g: Arc<Grammar>,
    stacks: Vec<Stack>,
    partial: Partial,
    /// Scratch for masks.
    allowed: Vec<bool>,
    /// Transitions of stack sets, kept across tokens (the same states recur).
    memo: Memo,
}

impl std::fmt::Debug for GrammarState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrammarState({} stacks)", self.stacks.len())
    }
}

impl GrammarState {
    pub(super) fn new(g: Arc<Grammar>) -> GrammarState {
        let mut stacks = Vec::new();
        let mut pos = g.rule(g.root);
        loop {
            let stack = if g.is_end(pos) { Vec::new() } else { vec![pos as u32] };
            g.advance(stack, &mut stacks);
            while !g.is_end(pos) {
                pos += 1;
            }
            if g.elems[pos].kind == Kind::Alt {
                pos += 1;
            } else {
                break;
            }
        }
        GrammarState { g, stacks, partial: Partial::default(), allowed: Vec::new(), memo: Memo::default() }
    }

    /// Back to the start of the grammar.
    pub fn reset(&mut self) {
        let memo = std::mem::take(&mut self.memo);
        *self = GrammarState::new(self.g.clone());
        self.memo = memo;
    }

    /// Has the grammar matched completely (so end-of-generation is allowed)?
    pub fn is_complete(&self) -> bool {
        self.stacks.iter().any(|s| s.is_empty())
    }

    /// Is token `id` allowed next?
    pub fn allows(&mut self, id: u32) -> bool {
        let t = &self.g.table;
        let Some(piece) = t.pieces.get(id as usize) else { return false };
        if t.eog[id as usize] {
            return self.is_complete();
        }
        if piece.is_empty() || piece[0] == 0 {
            return false;
        }
        let (cps, partial) = decode(piece, self.partial);
        let e = Entry { id, start: 0, len: cps.len() as u32, partial };
        let mut ok = false;
        let set = self.current_set();
        self.g.clone().walk(&mut self.memo, &[e], &cps, 0, set, &mut |_| ok = true);
        ok
    }

    /// The memo's number for the current stacks (the memo starts over when full).
    fn current_set(&mut self) -> u32 {
        if self.memo.is_full() {
            self.memo = Memo::default();
        }
        self.memo.intern(self.stacks.clone())
    }

    /// Which tokens are allowed next, one flag per token id.
    pub fn mask(&mut self) -> &[bool] {
        let g = self.g.clone();
        let t = &g.table;
        let mut allowed = std::mem::take(&mut self.allowed);
        allowed.clear();
        allowed.resize(t.pieces.len(), false);
        let complete = self.is_complete();
        for (a, &e) in allowed.iter_mut().zip(&t.eog) {
            *a = e && complete;
        }
        if self.partial.n_remain == 0 {
            let set = self.current_set();
            g.walk(&mut self.memo, &t.sorted, &t.cps, 0, set, &mut |id| allowed[id as usize] = true);
        } else {
            // after a token that ended inside a char, every token decodes differently: one by one
            for (id, a) in allowed.iter_mut().enumerate() {
                if !t.eog[id] {
                    *a = self.allows(id as u32);
                }
            }
        }
        self.allowed = allowed;
        &self.allowed
    }

    /// Advances past token `id`, which must be allowed. End-of-generation tokens leave the state
    /// as it is.
    pub fn accept(&mut self, id: u32) -> Result<()> {
        let g = self.g.clone();
        let t = &g.table;
        if t.eog.get(id as usize).copied().unwrap_or(false) {
            return Ok(());
        }
        let piece = t.pieces.get(id as usize).map(|p| p.as_slice()).unwrap_or(&[]);
        let (cps, partial) = decode(piece, self.partial);
        let mut next: Vec<Stack> = Vec::new();
        for stack in &self.stacks {
            let Some(&top) = stack.last() else { continue };
            let e = g.elems[top as usize];
            if matches!(e.kind, Kind::Token | Kind::TokenNot) {
                if (e.kind == Kind::Token) == (e.value == id) {
                    let mut s = stack[..stack.len() - 1].to_vec();
                    if !g.is_end(top as usize + 1) {
                        s.push(top + 1);
                    }
                    g.advance(s, &mut next);
                }
                continue;
            }
            let mut cur = vec![stack.clone()];
            for &c in &cps {
                cur = g.accept_char(&cur, c);
                if cur.is_empty() {
                    break;
                }
            }
            for s in cur {
                if !next.contains(&s) {
                    next.push(s);
                }
            }
        }
        if next.is_empty() {
            anyhow::bail!("token {id} does not fit the grammar");
        }
        self.stacks = next;
        self.partial = partial;
        Ok(())
    }
}

impl Grammar {
    /// Does the char element at `pos` match `c`? Also returns the position after the element.
    fn match_char(&self, mut pos: usize, c: u32) -> (bool, usize) {
        let first = self.elems[pos].kind;
        let positive = matches!(first, Kind::Char | Kind::CharAny);
        let mut found = false;
        loop {
            let e = self.elems[pos];
            if self.elems[pos + 1].kind == Kind::CharRngUpper {
                found |= e.value <= c && c <= self.elems[pos + 1].value;
                pos += 2;
            } else if e.kind == Kind::CharAny {
                found = true;
                pos += 1;
            } else {
                found |= e.value == c;
                pos += 1;
            }
            if self.elems[pos].kind != Kind::CharAlt {
                break;
            }
        }
        (found == positive, pos)
    }

    /// Could some completion of the unfinished char `p` match the char element at `pos`?
    fn match_partial(&self, mut pos: usize, p: Partial) -> bool {
        let positive = matches!(self.elems[pos].kind, Kind::Char | Kind::CharAny);
        // not UTF-8, or a 7-bit char spread over 2 bytes (overlong)
        if p.n_remain < 0 || (p.n_remain == 1 && p.value < 2) {
            return false;
        }
        let shift = (p.n_remain * 6) as u32;
        let mut low = p.value.checked_shl(shift).unwrap_or(0);
        let high = low | (1u32.checked_shl(shift).unwrap_or(0)).wrapping_sub(1);
        if low == 0 {
            if p.n_remain == 2 {
                low = 1 << 11;
            } else if p.n_remain == 3 {
                low = 1 << 16;
            }
        }
        loop {
            let e = self.elems[pos];
            if self.elems[pos + 1].kind == Kind::CharRngUpper {
                if e.value <= high && low <= self.elems[pos + 1].value {
                    return positive;
                }
                pos += 2;
            } else if e.kind == Kind::CharAny {
                return true;
            } else {
                if low <= e.value && e.value <= high {
                    return positive;
                }
                pos += 1;
            }
            if self.elems[pos].kind != Kind::CharAlt {
                return !positive;
            }
        }
    }

    /// Expands `stack` until every resulting stack has a terminal (char or token) on top or is
    /// empty (the grammar complete), adding those not already in `out`.
    fn advance(&self, stack: Stack, out: &mut Vec<Stack>) {
        // most stacks already have a terminal on top (or are empty): nothing to expand
        if stack.last().is_none_or(|&top| self.elems[top as usize].kind != Kind::RuleRef) {
            if !out.contains(&stack) {
                out.push(stack);
            }
            return;
        }
        let mut todo = vec![stack];
        let mut seen: HashSet<Stack> = HashSet::new();
        while let Some(s) = todo.pop() {
            if seen.contains(&s) {
                continue;
            }
            let Some(&top) = s.last() else {
                if !out.contains(&s) {
                    out.push(s.clone());
                }
                seen.insert(s);
                continue;
            };
            let e = self.elems[top as usize];
            match e.kind {
                Kind::RuleRef => {
                    let mut sub = self.rule(e.value);
                    loop {
                        let mut next = s[..s.len() - 1].to_vec();
                        if !self.is_end(top as usize + 1) {
                            next.push(top + 1);
                        }
                        if !self.is_end(sub) {
                            next.push(sub as u32);
                        }
                        todo.push(next);
                        while !self.is_end(sub) {
                            sub += 1;
                        }
                        if self.elems[sub].kind == Kind::Alt {
                            sub += 1;
                        } else {
                            break;
                        }
                    }
                }
                _ => {
                    if !out.contains(&s) {
                        out.push(s.clone());
                    }
                }
            }
            seen.insert(s);
        }
    }

    /// The stacks that follow `stacks` after char `c` (stacks with a token on top take no chars).
    fn accept_char<'s>(&self, stacks: impl IntoIterator<Item = &'s Stack>, c: u32) -> Vec<Stack> {
        let mut out = Vec::new();
        for s in stacks {
            let Some(&top) = s.last() else { continue };
            if matches!(self.elems[top as usize].kind, Kind::Token | Kind::TokenNot) {
                continue;
            }
            let (ok, after) = self.match_char(top as usize, c);
            if ok {
                let mut next = s[..s.len() - 1].to_vec();
                if !self.is_end(after) {
                    next.push(after as u32);
                }
                self.advance(next, &mut out);
            }
        }
        out
    }

    /// Calls `allow` for every token of `entries` (sorted by code points, all sharing their
    /// first `depth` code points, which stack set `set` follows) that the stacks allow.
    fn walk(&self, memo: &mut Memo, entries: &[Entry], cps: &[u32], depth: usize, set: u32, allow: &mut dyn FnMut(u32)) {
        if entries.is_empty() {
            return;
        }
        let cp = |e: &Entry, d: usize| cps[e.start as usize + d];
        // tokens that end here: allowed unless they end inside a char no stack can take
        let n_end = entries.iter().take_while(|e| e.len as usize == depth).count();
        for e in &entries[..n_end] {
            let ok = e.partial.n_remain == 0
                || memo.sets[set as usize].iter().any(|s| {
                    s.last().is_some_and(|&top| {
                        !matches!(self.elems[top as usize].kind, Kind::Token | Kind::TokenNot)
                            && self.match_partial(top as usize, e.partial)
                    })
                });
            if ok {
                allow(e.id);
            }
        }
        let rest = &entries[n_end..];
        if rest.is_empty() {
            return;
        }
        // stacks waiting for a whole token decide by id alone
        for s in &memo.sets[set as usize] {
            let Some(&top) = s.last() else { continue };
            let e = self.elems[top as usize];
            match e.kind {
                Kind::Token => {
                    if let Some(t) = rest.iter().find(|t| t.id == e.value) {
                        allow(t.id);
                    }
                }
                Kind::TokenNot => rest.iter().filter(|t| t.id != e.value).for_each(|t| allow(t.id)),
                _ => {}
            }
        }
        let mut i = 0;
        while i < rest.len() {
            let c = cp(&rest[i], depth);
            let j = i + rest[i..].iter().take_while(|e| cp(e, depth) == c).count();
            if let Some(next) = memo.step(self, set, c) {
                self.walk(memo, &rest[i..j], cps, depth + 1, next, allow);
            }
            i = j;
        }
    }
}

/// Stack sets met while walking the vocabulary, numbered, and the set each one goes to after a
/// char: inside a string, say, every ordinary char leads back to the same set, so most of the
/// vocabulary is walked with lookups rather than stack rewriting.
#[derive(Clone, Default)]
struct Memo {
    sets: Vec<Vec<Stack>>,
    ids: std::collections::HashMap<Vec<Stack>, u32>,
    /// (set, char) → the next set, None when no stack takes the char.
    next: std::collections::HashMap<(u32, u32), Option<u32>>,
}

/// Entries kept at most; past this the memo starts over (bounded memory on any grammar).
const MEMO_CAP: usize = 1 << 18;

impl Memo {
    fn intern(&mut self, mut set: Vec<Stack>) -> u32 {
        set.sort();
        if let Some(&id) = self.ids.get(&set) {
            return id;
        }
        let id = self.sets.len() as u32;
        self.sets.push(set.clone());
        self.ids.insert(set, id);
        id
    }

    fn step(&mut self, g: &Grammar, set: u32, c: u32) -> Option<u32> {
        if let Some(&n) = self.next.get(&(set, c)) {
            return n;
        }
        let out = g.accept_char(&self.sets[set as usize], c);
        let n = if out.is_empty() { None } else { Some(self.intern(out)) };
        self.next.insert((set, c), n);
        n
    }

    fn is_full(&self) -> bool {
        self.next.len() + self.sets.len() > MEMO_CAP
    }
}
