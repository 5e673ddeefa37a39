//! Sampler settings: `SamplerConfig` with llama.cpp's defaults and its validation, and
//! `LogitBias` with the `--logit-bias ID(+|-)BIAS` syntax.

use crate::{bad_input, bail_input};
use anyhow::Result;
use std::fmt;

/// A bias added to one token's logit before any other sampling step. A bias of -inf bans the
/// token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitBias {
    pub token: u32,
    pub bias: f32,
}

impl LogitBias {
    /// Parses llama.cpp's `--logit-bias` syntax: a token id, `+` or `-`, and a magnitude, e.g.
    /// `15043+1`, `15043-1.5`, `15043-inf` (ban). Surrounding whitespace is ignored; the
    /// magnitude is an unsigned decimal or `inf`/`infinity`; `+inf` and NaN are refused.
    pub fn parse(s: &str) -> Result<LogitBias> {
        const SYNTAX: &str = "expected TOKEN_ID followed by + or - and a number, e.g. 15043+1, 15043-1.5 or 15043-inf";
        let t = s.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            bail_input!("invalid logit bias '{s}': {SYNTAX}");
        }
        let token: u32 = t[..digits].parse().map_err(|_| bad_input!("invalid logit bias '{s}': token id {} is too large", &t[..digits]))?;
        let rest = &t[digits..];
        let negative = match rest.as_bytes().first() {
            Some(b'+') => false,
            Some(b'-') => true,
            _ => bail_input!("invalid logit bias '{s}': {SYNTAX}"),
        };
        let magnitude = &rest[1..];
        // f32::from_str would accept a second sign ("1+-2") and "nan"; neither is a bias.
        if !magnitude.starts_with(|ch: char| ch.is_ascii_digit() || ch == '.' || ch == 'i' || ch == 'I') {
            bail_input!("invalid logit bias '{s}': {SYNTAX}");
        }
        let v: f32 = magnitude.parse().map_err(|_| bad_input!("invalid logit bias '{s}': {SYNTAX}"))?;
        let bias = if negative { -v } else { v };
        if bias == f32::INFINITY {
            bail_input!("invalid logit bias '{s}': +inf is not allowed (use a large finite bias to force a token)");
        }
        Ok(LogitBias { token, bias })
    }
}

impl fmt::Display for LogitBias {
    /// The `--logit-bias` form, which [`LogitBias::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bias.is_sign_negative() {
            write!(f, "{}-{}", self.token, -self.bias)
        } else {
            write!(f, "{}+{}", self.token, self.bias)
        }
    }
}

/// The sampling settings. Defaults are llama.cpp's (`common_params_sampling`).
///
/// The chain these drive, in order: logit bias, penalties, top-k, typical-p, top-p, min-p,
/// temperature, draw. `temp <= 0` means greedy: the highest logit after logit bias and penalties
/// (ties to the lowest id); the other truncation settings are then irrelevant.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Temperature; <= 0 (negative included, as llama.cpp accepts) selects greedy decoding. Must
    /// be finite. Default 0.8.
    pub temp: f32,
    /// Keep the k most likely tokens; 0 = off. Must be >= 0. Default 40.
    pub top_k: i32,
    /// Nucleus sampling threshold in (0, 1]; 1 = off. Default 0.95.
    pub top_p: f32,
    /// Minimum probability relative to the best token, in [0, 1]; 0 = off. Default 0.05.
    pub min_p: f32,
    /// Locally typical sampling mass in (0, 1]; 1 = off (the default).
    pub typical_p: f32,
    /// Repetition penalty, > 0; 1 = off (the default).
    pub repeat_penalty: f32,
    /// Penalty window: the last N accepted tokens; 0 = no penalties, -1 = every token since the
    /// last reset (the whole context when the caller resets with it). Default 64.
    pub repeat_last_n: i32,
    /// Subtracted once from the logit of every token in the window; finite. Default 0.
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the window; finite. Default 0.
    pub frequency_penalty: f32,
    /// Per-token biases, applied first. Tokens must lie in the vocabulary (checked by
    /// `Sampler::new`).
    pub logit_bias: Vec<LogitBias>,
    /// RNG seed; None draws a random one, which `Sampler::seed` then reports.
    pub seed: Option<u64>,
    /// Only tokens this grammar allows may be sampled (see [`crate::grammar`]); None = free.
    pub grammar: Option<std::sync::Arc<crate::grammar::Grammar>>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            grammar: None,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding with everything else at its default.
    pub fn greedy() -> SamplerConfig {
        SamplerConfig { temp: 0.0, ..SamplerConfig::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temp <= 0.0
    }

    /// Checks every range; an out-of-range value is a [`BadInput`](crate::error::BadInput).
    pub fn validate(&self) -> Result<()> {
        if !self.temp.is_finite() {
            bail_input!("temp must be a finite number (<= 0 for greedy), got {}", self.temp);
        }
        if self.top_k < 0 {
            bail_input!("top-k must be >= 0 (0 = off), got {}", self.top_k);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail_input!("top-p must be in (0, 1] (1 = off), got {}", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail_input!("min-p must be in [0, 1] (0 = off), got {}", self.min_p);
        }
        if !(self.typical_p > 0.0 && self.typical_p <= 1.0) {
            bail_input!("typical-p must be in (0, 1] (1 = off), got {}", self.typical_p);
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            bail_input!("repeat-penalty must be a finite number > 0 (1 = off), got {}", self.repeat_penalty);
        }
        if self.repeat_last_n < -1 {
            bail_input!("repeat-last-n must be >= -1 (0 = off, -1 = whole context), got {}", self.repeat_last_n);
        }
        if !self.presence_penalty.is_finite() {
            bail_input!("presence-penalty must be finite, got {}", self.presence_penalty);
        }
        if !self.frequency_penalty.is_finite() {
            bail_input!("frequency-penalty must be finite, got {}", self.frequency_penalty);
        }
        for b in &self.logit_bias {
            if b.bias.is_nan() || b.bias == f32::INFINITY {
                bail_input!("logit bias {b}: the bias must be finite or -inf");
            }
        }
        Ok(())
    }
}
