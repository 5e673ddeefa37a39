//! ggml RPC on loopback, both ways. As a server: llama-completion with all its layers offloaded
//! to `ferrite rpc-server` (`--rpc HOST:PORT -ngl 99`) answers exactly as it does alone. As a
//! client: ferrite with its layers split over two of its own servers and the local CPU gives
//! the local run's token ids (short and multi-micro-batch prompts, f16 and q8_0 caches), over
//! llama.cpp's `ggml-rpc-server` too, and on gemma3 llama.cpp's answer with the same split over
//! llama.cpp's servers. `info --devices --rpc` lists the server's device; a busy port, a server
//! that is not there or goes away, and a non-loopback address each get their one line.

mod heavy;
mod paths;

use paths::{how_to_get_llamacpp, llamacpp_bin, root};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `ferrite rpc-server` child, killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
}

impl Server {
    /// Stops the server and returns what it wrote on stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        err
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a server and waits until it accepts connections.
fn server(extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(["rpc-server", "-t", "1"]).args(extra);
    start(cmd)
}

/// Starts llama.cpp's `ggml-rpc-server`.
fn llamacpp_server() -> Server {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("ferrite is checked as a client of llama.cpp's server: {}", how_to_get_llamacpp()));
    let mut cmd = Command::new(bin.join("ggml-rpc-server"));
    cmd.env("LD_LIBRARY_PATH", &bin).args(["-t", "1"]);
    start(cmd)
}

/// Runs `cmd -p PORT` (both servers take it) and waits until it accepts connections.
fn start(mut cmd: Command) -> Server {
    let port = free_port();
    let child = cmd.args(["-p", &port.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let endpoint = format!("127.0.0.1:{port}");
    let t = Instant::now();
    while std::net::TcpStream::connect(&endpoint).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "the RPC server did not start on {endpoint}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, endpoint }
}

/// llama-completion's greedy answer (text on stdout), with `extra` flags.
fn completion(extra: &[&str]) -> (String, String) {
    completion_of("models/SmolLM2-135M-Instruct.Q4_1.gguf", "The capital of France is", extra)
}

fn completion_of(model: &str, prompt: &str, extra: &[&str]) -> (String, String) {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("the RPC server is checked with llama.cpp's client: {}", how_to_get_llamacpp()));
    let model = root().join(model);
    let mut cmd = Command::new(bin.join("llama-completion"));
    cmd.env("LD_LIBRARY_PATH", &bin)
        .arg("-m")
        .arg(&model)
        .args(["-p", prompt, "-n", "24", "--temp", "0", "-t", "2", "-no-cnv", "--no-warmup", "-c", "512"])
        .args(extra);
    let o = heavy::output(&mut cmd, "llama-completion", heavy::LIMIT);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "llama-completion {extra:?}: {err}");
    (String::from_utf8_lossy(&o.stdout).into_owned(), err)
}

#[test]
fn a_llamacpp_client_offloads_to_ferrites_server_with_the_same_answer() {
    let s = server(&[]);
    let (local, _) = completion(&[]);
    let (remote, log) = completion(&["--rpc", &s.endpoint, "-ngl", "99", "-v"]);
    // the layers really went to the server (llama.cpp says so at -v)
    let on_server = log.lines().filter(|l| l.contains("assigned to device RPC")).count();
    assert!(log.contains(&format!("using device RPC0 ({})", s.endpoint)) && on_server >= 30, "not offloaded to the server:\n{log}");
    assert_eq!(remote, local, "the answer over RPC differs from the local one");
    assert!(local.len() > "The capital of France is".len(), "{local:?}");
}

#[test]
fn devices_are_listed_with_a_remote_one() {
    let s = server(&[]);
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["info", "--devices", "--json", "--rpc", &s.endpoint]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let devs = v.as_array().unwrap();
    assert!(devs.iter().any(|d| d["type"] == "cpu"), "{v}");
    let remote = devs.iter().find(|d| d["description"].as_str().is_some_and(|x| x.contains(&s.endpoint))).expect("the server's device");
    assert!(remote["name"].as_str().unwrap().starts_with("RPC") && remote["memory_total"].as_u64().unwrap() > 0, "{remote}");
}

