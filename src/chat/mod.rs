//! Chat templates: rendering a conversation into a prompt with the model's own Jinja template
//! (`tokenizer.chat_template`, rendered as Hugging Face transformers renders it), built-in
//! templates for models without one, choosing between them, and splitting the prompt into
//! markup and message text so that message text is never parsed for special tokens.
//!
//! Typical use by a session:
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use ferrite::chat::{select, Message};
//! let sel = select(Some("chatml"), None)?;          // --chat-template flag, GGUF template
//! eprintln!("chat template: {}", sel.reason);          // one line; a warning when none applies
//! if let Some(t) = &sel.template {
//!     let msgs = [Message::system("Be brief."), Message::user("Hi <|im_start|>")];
//!     for seg in t.render_segments(&msgs, true, "<s>", "</s>")? {
//!         // seg.is_content: tokenize without special-token parsing; else with it.
//!         let _ = (seg.text, seg.is_content);
//!     }
//!     let _stops = t.stop_strings("<s>", "</s>"); // besides the vocabulary's EOG tokens
//! }
//! # Ok(()) }
//! ```

mod builtin;
mod engine;
mod python;
mod segment;

pub use builtin::BUILTIN_NAMES;
pub use engine::{FUEL, FUEL_PER_MESSAGE, MAX_FUEL, MAX_TEMPLATE_BYTES, MIN_OUTPUT_CAP, OUTPUT_FACTOR, RECURSION_LIMIT, RENDER_STACK};
pub use segment::Segment;

use crate::{bad_input, bail_input};
use anyhow::{Context, Result};
use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One turn of a conversation. `role` is normally "system", "user" or "assistant"; templates
/// decide what other roles mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}

/// Where a template came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// The model's `tokenizer.chat_template`.
    Gguf,
    /// A built-in template, by its canonical name (one of [`BUILTIN_NAMES`]).
    Builtin(&'static str),
    /// A Jinja file given with `--chat-template FILE`.
    File(PathBuf),
}

/// A compiled, sandboxed chat template.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: TemplateSource,
    text: String,
    engine: engine::Engine,
    /// OpenAI-style tool definitions given to the template as `tools` (see [`with_tools`]).
    tools: Option<serde_json::Value>,
}

/// A message as the template sees it: a mapping whose keys keep the order `role`, `content`
/// (as a Python dict would, which `tojson` shows).
#[derive(Debug)]
struct MessageValue {
    role: Value,
    content: Value,
}

impl Object for MessageValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(self.role.clone()),
            "content" => Some(self.content.clone()),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

impl ChatTemplate {
    fn compile(text: &str, source: TemplateSource) -> Result<ChatTemplate> {
        let engine = engine::Engine::new(text, None)?;
        Ok(ChatTemplate { source, text: text.to_string(), engine, tools: None })
    }

    /// The model's own template (the GGUF's `tokenizer.chat_template`).
    pub fn from_gguf_str(text: &str) -> Result<ChatTemplate> {
        ChatTemplate::compile(text, TemplateSource::Gguf).context("the model's chat template (tokenizer.chat_template)")
    }

    /// A built-in template by name (see [`BUILTIN_NAMES`]); an unknown name is BadInput.
    pub fn builtin(name: &str) -> Result<ChatTemplate> {
        let Some((canonical, text)) = builtin::source(name) else {
            bail_input!("unknown chat template '{name}' (built-in: {})", BUILTIN_NAMES.join(", "));
        };
        ChatTemplate::compile(&text, TemplateSource::Builtin(canonical))
    }

