//! Command-line front end: clap definitions, dispatch, and the exit-code/stderr discipline.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad input or usage, 130 interrupted.

mod batch;
mod bench;
mod chat;
mod common;
mod eval;
mod export_lora;
pub mod fields;
mod files;
mod imatrix;
mod info;
pub mod output;
mod perplexity;
mod quantize;
mod rpc_server;
mod run;
mod serve;
mod sessionfile;
mod tokenize;

use clap::{Parser, Subcommand};
use ferrite::error::{exit_code, one_line};

#[derive(Parser, Debug)]
#[command(name = "ferrite", version, about = "A local, single-binary LLM runner on ggml", max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show a model's architecture, hyper-parameters, tokenizer and memory plan (validates the file)
    Info(info::Args),
    /// Measure prompt-processing and generation speed (llama-bench's method)
    Bench(bench::Args),
    /// Print a text's token ids (reads only the model's vocabulary)
    Tokenize(tokenize::Args),
    /// Answer one prompt (chat template applied; --raw for plain completion)
    Run(Box<run::Args>),
    /// Chat interactively (REPL)
    Chat(Box<chat::Args>),
    /// Measure perplexity over a text file (llama-perplexity's method), or KL-divergence from a base model
    Perplexity(perplexity::Args),
    /// Run your own eval suite over several models: accuracy, size, speed, memory; the smallest that passes
    Eval(Box<eval::Args>),
    /// Compute an importance matrix over a text (llama-imatrix's method and GGUF format)
    Imatrix(imatrix::Args),
    /// Serve this machine's CPU to ggml RPC clients (llama.cpp's --rpc)
    RpcServer(rpc_server::Args),
    /// Answer many prompts at once: JSONL requests in, one JSONL answer a line out, in order
    Batch(Box<batch::Args>),
    /// Serve the model over HTTP: OpenAI-compatible chat and completions, many requests at once
    Serve(Box<serve::Args>),
    /// Merge LoRA adapters into a model file (llama-export-lora's method; F16 output)
    ExportLora(export_lora::Args),
    /// Quantize a model file (llama-quantize's arguments, type choice and output)
    Quantize(quantize::Args),
}

/// Options shared by the subcommands that load a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a GGUF path or a known name (smollm2, gemma3); default smollm2
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    pub model: Option<String>,
}

/// Adapters from `--lora FILE[,FILE…]` (scale 1) then `--lora-scaled FILE:SCALE[,…]`.
pub fn parse_loras(lora: &[String], scaled: &[String]) -> anyhow::Result<Vec<(std::path::PathBuf, f32)>> {
    let mut out = Vec::new();
    for f in lora.iter().flat_map(|l| l.split(',')).filter(|f| !f.is_empty()) {
        out.push((f.into(), 1.0));
    }
    for spec in scaled.iter().flat_map(|l| l.split(',')).filter(|f| !f.is_empty()) {
        let Some((file, scale)) = spec.rsplit_once(':') else {
            ferrite::bail_input!("--lora-scaled {spec:?}: give FILE:SCALE");
        };
        let scale: f32 = match scale.trim().parse() {
            Ok(s) if f32::is_finite(s) => s,
            _ => ferrite::bail_input!("--lora-scaled {spec:?}: the scale {scale:?} is not a number"),
        };
        out.push((file.into(), scale));
    }
    Ok(out)
}

/// Where the layers compute: llama.cpp's device flags.
#[derive(clap::Args, Debug, Clone)]
pub struct PlacementArgs {
    /// Layers to offload to the devices, from the output down: N, auto or all (default: all
    /// when there is a device; llama.cpp's -ngl)
    #[arg(long = "n-gpu-layers", visible_alias = "gpu-layers", value_name = "N", allow_negative_numbers = true)]
    pub n_gpu_layers: Option<String>,
    /// Add the devices of ggml RPC servers (`ferrite rpc-server`, llama.cpp's rpc-server):
    /// HOST:PORT[,HOST:PORT…] (repeatable)
    #[arg(long = "rpc", value_name = "SERVERS")]
    pub rpc: Vec<String>,
    /// Offload devices to use, by name (see `info --devices`), comma-separated; none: CPU only
    #[arg(long = "device", value_name = "LIST")]
    pub device: Option<String>,
    /// Share of the offloaded layers per device, e.g. 3,1 (default: by free memory)
    #[arg(long = "tensor-split", value_name = "SHARES")]
    pub tensor_split: Option<String>,
    /// How to spread the model over devices: layer (default) or none (the first device only)
    #[arg(long = "split-mode", default_value = "layer", value_name = "none|layer")]
    pub split_mode: String,
}

