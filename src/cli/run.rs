//! `ferrite run`: one answer. On a chat model the prompt is one user turn through the template
//! (`--raw` for plain completion); with stdin piped and a PROMPT, stdin is the document and
//! PROMPT the instruction. Text streams to stdout; `--json` prints one object at the end.

use super::common::{self, GenArgs, SamplingArgs};
use super::files;
use super::{output, sessionfile, ContextArgs, ModelArgs};
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
    /// The prompt, as a flag (llama.cpp's -p)
    #[arg(short = 'p', long = "prompt", value_name = "PROMPT", conflicts_with = "file")]
    pub prompt_flag: Option<OsString>,
    /// Chat in the REPL instead of answering once (llama.cpp's -cnv/-i)
    #[arg(long = "conversation", visible_alias = "interactive", short = 'i')]
    pub conversation: bool,
    /// [MODEL] PROMPT...: the prompt (or the instruction, when a document is piped on stdin);
    /// its words are joined with spaces. A first word that names a known model or an existing
    /// .gguf file is the model (ollama's `run MODEL PROMPT`), unless -m is given.
    #[arg(value_name = "PROMPT", conflicts_with = "file")]
    pub words: Vec<OsString>,
    /// The prompt after `resolve_words` (not a flag).
    #[arg(skip)]
    pub prompt: Option<OsString>,
}

impl Args {
    /// Reads the positional words: an ollama-style model name first, then the prompt (joined
    /// with spaces), or `-p`.
    pub fn resolve_words(&mut self) -> Result<()> {
        let mut words = std::mem::take(&mut self.words);
        if self.model.model.is_none() {
            if let Some(first) = words.first().and_then(|w| w.to_str()) {
                let known = ferrite::catalogue::known_models().iter().any(|m| m.name == first);
                let gguf = first.ends_with(".gguf") && std::path::Path::new(first).is_file();
                if known || gguf {
                    self.model.model = Some(first.to_string());
                    words.remove(0);
                }
            }
        }
        self.prompt = match (self.prompt_flag.take(), words.is_empty()) {
            (Some(_), false) => ferrite::bail_input!("give the prompt either with -p/--prompt or as arguments, not both"),
            (Some(p), true) => Some(p),
            (None, true) => None,
            (None, false) => {
                let mut joined = OsString::new();
                for (i, w) in words.iter().enumerate() {
                    if i > 0 {
                        joined.push(" ");
                    }
                    joined.push(w);
                }
                Some(joined)
            }
        };
        Ok(())
    }
}

fn utf8_arg(a: OsString) -> Result<String> {
    a.into_string().map_err(|_| ferrite::bad_input!("PROMPT is not valid UTF-8"))
}

/// The prompt text from the argument, a file and/or stdin. Each source is refused from its size
/// above `files::prompt_cap` (before tokenizing), and `-f` takes only regular files.
fn prompt_text(a: &Args) -> Result<Option<String>> {
    let cap = files::prompt_cap(a.ctx.ctx_size);
    let hint = "16 bytes a token of context; raise -c for a longer prompt";
    let arg = match (&a.prompt, &a.file) {
        (Some(p), _) => {
            if p.len() as u64 > cap {
                ferrite::bail_input!(
                    "PROMPT is {}, larger than a prompt can be here (at most {}: {hint})",
                    files::size(p.len() as u64),
                    files::size(cap)
                );
            }
            Some(utf8_arg(p.clone())?)
        }
        // `-f -`: the prompt is standard input
        (None, Some(f)) if f.as_os_str() == "-" => {
            return Ok(Some(files::utf8(files::read_stdin_capped(cap, "prompt", hint)?, "standard input")?))
        }
        (None, Some(f)) => Some(files::utf8(files::read_capped(f, cap, "prompt file", hint)?, &f.display().to_string())?),
        (None, None) => None,
    };
    let doc = if common::stdin_is_terminal() {
        None
    } else {
        Some(files::utf8(files::read_stdin_capped(cap, "prompt", hint)?, "standard input")?)
    };
    Ok(match (arg, doc) {
        (Some(p), Some(d)) if !d.is_empty() => Some(format!("{p}\n\n{d}")),
        (Some(p), _) => Some(p),
        (None, Some(d)) => Some(d),
        (None, None) => None,
    })
}

