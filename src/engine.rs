//! The many-sequences engine: continuous batching over one decoder. Each step decodes one token
//! for every generating sequence plus pieces of pending prompts (up to `-b` tokens in all), then
//! samples each sequence with its own sampler; sequences join between steps and leave (finished
//! or cancelled) with their slot free, whose cells a later sequence that starts the same way may
//! reuse ([`PromptReuse`]). It runs on one thread; [`EngineHandle`] drives it from others (the
//! server, `ferrite batch`).
//!
//! Batch invariance: a sequence's prompt is cut into the pieces it would be cut into alone
//! (`n_batch` pieces, each in `n_ubatch` micro-batches), each sequence owns a stream of the KV
//! cache, and the graph computes every per-sequence routine with the shapes it has alone
//! (`decoder::Decoder::decode_batch`), so a sequence's tokens do not depend on its neighbours:
//! greedy answers equal `ferrite run`'s (tests/batch.rs). (Method after llama-server's slots,
//! `tools/server/server-context.cpp`, in our own shape.)

use crate::chat::{ChatTemplate, Message};
use crate::decoder::{Batch, ContextOptions, Decoder};
use crate::error::{Interrupted, KvCacheFull};
use crate::model::Model;
use crate::sampling::{Sampler, SamplerConfig};
use crate::session::{chat_prompt_ids, stop_strings, ReplyText, StopReason};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

/// A sequence's id, unique for the engine's life.
pub type SeqId = u64;

/// What a sequence is asked to continue.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Text: one user turn through the chat template, or plain completion when `raw` (or when
    /// the model has no template).
    Text { text: String, raw: bool },
    /// A conversation through the chat template (the assistant's turn follows).
    Messages(Vec<Message>),
    /// Token ids as they are.
    Tokens(Vec<u32>),
}

/// Per-sequence settings.
#[derive(Clone, Debug)]
pub struct SeqParams {
    /// Tokens to generate at most (-1: until the context ends).
    pub max_tokens: i32,
    pub sampling: SamplerConfig,
    /// Stop strings (the template's are added for chat prompts).
    pub stop: Vec<String>,
    /// Render special tokens in the text.
    pub show_special: bool,
    /// Send the text as it is generated (`SeqEvent::Text`), not only at the end.
    pub stream: bool,
    /// May start from cells a slot kept from an earlier sequence (the engine's
    /// [`PromptReuse`]); false: the prompt is computed from its start.
    pub cache_prompt: bool,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// (OpenAI's `logprobs`/`top_logprobs`); None: not at all.
    pub logprobs: Option<u32>,
    /// Scales of the engine's LoRA adapters for this sequence, by adapter index (llama-server's
    /// `"lora": [{"id", "scale"}]`: adapters not named get 0); None: the engine's defaults.
    pub lora: Option<Vec<(usize, f32)>>,
    /// A grammar or JSON schema the answer must follow, bound to the engine's vocabulary when
    /// the sequence starts (a `sampling.grammar` already bound takes precedence).
    pub constraint: Option<crate::grammar::Constraint>,
    /// Tool definitions (OpenAI's list) the chat template renders as its `tools` variable.
    pub tools: Option<serde_json::Value>,
}

impl SeqParams {
    /// Settings of `max_tokens` tokens sampled by `sampling`, the rest as a plain request has
    /// them: no stop strings, no special tokens shown, no streaming, prompt reuse allowed, no
    /// log-probabilities, the engine's adapter scales.
    pub fn new(max_tokens: i32, sampling: SamplerConfig) -> SeqParams {
        SeqParams {
            max_tokens,
            sampling,
            stop: Vec::new(),
            show_special: false,
            stream: false,
            cache_prompt: true,
            logprobs: None,
            lora: None,
            constraint: None,
            tools: None,
        }
    }
}

/// A token and its log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Logprob {
    pub token: u32,
    /// The token's bytes (a piece of a UTF-8 character possibly).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// A generated token's log-probability and the most likely tokens at its place, from the