/// Options of the model context shared by the subcommands that compute.
#[derive(clap::Args, Debug, Clone)]
pub struct ContextArgs {
    /// Context size in tokens (default: the model's, capped at 4096)
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx_size: Option<u32>,
    /// Threads (default: the physical cores; capped at the CPUs available)
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub threads: Option<usize>,
    /// Logical batch size for prompt processing
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048, value_name = "N")]
    pub batch: u32,
    /// Sliding-window layers keep a cache as large as the context (llama.cpp's --swa-full)
    #[arg(long = "swa-full")]
    pub swa_full: bool,
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Physical (micro-)batch size
    #[arg(long = "ubatch-size", visible_alias = "ub", default_value_t = 512, value_name = "N")]
    pub ubatch: u32,
    /// Flash attention: on, off or auto
    #[arg(long = "flash-attn", visible_alias = "fa", default_value = "auto", value_name = "on|off|auto")]
    pub flash_attn: String,
    /// KV cache type for K (f16, q8_0, q4_0)
    #[arg(long = "cache-type-k", visible_alias = "ctk", default_value = "f16", value_name = "TYPE")]
    pub cache_type_k: String,
    /// KV cache type for V (f16, q8_0, q4_0)
    #[arg(long = "cache-type-v", visible_alias = "ctv", default_value = "f16", value_name = "TYPE")]
    pub cache_type_v: String,
    /// Read the weights in place from the file map (the default)
    #[arg(long = "mmap", conflicts_with = "no_mmap")]
    pub mmap: bool,
    /// Copy the weights into memory (transparent huge pages) instead of mapping the file
    #[arg(long = "no-mmap")]
    pub no_mmap: bool,
    /// LoRA adapter (GGUF) at scale 1; repeatable, or a comma-separated list
    #[arg(long = "lora", value_name = "FILE")]
    pub lora: Vec<String>,
    /// LoRA adapter at a scale: FILE:SCALE, repeatable or comma-separated
    #[arg(long = "lora-scaled", value_name = "FILE:SCALE")]
    pub lora_scaled: Vec<String>,
}

impl ContextArgs {
    pub fn load_options(&self) -> anyhow::Result<ferrite::model::LoadOptions> {
        use ferrite::model::{LoadOptions, WeightMemory};
        let weights = if self.no_mmap { WeightMemory::Copied } else { WeightMemory::Mapped };
        // adapters name the file's tensors, so adapted models keep [q|k|v] and [gate|up] apart
        let fuse = self.lora.is_empty() && self.lora_scaled.is_empty();
        Ok(LoadOptions { weights, fuse, offload: self.placement.offload()?, ..Default::default() })
    }
}

/// `-ngl` as a number of layers (negative: all); None when absent.
fn gpu_layers(flag: Option<&str>) -> anyhow::Result<Option<i32>> {
    match flag {
        None => Ok(None),
        Some("auto" | "all") => Ok(Some(-1)),
        Some(n) => match n.parse::<i32>() {
            Ok(n) => Ok(Some(n.max(-1))),
            Err(_) => ferrite::bail_input!("--n-gpu-layers: '{n}' is not a number of layers, auto or all"),
        },
    }
}

