//! Pieces shared by the generating subcommands: sampling and chat flags, loading a model with a
//! progress bar, reading prompts from arguments and stdin, Ctrl-C, and stderr reporting.

use super::{ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::chat::{self, ChatTemplate};
use ferrite::gguf::GgufFile;
use ferrite::model::Model;
use ferrite::sampling::{LogitBias, SamplerConfig};
use ferrite::session::{Overflow, Session, SessionOptions};
use ferrite::tokenizer::Tokenizer;
use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set by Ctrl-C (see `ggml::signal`); cleared once the interruption is handled.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn install_interrupt() {
    ggml::signal::install(&INTERRUPTED);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn clear_interrupt() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}

/// Sampling flags (llama.cpp's names and defaults).
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 (or less) means greedy
    #[arg(long, default_value_t = 0.8, value_name = "T", allow_negative_numbers = true)]
    pub temp: f32,
    /// Keep the K most likely tokens (0: off)
    #[arg(long = "top-k", default_value_t = 40, value_name = "K")]
    pub top_k: i32,
    /// Keep the most likely tokens up to cumulative probability P (1: off)
    #[arg(long = "top-p", default_value_t = 0.95, value_name = "P")]
    pub top_p: f32,
    /// Drop tokens below P times the top token's probability (0: off)
    #[arg(long = "min-p", default_value_t = 0.05, value_name = "P")]
    pub min_p: f32,
    /// Locally typical sampling (1: off)
    #[arg(long = "typical", visible_alias = "typical-p", default_value_t = 1.0, value_name = "P")]
    pub typical_p: f32,
    /// Penalise repeating tokens of the last --repeat-last-n (1: off)
    #[arg(long = "repeat-penalty", default_value_t = 1.0, value_name = "X")]
    pub repeat_penalty: f32,
    /// Window of the penalties (0: off, -1: everything since the session began)
    #[arg(long = "repeat-last-n", default_value_t = 64, value_name = "N", allow_negative_numbers = true)]
    pub repeat_last_n: i32,
    /// Presence penalty (0: off)
    #[arg(long = "presence-penalty", default_value_t = 0.0, value_name = "X", allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Frequency penalty (0: off)
    #[arg(long = "frequency-penalty", default_value_t = 0.0, value_name = "X", allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Add BIAS to a token's logit: ID+BIAS, ID-BIAS, ID-inf (bans it); repeatable
    #[arg(long = "logit-bias", value_name = "ID(+|-)BIAS", allow_hyphen_values = true)]
    pub logit_bias: Vec<String>,
    /// Random seed (default or -1: random, reported with --verbose and in --json)
    #[arg(short = 's', long, value_name = "N", allow_negative_numbers = true)]
    pub seed: Option<i64>,
    /// Constrain the answer with a GBNF grammar (llama.cpp's syntax, root rule `root`)
    #[arg(long, value_name = "GBNF", group = "constraint")]
    pub grammar: Option<String>,
    /// Constrain the answer with the GBNF grammar in FILE
    #[arg(long = "grammar-file", value_name = "FILE", group = "constraint")]
    pub grammar_file: Option<std::path::PathBuf>,
    /// Constrain the answer to JSON valid under this JSON schema (`{}`: any JSON object)
    #[arg(short = 'j', long = "json-schema", value_name = "SCHEMA", group = "constraint")]
    pub json_schema: Option<String>,
    /// Constrain the answer to JSON valid under the JSON schema in FILE (also `-jf`)
    #[arg(long = "json-schema-file", value_name = "FILE", group = "constraint")]
    pub json_schema_file: Option<std::path::PathBuf>,
}

/// Largest grammar or schema file read (a grammar is a program, not data).
const CONSTRAINT_FILE_CAP: u64 = ferrite::grammar::MAX_GRAMMAR_BYTES as u64;

impl SamplingArgs {
    pub fn config(&self) -> Result<SamplerConfig> {
        let logit_bias = self.logit_bias.iter().map(|s| LogitBias::parse(s)).collect::<Result<Vec<_>>>()?;
        let c = SamplerConfig {
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            typical_p: self.typical_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias,
            grammar: None,
            // llama.cpp's LLAMA_DEFAULT_SEED: -1 means a random seed
            seed: match self.seed {
                None | Some(-1) => None,
                Some(s) if s < 0 => ferrite::bail_input!("--seed: {s} is not a seed (0 or more, or -1 for a random one)"),
                Some(s) => Some(s as u64),
            },
        };
        c.validate()?;
        Ok(c)
    }

    /// [`config`](Self::config) with the grammar of `--grammar`, `--grammar-file`,
    /// `--json-schema` or `--json-schema-file` bound to `tok`'s vocabulary.
    pub fn config_for(&self, tok: &Tokenizer) -> Result<SamplerConfig> {
        let mut c = self.config()?;
        if let Some((what, constraint)) = self.constraint()? {
            c.grammar = Some(constraint.compile(tok).map_err(|e| e.context(what))?);
        }
        Ok(c)
    }