#[test]
fn mistakes_get_one_line() {
    // nobody there: no abort, a message and exit 1
    let port = free_port().to_string();
    let endpoint = format!("127.0.0.1:{port}");
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["info", "--devices", "--rpc", &endpoint]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no RPC server answers") && err.trim().lines().count() == 1, "{err}");
    // a port in use
    let s = server(&[]);
    let port = s.endpoint.rsplit(':').next().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["rpc-server", "-p", port]).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot listen") && err.trim().lines().count() == 1, "{err}");
    // any address but loopback is warned about, loudly
    let mut open = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["rpc-server", "-H", "0.0.0.0", "-p", &free_port().to_string(), "-t", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(open.stderr.take().unwrap()), &mut first).unwrap();
    let _ = open.kill();
    let _ = open.wait();
    assert!(first.contains("WARNING") && first.contains("no authentication"), "{first}");
}

/// `ferrite run --json` greedy: (token ids, text, stderr), with `extra` flags.
fn ferrite_run(model: &str, prompt: &str, extra: &[&str]) -> (Vec<u64>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(["run", "-m", model, "--temp", "0", "-n", "24", "-t", "1", "-c", "1024", "--json", "-v"]).args(extra).arg(prompt);
    let o = heavy::output(&mut cmd, "ferrite run", heavy::LIMIT);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "ferrite run {extra:?}: {err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    let ids = v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    (ids, v["text"].as_str().unwrap().to_string(), err)
}

/// A prompt of about 700 tokens: two micro-batches of 512.
fn long_prompt() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let cut = readme.char_indices().nth(2800).map_or(readme.len(), |(i, _)| i);
    format!("{}\n\nSummarize the text above in one sentence.", &readme[..cut])
}

#[test]
fn layers_split_over_two_servers_and_the_cpu_answer_as_the_local_run() {
    let (a, b) = (server(&[]), server(&[]));
    let rpc = format!("{},{}", a.endpoint, b.endpoint);
    let long = long_prompt();
    for (prompt, cache) in [("The capital of France is", "f16"), (long.as_str(), "f16"), (long.as_str(), "q8_0")] {
        let cache_flags = ["-ctk", cache, "-ctv", cache];
        let (local, text, _) = ferrite_run("smollm2", prompt, &cache_flags);
        // 20 of the 31 layers: blocks 11-20 on the first server, 21-29 and the output on the
        // second (shares given: by free memory, two servers on one host could split 11/9)
        let mut flags = vec!["--rpc", rpc.as_str(), "-ngl", "20", "-ts", "1,1"];
        flags.extend(cache_flags);
        let (remote, _, log) = ferrite_run("smollm2", prompt, &flags);
        let summary = format!("RPC0 ({}) blocks 11-20; RPC1 ({}) blocks 21-29 + output; CPU blocks 0-10", a.endpoint, b.endpoint);
        assert!(log.contains(&summary), "placement not reported as expected ({summary}):\n{log}");
        // -v shows the last graph's nodes on all three devices
        let nodes = log.lines().find(|l| l.contains("nodes by device")).unwrap_or_else(|| panic!("{log}"));
        for dev in ["RPC0 ", "RPC1 ", "CPU "] {
            assert!(nodes.contains(dev), "no nodes on {dev}: {nodes}");
        }
        assert_eq!(
            remote,
            local,
            "split over RPC ({cache} cache, {} prompt chars): ids differ from the local run ({text:?})",
            prompt.len()
        );
        assert!(local.len() >= 8, "{text:?}");
    }
    // --device picks one of them; --tensor-split weighs them
    let (local, _, _) = ferrite_run("smollm2", "The capital of France is", &[]);
    let (one, _, log) = ferrite_run("smollm2", "The capital of France is", &["--rpc", &rpc, "--device", "RPC1"]);
    assert!(log.contains(&format!("offloaded 31/31 layers: RPC1 ({}) blocks 0-29 + output", b.endpoint)), "{log}");
    assert_eq!(one, local);
    let (split, _, log) = ferrite_run("smollm2", "The capital of France is", &["--rpc", &rpc, "-ts", "3,1"]);
    assert!(log.contains("blocks 0-23;") && log.contains("blocks 24-29 + output"), "{log}");
    assert_eq!(split, local);
    // the servers computed SmolLM2's Q4_1 products with ferrite's kernel, as a local run does
    for s in [a, b] {
        let err = s.stop();
        assert!(err.contains("with ferrite's matrix kernel"), "{err}");
    }
}

