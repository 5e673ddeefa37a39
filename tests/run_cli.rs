//! `ferrite run` on the real SmolLM2 model: --json fields, prefix reuse across turns of a
//! --session, the overflow policies, prompts too long for -c, a closed stdout (`| head`), a
//! document on stdin, Ctrl-C (exit 130, partial output kept), corrupt session files, and mapped vs
//! copied weights.

mod common_cli;

use common_cli::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", "-m", model, "--temp", "0"];
    v.extend_from_slice(extra);
    v
}

fn json(r: &Run) -> serde_json::Value {
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 1, "--json prints one line: {}", r.stdout);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stdout))
}

fn num(v: &serde_json::Value, k: &str) -> usize {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}")) as usize
}

fn long_prompt() -> String {
    "word ".repeat(300)
}

#[test]
fn json_has_the_documented_fields() {
    let model = smollm2();
    let v = json(&ferrite(&run_args(&model, &["-c", "512", "-n", "8", "--json", "--top-logits", "3", "Hi"]), None));
    assert!(v["text"].is_string());
    let tokens = v["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), num(&v, "completion_tokens"));
    assert!(tokens.len() <= 8 && !tokens.is_empty());
    assert!(num(&v, "prompt_tokens") > 0);
    assert!(["eos", "stop", "length", "interrupted"].contains(&v["stop_reason"].as_str().unwrap()), "{v}");
    assert!(v["seed"].is_u64());
    let t = &v["timings"];
    for k in ["load_ms", "prompt_ms", "prompt_tps", "gen_ms", "gen_tps"] {
        assert!(t[k].as_f64().is_some_and(|x| x >= 0.0), "timings.{k} in {v}");
    }
    assert_eq!(num(t, "prompt_tokens_computed"), num(&v, "prompt_tokens"), "a fresh run computes the whole prompt");
    let top = v["first_top_logits"].as_array().expect("first_top_logits with --top-logits");
    assert_eq!(top.len(), 3);
    // greedy: the first generated token is the best logit
    assert_eq!(top[0][0], tokens[0], "{v}");
}

#[test]
fn second_turn_of_a_session_prefills_only_new_tokens() {
    let model = smollm2();
    let dir = Scratch::new("prefill");
    let s = dir.path("s.session").to_string_lossy().into_owned();
    let a = json(&ferrite(&run_args(&model, &["-c", "512", "-n", "40", "--json", "--session", &s, "Hi"]), None));
    let b = json(&ferrite(&run_args(&model, &["-c", "512", "-n", "40", "--json", "--session", &s, "What is 2+2?"]), None));
    let cached = num(&a, "prompt_tokens") + num(&a, "completion_tokens");
    let computed = num(&b["timings"], "prompt_tokens_computed");
    assert_eq!(computed, num(&b, "prompt_tokens") - cached, "turn 1: {a}\nturn 2: {b}");
    let new = ferrite(
        &["tokenize", "-m", &model, "--count", "--no-bos", "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"],
        None,
    );
    assert_eq!(computed, new.stdout.trim().parse::<usize>().unwrap(), "{b}");
}

#[test]
fn prompt_too_long_for_the_context_is_exit_2_on_one_line() {
    let model = smollm2();
    let p = long_prompt();
    for extra in [&["-c", "256"][..], &["-c", "256", "--raw"][..]] {
        let mut args = run_args(&model, extra);
        args.push(&p);
        let r = ferrite(&args, None);
        assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
        assert!(r.stderr.contains("the context holds 256 (raise -c)"), "{}", r.stderr);
    }
}

#[test]
fn overflow_fail_refuses_a_conversation_that_does_not_fit() {
    let model = smollm2();
    let dir = Scratch::new("ovf-fail");
    let s = dir.path("s.session").to_string_lossy().into_owned();
    let mut first = vec!["-c", "256", "--overflow", "fail", "-n", "400", "--json", "--session", &s];
    first.extend_from_slice(&NO_EOS);
    first.push("Tell me a long story.");
    let r = ferrite(&run_args(&model, &first), None);
    // generation that reaches the end of the context stops there (like llama.cpp without
    // context shift): the answer so far, stop reason "length", a notice on stderr
    let v = json(&r);
    assert_eq!(v["stop_reason"], "length");
    assert!(num(&v, "completion_tokens") < 400);
    assert!(r.stderr.contains("generation stopped (--overflow fail)"), "{}", r.stderr);
    // the next turn no longer fits: a one-line error, exit 2, the session file untouched
    let before = snapshot(std::path::Path::new(&s));
    let r = ferrite(&run_args(&model, &["-c", "256", "--overflow", "fail", "-n", "10", "--session", &s, "Go on."]), None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("the context holds 256 (--overflow fail)"), "{}", r.stderr);
    assert_eq!(snapshot(std::path::Path::new(&s)), before);
}

#[test]
fn overflow_shift_keeps_generating() {
    let model = smollm2();
    for raw in [true, false] {
        let mut a = vec!["-c", "256", "--overflow", "shift", "-n", "300", "--json"];
        a.extend_from_slice(&NO_EOS);
        if raw {
            a.push("--raw");
        }
        a.push("Once upon a time");
        let r = ferrite(&run_args(&model, &a), None);
        let v = json(&r);
        assert_eq!(num(&v, "completion_tokens"), 300, "raw {raw}: {v}");
        assert_eq!(v["stop_reason"], "length");
        assert!(r.stderr.contains("context full") && r.stderr.contains("and continued"), "raw {raw}: {}", r.stderr);
    }
}

#[test]
fn overflow_drop_oldest_drops_earlier_turns_and_keeps_going() {
    let model = smollm2();
    let dir = Scratch::new("ovf-drop");
    let s = dir.path("s.session").to_string_lossy().into_owned();
    let turn = |n: &'static str, q: &'static str| {
        let mut a = vec!["-c", "256", "--overflow", "drop-oldest", "-n", n, "--json", "--session", &s];
        a.extend_from_slice(&NO_EOS);
        a.push(q);
        ferrite(&run_args(&model, &a), None)
    };
    let r1 = turn("120", "Tell me a story.");
    assert_eq!(num(&json(&r1), "completion_tokens"), 120);
    let r2 = turn("200", "Tell me another one.");
    let v = json(&r2);
    assert_eq!(num(&v, "completion_tokens"), 200, "{v}");
    assert!(r2.stderr.contains("dropped the oldest turn"), "{}", r2.stderr);
    let saved = String::from_utf8_lossy(&std::fs::read(&s).unwrap()).into_owned();
    assert!(!saved.contains("Tell me a story."), "the oldest turn is gone from the session");
    assert!(saved.contains("Tell me another one."));
}

#[test]
fn closed_stdout_ends_quietly_with_status_0() {
    let model = smollm2();
    for json in [false, true] {
        let mut a = run_args(&model, &["-c", "512", "-n", if json { "20" } else { "300" }]);
        a.extend_from_slice(&NO_EOS);
        if json {
            a.push("--json");
        }
        a.push("Tell me a long story.");
        let cmd: Vec<String> = std::iter::once(FERRITE.to_string()).chain(a.iter().map(|s| s.to_string())).map(|s| sh_quote(&s)).collect();
        let script = format!("set -o pipefail; {} | head -c 5", cmd.join(" "));
        let o = Command::new("bash").args(["-c", &script]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "json {json}: the pipeline (ferrite's status included) fails: {err}");
        assert_eq!(o.stdout.len(), 5);
        assert!(!err.contains("Broken pipe") && !err.contains("panicked") && !err.contains("ferrite:"), "{err}");
    }
}

#[test]
fn a_document_on_stdin_follows_the_instruction() {
    let model = smollm2();
    let doc = "The quick brown fox jumps over the lazy dog. The dog slept all afternoon.\n";
    let r = ferrite(&run_args(&model, &["-c", "512", "-n", "6", "--show-prompt", "Summarize:"]), Some(doc));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.trim().is_empty());
    assert!(r.stderr.contains(&format!("<|im_start|>user\nSummarize:\n\n{}", doc.trim_end())), "{}", r.stderr);
    // `-f -`: the prompt itself comes from stdin
    let r = ferrite(&run_args(&model, &["-c", "512", "-n", "6", "--show-prompt", "-f", "-"]), Some(doc));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("<|im_start|>user\n{}", doc.trim_end())), "{}", r.stderr);
}

