//! Grammar-constrained generation against llama.cpp on this machine: `ferrite run --raw --temp 0
//! --grammar-file G` gives exactly the greedy ids of llama.cpp's grammar sampler (`greedy_ref`
//! with `REF_GRAMMAR_FILE`) for the grammars in `tests/grammars/` (lists, JSON, arithmetic,
//! non-ASCII classes that tokens end inside of, `.` and negated classes, bounded repetitions,
//! whole-token elements), on both models; JSON-schema answers (`tests/schemas/`) sampled at
//! temperature 1 parse, validate and end by the grammar; broken grammars and schemas are
//! one-line errors (exit 2).

mod heavy;
mod paths;

use paths::{how_to_get_llamacpp, llamacpp_bin, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const N_GEN: u64 = 64;

/// Each grammar with a prompt that draws a long answer from the models.
const CASES: &[(&str, &str)] = &[
    ("answer.gbnf", "Is the sky blue? "),
    ("list.gbnf", "Three things to do today:\n"),
    ("json.gbnf", "A JSON object describing a cat: "),
    ("arithmetic.gbnf", "Some equations: "),
    ("unicode.gbnf", "Write a line: "),
    ("any.gbnf", "A famous book:\n"),
    ("csv.gbnf", "People as CSV:\n"),
    ("tokens.gbnf", "What is 2+2? "),
];

fn models() -> [PathBuf; 2] {
    [root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"), root().join("models/gemma-3-270m-q4_k_m.gguf")]
}

fn ferrite() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrite"))
}

/// ferrite's greedy ids under `grammar`, with the end-of-generation token if it ended on one
/// (as greedy_ref lists it).
fn ferrite_ids(model: &Path, grammar: &Path, prompt: &str) -> Vec<u64> {
    let mut cmd = ferrite();
    cmd.args(["run", "--raw", "--json", "--temp", "0", "-t", "2", "-c", "1024", "-n", &N_GEN.to_string(), "-m"])
        .arg(model)
        .arg("--grammar-file")
        .arg(grammar)
        .arg(prompt);
    let o = heavy::output(&mut cmd, "ferrite run --grammar-file", heavy::LIMIT);
    assert!(o.status.success(), "ferrite run --grammar-file {}: {}", grammar.display(), String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut ids: Vec<u64> = v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    if let Some(t) = v["stop_token"].as_u64() {
        ids.push(t);
    }
    ids
}

fn llamacpp_ids(model: &Path, grammar: &Path, prompt: &str) -> Vec<u64> {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("grammars are checked against live llama.cpp only: {}", how_to_get_llamacpp()));
    let mut cmd = paths::greedy_ref(&bin, model, prompt, N_GEN);
    cmd.env("REF_GRAMMAR_FILE", grammar).env("REF_N_CTX", "1024").env("REF_SWA_FULL", "off");
    let o = heavy::output(&mut cmd, "greedy_ref", heavy::LIMIT);
    assert!(o.status.success(), "greedy_ref REF_GRAMMAR_FILE={}: {}", grammar.display(), String::from_utf8_lossy(&o.stderr));
    let v = paths::greedy_ref_answer(&o.stdout, "greedy_ref");
    v["generated_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

#[test]
fn grammars_match_llamacpp() {
    let mut differ = Vec::new();
    for model in models() {
        for (name, prompt) in CASES {
            let g = root().join("tests/grammars").join(name);
            let ours = ferrite_ids(&model, &g, prompt);
            let theirs = llamacpp_ids(&model, &g, prompt);
            if ours != theirs {
                differ.push(format!("{name} on {}:\n  ferrite   {ours:?}\n  llama.cpp {theirs:?}", model.display()));
            }
        }
    }
    assert!(differ.is_empty(), "grammar-constrained greedy ids differ from llama.cpp's:\n{}", differ.join("\n"));
}

/// Broken grammars: exit 2 with the place named, never a panic or an unconstrained answer.
#[test]
fn broken_grammars_are_refused() {
    let model = &models()[0];
    for (grammar, needle) in [
        ("root ::= \"a\" | ", ""),
        ("root ::= [a-z", "line 1"),
        ("root ::= item\n", "'item'"),
        ("rooot ::= \"a\"", "root"),
        ("root ::= \"a\"\nx ::= x \"b\"", "left-recursive"),
        ("root ::= \"a\"{5,2}", "maximum"),
        ("root ::= \"a\"{9999}", "repetitions"),
        ("root ::= <[999999]>", "vocabulary"),
        ("root ::= \"\\q\"", "escape"),
    ] {
        let o =
            ferrite().args(["run", "--raw", "-n", "4", "-t", "2", "-m"]).arg(model).args(["--grammar", grammar, "hi"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        if needle.is_empty() {
            // an empty last alternative is valid GBNF
            assert!(o.status.success(), "{grammar:?}: {err}");
            continue;
        }
        assert_eq!(o.status.code(), Some(2), "{grammar:?}: {err}");
        assert!(err.contains(needle), "{grammar:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{grammar:?}: {err}");
    }
    let o = ferrite().args(["run", "-m"]).arg(model).args(["--grammar-file", "/dev/zero", "hi"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ferrite().args(["run", "-m"]).arg(model).args(["--grammar", "root ::= \"a\"", "-j", "{}", "hi"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "two constraints at once: {}", String::from_utf8_lossy(&o.stderr));
}

/// JSON-schema answers sampled at temperature 1 with several seeds: every one parses, is valid
/// under its schema (checked by Python's `jsonschema`) and ended by the grammar (`eos`).
#[test]
fn json_schema_answers_validate() {
    let mut answers = Vec::new();
    for model in models() {
        for (schema, prompt) in [("person.json", "Describe a person as JSON."), ("call.json", "Call the weather tool as JSON.")] {
            let path = root().join("tests/schemas").join(schema);
            for seed in 1..=5 {
                let mut cmd = ferrite();
                cmd.args(["run", "--json", "--temp", "1", "-t", "2", "-n", "600", "-s", &seed.to_string(), "-m"])
                    .arg(&model)
                    .arg("-jf")
                    .arg(&path)
                    .arg(prompt);
                let o = heavy::output(&mut cmd, "ferrite run -jf", heavy::LIMIT);
                assert!(o.status.success(), "{schema} seed {seed}: {}", String::from_utf8_lossy(&o.stderr));
                let v: Value = serde_json::from_slice(&o.stdout).unwrap();
                assert_eq!(v["stop_reason"], "eos", "{schema} seed {seed} on {}: not ended by the grammar: {v}", model.display());
                let text = v["text"].as_str().unwrap().to_string();
                answers.push(serde_json::json!({"schema": path, "text": text}));
            }
        }
    }
    let check = r#"
import json, sys, jsonschema
for line in sys.stdin:
    a = json.loads(line)
    jsonschema.validate(json.loads(a["text"]), json.load(open(a["schema"])))
print("ok")
"#;
    let list = std::env::temp_dir().join(format!("ferrite-schema-answers-{}.jsonl", std::process::id()));
    std::fs::write(&list, answers.iter().map(|a| format!("{a}\n")).collect::<String>()).unwrap();
    let o = Command::new("python3").args(["-c", check]).stdin(std::fs::File::open(&list).unwrap()).output().unwrap();
    assert!(o.status.success(), "an answer does not validate: {}", String::from_utf8_lossy(&o.stderr));
}

/// Broken schemas: exit 2 with a message, before the model loads.
#[test]
fn broken_schemas_are_refused() {
    let model = &models()[0];
    for (schema, needle) in [
        ("{", "not JSON"),
        ("[1]", "object"),
        (r#"{"type":"string","pattern":"a+"}"#, "pattern"),
        (r##"{"$ref":"#/$defs/nope"}"##, "points nowhere"),
        (r#"{"type":"integer","minimum":5,"maximum":2}"#, "no integer"),
        (r#"{"type":"frog"}"#, "frog"),
    ] {
        let o = ferrite().args(["run", "-n", "2", "-m"]).arg(model).args(["-j", schema, "hi"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{schema}: {err}");
        assert!(err.contains(needle), "{schema}: {err}");
    }
}
