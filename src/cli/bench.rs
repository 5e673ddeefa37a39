//! `ferrite bench`: prompt-processing and generation throughput, llama-bench's method and table.

use super::{ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::bench::{run_test, BenchResult, BenchRng};
use ferrite::catalogue;
use ferrite::gguf::vocab::VocabMeta;
use ferrite::model::Model;
use serde_json::json;
use std::rc::Rc;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ctx: ContextArgs,
    /// Prompt tokens for the prompt-processing test (0: skip it)
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512, value_name = "N")]
    pub n_prompt: u32,
    /// Generated tokens for the generation test (0: skip it)
    #[arg(short = 'n', long = "n-gen", default_value_t = 128, value_name = "N")]
    pub n_gen: u32,
    /// Timed repetitions of each test
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_name = "N")]
    pub reps: u32,
    /// Print a JSON array of rows (like llama-bench -o json)
    #[arg(long)]
    pub json: bool,
}

pub fn main(a: Args) -> Result<()> {
    if a.reps == 0 {
        ferrite::bail_input!("--repetitions must be at least 1");
    }
    let path = catalogue::resolve(a.model.model.as_deref())?;
    let model = Rc::new(Model::load(&path, a.ctx.load_options(), &mut |_, _| {})?);
    let vocab = VocabMeta::without_texts(&model.file)?;
    let bos = if vocab.add_bos.unwrap_or(vocab.model == "llama") { vocab.special.bos } else { None };
    let opts = a.ctx.options()?;
    let mut results: Vec<BenchResult> = Vec::new();
    let mut rng = BenchRng::default();
    if a.n_prompt > 0 {
        results.push(run_test(&model, &opts, bos, a.n_prompt, 0, a.reps, &mut rng)?);
    }
    if a.n_gen > 0 {
        results.push(run_test(&model, &opts, bos, 0, a.n_gen, a.reps, &mut rng)?);
    }

    let size: u64 = model.file.tensors().iter().map(|t| t.nbytes).sum();
    let n_params: u64 = model.file.tensors().iter().map(|t| t.nelements() as u64).sum();
    let file_type = model
        .file
        .tensors()
        .iter()
        .filter(|t| t.n_dims >= 2)
        .map(|t| t.ty)
        .max_by_key(|ty| model.file.tensors().iter().filter(|t| t.ty == *ty).count());
    let mtype =
        format!("{} {} {}", model.arch.name(), human_params(n_params), file_type.map(|t| t.name().to_uppercase()).unwrap_or_default());
    if a.json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "build": "ferrite",
                    "model_filename": path.display().to_string(),
                    "model_type": mtype,
                    "model_size": size,
                    "model_n_params": n_params,
                    "n_batch": opts.n_batch,
                    "n_ubatch": opts.n_ubatch,
                    "n_threads": opts.n_threads,
                    "type_k": opts.type_k.name(),
                    "type_v": opts.type_v.name(),
                    "flash_attn": format!("{:?}", opts.flash_attn).to_lowercase(),
                    "n_prompt": r.n_prompt,
                    "n_gen": r.n_gen,
                    "avg_ns": r.avg_ns() as u64,
                    "stddev_ns": r.stddev_ns() as u64,
                    "avg_ts": r.avg_ts(),
                    "stddev_ts": r.stddev_ts(),
                    "samples_ns": r.samples_ns,
                    "samples_ts": r.samples_ts(),
                })
            })
            .collect();
        return super::output::println(&serde_json::to_string_pretty(&rows)?);
    }
    let mut s = String::from("| model | size | params | backend | threads | test | t/s |\n");
    s.push_str(
        "| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |\n",
    );
    for r in &results {
        s.push_str(&format!(
            "| {} | {:.2} MiB | {:.2} M | CPU | {} | {} | {:.2} ± {:.2} |\n",
            mtype,
            size as f64 / (1 << 20) as f64,
            n_params as f64 / 1e6,
            opts.n_threads,
            r.name(),
            r.avg_ts(),
            r.stddev_ts()
        ));
    }
    super::output::print(&s)
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.0}B", n as f64 / 1e9)
    } else {
        format!("{:.0}M", n as f64 / 1e6)
    }
}
