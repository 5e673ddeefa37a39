//! `ferrite perplexity`: llama-perplexity's measure over a text file.

use super::{output, ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::decoder::Decoder;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ctx: ContextArgs,
    /// The text to score
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Score at most N chunks
    #[arg(long = "chunks", value_name = "N")]
    pub chunks: Option<usize>,
    /// Print {"ppl", "ppl_err", "chunks"} instead of text
    #[arg(long)]
    pub json: bool,
    /// Only errors on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

pub fn main(a: Args) -> Result<()> {
    super::common::install_interrupt();
    // a corpus, not a prompt: only special files and absurd sizes are refused
    let bytes = super::files::read_capped(&a.file, 1 << 30, "text file", "perplexity reads at most 1 GiB")?;
    let text = super::files::utf8(bytes, &a.file.display().to_string())?;
    let loaded = super::common::load(&a.model, &a.ctx, a.quiet || a.json)?;
    // llama-perplexity's chunk size is -c; 512 when not given
    let n_ctx = a.ctx.ctx_size.unwrap_or(512) as usize;
    let mut opts = a.ctx.options()?;
    opts.n_ctx = n_ctx as u32;
    let mut dec = Decoder::new(loaded.model.clone(), &opts)?;
    dec.set_interrupt(&super::common::INTERRUPTED);
    // as llama-perplexity: BOS when the model adds one, special-token text taken as text
    let tokens = loaded.tok.encode(&text, true, false)?;
    let bos = if loaded.tok.add_bos() { loaded.tok.bos() } else { None };
    let quiet = a.quiet || a.json;
    if !quiet {
        eprintln!("perplexity: {} tokens, chunks of {n_ctx}", tokens.len());
    }
    let r = ferrite::perplexity::perplexity(&mut dec, &tokens, n_ctx, bos, a.chunks, &mut |i, n, ppl| {
        if !quiet {
            eprint!("[{i}/{n}] {ppl:.4}{}", if i == n { "\n" } else { ", " });
        }
    })?;
    if a.json {
        output::println(&json!({"ppl": r.ppl, "ppl_err": r.ppl_err, "chunks": r.chunks}).to_string())
    } else {
        output::println(&format!("PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_err))
    }
}
