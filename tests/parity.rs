//! Parity with llama.cpp on the two test models, through the real binary: greedy generations and
//! first-step top-5 logits in three settings, and perplexity on the reference text.
//!
//! llama.cpp's own numbers depend on the CPU's vector units (an AVX2 machine and an AVX-512
//! machine give different logits, and so different greedy continuations for some prompts; even
//! two AVX-512 machines can differ on a prompt), so the truth is llama.cpp on the same machine:
//! with `$FERRITE_LLAMACPP_BIN` (set by `scripts/test.sh`, which builds llama.cpp from the same
//! ggml sources with `scripts/build-llamacpp.sh`) the expected answers are computed live with its
//! `greedy_ref`; without it they come from the golden of this CPU class,
//! `tests/golden/greedy/<class>.json`, recorded with `greedy_ref` by
//! `scripts/make-greedy-golden.py`. Without either the test fails, saying how to get one. The
//! prompts are those of the goldens: the reference's six and twelve of ours. Perplexity likewise:
//! llama-perplexity run live, else the reference's value. The reference data
//! (`llamacpp-reference.json`, the perplexity text) is carried in the repository,
//! `tests/golden/reference/`.

mod heavy;
mod paths;

use paths::{cpu_class, llamacpp_bin, reference, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const LOGIT_TOLERANCE: f64 = 1e-2;
const PPL_RELATIVE_TOLERANCE: f64 = 0.005;

fn model_file(key: &str) -> PathBuf {
    let f = match key {
        "smollm2-135m-instruct-q4_1" => "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma3-270m-q4_k_m" => "models/gemma-3-270m-q4_k_m.gguf",
        _ => panic!("unknown model key {key}"),
    };
    let p = root().join(f);
    assert!(p.is_file(), "{} is missing: run models/fetch.sh (scripts/test.sh does)", p.display());
    p
}

fn llamacpp_reference() -> Value {
    let p = reference("llamacpp-reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The flags of one reference setting, for ferrite and for greedy_ref.
fn setting(key: &str) -> (&'static [&'static str], &'static [(&'static str, &'static str)]) {
    match key {
        "greedy" => (&[], &[]),
        "greedy_flash_attn_off" => (&["--flash-attn", "off"], &[("REF_FLASH_ATTN", "off")]),
        "greedy_cache_q8_0" => (&["--cache-type-k", "q8_0", "--cache-type-v", "q8_0"], &[("REF_CACHE_TYPE", "q8_0")]),
        _ => unreachable!(),
    }
}

/// llama.cpp's expected cases for a setting: `(model key, case)` pairs.
fn expected(key: &str) -> Vec<(String, Value)> {
    let class = cpu_class();
    let golden_path = root().join(format!("tests/golden/greedy/{class}.json"));
    let golden: Option<Value> = std::fs::read_to_string(&golden_path).ok().map(|t| serde_json::from_str(&t).unwrap());
    let Some(bin) = llamacpp_bin() else {
        let golden = golden.unwrap_or_else(|| {
            panic!(
                "no golden for CPU class {class} ({}) and FERRITE_LLAMACPP_BIN unset: {} (scripts/make-greedy-golden.py)",
                golden_path.display(),
                paths::how_to_get_llamacpp()
            )
        });
        return flatten(&golden[key]);
    };
    // Live: the prompts of the golden, through llama.cpp's greedy_ref on this machine.
    let prompts = golden
        .unwrap_or_else(|| serde_json::from_str(&std::fs::read_to_string(root().join("tests/golden/greedy/avx2.json")).unwrap()).unwrap());
    let (_, env) = setting(key);
    let mut out = Vec::new();
    for (m, case) in flatten(&prompts[key]) {
        let prompt = case["prompt"].as_str().unwrap();
        let mut cmd = paths::greedy_ref(&bin, &model_file(&m), prompt, 48);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let what = format!("greedy_ref {m} {prompt:?}");
        let o = heavy::output(&mut cmd, &what, heavy::LIMIT);
        assert!(o.status.success(), "{what} failed: {}", String::from_utf8_lossy(&o.stderr));
        let mut v = paths::greedy_ref_answer(&o.stdout, &what);
        v["prompt"] = prompt.into();
        v["n_predict"] = 48.into();
        out.push((m, v));
    }
    out
}

fn flatten(by_model: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (m, cases) in by_model.as_object().expect("setting present in golden") {
        for c in cases.as_array().unwrap() {
            out.push((m.clone(), c.clone()));
        }
    }
    out
}

fn ferrite_run(model: &Path, prompt: &str, n: usize, extra: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(["run", "--raw", "--temp", "0", "-n", &n.to_string(), "-c", "1024", "-t", "2", "--json", "--top-logits", "5"])
        .args(extra)
        .arg("-m")
        .arg(model)
        .arg(prompt);
    let o = heavy::output(&mut cmd, &format!("ferrite run {} {prompt:?}", model.display()), heavy::LIMIT);
    assert!(o.status.success(), "ferrite run failed on {prompt:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("--json output: {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

/// Checks one case; returns a description of the mismatch, if any.
fn check(m: &str, case: &Value, got: &Value) -> Option<String> {
    let prompt = case["prompt"].as_str().unwrap();
    let want = ids(&case["generated_ids"]);
    // llama.cpp lists the end-of-generation token it sampled; ferrite reports it apart
    let mut have = ids(&got["tokens"]);
    have.extend(got["stop_token"].as_u64());
    if have != want {
        let at = have.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(have.len().min(want.len()));
        return Some(format!("{m} {prompt:?}: ids differ at {at}: ferrite {have:?} llama.cpp {want:?}"));
    }
    if got["prompt_tokens"].as_u64() != Some(case["prompt_ids"].as_array().unwrap().len() as u64) {
        return Some(format!("{m} {prompt:?}: prompt length {} vs {}", got["prompt_tokens"], case["prompt_ids"]));
    }
    let top_want = case["first_top5"].as_array().unwrap();
    let top_have = got["first_top_logits"].as_array().unwrap();
    for (w, h) in top_want.iter().zip(top_have) {
        let (wi, wl) = (w[0].as_u64().unwrap(), w[1].as_f64().unwrap());
        let (hi, hl) = (h[0].as_u64().unwrap(), h[1].as_f64().unwrap());
        if wi != hi || (wl - hl).abs() > LOGIT_TOLERANCE {
            return Some(format!("{m} {prompt:?}: first-step top-5 ferrite {top_have:?} llama.cpp {top_want:?}"));
        }
    }
    None
}

fn greedy_parity(key: &str) {
    let cases = expected(key);
    assert!(cases.len() >= 2 * 16, "golden too small: {} cases", cases.len());
    let (flags, _) = setting(key);
    let mut failures = Vec::new();
    for (m, case) in &cases {
        let got = ferrite_run(&model_file(m), case["prompt"].as_str().unwrap(), case["n_predict"].as_u64().unwrap_or(48) as usize, flags);
        failures.extend(check(m, case, &got));
    }
    assert!(
        failures.is_empty(),
        "{key}: {} of {} cases differ from llama.cpp ({}):\n{}",
        failures.len(),
        cases.len(),
        cpu_class(),
        failures.join("\n")
    );
}

#[test]
fn greedy_default_matches_llamacpp() {
    greedy_parity("greedy");
}

#[test]
fn greedy_flash_attn_off_matches_llamacpp() {
    greedy_parity("greedy_flash_attn_off");
}

#[test]
fn greedy_q8_0_cache_matches_llamacpp() {
    greedy_parity("greedy_cache_q8_0");
}

/// The goldens hold the reference's prompts with its prompt ids (CPU-independent), and
/// the twelve of ours.
#[test]
fn goldens_hold_the_reference_prompts() {
    let reference = llamacpp_reference();
    for class in ["avx2", "avx512"] {
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(root().join(format!("tests/golden/greedy/{class}.json"))).unwrap()).unwrap();
        for key in ["greedy", "greedy_flash_attn_off", "greedy_cache_q8_0"] {
            let cases = flatten(&golden[key]);
            for (m, c) in flatten(&reference[key]) {
                let g = cases.iter().find(|(gm, gc)| *gm == m && gc["prompt"] == c["prompt"]);
                let (_, g) = g.unwrap_or_else(|| panic!("{class} {key} {m} {:?} missing", c["prompt"]));
                assert_eq!(g["prompt_ids"], c["prompt_ids"], "{class} {key} {m}");
            }
            for m in ["smollm2-135m-instruct-q4_1", "gemma3-270m-q4_k_m"] {
                assert!(cases.iter().filter(|(gm, _)| gm == m).count() >= 6 + 10, "{class} {key} {m}: too few prompts");
            }
        }
    }
}

fn perplexity(key: &str) -> f64 {
    let text = reference("GPL-3.txt");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(["perplexity", "-c", "512", "-t", "2", "--json", "-f"]).arg(&text).arg("-m").arg(model_file(key));
    let o = heavy::output(&mut cmd, &format!("ferrite perplexity {key}"), heavy::LIMIT);
    assert!(o.status.success(), "ferrite perplexity failed: {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["ppl"].as_f64().unwrap()
}

/// llama.cpp's perplexity for a model: llama-perplexity run now when llama.cpp is built here, else
/// the reference's (recorded on AVX-512; CPU classes differ far less than the tolerance).
fn llamacpp_perplexity(key: &str) -> f64 {
    let Some(bin) = llamacpp_bin() else {
        return llamacpp_reference()["perplexity"][key][0]["ppl"].as_f64().unwrap();
    };
    let mut cmd = Command::new(bin.join("llama-perplexity"));
    cmd.args(["-c", "512", "-t", "2", "-f"]).arg(reference("GPL-3.txt")).arg("-m").arg(model_file(key)).env("LD_LIBRARY_PATH", &bin);
    let what = format!("llama-perplexity {key}");
    let o = heavy::output(&mut cmd, &what, heavy::LIMIT);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{what} failed: {err}");
    // "Final estimate: PPL = 18.3914 +/- 0.41" (on stderr, with llama.cpp's log)
    let all = format!("{}{err}", String::from_utf8_lossy(&o.stdout));
    let line = all.lines().find(|l| l.contains("Final estimate: PPL = ")).unwrap_or_else(|| panic!("{what}: no final estimate in:\n{all}"));
    let value = line.split("PPL = ").nth(1).and_then(|r| r.split_whitespace().next());
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{what}: {line:?}"))
}

fn perplexity_parity(key: &str) {
    let want = llamacpp_perplexity(key);
    let have = perplexity(key);
    let rel = (have - want).abs() / want;
    eprintln!("{key}: perplexity ferrite {have:.4} llama.cpp {want:.4} ({:.3}%)", rel * 100.0);
    assert!(rel <= PPL_RELATIVE_TOLERANCE, "{key}: perplexity {have:.4} vs llama.cpp {want:.4}");
}

#[test]
fn perplexity_smollm2_matches_llamacpp() {
    perplexity_parity("smollm2-135m-instruct-q4_1");
}

#[test]
fn perplexity_gemma3_matches_llamacpp() {
    perplexity_parity("gemma3-270m-q4_k_m");
}

/// `ferrite batch --raw --temp 0 -np 8` over sixteen prompts of each model (two waves of eight,
/// later ones joining as earlier ones finish) gives every prompt exactly the ids of `ferrite run`
/// on that prompt alone and of llama.cpp's greedy decoder: batch invariance, end to end.
#[test]
fn batch_matches_run_and_llamacpp() {
    let cases = expected("greedy");
    let mut failures = Vec::new();
    for m in ["smollm2-135m-instruct-q4_1", "gemma3-270m-q4_k_m"] {
        let mine: Vec<&Value> = cases.iter().filter(|(k, _)| k == m).map(|(_, c)| c).take(16).collect();
        assert_eq!(mine.len(), 16, "{m}: the golden has fewer than 16 prompts");
        let jsonl: String =
            mine.iter().enumerate().map(|(i, c)| format!("{}\n", serde_json::json!({"id": i, "prompt": c["prompt"]}))).collect();
        let input = std::env::temp_dir().join(format!("ferrite-parity-batch-{}-{m}.jsonl", std::process::id()));
        std::fs::write(&input, jsonl).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
        cmd.args(["batch", "--raw", "--temp", "0", "-np", "8", "-n", "48", "-c", "1024", "-t", "2", "-q", "-f"])
            .arg(&input)
            .arg("-m")
            .arg(model_file(m));
        let o = heavy::output(&mut cmd, &format!("ferrite batch {m}"), heavy::LIMIT);
        std::fs::remove_file(&input).ok();
        assert!(o.status.success(), "ferrite batch failed: {}", String::from_utf8_lossy(&o.stderr));
        let lines: Vec<Value> = String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 16, "one output line per input line");
        for (i, (line, case)) in lines.iter().zip(&mine).enumerate() {
            assert_eq!(line["id"], i, "outputs in input order");
            let prompt = case["prompt"].as_str().unwrap();
            let mut got = ids(&line["tokens"]);
            let alone = ferrite_run(&model_file(m), prompt, 48, &[]);
            if ids(&alone["tokens"]) != got {
                failures.push(format!("{m} {prompt:?}: batch {got:?} run alone {:?}", alone["tokens"]));
            }
            // llama.cpp lists the end-of-generation token it sampled
            got.extend(alone["stop_token"].as_u64().filter(|_| line["stop_reason"] == "eos"));
            let want = ids(&case["generated_ids"]);
            if got != want {
                failures.push(format!("{m} {prompt:?}: batch {got:?} llama.cpp {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} differences ({}):\n{}", failures.len(), cpu_class(), failures.join("\n"));
}
