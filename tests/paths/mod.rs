//! Where the integration tests find llama.cpp's answers: the reference data carried in the
//! repository (`tests/golden/`), the goldens of this machine's CPU class, and llama.cpp built on
//! this machine (`$FERRITE_LLAMACPP_BIN`, set by `scripts/test.sh` from
//! `scripts/build-llamacpp.sh`).
//!
//! Everything resolves inside the checkout: a clone needs nothing beside it (the project's
//! `../shared` folder, where one exists, is never read by the tests).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The checkout's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of llama.cpp's reference data (`tests/golden/reference/NAME`): its answers for the two
/// test models (`llamacpp-reference.json`) and the perplexity text (`GPL-3.txt`).
pub fn reference(name: &str) -> PathBuf {
    let p = root().join("tests/golden/reference").join(name);
    assert!(p.is_file(), "{} is missing from the checkout", p.display());
    p
}

/// The class of vector units llama.cpp's numbers depend on, naming the goldens to fall back on:
/// `avx512` where the CPU has AVX-512F, else `avx2`. `$FERRITE_CPU_CLASS` overrides it, for a
/// rehearsal of an AVX2-only machine on an AVX-512 one (`FERRITE_CPU_CLASS=avx2 scripts/test.sh`
/// builds ferrite and llama.cpp for AVX2 only).
pub fn cpu_class() -> &'static str {
    match std::env::var("FERRITE_CPU_CLASS").as_deref() {
        Ok("avx2") => return "avx2",
        Ok("avx512") => return "avx512",
        Ok("") | Err(_) => {}
        Ok(other) => panic!("FERRITE_CPU_CLASS={other}: expected avx2 or avx512"),
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if info.split_whitespace().any(|f| f == "avx512f") {
        "avx512"
    } else {
        "avx2"
    }
}

/// llama.cpp's binaries built on this machine, when `$FERRITE_LLAMACPP_BIN` names them. A value
/// that does not hold `greedy_ref` fails the test: a wrong path must not quietly turn the live
/// comparison into the golden one.
pub fn llamacpp_bin() -> Option<PathBuf> {
    let bin = PathBuf::from(std::env::var_os("FERRITE_LLAMACPP_BIN").filter(|v| !v.is_empty())?);
    assert!(
        bin.join("greedy_ref").is_file(),
        "FERRITE_LLAMACPP_BIN={} holds no greedy_ref: build llama.cpp with scripts/build-llamacpp.sh \
         (it prints the folder to use), or unset it to compare with the goldens",
        bin.display()
    );
    Some(bin)
}

/// What to tell a developer who has neither llama.cpp built nor a golden for this CPU class.
pub fn how_to_get_llamacpp() -> String {
    format!(
        "build llama.cpp on this machine and point the tests at it: \
         `export FERRITE_LLAMACPP_BIN=$(scripts/build-llamacpp.sh | tail -n 1)` (scripts/test.sh does this), \
         or record this CPU class's golden ({}) on such a machine",
        cpu_class()
    )
}

/// `greedy_ref MODEL PROMPT N` from `bin`: llama.cpp's prompt ids, greedy ids and first-step top-5
/// logits (settings through `REF_*` variables, which the caller adds).
pub fn greedy_ref(bin: &Path, model: &Path, prompt: &str, n_predict: u64) -> Command {
    let mut cmd = Command::new(bin.join("greedy_ref"));
    cmd.arg(model).arg(prompt).arg(n_predict.to_string()).env("LD_LIBRARY_PATH", bin);
    cmd
}

/// The JSON object greedy_ref prints as its last line.
pub fn greedy_ref_answer(stdout: &[u8], what: &str) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().last().unwrap_or_else(|| panic!("{what}: greedy_ref printed nothing"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{what}: greedy_ref printed {last:?}: {e}"))
}
