//! Grammar-constrained decoding: a GBNF grammar (llama.cpp's syntax, or one made from a JSON
//! schema by [`json_schema`]) decides which tokens may come next.
//!
//! # Semantics (those of llama.cpp's grammar sampler, `src/llama-grammar.cpp`)
//!
//! The grammar is over Unicode code points. A token is allowed iff its text (special tokens
//! rendered, so `<|im_start|>` is literal text) extends what was generated to a prefix of some
//! string of the grammar; a token that ends inside a multi-byte UTF-8 char is allowed if some
//! completion of that char can come next. Empty tokens and tokens whose first byte is 0 are
//! never allowed. The model's end-of-generation tokens are allowed only once the grammar has
//! matched completely, and then compete by logit with whatever the grammar still allows.
//! `<[id]>` / `<text>` match one token by id (`!<…>`: any other token).
//!
//! # Method
//!
//! The state is a set of pushdown stacks of positions in the rules, each stopped at a terminal
//! (llama.cpp's representation: left recursion is refused, as there). Which tokens are allowed
//! is found by walking the vocabulary sorted by code points, so tokens that share a start share
//! the work: at each depth, the stacks are advanced by each next char once for all tokens that
//! have it. Samplers check their unconstrained pick first and compute this mask only when the
//! pick is refused (llama.cpp's `common_sampler_sample` does the same), which for greedy decoding
//! gives the same token as masking first.

pub mod json_schema;
mod matcher;
mod parse;
#[cfg(test)]
mod tests;

pub use matcher::{GrammarState, TokenTable};

use crate::tokenizer::Tokenizer;
use anyhow::Result;
use std::sync::Arc;

/// What an element of a rule is (llama.cpp's `llama_gretype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// End of a rule's last alternate.
    End,
    /// End of an alternate that another follows.
    Alt,
    /// A reference to rule `value`.
    RuleRef,
    /// Char `value`, or the first of a class `[…]` (then followed by `CharAlt`/`CharRngUpper`).
    Char,
    /// The first of a negated class `[^…]`.
    CharNot,
    /// Upper bound of the range started by the previous element.
    CharRngUpper,
    /// Another char of the class.
    CharAlt,
    /// `.`: any char.
    CharAny,
    /// Token id `value`.
    Token,
    /// Any token but `value`.
    TokenNot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Elem {
    pub kind: Kind,
    pub value: u32,
}

impl Elem {
    pub fn new(kind: Kind, value: u32) -> Elem {
        Elem { kind, value }
    }
}

/// A constraint as a user gives it, before it is bound to a vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// GBNF text (root rule `root`).
    Gbnf(String),
    /// A JSON schema (its text: objects keep their order): the answer must be JSON valid under it.
    JsonSchema(String),
}

impl Constraint {
    /// The GBNF text of this constraint.
    pub fn gbnf(&self) -> Result<String> {
        match self {
            Constraint::Gbnf(g) => Ok(g.clone()),
            Constraint::JsonSchema(s) => json_schema::gbnf_from_text(s),
        }
    }

    /// The grammar bound to `tok`'s vocabulary.
    pub fn compile(&self, tok: &Tokenizer) -> Result<Arc<Grammar>> {
        Grammar::parse(&self.gbnf()?, tok)
    }
}

/// Largest grammar text accepted (bytes); a grammar is a program, not data.
pub const MAX_GRAMMAR_BYTES: usize = 4 << 20;

/// A parsed grammar bound to a vocabulary. Immutable and shared: each sequence constrained by
/// it keeps a [`GrammarState`].
pub struct Grammar {
    /// Every rule's elements, one rule after another; `starts[id]` is where rule `id` begins.
    elems: Vec<Elem>,
    starts: Vec<u32>,
    root: u32,
    table: Arc<TokenTable>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grammar({} rules, {} elements)", self.starts.len(), self.elems.len())
    }
}

impl PartialEq for Grammar {
    fn eq(&self, other: &Grammar) -> bool {
        self.root == other.root && self.starts == other.starts && self.elems == other.elems
    }
}