impl PlacementArgs {
    /// The servers of `--rpc` (repeatable, each a comma-separated list).
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.rpc.iter().flat_map(|r| r.split(',')).map(str::trim).filter(|e| !e.is_empty())
    }

    /// The offload devices and layers of `--rpc`, `--device`, `-ngl`, `--tensor-split` and
    /// `--split-mode`, as llama.cpp chooses them: RPC servers' devices first (fewer transfers),
    /// then the local GPUs; all layers offloaded unless `-ngl` says otherwise.
    pub fn offload(&self) -> anyhow::Result<ferrite::model::Offload> {
        let ngl = gpu_layers(self.n_gpu_layers.as_deref())?;
        let mut devices = Vec::new();
        for endpoint in self.endpoints() {
            devices.extend(rpc_devices(endpoint)?);
        }
        devices.extend(
            ggml::Device::all().into_iter().filter(|d| matches!(d.kind(), ggml::DeviceKind::Gpu | ggml::DeviceKind::IntegratedGpu)),
        );
        if let Some(list) = self.device.as_deref() {
            let names: Vec<&str> = list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
            if names == ["none"] {
                devices.clear();
            } else {
                let mut chosen = Vec::new();
                for n in names {
                    match devices.iter().find(|d| d.name().eq_ignore_ascii_case(n)) {
                        Some(d) => chosen.push(*d),
                        None => {
                            let have: Vec<String> = devices.iter().map(|d| d.name()).collect();
                            let have = if have.is_empty() { "none (add servers with --rpc)".to_string() } else { have.join(", ") };
                            ferrite::bail_input!("--device: no device '{n}'; available: {have}")
                        }
                    }
                }
                devices = chosen;
            }
        }
        match self.split_mode.as_str() {
            "layer" => {}
            "none" => devices.truncate(1),
            "row" => ferrite::bail_input!("--split-mode row is not supported (it needs a backend with split buffers); use layer"),
            other => ferrite::bail_input!("--split-mode: '{other}' is not none or layer"),
        }
        let tensor_split = match self.tensor_split.as_deref() {
            Some(s) => ferrite::placement::parse_split(s).map_err(|e| ferrite::bad_input!("{e}"))?,
            None => Vec::new(),
        };
        if tensor_split.len() > devices.len().max(1) {
            ferrite::bail_input!("--tensor-split gives {} shares for {} device(s)", tensor_split.len(), devices.len());
        }
        if devices.is_empty() && ngl.is_some_and(|n| n != 0) {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                stderrln!("ferrite: note: --n-gpu-layers: no GPU or RPC device here (see `ferrite info --devices`, --rpc); every layer runs on the CPU")
            });
        }
        Ok(ferrite::model::Offload { devices, n_gpu_layers: ngl.unwrap_or(-1), tensor_split })
    }
}

impl ContextArgs {
    /// The adapters of `--lora` and `--lora-scaled`, in order, with their scales.
    pub fn loras(&self) -> anyhow::Result<Vec<(std::path::PathBuf, f32)>> {
        parse_loras(&self.lora, &self.lora_scaled)
    }

