//! `ferrite quantize` against llama-quantize on this machine: the same bytes (tensor names,
//! order, types, shapes, data, metadata with `general.file_type`) for tiny F16/F32 models of
//! several architectures × Q4_0, Q8_0, Q4_K_M, Q5_K_S, Q6_K, Q3_K_M, IQ4_NL, with llama-quantize's
//! options, and for smollm2 requantized to Q8_0 and Q4_K_M; bad requests are one-line errors.

mod heavy;
mod paths;

use paths::{how_to_get_llamacpp, llamacpp_bin, root};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tiny_dir() -> PathBuf {
    std::env::var_os("FERRITE_TINY_MODELS").map(PathBuf::from).unwrap_or_else(|| root().join("target/tiny-models"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrite-quantize-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Quantizes `model` with both tools (same options, 2 threads) and compares the files.
fn same_bytes(model: &Path, ty: &str, opts: &[&str]) -> Result<(), String> {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("quantize is checked against live llama.cpp only: {}", how_to_get_llamacpp()));
    // names of their own: the tests of this file run at once
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (ours, theirs) = (scratch(&format!("ferrite-{n}.gguf")), scratch(&format!("llamacpp-{n}.gguf")));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(["quantize", "-q"]).args(opts).arg(model).arg(&ours).args([ty, "2"]);
    let o = heavy::output(&mut cmd, "ferrite quantize", heavy::LIMIT);
    if !o.status.success() {
        return Err(format!("ferrite quantize {ty} {opts:?}: {}", String::from_utf8_lossy(&o.stderr)));
    }
    let mut cmd = Command::new(bin.join("llama-quantize"));
    cmd.env("LD_LIBRARY_PATH", &bin).args(opts).arg(model).arg(&theirs).args([ty, "2"]);
    let o = heavy::output(&mut cmd, "llama-quantize", heavy::LIMIT);
    assert!(o.status.success(), "llama-quantize {ty} {opts:?}: {}", String::from_utf8_lossy(&o.stderr));
    let (x, y) = (std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap());
    let what = format!("{} {ty} {opts:?}", model.display());
    if x.len() != y.len() {
        return Err(format!("{what}: {} bytes, llama-quantize's {}", x.len(), y.len()));
    }
    if let Some(at) = x.iter().zip(&y).position(|(a, b)| a != b) {
        return Err(format!("{what}: differs first at byte {at} of {}", x.len()));
    }
    let _ = (std::fs::remove_file(&ours), std::fs::remove_file(&theirs));
    Ok(())
}

#[test]
fn tiny_models_quantize_as_llama_quantize_does() {
    let mut differ = Vec::new();
    for m in ["tiny-qwen2", "tiny-gemma3", "tiny-llama-moe", "tiny-phi3", "tiny-qwen3moe", "tiny-llama"] {
        let model = tiny_dir().join(format!("{m}.gguf"));
        assert!(model.is_file(), "{} is missing: scripts/test.sh makes the tiny models", model.display());
        // tiny-llama and tiny-phi3 hold a Q8_0 embedding: requantizing is what llama-quantize needs too
        let requant: &[&str] = if m == "tiny-llama" || m == "tiny-phi3" { &["--allow-requantize"] } else { &[] };
        for ty in ["Q4_0", "Q8_0", "Q4_K_M", "Q5_K_S", "Q6_K", "Q3_K_M", "IQ4_NL"] {
            if let Err(e) = same_bytes(&model, ty, requant) {
                differ.push(e);
            }
        }
    }
    let qwen2 = tiny_dir().join("tiny-qwen2.gguf");
    for opts in [
        &["--pure"][..],
        &["--leave-output-tensor", "--token-embedding-type", "q8_0"],
        &["--output-tensor-type", "f16", "--tensor-type", "attn_v=q8_0", "--tensor-type", "ffn_down=q5_K"],
    ] {
        if let Err(e) = same_bytes(&qwen2, "Q4_K_M", opts) {
            differ.push(e);
        }
    }
    assert!(differ.is_empty(), "quantized files differ from llama-quantize's:\n{}", differ.join("\n"));
}

#[test]
fn smollm2_requantizes_as_llama_quantize_does() {
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    for ty in ["Q8_0", "Q4_K_M"] {
        same_bytes(&model, ty, &["--allow-requantize"]).unwrap();
    }
    // and the result runs
    let out = scratch("smollm2-q8.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["quantize", "-q", "--allow-requantize"])
        .arg(&model)
        .arg(&out)
        .args(["Q8_0", "2"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["run", "--raw", "--temp", "0", "-n", "4", "-t", "2", "-m"])
        .arg(&out)
        .arg("The capital of France is")
        .output()
        .unwrap();
    assert!(o.status.success() && !o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// llama-imatrix's matrix of `model` (the reference tool's, so a difference here is quantize's).
fn reference_imatrix(model: &Path, opts: &[&str]) -> PathBuf {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("quantize is checked against live llama.cpp only: {}", how_to_get_llamacpp()));
    let out = scratch(&format!("{}.imatrix.gguf", model.file_stem().unwrap().to_string_lossy()));
    let mut cmd = Command::new(bin.join("llama-imatrix"));
    cmd.env("LD_LIBRARY_PATH", &bin)
        .args(["-t", "2", "-m"])
        .arg(model)
        .arg("-f")
        .arg(paths::reference("GPL-3.txt"))
        .arg("-o")
        .arg(&out)
        .args(opts);
    let o = heavy::output(&mut cmd, "llama-imatrix", heavy::LIMIT);
    assert!(o.status.success(), "llama-imatrix: {}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn quantizing_with_an_importance_matrix_is_llama_quantizes() {
    let mut differ = Vec::new();
    // smollm2 (rows of 576: K and IQ types fall back to Q5_0/IQ4_NL…, weighted by the matrix)
    let smollm2 = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = reference_imatrix(&smollm2, &["--chunks", "2"]);
    for ty in ["Q4_K_M", "IQ2_XXS", "Q4_0", "Q2_K_S"] {
        differ.extend(same_bytes(&smollm2, ty, &["--allow-requantize", "--imatrix", m.to_str().unwrap()]).err());
    }
    // a mixture of experts: one row of weights per expert
    let moe = tiny_dir().join("tiny-qwen3moe.gguf");
    let m = reference_imatrix(&moe, &["-c", "64", "--chunks", "5"]);
    for ty in ["IQ2_XXS", "Q4_0", "Q4_K_M", "IQ3_XXS"] {
        differ.extend(same_bytes(&moe, ty, &["--imatrix", m.to_str().unwrap()]).err());
    }
    assert!(differ.is_empty(), "quantized files differ from llama-quantize's:\n{}", differ.join("\n"));
}

#[test]
fn bad_importance_matrices_are_refused() {
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let other = reference_imatrix(&tiny_dir().join("tiny-llama.gguf"), &["-c", "64", "--chunks", "2"]);
    let out = scratch("never-imatrix.gguf");
    for (imatrix, needle) in [
        (model.to_str().unwrap(), "not an importance matrix"),
        (other.to_str().unwrap(), "values for"),
        ("/dev/zero", "not a regular file"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(["quantize", "-q", "--allow-requantize", "--imatrix", imatrix])
            .arg(&model)
            .arg(&out)
            .arg("Q4_0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{imatrix}: {err}");
        assert!(err.contains(needle) && err.trim().lines().count() == 1, "{imatrix}: {err}");
    }
    assert!(!out.exists());
}

#[test]
fn bad_requests_are_one_line_errors() {
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tiny = tiny_dir().join("tiny-qwen2.gguf");
    let out = scratch("never.gguf");
    for (args, needle) in [
        (vec![model.to_str().unwrap(), out.to_str().unwrap(), "Q8_0"], "--allow-requantize"),
        (vec![tiny.to_str().unwrap(), out.to_str().unwrap(), "Q9_9"], "not a quantization type"),
        (vec!["--allow-requantize", model.to_str().unwrap(), out.to_str().unwrap(), "IQ2_XXS"], "importance matrix"),
        (vec![tiny.to_str().unwrap(), tiny.to_str().unwrap(), "Q8_0"], "overwrite the input"),
        (vec![tiny.to_str().unwrap(), "/dev/full", "Q8_0"], "not a regular file"),
        (vec!["/dev/zero", out.to_str().unwrap(), "Q8_0"], "/dev/zero"),
        (vec!["--tensor-type", "(=q8_0", tiny.to_str().unwrap(), out.to_str().unwrap(), "Q8_0"], "--tensor-type"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ferrite")).arg("quantize").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(!out.exists());
}
