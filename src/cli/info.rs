//! `ferrite info`: what a model file is and whether it fits, after every load-time validation.

use super::ModelArgs;
use anyhow::Result;
use ferrite::gguf::GgufFile;
use ferrite::model::Model;
use ferrite::tokenizer::Tokenizer;
use ferrite::{catalogue, info};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Context size for the memory plan (default: the model's, capped at 4096)
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx: Option<u32>,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    /// Check a LoRA adapter against the model and count its memory (repeatable, or a
    /// comma-separated list)
    #[arg(long = "lora", value_name = "FILE")]
    pub lora: Vec<String>,
    /// List the compute devices ggml offers here (name, type, memory) instead of a model report;
    /// with --rpc, a remote server's too
    #[arg(long)]
    pub devices: bool,
    /// Where the layers would go (the memory plan then shows each device's part); --rpc also
    /// adds a server's devices to --devices
    #[command(flatten)]
    pub placement: super::PlacementArgs,
}

pub fn main(a: Args) -> Result<()> {
    if a.devices {
        return devices(&a);
    }
    ferrite::decoder::check_ctx_size(a.ctx.unwrap_or(0))?;
    let path = catalogue::resolve(a.model.model.as_deref())?;
    let file = GgufFile::open(&path)?;
    let (arch, hp) = Model::check(&file)?;
    // the vocabulary must make a working tokenizer, as `run` and `tokenize` need
    let tok = Tokenizer::from_gguf(&file)?;
    let mut report = info::Report::new(&file, arch, &hp, a.ctx)?;
    report.template_check = info::check_chat_template(&file, &tok)?;
    for f in a.lora.iter().flat_map(|l| l.split(',')).filter(|f| !f.is_empty()) {
        let ad = ferrite::model::lora::LoraAdapter::load(std::path::Path::new(f), &file)?;
        report.adapters.push((ad.path.clone(), ad.alpha, ad.n_targets(), ad.bytes as u64));
    }
    let offload = a.placement.offload()?;
    if !offload.devices.is_empty() {
        let devs: Vec<_> = offload.devices.iter().map(|d| (d.name(), d.description(), d.memory().0 as u64)).collect();
        report.split(&file, &offload.placement(hp.n_layer as usize), &devs);
    }
    if a.json {
        let v = report.to_json();
        super::output::println(&serde_json::to_string_pretty(&v)?)?;
    } else {
        super::output::print(&report.to_text())?;
    }
    // the whole report first, then the verdict: a template that fails makes the file unusable
    // for `run` and `chat` (they would fail on the first prompt), so `info` fails too
    if let Some(Err(e)) = &report.template_check {
        ferrite::bail_input!("the model's chat template fails on a sample conversation: {e}");
    }
    Ok(())
}

/// `info --devices`: ggml's registry, plus the devices of `--rpc` servers.
fn devices(a: &Args) -> Result<()> {
    let mut list = ggml::Device::all();
    for endpoint in a.placement.endpoints() {
        list.extend(super::rpc_devices(endpoint)?);
    }
    let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
    let rows: Vec<serde_json::Value> = list
        .iter()
        .map(|d| {
            let (free, total) = d.memory();
            serde_json::json!({"name": d.name(), "description": d.description(), "type": format!("{:?}", d.kind()).to_lowercase(),
                "memory_free": free, "memory_total": total})
        })
        .collect();
    if a.json {
        return super::output::println(&serde_json::to_string_pretty(&serde_json::Value::Array(rows))?);
    }
    let mut s = String::new();
    for r in &rows {
        let field = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let bytes = |k: &str| r[k].as_u64().unwrap_or(0) as usize;
        s += &format!(
            "{:<8} {:<6} {:>10.0} MiB free of {:>10.0} MiB  {}\n",
            field("name"),
            field("type"),
            mib(bytes("memory_free")),
            mib(bytes("memory_total")),
            field("description")
        );
    }
    if !ggml::rpc::available() {
        s += "(this build has no RPC backend)\n";
    }
    super::output::print(&s)
}
