//! `ferrite serve` as its clients meet it, over loopback with the real binary and model: the
//! official `openai` Python client, greedy answers equal to `ferrite run`'s with eight requests in
//! flight, bad input and limits (400, 401, 404, 413, 503 + Retry-After), a client that
//! disconnects mid-stream, SIGTERM, and a bounded load test.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One server at a time: each decodes with 2 threads on a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running `ferrite serve`, killed on drop.
struct Server {
    child: Child,
    base: String,
    log: std::sync::Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(["serve", "-m"])
            .arg(root().join(SMOLLM2))
            .args(["--port", "0", "-t", "2"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ferrite serve");
        let err = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("the server did not start: {}", log.lock().unwrap()));
        Server { child, base: format!("http://{addr}"), log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, body as JSON or text, Retry-After) of a POST.
fn post(url: &str, body: &str, key: Option<&str>) -> (u16, Value, Option<String>) {
    let mut r = ureq::post(url).set("content-type", "application/json").timeout(Duration::from_secs(300));
    if let Some(k) = key {
        r = r.set("authorization", &format!("Bearer {k}"));
    }
    answer(r.send_string(body))
}

fn get(url: &str, key: Option<&str>) -> (u16, Value, Option<String>) {
    let mut r = ureq::get(url).timeout(Duration::from_secs(60));
    if let Some(k) = key {
        r = r.set("authorization", &format!("Bearer {k}"));
    }
    answer(r.call())
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Value, Option<String>) {
    let resp = match r {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("request failed: {e}"),
    };
    let (status, retry) = (resp.status(), resp.header("retry-after").map(String::from));
    let text = resp.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), retry)
}

fn chat_body(prompt: &str, max_tokens: u32) -> String {
    json!({ "model": "m", "messages": [{ "role": "user", "content": prompt }], "max_tokens": max_tokens, "temperature": 0 }).to_string()
}

/// `ferrite run`'s greedy answer to a chat prompt (its exact text, from `--json`).
fn run_answer(prompt: &str, n: u32) -> String {
    run_answer_with(prompt, n, &[])
}

const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 2+2?",
    "Give me a synonym for happy.",
    "Who wrote Hamlet?",
    "Explain gravity in one sentence.",
    "List two fruits.",
];

#[test]
fn openai_client_and_greedy_answers_equal_run_with_eight_in_flight() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let expected: Vec<String> = PROMPTS.iter().map(|p| run_answer(p, 20)).collect();
    let key = "test-key-123";
    let server = Server::start(&["-np", "8", "-c", "1024", "--api-key", key]);

    // the official client, unchanged (scripts/test.sh installs it)
    let py = Command::new("python3").args(["-c", "import openai"]).status().expect("python3");
    assert!(py.success(), "the openai Python package is missing: python3 -m pip install openai (scripts/test.sh does)");
    let o = Command::new("python3")
        .arg(root().join("tests/serve_openai.py"))
        .args([&server.url("/v1"), key, &expected[0]])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "openai client:\n{out}\n{}\nserver log:\n{}", String::from_utf8_lossy(&o.stderr), server.log());
    assert!(out.contains("all ok"), "{out}");

    // eight greedy requests at once: each answer is `ferrite run`'s
    let url = server.url("/v1/chat/completions");
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = PROMPTS.iter().map(|p| s.spawn(|| post(&url, &chat_body(p, 20), Some(key)))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).map(|(c, v, _)| (c, v)).collect()
    });
    for (i, (code, v)) in answers.iter().enumerate() {
        assert_eq!(*code, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], expected[i], "prompt {:?}", PROMPTS[i]);
    }
}