    /// The constraint the flags ask for, if any, with the name of where it came from.
    pub fn constraint(&self) -> Result<Option<(String, ferrite::grammar::Constraint)>> {
        use ferrite::grammar::{json_schema, Constraint};
        let read = |p: &std::path::Path, what: &str| -> Result<String> {
            let bytes = super::files::read_capped(p, CONSTRAINT_FILE_CAP, what, "simplify it")?;
            super::files::utf8(bytes, &p.display().to_string())
        };
        let schema = |text: &str, what: String| -> Result<Option<(String, Constraint)>> {
            json_schema::gbnf_from_text(text).map_err(|e| e.context(what.clone()))?;
            Ok(Some((what, Constraint::JsonSchema(text.to_string()))))
        };
        if let Some(g) = &self.grammar {
            Ok(Some(("--grammar".into(), Constraint::Gbnf(g.clone()))))
        } else if let Some(p) = &self.grammar_file {
            Ok(Some((p.display().to_string(), Constraint::Gbnf(read(p, "grammar")?))))
        } else if let Some(s) = &self.json_schema {
            schema(s, "--json-schema".into())
        } else if let Some(p) = &self.json_schema_file {
            schema(&read(p, "JSON schema")?, p.display().to_string())
        } else {
            Ok(None)
        }
    }
}

/// `--stop`'s values: an empty string would match before the first token.
fn non_empty_stop(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty stop string would stop before the first token".into());
    }
    Ok(s.to_string())
}

/// `--chat-template`'s help: every built-in name (a test checks it against `BUILTIN_NAMES`).
pub const CHAT_TEMPLATE_HELP: &str = "Chat template: a built-in name (chatml, llama2, llama2-sys, llama3, mistral, mistral-v7, \
     mistral-v7-tekken, gemma, phi3, phi4, zephyr), a Jinja file, or `none`";

/// `--prompt-reuse` of `batch` and `serve`: how a sequence may reuse the cells its slot kept from
/// the last one (`ferrite::engine::PromptReuse`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptReuseArg {
    /// Whole micro-batches of the last prompt: answers bit-identical to an empty slot's
    Exact,
    /// Every matching token, generated ones too: a conversation's next turn computes only its
    /// new tokens (logits may differ in their last bits from an empty slot's)
    All,
    /// None: every prompt computed from its start
    Off,
}

impl From<PromptReuseArg> for ferrite::engine::PromptReuse {
    fn from(a: PromptReuseArg) -> Self {
        match a {
            PromptReuseArg::Exact => Self::Exact,
            PromptReuseArg::All => Self::All,
            PromptReuseArg::Off => Self::Off,
        }
    }
}

/// Generation and chat flags shared by `run` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// Tokens to generate per answer (-1: until the model stops or the context is full)
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, value_name = "N", allow_negative_numbers = true)]
    pub n_predict: i32,
    /// Stop when this string appears (repeatable)
    #[arg(long = "stop", value_name = "STR", value_parser = non_empty_stop, allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// A system prompt for the conversation (-sys, as llama.cpp)
    #[arg(long, visible_alias = "system-prompt", value_name = "TEXT")]
    pub system: Option<String>,
    #[arg(long = "chat-template", value_name = "NAME|FILE", help = CHAT_TEMPLATE_HELP)]
    pub chat_template: Option<String>,
    /// Colour (accepted for llama.cpp's habit: notes on a terminal are dimmed unless NO_COLOR is set)
    #[arg(long = "color", visible_alias = "colour")]
    pub color: bool,
    /// Print the rendered prompt to stderr
    #[arg(long = "show-prompt")]
    pub show_prompt: bool,
    /// What to do when the conversation outgrows the context: fail, shift or drop-oldest
    #[arg(long, default_value = "drop-oldest", value_name = "POLICY")]
    pub overflow: String,
    /// Show special tokens in the output
    #[arg(long = "special")]
    pub special: bool,
    /// Only errors on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// More detail on stderr (settings, ggml's log)
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// A load that takes longer than this shows its progress (on a terminal).
const SHOW_PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_millis(400);

/// The loading bar, cleared from the screen however loading ends (an error included).
struct ClearOnDrop(indicatif::ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub model: Rc<Model>,
    pub tok: Rc<Tokenizer>,
    pub load_ms: f64,
}

/// Loads a model (progress bar on stderr for slow loads unless quiet) and its tokenizer.
pub fn load(model: &ModelArgs, ctx: &ContextArgs, quiet: bool) -> Result<Loaded> {
    ctx.options()?;
    load_with(model, ctx, quiet, ctx.load_options()?)
}

