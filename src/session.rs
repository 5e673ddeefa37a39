//! A conversation (or a raw completion) with a model: the one Session behind the REPL and the
//! one-shot mode. It owns the model's decoder and KV cache, the tokenizer, the sampler and the
//! transcript; each turn prefills only the tokens not already in the cache, then generates,
//! streaming text to a callback that may stop it. Context overflow follows the chosen policy and
//! is always announced through the callback.

use crate::chat::{ChatTemplate, Message, Segment};
use crate::decoder::{ContextOptions, Decoder};
use crate::error::{BadInput, Interrupted};
use crate::model::Model;
use crate::sampling::{Sampler, SamplerConfig};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use anyhow::{Context as _, Result};
use std::rc::Rc;
use std::time::Instant;

/// What to do when a conversation no longer fits the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse with an error.
    Fail,
    /// Drop the oldest half of the non-system tokens and re-read the rest (llama.cpp's context
    /// shift, done by recomputing instead of rotating cached keys).
    Shift,
    /// Drop whole earliest turns, keeping the system prompt.
    DropOldest,
}

impl Overflow {
    pub fn parse(s: &str) -> Result<Overflow> {
        match s {
            "fail" => Ok(Overflow::Fail),
            "shift" => Ok(Overflow::Shift),
            "drop-oldest" => Ok(Overflow::DropOldest),
            _ => crate::bail_input!("--overflow: '{s}' is not fail, shift or drop-oldest"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Overflow::Fail => "fail",
            Overflow::Shift => "shift",
            Overflow::DropOldest => "drop-oldest",
        }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// The token limit (-n) or the context was reached.
    Length,
    /// The caller (Ctrl-C, closed output) stopped it.
    Interrupted,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::Stop => "stop",
            StopReason::Length => "length",
            StopReason::Interrupted => "interrupted",
        }
    }
}

/// What the session tells its front end while it works.
pub enum Event<'a> {
    /// Generated text, complete UTF-8, in order.
    Text(&'a str),
    /// Something the user must be told (overflow handling), one line.
    Notice(String),
}

/// The front end's answer to an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Settings of a session (besides the decoder's and the sampler's).
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Maximum tokens to generate per turn (-1: until EOG or the context is full).
    pub n_predict: i32,
    /// Extra strings that end a turn (besides the model's end-of-generation tokens).
    pub stop: Vec<String>,
    pub overflow: Overflow,
    /// Render special tokens in the output text.
    pub show_special: bool,
    /// Record the N highest logits of the first generation step (for parity checks).
    pub capture_top: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { n_predict: -1, stop: Vec::new(), overflow: Overflow::DropOldest, show_special: false, capture_top: 0 }
    }
}

/// Timings of one turn.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    pub prompt_ms: f64,
    /// Tokens actually computed for the prompt (after prefix reuse).
    pub prompt_tokens: usize,
    pub gen_ms: f64,
    pub gen_tokens: usize,
    /// Under a grammar: its cost per generated token (mean and 99th percentile, ms) and how many
    /// tokens needed the whole-vocabulary mask.
    pub grammar: Option<GrammarCost>,
}

/// What a grammar cost while generating.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GrammarCost {
    pub mean_ms: f64,
    pub p99_ms: f64,
    pub masks: usize,
}

impl GrammarCost {
    /// From per-token costs in µs.
    pub fn from_us(us: &[f32], masks: usize) -> GrammarCost {
        if us.is_empty() {
            return GrammarCost { masks, ..Default::default() };
        }
        let mut v = us.to_vec();
        v.sort_by(f32::total_cmp);
        let p99 = v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1];
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        GrammarCost { mean_ms: mean / 1000.0, p99_ms: p99 as f64 / 1000.0, masks }
    }
}

impl Timings {
    pub fn prompt_tps(&self) -> f64 {
        if self.prompt_ms > 0.0 {
            self.prompt_tokens as f64 * 1000.0 / self.prompt_ms
        } else {
            0.0
        }
    }
    pub fn gen_tps(&self) -> f64 {
        if self.gen_ms > 0.0 {
            self.gen_tokens as f64 * 1000.0 / self.gen_ms
        } else {
            0.0
        }
    }
}

