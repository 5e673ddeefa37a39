//! Parity with llama.cpp on the tiny random-weight models of every supported architecture
//! (`scripts/tiny-models.py`, seeds 1234, 7 and 99), through the real binary, flash attention on
//! and off.
//!
//! llama.cpp's answers depend on the CPU's vector units (on an AVX2-only machine 1, 3 and 3 of the
//! 72 cases of the three seeds differ from those recorded on AVX-512, while ferrite equals
//! llama.cpp built there), so the truth is llama.cpp on the same machine: with
//! `$FERRITE_LLAMACPP_BIN` (set by `scripts/test.sh`, which builds llama.cpp with
//! `scripts/build-llamacpp.sh`) every case is computed live with its `greedy_ref`. Without it the
//! expectation is the golden of this CPU class, `tests/golden/tiny/<class>/seed-N.json` (recorded
//! with `scripts/tiny-reference.py`), checked against the models' SHA-256; without either the test
//! fails, saying how to get one. The cases (models, prompts, lengths) are those of the golden of
//! this class, else of the avx512 one, which the repository always holds.
//!
//! `scripts/test.sh` makes the models: `$FERRITE_TINY_MODELS` (seed 1234, default
//! `target/tiny-models`) and `target/tiny-models-seedN`.

mod heavy;
mod paths;