#[test]
fn bad_input_wrong_keys_and_limits_get_their_status() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let key = "k";
    let server = Server::start(&["-np", "2", "-c", "256", "--api-key", key]);
    let chat = server.url("/v1/chat/completions");
    // /health needs no key; everything else does
    assert_eq!(get(&server.url("/health"), None).0, 200);
    for k in [None, Some("wrong"), Some("")] {
        let (code, v, _) = get(&server.url("/v1/models"), k);
        assert_eq!(code, 401, "{k:?}: {v}");
        assert_eq!(v["error"]["type"], "authentication_error");
    }
    let k = Some(key);
    for (body, needle) in [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        (r#"{"messages": "hi"}"#, "\"messages\" is required"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}"#, "max_tokens"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "top_k": "many"}"#, "top_k"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"999999": 1}}"#, "999999"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#, "needs \"logprobs\": true"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}"#, "between 0 and 20"),
    ] {
        let (code, v, _) = post(&chat, body, k);
        assert_eq!(code, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: {msg}");
        assert_eq!(v["error"]["code"], 400);
    }
    // a prompt longer than a slot's context: 400 naming the sizes
    let long = "word ".repeat(600);
    let (code, v, _) = post(&chat, &chat_body(&long, 4), k);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("256"), "{v}");
    // a body past the cap: 413 from its announced length, before it is read (a client writing
    // all of it may see the connection closed under it), and the server goes on
    {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
        write!(
            sock,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"messages\": ",
            8 << 20
        )
        .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut status = String::new();
        BufReader::new(&sock).read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    }
    assert_eq!(get(&server.url("/nope"), k).0, 404);
    let (code, v, _) = post(&chat, &chat_body("Say hi.", 3), k);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let (code, v, _) = post(&server.url("/tokenize"), r#"{"content": "hello world"}"#, k);
    assert_eq!(code, 200);
    let (code, d, _) = post(&server.url("/detokenize"), &json!({ "tokens": v["tokens"] }).to_string(), k);
    assert_eq!((code, d["content"].as_str()), (200, Some("hello world")));
    // the access log names each request
    assert!(server.log().contains("POST /v1/chat/completions 413"), "{}", server.log());
}

/// Opens a streaming chat request and returns the reader once its first event has arrived.
fn open_stream(url: &str, max_tokens: u32) -> Box<dyn Read + Send> {
    let body = json!({ "messages": [{ "role": "user", "content": "Tell me a very long story." }], "max_tokens": max_tokens, "stream": true, "temperature": 0.8 });
    let resp = ureq::post(url).set("content-type", "application/json").send_string(&body.to_string()).expect("stream opens");
    let mut r = BufReader::new(resp.into_reader());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: "), "{line}");
    Box::new(r)
}

fn slots_busy(server: &Server) -> usize {
    let (_, v, _) = get(&server.url("/slots"), None);
    v.as_array().unwrap().iter().filter(|s| s["is_processing"] == true).count()
}

#[test]
fn a_client_that_disconnects_frees_its_slot_and_a_full_queue_is_503() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&["-np", "1", "--max-queue", "0", "-c", "4096", "--metrics"]);
    let chat = server.url("/v1/chat/completions");
    let stream = open_stream(&chat, 3000);
    assert_eq!(slots_busy(&server), 1);
    // the one slot is busy and nothing may wait: 503 with Retry-After
    let (code, v, retry) = post(&chat, &chat_body("Hi", 2), None);
    assert_eq!(code, 503, "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    // the client goes away: its sequence is cancelled and its slot freed
    drop(stream);
    let t = Instant::now();
    while slots_busy(&server) > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the slot stayed busy after the client left");
        std::thread::sleep(Duration::from_millis(50));
    }
    // so does one that leaves while waiting for a whole (not streamed) answer
    {
        use std::io::Write;
        let body = chat_body("Tell me a very long story.", 3000);
        let mut sock = std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
        write!(
            sock,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let t = Instant::now();
        while slots_busy(&server) == 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "the request never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let t = Instant::now();
    while slots_busy(&server) > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the slot stayed busy after the client left");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, v, _) = post(&chat, &chat_body("Hi", 2), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(server.log().matches("cancelled: its client went away").count(), 2, "{}", server.log());
    let (_, m, _) = get(&server.url("/metrics"), None);
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(m.contains("ferrite:requests_total 4") && m.contains("ferrite:requests_processing 0"), "{m}");
}

#[test]
fn sigterm_stops_accepting_cancels_what_is_left_and_exits_0() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = Server::start(&["-np", "2", "-c", "4096"]);
    let stream = open_stream(&server.url("/v1/chat/completions"), 4000);
    let t = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    // the open stream ends (finished or cancelled after the grace period) and the process exits 0
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let mut s = stream;
        let _ = s.read_to_string(&mut rest);
        rest
    });
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "still running 20 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let rest = reader.join().unwrap();
    assert!(rest.contains("[DONE]") || rest.is_empty(), "{rest}");
    assert!(server.log().contains("shutting down"));
}

