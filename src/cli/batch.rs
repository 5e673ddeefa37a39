//! `ferrite batch`: many prompts at once through the many-sequences engine. Reads JSONL (one
//! request a line) on stdin or from `-f FILE`; writes one JSONL line per input, in input order,
//! as soon as the order allows. A bad line is an error object on its own output line; Ctrl-C
//! writes what is finished and exits 130.

use super::common::{self, SamplingArgs};
use super::{fields, files, output, ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::chat::Message;
use ferrite::engine::{Engine, EngineHandle, Prompt, Request, SeqEvent, SeqId, SeqParams};
use ferrite::error::Interrupted;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ctx: ContextArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Sequences decoded together (llama.cpp's -np); each has a context of -c tokens
    #[arg(long = "parallel", default_value_t = 4, value_name = "N")]
    pub parallel: u32,
    /// Read the requests from FILE (default: standard input)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,
    /// Plain completion of each "prompt": no chat template (a line may set "raw" itself)
    #[arg(long)]
    pub raw: bool,
    /// Tokens to generate at most per request (-1: until the end of its context); a line's
    /// "max_tokens" overrides it
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, value_name = "N", allow_negative_numbers = true)]
    pub n_predict: i32,
    /// Stop generating at this text (repeatable); a line's "stop" replaces them
    #[arg(long = "stop", value_name = "STR", allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// System prompt of chat requests that bring none
    #[arg(long, visible_alias = "system-prompt", value_name = "TEXT")]
    pub system: Option<String>,
    #[arg(long = "chat-template", value_name = "NAME|FILE", help = common::CHAT_TEMPLATE_HELP)]
    pub chat_template: Option<String>,
    /// Render special tokens in the text
    #[arg(long = "special")]
    pub special: bool,
    /// No progress bar or summary on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Give each generated token's log-probability and its N most likely alternatives (0..=20;
    /// a line's "logprobs" overrides it)
    #[arg(long = "logprobs", value_name = "N", value_parser = clap::value_parser!(u32).range(0..=MAX_LOGPROBS))]
    pub logprobs: Option<u32>,
    /// How a prompt reuses the cells its slot kept from the one before (prompts that start alike)
    #[arg(long = "prompt-reuse", value_enum, default_value = "exact", value_name = "MODE")]
    pub prompt_reuse: common::PromptReuseArg,
}

/// The most input read (a line is a request; this is ~a million short prompts).
const INPUT_CAP: u64 = 256 << 20;

/// The fields a request line may have.
const FIELDS: &[&str] = &[
    "id",
    "prompt",
    "messages",
    "raw",
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "seed",
    "stop",
    "logprobs",
    "grammar",
    "json_schema",
];

/// Most alternatives a token's log-probabilities may list (OpenAI's `top_logprobs` bound).
const MAX_LOGPROBS: i64 = 20;

/// One input line: its id (the line's "id", else its line number) and its request or error.
struct Item {
    id: Value,
    req: Result<Request, String>,
}

