//! `ferrite export-lora`: the command line of merging adapters into a model file.

use super::ModelArgs;
use anyhow::Result;
use std::io::IsTerminal;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// LoRA adapter (GGUF) at scale 1; repeatable, or a comma-separated list
    #[arg(long = "lora", value_name = "FILE")]
    pub lora: Vec<String>,
    /// LoRA adapter at a scale: FILE:SCALE, repeatable or comma-separated
    #[arg(long = "lora-scaled", value_name = "FILE:SCALE")]
    pub lora_scaled: Vec<String>,
    /// The merged model to write (replaced atomically; never the base)
    #[arg(short = 'o', long = "output", visible_alias = "output-file", value_name = "FILE")]
    pub output: std::path::PathBuf,
    /// Threads (default: the physical cores)
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub threads: Option<usize>,
    /// No progress on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

pub fn main(a: Args) -> Result<()> {
    let base = ferrite::catalogue::resolve(a.model.model.as_deref())?;
    let loras = super::parse_loras(&a.lora, &a.lora_scaled)?;
    let threads = a.threads.unwrap_or_else(ferrite::decoder::default_threads);
    let t0 = std::time::Instant::now();
    let tty = !a.quiet && std::io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize, name: &str| {
        if tty {
            stderr!("\r\x1b[2Kexport-lora: {done}/{total} {name}");
        }
    };
    let s = ferrite::model::export_lora::export(&base, &loras, &a.output, threads, &mut progress)?;
    if tty {
        stderr!("\r\x1b[2K");
    }
    if !a.quiet {
        stderrln!(
            "ferrite: wrote {} ({} tensors merged, {} copied, {:.1} MiB) in {:.1} s",
            a.output.display(),
            s.merged,
            s.copied,
            s.bytes as f64 / (1 << 20) as f64,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