    /// A Jinja template read from a file; unreadable, oversized, non-UTF-8 or invalid is BadInput.
    pub fn from_file(path: &Path) -> Result<ChatTemplate> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| bad_input!("cannot read chat template file {shown}: {e}"))?;
        if !meta.is_file() {
            bail_input!("chat template file {shown} is not a regular file");
        }
        if meta.len() > MAX_TEMPLATE_BYTES as u64 {
            bail_input!("chat template file {shown} is {} bytes, more than the {MAX_TEMPLATE_BYTES} allowed", meta.len());
        }
        let bytes = std::fs::read(path).map_err(|e| bad_input!("cannot read chat template file {shown}: {e}"))?;
        let text = String::from_utf8(bytes).map_err(|_| bad_input!("chat template file {shown} is not UTF-8"))?;
        ChatTemplate::compile(&text, TemplateSource::File(path.to_path_buf())).with_context(|| format!("chat template file {shown}"))
    }

    /// The template that applies: `flag` (a built-in name or a file) over the GGUF's template;
    /// None when neither gives one (or the flag is `none`). See [`select`] for the reason.
    pub fn resolve(flag: Option<&str>, gguf_template: Option<&str>) -> Result<Option<ChatTemplate>> {
        Ok(select(flag, gguf_template)?.template)
    }

    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// Short name for messages: the built-in's name, `gguf`, or the file's path.
    pub fn name(&self) -> String {
        match &self.source {
            TemplateSource::Gguf => "gguf".to_string(),
            TemplateSource::Builtin(n) => n.to_string(),
            TemplateSource::File(p) => p.display().to_string(),
        }
    }

    /// The Jinja source.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The built-in format this template resembles, by llama.cpp's detection heuristics
    /// (informational; a built-in is its own family).
    pub fn family(&self) -> Option<&'static str> {
        match self.source {
            TemplateSource::Builtin(n) => Some(n),
            _ => builtin::detect_family(&self.text),
        }
    }

    /// Makes `strftime_now` report this time (seconds since the Unix epoch, UTC) instead of
    /// the clock, for reproducible renders (tests, golden files).
    pub fn with_fixed_time(mut self, unix_seconds: i64) -> ChatTemplate {
        self.engine = self.engine.with_fixed_now(Some(unix_seconds));
        self
    }

    /// This template rendering `tools` (OpenAI's list of `{"type": "function", "function":
    /// {...}}`) as the Jinja variable `tools`, as transformers' `apply_chat_template(tools=…)`.
    pub fn with_tools(&self, tools: serde_json::Value) -> ChatTemplate {
        ChatTemplate { tools: Some(tools), ..self.clone() }
    }

    /// Does the template use a `tools` variable (so it describes tools to the model itself)?
    pub fn renders_tools(&self) -> bool {
        self.text.contains("tools")
    }

    fn render_with(&self, messages: &[Message], contents: &[String], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String> {
        let list: Vec<Value> = messages
            .iter()
            .zip(contents)
            .map(|(m, c)| Value::from_object(MessageValue { role: Value::from(m.role.as_str()), content: Value::from(c.as_str()) }))
            .collect();
        let base = minijinja::context! {
            messages => Value::from(list),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        };
        // without tools the variable stays undefined (templates test `tools is defined`)
        let ctx = match &self.tools {
            Some(t) => minijinja::context! { tools => Value::from_serialize(t), ..base },
            None => base,
        };
        let tools_bytes = self.tools.as_ref().map_or(0, |t| t.to_string().len());
        let input_bytes = contents.iter().map(|c| c.len() + 16).sum::<usize>() + bos.len() + eos.len() + tools_bytes;
        self.engine.render(&ctx, messages.len(), input_bytes)
    }

    /// The prompt for `messages` as transformers' `apply_chat_template(…, tokenize=False)`
    /// gives it, with `bos` and `eos` the texts of the vocabulary's BOS/EOS tokens. If the
    /// template writes BOS itself (many do), the caller must not add another.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String> {
        let contents: Vec<String> = messages.iter().map(|m| m.content.clone()).collect();
        self.render_with(messages, &contents, add_generation_prompt, bos, eos)
    }

    /// The prompt of [`render`](Self::render) split into markup and message text (the
    /// injection barrier; the rule and its limits are documented in `chat/segment.rs`).
    /// Joined, the segments are exactly `render`'s output; adjacent segments differ in kind.
    /// BadInput when the template handles message text in a way the split cannot follow.
    pub fn render_segments(&self, messages: &[Message], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<Vec<Segment>> {
        let real = self.render(messages, add_generation_prompt, bos, eos)?;
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        if contents.iter().all(|c| c.is_empty()) {
            return segment::all_markup(real);
        }
        let opaque: Vec<String> =
            contents.iter().enumerate().map(|(i, c)| if c.is_empty() { String::new() } else { segment::opaque_marker(i) }).collect();
        if let Ok(marked) = self.render_with(messages, &opaque, add_generation_prompt, bos, eos) {
            if let Some(s) = segment::split_opaque(&marked, &real, &contents) {
                return Ok(s);
            }
        }
        let clean = !contents.iter().any(|c| segment::has_sentinel(c)) && !segment::has_sentinel(bos) && !segment::has_sentinel(eos);
        if clean {
            let wrapped: Vec<String> =
                contents.iter().enumerate().map(|(i, c)| if c.is_empty() { String::new() } else { segment::bracketed(i, c) }).collect();
            if let Ok(marked) = self.render_with(messages, &wrapped, add_generation_prompt, bos, eos) {
                if let Some(s) = segment::split_bracketed(&marked, &real, &contents) {
                    return Ok(s);
                }
            }
        }
        Err(segment::unseparable())
    }

    /// Strings that end an assistant turn in this template's format, for the session to stop
    /// on besides the vocabulary's end-of-generation tokens (it may drop those that are EOG
    /// tokens already). Found by rendering a probe conversation and reading the markup that
    /// follows the assistant's text: a leading `<…>` or `[…]` tag, else the first line. Empty
    /// when the template writes nothing there or rejects the probe.
    pub fn stop_strings(&self, bos: &str, eos: &str) -> Vec<String> {
        let probes: [&[Message]; 2] = [
            &[Message::user("Hi"), Message::assistant("Hello"), Message::user("Bye")],
            &[Message::user("Hi"), Message::assistant("Hello")],
        ];
        for probe in probes {
            let Ok(segs) = self.render_segments(probe, false, bos, eos) else { continue };
            // The markup right after the second content segment (the assistant's "Hello").
            let mut seen = 0;
            let mut after = None;
            for s in &segs {
                if s.is_content {
                    seen += 1;
                } else if seen == 2 {
                    after = Some(s.text.as_str());
                    break;
                }
            }
            let Some(after) = after else { continue };
            let t = after.trim_start();
            let stop = match t.chars().next() {
                Some('<') => t.find('>').map(|e| &t[..=e]),
                Some('[') => t.find(']').map(|e| &t[..=e]),
                Some(_) => t.lines().next().map(str::trim_end),
                None => None,
            };
            return stop.filter(|s| !s.is_empty()).map(|s| vec![s.to_string()]).unwrap_or_default();
        }
        Vec::new()
    }
}