pub fn main(a: Args) -> Result<()> {
    common::install_interrupt();
    if a.parallel == 0 || a.parallel > ferrite::decoder::MAX_SEQ {
        ferrite::bail_input!("--parallel: {} is out of range 1..={}", a.parallel, ferrite::decoder::MAX_SEQ);
    }
    if a.n_predict < -1 {
        ferrite::bail_input!("--n-predict must be -1 or more");
    }
    if let Some(s) = a.stop.iter().find(|s| s.is_empty()) {
        ferrite::bail_input!("--stop {s:?}: an empty stop string would stop before the first token");
    }
    let defaults = SeqParams {
        stop: a.stop.clone(),
        show_special: a.special,
        logprobs: a.logprobs,
        constraint: a.sampling.constraint()?.map(|(_, c)| c),
        ..SeqParams::new(a.n_predict, a.sampling.config()?)
    };
    let hint = "split the input into several runs";
    let input = match &a.file {
        Some(f) if f.as_os_str() != "-" => files::utf8(files::read_capped(f, INPUT_CAP, "input file", hint)?, &f.display().to_string())?,
        _ => {
            if common::stdin_is_terminal() {
                ferrite::bail_input!("no requests: pipe JSONL on standard input or give -f FILE (one {{\"prompt\": ...}} a line)");
            }
            files::utf8(files::read_stdin_capped(INPUT_CAP, "batch input", hint)?, "standard input")?
        }
    };
    let cap = files::prompt_cap(a.ctx.ctx_size);
    let items: Vec<Item> =
        input.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(n, l)| parse_line(n + 1, l, a.raw, &defaults, cap)).collect();
    let total = items.len();

    // the engine, with its model, lives on its own thread
    let (ma, ca, flag, quiet, system) = (a.model.clone(), a.ctx.clone(), a.chat_template.clone(), a.quiet, a.system.clone());
    let (parallel, raw, reuse) = (a.parallel, a.raw, a.prompt_reuse);
    let (handle, thread) = EngineHandle::spawn(move || {
        let loaded = common::load(&ma, &ca, quiet)?;
        let (template, reason) = common::template(&loaded.model.file, flag.as_deref())?;
        if template.is_none() && !raw && !quiet {
            stderrln!("ferrite: {reason}; running the prompts raw");
        }
        let opts = ferrite::decoder::ContextOptions { n_seq: parallel, ..ca.options()? };
        let mut engine = Engine::new(loaded.model.clone(), loaded.tok.clone(), template, &opts)?;
        engine.system = system;
        engine.prompt_reuse = reuse.into();
        engine.set_interrupt(&common::INTERRUPTED);
        Ok(engine)
    })?;

    let (tx, rx) = std::sync::mpsc::channel::<(SeqId, SeqEvent)>();
    let mut lines: Vec<Option<String>> = vec![None; total];
    let mut index_of: HashMap<SeqId, usize> = HashMap::new();
    let mut ids: Vec<Value> = Vec::with_capacity(total);
    let mut logprobs_asked = vec![false; total];
    for (i, item) in items.into_iter().enumerate() {
        ids.push(item.id.clone());
        match item.req {
            Ok(req) => {
                logprobs_asked[i] = req.params.logprobs.is_some();
                let sid = handle.submit(req, tx.clone())?;
                index_of.insert(sid, i);
            }
            Err(e) => lines[i] = Some(json!({ "id": item.id, "error": e }).to_string()),
        }
    }
    drop(tx);
    drop(handle);

    let bar = (!a.quiet && std::io::stderr().is_terminal() && total > 0).then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("batch [{bar:30}] {pos}/{len} {msg}").expect("valid template").progress_chars("=> "),
        );
        b
    });
    let t0 = Instant::now();
    let (mut written, mut done, mut generated, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let write_ready = |lines: &mut Vec<Option<String>>, written: &mut usize| -> Result<()> {
        while *written < total {
            let Some(line) = lines[*written].take() else { break };
            output::println(&line)?;
            *written += 1;
        }
        Ok(())
    };
    write_ready(&mut lines, &mut written)?;
    let mut interrupted = false;
    let mut remaining = index_of.len();
    while remaining > 0 {
        let (i, res) = match common::next_done(&rx, &index_of) {
            common::Waited::Done(i, res) => (i, res),
            common::Waited::Interrupted => {
                interrupted = true;
                break;
            }
            common::Waited::Closed => break,
        };
        remaining -= 1;
        let line = match res {
            Ok(f) => {
                done += 1;
                generated += f.tokens.len();
                let mut v = json!({
                    "id": ids[i],
                    "text": f.text,
                    "tokens": f.tokens,
                    "stop_reason": f.stop_reason.name(),
                    "prompt_tokens": f.prompt_tokens,
                    "completion_tokens": f.tokens.len(),
                });
                if logprobs_asked[i] {
                    v["logprobs"] = logprobs_json(&f.logprobs);
                }
                v
            }
            Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
                interrupted = true;
                continue;
            }
            Err(e) => {
                failed += 1;
                json!({ "id": ids[i], "error": ferrite::error::one_line(&e) })
            }
        };
        lines[i] = Some(line.to_string());
        write_ready(&mut lines, &mut written)?;
        if let Some(b) = &bar {
            b.set_position((done + failed) as u64);
            b.set_message(format!("{:.1} t/s", generated as f64 / t0.elapsed().as_secs_f64().max(1e-3)));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if interrupted || common::interrupted() {
        // what is finished, in input order, even past a gap
        for line in lines.iter_mut().skip(written).filter_map(|l| l.take()) {
            output::println(&line)?;
        }
        return Err(anyhow::Error::new(Interrupted));
    }
    thread.join()?;
    let bad = if failed == 0 { String::new() } else { format!(", {failed} failed (see their \"error\" lines)") };
    if !a.quiet {
        let secs = t0.elapsed().as_secs_f64();
        stderrln!(
            "ferrite: batch: {done} of {total} answered{bad} · {generated} tokens in {secs:.1} s ({:.1} t/s)",
            generated as f64 / secs.max(1e-3)
        );
    }
    Ok(())
}

/// One input line → its request, or the message of its error object.
/// `cap`: the most bytes of prompt text a line may carry (as `run`'s prompt: 16 bytes a token of
/// context); a larger one is refused before tokenizing.
fn parse_line(line_no: usize, line: &str, raw_default: bool, defaults: &SeqParams, cap: u64) -> Item {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Item { id: json!(line_no), req: Err(format!("line {line_no}: not JSON: {e}")) },
    };
    let Value::Object(o) = v else {
        return Item { id: json!(line_no), req: Err(format!("line {line_no}: not a JSON object")) };
    };
    let id = o.get("id").cloned().unwrap_or(json!(line_no));
    let text_bytes: usize = match (o.get("prompt"), o.get("messages")) {
        (Some(Value::String(p)), _) => p.len(),
        (_, Some(Value::Array(ms))) => ms.iter().filter_map(|m| m.get("content").and_then(Value::as_str)).map(str::len).sum(),
        _ => 0,
    };
    if text_bytes as u64 > cap {
        let (have, most) = (files::size(text_bytes as u64), files::size(cap));
        return Item {
            id,
            req: Err(format!("line {line_no}: the prompt is {have}, more than a context holds (at most {most}; raise -c)")),
        };
    }
    let req = request(&o, raw_default, defaults, line).map_err(|e| format!("line {line_no}: {e}"));
    Item { id, req }
}

