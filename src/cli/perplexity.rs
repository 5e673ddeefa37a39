//! `ferrite perplexity`: llama-perplexity's measure over a text file, and its KL-divergence
//! comparison of a model with a base model's stored log-probabilities.

use super::{files, output, ContextArgs, ModelArgs};
use anyhow::Result;
use ferrite::decoder::Decoder;
use ferrite::perplexity::{BaseFile, Kld};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub ctx: ContextArgs,
    /// The text to score (not needed with --kl-divergence: the base file holds its tokens)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Score at most N chunks
    #[arg(long = "chunks", value_name = "N")]
    pub chunks: Option<usize>,
    /// Save this (base) model's log-probabilities to FILE, in llama-perplexity's format; with
    /// --kl-divergence, read them from FILE instead
    #[arg(long = "kl-divergence-base", value_name = "FILE")]
    pub kl_base: Option<PathBuf>,
    /// Compare this model with the base saved by --kl-divergence-base: KL-divergence, same top
    /// token, Δp and the perplexity ratio, as llama-perplexity
    #[arg(long = "kl-divergence", requires = "kl_base")]
    pub kl_divergence: bool,
    /// Print {"ppl", "ppl_err", "chunks"} (or the comparison's fields) instead of text
    #[arg(long)]
    pub json: bool,
    /// Only errors on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// The largest base file read (about 40 chunks of 512 over a 150k vocabulary).
const BASE_CAP: u64 = 64 << 30;