/// log-softmax of the model's logits before any sampling stage (llama-server's default, and
/// what OpenAI reports): the same numbers whatever the sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub chosen: Logprob,
    /// Most likely first (ties: the lower id).
    pub top: Vec<Logprob>,
}

/// The log-probability of `id` and the `k` most likely tokens under `logits` (log-softmax, the
/// normaliser summed in f64).
pub fn logprobs(logits: &[f32], id: u32, k: usize, piece: impl Fn(u32) -> Vec<u8>) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let lp = |t: u32| Logprob { token: t, bytes: piece(t), logprob: (logits[t as usize] as f64 - lse) as f32 };
    let k = k.min(logits.len());
    if k == 0 {
        return TokenLogprob { chosen: lp(id), top: Vec::new() };
    }
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let order = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, order);
    }
    ids.truncate(k);
    ids.sort_by(order);
    TokenLogprob { chosen: lp(id), top: ids.into_iter().map(lp).collect() }
}

/// How a new sequence may reuse the cells a slot's last sequence left (prefix reuse).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PromptReuse {
    /// Never: every prompt is computed from its start.
    Off,
    /// Only the last prompt's pieces that a new sequence computes the same way (the `-b`/`-ub`
    /// pieces that ended before that prompt did), in the cache layout a new sequence has there:
    /// the answer is bit for bit the one an empty slot gives (`ferrite run`'s), whatever the
    /// slot served before. A long shared start (a system prompt, a document, a conversation's
    /// history) is computed once a micro-batch at a time.
    #[default]
    Exact,
    /// Every kept cell whose token matches, generated ones included (llama-server's
    /// `cache_prompt`, `ferrite chat`'s next turn): a conversation's next turn computes only its
    /// new tokens, but its logits may differ in their last bits from an empty slot's (cells
    /// computed one token at a time, or in other micro-batches, than a prompt's).
    All,
}

/// The tokens whose cells a free slot still holds (positions 0..len), and how long the prompt
/// among them was.
#[derive(Clone, Debug, Default)]
struct Kept {
    tokens: Vec<u32>,
    prompt_len: usize,
    /// The adapter scales the cells were computed with.
    lora: Vec<f32>,
}

/// A request for one sequence.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Prompt,
    pub params: SeqParams,
}

/// A finished sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub text: String,
    pub tokens: Vec<u32>,
    pub stop_reason: StopReason,
    /// The end-of-generation token that ended it (stop reason `Eos`).
    pub stop_token: Option<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose cells came from the slot's earlier sequence (not computed).
    pub cached_tokens: usize,
    /// Per generated token, with `SeqParams::logprobs`.
    pub logprobs: Vec<TokenLogprob>,
}

/// What the engine reports about a sequence.
#[derive(Debug)]
pub enum SeqEvent {
    /// Generated text that became final (with `SeqParams::stream`).
    Text(String),
    /// A generated token's log-probabilities (with `SeqParams::stream` and `logprobs`), sent
    /// before the text it belongs to.
    Logprob(TokenLogprob),
    /// The end: the answer, or why there is none (a prompt that does not fit, a template that
    /// fails, the engine stopping). Always the last event of a sequence.
    Done(Result<Finished>),
}

/// Where a sequence's events go.
pub type Sink = Box<dyn FnMut(SeqId, SeqEvent)>;

/// A sequence being computed: its prompt, progress, sampler and reply.
struct Active {
    id: SeqId,
    prompt: Vec<u32>,
    /// Prompt tokens in the cache.
    n_done: usize,
    /// Of those, the ones kept from the slot's earlier sequence.
    reused: usize,
    /// Its LoRA adapters' scales (one per adapter of the engine).
    lora: Vec<f32>,
    /// End of the prompt piece in this step's batch.
    piece_end: usize,
    /// The sampled token to decode next (generation phase).
    next: Option<u32>,
    sampler: Sampler,
    reply: ReplyText,
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    params: SeqParams,
    sink: Sink,
}

