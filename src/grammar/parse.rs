//! The GBNF parser: llama.cpp's grammar syntax (`grammars/README.md`) into flat rules of
//! elements, with the same rule numbering and the same rewriting of repetitions.
//!
//! The method follows llama.cpp's `llama_grammar_parser` (`src/llama-grammar.cpp`) so that a
//! grammar means exactly what it means there: `S{m,n}` becomes `m` copies of `S` then a chain of
//! `n-m` optional rules, `S*`/`S+`/`S?` are `{0,}`/`{1,}`/`{0,1}`, groups become synthesized
//! rules, char classes are positive/negated lists of chars and ranges, `.` is any char, and
//! `<[id]>`/`<text>` (with `!` to negate) match a whole token.

use super::{Elem, Kind};
use std::collections::HashMap;

/// Most copies a repetition may create (llama.cpp's `MAX_REPETITION_THRESHOLD`).
const MAX_REPETITIONS: u64 = 2000;
/// Most elements a grammar may hold after rewriting: hostile input must not take the memory.
const MAX_ELEMENTS: usize = 4 << 20;

/// A grammar parsed into rules; `rules[id]` is a list of alternates, each ended by `Alt` (or
/// `End` for the last).
pub(crate) struct Parsed {
    pub rules: Vec<Vec<Elem>>,
    pub names: HashMap<String, u32>,
}

/// Resolves a `<text>` token reference to its id (the model's tokenizer with special tokens
/// parsed); `None` when the text is not exactly one token.
pub(crate) type TokenLookup<'a> = &'a dyn Fn(&str) -> Option<u32>;

struct Parser<'a> {
    src: &'a [u8],
    names: HashMap<String, u32>,
    n_ids: u32,
    rules: Vec<Vec<Elem>>,
    n_elems: usize,
    token: Option<TokenLookup<'a>>,
}

type PResult<T> = Result<T, (usize, String)>;

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

/// Parses GBNF text. Errors name the line and column.
pub(crate) fn parse(text: &str, token: Option<TokenLookup<'_>>) -> Result<Parsed, String> {
    let mut p = Parser { src: text.as_bytes(), names: HashMap::new(), n_ids: 0, rules: Vec::new(), n_elems: 0, token };
    match p.parse_all() {
        Ok(()) => Ok(Parsed { rules: p.rules, names: p.names }),
        Err((pos, msg)) => {
            let before = &p.src[..pos.min(p.src.len())];
            let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
            let col = before.len() - before.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1) + 1;
            Err(format!("grammar line {line}, column {col}: {msg}"))
        }
    }
}

