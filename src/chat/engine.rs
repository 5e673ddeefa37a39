//! The sandboxed MiniJinja set-up that renders chat templates as transformers does
//! (`_compile_jinja_template` in transformers' `utils/chat_template_utils.py`): an immutable
//! sandbox with `trim_blocks`, `lstrip_blocks` and loop controls, plus `raise_exception`,
//! `strftime_now` and its own `tojson`. On top: fuel, recursion and output limits, no loader.

use super::python;
use crate::bad_input;
use anyhow::Result;
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Largest template accepted (the biggest real ones, with tool-calling logic, are ~20 KiB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Instructions one render may execute: this many plus `FUEL_PER_MESSAGE` per message, at most
/// `MAX_FUEL`. Real templates take under 200 plus under 100 per message (measured on the
/// templates in tests/golden/chat/templates), so ~5000 messages fit; `MAX_FUEL` runs in ~30 ms.
pub const FUEL: u64 = 300_000;
pub const FUEL_PER_MESSAGE: u64 = 500;
pub const MAX_FUEL: u64 = 800_000;
/// Stack of the thread that renders. A template can nest a value one level per instruction
/// (`{% set ns.x = [ns.x] %}` in a loop) and MiniJinja's printing, comparison and dropping of
/// values recurse per level, printing at ~480 bytes a level: `MAX_FUEL` levels need ~390 MiB.
/// Only the pages touched are ever allocated. Where that much address space is refused, a
/// `FALLBACK_STACK` is used with the fuel cut to fit (`STACK_PER_FUEL` bytes a level, with margin).
pub const RENDER_STACK: usize = 512 << 20;
const FALLBACK_STACK: usize = 64 << 20;
const STACK_PER_FUEL: usize = 640;
/// Nesting of macro calls, includes and expressions. MiniJinja's default is 500; chat templates
/// need a handful.
pub const RECURSION_LIMIT: usize = 64;
/// The rendered prompt may be at most this big, or `OUTPUT_FACTOR` times the input (messages
/// plus template), whichever is larger.
pub const MIN_OUTPUT_CAP: usize = 16 << 20;
pub const OUTPUT_FACTOR: usize = 8;

/// Memory one render may hold (strings, lists and maps the template builds, the output): this
/// plus `RENDER_MEMORY_FACTOR` times the output cap. Real templates hold a few times their output.
pub const MIN_RENDER_MEMORY: usize = 256 << 20;
pub const RENDER_MEMORY_FACTOR: usize = 4;
const RENDER_MEMORY_MESSAGE: &str = "the chat template built values larger than its memory limit while rendering \
     (a string, list or map growing without bound); try another --chat-template, or --raw";

/// The error `raise_exception(msg)` raises, carried as the MiniJinja error's source.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A chat template's source, checked to compile. Each render builds a fresh environment with
/// no other template in it, so `include`, `import` and `extends` find nothing.
#[derive(Clone, Debug)]
pub struct Engine {
    source: String,
    fixed_now: Option<i64>,
}

impl Engine {
    pub fn new(source: &str, fixed_now: Option<i64>) -> Result<Engine> {
        if source.len() > MAX_TEMPLATE_BYTES {
            crate::bail_input!("chat template is {} bytes, more than the {MAX_TEMPLATE_BYTES} allowed", source.len());
        }
        let engine = Engine { source: strip_generation_tags(source), fixed_now };
        on_render_thread(|_| {
            let env = environment(engine.fixed_now, FUEL);
            guard(|| env.template_from_named_str("chat_template", &engine.source).map(|_| ())).map_err(|e| template_error(&e, None))
        })?;
        Ok(engine)
    }

    pub fn with_fixed_now(&self, fixed_now: Option<i64>) -> Engine {
        Engine { source: self.source.clone(), fixed_now }
    }

    /// Renders with `ctx` as the context. `n_messages` and `input_bytes` scale the limits.
    pub fn render(&self, ctx: &Value, n_messages: usize, input_bytes: usize) -> Result<String> {
        on_render_thread(|max_fuel| self.render_here(ctx, n_messages, input_bytes, max_fuel))
    }

    fn render_here(&self, ctx: &Value, n_messages: usize, input_bytes: usize, max_fuel: u64) -> Result<String> {
        let fuel = FUEL.saturating_add(FUEL_PER_MESSAGE.saturating_mul(n_messages as u64)).min(max_fuel);
        let cap = MIN_OUTPUT_CAP.max(input_bytes.saturating_add(self.source.len()).saturating_mul(OUTPUT_FACTOR));
        // Values the template builds (a string or list doubled in a loop) are bounded as they
        // grow, not only the output: past this the process ends with exit 2 (see ggml::budget).
        let memory = MIN_RENDER_MEMORY.saturating_add(cap.saturating_mul(RENDER_MEMORY_FACTOR));
        ggml::budget::with_budget(memory, RENDER_MEMORY_MESSAGE, || self.render_bounded(ctx, fuel, cap))
    }

    fn render_bounded(&self, ctx: &Value, fuel: u64, cap: usize) -> Result<String> {
        let env = environment(self.fixed_now, fuel);
        let mut out = CappedWriter { buf: Vec::new(), cap, overflowed: false };
        let result = guard(|| {
            let tmpl = env.template_from_named_str("chat_template", &self.source)?;
            tmpl.render_captured_to(ctx, &mut out).map(|_| ())
        });
        match result {
            Ok(()) => String::from_utf8(out.buf).map_err(|_| bad_input!("chat template produced invalid UTF-8")),
            Err(_) if out.overflowed => Err(bad_input!("chat template output exceeds the {cap}-byte limit")),
            Err(e) => Err(template_error(&e, Some(fuel))),
        }
    }
}

/// Runs `f` on a thread with a `RENDER_STACK` stack (see there), passing it the most fuel that
/// stack allows.
fn on_render_thread<T: Send>(f: impl FnOnce(u64) -> Result<T> + Send) -> Result<T> {
    // Taken by whichever thread starts (spawning can fail before the closure is moved).
    let f = std::sync::Mutex::new(Some(f));
    let f = &f;
    std::thread::scope(|scope| {
        let spawn = |stack: usize| std::thread::Builder::new().name("chat-template".to_string()).stack_size(stack);
        let run = |stack: usize| {
            spawn(stack).spawn_scoped(scope, move || {
                let f = f.lock().ok().and_then(|mut g| g.take());
                let max_fuel = MAX_FUEL.min((stack / STACK_PER_FUEL) as u64);
                f.map_or_else(|| Err(anyhow::anyhow!("chat template thread started twice")), |f| f(max_fuel))
            })
        };
        run(RENDER_STACK)
            .or_else(|_| run(FALLBACK_STACK))
            .map_err(|e| anyhow::anyhow!("cannot start the chat template thread: {e}"))?
            .join()
            .unwrap_or_else(|_| Err(bad_input!("chat template crashed the template engine")))
    })
}

/// Runs MiniJinja, turning a panic inside it (a bug there, never expected) into an error.
fn guard<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(Error::new(ErrorKind::InvalidOperation, "the template engine panicked")))
}

