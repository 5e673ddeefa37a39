//! `ferrite quantize`: llama-quantize's command line over `ferrite::quantize`.

use anyhow::Result;
use ferrite::quantize::{self, Params};
use std::io::IsTerminal;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Quantize tensors that are already quantized (quality suffers)
    #[arg(long = "allow-requantize")]
    pub allow_requantize: bool,
    /// Every tensor in TYPE's default type: no mix, no promotions
    #[arg(long)]
    pub pure: bool,
    /// Copy output.weight as it is
    #[arg(long = "leave-output-tensor")]
    pub leave_output: bool,
    /// Type of output.weight
    #[arg(long = "output-tensor-type", value_name = "TYPE")]
    pub output_tensor_type: Option<String>,
    /// Type of token_embd.weight
    #[arg(long = "token-embedding-type", value_name = "TYPE")]
    pub token_embedding_type: Option<String>,
    /// Type of the tensors whose names match a regex: PATTERN=TYPE; repeatable, the first match wins
    #[arg(long = "tensor-type", value_name = "PATTERN=TYPE")]
    pub tensor_type: Vec<String>,
    /// Importance matrix (GGUF, from `ferrite imatrix` or llama-imatrix): weights each column's
    /// rounding error; the IQ1/IQ2/IQ3_XXS types and Q2_K_S need one
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<std::path::PathBuf>,
    /// No progress on stderr
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// The model to quantize (F32, F16, BF16, or quantized with --allow-requantize)
    #[arg(value_name = "IN.gguf")]
    pub input: std::path::PathBuf,
    /// The quantized model to write (replaced atomically)
    #[arg(value_name = "OUT.gguf")]
    pub output: std::path::PathBuf,
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q2_K_S, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K, IQ4_NL,
    /// IQ4_XS, IQ3_S, IQ3_M, IQ3_XS, IQ3_XXS, IQ2_XXS/XS/S/M, IQ1_S/M, TQ1_0, TQ2_0, F16, BF16,
    /// F32 (or llama.cpp's number)
    #[arg(value_name = "TYPE")]
    pub ftype: String,
    /// Threads (default: the physical cores)
    #[arg(value_name = "NTHREADS")]
    pub threads: Option<usize>,
}

fn tensor_type(s: &str, flag: &str) -> Result<ggml::Type> {
    ggml::Type::from_name(s).ok_or_else(|| ferrite::bad_input!("{flag}: '{s}' is not a ggml type (q8_0, q6_K, f16, …)"))
}

pub fn main(a: Args) -> Result<()> {
    let Some(ftype) = quantize::parse_ftype(&a.ftype) else {
        let names: Vec<&str> = quantize::FTYPES.iter().map(|(n, _)| *n).collect();
        ferrite::bail_input!("'{}' is not a quantization type ({})", a.ftype, names.join(", "));
    };
    let mut tensor_types = Vec::new();
    for spec in &a.tensor_type {
        let Some((pattern, t)) = spec.rsplit_once('=') else { ferrite::bail_input!("--tensor-type {spec:?}: give PATTERN=TYPE") };
        let re = regex::Regex::new(pattern).map_err(|e| ferrite::bad_input!("--tensor-type {spec:?}: {e}"))?;
        tensor_types.push((re, tensor_type(t, "--tensor-type")?));
    }
    let p = Params {
        ftype,
        allow_requantize: a.allow_requantize,
        pure: a.pure,
        leave_output: a.leave_output,
        output_tensor_type: a.output_tensor_type.as_deref().map(|t| tensor_type(t, "--output-tensor-type")).transpose()?,
        token_embedding_type: a.token_embedding_type.as_deref().map(|t| tensor_type(t, "--token-embedding-type")).transpose()?,
        tensor_types,
        n_threads: a.threads.unwrap_or_else(ferrite::decoder::default_threads),
        imatrix: match &a.imatrix {
            Some(f) => {
                super::files::check_regular(f, 4 << 30, "importance matrix", "it cannot be one")?;
                Some((ferrite::imatrix::Imatrix::load(f)?, f.display().to_string()))
            }
            None => None,
        },
    };
    let t0 = std::time::Instant::now();
    let bar = (!a.quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("quantize [{bar:30}] {pos}/{len} {msg}").expect("valid template").progress_chars("=> "),
        );
        b
    });
    let mut progress = |done: usize, total: usize, name: &str| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.set_message(name.to_string());
        }
    };
    let s = quantize::quantize(&a.input, &a.output, &p, &mut progress)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !a.quiet {
        let mib = |n: u64| n as f64 / (1 << 20) as f64;
        stderrln!(
            "ferrite: wrote {} as {}: {} tensors ({} converted{}), {:.2} MiB -> {:.2} MiB ({:.2}x) in {:.1} s",
            a.output.display(),
            quantize::ftype_name(ftype),
            s.n_tensors,
            s.n_quantized,
            if s.n_fallback > 0 { format!(", {} by a fallback type", s.n_fallback) } else { String::new() },
            mib(s.size_in),
            mib(s.size_out),
            s.size_in as f64 / s.size_out.max(1) as f64,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
