//! `ferrite chat` (and plain `ferrite` on a terminal): the interactive REPL over one Session —
//! rustyline with history and tab completion, multi-line input, streaming answers, slash
//! commands, Ctrl-C to stop an answer, Ctrl-D, `/exit` or Ctrl-C twice in a row at the prompt to
//! leave (status 0: leaving the REPL is its normal end).

use super::common::{self, GenArgs, Loaded, SamplingArgs};
use super::{output, sessionfile, ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::error::Interrupted;
use ferrite::sampling::Sampler;
use ferrite::session::{Event, Flow, Session, StopReason};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};
use std::io::IsTerminal;
use std::path::PathBuf;

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
    /// Load the conversation from FILE first (and `/save` there by default)
    #[arg(long, value_name = "FILE")]
    pub session: Option<PathBuf>,
}

impl Args {
    /// The REPL that `ferrite run` starts when it has no prompt on a terminal.
    pub fn from_run(r: super::run::Args) -> Args {
        Args { model: r.model, ctx: r.ctx, sampling: r.sampling, gen: r.gen, session: r.session }
    }
}

const COMMANDS: &[(&str, &str)] = &[
    ("/help", "this list"),
    ("/exit", "leave (also Ctrl-D, or Ctrl-C twice at the prompt)"),
    ("/clear", "forget the conversation"),
    ("/system", "TEXT: set the system prompt and start over; alone: show it; --remove: remove it"),
    ("/set", "NAME VALUE: temp, top-k, top-p, min-p, typical, repeat-penalty, repeat-last-n, presence-penalty, frequency-penalty, seed, n-predict, grammar (GBNF or FILE, off), json-schema (SCHEMA or FILE, off)"),
    ("/show", "model, settings, template, context use"),
    ("/save", "FILE: save the conversation, settings and cache"),
    ("/load", "FILE: continue a saved conversation"),
    ("/regen", "answer the last message again"),
    ("/undo", "remove the last exchange"),
    ("/stats", "timings of the last answer"),
];

const SET_NAMES: &[&str] = &[
    "temp",
    "top-k",
    "top-p",
    "min-p",
    "typical",
    "repeat-penalty",
    "repeat-last-n",
    "presence-penalty",
    "frequency-penalty",
    "seed",
    "n-predict",
    "grammar",
    "json-schema",
];

/// Tab completion of slash commands and /set names.
struct ReplHelper;

impl Completer for ReplHelper {
    type Candidate = Pair;
    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        if let Some(rest) = head.strip_prefix("/set ") {
            if !rest.contains(' ') {
                let c =
                    SET_NAMES.iter().filter(|n| n.starts_with(rest)).map(|n| Pair { display: n.to_string(), replacement: format!("{n} ") });
                return Ok((5, c.collect()));
            }
        }
        if head.starts_with('/') && !head.contains(' ') {
            let c = COMMANDS
                .iter()
                .filter(|(c, _)| c.starts_with(head))
                .map(|(c, _)| Pair { display: c.to_string(), replacement: c.to_string() });
            return Ok((0, c.collect()));
        }
        Ok((pos, Vec::new()))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRITE_HISTORY") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("ferrite/history"))
}

