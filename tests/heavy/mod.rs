//! Compute-bound child processes of the integration tests (ferrite and llama.cpp runs): one at a
//! time per test binary, stdin closed, and killed with a clear failure past a time limit.
//!
//! Why one at a time: each child runs ggml with 2 threads; two tests doing so at once on a 2-core
//! machine put 4 spinning threads on 2 cores, which costs far more than running them in turn.
//! Why a limit: a child that hangs must fail its test, not stall the whole CI run.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Generous for any single run of the test models on a slow 2-core machine (they take 0.2-2 s
/// here, a perplexity run about a minute).
pub const LIMIT: Duration = Duration::from_secs(600);

/// A child slower than this is reported on stderr as it ends (past libtest's capture), so a slow
/// CI log shows where its time goes.
const SLOW: Duration = Duration::from_secs(20);

/// Runs `cmd` to completion alone (among this binary's heavy children) and returns its output;
/// panics naming `what` if it cannot start or runs past `limit`.
pub fn output(cmd: &mut Command, what: &str, limit: Duration) -> Output {
    output_from(cmd, Stdio::null(), what, limit)
}

/// `output` with `stdin` (a file, say) as the child's standard input.
pub fn output_from(cmd: &mut Command, stdin: Stdio, what: &str, limit: Duration) -> Output {
    // a test that panicked while holding the lock leaves nothing half-done behind it
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let mut child =
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    // drain the pipes on threads so a chatty child cannot block on a full pipe
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).ok();
        b
    });
    let te = std::thread::spawn(move || {
        let mut b = Vec::new();
        err.read_to_end(&mut b).ok();
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for a child") {
            break s;
        }
        if t.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            let e = te.join().unwrap();
            panic!("{what}: still running after {limit:?}, killed; stderr:\n{}", String::from_utf8_lossy(&e));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if t.elapsed() > SLOW {
        // std::io::stderr() directly: libtest captures only the print macros
        let _ = writeln!(std::io::stderr(), "heavy: {what} took {:.1} s", t.elapsed().as_secs_f64());
    }
    Output { status, stdout: to.join().unwrap(), stderr: te.join().unwrap() }
}
