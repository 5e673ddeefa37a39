//! `ferrite batch` and the engine as users meet them: a file of requests with bad lines among the
//! good ones, ids and order, chat requests equal to `ferrite run`, Ctrl-C in the middle, and the
//! engine's cancel and per-sequence cache operations. (Greedy equality with `run` and llama.cpp
//! over sixteen prompts is in tests/parity.rs, `batch_matches_run_and_llamacpp`.)

mod heavy;

use ferrite::decoder::{Batch, ContextOptions, Decoder};
use ferrite::engine::{Engine, Prompt, Request, SeqEvent, SeqParams};
use ferrite::model::{LoadOptions, Model};
use ferrite::sampling::SamplerConfig;
use ferrite::session::StopReason;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3: &str = "models/gemma-3-270m-q4_k_m.gguf";

fn scratch(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ferrite-batch-test-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

fn batch(args: &[&str], input: &Path, model: &str) -> (i32, Vec<Value>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.arg("batch").args(args).arg("-f").arg(input).arg("-m").arg(root().join(model)).args(["-t", "2"]);
    let o = heavy::output(&mut cmd, "ferrite batch", heavy::LIMIT);
    let lines = String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("every output line is JSON")).collect();
    (o.status.code().unwrap_or(-1), lines, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn bad_lines_are_error_lines_and_order_holds() {
    let long = "word ".repeat(400);
    let input = [
        r#"{"id": "a", "prompt": "The capital of France is", "max_tokens": 4}"#.to_string(),
        "not json".into(),
        "".into(),
        r#"{"id": 7, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3}"#.into(),
        r#"{"prompt": "x", "temprature": 0.5}"#.into(),
        r#"{"id": "no-prompt"}"#.into(),
        format!(r#"{{"id": "long", "prompt": "{long}"}}"#),
        r#"{"prompt": "1, 2, 3,", "raw": true, "max_tokens": 8, "stop": ","}"#.into(),
        "[1, 2]".into(),
        format!(r#"{{"id": "huge", "prompt": "{}"}}"#, "x".repeat(100_000)),
        r#"{"id": "to-the-end", "prompt": "1, 2, 3, 4,", "raw": true}"#.into(),
    ]
    .join("\n");
    let f = scratch("mixed.jsonl", &input);
    let (code, lines, err) = batch(&["--temp", "0", "-np", "3", "-c", "256", "-q"], &f, SMOLLM2);
    std::fs::remove_file(&f).ok();
    assert_eq!(code, 0, "bad lines do not end the run: {err}");
    assert_eq!(lines.len(), 10, "one output line per non-empty input line: {lines:?}");
    let ids: Vec<Value> = lines.iter().map(|l| l["id"].clone()).collect();
    assert_eq!(
        ids,
        serde_json::json!(["a", 2, 7, 5, "no-prompt", "long", 8, 9, "huge", "to-the-end"]).as_array().unwrap().clone(),
        "ids (else line numbers), in input order"
    );
    assert_eq!(lines[0]["completion_tokens"], 4);
    assert_eq!(lines[0]["stop_reason"], "length");
    assert!(lines[0]["text"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(lines[1]["error"].as_str().unwrap().contains("not JSON"), "{}", lines[1]);
    assert!(lines[2]["text"].is_string() && lines[2]["prompt_tokens"].as_u64().unwrap() > 5, "chat messages: {}", lines[2]);
    assert!(lines[3]["error"].as_str().unwrap().contains("unknown field \"temprature\""), "{}", lines[3]);
    assert!(lines[4]["error"].as_str().unwrap().contains("no \"prompt\""), "{}", lines[4]);
    assert!(lines[5]["error"].as_str().unwrap().contains("context holds 256"), "{}", lines[5]);
    assert_eq!(lines[6]["stop_reason"], "stop", "{}", lines[6]);
    assert!(!lines[6]["text"].as_str().unwrap().contains(','), "{}", lines[6]);
    assert!(lines[7]["error"].as_str().unwrap().contains("not a JSON object"), "{}", lines[7]);
    // refused from its size, before tokenizing (16 bytes a token of context, at least 64 KiB)
    assert!(lines[8]["error"].as_str().unwrap().contains("more than a context holds"), "{}", &lines[8].to_string()[..200]);
    // a sequence that fills its context ends with "length" at the context's end (-c 256)
    let used = lines[9]["prompt_tokens"].as_u64().unwrap() + lines[9]["completion_tokens"].as_u64().unwrap();
    assert_eq!(lines[9]["stop_reason"], "length", "{}", lines[9]);
    assert!((250..=256).contains(&used), "{used} tokens in a context of 256");
}

/// Plain prompts through the chat template (smollm2) or raw (gemma3's file has none, and `run`
/// then completes the text raw): the same answers as `ferrite run`.
/// A line may ask for log-probabilities: per generated token its id, text, log-probability and
/// the most likely alternatives (greedy: the first of them is the token itself).
#[test]
fn lines_may_ask_for_logprobs() {
    let input = [
        r#"{"id": "lp", "prompt": "The capital of France is", "raw": true, "max_tokens": 5, "logprobs": 3}"#,
        r#"{"id": "plain", "prompt": "The capital of France is", "raw": true, "max_tokens": 5}"#,
        r#"{"id": "bad", "prompt": "x", "logprobs": 21}"#,
    ]
    .join("\n");
    let f = scratch("logprobs.jsonl", &input);
    let (code, lines, err) = batch(&["--temp", "0", "-np", "2", "-c", "256", "-q"], &f, SMOLLM2);
    std::fs::remove_file(&f).ok();
    assert_eq!(code, 0, "{err}");
    let (lp, plain) = (&lines[0], &lines[1]);
    assert_eq!(lp["tokens"], plain["tokens"], "asking changes no token");
    assert!(plain.get("logprobs").is_none());
    let entries = lp["logprobs"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let mut text = String::new();
    for (e, t) in entries.iter().zip(lp["tokens"].as_array().unwrap()) {
        assert_eq!(&e["token"], t);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        let top = e["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], e["token"], "greedy picks the most likely");
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        text.push_str(e["text"].as_str().unwrap());
    }
    assert_eq!(text, lp["text"].as_str().unwrap());
    assert!(lines[2]["error"].as_str().unwrap().contains("between 0 and 20"), "{}", lines[2]);
}

/// Lines may carry their own grammar or JSON schema, answered as `run` with the same flag
/// answers (several sequences at once, each with its own constraint); a broken one is that
/// line's error.
#[test]
fn lines_may_carry_a_grammar_or_a_schema() {
    let grammar = r#"root ::= ("yes" | "no") "." "#;
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]});
    let input = [
        json!({"id": "g", "prompt": "Is the sky blue? ", "grammar": grammar}).to_string(),
        json!({"id": "s", "prompt": "A person as JSON: ", "json_schema": schema}).to_string(),
        json!({"id": "bad", "prompt": "x", "grammar": "root ::= nope"}).to_string(),
        json!({"id": "free", "prompt": "Is the sky blue? "}).to_string(),
    ];
    let f = scratch("constrained.jsonl", &(input.join("\n") + "\n"));
    let (code, lines, err) = batch(&["--raw", "--temp", "0", "-n", "80", "-np", "4"], &f, SMOLLM2);
    assert_eq!(code, 0, "{err}");
    let run = |flag: &str, value: &str, prompt: &str| -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(["run", "--raw", "--temp", "0", "-n", "80", "-t", "2", "--json", "-m"])
            .arg(root().join(SMOLLM2))
            .args([flag, value, prompt])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["text"].as_str().unwrap().to_string()
    };
    assert_eq!(lines[0]["text"], run("--grammar", grammar, "Is the sky blue? "), "{:?}", lines[0]);
    assert_eq!(lines[1]["text"], run("-j", &schema.to_string(), "A person as JSON: "), "{:?}", lines[1]);
    let doc: Value = serde_json::from_str(lines[1]["text"].as_str().unwrap()).unwrap();
    assert!(doc["age"].as_u64().is_some_and(|a| a <= 120) && lines[1]["stop_reason"] == "eos", "{:?}", lines[1]);
    assert!(lines[2]["error"].as_str().unwrap().contains("'nope'"), "{:?}", lines[2]);
    assert!(lines[3]["text"].as_str().is_some(), "{:?}", lines[3]);
}

#[test]
fn chat_requests_answer_as_run_does() {
    let prompts = ["Name three colours.", "What is 2+2?"];
    let f = scratch("chat.jsonl", &prompts.iter().map(|p| format!("{{\"prompt\": \"{p}\"}}\n")).collect::<String>());
    for model in [SMOLLM2, GEMMA3] {
        let (code, lines, err) = batch(&["--temp", "0", "-n", "24", "-np", "2", "-q"], &f, model);
        assert_eq!(code, 0, "{err}");
        for (line, prompt) in lines.iter().zip(prompts) {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
            cmd.args(["run", "--temp", "0", "-n", "24", "--json", "-q", "-t", "2", "-m"]).arg(root().join(model)).arg(prompt);
            let o = heavy::output(&mut cmd, "ferrite run", heavy::LIMIT);
            let run: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(line["tokens"], run["tokens"], "{model} {prompt}");
            assert_eq!(line["text"], run["text"], "{model} {prompt}");
            assert_eq!(line["prompt_tokens"], run["prompt_tokens"], "{model} {prompt}");
        }
    }
    std::fs::remove_file(&f).ok();
}

#[test]
fn no_input_is_a_usage_error() {
    let f = scratch("dir-input", "");
    std::fs::remove_file(&f).ok();
    std::fs::create_dir_all(&f).unwrap();
    let (code, lines, err) = batch(&["-q"], &f, SMOLLM2);
    std::fs::remove_dir(&f).ok();
    assert_eq!(code, 2, "{err}");
    assert!(lines.is_empty());
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// Ctrl-C in the middle: what is finished is written (valid JSONL), the exit code is 130.
#[test]
fn interrupt_writes_what_is_finished() {
    let input: String =
        (0..40).map(|i| format!("{{\"prompt\": \"Story {i}: Once upon a time\", \"max_tokens\": {}}}\n", 4 + 200 * (i % 2))).collect();
    let f = scratch("many.jsonl", &input);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["batch", "--raw", "--temp", "0", "-np", "4", "-t", "2", "-q", "-f"])
        .arg(&f)
        .arg("-m")
        .arg(root().join(SMOLLM2))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(serde_json::from_str::<Value>(&first).is_ok(), "{first}");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    std::fs::remove_file(&f).ok();
    assert_eq!(status.code(), Some(130));
    for l in rest.lines() {
        let v: Value = serde_json::from_str(l).expect("finished lines are whole JSON");
        assert!(v["text"].is_string(), "{l}");
    }
    assert!(1 + rest.lines().count() < 40, "interrupted before the end");
}

fn params(max_tokens: i32) -> SeqParams {
    SeqParams::new(max_tokens, SamplerConfig { temp: 0.0, ..Default::default() })
}

fn load(path: &str) -> (Rc<Model>, Rc<ferrite::tokenizer::Tokenizer>) {
    let (m, tok) =
        Model::load_alongside(&root().join(path), LoadOptions::default(), &mut |_, _| {}, ferrite::tokenizer::Tokenizer::from_gguf)
            .unwrap();
    (Rc::new(m), Rc::new(tok.unwrap()))
}

/// A cancelled sequence ends with what it had (stop reason `interrupted`) and frees its slot;
/// the sequences around it answer as if it had never been there.
#[test]
fn cancel_frees_the_slot_and_leaves_the_others_alone() {
    let (model, tok) = load(SMOLLM2);
    let ctx = ContextOptions { n_ctx: 512, n_threads: 2, n_seq: 2, ..Default::default() };
    let prompts = ["The sun is", "Rust is a language that", "Paris is the capital of"];
    let answers = |cancel: bool| {
        let mut e = Engine::new(model.clone(), tok.clone(), None, &ctx).unwrap();
        let got: Rc<RefCell<Vec<(u64, ferrite::engine::Finished)>>> = Rc::default();
        let mut ids = Vec::new();
        for p in prompts {
            let g = got.clone();
            let sink = Box::new(move |id, ev| {
                if let SeqEvent::Done(r) = ev {
                    g.borrow_mut().push((id, r.unwrap()));
                }
            });
            ids.push(e.submit(Request { prompt: Prompt::Text { text: p.into(), raw: true }, params: params(12) }, sink));
        }
        for _ in 0..5 {
            e.step().unwrap();
        }
        if cancel {
            assert!(e.cancel(ids[1]));
            assert_eq!(e.n_active(), 1, "the cancelled slot is free");
        }
        e.run_until_idle().unwrap();
        let mut v = got.borrow().clone();
        v.sort_by_key(|(id, _)| *id);
        v
    };
    let plain = answers(false);
    let cancelled = answers(true);
    assert_eq!(cancelled[1].1.stop_reason, StopReason::Interrupted);
    assert!(cancelled[1].1.tokens.len() < 12);
    for i in [0, 2] {
        assert_eq!(cancelled[i].1.tokens, plain[i].1.tokens, "prompt {i}");
        assert_eq!(plain[i].1.tokens.len(), 12);
    }
}

/// seq_cp gives a sequence another's cache (it then continues exactly as the original would);
/// seq_rm and seq_keep forget cells.
#[test]
fn sequence_cache_operations() {
    let (model, _) = load(GEMMA3);
    let ctx = ContextOptions { n_ctx: 512, n_threads: 2, n_seq: 3, ..Default::default() };
    let mut d = Decoder::new(model, &ctx).unwrap();
    let prompt = [2u32, 818, 5279, 529, 7001, 563];
    let mut b = Batch::default();
    for (i, &t) in prompt.iter().enumerate() {
        b.add(t, i as i32, 0, false);
    }
    let mut logits = Vec::new();
    d.decode_batch(&b, &mut logits).unwrap();
    d.kv.seq_cp(0, 2).unwrap();
    assert_eq!(d.kv.seq_pos_range(2), (0, 5));
    let step = |d: &mut Decoder, seq: u32| {
        let mut b = Batch::default();
        b.add(1234, 6, seq, true);
        let mut l = Vec::new();
        d.decode_batch(&b, &mut l).unwrap();
        l
    };
    let from_copy = step(&mut d, 2);
    let from_original = step(&mut d, 0);
    assert_eq!(from_copy, from_original, "a copied sequence continues as its source");
    d.kv.seq_rm(0, 3, -1);
    assert_eq!(d.kv.seq_pos_range(0), (0, 2));
    d.kv.seq_keep(2);
    assert_eq!(d.kv.seq_pos_range(0), (-1, -1));
    assert_eq!(d.kv.seq_pos_range(2), (0, 6));
}

/// Prefix reuse: a slot keeps its last sequence's cells. `Exact` reuses whole micro-batches of
/// the last prompt only, and the answer is the one an empty slot gives; `All` reuses every
/// matching cell (the last answer's too), and `cache_prompt: false` none.
#[test]
fn kept_cells_serve_the_next_prompt() {
    use ferrite::engine::{Finished, PromptReuse};
    for path in [SMOLLM2, GEMMA3] {
        let (model, tok) = load(path);
        // small pieces so that a short prompt spans several: 16-token micro-batches
        let ctx = ContextOptions { n_ctx: 512, n_threads: 2, n_seq: 1, n_batch: 64, n_ubatch: 16, ..Default::default() };
        let doc = "The lighthouse stood on a rock at the end of the bay, and every night its keeper climbed \
                   the hundred steps to light the lamp, whatever the weather, for ships he would never see.";
        let first = tok.encode(&format!("{doc} Who climbed the steps?"), true, true).unwrap();
        let second = tok.encode(&format!("{doc} Why did the keeper light the lamp?"), true, true).unwrap();
        let common = first.iter().zip(&second).take_while(|(a, b)| a == b).count();
        assert!(common > 32, "{path}: the prompts share {common} tokens");
        let run = |e: &mut Engine, prompt: &[u32], cache_prompt: bool| -> Finished {
            let got: Rc<RefCell<Option<Finished>>> = Rc::default();
            let g = got.clone();
            let sink = Box::new(move |_, ev| {
                if let SeqEvent::Done(r) = ev {
                    *g.borrow_mut() = Some(r.unwrap());
                }
            });
            e.submit(Request { prompt: Prompt::Tokens(prompt.to_vec()), params: SeqParams { cache_prompt, ..params(16) } }, sink);
            e.run_until_idle().unwrap();
            let f = got.borrow_mut().take().unwrap();
            f
        };
        let mut fresh = Engine::new(model.clone(), tok.clone(), None, &ctx).unwrap();
        let alone = run(&mut fresh, &second, false);
        assert_eq!(alone.cached_tokens, 0);

        let mut e = Engine::new(model.clone(), tok.clone(), None, &ctx).unwrap();
        assert_eq!(e.prompt_reuse, PromptReuse::Exact, "the default");
        let a1 = run(&mut e, &first, true);
        let a2 = run(&mut e, &second, true);
        assert_eq!(a2.cached_tokens, common / 16 * 16, "{path}: whole micro-batches of the shared start");
        assert_eq!(a2.tokens, alone.tokens, "{path}: the answer of an empty slot");
        assert_eq!(e.stats.reused_tokens, a2.cached_tokens as u64);
        // a request that asks for no reuse computes everything, and answers the same
        assert_eq!(run(&mut e, &second, false), Finished { cached_tokens: 0, ..a2.clone() });

        // All: the next turn of a conversation computes only its new tokens (the last answer's
        // final token was sampled, never decoded)
        e.prompt_reuse = PromptReuse::All;
        let _ = run(&mut e, &first, true);
        let mut turn = first.clone();
        turn.extend(&a1.tokens);
        turn.extend(tok.encode(" And then?", false, false).unwrap());
        let a3 = run(&mut e, &turn, true);
        assert_eq!(a3.cached_tokens, first.len() + a1.tokens.len() - 1, "{path}: all but the new tokens");
        assert_eq!(a3.tokens.len(), 16);
    }
}