impl Active {
    /// Tokens in this sequence's cache stream.
    fn n_past(&self) -> usize {
        self.n_done + self.tokens.len().saturating_sub(self.next.is_some() as usize)
    }
}

struct Queued {
    id: SeqId,
    req: Request,
    sink: Sink,
}

/// Counters of the engine's work.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub steps: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens not computed: their cells were kept from an earlier sequence.
    pub reused_tokens: u64,
    pub generated_tokens: u64,
    /// Time spent decoding.
    pub busy: std::time::Duration,
}

/// Continuous batching over one decoder with one KV stream per slot.
pub struct Engine {
    pub dec: Decoder,
    tok: Rc<Tokenizer>,
    template: Option<ChatTemplate>,
    /// A system message put before every chat prompt that has none.
    pub system: Option<String>,
    slots: Vec<Option<Active>>,
    /// What each slot's stream holds from its last sequence (empty while it runs one).
    kept: Vec<Kept>,
    /// How new sequences reuse kept cells.
    pub prompt_reuse: PromptReuse,
    /// The adapters' scales for a sequence that names none (llama-server's global scales).
    pub lora_defaults: Vec<f32>,
    queue: VecDeque<Queued>,
    next_id: SeqId,
    pub stats: EngineStats,
}

impl Engine {
    /// An engine of `ctx.n_seq` slots, each with a context of `ctx.n_ctx` tokens.
    pub fn new(model: Rc<Model>, tok: Rc<Tokenizer>, template: Option<ChatTemplate>, ctx: &ContextOptions) -> Result<Engine> {
        let dec = Decoder::new(model, ctx)?;
        let n = dec.kv.n_seq() as usize;
        let lora_defaults = dec.lora_scales();
        Ok(Engine {
            dec,
            tok,
            template,
            system: None,
            slots: (0..n).map(|_| None).collect(),
            kept: vec![Kept::default(); n],
            prompt_reuse: PromptReuse::default(),
            lora_defaults,
            queue: VecDeque::new(),
            next_id: 0,
            stats: EngineStats::default(),
        })
    }

    /// Makes computations stop early when `flag` is set (the step then fails with Interrupted).
    pub fn set_interrupt(&mut self, flag: &'static AtomicBool) {
        self.dec.set_interrupt(flag);
    }

    /// Queues a request; it joins the batch at the next step with a free slot. Its events go
    /// to `sink`.
    pub fn submit(&mut self, req: Request, sink: Sink) -> SeqId {
        let id = self.next_id;
        self.submit_as(id, req, sink);
        id
    }

    /// Queues a request under an id chosen by the caller (ids must stay unique).
    pub fn submit_as(&mut self, id: SeqId, req: Request, sink: Sink) {
        self.next_id = self.next_id.max(id + 1);
        self.queue.push_back(Queued { id, req, sink });
    }