    pub fn options(&self) -> anyhow::Result<ferrite::decoder::ContextOptions> {
        use ferrite::decoder::{ContextOptions, FlashAttn};
        let flash_attn = match self.flash_attn.as_str() {
            "on" | "1" | "true" => FlashAttn::On,
            "off" | "0" | "false" => FlashAttn::Off,
            "auto" => FlashAttn::Auto,
            other => ferrite::bail_input!("--flash-attn: '{other}' is not on, off or auto"),
        };
        let cache = |flag: &str, v: &str| -> anyhow::Result<ggml::Type> {
            match ggml::Type::from_name(v) {
                Some(t) if matches!(t, ggml::Type::F16 | ggml::Type::Q8_0 | ggml::Type::Q4_0 | ggml::Type::F32 | ggml::Type::BF16) => Ok(t),
                _ => ferrite::bail_input!("{flag}: '{v}' is not a supported cache type (f16, q8_0, q4_0)"),
            }
        };
        ferrite::decoder::check_ctx_size(self.ctx_size.unwrap_or(0))?;
        if self.threads == Some(0) {
            ferrite::bail_input!("--threads must be at least 1");
        }
        if self.batch == 0 || self.ubatch == 0 {
            ferrite::bail_input!("--batch-size and --ubatch-size must be at least 1");
        }
        gpu_layers(self.placement.n_gpu_layers.as_deref())?;
        let (n_threads, warning) = ferrite::decoder::resolve_threads(self.threads);
        // options() runs more than once per command (flags are checked before loading)
        static WARNED: std::sync::Once = std::sync::Once::new();
        if let Some(w) = warning {
            WARNED.call_once(|| stderrln!("ferrite: warning: {w}"));
        }
        Ok(ContextOptions {
            n_ctx: self.ctx_size.unwrap_or(0),
            n_batch: self.batch,
            n_ubatch: self.ubatch,
            n_threads,
            flash_attn,
            type_k: cache("--cache-type-k", &self.cache_type_k)?,
            type_v: cache("--cache-type-v", &self.cache_type_v)?,
            // For A/B comparisons with ggml's own products (same values, see the README).
            own_kernels: std::env::var_os("FERRITE_GGML_MATMUL").is_none_or(|v| v == "0"),
            swa_full: self.swa_full,
            n_seq: 1,
            loras: self.loras()?,
        })
    }
}

/// llama.cpp's multi-letter short flags, which clap cannot express, mapped to their long forms
/// so users' habits carry over (`-ub 512`, `-fa off`, `-ctk q8_0`).
const LLAMA_SHORT_FLAGS: &[(&str, &str)] = &[
    ("-ub", "--ubatch-size"),
    ("-fa", "--flash-attn"),
    ("-ctk", "--cache-type-k"),
    ("-ctv", "--cache-type-v"),
    ("-ngl", "--n-gpu-layers"),
    ("-ts", "--tensor-split"),
    ("-sm", "--split-mode"),
    ("-dev", "--device"),
    ("-sys", "--system-prompt"),
    ("-cnv", "--conversation"),
    ("-co", "--color"),
    ("-np", "--parallel"),
    ("-npl", "--parallel"),
    ("-npp", "--n-prompt"),
    ("-ntg", "--n-gen"),
    ("-jf", "--json-schema-file"),
];

/// The command line with llama.cpp's multi-letter short flags in their long forms, or the
/// one-line error for a multi-letter short flag ferrite does not know: clap would otherwise read
/// `-ngl` as `-n gl` and name a flag the user never typed.
fn normalized_args(cmd: &clap::Command) -> anyhow::Result<Vec<std::ffi::OsString>> {
    let switches = switches(cmd);
    let is_switch = |f: &str| switches.iter().any(|s| s == f);
    // clap lets value-less short flags be bundled (`-qv`)
    let bundled = |letters: &str| letters.chars().all(|c| is_switch(&format!("-{c}")));
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut rest_positional = false;
    for a in std::env::args_os() {
        if let Some((_, long)) = LLAMA_SHORT_FLAGS.iter().find(|(s, _)| a == *s) {
            if !rest_positional {
                out.push(long.into());
                continue;
            }
        }
        let s = a.to_string_lossy();
        let letters = s.strip_prefix('-').filter(|r| !r.starts_with('-') && r.len() >= 2 && r.chars().all(|c| c.is_ascii_alphabetic()));
        // a value of the previous flag (`--stop -END`) is not a flag
        let prev_takes_value = out.last().is_some_and(|p| {
            let p = p.to_string_lossy();
            let bundle = p.len() > 2 && !p.starts_with("--") && bundled(&p[1..]);
            p.starts_with('-') && !p.contains('=') && !is_switch(&p) && !bundle
        });
        if let Some(letters) = letters {
            if !rest_positional && !prev_takes_value && !bundled(letters) {
                ferrite::bail_input!(
                    "unknown flag '{s}' (try `ferrite --help`; llama.cpp's multi-letter short flags known here: {})",
                    LLAMA_SHORT_FLAGS.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(" ")
                );
            }
        }
        if a == "--" {
            rest_positional = true;
        }
        out.push(a);
    }
    Ok(out)
}