fn environment<'s>(fixed_now: Option<i64>, fuel: u64) -> Environment<'s> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_debug(false);
    env.set_fuel(Some(fuel));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.set_formatter(python::format_value);
    // Printing helpers whose output grows with the square of a value's nesting; no chat
    // template uses them.
    env.remove_filter("pprint");
    env.remove_global("debug");
    env.set_unknown_method_callback(python::unknown_method);
    env.add_filter("tojson", python::tojson);
    env.add_filter("length", python::length);
    env.add_filter("count", python::length);
    env.add_filter("string", python::string);
    env.add_filter("join", python::join);
    env.add_function("raise_exception", |msg: Option<Value>| -> Result<Value, Error> {
        let mut text = String::new();
        if let Some(m) = msg {
            python::py_str(&m, &mut text, 0)?;
        }
        Err(Error::new(ErrorKind::InvalidOperation, "raise_exception").with_source(Raised(text)))
    });
    env.add_function("strftime_now", move |fmt: &str| -> String {
        let now = fixed_now
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64));
        python::strftime(now, fmt)
    });
    env
}

/// One line naming what went wrong in the template, as a [`crate::error::BadInput`].
fn template_error(e: &Error, fuel: Option<u64>) -> anyhow::Error {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(Raised(msg)) = s.downcast_ref::<Raised>() {
            return bad_input!("chat template raised an error: {}", msg.trim());
        }
        source = s.source();
    }
    let line = e.line().map(|l| format!(" (template line {l})")).unwrap_or_default();
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    match e.kind() {
        ErrorKind::OutOfFuel => {
            bad_input!("chat template ran too long (more than {} steps){line}", fuel.unwrap_or(FUEL))
        }
        ErrorKind::TemplateNotFound | ErrorKind::BadInclude => {
            bad_input!("chat template loads another template{detail}{line}; include, import and extends are not allowed")
        }
        ErrorKind::SyntaxError => bad_input!("chat template syntax error{detail}{line}"),
        kind => bad_input!("chat template error: {kind}{detail}{line}"),
    }
}

/// Collects output up to `cap` bytes, then fails the render.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            self.overflowed = true;
            return Err(io::Error::other("chat template output cap reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// transformers registers an `AssistantTracker` extension whose `{% generation %}` …
/// `{% endgeneration %}` block renders its body unchanged; MiniJinja has no such tag, so the
/// tags become `{% if true %}` … `{% endif %}`, keeping their whitespace-control marks.
fn strip_generation_tags(src: &str) -> String {
    if !src.contains("generation") {
        return src.to_string();
    }
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match parse_generation_tag(tag) {
            Some((len, open_mark, word, close_mark)) => {
                let body = if word == "generation" { "if true" } else { "endif" };
                out.push_str(&format!("{{%{open_mark} {body} {close_mark}%}}"));
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `{%-? generation -?%}` or the `endgeneration` form at the start of `s`: (length, marks, word).
fn parse_generation_tag(s: &str) -> Option<(usize, &str, &str, &str)> {
    let inner = &s[2..];
    let (open_mark, inner_rest) = match inner.chars().next() {
        Some(c @ ('-' | '+')) => (&inner[..c.len_utf8()], &inner[1..]),
        _ => ("", inner),
    };
    let trimmed = inner_rest.trim_start();
    let word = ["endgeneration", "generation"].into_iter().find(|w| trimmed.starts_with(w))?;
    let after = trimmed[word.len()..].trim_start();
    let (close_mark, after) = match after.chars().next() {
        Some(c @ ('-' | '+')) => (&after[..c.len_utf8()], &after[1..]),
        _ => ("", after),
    };
    let after = after.strip_prefix("%}")?;
    Some((s.len() - after.len(), open_mark, word, close_mark))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_if_blocks() {
        assert_eq!(strip_generation_tags("a{% generation %}b{%- endgeneration -%}c"), "a{% if true %}b{%- endif -%}c");
        assert_eq!(strip_generation_tags("{% if generation %}x{% endif %}"), "{% if generation %}x{% endif %}");
        assert_eq!(strip_generation_tags("{%generation%}"), "{% if true %}");
    }
}