impl Grammar {
    /// Parses GBNF `text` (root rule `root`) for `tok`'s vocabulary. A grammar that does not
    /// parse, lacks `root`, uses an undefined rule, is left-recursive or names a token outside
    /// the vocabulary is a [`BadInput`](crate::error::BadInput) naming the line and column or rule.
    pub fn parse(text: &str, tok: &Tokenizer) -> Result<Arc<Grammar>> {
        if text.len() > MAX_GRAMMAR_BYTES {
            crate::bail_input!("the grammar is {} bytes; at most {MAX_GRAMMAR_BYTES} are accepted", text.len());
        }
        let lookup = |t: &str| -> Option<u32> {
            let ids = tok.encode(t, false, true).ok()?;
            (ids.len() == 1).then(|| ids[0])
        };
        let parsed = parse::parse(text, Some(&lookup)).map_err(|e| crate::bad_input!("{e}"))?;
        let Some(&root) = parsed.names.get("root") else {
            crate::bail_input!("the grammar has no 'root' rule");
        };
        let n_vocab = tok.n_vocab();
        for rule in &parsed.rules {
            if let Some(e) = rule.iter().find(|e| matches!(e.kind, Kind::Token | Kind::TokenNot) && e.value as usize >= n_vocab) {
                crate::bail_input!("the grammar names token {}, outside the vocabulary (0..{n_vocab})", e.value);
            }
        }
        let mut g = Grammar { elems: Vec::new(), starts: Vec::new(), root, table: tok.grammar_table() };
        for rule in &parsed.rules {
            g.starts.push(g.elems.len() as u32);
            g.elems.extend_from_slice(rule);
        }
        if let Some(id) = g.left_recursive() {
            let name = parsed.names.iter().find(|(_, &v)| v == id).map_or("?", |(k, _)| k.as_str());
            crate::bail_input!("the grammar's rule '{name}' is left-recursive (not supported, as in llama.cpp)");
        }
        Ok(Arc::new(g))
    }

    /// Checks GBNF `text` without a vocabulary (`<text>` token references are not resolved):
    /// the same errors as [`parse`](Self::parse) otherwise.
    pub fn check(text: &str) -> Result<()> {
        let any = |_: &str| Some(0);
        let parsed = parse::parse(text, Some(&any)).map_err(|e| crate::bad_input!("{e}"))?;
        if !parsed.names.contains_key("root") {
            crate::bail_input!("the grammar has no 'root' rule");
        }
        Ok(())
    }

    /// A fresh state at the start of the grammar.
    pub fn start(self: &Arc<Self>) -> GrammarState {
        GrammarState::new(self.clone())
    }

    /// The vocabulary this grammar was built for (its size).
    pub fn n_vocab(&self) -> usize {
        self.table.n_vocab()
    }

    fn rule(&self, id: u32) -> usize {
        self.starts[id as usize] as usize
    }

    fn is_end(&self, pos: usize) -> bool {
        matches!(self.elems[pos].kind, Kind::End | Kind::Alt)
    }

    /// The first rule found to be left-recursive (a rule that can reach itself without
    /// consuming a char), as llama.cpp's `llama_grammar_detect_left_recursion`.
    fn left_recursive(&self) -> Option<u32> {
        let n = self.starts.len();
        let mut visited = vec![false; n];
        let mut in_progress = vec![false; n];
        let mut may_be_empty = vec![false; n];
        for r in 0..n {
            if visited[r] {
                continue;
            }
            if let Some(bad) = self.left_rec_from(r, &mut visited, &mut in_progress, &mut may_be_empty, 0) {
                return Some(bad);
            }
        }
        None
    }

    fn left_rec_from(
        &self,
        r: usize,
        visited: &mut [bool],
        in_progress: &mut [bool],
        may_be_empty: &mut [bool],
        depth: usize,
    ) -> Option<u32> {
        if in_progress[r] || depth > 2_000 {
            return Some(r as u32);
        }
        in_progress[r] = true;
        let start = self.starts[r] as usize;
        let end = self.starts.get(r + 1).map_or(self.elems.len(), |&s| s as usize);
        let body = &self.elems[start..end];
        let mut at_start = true;
        for e in body {
            if matches!(e.kind, Kind::End | Kind::Alt) {
                if at_start {
                    may_be_empty[r] = true;
                    break;
                }
                at_start = true;
            } else {
                at_start = false;
            }
        }
        let mut leftmost = true;
        for e in body {
            match e.kind {
                Kind::RuleRef if leftmost => {
                    let sub = e.value as usize;
                    if let Some(bad) = self.left_rec_from(sub, visited, in_progress, may_be_empty, depth + 1) {
                        return Some(bad);
                    }
                    if !may_be_empty[sub] {
                        leftmost = false;
                    }
                }
                Kind::End | Kind::Alt => leftmost = true,
                _ => leftmost = false,
            }
        }
        in_progress[r] = false;
        visited[r] = true;
        None
    }
}