/// Bytes through the loopback interface so far (its receive counter in /proc/net/dev).
fn loopback_bytes() -> u64 {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap();
    let lo = dev.lines().find(|l| l.trim_start().starts_with("lo:")).expect("no lo in /proc/net/dev");
    lo.split_once(':').unwrap().1.split_whitespace().next().unwrap().parse().unwrap()
}

/// A LoRA adapter over RPC: the local adapted answer, and the adapter's tensors on the server
/// beside the weights they adapt — sent once at load, not with every graph (left in CPU memory,
/// a 4 MB adapter crossed the wire for each of the run's 25 graphs: +99 MB instead of +4 MB).
#[test]
fn lora_over_rpc_is_computed_beside_its_weights() {
    let s = server(&[]);
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lora = std::env::temp_dir().join(format!("ferrite-rpc-lora-{}.gguf", std::process::id()));
    let o = Command::new("python3")
        .arg(root().join("scripts/make-lora.py"))
        .arg(&model)
        .arg(&lora)
        .args(["--seed", "1", "--rank", "8", "--alpha", "16", "--targets", "attn_q,attn_v,ffn_up"])
        .output()
        .unwrap();
    assert!(o.status.success(), "make-lora.py: {}", String::from_utf8_lossy(&o.stderr));
    let adapter_bytes = std::fs::metadata(&lora).unwrap().len();
    let lora_flags = ["--lora", lora.to_str().unwrap()];
    let prompt = "Write a short poem about the sea.";
    let (local, text, _) = ferrite_run("smollm2", prompt, &lora_flags);
    let (plain, _, _) = ferrite_run("smollm2", prompt, &[]);
    assert_ne!(local, plain, "the adapter changes nothing: not a test of it");
    let mut flags = vec!["--rpc", s.endpoint.as_str(), "-ngl", "99"];
    let t0 = loopback_bytes();
    ferrite_run("smollm2", prompt, &flags);
    let t1 = loopback_bytes();
    flags.extend(lora_flags);
    let (remote, _, _) = ferrite_run("smollm2", prompt, &flags);
    let t2 = loopback_bytes();
    std::fs::remove_file(&lora).ok();
    assert_eq!(remote, local, "an adapter over RPC: ids differ from the local run ({text:?})");
    let (without, with) = (t1 - t0, t2 - t1);
    assert!(
        with < without + 2 * adapter_bytes,
        "the adapter crossed the wire more than once: {with} bytes with it, {without} without, adapter {adapter_bytes}"
    );
}

#[test]
fn ferrite_is_a_client_of_llamacpps_server() {
    let s = llamacpp_server();
    let (local, _, _) = ferrite_run("smollm2", "The capital of France is", &[]);
    let (remote, _, log) = ferrite_run("smollm2", "The capital of France is", &["--rpc", &s.endpoint]);
    assert!(log.contains(&format!("offloaded 31/31 layers: RPC0 ({}) blocks 0-29 + output", s.endpoint)), "{log}");
    assert_eq!(remote, local, "over llama.cpp's rpc-server: ids differ from the local run");
}

