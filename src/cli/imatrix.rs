//! `ferrite imatrix`: an importance matrix of a model over a text, in llama-imatrix's GGUF format
//! (for `ferrite quantize --imatrix` and llama-quantize alike).

use super::{files, ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::decoder::Decoder;
use ferrite::imatrix::Collector;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ctx: ContextArgs,
    /// The calibration text
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Where to write the matrix
    #[arg(short = 'o', long = "output", visible_alias = "output-file", default_value = "imatrix.gguf", value_name = "FILE")]
    pub output: PathBuf,
    /// Evaluate at most N chunks of -c tokens (default: all the text holds)
    #[arg(long = "chunks", value_name = "N")]
    pub chunks: Option<usize>,
    /// Collect output.weight too (llama-imatrix's --process-output)
    #[arg(long = "process-output")]
    pub process_output: bool,
    /// Special-token text in the file becomes special tokens (llama.cpp's --parse-special)
    #[arg(long = "parse-special")]
    pub parse_special: bool,
    /// Only errors on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

pub fn main(a: Args) -> Result<()> {
    super::common::install_interrupt();
    let bytes = files::read_capped(&a.file, 1 << 30, "text file", "imatrix reads at most 1 GiB")?;
    let text = files::utf8(bytes, &a.file.display().to_string())?;
    let model_path = ferrite::catalogue::resolve(a.model.model.as_deref())?;
    ferrite::gguf::writer::check_target(&a.output, &model_path, "importance matrix", "model")?;
    // the file's tensors, each its own product: [q|k|v] and [gate|up] are not stacked
    let load = ferrite::model::LoadOptions { fuse: false, ..a.ctx.load_options()? };
    let loaded = super::common::load_with(&a.model, &a.ctx, a.quiet, load)?;
    let n_ctx = a.ctx.ctx_size.unwrap_or(512) as usize;
    let n_batch = a.ctx.batch as usize;
    // llama-imatrix's layout: as many chunks as a batch holds, decoded together
    if n_batch >= n_ctx && !n_batch.is_multiple_of(n_ctx) {
        ferrite::bail_input!("-b {n_batch} must be below -c {n_ctx} or a multiple of it");
    }
    let n_seq = ferrite::imatrix::sequences(n_ctx, n_batch);
    let mut opts = a.ctx.options()?;
    opts.n_ctx = n_ctx as u32;
    opts.n_seq = n_seq as u32;
    // ggml's mul_mat everywhere, so the observer sees every product
    opts.own_kernels = false;
    let mut dec = Decoder::new(loaded.model.clone(), &opts)?;
    dec.set_interrupt(&super::common::INTERRUPTED);
    let tokens = loaded.tok.encode(&text, true, a.parse_special)?;
    let bos = if loaded.tok.add_bos() { loaded.tok.bos() } else { None };
    if !a.quiet {
        stderrln!("imatrix: {} tokens, chunks of {n_ctx}", tokens.len());
    }
    let collector = Rc::new(RefCell::new(Collector::new(a.process_output)));
    let quiet = a.quiet;
    let (n_batch, n_ubatch) = (n_batch.min(n_seq * n_ctx), a.ctx.ubatch as usize);
    let n = ferrite::imatrix::compute(&mut dec, &tokens, n_ctx, n_batch, n_ubatch, bos, a.chunks, collector.clone(), &mut |i, n, ppl| {
        if !quiet {
            stderr!("[{i}/{n}] {ppl:.4}{}", if i == n { "\n" } else { ", " });
        }
    })?;
    let c = collector.borrow();
    c.write(&a.output, &[a.file.display().to_string()], n_ctx)?;
    if !a.quiet {
        stderrln!("imatrix: {} entries over {n} chunks written to {}", c.stats.len(), a.output.display());
    }
    Ok(())
}