    /// Cancels a sequence, queued or running: it ends with stop reason `interrupted` and what it
    /// generated so far; its cells are freed. False when no such sequence is left.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.queue.iter().position(|q| q.id == id) {
            let mut q = self.queue.remove(i).expect("index found");
            let fin = Finished {
                text: String::new(),
                tokens: Vec::new(),
                stop_reason: StopReason::Interrupted,
                stop_token: None,
                prompt_tokens: 0,
                cached_tokens: 0,
                logprobs: Vec::new(),
            };
            (q.sink)(id, SeqEvent::Done(Ok(fin)));
            return true;
        }
        match self.slots.iter().position(|s| s.as_ref().is_some_and(|a| a.id == id)) {
            Some(slot) => {
                self.finish(slot, StopReason::Interrupted, None);
                true
            }
            None => false,
        }
    }

    /// Ends every sequence, queued or running, with `err` (the engine cannot go on).
    pub fn fail_all(&mut self, err: &anyhow::Error) {
        let msg = crate::error::one_line(err);
        let code = crate::error::exit_code(err);
        let mk = || if code == 130 { anyhow::Error::new(Interrupted) } else { anyhow::anyhow!("{msg}") };
        while let Some(mut q) = self.queue.pop_front() {
            (q.sink)(q.id, SeqEvent::Done(Err(mk())));
        }
        for slot in 0..self.slots.len() {
            self.forget(slot);
            if let Some(mut a) = self.slots[slot].take() {
                (a.sink)(a.id, SeqEvent::Done(Err(mk())));
            }
        }
    }

    /// Nothing queued or running.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(|s| s.is_none())
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    /// The chat template, if the model has one.
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// Requests waiting for a slot.
    pub fn n_queued(&self) -> usize {
        self.queue.len()
    }

    /// Slots (sequences decoded together).
    pub fn n_slots(&self) -> usize {
        self.slots.len()
    }

    /// Which slots hold a sequence now.
    pub fn slot_busy(&self) -> Vec<bool> {
        self.slots.iter().map(Option::is_some).collect()
    }

    /// Sequences running now.
    pub fn n_active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Runs steps until every sequence has finished.
    pub fn run_until_idle(&mut self) -> Result<()> {
        while !self.is_idle() {
            self.step()?;
        }
        Ok(())
    }

    /// Moves queued requests into free slots: tokenizes their prompts and sets up their
    /// samplers. A request that cannot start ends at once with its error. Each goes to the free
    /// slot whose kept cells save it the most (then an empty one, then the first).
    fn admit(&mut self) {
        while self.slots.iter().any(|s| s.is_none()) {
            let Some(mut q) = self.queue.pop_front() else { break };
            match self.start(&q.req) {
                Ok(prep) => {
                    let (prompt, sampler, reply, lora) = prep;
                    let mode = if q.req.params.cache_prompt { self.prompt_reuse } else { PromptReuse::Off };
                    let (slot, keep) = (0..self.slots.len())
                        .filter(|&s| self.slots[s].is_none())
                        .map(|s| (s, if self.kept[s].lora == lora { self.reusable(s, &prompt, mode) } else { 0 }))
                        .max_by_key(|&(s, keep)| (keep, std::cmp::Reverse(self.kept[s].tokens.len()), std::cmp::Reverse(s)))
                        .expect("a free slot exists");
                    let keep = self.keep(slot, keep, mode);
                    self.stats.reused_tokens += keep as u64;
                    self.slots[slot] = Some(Active {
                        id: q.id,
                        prompt,
                        n_done: keep,
                        reused: keep,
                        lora,
                        piece_end: keep,
                        next: None,
                        sampler,
                        reply,
                        tokens: Vec::new(),
                        logprobs: Vec::new(),
                        params: q.req.params,
                        sink: q.sink,
                    });
                }
                Err(e) => (q.sink)(q.id, SeqEvent::Done(Err(e))),
            }
        }
    }

    /// Prompt tokens of `prompt` that slot `slot`'s kept cells may stand for under `mode` (at
    /// most all but the last: its logits are needed).
    fn reusable(&self, slot: usize, prompt: &[u32], mode: PromptReuse) -> usize {
        let kept = &self.kept[slot];
        let common = kept.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let most = common.min(prompt.len().saturating_sub(1));
        match mode {
            PromptReuse::Off => 0,
            PromptReuse::All => most,
            PromptReuse::Exact => {
                // the ends of the kept prompt's pieces before its last one: a new sequence's
                // pieces of this prompt end there too (its pieces end at the same boundaries,
                // and it is longer than `most`)
                let (mut from, mut best) = (0, 0);
                while from < kept.prompt_len {
                    let end = self.piece_end(from, kept.prompt_len);
                    if end >= kept.prompt_len || end > most {
                        break;
                    }
                    (best, from) = (end, end);
                }
                best
            }
        }
    }

    /// Empties slot `slot`'s cells from position `keep` on and returns how many it keeps: `keep`,
    /// or 0 where the cells left would not serve (`Exact`: not in a new sequence's layout; a
    /// sliding window that no longer holds the window before `keep`).
    fn keep(&mut self, slot: usize, keep: usize, mode: PromptReuse) -> usize {
        self.kept[slot] = Kept::default();
        let seq = slot as u32;
        self.dec.kv.seq_rm(seq, keep as i32, -1);
        let serves = keep > 0
            && match mode {
                PromptReuse::Off => false,
                PromptReuse::Exact => self.dec.kv.seq_is_fresh_prefix(seq, keep as i32),
                PromptReuse::All => self.dec.kv.seq_holds_window(seq, keep as i32),
            };
        if serves {
            keep
        } else {
            self.dec.kv.seq_rm(seq, 0, -1);
            0
        }
    }

    /// Forgets what slot `slot` holds.
    fn forget(&mut self, slot: usize) {
        self.dec.kv.seq_rm(slot as u32, 0, -1);
        self.kept[slot] = Kept::default();
    }

    /// A request's prompt ids, sampler, reply text and adapter scales.
    fn start(&self, req: &Request) -> Result<(Vec<u32>, Sampler, ReplyText, Vec<f32>)> {
        let tok = &self.tok;
        let chat = |messages: Vec<Message>| -> Result<Vec<u32>> {
            let Some(t) = &self.template else {
                crate::bail_input!("the model has no chat template: give a plain prompt with raw completion");
            };
            let mut all = Vec::new();
            if let (Some(s), false) = (&self.system, messages.first().is_some_and(|m| m.role == "system")) {
                all.push(Message::system(s.clone()));
            }
            all.extend(messages);
            match &req.params.tools {
                Some(tools) => chat_prompt_ids(tok, &t.with_tools(tools.clone()), &all, &[]),
                None => chat_prompt_ids(tok, t, &all, &[]),
            }
        };
        let (prompt, templated) = match &req.prompt {
            Prompt::Text { text, raw: true } => (tok.encode(text, true, true)?, false),
            // as `ferrite run`: a model without a template gets the text raw
            Prompt::Text { text, raw: false } if self.template.is_none() => (tok.encode(text, true, true)?, false),
            Prompt::Text { text, raw: false } => (chat(vec![Message::user(text.clone())])?, true),
            Prompt::Messages(m) => (chat(m.clone())?, true),
            Prompt::Tokens(t) => (t.clone(), false),
        };
        let n_ctx = self.dec.n_ctx() as usize;
        if prompt.is_empty() {
            crate::bail_input!("the prompt is empty");
        }
        if prompt.len() >= n_ctx {
            crate::bail_input!("the prompt has {} tokens; the context holds {n_ctx} (raise -c)", prompt.len());
        }
        let n_vocab = self.dec.n_vocab() as u32;
        if let Some(&bad) = prompt.iter().find(|&&t| t >= n_vocab) {
            crate::bail_input!("token id {bad} is outside the vocabulary ({n_vocab} tokens)");
        }
        let mut sampling = req.params.sampling.clone();
        if let (None, Some(c)) = (&sampling.grammar, &req.params.constraint) {
            sampling.grammar = Some(c.compile(tok)?);
        }
        let sampler = Sampler::new(sampling, self.dec.n_vocab())?;
        let stops = stop_strings(tok, if templated { self.template.as_ref() } else { None }, &req.params.stop);
        let lora = match &req.params.lora {
            None => self.lora_defaults.clone(),
            Some(named) => self.lora_scales(named)?,
        };
        Ok((prompt, sampler, ReplyText::new(tok.clone(), req.params.show_special, stops), lora))
    }

    /// The scale of every adapter of the engine from a list of (adapter index, scale):
    /// llama-server's `"lora"`, where adapters not named get 0.
    pub fn lora_scales(&self, named: &[(usize, f32)]) -> Result<Vec<f32>> {
        let mut scales = vec![0.0; self.lora_defaults.len()];
        for &(id, scale) in named {
            if id >= scales.len() {
                crate::bail_input!("lora: there is no adapter {id} ({} loaded)", scales.len());
            }
            if !scale.is_finite() {
                crate::bail_input!("lora: the scale of adapter {id} is not a finite number");
            }
            scales[id] = scale;
        }
        Ok(scales)
    }

    /// Where the prompt piece starting at `from` ends: the pieces `ferrite run` decodes a prompt
    /// in (`n_batch` tokens, each in micro-batches of `n_ubatch`).
    fn piece_end(&self, from: usize, len: usize) -> usize {
        let (nb, nub) = (self.dec.cparams.n_batch as usize, self.dec.cparams.n_ubatch as usize);
        let batch_start = from / nb * nb;
        let batch_end = (batch_start + nb).min(len);
        (batch_start + (from - batch_start) / nub * nub + nub).min(batch_end)
    }

    /// One step: admits waiting requests, decodes a token of every generating sequence and
    /// prompt pieces up to `n_batch` tokens, samples. An error here is the engine's (a failed
    /// computation, an interruption); a sequence's own trouble (its context full) ends that
    /// sequence only.
    pub fn step(&mut self) -> Result<()> {
        self.admit();
        let n_batch = self.dec.cparams.n_batch as usize;
        let mut batch = Batch::default();
        // rows of logits: the slot each output belongs to
        let mut rows: Vec<usize> = Vec::new();
        // Sequences with other adapter scales take turns: a step computes those whose scales are
        // the oldest sequence's (the adapters' products are the graph's, for every row).
        let Some(lora) = self.slots.iter().flatten().min_by_key(|a| a.id).map(|a| a.lora.clone()) else {
            return Ok(());
        };
        self.dec.set_lora_scales(&lora);
        for (slot, a) in self.slots.iter().enumerate() {
            if let Some(a) = a.as_ref().filter(|a| a.lora == lora) {
                if let Some(t) = a.next {
                    batch.add(t, a.n_past() as i32, slot as u32, true);
                    rows.push(slot);
                }
            }
        }
        for slot in 0..self.slots.len() {
            let Some(a) = &self.slots[slot] else { continue };
            if a.next.is_some() || a.n_done >= a.prompt.len() || a.lora != lora {
                continue;
            }
            let end = self.piece_end(a.n_done, a.prompt.len());
            if !batch.is_empty() && batch.len() + (end - a.n_done) > n_batch {
                continue;
            }
            for k in a.n_done..end {
                batch.add(a.prompt[k], k as i32, slot as u32, k + 1 == a.prompt.len());
            }
            if end == a.prompt.len() {
                rows.push(slot);
            }
            self.slots[slot].as_mut().expect("checked").piece_end = end;
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut logits = Vec::new();
        let t0 = std::time::Instant::now();
        let decoded = self.dec.decode_batch(&batch, &mut logits);
        self.stats.busy += t0.elapsed();
        if let Err(e) = decoded {
            // a sequence whose context is full ends; the others redo this step
            if let Some(full) = e.downcast_ref::<KvCacheFull>() {
                let slot = full.seq as usize;
                self.rollback(&batch);
                self.finish(slot, StopReason::Length, None);
                return Ok(());
            }
            self.rollback(&batch);
            return Err(e);
        }
        self.stats.steps += 1;
        for a in self.slots.iter_mut().flatten().filter(|a| a.lora == lora) {
            if a.next.take().is_some() {
                self.stats.generated_tokens += 1;
            } else if a.piece_end > a.n_done {
                self.stats.prompt_tokens += (a.piece_end - a.n_done) as u64;
                a.n_done = a.piece_end;
            }
        }
        let n_vocab = self.dec.n_vocab();
        for (r, &slot) in rows.iter().enumerate() {
            self.sample(slot, &logits[r * n_vocab..(r + 1) * n_vocab]);
        }
        Ok(())
    }

    /// Forgets the cells a failed step placed.
    fn rollback(&mut self, batch: &Batch) {
        for (i, &seq) in batch.seq.iter().enumerate() {
            self.dec.kv.seq_rm(seq, batch.pos[i], batch.pos[i] + 1);
        }
    }

    /// Samples slot `slot`'s next token from its logits and decides whether it goes on (as
    /// `Session::generate` does for one sequence).
    fn sample(&mut self, slot: usize, logits: &[f32]) {
        let n_ctx = self.dec.n_ctx() as usize;
        let a = self.slots[slot].as_mut().expect("sampled slots are active");
        if a.params.max_tokens >= 0 && a.tokens.len() >= a.params.max_tokens as usize {
            return self.finish(slot, StopReason::Length, None);
        }
        let id = match a.sampler.sample(logits) {
            Ok(id) => id,
            Err(e) => {
                // the sequence's grammar allows nothing: that sequence ends with the error
                self.forget(slot);
                if let Some(mut a) = self.slots[slot].take() {
                    (a.sink)(a.id, SeqEvent::Done(Err(e)));
                }
                return;
            }
        };
        a.sampler.accept(id);
        if self.tok.is_eog(id) {
            return self.finish(slot, StopReason::Eos, Some(id));
        }
        // room for the token in the context (as `Session::generate` checks)
        let full = a.n_done + a.tokens.len() + 1 > n_ctx - 1;
        if let Some(k) = a.params.logprobs {
            let lp = logprobs(logits, id, k as usize, |t| self.tok.token_to_piece(t, a.params.show_special));
            if a.params.stream {
                (a.sink)(a.id, SeqEvent::Logprob(lp.clone()));
            }
            a.logprobs.push(lp);
        }
        a.tokens.push(id);
        let (new, stopped) = a.reply.push(id);
        if a.params.stream && !new.is_empty() {
            let text = a.reply.text[new].to_string();
            (a.sink)(a.id, SeqEvent::Text(text));
        }
        if stopped {
            return self.finish(slot, StopReason::Stop, None);
        }
        let limit = a.params.max_tokens >= 0 && a.tokens.len() >= a.params.max_tokens as usize;
        if full || limit {
            return self.finish(slot, StopReason::Length, None);
        }
        a.next = Some(id);
    }

    /// Ends slot `slot`'s sequence: the rest of its text, its answer, its cells freed.
    fn finish(&mut self, slot: usize, reason: StopReason, stop_token: Option<u32>) {
        let Some(mut a) = self.slots[slot].take() else { return };
        let prompt_len = a.prompt.len();
        // the cells stay for a later sequence that starts the same way (see `PromptReuse`), a
        // cancelled one's too (a client that retries)
        if self.prompt_reuse == PromptReuse::Off {
            self.forget(slot);
        } else {
            let held = (self.dec.kv.seq_pos_range(slot as u32).1 + 1) as usize;
            let mut tokens = std::mem::take(&mut a.prompt);
            tokens.extend_from_slice(&a.tokens);
            tokens.truncate(held);
            self.kept[slot] = Kept { tokens, prompt_len, lora: std::mem::take(&mut a.lora) };
        }
        let rest = a.reply.finish(reason != StopReason::Stop && reason != StopReason::Interrupted);
        if a.params.stream && !rest.is_empty() {
            let text = a.reply.text[rest].to_string();
            (a.sink)(a.id, SeqEvent::Text(text));
        }
        let fin = Finished {
            text: a.reply.text,
            tokens: a.tokens,
            stop_reason: reason,
            stop_token,
            prompt_tokens: prompt_len,
            cached_tokens: a.reused,
            logprobs: a.logprobs,
        };
        (a.sink)(a.id, SeqEvent::Done(Ok(fin)));
    }
}