fn request(o: &Map<String, Value>, raw_default: bool, defaults: &SeqParams, line: &str) -> Result<Request, String> {
    if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field \"{k}\" (fields: {})", FIELDS.join(", ")));
    }
    let raw = match o.get("raw") {
        None => raw_default,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"raw\" must be true or false".into()),
    };
    let prompt = match (o.get("prompt"), o.get("messages")) {
        (Some(_), Some(_)) => return Err("give \"prompt\" or \"messages\", not both".into()),
        (Some(Value::String(s)), None) => Prompt::Text { text: s.clone(), raw },
        (Some(_), None) => return Err("\"prompt\" must be a string".into()),
        (None, Some(Value::Array(ms))) => {
            if raw {
                return Err("\"messages\" need the chat template; drop \"raw\"/--raw".into());
            }
            let mut out = Vec::new();
            for m in ms {
                let (Some(Value::String(role)), Some(Value::String(content))) = (m.get("role"), m.get("content")) else {
                    return Err("each message needs string \"role\" and \"content\"".into());
                };
                out.push(Message { role: role.clone(), content: content.clone() });
            }
            if out.is_empty() {
                return Err("\"messages\" is empty".into());
            }
            Prompt::Messages(out)
        }
        (None, Some(_)) => return Err("\"messages\" must be an array".into()),
        (None, None) => return Err("no \"prompt\" or \"messages\"".into()),
    };
    let mut p = defaults.clone();
    let num = |k: &str| fields::num(o, k);
    let int = |k: &str, min: i64| fields::int(o, k, min);
    if let Some(n) = int("max_tokens", -1)? {
        p.max_tokens = n.min(i32::MAX as i64) as i32;
    }
    if let Some(t) = num("temperature")? {
        p.sampling.temp = t as f32;
    }
    if let Some(t) = num("top_p")? {
        p.sampling.top_p = t as f32;
    }
    if let Some(t) = num("min_p")? {
        p.sampling.min_p = t as f32;
    }
    if let Some(k) = int("top_k", 0)? {
        p.sampling.top_k = k.min(i32::MAX as i64) as i32;
    }
    if let Some(s) = int("seed", -1)? {
        p.sampling.seed = (s >= 0).then_some(s as u64);
    }
    p.sampling.validate().map_err(|e| ferrite::error::one_line(&e))?;
    if let Some(stop) = fields::stop(o)? {
        p.stop = stop;
    }
    if let Some(n) = int("logprobs", 0)? {
        if n > MAX_LOGPROBS {
            return Err(format!("\"logprobs\" must be between 0 and {MAX_LOGPROBS}"));
        }
        p.logprobs = Some(n as u32);
    }
    // a line's own constraint replaces the flags' (checked here, bound to the vocabulary when
    // the line starts)
    use ferrite::grammar::{json_schema, Constraint, Grammar};
    match (o.get("grammar"), o.get("json_schema")) {
        (Some(_), Some(_)) => return Err("give \"grammar\" or \"json_schema\", not both".into()),
        (Some(Value::String(g)), None) => {
            Grammar::check(g).map_err(|e| format!("grammar: {}", ferrite::error::one_line(&e)))?;
            p.constraint = Some(Constraint::Gbnf(g.clone()));
        }
        (Some(_), None) => return Err("\"grammar\" must be a string (GBNF)".into()),
        (None, Some(_)) => {
            // the schema as written, objects in their order
            let ordered: json_schema::Json = serde_json::from_str(line).map_err(|e| e.to_string())?;
            let text = ordered.get("json_schema").map(json_schema::Json::dump).unwrap_or_default();
            json_schema::gbnf_from_text(&text).map_err(|e| format!("json_schema: {}", ferrite::error::one_line(&e)))?;
            p.constraint = Some(Constraint::JsonSchema(text));
        }
        (None, None) => {}
    }
    Ok(Request { prompt, params: p })
}

/// A line's `logprobs`: per generated token its id, text, log-probability and alternatives.
fn logprobs_json(entries: &[ferrite::engine::TokenLogprob]) -> Value {
    let one = |l: &ferrite::engine::Logprob| json!({ "token": l.token, "text": String::from_utf8_lossy(&l.bytes), "logprob": l.logprob });
    entries
        .iter()
        .map(|e| {
            let mut v = one(&e.chosen);
            v["top"] = e.top.iter().map(one).collect();
            v
        })
        .collect()
}