impl Parser<'_> {
    /// The byte at `i`; 0 past the end (as the C string llama.cpp reads; a NUL ends it too).
    fn at(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn space(&self, mut i: usize, newline_ok: bool) -> usize {
        loop {
            match self.at(i) {
                b' ' | b'\t' => i += 1,
                b'\r' | b'\n' if newline_ok => i += 1,
                b'#' => {
                    while !matches!(self.at(i), 0 | b'\r' | b'\n') {
                        i += 1;
                    }
                }
                _ => return i,
            }
        }
    }

    fn name_end(&self, i: usize) -> PResult<usize> {
        let mut j = i;
        while is_word(self.at(j)) {
            j += 1;
        }
        if j == i {
            return Err((i, "expected a rule name".into()));
        }
        Ok(j)
    }

    fn int_end(&self, i: usize) -> PResult<usize> {
        let mut j = i;
        while self.at(j).is_ascii_digit() {
            j += 1;
        }
        if j == i {
            return Err((i, "expected an integer".into()));
        }
        Ok(j)
    }

    fn int(&self, i: usize, j: usize) -> PResult<u64> {
        std::str::from_utf8(&self.src[i..j]).ok().and_then(|s| s.parse().ok()).ok_or((i, "integer too large".into()))
    }

    fn symbol(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.names.get(name) {
            return id;
        }
        let id = self.n_ids;
        self.n_ids += 1;
        self.names.insert(name.to_string(), id);
        id
    }

    /// A new rule id for a group or repetition of rule `base` (named `base_<id>`, as llama.cpp).
    fn generated(&mut self, base: &str) -> u32 {
        let id = self.n_ids;
        self.n_ids += 1;
        self.names.entry(format!("{base}_{id}")).or_insert(id);
        id
    }

    fn add_rule(&mut self, id: u32, rule: Vec<Elem>) -> PResult<()> {
        self.n_elems += rule.len();
        if self.n_elems > MAX_ELEMENTS {
            return Err((0, format!("the grammar grows past {MAX_ELEMENTS} elements (repetitions too large)")));
        }
        let id = id as usize;
        if self.rules.len() <= id {
            self.rules.resize(id + 1, Vec::new());
        }
        self.rules[id] = rule;
        Ok(())
    }

    /// One char (escapes `\x..`, `\u....`, `\U........`, `\t\r\n\\\"[]-`, else one UTF-8 char).
    fn char(&self, i: usize) -> PResult<(u32, usize)> {
        if self.at(i) == b'\\' {
            let hex = |n: usize| -> PResult<(u32, usize)> {
                let mut v: u32 = 0;
                for k in 0..n {
                    let d = (self.at(i + 2 + k) as char).to_digit(16).ok_or((i, format!("expected {n} hex digits")))?;
                    v = v.wrapping_shl(4) | d;
                }
                Ok((v, i + 2 + n))
            };
            return match self.at(i + 1) {
                b'x' => hex(2),
                b'u' => hex(4),
                b'U' => hex(8),
                b't' => Ok(('\t' as u32, i + 2)),
                b'r' => Ok(('\r' as u32, i + 2)),
                b'n' => Ok(('\n' as u32, i + 2)),
                c @ (b'\\' | b'"' | b'[' | b']' | b'-') => Ok((c as u32, i + 2)),
                _ => Err((i, "unknown escape".into())),
            };
        }
        if self.at(i) == 0 {
            return Err((i, "unexpected end of input".into()));
        }
        // one UTF-8 char, read as llama.cpp's `decode_utf8` (lengths from the first byte)
        let first = self.at(i);
        let len = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4][(first >> 4) as usize];
        let mut v = (first & ((1u16 << (8 - len)) - 1) as u8) as u32;
        let mut j = i + 1;
        while j < i + len && self.at(j) != 0 {
            v = (v << 6) + (self.at(j) & 0x3f) as u32;
            j += 1;
        }
        Ok((v, j))
    }

    /// `<[id]>` or `<text>` at `i`; returns the token id and the end.
    fn token(&self, i: usize) -> PResult<(u32, usize)> {
        if self.at(i) != b'<' {
            return Err((i, "expected '<'".into()));
        }
        if self.at(i + 1) == b'[' {
            let e = self.int_end(i + 2)?;
            let id = self.int(i + 2, e)?;
            if self.at(e) != b']' || self.at(e + 1) != b'>' {
                return Err((e, "expected ']>'".into()));
            }
            let id = u32::try_from(id).map_err(|_| (i, "token id too large".to_string()))?;
            return Ok((id, e + 2));
        }
        let mut j = i + 1;
        while self.at(j) != 0 && self.at(j) != b'>' {
            j += 1;
        }
        if self.at(j) != b'>' {
            return Err((j, "expected '>'".into()));
        }
        let text = String::from_utf8_lossy(&self.src[i..=j]).into_owned();
        let lookup = self.token.ok_or((i, "token references need a model's vocabulary".to_string()))?;
        let id = lookup(&text).ok_or((i, format!("'{text}' is not exactly one token")))?;
        Ok((id, j + 1))
    }

    fn parse_all(&mut self) -> PResult<()> {
        let mut i = self.space(0, true);
        while self.at(i) != 0 {
            i = self.rule(i)?;
        }
        for (id, rule) in self.rules.iter().enumerate() {
            if rule.is_empty() {
                return Err((self.src.len(), format!("rule '{}' is used but not defined", self.name_of(id as u32))));
            }
        }
        if self.rules.len() < self.n_ids as usize {
            let missing = self.rules.len() as u32;
            return Err((self.src.len(), format!("rule '{}' is used but not defined", self.name_of(missing))));
        }
        Ok(())
    }

    fn name_of(&self, id: u32) -> String {
        self.names.iter().find(|(_, &v)| v == id).map_or_else(|| format!("#{id}"), |(k, _)| k.clone())
    }

    fn rule(&mut self, i: usize) -> PResult<usize> {
        let e = self.name_end(i)?;
        let name = String::from_utf8_lossy(&self.src[i..e]).into_owned();
        let id = self.symbol(&name);
        let mut p = self.space(e, false);
        if !(self.at(p) == b':' && self.at(p + 1) == b':' && self.at(p + 2) == b'=') {
            return Err((p, "expected '::='".into()));
        }
        p = self.space(p + 3, true);
        p = self.alternates(p, &name, id, false)?;
        match self.at(p) {
            b'\r' => p += if self.at(p + 1) == b'\n' { 2 } else { 1 },
            b'\n' => p += 1,
            0 => {}
            _ => return Err((p, "expected a newline or the end".into())),
        }
        Ok(self.space(p, true))
    }

    fn alternates(&mut self, i: usize, name: &str, id: u32, nested: bool) -> PResult<usize> {
        let mut rule = Vec::new();
        let mut p = self.sequence(i, name, &mut rule, nested)?;
        while self.at(p) == b'|' {
            rule.push(Elem::new(Kind::Alt, 0));
            p = self.space(p + 1, true);
            p = self.sequence(p, name, &mut rule, nested)?;
        }
        rule.push(Elem::new(Kind::End, 0));
        self.add_rule(id, rule)?;
        Ok(p)
    }

    fn sequence(&mut self, i: usize, name: &str, rule: &mut Vec<Elem>, nested: bool) -> PResult<usize> {
        let mut last_start = rule.len();
        let mut n_prev_rules: u64 = 1;
        let mut p = i;
        loop {
            let c = self.at(p);
            if c == b'"' {
                p += 1;
                last_start = rule.len();
                n_prev_rules = 1;
                while self.at(p) != b'"' {
                    if self.at(p) == 0 {
                        return Err((p, "unexpected end of input in a string".into()));
                    }
                    let (ch, q) = self.char(p)?;
                    p = q;
                    rule.push(Elem::new(Kind::Char, ch));
                }
                p = self.space(p + 1, nested);
            } else if c == b'[' {
                p += 1;
                let mut start = Kind::Char;
                if self.at(p) == b'^' {
                    p += 1;
                    start = Kind::CharNot;
                }
                last_start = rule.len();
                n_prev_rules = 1;
                while self.at(p) != b']' {
                    if self.at(p) == 0 {
                        return Err((p, "unexpected end of input in a char class".into()));
                    }
                    let (ch, q) = self.char(p)?;
                    p = q;
                    let kind = if last_start < rule.len() { Kind::CharAlt } else { start };
                    rule.push(Elem::new(kind, ch));
                    if self.at(p) == b'-' && self.at(p + 1) != b']' {
                        if self.at(p + 1) == 0 {
                            return Err((p, "unexpected end of input in a char class".into()));
                        }
                        let (hi, q) = self.char(p + 1)?;
                        p = q;
                        rule.push(Elem::new(Kind::CharRngUpper, hi));
                    }
                }
                p = self.space(p + 1, nested);
            } else if c == b'<' || c == b'!' {
                let mut kind = Kind::Token;
                if c == b'!' {
                    kind = Kind::TokenNot;
                    p += 1;
                }
                let (id, q) = self.token(p)?;
                last_start = rule.len();
                n_prev_rules = 1;
                rule.push(Elem::new(kind, id));
                p = self.space(q, nested);
            } else if is_word(c) {
                let e = self.name_end(p)?;
                let id = self.symbol(&String::from_utf8_lossy(&self.src[p..e]));
                p = self.space(e, nested);
                last_start = rule.len();
                n_prev_rules = 1;
                rule.push(Elem::new(Kind::RuleRef, id));
            } else if c == b'(' {
                p = self.space(p + 1, true);
                let before = self.n_ids;
                let sub = self.generated(name);
                p = self.alternates(p, name, sub, true)?;
                n_prev_rules = (self.n_ids - before).max(1) as u64;
                last_start = rule.len();
                rule.push(Elem::new(Kind::RuleRef, sub));
                if self.at(p) != b')' {
                    return Err((p, "expected ')'".into()));
                }
                p = self.space(p + 1, nested);
            } else if c == b'.' {
                last_start = rule.len();
                n_prev_rules = 1;
                rule.push(Elem::new(Kind::CharAny, 0));
                p = self.space(p + 1, nested);
            } else if c == b'*' || c == b'+' || c == b'?' {
                p = self.space(p + 1, nested);
                let (min, max) = match c {
                    b'*' => (0, None),
                    b'+' => (1, None),
                    _ => (0, Some(1)),
                };
                self.repeat(p, name, rule, last_start, &mut n_prev_rules, min, max)?;
            } else if c == b'{' {
                p = self.space(p + 1, nested);
                if !self.at(p).is_ascii_digit() {
                    return Err((p, "expected an integer".into()));
                }
                let e = self.int_end(p)?;
                let min = self.int(p, e)?;
                p = self.space(e, nested);
                let mut max = Some(min);
                if self.at(p) == b'}' {
                    p = self.space(p + 1, nested);
                } else if self.at(p) == b',' {
                    p = self.space(p + 1, nested);
                    max = None;
                    if self.at(p).is_ascii_digit() {
                        let e = self.int_end(p)?;
                        max = Some(self.int(p, e)?);
                        p = self.space(e, nested);
                    }
                    if self.at(p) != b'}' {
                        return Err((p, "expected '}'".into()));
                    }
                    p = self.space(p + 1, nested);
                } else {
                    return Err((p, "expected ',' or '}'".into()));
                }
                if max.is_some_and(|m| m < min) {
                    return Err((p, "a repetition's maximum is below its minimum".into()));
                }
                if min > MAX_REPETITIONS {
                    return Err((p, format!("more than {MAX_REPETITIONS} repetitions")));
                }
                if max.is_some_and(|m| m > MAX_REPETITIONS) {
                    max = None;
                }
                self.repeat(p, name, rule, last_start, &mut n_prev_rules, min, max)?;
            } else {
                return Ok(p);
            }
        }
    }

    /// Rewrites the item at `rule[last_start..]` as repeated `min..=max` times (unbounded when
    /// `max` is None): `S{m,n}` → `S`×m then `S'(n-m)`, with `S'(x) ::= S S'(x-1) |`, and
    /// `S{m,}` → `S`×m `S'`, `S' ::= S S' |`.
    #[allow(clippy::too_many_arguments)]
    fn repeat(
        &mut self,
        p: usize,
        name: &str,
        rule: &mut Vec<Elem>,
        last_start: usize,
        n_prev_rules: &mut u64,
        min: u64,
        max: Option<u64>,
    ) -> PResult<()> {
        if last_start == rule.len() {
            return Err((p, "a repetition (*, +, ?, {}) needs an item before it".into()));
        }
        let prev: Vec<Elem> = rule[last_start..].to_vec();
        let total = match max {
            Some(m) if m > 0 => m,
            _ if min > 0 => min,
            _ => 1,
        };
        if n_prev_rules.saturating_mul(total) > MAX_REPETITIONS {
            return Err((p, "the repetition multiplies the rules past sane bounds; reduce repetitions or nesting".into()));
        }
        if min == 0 {
            rule.truncate(last_start);
        } else {
            for _ in 1..min {
                rule.extend_from_slice(&prev);
                if rule.len() > MAX_ELEMENTS {
                    return Err((p, "the repetition grows the grammar past sane bounds".into()));
                }
            }
        }
        let n_opt = match max {
            None => 1,
            Some(m) => m.saturating_sub(min),
        };
        let mut last_rec = 0;
        for k in 0..n_opt {
            let id = self.generated(name);
            let mut rec = prev.clone();
            if k > 0 || max.is_none() {
                rec.push(Elem::new(Kind::RuleRef, if max.is_none() { id } else { last_rec }));
            }
            rec.push(Elem::new(Kind::Alt, 0));
            rec.push(Elem::new(Kind::End, 0));
            self.add_rule(id, rec)?;
            last_rec = id;
        }
        if n_opt > 0 {
            rule.push(Elem::new(Kind::RuleRef, last_rec));
        }
        *n_prev_rules *= total;
        Ok(())
    }
}
