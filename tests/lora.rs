//! LoRA adapters against llama.cpp on this machine: adapters made by `scripts/make-lora.py`
//! (random low-rank A and B in llama.cpp's GGUF adapter format), greedy ids of `ferrite run
//! --lora/--lora-scaled` equal to llama.cpp's (`greedy_ref` with `REF_LORA`) at scale 1, at 0.5
//! and with two adapters combined, on both models and a tiny model of another architecture, and
//! for embedding and mixture-of-experts adapters on tiny models;
//! scale 0 gives the logits of no adapter bit for bit; broken adapters are refused; `export-lora`
//! writes llama-export-lora's bytes.

mod heavy;
mod paths;

use ferrite::decoder::{ContextOptions, Decoder};
use ferrite::model::{LoadOptions, Model};
use paths::{how_to_get_llamacpp, llamacpp_bin, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

const PROMPT: &str = "The capital of France is";
const N_GEN: u64 = 24;

fn tiny_dir() -> PathBuf {
    std::env::var_os("FERRITE_TINY_MODELS").map(PathBuf::from).unwrap_or_else(|| root().join("target/tiny-models"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrite-lora-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A random adapter for `base` (see scripts/make-lora.py for the flags).
fn make_lora(base: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = scratch(name);
    let o = Command::new("python3").arg(root().join("scripts/make-lora.py")).arg(base).arg(&out).args(args).output().unwrap();
    assert!(o.status.success(), "make-lora.py: {}", String::from_utf8_lossy(&o.stderr));
    out
}

fn ferrite_ids(model: &Path, lora: &[&str]) -> Vec<u64> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(["run", "--raw", "--json", "--temp", "0", "-t", "2", "-c", "1024", "-n", &N_GEN.to_string(), "-m"])
        .arg(model)
        .args(lora)
        .arg(PROMPT);
    let o = heavy::output(&mut cmd, "ferrite run --lora", heavy::LIMIT);
    assert!(o.status.success(), "ferrite run {lora:?}: {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

fn llamacpp_ids(model: &Path, spec: &str) -> Vec<u64> {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("LoRA is checked against live llama.cpp only: {}", how_to_get_llamacpp()));
    let mut cmd = paths::greedy_ref(&bin, model, PROMPT, N_GEN);
    cmd.env("REF_LORA", spec).env("REF_N_CTX", "1024").env("REF_SWA_FULL", "off");
    let o = heavy::output(&mut cmd, "greedy_ref", heavy::LIMIT);
    assert!(o.status.success(), "greedy_ref REF_LORA={spec}: {}", String::from_utf8_lossy(&o.stderr));
    let v = paths::greedy_ref_answer(&o.stdout, "greedy_ref");
    v["generated_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

/// One model: an adapter at scale 1 and 0.5, two combined (F32 with alpha, F16 without), each
/// equal to llama.cpp's greedy ids and different from the base's.
fn check_model(model: &Path, tag: &str, targets: (&str, &str)) {
    let a = make_lora(model, &format!("{tag}-a.gguf"), &["--seed", "1", "--rank", "8", "--alpha", "16", "--targets", targets.0]);
    let b = make_lora(
        model,
        &format!("{tag}-b.gguf"),
        &["--seed", "2", "--rank", "4", "--alpha", "0", "--type", "f16", "--targets", targets.1],
    );
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let base = ferrite_ids(model, &[]);
    for (flags, spec) in [
        (vec!["--lora", a], a.to_string()),
        (vec!["--lora-scaled", &format!("{a}:0.5")], format!("{a}:0.5")),
        (vec!["--lora-scaled", &format!("{a}:0.5,{b}:0.7")], format!("{a}:0.5,{b}:0.7")),
    ] {
        let ours = ferrite_ids(model, &flags);
        assert_eq!(ours, llamacpp_ids(model, &spec), "{tag} {spec}: greedy ids differ from llama.cpp's");
        assert_ne!(ours, base, "{tag} {spec}: the adapter changes nothing (too small to test with)");
    }
}

#[test]
fn smollm2_adapters_match_llamacpp() {
    check_model(&root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2", ("attn_q,attn_v,ffn_up", "attn_output,ffn_down"));
}

#[test]
fn gemma3_adapters_match_llamacpp() {
    check_model(
        &root().join("models/gemma-3-270m-q4_k_m.gguf"),
        "gemma3",
        ("attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_down", "ffn_up,attn_q"),
    );
}

#[test]
fn tiny_qwen2_adapters_match_llamacpp() {
    let model = tiny_dir().join("tiny-qwen2.gguf");
    assert!(model.is_file(), "{} is missing: scripts/test.sh makes the tiny models", model.display());
    check_model(&model, "qwen2", ("attn_q,attn_k,attn_v,ffn_gate", "attn_output,ffn_up,ffn_down"));
}

/// An embedding adapter (llama.cpp's transposed pair, looked up by token) on a model with its
/// own output head, and adapters of a mixture's experts (3-D, one pair per expert): greedy ids
/// equal llama.cpp's, alone and with a 2-D adapter beside them. On a model whose output head is
/// the embedding, an embedding adapter is refused (llama.cpp aborts there).
#[test]
fn embedding_and_expert_adapters_match_llamacpp() {
    for (model, targets, other) in
        [("tiny-llama.gguf", "token_embd", "attn_q,ffn_up"), ("tiny-llama-moe.gguf", "ffn_up_exps,ffn_down_exps,ffn_gate_exps", "attn_v")]
    {
        let path = tiny_dir().join(model);
        assert!(path.is_file(), "{} is missing: scripts/test.sh makes the tiny models", path.display());
        let a = make_lora(
            &path,
            &format!("{model}-special.gguf"),
            &["--seed", "7", "--rank", "4", "--alpha", "8", "--magnitude", "0.3", "--targets", targets],
        );
        let b = make_lora(&path, &format!("{model}-plain.gguf"), &["--seed", "8", "--rank", "4", "--targets", other]);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        let base = ferrite_ids(&path, &[]);
        for (flags, spec) in
            [(vec!["--lora-scaled", &format!("{a}:0.7")], format!("{a}:0.7")), (vec!["--lora", &format!("{a},{b}")], format!("{a},{b}"))]
        {
            let ours = ferrite_ids(&path, &flags);
            assert_eq!(ours, llamacpp_ids(&path, &spec), "{model} {spec}: greedy ids differ from llama.cpp's");
            assert_ne!(ours, base, "{model} {spec}: the adapter changes nothing");
        }
    }
    let smollm2 = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tied = make_lora(&smollm2, "tied-embd.gguf", &["--targets", "token_embd"]);
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["run", "-n", "2", "-m"])
        .arg(&smollm2)
        .arg("--lora")
        .arg(&tied)
        .arg("hi")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("tied"), "{err}");
}

/// Scale 0 is exactly no adapter: the same logits bit for bit (the adapter is still checked).
#[test]
fn scale_zero_is_no_adapter_bit_for_bit() {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let a = make_lora(&path, "zero.gguf", &["--seed", "5"]);
    let logits = |loras: Vec<(PathBuf, f32)>, fuse: bool| {
        let m = Rc::new(Model::load(&path, LoadOptions { fuse, ..Default::default() }, &mut |_, _| {}).unwrap());
        let mut d = Decoder::new(m, &ContextOptions { n_ctx: 256, n_threads: 2, loras, ..Default::default() }).unwrap();
        let mut out = Vec::new();
        d.decode(&[504, 3575, 282, 4649, 314], 0, &[4], &mut out).unwrap();
        out
    };
    let plain = logits(vec![], true);
    let zero = logits(vec![(a.clone(), 0.0)], false);
    assert!(plain.iter().zip(&zero).all(|(x, y)| x.to_bits() == y.to_bits()), "scale 0 changed the logits");
    let one = logits(vec![(a, 1.0)], false);
    assert!(plain.iter().zip(&one).any(|(x, y)| x != y), "scale 1 changed nothing");
}

/// Adapters that do not fit their model are refused with a clear one-line error (exit 2).
#[test]
fn broken_adapters_are_refused() {
    let smollm2 = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let gemma3 = root().join("models/gemma-3-270m-q4_k_m.gguf");
    let other_arch = make_lora(&gemma3, "other-arch.gguf", &["--targets", "attn_q"]);
    let not_an_adapter = smollm2.clone();
    let garbage = scratch("garbage.gguf");
    std::fs::write(&garbage, b"GGUF\x03\0\0\0 not really").unwrap();
    for (file, needle) in [
        (other_arch.as_path(), "general.architecture"),
        (not_an_adapter.as_path(), "general.type"),
        (garbage.as_path(), "garbage.gguf"),
        (Path::new("/nonexistent/adapter.gguf"), "adapter.gguf"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(["run", "--raw", "-n", "2", "-t", "2", "-m"])
            .arg(&smollm2)
            .arg("--lora")
            .arg(file)
            .arg(PROMPT)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", file.display());
        assert!(err.contains(needle), "{}: {err}", file.display());
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["run", "-m"])
        .arg(&smollm2)
        .args(["--lora-scaled", "x.gguf", "hi"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("FILE:SCALE"));
}

/// `info --lora` checks an adapter against the model and counts its memory.
#[test]
fn info_reports_adapters() {
    let smollm2 = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let a = make_lora(&smollm2, "info.gguf", &["--rank", "4", "--targets", "attn_q"]);
    let o =
        Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["info", "--json", "-m"]).arg(&smollm2).arg("--lora").arg(&a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ad = &v["adapters"][0];
    assert_eq!(ad["weights"], 30, "{v}");
    // 30 pairs of F32: A [576, 4] and B [4, 576]
    assert_eq!(ad["bytes"], 30 * 2 * 576 * 4 * 4);
    assert_eq!(v["memory"]["adapters"], ad["bytes"]);
}

/// `ferrite export-lora` writes the same bytes as `llama-export-lora` for the same base and
/// adapters (two adapters, one scaled; a Q4_1 and a Q4_K_M base, so both dequantizations and the
/// F16 output are exercised; an embedding adapter; experts' adapters), and the merged model
/// answers.
#[test]
fn export_lora_matches_llamacpp_byte_for_byte() {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("export-lora is checked against live llama.cpp only: {}", how_to_get_llamacpp()));
    for (base, tag, targets) in [
        (root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2", "attn_q,attn_v,ffn_up"),
        (root().join("models/gemma-3-270m-q4_k_m.gguf"), "gemma3", "attn_k,attn_output,ffn_down"),
        (tiny_dir().join("tiny-llama.gguf"), "tiny-llama", "token_embd,attn_q"),
        (tiny_dir().join("tiny-llama-moe.gguf"), "tiny-llama-moe", "ffn_up_exps,ffn_down_exps"),
    ] {
        // llama-export-lora merges adapters only when they adapt the same tensors
        let a = make_lora(&base, &format!("{tag}-exp-a.gguf"), &["--seed", "3", "--rank", "8", "--alpha", "16", "--targets", targets]);
        let b = make_lora(&base, &format!("{tag}-exp-b.gguf"), &["--seed", "4", "--rank", "4", "--type", "f16", "--targets", targets]);
        let (ours, theirs) = (scratch(&format!("{tag}-merged-ferrite.gguf")), scratch(&format!("{tag}-merged-llamacpp.gguf")));
        let scaled = format!("{}:0.5", b.display());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
        cmd.args(["export-lora", "-t", "2", "-m"]).arg(&base).arg("--lora").arg(&a).args(["--lora-scaled", &scaled, "-o"]).arg(&ours);
        let o = heavy::output(&mut cmd, "ferrite export-lora", heavy::LIMIT);
        assert!(o.status.success(), "ferrite export-lora: {}", String::from_utf8_lossy(&o.stderr));
        let mut cmd = Command::new(bin.join("llama-export-lora"));
        cmd.env("LD_LIBRARY_PATH", &bin)
            .args(["-t", "2", "-m"])
            .arg(&base)
            .arg("--lora")
            .arg(&a)
            .args(["--lora-scaled", &scaled, "-o"])
            .arg(&theirs);
        let o = heavy::output(&mut cmd, "llama-export-lora", heavy::LIMIT);
        assert!(o.status.success(), "llama-export-lora: {}", String::from_utf8_lossy(&o.stderr));
        let (x, y) = (std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap());
        assert_eq!(x.len(), y.len(), "{tag}: merged files differ in size");
        if let Some(at) = x.iter().zip(&y).position(|(p, q)| p != q) {
            panic!("{tag}: merged files differ first at byte {at} of {}", x.len());
        }
        let merged = ferrite_ids(&ours, &[]);
        assert!(!merged.is_empty(), "{tag}: the merged model gives no tokens");
        for f in [ours, theirs] {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// `export-lora` never writes over the base or a special file, and needs an adapter.
#[test]
fn export_lora_refuses_bad_outputs() {
    let base = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let a = make_lora(&base, "exp-bad.gguf", &["--rank", "2", "--targets", "attn_q"]);
    for (out, lora, needle) in [
        (Path::new("/dev/full"), true, "not a regular file"),
        (base.as_path(), true, "overwrite the base"),
        (Path::new("/nonexistent/dir/x.gguf"), true, "cannot write"),
        (Path::new("/tmp/never-written.gguf"), false, "at least one adapter"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
        cmd.args(["export-lora", "-m"]).arg(&base).arg("-o").arg(out);
        if lora {
            cmd.arg("--lora").arg(&a);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", out.display());
        assert!(err.contains(needle), "{}: {err}", out.display());
    }
    assert!(Path::new("/dev/full").exists());
}