#[test]
fn load_of_64_requests_8_at_a_time_has_no_errors() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&["-np", "8", "-c", "512"]);
    let url = server.url("/v1/chat/completions");
    let t0 = Instant::now();
    let mut lat: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|w| {
                let url = &url;
                s.spawn(move || {
                    (0..8)
                        .map(|i| {
                            let body = json!({ "messages": [{ "role": "user", "content": PROMPTS[(w + i) % 8] }], "max_tokens": 16, "temperature": 0.7, "seed": w * 8 + i });
                            let t = Instant::now();
                            let (code, v, _) = post(url, &body.to_string(), None);
                            assert_eq!(code, 200, "{v}");
                            assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
                            t.elapsed().as_secs_f64() * 1e3
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    eprintln!(
        "serve load: 64 requests, 8 concurrent, in {:.1} s; latency p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
        t0.elapsed().as_secs_f64(),
        pct(0.5),
        pct(0.95),
        pct(0.99)
    );
    assert_eq!(lat.len(), 64);
}

/// Prefix reuse: a long shared start (a document) is computed once; with the default
/// `--prompt-reuse exact` only whole micro-batches of it are reused, so the answer is still
/// `ferrite run`'s; with `all` a conversation's next turn computes only its new tokens. The usage
/// says how many prompt tokens came from the cache (OpenAI's `prompt_tokens_details`).
#[test]
fn a_shared_start_is_computed_once() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let doc: String =
        (1..=30).map(|i| format!("Note {i}: the shipment of crate {} left dock {} on day {}. ", i * 7, i % 5, i * 3)).collect();
    let (q1, q2) = (format!("{doc}\nHow many notes are there?"), format!("{doc}\nWhich dock did crate 14 leave from?"));
    let server = Server::start(&["-np", "2", "-c", "2048"]);
    let url = server.url("/v1/chat/completions");
    let (c1, v1, _) = post(&url, &chat_body(&q1, 12), None);
    assert_eq!(c1, 200, "{v1}");
    assert!(
        (600..1000).contains(&v1["usage"]["prompt_tokens"].as_u64().unwrap()),
        "a prompt of one micro-batch and a piece: {}",
        v1["usage"]
    );
    assert_eq!(v1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (c2, v2, _) = post(&url, &chat_body(&q2, 12), None);
    assert_eq!(c2, 200, "{v2}");
    assert_eq!(v2["usage"]["prompt_tokens_details"]["cached_tokens"], 512, "the first micro-batch of the shared document");
    assert_eq!(v2["choices"][0]["message"]["content"], run_answer(&q2, 12), "the answer of an empty slot");
    drop(server);

    let server = Server::start(&["-np", "1", "-c", "2048", "--prompt-reuse", "all"]);
    let url = server.url("/v1/chat/completions");
    let (c1, v1, _) = post(&url, &chat_body(&q1, 12), None);
    assert_eq!(c1, 200, "{v1}");
    let first = v1["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let turn = json!({ "messages": [
        { "role": "user", "content": q1 },
        { "role": "assistant", "content": first },
        { "role": "user", "content": "And which dock did crate 14 leave from?" },
    ], "max_tokens": 12, "temperature": 0 });
    let (c2, v2, _) = post(&url, &turn.to_string(), None);
    assert_eq!(c2, 200, "{v2}");
    let (cached, prompt1) =
        (v2["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(), v1["usage"]["prompt_tokens"].as_u64().unwrap());
    assert!(cached > prompt1, "the second turn reuses the first prompt and its answer: {cached} cached, first prompt {prompt1}");
    // and a request may refuse it
    let mut again = turn.clone();
    again["cache_prompt"] = json!(false);
    let (c3, v3, _) = post(&url, &again.to_string(), None);
    assert_eq!(c3, 200, "{v3}");
    assert_eq!(v3["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

/// `ferrite run`'s greedy chat answer with extra flags (adapters), its exact text from `--json`.
fn run_answer_with(prompt: &str, n: u32, flags: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["run", "--json", "-m"])
        .arg(root().join(SMOLLM2))
        .args(["-c", "1024", "-t", "2", "--temp", "0", "-n", &n.to_string()])
        .args(flags)
        .arg(prompt)
        .stdin(Stdio::null())
        .output()
        .expect("ferrite run");
    assert!(o.status.success(), "ferrite run: {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("run --json prints JSON");
    v["text"].as_str().expect("a text").to_string()
}

/// LoRA adapters per request (llama-server's `"lora": [{"id", "scale"}]` and `/lora-adapters`):
/// four requests with four adapter sets in flight at once, each answer `ferrite run`'s with the
/// same adapters.
#[test]
fn adapters_switch_per_request() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("ferrite-serve-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let make = |name: &str, args: &[&str]| {
        let out = dir.join(name);
        let o = Command::new("python3")
            .arg(root().join("scripts/make-lora.py"))
            .arg(root().join(SMOLLM2))
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "make-lora.py: {}", String::from_utf8_lossy(&o.stderr));
        out.to_str().unwrap().to_string()
    };
    let a = make("a.gguf", &["--seed", "11", "--targets", "attn_q,attn_v,ffn_up"]);
    let b = make("b.gguf", &["--seed", "12", "--rank", "4", "--alpha", "0", "--type", "f16", "--targets", "attn_output,ffn_down"]);
    let q = "Write one sentence about the sea.";
    let cases: Vec<(Value, Vec<String>)> = vec![
        (Value::Null, vec!["--lora".into(), a.clone()]),
        (json!([{ "id": 1, "scale": 0.7 }]), vec!["--lora-scaled".into(), format!("{b}:0.7")]),
        (json!([]), vec![]),
        (json!([{ "id": 0, "scale": 0.5 }, { "id": 1, "scale": 0.7 }]), vec!["--lora-scaled".into(), format!("{a}:0.5,{b}:0.7")]),
    ];
    let expected: Vec<String> =
        cases.iter().map(|(_, f)| run_answer_with(q, 16, &f.iter().map(String::as_str).collect::<Vec<_>>())).collect();
    assert!(expected[0] != expected[2] && expected[1] != expected[2], "the adapters change the answers: {expected:?}");
    let server = Server::start(&["-np", "4", "-c", "1024", "--lora", &a, "--lora-scaled", &format!("{b}:0")]);
    let (code, list, _) = get(&server.url("/lora-adapters"), None);
    assert_eq!(code, 200);
    assert_eq!(list.as_array().unwrap().iter().map(|x| x["scale"].as_f64().unwrap()).collect::<Vec<_>>(), [1.0, 0.0], "{list}");
    let url = server.url("/v1/chat/completions");
    let body = |lora: &Value| {
        let mut v: Value = serde_json::from_str(&chat_body(q, 16)).unwrap();
        if !lora.is_null() {
            v["lora"] = lora.clone();
        }
        v.to_string()
    };
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = cases.iter().map(|(l, _)| s.spawn(|| post(&url, &body(l), None))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).map(|(c, v, _)| (c, v)).collect()
    });
    for (i, (code, v)) in answers.iter().enumerate() {
        assert_eq!(*code, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], expected[i], "adapter set {}", cases[i].0);
    }
    let (code, v, _) = post(&url, &body(&json!([{ "id": 5, "scale": 1 }])), None);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("no adapter 5"), "{v}");
    // new global scales serve the requests that name none
    let (code, v, _) = post(&server.url("/lora-adapters"), r#"[{"id": 1, "scale": 0.7}]"#, None);
    assert_eq!(code, 200, "{v}");
    let (code, v, _) = post(&url, &body(&Value::Null), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], expected[1]);
    std::fs::remove_dir_all(&dir).ok();
}

/// A template that renders `tools` itself in the Hermes/Qwen way: it gets the tools, a required
/// call comes back from `<tool_call>` markup (forced by the grammar) into `tool_calls`, a named
/// tool is the one called, and "auto" leaves no markup in `content`.
#[test]
fn native_tool_template_calls_come_back_in_tool_calls() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let template = root().join("tests/templates/hermes-tools.jinja");
    let server = Server::start(&["-np", "2", "-c", "2048", "--chat-template", template.to_str().unwrap()]);
    let url = server.url("/v1/chat/completions");
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}}, "required": ["zone"]}}}
    ]);
    let ask = json!([{ "role": "user", "content": "What's the weather in Paris?" }]);
    for (choice, names) in [
        (json!("required"), vec!["get_weather", "get_time"]),
        (json!({"type": "function", "function": {"name": "get_time"}}), vec!["get_time"]),
    ] {
        let body = json!({ "messages": ask, "tools": tools, "tool_choice": choice, "temperature": 0, "max_tokens": 120 }).to_string();
        let (code, v, _) = post(&url, &body, None);
        assert_eq!(code, 200, "{v}\n{}", server.log());
        let choice0 = &v["choices"][0];
        assert_eq!(choice0["finish_reason"], "tool_calls", "{v}");
        let call = &choice0["message"]["tool_calls"][0]["function"];
        assert!(names.contains(&call["name"].as_str().unwrap_or("")), "{v}");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(args.is_object(), "{v}");
        assert!(!choice0["message"]["content"].as_str().unwrap_or("").contains("<tool_call>"), "{v}");
    }
    let body = json!({ "messages": ask, "tools": tools, "temperature": 0, "max_tokens": 60 }).to_string();
    let (code, v, _) = post(&url, &body, None);
    assert_eq!(code, 200, "{v}");
    assert!(!v["choices"][0]["message"]["content"].as_str().unwrap_or("").contains("<tool_call>"), "{v}");
}