use paths::{cpu_class, llamacpp_bin, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where llama.cpp disagrees with itself (`llama-q8-0`, flash attention off, differs from its own
/// default on these weights) only the first step is compared, within this tolerance.
const SELF_DISAGREEING_LOGIT_TOLERANCE: f64 = 0.1;
const LOGIT_TOLERANCE: f64 = 1e-2;
/// The settings of each golden key: ferrite's `--flash-attn` and greedy_ref's `REF_FLASH_ATTN`.
const SETTINGS: [(&str, &str); 2] = [("greedy", "on"), ("greedy_flash_attn_off", "off")];

fn models_dir(seed: u64) -> PathBuf {
    match seed {
        1234 => std::env::var_os("FERRITE_TINY_MODELS").map(PathBuf::from).unwrap_or_else(|| root().join("target/tiny-models")),
        _ => root().join(format!("target/tiny-models-seed{seed}")),
    }
}

fn golden_path(class: &str, seed: u64) -> PathBuf {
    root().join(format!("tests/golden/tiny/{class}/seed-{seed}.json"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// llama.cpp's answer for one case, computed now on this machine.
fn live(bin: &Path, model: &Path, prompt: &str, n: u64, fa: &str) -> Value {
    let mut cmd = paths::greedy_ref(bin, model, prompt, n);
    if fa == "off" {
        cmd.env("REF_FLASH_ATTN", "off");
    }
    let what = format!("greedy_ref {} {prompt:?} (flash attention {fa})", model.display());
    let o = heavy::output(&mut cmd, &what, heavy::LIMIT);
    assert!(o.status.success(), "{what} failed: {}", String::from_utf8_lossy(&o.stderr));
    paths::greedy_ref_answer(&o.stdout, &what)
}

fn top5(v: &Value) -> Vec<(u64, f64)> {
    v.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect()
}

fn close(a: &[(u64, f64)], b: &[(u64, f64)], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() <= tol)
}

/// Runs every model and prompt of one seed against llama.cpp: live when it is built here, else
/// the golden of this CPU class.
fn check_seed(seed: u64) {
    let dir = models_dir(seed);
    let class = cpu_class();
    let own = golden_path(class, seed);
    let bin = llamacpp_bin();
    let (book_path, source) = match (&bin, own.is_file()) {
        (Some(b), _) => {
            let book = if own.is_file() { own.clone() } else { golden_path("avx512", seed) };
            (book, format!("llama.cpp live from {}", b.display()))
        }
        (None, true) => (own.clone(), format!("golden {}", own.display())),
        (None, false) => panic!(
            "seed {seed}: FERRITE_LLAMACPP_BIN is unset and there is no golden for CPU class {class} ({}): {}",
            own.display(),
            paths::how_to_get_llamacpp()
        ),
    };
    let book = read_json(&book_path);
    let models = book["models"].as_object().unwrap();
    assert!(models.len() >= 9, "{}: {} models", book_path.display(), models.len());
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, m) in models {
        let file = dir.join(m["file"].as_str().unwrap());
        assert!(file.is_file(), "{} is missing: scripts/test.sh makes the tiny models (scripts/tiny-models.py)", file.display());
        if bin.is_none() {
            // a golden holds llama.cpp's answers for exactly these bytes
            assert_eq!(
                sha256(&file),
                m["sha256"].as_str().unwrap(),
                "{} is not the model {} was recorded on",
                file.display(),
                book_path.display()
            );
        }
        for (key, fa) in SETTINGS {
            for case in m[key].as_array().unwrap() {
                count += 1;
                let prompt = case["prompt"].as_str().unwrap();
                let n = case["n_predict"].as_u64().unwrap();
                let want = match &bin {
                    Some(b) => live(b, &file, prompt, n, fa),
                    None => case.clone(),
                };
                let got = run(&file, prompt, n, fa);
                let (want_top, have_top) = (top5(&want["first_top5"]), top5(&got["first_top_logits"]));
                if name == "llama-q8-0" && fa == "off" {
                    if !close(&have_top, &want_top, SELF_DISAGREEING_LOGIT_TOLERANCE) {
                        failures.push(format!("{name} fa={fa} {prompt:?}: top-5 {have_top:?} vs {want_top:?}"));
                    }
                    continue;
                }
                // llama.cpp lists the end-of-generation token it sampled; ferrite reports it apart
                let mut have = got["tokens"].as_array().unwrap().clone();
                have.extend(got.get("stop_token").cloned());
                if Value::Array(have) != want["generated_ids"] {
                    failures.push(format!("{name} fa={fa} {prompt:?}: ids {} vs llama.cpp {}", got["tokens"], want["generated_ids"]));
                } else if !close(&have_top, &want_top, LOGIT_TOLERANCE) {
                    failures.push(format!("{name} fa={fa} {prompt:?}: top-5 {have_top:?} vs {want_top:?}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {count} tiny cases differ from llama.cpp ({source}, CPU class {class}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("seed {seed}: {count} tiny cases match llama.cpp ({source}, CPU class {class})");
}

#[test]
fn tiny_models_seed_1234_match_llamacpp() {
    check_seed(1234);
}

#[test]
fn tiny_models_seed_7_match_llamacpp() {
    check_seed(7);
}

#[test]
fn tiny_models_seed_99_match_llamacpp() {
    check_seed(99);
}

/// Every class's goldens describe the same cases: the same model bytes, prompts and lengths as
/// the avx512 ones (only llama.cpp's answers may differ between classes), so a golden recorded
/// on other models cannot pass for this seed's.
#[test]
fn tiny_goldens_of_every_class_hold_the_same_cases() {
    let dir = root().join("tests/golden/tiny");
    let mut classes = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let class = entry.unwrap().file_name().into_string().unwrap();
        assert!(["avx2", "avx512"].contains(&class.as_str()), "{}: unknown CPU class {class}", dir.display());
        classes += 1;
        for seed in [1234, 7, 99] {
            let (a, b) = (golden_path("avx512", seed), golden_path(&class, seed));
            if !b.is_file() {
                continue;
            }
            let (a, b) = (read_json(&a), read_json(&b));
            assert_eq!(a["prompts"], b["prompts"], "{class} seed {seed}: prompts");
            let (ma, mb) = (a["models"].as_object().unwrap(), b["models"].as_object().unwrap());
            assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>(), "{class} seed {seed}: models");
            for (name, m) in ma {
                assert_eq!(m["sha256"], mb[name]["sha256"], "{class} seed {seed} {name}: model bytes");
                for (key, _) in SETTINGS {
                    let cases = |m: &Value| {
                        m[key]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|c| (c["prompt"].clone(), c["n_predict"].clone(), c["prompt_ids"].clone()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(cases(m), cases(&mb[name]), "{class} seed {seed} {name} {key}: cases");
                }
            }
        }
    }
    assert!(golden_path("avx512", 1234).is_file() && classes >= 1, "the avx512 goldens are the tiny tests' case book");
}