/// The outcome of one turn.
#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    /// Generated token ids (the end-of-generation token excluded).
    pub tokens: Vec<u32>,
    /// Tokens of the whole prompt of this turn.
    pub prompt_tokens: usize,
    /// Of those, tokens that were computed (the rest came from the cache).
    pub prefilled: usize,
    pub stop_reason: StopReason,
    /// The end-of-generation token that ended it (stop reason `Eos`).
    pub stop_token: Option<u32>,
    pub timings: Timings,
    /// The highest logits of the first step, (id, logit) best first (`capture_top` of them).
    pub first_top: Vec<(u32, f32)>,
}

/// A model session.
pub struct Session {
    pub dec: Decoder,
    pub tok: Rc<Tokenizer>,
    pub sampler: Sampler,
    pub opts: SessionOptions,
    /// None: raw completion (no template).
    pub template: Option<ChatTemplate>,
    pub system: Option<String>,
    /// The conversation so far (without the system prompt).
    pub messages: Vec<Message>,
    /// Tokens whose keys and values are in the cache, at positions 0..len.
    cached: Vec<u32>,
    /// Exact ids of assistant replies by text, so re-rendered turns reuse the cache.
    reply_ids: Vec<(String, Vec<u32>)>,
    stops: Vec<String>,
    /// Timings of the last turn.
    pub last: Timings,
}

impl Session {
    pub fn new(
        model: Rc<Model>,
        tok: Rc<Tokenizer>,
        ctx: &ContextOptions,
        sampling: SamplerConfig,
        opts: SessionOptions,
        template: Option<ChatTemplate>,
    ) -> Result<Session> {
        let n_vocab = model.hparams.n_vocab as usize;
        let dec = Decoder::new(model, ctx)?;
        let sampler = Sampler::new(sampling, n_vocab)?;
        let mut s = Session {
            dec,
            tok,
            sampler,
            opts,
            template,
            system: None,
            messages: Vec::new(),
            cached: Vec::new(),
            reply_ids: Vec::new(),
            stops: Vec::new(),
            last: Timings::default(),
        };
        s.refresh_stops();
        Ok(s)
    }

    /// Recomputes the stop strings: the user's plus the template's (unless they are EOG tokens).
    pub fn refresh_stops(&mut self) {
        self.stops = stop_strings(&self.tok, self.template.as_ref(), &self.opts.stop);
    }

    pub fn n_ctx(&self) -> usize {
        self.dec.n_ctx() as usize
    }

    /// Tokens currently held in the cache.
    pub fn n_cached(&self) -> usize {
        self.cached.len()
    }

    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Forgets the conversation and the cache (the system prompt stays).
    pub fn clear(&mut self) {
        self.messages.clear();
        self.reply_ids.clear();
        self.rewind(0);
    }

    /// Rewinds the cache to its first `n` tokens. A sliding-window cache may no longer hold
    /// the window before `n`; then everything is recomputed.
    fn rewind(&mut self, mut n: usize) {
        // the window of the next token must still be in the cache
        if n < self.cached.len() && n > 0 && !self.dec.kv.seq_holds_window(0, n as i32) {
            n = 0;
        }
        self.cached.truncate(n);
        self.dec.kv.truncate(n as i32);
    }

    // ---- prompts ----------------------------------------------------------------------------