pub fn main(a: Args) -> Result<()> {
    super::common::install_interrupt();
    let quiet = a.quiet || a.json;
    if a.kl_divergence {
        return compare(&a, quiet);
    }
    let Some(file) = &a.file else {
        ferrite::bail_input!("no text: give -f FILE (or --kl-divergence with a base file)");
    };
    // a corpus, not a prompt: only special files and absurd sizes are refused
    let bytes = files::read_capped(file, 1 << 30, "text file", "perplexity reads at most 1 GiB")?;
    let text = files::utf8(bytes, &file.display().to_string())?;
    if let Some(base) = &a.kl_base {
        let model = ferrite::catalogue::resolve(a.model.model.as_deref())?;
        ferrite::gguf::writer::check_target(base, &model, "base log-probabilities", "model")?;
    }
    let loaded = super::common::load(&a.model, &a.ctx, quiet)?;
    // llama-perplexity's chunk size is -c; 512 when not given
    let n_ctx = a.ctx.ctx_size.unwrap_or(512) as usize;
    let mut dec = decoder(&loaded, &a.ctx, n_ctx)?;
    // as llama-perplexity: BOS when the model adds one, special-token text taken as text
    let tokens = loaded.tok.encode(&text, true, false)?;
    let bos = if loaded.tok.add_bos() { loaded.tok.bos() } else { None };
    if !quiet {
        stderrln!("perplexity: {} tokens, chunks of {n_ctx}", tokens.len());
    }
    let mut progress = |i: usize, n: usize, ppl: f64| {
        if !quiet {
            stderr!("[{i}/{n}] {ppl:.4}{}", if i == n { "\n" } else { ", " });
        }
    };
    let r = match &a.kl_base {
        Some(path) => {
            let mut out = ferrite::atomic_file::AtomicFile::create(path)?;
            let r = ferrite::perplexity::save_base(&mut dec, &tokens, n_ctx, bos, a.chunks, &mut out, &mut progress)?;
            out.commit()?;
            if !quiet {
                stderrln!("perplexity: log-probabilities of {} chunks saved to {}", r.chunks, path.display());
            }
            r
        }
        None => ferrite::perplexity::perplexity(&mut dec, &tokens, n_ctx, bos, a.chunks, &mut progress)?,
    };
    if a.json {
        output::println(&json!({"ppl": r.ppl, "ppl_err": r.ppl_err, "chunks": r.chunks}).to_string())
    } else {
        output::println(&format!("PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_err))
    }
}

fn decoder(loaded: &super::common::Loaded, ctx: &ContextArgs, n_ctx: usize) -> Result<Decoder> {
    let mut opts = ctx.options()?;
    opts.n_ctx = n_ctx as u32;
    let mut dec = Decoder::new(loaded.model.clone(), &opts)?;
    dec.set_interrupt(&super::common::INTERRUPTED);
    Ok(dec)
}

/// `--kl-divergence`: this model against the base file.
fn compare(a: &Args, quiet: bool) -> Result<()> {
    let path = a.kl_base.as_ref().expect("clap requires the base with --kl-divergence");
    files::check_regular(path, BASE_CAP, "base file", "it cannot be a base file")?;
    let mut base = BaseFile::open(path)?;
    if a.file.is_some() && !quiet {
        stderrln!("perplexity: -f ignored: the comparison scores the tokens stored in {}", path.display());
    }
    if let Some(c) = a.ctx.ctx_size.filter(|&c| c as usize != base.n_ctx) {
        if !quiet {
            stderrln!("perplexity: -c {c} ignored: {} was computed with chunks of {}", path.display(), base.n_ctx);
        }
    }
    let loaded = super::common::load(&a.model, &a.ctx, quiet)?;
    let mut dec = decoder(&loaded, &a.ctx, base.n_ctx)?;
    let bos = if loaded.tok.add_bos() { loaded.tok.bos() } else { None };
    if !quiet {
        stderrln!("kl-divergence: {} chunks of {} against {}", base.n_chunks, base.n_ctx, path.display());
        stderrln!("chunk        PPL         ln(PPL(Q)/PPL(base))      KL divergence         Δp RMS       same top p");
    }
    let k = ferrite::perplexity::kl_divergence(&mut dec, &mut base, bos, a.chunks, &mut |i, _, k| {
        if !quiet {
            stderrln!(
                "{i:5} {:9.4} ± {:7.4} {:10.5} ± {:8.5} {:10.5} ± {:8.5} {:6.3} ± {:5.3} % {:6.3} ± {:5.3} %",
                k.ppl.0,
                k.ppl.1,
                k.ln_ratio.0,
                k.ln_ratio.1,
                k.kld.0,
                k.kld.1,
                100.0 * k.rms_dp.0,
                100.0 * k.rms_dp.1,
                100.0 * k.same_top.0,
                100.0 * k.same_top.1
            );
        }
    })?;
    if a.json {
        output::println(&kld_json(&k).to_string())
    } else {
        output::print(&kld_text(&k))
    }
}

/// The label llama-perplexity prints for a percentile, padded as it pads it.
fn label(f: f32) -> String {
    match f {
        1.0 => "Maximum ".into(),
        0.0 => "Minimum ".into(),
        0.5 => "Median  ".into(),
        f => format!("{:4.1}%   ", 100.0 * f),
    }
}

fn kld_text(k: &Kld) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let pm = |(v, e): (f64, f64)| format!("{v:10.6} ± {e:10.6}");
    let _ = writeln!(s, "====== Perplexity statistics ======");
    let _ = writeln!(s, "Mean PPL(Q)                   : {}", pm(k.ppl));
    let _ = writeln!(s, "Mean PPL(base)                : {}", pm(k.ppl_base));
    let _ = writeln!(s, "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%", 100.0 * k.cor);
    let _ = writeln!(s, "Mean ln(PPL(Q)/PPL(base))     : {}", pm(k.ln_ratio));
    let _ = writeln!(s, "Mean PPL(Q)/PPL(base)         : {}", pm(k.ratio));
    let _ = writeln!(s, "Mean PPL(Q)-PPL(base)         : {}", pm(k.diff));
    let _ = writeln!(s, "\n====== KL divergence statistics ======");
    let _ = writeln!(s, "Mean    KLD: {}", pm(k.kld));
    for &(f, v) in &k.kld_percentiles {
        let _ = writeln!(s, "{}KLD: {v:10.6}", label(f));
    }
    let _ = writeln!(s, "\n====== Token probability statistics ======");
    let _ = writeln!(s, "Mean    Δp: {:6.3} ± {:5.3} %", 100.0 * k.dp.0, 100.0 * k.dp.1);
    for &(f, v) in &k.dp_percentiles {
        let _ = writeln!(s, "{}Δp: {:6.3}%", label(f), 100.0 * v);
    }
    let _ = writeln!(s, "RMS Δp    : {:6.3} ± {:5.3} %", 100.0 * k.rms_dp.0, 100.0 * k.rms_dp.1);
    let _ = writeln!(s, "Same top p: {:6.3} ± {:5.3} %", 100.0 * k.same_top.0, 100.0 * k.same_top.1);
    s
}

fn kld_json(k: &Kld) -> serde_json::Value {
    let est = |(v, e): (f64, f64)| json!({"value": v, "err": e});
    let pct = |p: &[(f32, f32)]| -> serde_json::Value {
        p.iter().map(|&(f, v)| (format!("{}", 100.0 * f), json!(v))).collect::<serde_json::Map<_, _>>().into()
    };
    json!({
        "chunks": k.chunks,
        "count": k.count,
        "ppl": est(k.ppl),
        "ppl_base": est(k.ppl_base),
        "cor_ln_ppl": k.cor,
        "ln_ppl_ratio": est(k.ln_ratio),
        "ppl_ratio": est(k.ratio),
        "ppl_diff": est(k.diff),
        "kld": est(k.kld),
        "kld_percentiles": pct(&k.kld_percentiles),
        "dp": est(k.dp),
        "dp_percentiles": pct(&k.dp_percentiles),
        "rms_dp": est(k.rms_dp),
        "same_top_p": est(k.same_top),
    })
}
