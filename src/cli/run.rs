//! `ferrite run`: one answer. On a chat model the prompt is one user turn through the template
//! (`--raw` for plain completion); with stdin piped and a PROMPT, stdin is the document and
//! PROMPT the instruction. Text streams to stdout; `--json` prints one object at the end.

use super::common::{self, GenArgs, SamplingArgs};
use super::{output, ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::error::Interrupted;
use ferrite::session::{Event, Flow, Generation, StopReason};
use serde_json::json;
use std::ffi::OsString;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ctx: ContextArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub gen: GenArgs,
    /// Plain completion of the prompt: no chat template
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object at the end instead of streaming text
    #[arg(long)]
    pub json: bool,
    /// Continue the conversation saved in FILE (created if missing) and save it back
    #[arg(long, value_name = "FILE")]
    pub session: Option<std::path::PathBuf>,
    /// Read the prompt from FILE (`-` for standard input)
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with = "prompt")]
    pub file: Option<std::path::PathBuf>,
    /// With --json: include the N highest logits of the first generated position
    #[arg(long = "top-logits", value_name = "N", default_value_t = 0)]
    pub top_logits: usize,
    /// The prompt (or the instruction, when a document is piped on stdin)
    #[arg(value_name = "PROMPT")]
    pub prompt: Option<OsString>,
}

fn utf8_arg(a: OsString) -> Result<String> {
    a.into_string().map_err(|_| ferrite::bad_input!("PROMPT is not valid UTF-8"))
}

/// The prompt text from the argument, a file and/or stdin.
fn prompt_text(a: &Args) -> Result<Option<String>> {
    let arg = match (&a.prompt, &a.file) {
        (Some(p), _) => Some(utf8_arg(p.clone())?),
        // `-f -`: the prompt is standard input
        (None, Some(f)) if f.as_os_str() == "-" => return Ok(Some(common::read_stdin()?)),
        (None, Some(f)) => {
            let bytes = std::fs::read(f).map_err(|e| ferrite::bad_input!("{}: {e}", f.display()))?;
            Some(String::from_utf8(bytes).map_err(|e| {
                ferrite::bad_input!("{}: not valid UTF-8 at byte offset {}", f.display(), e.utf8_error().valid_up_to())
            })?)
        }
        (None, None) => None,
    };
    let doc = if common::stdin_is_terminal() { None } else { Some(common::read_stdin()?) };
    Ok(match (arg, doc) {
        (Some(p), Some(d)) if !d.is_empty() => Some(format!("{p}\n\n{d}")),
        (Some(p), _) => Some(p),
        (None, Some(d)) => Some(d),
        (None, None) => None,
    })
}

pub fn main(a: Args) -> Result<()> {
    common::install_interrupt();
    let Some(text) = prompt_text(&a)? else {
        if a.raw || a.json {
            ferrite::bail_input!("no prompt: give PROMPT, -f FILE or pipe text on stdin");
        }
        return super::chat::repl(super::chat::Args::from_run(a));
    };
    if a.gen.verbose {
        ggml::set_log_level(3);
    }
    let loaded = common::load(&a.model, &a.ctx, a.gen.quiet || a.json)?;
    let (template, reason) = if a.raw { (None, String::new()) } else { common::template(&loaded.model.file, a.gen.chat_template.as_deref())? };
    if template.is_none() && !a.raw && !a.gen.quiet {
        eprintln!("ferrite: {reason}; running the prompt raw");
    }
    let mut sess = common::session(&loaded, &a.ctx, &a.sampling, &a.gen, template)?;
    sess.opts.capture_top = a.top_logits;
    if let Some(path) = &a.session {
        super::sessionfile::load_into(path, &mut sess, &loaded)?;
    }
    if a.gen.verbose {
        eprintln!("ferrite: seed {}, context {}, threads {:?}", sess.sampler.seed(), sess.n_ctx(), a.ctx.threads);
    }
    if a.gen.show_prompt {
        let ids = if sess.template.is_some() {
            let mut m = sess.messages.clone();
            m.push(ferrite::chat::Message::user(text.clone()));
            sess.chat_prompt(&m)?
        } else {
            sess.raw_prompt(&text)?
        };
        eprintln!("{}", sess.tok.decode(&ids, true));
    }

    let json = a.json;
    let quiet = a.gen.quiet;
    let mut closed = false;
    let mut on = |e: Event| -> Flow {
        match e {
            Event::Text(t) => {
                if !json && !closed && output::print(t).is_err() {
                    closed = true;
                }
            }
            Event::Notice(n) => {
                if !quiet {
                    eprintln!("ferrite: {n}");
                }
            }
        }
        if closed || common::interrupted() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    };
    let g = if sess.template.is_some() { sess.chat(&text, &mut on)? } else { sess.complete(&text, &mut on)? };
    let interrupted = common::interrupted();
    if closed {
        // the reader went away (`| head`): a normal end
        return Ok(());
    }
    if json {
        output::println(&serde_json::to_string(&to_json(&g, loaded.load_ms, sess.sampler.seed()))?)?;
    } else if !g.text.ends_with('\n') && !g.text.is_empty() {
        output::print("\n")?;
    }
    if !quiet && !json {
        eprintln!("{}", common::timing_line(&g.timings, sess.n_cached(), sess.n_ctx()));
    }
    if let Some(path) = &a.session {
        super::sessionfile::save(path, &sess)?;
    }
    if interrupted || g.stop_reason == StopReason::Interrupted {
        return Err(anyhow::Error::new(Interrupted));
    }
    Ok(())
}

fn to_json(g: &Generation, load_ms: f64, seed: u64) -> serde_json::Value {
    let t = &g.timings;
    let mut v = json!({
        "text": g.text,
        "tokens": g.tokens,
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.tokens.len(),
        "stop_reason": g.stop_reason.name(),
        "seed": seed,
        "timings": {
            "load_ms": load_ms,
            "prompt_ms": t.prompt_ms,
            "prompt_tokens_computed": t.prompt_tokens,
            "prompt_tps": t.prompt_tps(),
            "gen_ms": t.gen_ms,
            "gen_tps": t.gen_tps(),
        },
    });
    if let Some(id) = g.stop_token {
        v["stop_token"] = json!(id);
    }
    if !g.first_top.is_empty() {
        v["first_top_logits"] = json!(g.first_top.iter().map(|(i, l)| json!([i, l])).collect::<Vec<_>>());
    }
    v
}
