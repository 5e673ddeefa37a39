//! `ferrite rpc-server` on loopback as llama.cpp's tools use one: llama-completion with all its
//! layers offloaded to ferrite's server (`--rpc HOST:PORT -ngl 99`) answers exactly as it does
//! alone; `info --devices --rpc` lists the server's device; a busy port, a server that is not
//! there, and a non-loopback address each get their one line.

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
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["rpc-server", "-p", &port.to_string(), "-t", "2"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let endpoint = format!("127.0.0.1:{port}");
    let t = Instant::now();
    while std::net::TcpStream::connect(&endpoint).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "ferrite rpc-server did not start on {endpoint}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, endpoint }
}

/// llama-completion's greedy answer (text on stdout), with `extra` flags.
fn completion(extra: &[&str]) -> (String, String) {
    let bin = llamacpp_bin().unwrap_or_else(|| panic!("the RPC server is checked with llama.cpp's client: {}", how_to_get_llamacpp()));
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut cmd = Command::new(bin.join("llama-completion"));
    cmd.env("LD_LIBRARY_PATH", &bin)
        .arg("-m")
        .arg(&model)
        .args(["-p", "The capital of France is", "-n", "24", "--temp", "0", "-t", "2", "-no-cnv", "--no-warmup", "-c", "512"])
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