pub fn main(mut a: Args) -> Result<()> {
    common::install_interrupt();
    a.resolve_words()?;
    if a.conversation {
        if a.prompt.is_some() || a.file.is_some() || a.json || a.raw {
            ferrite::bail_input!("--conversation starts the REPL: it takes no PROMPT, -f, --json or --raw");
        }
        return super::chat::repl(super::chat::Args::from_run(a));
    }
    if a.top_logits > 0 && !a.json && !a.gen.quiet {
        stderrln!("ferrite: warning: --top-logits is reported only in --json output");
    }
    let Some(text) = prompt_text(&a)? else {
        if a.raw || a.json {
            ferrite::bail_input!("no prompt: give PROMPT, -f FILE or pipe text on stdin");
        }
        return super::chat::repl(super::chat::Args::from_run(a));
    };
    // the session file is checked and locked before any work: a file that cannot be read or
    // saved is refused now, not after an answer the user would lose
    let lock = match &a.session {
        Some(p) => {
            sessionfile::preflight(p, true)?;
            Some(sessionfile::lock(p, sessionfile::LOCK_WAIT)?)
        }
        None => None,
    };
    if a.gen.verbose {
        ggml::set_log_level(3);
    }
    let loaded = common::load(&a.model, &a.ctx, a.gen.quiet || a.json)?;
    let (template, reason) =
        if a.raw { (None, String::new()) } else { common::template(&loaded.model.file, a.gen.chat_template.as_deref())? };
    if template.is_none() && !a.raw && !a.gen.quiet {
        stderrln!("ferrite: {reason}; running the prompt raw");
    }
    let mut sess = common::session(&loaded, &a.ctx, &a.sampling, &a.gen, template)?;
    sess.opts.capture_top = a.top_logits;
    if let Some(path) = &a.session {
        sessionfile::load_into(path, &mut sess, &loaded, a.gen.quiet || a.json)?;
    }
    if a.gen.verbose {
        // (said at load unless that was quiet)
        if let Some(line) = loaded.model.offload_summary().filter(|_| a.gen.quiet || a.json) {
            stderrln!("ferrite: {line}");
        }
        let o = &sess.dec.cparams;
        stderrln!(
            "ferrite: seed {}, context {}, threads {}, batch {}, micro-batch {}, flash attention {}, cache {}/{}",
            sess.sampler.seed(),
            sess.n_ctx(),
            a.ctx.options()?.n_threads,
            o.n_batch,
            o.n_ubatch,
            if o.flash_attn { "on" } else { "off" },
            a.ctx.cache_type_k,
            a.ctx.cache_type_v
        );
    }
    if a.gen.show_prompt {
        let ids = if sess.template.is_some() {
            let mut m = sess.messages.clone();
            m.push(ferrite::chat::Message::user(text.clone()));
            sess.chat_prompt(&m)?
        } else {
            sess.raw_prompt(&text)?
        };
        stderrln!("{}", sess.tok.decode(&ids, true));
    }

    let json = a.json;
    let quiet = a.gen.quiet;
    // the first failed write to stdout stops generation; a closed reader (`| head`) is a quiet
    // end, any other failure (a full disk) is reported after generation stops
    let mut write_error: Option<anyhow::Error> = None;
    let mut on = |e: Event| -> Flow {
        match e {
            Event::Text(t) => {
                if !json && write_error.is_none() {
                    write_error = output::print(t).err();
                }
            }
            Event::Notice(n) => {
                if !quiet {
                    stderrln!("ferrite: {n}");
                }
            }
        }
        if write_error.is_some() || common::interrupted() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    };
    let g = if sess.template.is_some() { sess.chat(&text, &mut on)? } else { sess.complete(&text, &mut on)? };
    let interrupted = common::interrupted();
    if let Some(e) = write_error {
        // the reader went away (`| head`): a normal end (main maps StdoutClosed to 0); any other
        // write error is a failure, and the session is not saved with an answer nobody received
        return Err(e);
    }
    if json {
        output::println(&serde_json::to_string(&to_json(&g, loaded.load_ms, sess.sampler.seed()))?)?;
    } else if !g.text.ends_with('\n') && !g.text.is_empty() {
        output::print("\n")?;
    }
    if !quiet && !json {
        stderrln!("{}", common::timing_line(&g.timings, sess.n_cached(), sess.n_ctx()));
    }
    if a.gen.verbose {
        let nodes: Vec<String> = sess.dec.node_placement().iter().map(|(b, n)| format!("{b} {n}")).collect();
        stderrln!("ferrite: last graph's nodes by device: {}", nodes.join(", "));
    }
    if let Some(path) = &a.session {
        sessionfile::save(path, &sess, lock.as_ref())?;
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
    if let Some(c) = t.grammar {
        v["timings"]["grammar_ms_mean"] = json!(c.mean_ms);
        v["timings"]["grammar_ms_p99"] = json!(c.p99_ms);
        v["timings"]["grammar_masks"] = json!(c.masks);
    }
    if !g.first_top.is_empty() {
        v["first_top_logits"] = json!(g.first_top.iter().map(|(i, l)| json!([i, l])).collect::<Vec<_>>());
    }
    v
}
