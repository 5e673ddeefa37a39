//! `ferrite info --json` on the two test models: the values the foundation issue names, read
//! through the real binary.

use serde_json::Value;
use std::process::Command;

fn info(model: &str) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["info", "--json", "-m", model]).output().unwrap();
    assert!(o.status.success(), "ferrite info -m {model}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[allow(clippy::too_many_arguments)] // one row of the expected table
fn check(model: &str, arch: &str, n_layer: u64, n_embd: u64, n_head: u64, n_head_kv: u64, n_vocab: u64, tensors: u64) {
    let v = info(model);
    assert_eq!(v["architecture"], arch, "{model}");
    let got: Vec<u64> = ["n_layer", "n_embd", "n_head", "n_head_kv", "n_vocab", "tensors"].iter().map(|k| v[k].as_u64().unwrap()).collect();
    assert_eq!(
        got,
        [n_layer, n_embd, n_head, n_head_kv, n_vocab, tensors],
        "{model}: n_layer, n_embd, n_head, n_head_kv, n_vocab, tensors"
    );
}

#[test]
fn smollm2_info() {
    check("smollm2", "llama", 30, 576, 9, 3, 49152, 272);
}

#[test]
fn gemma3_info() {
    let v = info("gemma3");
    check("gemma3", "gemma3", 18, 640, 4, 1, 262144, 236);
    assert_eq!(v["n_embd_head_k"], 256, "gemma3's head size comes from attention.key_length");
}

#[test]
fn info_table_goes_to_stdout_and_names_the_architecture() {
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["info", "-m", "gemma3"]).output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("gemma3"));
}
