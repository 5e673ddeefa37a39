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
    /// Sequences decoded together, a list (llama-batched-bench's -npl): each prefills -p tokens
    /// and generates -n; reports aggregate tokens/s per count
    #[arg(long = "parallel", value_name = "N,N,...", value_delimiter = ',')]
    pub parallel: Vec<u32>,
}

pub fn main(a: Args) -> Result<()> {
    if a.reps == 0 {
        ferrite::bail_input!("--repetitions must be at least 1");
    }
    let path = catalogue::resolve(a.model.model.as_deref())?;
    let model = Rc::new(Model::load(&path, a.ctx.load_options()?, &mut |_, _| {})?);
    let vocab = VocabMeta::without_texts(&model.file)?;
    let bos = if vocab.add_bos.unwrap_or(vocab.model == "llama") { vocab.special.bos } else { None };
    let opts = a.ctx.options()?;
    let mut rng = BenchRng::default();
    if !a.parallel.is_empty() {
        return parallel(&a, &model, &opts, &mut rng);
    }
    let mut results: Vec<BenchResult> = Vec::new();
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

/// `--parallel`: llama-batched-bench's table (or JSON rows with `n_parallel`).
fn parallel(a: &Args, model: &Rc<Model>, opts: &ferrite::decoder::ContextOptions, rng: &mut BenchRng) -> Result<()> {
    if let Some(&bad) = a.parallel.iter().find(|&&n| n == 0 || n > ferrite::decoder::MAX_SEQ) {
        ferrite::bail_input!("--parallel: {bad} is out of range 1..={}", ferrite::decoder::MAX_SEQ);
    }
    if a.n_gen == 0 && a.n_prompt == 0 {
        ferrite::bail_input!("--parallel needs -p or -n above 0");
    }
    let mut rows = Vec::new();
    let mut table = String::from("|    PP |     TG |    B |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |\n");
    table.push_str("|-------|--------|------|----------|----------|----------|----------|----------|----------|\n");
    for &pl in &a.parallel {
        let r = ferrite::bench::run_parallel(model, opts, a.n_prompt, a.n_gen, pl, a.reps, rng)?;
        table.push_str(&format!(
            "| {:5} | {:6} | {:4} | {:8.3} | {:8.2} | {:8.3} | {:8.2} | {:8.3} | {:8.2} |\n",
            r.n_prompt,
            r.n_gen,
            r.n_parallel,
            r.t_pp(),
            r.speed_pp(),
            r.t_tg(),
            r.speed_tg(),
            r.t_pp() + r.t_tg(),
            r.speed()
        ));
        rows.push(json!({
            "build": "ferrite",
            "n_prompt": r.n_prompt,
            "n_gen": r.n_gen,
            "n_parallel": r.n_parallel,
            "n_batch": opts.n_batch,
            "n_ubatch": opts.n_ubatch,
            "n_threads": opts.n_threads,
            "flash_attn": format!("{:?}", opts.flash_attn).to_lowercase(),
            "t_pp": r.t_pp(),
            "speed_pp": r.speed_pp(),
            "t_tg": r.t_tg(),
            "speed_tg": r.speed_tg(),
            "t": r.t_pp() + r.t_tg(),
            "speed": r.speed(),
            "samples_t_pp": r.t_pp,
            "samples_t_tg": r.t_tg,
        }));
    }
    if a.json {
        return super::output::println(&serde_json::to_string_pretty(&rows)?);
    }
    super::output::print(&table)
}