    /// The prompt of a raw completion: BOS when the model adds one, then the text (special
    /// tokens in it are parsed, as llama.cpp does for raw prompts).
    pub fn raw_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tok.encode(text, true, true)
    }

    /// The prompt for the conversation (system prompt, messages, then the assistant's turn),
    /// message text tokenized without special-token parsing.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let t = self.template.as_ref().ok_or_else(|| anyhow::anyhow!("no chat template"))?;
        let mut all = Vec::new();
        if let Some(s) = &self.system {
            all.push(Message::system(s.clone()));
        }
        all.extend_from_slice(messages);
        chat_prompt_ids(&self.tok, t, &all, &self.reply_ids)
    }

    // ---- turns ------------------------------------------------------------------------------

    /// Completes `text` as plain text (no template). A prompt that does not fit the context is
    /// BadInput naming both sizes.
    pub fn complete(&mut self, text: &str, on: &mut dyn FnMut(Event) -> Flow) -> Result<Generation> {
        let prompt = self.raw_prompt(text)?;
        if prompt.len() >= self.n_ctx() {
            crate::bail_input!("the prompt is {} tokens; the context holds {} (raise -c)", prompt.len(), self.n_ctx());
        }
        self.generate(prompt, on, false)
    }

    /// Adds a user turn and generates the assistant's reply (which joins the conversation, even
    /// when interrupted).
    pub fn chat(&mut self, user: &str, on: &mut dyn FnMut(Event) -> Flow) -> Result<Generation> {
        self.messages.push(Message::user(user));
        let prompt = match self.fit_conversation(on) {
            Ok(p) => p,
            Err(e) => {
                self.messages.pop();
                return Err(e);
            }
        };
        // an error (an interrupted prefill) takes the user turn back, so turns keep alternating
        let g = self.generate(prompt, on, true).inspect_err(|_| {
            self.messages.pop();
        })?;
        self.messages.push(Message::assistant(g.text.clone()));
        self.reply_ids.push((g.text.clone(), g.tokens.clone()));
        if self.reply_ids.len() > 64 {
            self.reply_ids.remove(0);
        }
        Ok(g)
    }

    /// Generates another answer to the last user turn (the last reply is dropped).
    pub fn regenerate(&mut self, on: &mut dyn FnMut(Event) -> Flow) -> Result<Generation> {
        if self.messages.last().is_some_and(|m| m.role == "assistant") {
            self.messages.pop();
        }
        let before = self.messages.clone();
        let user = match self.messages.pop() {
            Some(m) if m.role == "user" => m.content,
            _ => {
                self.messages = before;
                crate::bail_input!("there is no user turn to answer again")
            }
        };
        // on failure the last exchange stays as it was
        self.chat(&user, on).inspect_err(|_| self.messages = before)
    }

    /// Removes the last exchange (the assistant reply and the user turn before it).
    pub fn undo(&mut self) -> bool {
        let mut removed = false;
        if self.messages.last().is_some_and(|m| m.role == "assistant") {
            self.messages.pop();
            removed = true;
        }
        if self.messages.last().is_some_and(|m| m.role == "user") {
            self.messages.pop();
            removed = true;
        }
        removed
    }

    /// The prompt of the conversation, made to fit the context by the overflow policy (leaving
    /// room for at least a few generated tokens).
    fn fit_conversation(&mut self, on: &mut dyn FnMut(Event) -> Flow) -> Result<Vec<u32>> {
        let n_ctx = self.n_ctx();
        let reserve = 4.min(n_ctx / 4);
        loop {
            let prompt = self.chat_prompt(&self.messages)?;
            if prompt.len() + reserve <= n_ctx {
                return Ok(prompt);
            }
            match self.opts.overflow {
                Overflow::Fail => {
                    crate::bail_input!("the conversation is {} tokens; the context holds {} (--overflow fail)", prompt.len(), n_ctx)
                }
                Overflow::DropOldest | Overflow::Shift => {
                    // whole turns go first; the last user turn stays
                    if self.messages.len() <= 1 {
                        crate::bail_input!("the message alone is {} tokens; the context holds {} (raise -c)", prompt.len(), n_ctx);
                    }
                    let n = if self.messages.len() >= 3 && self.messages[1].role == "assistant" { 2 } else { 1 };
                    self.messages.drain(..n);
                    on(Event::Notice(format!(
                        "context full ({} of {n_ctx} tokens): dropped the oldest turn ({} message(s)), kept the system prompt",
                        prompt.len(),
                        n
                    )));
                }
            }
        }
    }

    /// Prefills what the cache lacks of `prompt`, then samples until a stop condition.
    fn generate(&mut self, prompt: Vec<u32>, on: &mut dyn FnMut(Event) -> Flow, chat: bool) -> Result<Generation> {
        let n_ctx = self.n_ctx();
        // reuse the longest cached prefix; at least the last prompt token is recomputed for logits
        let common = self.cached.iter().zip(&prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        self.rewind(common);
        let reused = self.cached.len();

        let t0 = Instant::now();
        let mut logits = Vec::new();
        self.prefill(&prompt[reused..], &mut logits)?;
        let mut timings = Timings { prompt_ms: ms(t0), prompt_tokens: prompt.len() - reused, ..Default::default() };
        let first_top = top_logits(&logits, self.opts.capture_top);

        let t1 = Instant::now();
        self.sampler.restart_grammar();
        let mut reply = ReplyText::new(self.tok.clone(), self.opts.show_special, self.stops.clone());
        let mut tokens = Vec::new();
        let reason;
        let mut stop_token = None;
        loop {
            if self.opts.n_predict >= 0 && tokens.len() >= self.opts.n_predict as usize {
                reason = StopReason::Length;
                break;
            }
            let id = self.sampler.sample(&logits)?;
            self.sampler.accept(id);
            if self.tok.is_eog(id) {
                reason = StopReason::Eos;
                stop_token = Some(id);
                break;
            }
            tokens.push(id);
            let (new, stopped) = reply.push(id);
            if stopped {
                if !new.is_empty() {
                    on(Event::Text(&reply.text[new]));
                }
                reason = StopReason::Stop;
                break;
            }
            if !new.is_empty() && on(Event::Text(&reply.text[new])) == Flow::Stop {
                reason = StopReason::Interrupted;
                break;
            }
            // room for the token in the context?
            if self.cached.len() + 1 > n_ctx - 1 && !self.make_room(chat, &tokens, on)? {
                reason = StopReason::Length;
                break;
            }
            logits.clear();
            let pos = self.cached.len() as i32;
            match self.dec.decode(&[id], pos, &[0], &mut logits) {
                Ok(()) => self.cached.push(id),
                Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
                    reason = StopReason::Interrupted;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let rest = reply.finish(reason != StopReason::Stop && reason != StopReason::Interrupted);
        if !rest.is_empty() && reason != StopReason::Interrupted {
            on(Event::Text(&reply.text[rest]));
        }
        let text = reply.text;
        timings.gen_ms = ms(t1);
        timings.gen_tokens = tokens.len();
        timings.grammar = self.sampler.grammar_cost().map(|(us, masks)| GrammarCost::from_us(us, masks));
        self.last = timings;
        Ok(Generation {
            text,
            tokens,
            prompt_tokens: prompt.len(),
            prefilled: timings.prompt_tokens,
            stop_reason: reason,
            stop_token,
            timings,
            first_top,
        })
    }

    /// Computes `tokens` after the cached ones, in batches; the logits of the last are left in
    /// `logits`. On interruption the cache keeps what was completed.
    fn prefill(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        let n_batch = self.dec.cparams.n_batch as usize;
        for (i, chunk) in tokens.chunks(n_batch).enumerate() {
            let last = (i + 1) * n_batch >= tokens.len();
            let outputs: &[u32] = if last { &[chunk.len() as u32 - 1] } else { &[] };
            logits.clear();
            let pos = self.cached.len() as i32;
            self.dec.decode(chunk, pos, outputs, logits).context("processing the prompt")?;
            self.cached.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// Frees context for generation to go on. Raw completions shift (when allowed); chats drop
    /// their oldest turns. Returns false when nothing can be freed (generation then ends).
    fn make_room(&mut self, chat: bool, generated: &[u32], on: &mut dyn FnMut(Event) -> Flow) -> Result<bool> {
        let n_ctx = self.n_ctx();
        match self.opts.overflow {
            Overflow::Fail => {
                on(Event::Notice(format!("context full ({n_ctx} tokens): generation stopped (--overflow fail)")));
                Ok(false)
            }
            Overflow::DropOldest if chat && self.messages.len() > 1 => {
                let before = self.cached.len();
                let n = if self.messages.len() >= 3 && self.messages[1].role == "assistant" { 2 } else { 1 };
                let last_user = self.messages.len() - 1;
                if last_user < n {
                    return self.shift(generated, on);
                }
                self.messages.drain(..n);
                let mut prompt = self.chat_prompt(&self.messages)?;
                prompt.extend_from_slice(generated);
                if prompt.len() + 8 > n_ctx {
                    return self.shift(generated, on);
                }
                on(Event::Notice(format!(
                    "context full ({before} of {n_ctx} tokens): dropped the oldest turn ({n} message(s)), kept the system prompt"
                )));
                self.recompute(&prompt)?;
                Ok(true)
            }
            _ => self.shift(generated, on),
        }
    }

    /// Drops the oldest half of the tokens after the first (BOS or system) part and recomputes
    /// the rest. Announced; refuses when the context is too small to make progress.
    fn shift(&mut self, _generated: &[u32], on: &mut dyn FnMut(Event) -> Flow) -> Result<bool> {
        let n_ctx = self.n_ctx();
        let keep = self.n_keep();
        let n = self.cached.len();
        if n <= keep + 16 {
            on(Event::Notice(format!("context full ({n_ctx} tokens) and nothing left to drop: generation stopped")));
            return Ok(false);
        }
        let discard = (n - keep) / 2;
        let mut kept: Vec<u32> = self.cached[..keep].to_vec();
        kept.extend_from_slice(&self.cached[keep + discard..]);
        on(Event::Notice(format!("context full ({n} of {n_ctx} tokens): dropped {discard} tokens after the first {keep} and continued")));
        self.recompute(&kept)?;
        Ok(true)
    }

    /// Tokens never dropped by a shift: BOS, and the system prompt in a chat.
    fn n_keep(&self) -> usize {
        let bos = self.tok.add_bos() as usize;
        if let (Some(_), Some(s)) = (&self.template, &self.system) {
            let mut base = self.clone_messages_prompt(&[Message::system(s.clone())]).unwrap_or_default();
            base.truncate(self.cached.len());
            let common = self.cached.iter().zip(&base).take_while(|(a, b)| a == b).count();
            return common.max(bos);
        }
        bos
    }

    fn clone_messages_prompt(&self, msgs: &[Message]) -> Result<Vec<u32>> {
        let t = self.template.as_ref().ok_or_else(|| anyhow::anyhow!("no chat template"))?;
        let (bos, eos) = special_texts(&self.tok);
        let segs = t.render_segments(msgs, false, &bos, &eos)?;
        let mut ids = Vec::new();
        encode_rendered(&self.tok, &segs, &self.reply_ids, &mut ids)?;
        Ok(ids)
    }

    /// Replaces the cache's contents with `tokens` (reusing the common prefix). Leaves the
    /// logits of the last token computed but unused: generation goes on from the sampled token.
    fn recompute(&mut self, tokens: &[u32]) -> Result<()> {
        let common = self.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        self.rewind(common);
        let rest = tokens[self.cached.len()..].to_vec();
        let mut logits = Vec::new();
        self.prefill(&rest, &mut logits)
    }

    // ---- state ------------------------------------------------------------------------------

    /// The cached tokens and the KV state, for session files.
    pub fn cache_state(&self) -> Result<(Vec<u32>, Vec<u8>)> {
        Ok((self.cached.clone(), self.dec.kv.write_state()?))
    }

    /// Restores cached tokens and KV state saved by `cache_state` (checked by the cache). When
    /// the state is refused, the cache keeps what it held before.
    pub fn restore_cache(&mut self, tokens: Vec<u32>, state: &[u8]) -> Result<()> {
        let backup = self.dec.kv.write_state()?;
        let r = self.dec.kv.read_state(state).and_then(|()| {
            if self.dec.kv.pos_max() + 1 != tokens.len() as i32 {
                return Err(anyhow::Error::new(BadInput("session file: the token list does not match the KV state".into())));
            }
            Ok(())
        });
        if let Err(e) = r {
            if self.dec.kv.read_state(&backup).is_err() {
                // cannot happen (our own state); stay consistent anyway
                self.cached.clear();
            }
            return Err(e);
        }
        self.cached = tokens;
        Ok(())
    }
}

/// The text of special tokens BOS and EOS, as templates write them.
fn special_texts(tok: &Tokenizer) -> (String, String) {
    let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    (text(tok.bos()), text(tok.eos()))
}

/// The stop strings of a generation: the user's plus the template's (unless they are EOG
/// tokens, which end generation by id).
pub fn stop_strings(tok: &Tokenizer, template: Option<&ChatTemplate>, user: &[String]) -> Vec<String> {
    let mut stops = user.to_vec();
    if let Some(t) = template {
        let (bos, eos) = special_texts(tok);
        for s in t.stop_strings(&bos, &eos) {
            let is_eog_token = tok.eog_ids().iter().any(|&id| tok.token_text(id) == Some(s.as_str()));
            if !is_eog_token && !stops.contains(&s) {
                stops.push(s);
            }
        }
    }
    stops
}

/// The prompt ids of a conversation (system message included, then the assistant's turn) through
/// template `t`: BOS where the model adds one and the template does not write it (as llama.cpp's
/// chat does), then the rendered segments, template text with special tokens parsed and message
/// text without (the injection barrier), tokenized together across boundaries as the rendered
/// string is. Replies found in `reply_ids` keep the ids they were generated as, so a cache's
/// prefix still matches on the next turn.
pub fn chat_prompt_ids(tok: &Tokenizer, t: &ChatTemplate, messages: &[Message], reply_ids: &[(String, Vec<u32>)]) -> Result<Vec<u32>> {
    let (bos, eos) = special_texts(tok);
    let segments: Vec<Segment> = t.render_segments(messages, true, &bos, &eos)?;
    let rendered_bos = !bos.is_empty() && segments.first().is_some_and(|s| !s.is_content && s.text.starts_with(&bos));
    let mut ids = Vec::new();
    if tok.add_bos() && !rendered_bos {
        if let Some(b) = tok.bos() {
            ids.push(b);
        }
    }
    encode_rendered(tok, &segments, reply_ids, &mut ids)?;
    Ok(ids)
}

/// Appends the ids of rendered template segments (see [`chat_prompt_ids`]).
fn encode_rendered(tok: &Tokenizer, segments: &[Segment], reply_ids: &[(String, Vec<u32>)], ids: &mut Vec<u32>) -> Result<()> {
    let mut run: Vec<(&str, bool)> = Vec::new();
    for s in segments {
        let known = if s.is_content { reply_ids.iter().find(|(text, _)| *text == s.text) } else { None };
        match known {
            Some((_, known)) => {
                ids.extend(tok.encode_segments(&run, false)?);
                run.clear();
                ids.extend_from_slice(known);
            }
            None => run.push((&s.text, !s.is_content)),
        }
    }
    ids.extend(tok.encode_segments(&run, false)?);
    Ok(())
}

/// A reply's text as its tokens arrive: decoded as a stream (a continuation of its prompt, so a
/// leading space is kept, as llama.cpp's `common_token_to_piece`), cut at the first stop string,
/// and released only up to where no stop string could still begin.
pub struct ReplyText {
    stream: StreamDecoder<Rc<Tokenizer>>,
    /// The reply so far (cut before a stop string once one is found).
    pub text: String,
    emitted: usize,
    stops: Vec<String>,
    max_stop: usize,
}

impl ReplyText {
    pub fn new(tok: Rc<Tokenizer>, show_special: bool, stops: Vec<String>) -> ReplyText {
        let max_stop = stops.iter().map(|s| s.len()).max().unwrap_or(0);
        ReplyText { stream: StreamDecoder::continuation(tok, show_special), text: String::new(), emitted: 0, stops, max_stop }
    }

    /// Adds a token: returns the range of `text` that may now be shown, and whether a stop
    /// string ended the reply (`text` is then cut before it).
    pub fn push(&mut self, id: u32) -> (std::ops::Range<usize>, bool) {
        let from = self.emitted;
        self.text.push_str(&self.stream.push(id));
        if let Some(at) = find_stop(&self.text, from.saturating_sub(self.max_stop), &self.stops) {
            self.text.truncate(at);
            let new = if at > from { from..self.text.len() } else { 0..0 };
            self.emitted = from.max(self.text.len());
            return (new, true);
        }
        let safe = safe_end(&self.text, from, self.max_stop);
        self.emitted = safe.max(from);
        (if safe > from { from..safe } else { 0..0 }, false)
    }

    /// Ends the reply: with `flush`, what the decoder held back is added; returns the range not
    /// yet shown.
    pub fn finish(&mut self, flush: bool) -> std::ops::Range<usize> {
        if flush {
            self.text.push_str(&self.stream.finish());
        }
        let from = self.emitted;
        self.emitted = self.emitted.max(self.text.len());
        if from < self.text.len() {
            from..self.text.len()
        } else {
            0..0
        }
    }
}

/// The `n` highest logits, best first (ties: lower id first).
fn top_logits(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let n = n.min(v.len());
    if n == 0 {
        return Vec::new();
    }
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    v.select_nth_unstable_by(n - 1, cmp);
    v.truncate(n);
    v.sort_by(cmp);
    v
}

/// The byte offset of the first stop string found at or after `from` (moved back to a char
/// boundary).
fn find_stop(text: &str, mut from: usize, stops: &[String]) -> Option<usize> {
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    stops.iter().filter_map(|s| text[from..].find(s.as_str()).map(|i| i + from)).min()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The end of the text that can be shown: everything except a tail (at most `hold` bytes) that
/// could still grow into a stop string, at a char boundary.
fn safe_end(text: &str, emitted: usize, hold: usize) -> usize {
    if hold == 0 {
        return text.len();
    }
    let mut end = text.len().saturating_sub(hold.saturating_sub(1)).max(emitted);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end.max(emitted)
}