#[test]
fn gemma3_split_equals_llamacpp_with_the_same_split() {
    // each tool over its own two servers: 12 of 19 layers, shared 3:1
    let prompt = "The history of the Roman Empire";
    let (fa, fb) = (server(&[]), server(&[]));
    let (la, lb) = (llamacpp_server(), llamacpp_server());
    let frpc = format!("{},{}", fa.endpoint, fb.endpoint);
    let (_, ours, log) = ferrite_run("gemma3", prompt, &["--rpc", &frpc, "-ngl", "12", "-ts", "3,1"]);
    assert!(log.contains("blocks 7-15;") && log.contains("blocks 16-17 + output; CPU blocks 0-6"), "{log}");
    // info's memory plan splits the same way
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["info", "-m", "gemma3", "--json", "--rpc", &frpc, "-ngl", "12", "-ts", "3,1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let devs = v["memory"]["devices"].as_array().unwrap();
    let blocks: Vec<u64> = devs.iter().map(|d| d["blocks"].as_u64().unwrap()).collect();
    assert_eq!(blocks, [9, 2, 7], "{v}");
    assert_eq!(devs[1]["output"], true, "{v}");
    let weights: u64 = devs.iter().map(|d| d["weights"].as_u64().unwrap()).sum();
    // the tied output is a copy of the embedding on the second server
    assert!(weights > v["memory"]["weights"].as_u64().unwrap(), "{v}");
    let lrpc = format!("{},{}", la.endpoint, lb.endpoint);
    let (theirs, llog) =
        completion_of("models/gemma-3-270m-q4_k_m.gguf", prompt, &["--rpc", &lrpc, "-ngl", "12", "-ts", "3,1", "-fit", "off", "-v"]);
    let on_servers = llog.lines().filter(|l| l.contains("assigned to device RPC")).count();
    assert!(on_servers >= 9, "llama.cpp did not offload to its servers:\n{llog}");
    // llama-completion echoes the prompt, and ends its output with a blank line
    assert_eq!(
        theirs.trim_end_matches('\n'),
        format!("{prompt}{ours}"),
        "gemma3 over RPC: ferrite's greedy answer differs from llama.cpp's with the same split"
    );
}

#[test]
fn a_server_that_goes_away_is_a_one_line_error() {
    let s = server(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["run", "-m", "smollm2", "--temp", "0", "-n", "100000", "-t", "1", "-c", "4096", "--rpc", &s.endpoint])
        .arg("Write a very long story.")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stderr line by line: the server goes away once the run has its layers there
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut err = String::new();
    let t = Instant::now();
    while !err.contains("offloaded") {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => err += &(line + "\n"),
            Err(_) => panic!("the run did not start: {err}"),
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the run did not start: {err}");
    }
    std::thread::sleep(Duration::from_secs(1));
    drop(s);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "ferrite hangs after its RPC server went away");
        std::thread::sleep(Duration::from_millis(50));
    };
    // the reader ends with the pipe
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        err += &(line + "\n");
    }
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.contains("a device failed") && last.contains("RPC server"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn layers_are_split_by_the_memory_servers_report() {
    // --mem caps what a server reports; without --tensor-split the client splits by it (3:1)
    let (a, b) = (server(&["--mem", "3000"]), server(&["--mem", "1000"]));
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite")).args(["info", "--devices", "--json", "--rpc", &a.endpoint]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let remote = v.as_array().unwrap().iter().find(|d| d["description"].as_str().is_some_and(|x| x.contains(&a.endpoint))).unwrap().clone();
    assert_eq!(remote["memory_total"].as_u64(), Some(3000 << 20), "{v}");
    let rpc = format!("{},{}", a.endpoint, b.endpoint);
    let (local, _, _) = ferrite_run("smollm2", "The capital of France is", &[]);
    let (split, _, log) = ferrite_run("smollm2", "The capital of France is", &["--rpc", &rpc]);
    assert!(log.contains("blocks 0-23;") && log.contains("blocks 24-29 + output"), "{log}");
    assert_eq!(split, local);
}