/// Colours only when stderr is a terminal.
fn dim(s: &str) -> String {
    // NO_COLOR (https://no-color.org): any non-empty value turns colour off
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    if !no_color && std::io::stderr().is_terminal() {
        format!("\x1b[2m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

pub fn main(a: Args) -> Result<()> {
    repl(a)
}

pub fn repl(a: Args) -> Result<()> {
    common::install_interrupt();
    // `--session FILE`: a special file is refused before the model loads, and the file is locked
    // for the whole REPL (a `run --session` on it meanwhile would lose its turn at our `/save`);
    // in a directory where no lock file can be made nothing can be saved either, so the REPL
    // goes on without one
    let lock = match &a.session {
        Some(p) => {
            sessionfile::preflight(p, false)?;
            match sessionfile::preflight(p, true) {
                Ok(()) => Some(sessionfile::lock(p, sessionfile::LOCK_WAIT)?),
                Err(_) => None,
            }
        }
        None => None,
    };
    if a.gen.verbose {
        ggml::set_log_level(3);
    }
    let loaded = common::load(&a.model, &a.ctx, a.gen.quiet)?;
    let (template, reason) = common::template(&loaded.model.file, a.gen.chat_template.as_deref())?;
    if template.is_none() && !a.gen.quiet {
        stderrln!("ferrite: {reason}; every line is completed raw");
    }
    let mut sess = common::session(&loaded, &a.ctx, &a.sampling, &a.gen, template)?;
    if let Some(p) = &a.session {
        if sessionfile::load_into(p, &mut sess, &loaded, a.gen.quiet)? && !a.gen.quiet {
            stderrln!("{}", dim(&format!("continuing {} ({} messages)", p.display(), sess.messages.len())));
        }
    }
    let mut ed: Editor<ReplHelper, rustyline::history::DefaultHistory> = Editor::new()?;
    ed.set_helper(Some(ReplHelper));
    // rustyline's terminal installs its own SIGINT handler (kept until the editor is dropped),
    // which would swallow Ctrl-C during an answer: route SIGINT back to our flag. At the prompt
    // the terminal is in raw mode, so Ctrl-C arrives as a key there, not as a signal.
    common::install_interrupt();
    let hist = history_path();
    if let Some(h) = &hist {
        let _ = ed.load_history(h);
    }
    if !a.gen.quiet {
        let m = &loaded.model;
        let name = m.file.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let template = sess.template.as_ref().map(|t| t.name()).unwrap_or_else(|| "none (raw completion)".into());
        stderrln!("{}", dim(&format!("ferrite chat — {name} ({}), context {}, template {template}", m.arch.name(), sess.n_ctx())));
        stderrln!("{}", dim("/help for commands, Ctrl-D to leave, \"\"\" for multi-line input"));
    }
    let mut last_ctrl_c = false;
    // a stdout that fails (other than closed) ends the REPL with that error, after the history
    // is saved: answers nobody can read are not worth generating
    let mut end: Result<()> = Ok(());
    loop {
        let line = match read_message(&mut ed) {
            Ok(Some(l)) => {
                last_ctrl_c = false;
                l
            }
            Ok(None) => break, // Ctrl-D
            Err(ReplInterrupt) => {
                // one Ctrl-C never leaves (ollama's way: a Ctrl-C meant for an answer that just
                // ended must not end the session); a second in a row leaves, as Ctrl-D does
                if last_ctrl_c {
                    break;
                }
                last_ctrl_c = true;
                stderrln!("{}", dim("(Ctrl-C again or Ctrl-D to leave)"));
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = ed.add_history_entry(line.as_str());
        if line.starts_with('/') {
            match command(&line, &mut sess, &loaded, &a, lock.as_ref()) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => stderrln!("ferrite: {}", ferrite::error::one_line(&e)),
            }
            continue;
        }
        if let Err(e) = answer(&mut sess, &line, &a.gen, None) {
            if output::is_stdout_closed(&e) {
                break;
            }
            if output::is_stdout_error(&e) {
                end = Err(e);
                break;
            }
            stderrln!("ferrite: {}", ferrite::error::one_line(&e));
        }
    }
    if let Some(h) = &hist {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = ed.save_history(h);
    }
    end
}

/// Ctrl-C at the prompt.
struct ReplInterrupt;

/// Reads one message: a line, lines joined by a trailing `\`, or a `"""` block.
fn read_message(ed: &mut Editor<ReplHelper, rustyline::history::DefaultHistory>) -> Result<Option<String>, ReplInterrupt> {
    let mut text = String::new();
    let mut block = false;
    let mut prompt = ">>> ";
    loop {
        match ed.readline(prompt) {
            Ok(line) => {
                if !block && text.is_empty() && line.trim_start().starts_with("\"\"\"") {
                    let rest = line.trim_start().trim_start_matches("\"\"\"");
                    if let Some(body) = rest.strip_suffix("\"\"\"") {
                        return Ok(Some(body.to_string()));
                    }
                    block = true;
                    text.push_str(rest);
                    prompt = "... ";
                    continue;
                }
                if block {
                    if let Some(end) = line.strip_suffix("\"\"\"") {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(end);
                        return Ok(Some(text));
                    }
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&line);
                    continue;
                }
                if let Some(cont) = line.strip_suffix('\\') {
                    text.push_str(cont);
                    text.push('\n');
                    prompt = "... ";
                    continue;
                }
                text.push_str(&line);
                return Ok(Some(text));
            }
            Err(ReadlineError::Interrupted) => return Err(ReplInterrupt),
            Err(ReadlineError::Eof) => return Ok(if text.is_empty() { None } else { Some(text) }),
            Err(_) => return Ok(None),
        }
    }
}

/// Streams one answer (a new user turn, or a regeneration when `user` is None… handled by the
/// caller); Ctrl-C stops it and keeps the partial answer in the conversation.
fn answer(sess: &mut Session, user: &str, g: &GenArgs, regen: Option<()>) -> Result<()> {
    common::clear_interrupt();
    let quiet = g.quiet;
    // the first failed write stops the answer; StdoutClosed (`| head`) ends the REPL quietly,
    // any other write error is reported
    let mut write_error: Option<anyhow::Error> = None;
    let mut on = |e: Event| -> Flow {
        match e {
            Event::Text(t) => {
                if write_error.is_none() {
                    write_error = output::print(t).err();
                }
            }
            Event::Notice(n) => {
                if !quiet {
                    stderrln!("{}", dim(&n));
                }
            }
        }
        if write_error.is_some() || common::interrupted() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    };
    let r = if sess.template.is_none() {
        sess.complete(user, &mut on)
    } else if regen.is_some() {
        sess.regenerate(&mut on)
    } else {
        sess.chat(user, &mut on)
    };
    let interrupted = common::interrupted();
    common::clear_interrupt();
    if let Some(e) = write_error {
        return Err(e);
    }
    let gen = match r {
        Ok(gen) => gen,
        Err(e) if e.chain().any(|c| c.downcast_ref::<Interrupted>().is_some()) => {
            stderrln!("{}", dim("(stopped)"));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    output::print("\n")?;
    if interrupted || gen.stop_reason == StopReason::Interrupted {
        stderrln!("{}", dim("(stopped)"));
    }
    if !quiet {
        stderrln!("{}", dim(&common::timing_line(&gen.timings, sess.n_cached(), sess.n_ctx())));
    }
    Ok(())
}

/// Runs a slash command; true means leave.
fn command(line: &str, sess: &mut Session, loaded: &Loaded, a: &Args, lock: Option<&sessionfile::Lock>) -> Result<bool> {
    let (cmd, arg) = match line.split_once(char::is_whitespace) {
        Some((c, r)) => (c, r.trim()),
        None => (line.trim(), ""),
    };
    match cmd {
        "/exit" | "/quit" | "/bye" => return Ok(true),
        "/help" | "/?" => {
            let mut s = String::new();
            for (c, h) in COMMANDS {
                s.push_str(&format!("  {c:<8} {h}\n"));
            }
            s.push_str("  Input: end a line with \\ to continue it; \"\"\" starts and ends a multi-line block.\n");
            stderr!("{s}");
        }
        "/clear" => {
            sess.clear();
            stderrln!("{}", dim("conversation cleared"));
        }
        "/system" if arg.is_empty() => {
            stderrln!("{}", dim(&format!("system prompt: {}", sess.system.as_deref().unwrap_or("(none)"))));
        }
        "/system" => {
            sess.system = if arg == "--remove" { None } else { Some(arg.to_string()) };
            sess.clear();
            stderrln!(
                "{}",
                dim(if arg == "--remove" {
                    "system prompt removed; conversation cleared"
                } else {
                    "system prompt set; conversation cleared"
                })
            );
        }
        "/set" => {
            set(sess, arg)?;
            // confirm with the value as it now stands
            let name = arg.split_whitespace().next().unwrap_or("");
            stderrln!("{}", dim(&format!("{name} set to {}", arg[name.len()..].trim())));
        }
        "/show" => stderr!("{}", show(sess, loaded)),
        "/save" => {
            let path = if arg.is_empty() { a.session.clone() } else { Some(PathBuf::from(arg)) };
            let Some(path) = path else { ferrite::bail_input!("/save needs a FILE") };
            sessionfile::save(&path, sess, lock)?;
            stderrln!("{}", dim(&format!("saved {} messages to {}", sess.messages.len(), path.display())));
        }
        "/load" => {
            if arg.is_empty() {
                ferrite::bail_input!("/load needs a FILE");
            }
            let path = PathBuf::from(arg);
            let data = sessionfile::read(&path, sess)?;
            let notice = sessionfile::restore(&data, sess, loaded)?;
            apply_settings(sess, &data.settings)?;
            if let Some(n) = notice {
                stderrln!("{}", dim(&n));
            }
            stderrln!("{}", dim(&format!("loaded {} messages from {}", sess.messages.len(), path.display())));
        }
        "/regen" => {
            if sess.template.is_none() {
                ferrite::bail_input!("/regen needs a chat template");
            }
            if let Err(e) = answer(sess, "", &a.gen, Some(())) {
                if output::is_stdout_closed(&e) {
                    return Ok(true);
                }
                return Err(e);
            }
        }
        "/undo" => {
            let removed = sess.undo();
            stderrln!("{}", dim(if removed { "last exchange removed" } else { "nothing to undo" }));
        }
        "/stats" => {
            stderrln!("{}", common::timing_line(&sess.last, sess.n_cached(), sess.n_ctx()));
            stderrln!("messages {}, graph builds {}, reuses {}", sess.messages.len(), sess.dec.n_graph_builds, sess.dec.n_graph_reuses);
        }
        other => ferrite::bail_input!("unknown command {other}; /help lists them"),
    }
    Ok(false)
}

fn set(sess: &mut Session, arg: &str) -> Result<()> {
    let Some((name, value)) = arg.split_once(char::is_whitespace) else {
        ferrite::bail_input!("/set NAME VALUE (names: {})", SET_NAMES.join(", "));
    };
    let value = value.trim();
    let f = || value.parse::<f32>().map_err(|_| ferrite::bad_input!("/set {name}: '{value}' is not a number"));
    let i = || value.parse::<i32>().map_err(|_| ferrite::bad_input!("/set {name}: '{value}' is not an integer"));
    let mut c = sess.sampler.config().clone();
    match name {
        "temp" => c.temp = f()?,
        "top-k" => c.top_k = i()?,
        "top-p" => c.top_p = f()?,
        "min-p" => c.min_p = f()?,
        "typical" | "typical-p" => c.typical_p = f()?,
        "repeat-penalty" => c.repeat_penalty = f()?,
        "repeat-last-n" => c.repeat_last_n = i()?,
        "presence-penalty" => c.presence_penalty = f()?,
        "frequency-penalty" => c.frequency_penalty = f()?,
        "seed" => c.seed = Some(value.parse().map_err(|_| ferrite::bad_input!("/set seed: '{value}' is not a seed"))?),
        "n-predict" => {
            let n = i()?;
            if n < -1 {
                ferrite::bail_input!("/set n-predict: must be -1 or more");
            }
            sess.opts.n_predict = n;
            return Ok(());
        }
        // every later answer follows the grammar (each from its start); `off` lifts it
        "grammar" | "json-schema" => {
            c.grammar = if value == "off" {
                None
            } else {
                let path = std::path::Path::new(value);
                let text = if path.is_file() {
                    let bytes = super::files::read_capped(path, ferrite::grammar::MAX_GRAMMAR_BYTES as u64, name, "simplify it")?;
                    super::files::utf8(bytes, value)?
                } else {
                    value.to_string()
                };
                let constraint = if name == "grammar" {
                    ferrite::grammar::Constraint::Gbnf(text)
                } else {
                    ferrite::grammar::json_schema::gbnf_from_text(&text)?;
                    ferrite::grammar::Constraint::JsonSchema(text)
                };
                Some(constraint.compile(&sess.tok).map_err(|e| e.context(format!("/set {name}")))?)
            };
        }
        other => ferrite::bail_input!("/set: unknown setting '{other}' (names: {})", SET_NAMES.join(", ")),
    }
    let n_vocab = sess.dec.n_vocab();
    let mut s = Sampler::new(c, n_vocab)?;
    s.set_history(sess.cached_tokens());
    sess.sampler = s;
    Ok(())
}

fn apply_settings(sess: &mut Session, st: &ferrite::session_file::Settings) -> Result<()> {
    let mut c = sess.sampler.config().clone();
    c.temp = st.temp;
    c.top_k = st.top_k;
    c.top_p = st.top_p;
    c.min_p = st.min_p;
    c.typical_p = st.typical_p;
    c.repeat_penalty = st.repeat_penalty;
    c.repeat_last_n = st.repeat_last_n;
    c.presence_penalty = st.presence_penalty;
    c.frequency_penalty = st.frequency_penalty;
    c.seed = st.seed;
    let mut s = Sampler::new(c, sess.dec.n_vocab())?;
    s.set_history(sess.cached_tokens());
    sess.sampler = s;
    sess.opts.n_predict = st.n_predict;
    Ok(())
}

fn show(sess: &Session, loaded: &Loaded) -> String {
    let m = &loaded.model;
    let c = sess.sampler.config();
    let mut s = String::new();
    s.push_str(&format!(
        "model     {} ({}, {} layers, {:.0}M params)\n",
        m.file.path().display(),
        m.arch.name(),
        m.hparams.n_layer,
        m.file.tensors().iter().map(|t| t.nelements() as f64).sum::<f64>() / 1e6
    ));
    s.push_str(&format!("template  {}\n", sess.template.as_ref().map(|t| t.name()).unwrap_or_else(|| "none (raw)".into())));
    s.push_str(&format!("system    {}\n", sess.system.as_deref().unwrap_or("(none)")));
    s.push_str(&format!(
        "sampling  temp {} top-k {} top-p {} min-p {} typical {} repeat-penalty {} (last {}) presence {} frequency {} seed {}\n",
        c.temp,
        c.top_k,
        c.top_p,
        c.min_p,
        c.typical_p,
        c.repeat_penalty,
        c.repeat_last_n,
        c.presence_penalty,
        c.frequency_penalty,
        sess.sampler.seed()
    ));
    s.push_str(&format!("n-predict {}\n", sess.opts.n_predict));
    // the conversation as it stands (after /undo the cache still holds the removed exchange
    // until the next turn reuses its prefix, so the cache's count would overstate it)
    let used = match &sess.template {
        Some(_) if !sess.messages.is_empty() => sess.chat_prompt(&sess.messages).map(|p| p.len()).unwrap_or(sess.n_cached()),
        Some(_) => 0,
        None => sess.n_cached(),
    };
    s.push_str(&format!(
        "context   {} used, {} free of {} ({} messages)\n",
        used,
        sess.n_ctx().saturating_sub(used),
        sess.n_ctx(),
        sess.messages.len()
    ));
    s
}
