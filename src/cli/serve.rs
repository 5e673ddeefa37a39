//! `ferrite serve`: an OpenAI-compatible HTTP server on the many-sequences engine (the server
//! itself is `crate::server`). Flag names and defaults follow llama-server's where it has them.

use super::common::{self, SamplingArgs};
use super::{files, ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::engine::{Engine, SeqParams};
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ctx: ContextArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Address to listen on (loopback unless told otherwise)
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub host: String,
    /// Port to listen on (0: any free port)
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub port: u16,
    /// Slots: requests decoded together (llama-server's -np); each may use a context of -c tokens
    #[arg(long = "parallel", default_value_t = 4, value_name = "N")]
    pub parallel: u32,
    /// Requests that may wait for a free slot; more are answered 503 with Retry-After
    #[arg(long = "max-queue", default_value_t = 64, value_name = "N")]
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health
    #[arg(long = "api-key", value_name = "KEY", conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the API key from the first line of FILE
    #[arg(long = "api-key-file", value_name = "FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Seconds a request that does not stream may take before it is cancelled (503)
    #[arg(long = "timeout", visible_alias = "to", default_value_t = 600, value_name = "S")]
    pub timeout: u64,
    /// Serve Prometheus metrics at /metrics
    #[arg(long)]
    pub metrics: bool,
    /// The model's name in /v1/models and in answers (default: the file's name)
    #[arg(short = 'a', long = "alias", value_name = "NAME")]
    pub alias: Option<String>,
    /// Tokens to generate at most per request unless it says (-1: until its context ends)
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, value_name = "N", allow_negative_numbers = true)]
    pub n_predict: i32,
    #[arg(long = "chat-template", value_name = "NAME|FILE", help = common::CHAT_TEMPLATE_HELP)]
    pub chat_template: Option<String>,
    /// How a request reuses the cells its slot kept from the one before (a request's
    /// "cache_prompt": false turns it off for that request)
    #[arg(long = "prompt-reuse", value_enum, default_value = "exact", value_name = "MODE")]
    pub prompt_reuse: common::PromptReuseArg,
    /// llama-server's switch: no prompt reuse (--prompt-reuse off)
    #[arg(long = "no-cache-prompt")]
    pub no_cache_prompt: bool,
    /// llama-server's switch, the default here (accepted for its scripts)
    #[arg(long = "cache-prompt", hide = true, conflicts_with = "no_cache_prompt")]
    pub cache_prompt: bool,
    /// Access log on stderr as text or one JSON object a line
    #[arg(long = "log-format", default_value = "text", value_parser = ["text", "json"], value_name = "text|json")]
    pub log_format: String,
}

pub fn main(a: Args) -> Result<()> {
    if a.parallel == 0 || a.parallel > ferrite::decoder::MAX_SEQ {
        ferrite::bail_input!("--parallel: {} is out of range 1..={}", a.parallel, ferrite::decoder::MAX_SEQ);
    }
    if a.n_predict < -1 {
        ferrite::bail_input!("--n-predict must be -1 or more");
    }
    let api_key = match (&a.api_key, &a.api_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(f)) => {
            let bytes = files::read_capped(f, 4096, "API key file", "the key is its first line")?;
            let text = files::utf8(bytes, &f.display().to_string())?;
            Some(text.lines().next().unwrap_or_default().trim().to_string())
        }
        (None, None) => None,
    };
    if api_key.as_deref() == Some("") {
        ferrite::bail_input!("the API key is empty");
    }
    // flags and the model's path are checked before the port is taken
    let opts = ferrite::decoder::ContextOptions { n_seq: a.parallel, ..a.ctx.options()? };
    let path = ferrite::catalogue::resolve(a.model.model.as_deref())?;
    let name = a.alias.clone().unwrap_or_else(|| path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
    let defaults = SeqParams { constraint: a.sampling.constraint()?.map(|(_, c)| c), ..SeqParams::new(a.n_predict, a.sampling.config()?) };
    let config = crate::server::Config {
        host: a.host.clone(),
        port: a.port,
        api_key,
        max_queue: a.max_queue,
        timeout: Duration::from_secs(a.timeout.max(1)),
        metrics: a.metrics,
        model_name: name,
        model_path: path.display().to_string(),
        body_limit: files::prompt_cap(a.ctx.ctx_size) as usize + (1 << 20),
        log_json: a.log_format == "json",
        defaults,
        n_parallel: a.parallel as usize,
    };
    let (ma, ca, flag) = (a.model.clone(), a.ctx.clone(), a.chat_template.clone());
    let reuse = if a.no_cache_prompt { common::PromptReuseArg::Off } else { a.prompt_reuse };
    crate::server::run(config, move || {
        let loaded = common::load(&ma, &ca, false)?;
        let (template, reason) = common::template(&loaded.model.file, flag.as_deref())?;
        if template.is_none() {
            stderrln!("ferrite: {reason}; chat requests will be refused, completions work");
        }
        let mut engine = Engine::new(loaded.model.clone(), loaded.tok.clone(), template, &opts)?;
        engine.prompt_reuse = reuse.into();
        Ok(engine)
    })
}