/// Every flag that takes no value (`--raw`, `-q`, …), read from clap's definitions of all
/// subcommands, so that the argument after one is known not to be its value.
fn switches(cmd: &clap::Command) -> Vec<String> {
    let mut out = vec!["--".to_string(), "--help".into(), "-h".into(), "--version".into(), "-V".into()];
    let mut stack = vec![cmd];
    while let Some(c) = stack.pop() {
        for a in c.get_arguments().filter(|a| !a.get_action().takes_values()) {
            out.extend(a.get_long_and_visible_aliases().into_iter().flatten().map(|l| format!("--{l}")));
            out.extend(a.get_short_and_visible_aliases().into_iter().flatten().map(|c| format!("-{c}")));
        }
        stack.extend(c.get_subcommands());
    }
    out
}

pub fn main() -> i32 {
    let long_version: &'static str = Box::leak(ferrite::build_info::long_version().into_boxed_str());
    let cmd = <Cli as clap::CommandFactory>::command().long_version(long_version);
    let args = match normalized_args(&cmd) {
        Ok(a) => a,
        Err(e) => {
            stderrln!("ferrite: {}", one_line(&e));
            return exit_code(&e);
        }
    };
    let parsed = cmd.try_get_matches_from(args).and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.cmd {
        Some(Cmd::Info(a)) => info::main(a),
        Some(Cmd::Bench(a)) => bench::main(a),
        Some(Cmd::Tokenize(a)) => tokenize::main(a),
        Some(Cmd::Run(a)) => run::main(*a),
        Some(Cmd::Chat(a)) => chat::main(*a),
        Some(Cmd::Perplexity(a)) => perplexity::main(a),
        Some(Cmd::Batch(a)) => batch::main(*a),
        Some(Cmd::Serve(a)) => serve::main(*a),
        Some(Cmd::ExportLora(a)) => export_lora::main(a),
        Some(Cmd::Quantize(a)) => quantize::main(a),
        Some(Cmd::Eval(a)) => eval::main(*a),
        Some(Cmd::Imatrix(a)) => imatrix::main(a),
        Some(Cmd::RpcServer(a)) => rpc_server::main(a),
        // plain `ferrite` on a terminal: the REPL on the default model
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => match Cli::try_parse_from(["ferrite", "chat"]) {
            Ok(Cli { cmd: Some(Cmd::Chat(a)) }) => chat::main(*a),
            _ => Err(ferrite::bad_input!("no subcommand given; try `ferrite --help`")),
        },
        None => Err(ferrite::bad_input!("no subcommand given; try `ferrite --help`")),
    };
    match result {
        Ok(()) => 0,
        Err(e) if output::is_stdout_closed(&e) => 0,
        Err(e) => {
            stderrln!("ferrite: {}", one_line(&e));
            exit_code(&e)
        }
    }
}

/// The devices of the RPC server at `endpoint` (HOST:PORT), added to ggml's registry. The
/// server is reached here first, with a timeout: ggml itself aborts the process when it cannot
/// connect. From then on, a lost server is a one-line error (exit 1), not an abort.
pub fn rpc_devices(endpoint: &str) -> anyhow::Result<Vec<ggml::Device>> {
    use std::net::ToSocketAddrs;
    if !ggml::rpc::available() {
        ferrite::bail_input!("--rpc: this build has no RPC backend");
    }
    let addrs: Vec<std::net::SocketAddr> =
        endpoint.to_socket_addrs().map_err(|e| ferrite::bad_input!("--rpc {endpoint}: not HOST:PORT ({e})"))?.collect();
    let reachable = addrs.iter().any(|a| std::net::TcpStream::connect_timeout(a, std::time::Duration::from_secs(5)).is_ok());
    if !reachable {
        anyhow::bail!("--rpc {endpoint}: no RPC server answers there (start one with `ferrite rpc-server`)");
    }
    ggml::rpc::exit_cleanly_on_abort();
    Ok(ggml::rpc::add_server(endpoint)?)
}
