//! `ferrite imatrix` against llama-imatrix built on this machine: the same file, byte for byte
//! (the sums in llama.cpp's order: its chunks decoded as sequences of one batch, cut into
//! micro-batches of equal shares), for smollm2 and for tiny dense and mixture-of-experts models;
//! bad requests are one-line errors.

mod heavy;
mod paths;

use paths::{how_to_get_llamacpp, llamacpp_bin, reference, root};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tiny(name: &str) -> PathBuf {
    std::env::var_os("FERRITE_TINY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/tiny-models"))
        .join(format!("{name}.gguf"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrite-imatrix-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Both tools' matrices of `model` over the GPL-3 text with `opts`; an error names the difference.
fn same_matrix(model: &Path, opts: &[&str]) -> Result<(), String> {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("imatrix is checked against live llama.cpp only: {}", how_to_get_llamacpp()));
    let name = model.file_stem().unwrap().to_string_lossy().into_owned();
    let (ours, theirs) = (scratch(&format!("{name}-ferrite.gguf")), scratch(&format!("{name}-llama.gguf")));
    let text = reference("GPL-3.txt");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(["imatrix", "-q", "-t", "2", "-m"]).arg(model).arg("-f").arg(&text).arg("-o").arg(&ours).args(opts);
    let o = heavy::output(&mut cmd, "ferrite imatrix", heavy::LIMIT);
    if !o.status.success() {
        return Err(format!("ferrite imatrix {name} {opts:?}: {}", String::from_utf8_lossy(&o.stderr)));
    }
    let mut cmd = Command::new(bin.join("llama-imatrix"));
    cmd.env("LD_LIBRARY_PATH", &bin).args(["-t", "2", "-m"]).arg(model).arg("-f").arg(&text).arg("-o").arg(&theirs).args(opts);
    let o = heavy::output(&mut cmd, "llama-imatrix", heavy::LIMIT);
    assert!(o.status.success(), "llama-imatrix {name} {opts:?}: {}", String::from_utf8_lossy(&o.stderr));
    let (x, y) = (std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap());
    if x.len() != y.len() {
        return Err(format!("{name} {opts:?}: {} bytes, llama-imatrix's {}", x.len(), y.len()));
    }
    if let Some(at) = x.iter().zip(&y).position(|(a, b)| a != b) {
        return Err(format!("{name} {opts:?}: differs first at byte {at} of {}", x.len()));
    }
    Ok(())
}

#[test]
fn matrices_equal_llama_imatrix() {
    let mut differ = Vec::new();
    // 3 chunks of 512 in one batch: shares of 170 tokens, then a last share of 2 (6 rows: under
    // llama-imatrix's 16-row floor, so not collected)
    let smollm2 = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    differ.extend(same_matrix(&smollm2, &["--chunks", "3"]).err());
    // mixtures of experts (mul_mat_id, per-expert counts) and dense tiny models, with the output
    for (m, opts) in [
        ("tiny-qwen3moe", &["-c", "64", "--chunks", "5"][..]),
        ("tiny-llama-moe", &["-c", "64", "--chunks", "5"]),
        ("tiny-gemma3", &["-c", "64", "--chunks", "5", "--process-output"]),
        ("tiny-llama", &["-c", "128", "-b", "128", "--chunks", "3"]),
    ] {
        let model = tiny(m);
        assert!(model.is_file(), "{} is missing: scripts/test.sh makes the tiny models", model.display());
        differ.extend(same_matrix(&model, opts).err());
    }
    assert!(differ.is_empty(), "importance matrices differ from llama-imatrix's:\n{}", differ.join("\n"));
}

#[test]
fn bad_requests_are_one_line_errors() {
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = model.to_str().unwrap();
    let short = scratch("short.txt");
    std::fs::write(&short, "Too short a text.").unwrap();
    let text = reference("GPL-3.txt");
    let t = text.to_str().unwrap();
    for (args, needle) in [
        (vec!["-m", m, "-f", short.to_str().unwrap(), "-o", "/tmp/never.gguf"], "need at least 1024"),
        (vec!["-m", m, "-f", t, "-o", m], "overwrite the model"),
        (vec!["-m", m, "-f", t, "-o", "/dev/null"], "not a regular file"),
        (vec!["-m", m, "-f", "/dev/zero", "-o", "/tmp/never.gguf"], "/dev/zero"),
        (vec!["-m", m, "-f", t, "-c", "512", "-b", "600", "-o", "/tmp/never.gguf"], "multiple"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["imatrix", "-q"]).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(!Path::new("/tmp/never.gguf").exists());
}