/// [`load`] with its own load options (`imatrix` keeps the file's tensors apart, unfused).
pub fn load_with(model: &ModelArgs, ctx: &ContextArgs, quiet: bool, opts: ferrite::model::LoadOptions) -> Result<Loaded> {
    let t = Instant::now();
    // flags first: a bad one is reported before the weights are loaded
    ctx.options()?;
    let path = ferrite::catalogue::resolve(model.model.as_deref())?;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {bytes}/{total_bytes}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        b.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        ClearOnDrop(b)
    });
    let (model, tok) = Model::load_alongside(
        &path,
        opts,
        &mut |done, total| {
            if let Some(ClearOnDrop(b)) = &bar {
                // draw only a load that has bytes to show and has already taken a while; a mapped
                // model (no copies) loads in milliseconds and shows nothing
                if total > 0 && done < total && b.is_hidden() && t.elapsed() > SHOW_PROGRESS_AFTER {
                    b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                b.set_length(total);
                b.set_position(done);
            }
        },
        Tokenizer::from_gguf,
    )?;
    drop(bar);
    let tok = tok?;
    if let Some(line) = model.offload_summary().filter(|_| !quiet) {
        stderrln!("ferrite: {line}");
    }
    Ok(Loaded { model: Rc::new(model), tok: Rc::new(tok), load_ms: t.elapsed().as_secs_f64() * 1000.0 })
}

/// The chat template for this run (None: raw), with the one-line reason when there is none.
pub fn template(file: &GgufFile, flag: Option<&str>) -> Result<(Option<ChatTemplate>, String)> {
    let gguf = file.get_str("tokenizer.chat_template")?;
    let sel = chat::select(flag, gguf)?;
    Ok((sel.template, sel.reason))
}

/// Builds the session for `run`/`chat`.
pub fn session(l: &Loaded, ctx: &ContextArgs, s: &SamplingArgs, g: &GenArgs, template: Option<ChatTemplate>) -> Result<Session> {
    let opts = SessionOptions {
        n_predict: g.n_predict,
        stop: g.stop.clone(),
        overflow: Overflow::parse(&g.overflow)?,
        show_special: g.special,
        capture_top: 0,
    };
    if g.n_predict < -1 {
        ferrite::bail_input!("--n-predict must be -1 or more");
    }
    let n_ctx_train = l.model.hparams.n_ctx_train;
    if let Some(c) = ctx.ctx_size.filter(|&c| c > n_ctx_train && !g.quiet) {
        stderrln!("ferrite: warning: --ctx-size {c} is above the {n_ctx_train} tokens the model was trained on; expect its answers to degrade past that");
    }
    let mut sess = Session::new(l.model.clone(), l.tok.clone(), &ctx.options()?, s.config_for(&l.tok)?, opts, template)?;
    sess.system = g.system.clone();
    sess.dec.set_interrupt(&INTERRUPTED);
    Ok(sess)
}

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// One timing line for stderr.
pub fn timing_line(t: &ferrite::session::Timings, n_cached: usize, n_ctx: usize) -> String {
    let mut line = format!(
        "prompt {} tok in {:.0} ms ({:.1} t/s) · generation {} tok in {:.0} ms ({:.1} t/s) · context {}/{}",
        t.prompt_tokens,
        t.prompt_ms,
        t.prompt_tps(),
        t.gen_tokens,
        t.gen_ms,
        t.gen_tps(),
        n_cached,
        n_ctx
    );
    if let Some(g) = t.grammar {
        line += &format!(" · grammar {:.3} ms/tok (p99 {:.3}, {} masks)", g.mean_ms, g.p99_ms, g.masks);
    }
    line
}

/// How waiting for the engine's next answer ended.
pub enum Waited {
    /// Request `index` (by `index_of`) finished, with its answer or error.
    Done(usize, Result<ferrite::engine::Finished>),
    /// Ctrl-C.
    Interrupted,
    /// The engine is gone: no answer will come.
    Closed,
}

/// Waits for the next of `index_of`'s requests to finish (other events are skipped), checking
/// for Ctrl-C every 100 ms: `batch` and `eval` collect their answers through it.
pub fn next_done(
    rx: &std::sync::mpsc::Receiver<(ferrite::engine::SeqId, ferrite::engine::SeqEvent)>,
    index_of: &std::collections::HashMap<ferrite::engine::SeqId, usize>,
) -> Waited {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        if interrupted() {
            return Waited::Interrupted;
        }
        let (sid, ev) = match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(x) => x,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Waited::Closed,
        };
        if let (ferrite::engine::SeqEvent::Done(res), Some(&i)) = (ev, index_of.get(&sid)) {
            return Waited::Done(i, res);
        }
    }
}