#[test]
fn ctrl_c_exits_130_and_keeps_the_partial_output() {
    let model = smollm2();
    let mut a = run_args(&model, &["-c", "4096", "-n", "5000"]);
    a.extend_from_slice(&NO_EOS);
    a.push("Tell me a long story.");
    let mut c = Command::new(FERRITE).args(&a).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut err = c.stderr.take().unwrap();
    let errt = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // read until some answer has streamed, then interrupt
    let mut seen = Vec::new();
    let t = Instant::now();
    let mut buf = [0u8; 256];
    while seen.len() < 100 {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "ferrite ended before being interrupted");
        seen.extend_from_slice(&buf[..n]);
        assert!(t.elapsed() < Duration::from_secs(120), "no output");
    }
    let st = Command::new("kill").args(["-INT", &c.id().to_string()]).status().unwrap();
    assert!(st.success());
    out.read_to_end(&mut seen).unwrap();
    let status = c.wait().unwrap();
    let stderr = errt.join().unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    let text = String::from_utf8(seen).unwrap();
    assert!(text.len() >= 100 && text.ends_with('\n'), "the partial answer is kept, ended by a newline: {text:?}");
    assert!(stderr.trim_end().ends_with("ferrite: interrupted"), "{stderr}");
}

#[test]
fn a_corrupt_session_file_is_exit_2_and_left_untouched() {
    let model = smollm2();
    let dir = Scratch::new("run-corrupt");
    let p = dir.path("s.session");
    let ps = p.to_string_lossy().into_owned();
    let r = ferrite(&run_args(&model, &["-c", "512", "-n", "4", "-q", "--session", &ps, "Hi"]), None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut b = std::fs::read(&p).unwrap();
    let last = b.len() - 10;
    b[last] ^= 1;
    std::fs::write(&p, &b).unwrap();
    let not_session = dir.path("notes.txt");
    std::fs::write(&not_session, "just some notes\n").unwrap();
    for (f, msg) in [(&p, "damaged session file (checksum mismatch)"), (&not_session, "not a ferrite session file")] {
        let before = snapshot(f);
        let r = ferrite(&run_args(&model, &["-c", "512", "-n", "4", "--session", &f.to_string_lossy(), "Hi"]), None);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(msg), "{}", r.stderr);
        assert_eq!(snapshot(f), before, "{} is byte-identical with the same mtime", f.display());
    }
    // a session made with another context size is not refused but prefilled again from its
    // messages: tests/hostile_io.rs (sessions_survive_a_changed_context_or_cache_type)
}

/// Weights read in place from the map (`--mmap`) and copied into huge-page memory (`--no-mmap`,
/// packed without the repacked tensors' bytes) give the same answer, to the logit. Gemma 3: its
/// plain and repacked tensors alternate in the file.
#[test]
fn mapped_and_copied_weights_answer_alike() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gemma-3-270m-q4_k_m.gguf");
    assert!(p.exists(), "{} is missing: run models/fetch.sh gemma3 (or scripts/test.sh)", p.display());
    let model = p.to_string_lossy().into_owned();
    let answer = |how: &str| {
        let mut v = json(&ferrite(
            &run_args(&model, &["-c", "512", "-n", "12", "--seed", "1", "--json", "--top-logits", "5", how, "The capital of France is"]),
            None,
        ));
        v.as_object_mut().unwrap().remove("timings");
        v
    };
    assert_eq!(answer("--mmap"), answer("--no-mmap"));
}