/// Which template applies and why.
#[derive(Debug)]
pub struct Selection {
    pub template: Option<ChatTemplate>,
    /// One line for the user; when `template` is None it is the warning to print.
    pub reason: String,
}

/// Picks the template: `--chat-template NAME|FILE` (`flag`) first, then the model's
/// `tokenizer.chat_template`, else none (the caller then runs prompts raw, printing `reason`).
/// `flag` is a built-in name if it is one (`./chatml` reaches a file of that name), `none`
/// to run raw even if the model has a template, else a path. An empty GGUF template counts as
/// absent. Errors (unknown name, unreadable or invalid file, invalid GGUF template) are BadInput.
pub fn select(flag: Option<&str>, gguf_template: Option<&str>) -> Result<Selection> {
    if let Some(flag) = flag {
        if flag == "none" {
            return Ok(Selection { template: None, reason: "none (--chat-template none): prompts go to the model raw".to_string() });
        }
        if BUILTIN_NAMES.contains(&flag) {
            let t = ChatTemplate::builtin(flag)?;
            let reason = format!("built-in '{}' (--chat-template)", t.name());
            return Ok(Selection { template: Some(t), reason });
        }
        let path = Path::new(flag);
        if !path.exists() {
            bail_input!("--chat-template {flag}: not a built-in template ({}, none) nor an existing file", BUILTIN_NAMES.join(", "));
        }
        let t = ChatTemplate::from_file(path)?;
        let reason = format!("file {flag} (--chat-template)");
        return Ok(Selection { template: Some(t), reason });
    }
    match gguf_template.filter(|t| !t.trim().is_empty()) {
        Some(text) => {
            let t = ChatTemplate::from_gguf_str(text)?;
            let reason = match t.family() {
                Some(f) => format!("the model's own (tokenizer.chat_template, {f}-like)"),
                None => "the model's own (tokenizer.chat_template)".to_string(),
            };
            Ok(Selection { template: Some(t), reason })
        }
        None => Ok(Selection {
            template: None,
            reason: format!(
                "the model has no chat template; prompts go to it raw (choose one with --chat-template NAME|FILE: {})",
                BUILTIN_NAMES.join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests;