/// Where a sequence's events go when it was submitted from another thread.
pub type SendSink = Box<dyn FnMut(SeqId, SeqEvent) + Send>;

/// Work run on the engine's thread between steps (with the engine: its tokenizer, its
/// settings, its counters).
pub type Call = Box<dyn FnOnce(&mut Engine) + Send>;

/// A command to the engine's thread.
enum Cmd {
    Submit(SeqId, Box<Request>, SendSink),
    Cancel(SeqId),
    Call(Call),
}

/// Drives an [`Engine`] on a thread of its own; `Send + Clone`, so any thread may submit and
/// cancel. Events come back on the channel given with each request.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Cmd>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The engine's thread; joining it returns the error that stopped it, if any.
pub struct EngineThread(std::thread::JoinHandle<Result<()>>);

impl EngineThread {
    /// Waits for the engine to stop (after every handle is dropped and its work is done).
    pub fn join(self) -> Result<()> {
        self.0.join().map_err(|_| anyhow::anyhow!("internal error: the engine thread panicked"))?
    }
}

impl EngineHandle {
    /// Starts a thread that builds the engine with `build` (the model lives on that thread) and
    /// runs it; returns once it is built, or with `build`'s error. The thread stops when every
    /// handle is gone and no work is left, or on an engine error (sequences then end with it).
    pub fn spawn<F>(build: F) -> Result<(EngineHandle, EngineThread)>
    where
        F: FnOnce() -> Result<Engine> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let join = std::thread::Builder::new().name("ferrite-engine".into()).spawn(move || -> Result<()> {
            let mut engine = match build() {
                Ok(e) => {
                    let _ = ready_tx.send(Ok(()));
                    e
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            serve(&mut engine, rx)
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((EngineHandle { tx, next: Default::default() }, EngineThread(join))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow::anyhow!("internal error: the engine thread ended while starting")),
        }
    }

    /// Queues a request; its events arrive on `events` with the returned id.
    pub fn submit(&self, req: Request, events: mpsc::Sender<(SeqId, SeqEvent)>) -> Result<SeqId> {
        self.submit_with(
            req,
            Box::new(move |id, ev| {
                let _ = events.send((id, ev));
            }),
        )
    }

    /// Queues a request; its events go to `sink`, called on the engine's thread.
    pub fn submit_with(&self, req: Request, sink: SendSink) -> Result<SeqId> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx.send(Cmd::Submit(id, Box::new(req), sink)).map_err(|_| anyhow::anyhow!("the engine has stopped"))?;
        Ok(id)
    }

    /// Runs `f` on the engine's thread between steps.
    pub fn call(&self, f: Call) -> Result<()> {
        self.tx.send(Cmd::Call(f)).map_err(|_| anyhow::anyhow!("the engine has stopped"))
    }

    /// Cancels a sequence (see [`Engine::cancel`]).
    pub fn cancel(&self, id: SeqId) {
        let _ = self.tx.send(Cmd::Cancel(id));
    }
}

/// The engine thread's loop: takes commands (waiting for one when idle), steps while there is
/// work.
fn serve(engine: &mut Engine, rx: mpsc::Receiver<Cmd>) -> Result<()> {
    let mut open = true;
    loop {
        if engine.is_idle() {
            if !open {
                return Ok(());
            }
            match rx.recv() {
                Ok(cmd) => apply(engine, cmd),
                Err(_) => return Ok(()),
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => apply(engine, cmd),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if let Err(e) = engine.step() {
            engine.fail_all(&e);
            return Err(e);
        }
    }
}

fn apply(engine: &mut Engine, cmd: Cmd) {
    match cmd {
        Cmd::Submit(id, req, sink) => engine.submit_as(id, *req, sink),
        Cmd::Cancel(id) => {
            engine.cancel(id);
        }
        Cmd::Call(f) => f(engine),
    }
}

#[cfg(test)]
mod tests {
    use super::logprobs;

    #[test]
    fn logprobs_are_the_log_softmax_and_its_top() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        let lp = logprobs(&logits, 4, 3, |t| vec![b'a' + t as u8]);
        assert_eq!(lp.chosen.token, 4);
        assert_eq!(lp.chosen.bytes, b"e");
        assert!((lp.chosen.logprob as f64 - (0.5 - lse)).abs() < 1e-6);
        // most likely first, ties by the lower id
        assert_eq!(lp.top.iter().map(|l| l.token).collect::<Vec<_>>(), [1, 3, 0]);
        let total: f64 = (0..5).map(|t| (logprobs(&logits, t, 0, |_| vec![]).chosen.logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(logprobs(&logits, 0, 0, |_| vec![]).top.is_empty());
        assert_eq!(logprobs(&logits, 0, 9, |_| vec![]).top.len(), 5);
    }
}
