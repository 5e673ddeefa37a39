//! Parity with llama.cpp on the tiny random-weight models of every supported architecture
//! (`../shared/tools/tiny_models.py`), through the real binary, flash attention on and off.
//!
//! Seed 1234 is checked against the shared reference (`../shared/reference/tiny-reference.json`);
//! other seeds against goldens recorded on this project's machines with llama.cpp's
//! `tiny_reference.py` (`tests/golden/tiny/seed-N.json`), so the checks do not hang on one seed.
//! `scripts/test.sh` makes the models: `$FERRITE_TINY_MODELS` (seed 1234) and
//! `target/tiny-models-seedN`. A model file whose SHA-256 differs from its reference fails the test
//! (the reference would not apply to it).

mod heavy;
mod paths;

use paths::shared;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where llama.cpp disagrees with itself (`llama-q8-0`, flash attention off, differs from its own
/// default on these weights) only the first step is compared, within this tolerance.
const SELF_DISAGREEING_LOGIT_TOLERANCE: f64 = 0.1;
const LOGIT_TOLERANCE: f64 = 1e-2;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().expect("sha256sum runs");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn run(model: &Path, prompt: &str, n: u64, fa: &str) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(["run", "--raw", "--temp", "0", "-n", &n.to_string(), "-c", "1024", "-t", "2", "--json", "--top-logits", "5"])
        .args(["--flash-attn", fa, "-m"])
        .arg(model)
        .arg(prompt);
    let o = heavy::output(&mut cmd, &format!("ferrite run {} {prompt:?}", model.display()), heavy::LIMIT);
    assert!(o.status.success(), "ferrite failed on {} {prompt:?}: {}", model.display(), String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn top5(v: &Value) -> Vec<(u64, f64)> {
    v.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect()
}

fn close(a: &[(u64, f64)], b: &[(u64, f64)], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() <= tol)
}

/// Runs every model and prompt of a tiny reference against the models in `dir`.
fn check_reference(reference: &Path, dir: &Path) {
    let text = std::fs::read_to_string(reference).unwrap_or_else(|e| panic!("{}: {e}", reference.display()));
    let r: Value = serde_json::from_str(&text).unwrap();
    let models = r["models"].as_object().unwrap();
    assert!(models.len() >= 9, "{}: {} models", reference.display(), models.len());
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, m) in models {
        let file = dir.join(m["file"].as_str().unwrap());
        assert!(file.is_file(), "{} is missing: scripts/test.sh makes the tiny models", file.display());
        assert_eq!(sha256(&file), m["sha256"].as_str().unwrap(), "{} is not the model {} was recorded on", file.display(), reference.display());
        for (key, fa) in [("greedy", "on"), ("greedy_flash_attn_off", "off")] {
            for case in m[key].as_array().unwrap() {
                count += 1;
                let prompt = case["prompt"].as_str().unwrap();
                let got = run(&file, prompt, case["n_predict"].as_u64().unwrap(), fa);
                let (want_top, have_top) = (top5(&case["first_top5"]), top5(&got["first_top_logits"]));
                if name == "llama-q8-0" && fa == "off" {
                    if !close(&have_top, &want_top, SELF_DISAGREEING_LOGIT_TOLERANCE) {
                        failures.push(format!("{name} fa={fa} {prompt:?}: top-5 {have_top:?} vs {want_top:?}"));
                    }
                    continue;
                }
                let mut have = got["tokens"].as_array().unwrap().clone();
                have.extend(got.get("stop_token").cloned());
                if Value::Array(have) != case["generated_ids"] {
                    failures.push(format!("{name} fa={fa} {prompt:?}: ids {} vs llama.cpp {}", got["tokens"], case["generated_ids"]));
                } else if !close(&have_top, &want_top, LOGIT_TOLERANCE) {
                    failures.push(format!("{name} fa={fa} {prompt:?}: top-5 {have_top:?} vs {want_top:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {count} tiny cases differ from llama.cpp ({}):\n{}", failures.len(), reference.display(), failures.join("\n"));
    eprintln!("{count} tiny cases match llama.cpp ({})", reference.display());
}

#[test]
fn tiny_models_seed_1234_match_shared_reference() {
    let dir = std::env::var_os("FERRITE_TINY_MODELS").map(PathBuf::from).unwrap_or_else(|| root().join("target/tiny-models"));
    check_reference(&shared().join("reference/tiny-reference.json"), &dir);
}

#[test]
fn tiny_models_seed_7_match_llamacpp() {
    check_reference(&root().join("tests/golden/tiny/seed-7.json"), &root().join("target/tiny-models-seed7"));
}

#[test]
fn tiny_models_seed_99_match_llamacpp() {
    check_reference(&root().join("tests/golden/tiny/seed-99.json"), &root().join("target/tiny-models-seed99"));
}
