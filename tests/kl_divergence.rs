//! `ferrite perplexity --kl-divergence-base / --kl-divergence` against llama-perplexity built on
//! this machine: smollm2 Q4_1 is the base, the same model requantized to Q8_0 the model compared.
//! The statistics agree (mean KLD within 1 %, same-top-p within 0.005), each tool reads the
//! other's base file, and damaged base files are one-line errors.

mod heavy;
mod paths;

use paths::{how_to_get_llamacpp, llamacpp_bin, reference, root};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHUNKS: &str = "4";

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrite-kld-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn base_model() -> PathBuf {
    root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn ferrite(args: &[&str], what: &str) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(args);
    heavy::output(&mut cmd, what, heavy::LIMIT)
}

fn run_llama_perplexity(bin: &Path, args: &[&str], what: &str) -> String {
    let mut cmd = Command::new(bin.join("llama-perplexity"));
    cmd.env("LD_LIBRARY_PATH", bin).args(args);
    let o = heavy::output(&mut cmd, what, heavy::LIMIT);
    let all = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{what}: {all}");
    all
}

/// A value from llama-perplexity's report line "LABEL: value ± err".
fn stat(report: &str, label: &str) -> f64 {
    // llama.cpp's log lines may carry a time stamp before the label
    let line = report
        .lines()
        // the last: the progress table's header names some labels too
        .rev()
        .find_map(|l| l.find(label).map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no {label:?} in llama-perplexity's report:\n{report}"));
    let v = line[label.len()..].trim_start_matches([' ', ':']).split_whitespace().next().unwrap();
    v.trim_end_matches('%').parse().unwrap()
}

/// ferrite's comparison of `model` with `base`, as JSON.
fn ferrite_kld(model: &Path, base: &Path) -> serde_json::Value {
    let (m, b) = (model.to_str().unwrap(), base.to_str().unwrap());
    let o = ferrite(&["perplexity", "-m", m, "--kl-divergence-base", b, "--kl-divergence", "-t", "2", "--json"], "ferrite --kl-divergence");
    assert!(o.status.success(), "ferrite --kl-divergence: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn assert_close(what: &str, have: &serde_json::Value, report: &str) {
    let kld = have["kld"]["value"].as_f64().unwrap();
    let top = have["same_top_p"]["value"].as_f64().unwrap();
    let (want_kld, want_top) = (stat(report, "Mean    KLD"), stat(report, "Same top p") / 100.0);
    eprintln!("{what}: mean KLD {kld:.6} (llama-perplexity {want_kld:.6}), same top p {top:.5} ({want_top:.5})");
    assert!((kld - want_kld).abs() <= 0.01 * want_kld, "{what}: mean KLD {kld} vs llama-perplexity's {want_kld}");
    assert!((top - want_top).abs() <= 0.005, "{what}: same top p {top} vs llama-perplexity's {want_top}");
    let ppl = have["ppl"]["value"].as_f64().unwrap();
    let want_ppl = stat(report, "Mean PPL(Q)  ");
    assert!((ppl - want_ppl).abs() <= 1e-3 * want_ppl, "{what}: PPL(Q) {ppl} vs {want_ppl}");
}

#[test]
fn kl_divergence_matches_llama_perplexity() {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("KL-divergence is checked against live llama.cpp only: {}", how_to_get_llamacpp()));
    let dir = scratch();
    let text = reference("GPL-3.txt");
    let (base, t) = (base_model(), text.to_str().unwrap());
    let q8 = dir.join("q8_0.gguf");
    let o = ferrite(&["quantize", "-q", "--allow-requantize", base.to_str().unwrap(), q8.to_str().unwrap(), "Q8_0", "2"], "quantize");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // the base's log-probabilities, by each tool
    let (ours, theirs) = (dir.join("base-ferrite.bin"), dir.join("base-llama.bin"));
    let o = ferrite(
        &["perplexity", "-m", base.to_str().unwrap(), "-f", t, "-c", "512", "--chunks", CHUNKS, "-t", "2", "--json"]
            .iter()
            .copied()
            .chain(["--kl-divergence-base", ours.to_str().unwrap()])
            .collect::<Vec<_>>(),
        "ferrite --kl-divergence-base",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base_ppl = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["ppl"].as_f64().unwrap();
    let report = run_llama_perplexity(
        &bin,
        &[
            "-m",
            base.to_str().unwrap(),
            "-f",
            t,
            "-c",
            "512",
            "--chunks",
            CHUNKS,
            "-t",
            "2",
            "--kl-divergence-base",
            theirs.to_str().unwrap(),
        ],
        "llama-perplexity --kl-divergence-base",
    );
    let want = stat(&report, "Final estimate: PPL =");
    assert!((base_ppl - want).abs() <= 0.5e-4 + 1e-9, "base PPL {base_ppl} vs llama-perplexity's {want}");
    let (x, y) = (std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap());
    assert_eq!(x.len(), y.len(), "base files of different sizes");
    // same header and tokens; the rows are llama.cpp's quantization of (nearly) the same logits
    let head = 20 + 4 * 512 * CHUNKS.parse::<usize>().unwrap();
    assert_eq!(x[..head], y[..head], "base file headers or tokens differ");
    let differ = x.iter().zip(&y).filter(|(a, b)| a != b).count();
    eprintln!("base files: {} bytes, {differ} differ", x.len());
    assert!(differ * 1000 <= x.len(), "{differ} of {} bytes of the base files differ", x.len());

    // the comparison: llama-perplexity's numbers, from either tool's base file
    let report = run_llama_perplexity(
        &bin,
        &["-m", q8.to_str().unwrap(), "--kl-divergence-base", theirs.to_str().unwrap(), "--kl-divergence", "-t", "2"],
        "llama-perplexity --kl-divergence",
    );
    assert_close("ferrite on llama's base", &ferrite_kld(&q8, &theirs), &report);
    let on_ours = ferrite_kld(&q8, &ours);
    assert_close("ferrite on its own base", &on_ours, &report);
    let cross = run_llama_perplexity(
        &bin,
        &["-m", q8.to_str().unwrap(), "--kl-divergence-base", ours.to_str().unwrap(), "--kl-divergence", "-t", "2"],
        "llama-perplexity on ferrite's base",
    );
    assert_close("llama-perplexity on ferrite's base", &on_ours, &cross);

    // the text report carries the same sections
    let o = ferrite(
        &["perplexity", "-m", q8.to_str().unwrap(), "--kl-divergence-base", ours.to_str().unwrap(), "--kl-divergence", "-q"],
        "text",
    );
    let text = String::from_utf8_lossy(&o.stdout);
    for label in ["Mean PPL(Q)", "Mean    KLD", "99.9%   KLD", "Median  KLD", "Same top p", "RMS Δp"] {
        assert!(text.contains(label), "no {label:?} in:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_base_files_are_refused() {
    let dir = scratch().join("damaged");
    std::fs::create_dir_all(&dir).unwrap();
    let m = base_model();
    let ms = m.to_str().unwrap();
    let mut header = b"_logits_".to_vec();
    for v in [512i32, 49152, 1] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-base", b"GGUF and more".to_vec(), "not a file of base log-probabilities"),
        ("truncated", [header.clone(), vec![0u8; 100]].concat(), "truncated or damaged"),
        (
            "vocab",
            {
                let mut h = b"_logits_".to_vec();
                for v in [8i32, 7, 1] {
                    h.extend_from_slice(&v.to_le_bytes());
                }
                let nv = 2 * 4 + 4;
                [h, vec![0u8; 8 * 4], vec![0u8; 3 * nv * 2]].concat()
            },
            "this model has 49152",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let o = ferrite(&["perplexity", "-m", ms, "--kl-divergence-base", p.to_str().unwrap(), "--kl-divergence", "-q"], name);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want) && err.lines().count() == 1, "{name}: {err}");
    }
    for special in ["/dev/zero", "/dev/null"] {
        let o = ferrite(&["perplexity", "-m", ms, "--kl-divergence-base", special, "--kl-divergence", "-q"], special);
        assert_eq!(o.status.code(), Some(2), "{special}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // the base is written only over a regular file, never over the model
    let o = ferrite(
        &["perplexity", "-m", ms, "-f", reference("GPL-3.txt").to_str().unwrap(), "--kl-divergence-base", ms, "-q"],
        "over the model",
    );
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ferrite(&["perplexity", "-m", ms, "--kl-divergence"], "no base");
    assert_eq!(o.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
