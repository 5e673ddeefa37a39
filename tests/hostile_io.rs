//! Hostile inputs and failing outputs around the real binary (issue 14, items 2 and 4): special
//! files (`/dev/zero`, `/dev/full`, a FIFO nobody writes to, a directory) and oversized inputs
//! given to `-f`, `--session`, stdin and `/load` are one-line exit-2 refusals within a second;
//! a full disk on stdout is exit 1 (on stderr it costs only the log); a session file that cannot
//! be written is refused before generating; two processes on one session file cannot lose a turn
//! (the lock); a session saved with another `-c` or cache type is prefilled again from its
//! messages instead of refused.

mod common_cli;

use common_cli::{smollm2, snapshot, Scratch, Tmux, FERRITE};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A refusal that needs no model (checked from metadata first) must come within this.
const QUICK: Duration = Duration::from_secs(1);
/// A refusal that comes after the model is loaded (it needs the model's sizes) gets this, so a
/// busy machine does not fail the test; a hang or an unbounded read takes far longer.
const AFTER_LOAD: Duration = Duration::from_secs(3);
/// Processes are killed after this: a hang shows as a failure, not a stuck test.
const KILL_AFTER: Duration = Duration::from_secs(20);

/// What the process reads on stdin.
enum Input<'a> {
    Null,
    Bytes(&'a [u8]),
    File(&'a str),
}

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    wall: Duration,
}

/// Runs `ferrite ARGS` (stdout to `stdout_file` when given), killing it after `KILL_AFTER`.
fn run(args: &[&str], input: Input, stdout_file: Option<&str>) -> Out {
    let t = Instant::now();
    let mut c = Command::new(FERRITE);
    c.args(args).stderr(Stdio::piped());
    c.stdin(match &input {
        Input::Null => Stdio::null(),
        Input::Bytes(_) => Stdio::piped(),
        Input::File(f) => Stdio::from(std::fs::File::open(f).unwrap()),
    });
    c.stdout(match stdout_file {
        Some(f) => Stdio::from(std::fs::OpenOptions::new().write(true).open(f).unwrap()),
        None => Stdio::piped(),
    });
    let mut child = c.spawn().expect("starting ferrite");
    if let Input::Bytes(b) = input {
        let mut w = child.stdin.take().unwrap();
        let b = b.to_vec();
        // the writer fails with EPIPE once ferrite stops reading: that is the point
        std::thread::spawn(move || {
            let _ = w.write_all(&b);
        });
    }
    let mut out = child.stdout.take();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut s);
        }
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > KILL_AFTER {
            child.kill().ok();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = t.elapsed();
    Out {
        code: status.code(),
        stdout: String::from_utf8_lossy(&to.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&te.join().unwrap()).into_owned(),
        wall,
    }
}

/// Checks a refusal: exit `code`, nothing on stdout, one stderr line `ferrite: ...` containing
/// every needle, within `limit`.
fn refused(what: &str, o: &Out, code: i32, needles: &[&str], limit: Duration) -> Result<(), String> {
    let err = o.stderr.strip_suffix('\n').unwrap_or(&o.stderr);
    let mut bad = Vec::new();
    if o.code != Some(code) {
        bad.push(format!("exit {:?}, expected {code}", o.code));
    }
    if err.is_empty() || err.contains('\n') || !err.starts_with("ferrite: ") {
        bad.push("stderr is not one 'ferrite: ' line".to_string());
    }
    for n in needles {
        if !err.contains(n) {
            bad.push(format!("stderr does not mention {n:?}"));
        }
    }
    if !o.stdout.is_empty() {
        bad.push(format!("stdout is not empty: {:?}", o.stdout.chars().take(100).collect::<String>()));
    }
    if o.wall >= limit {
        bad.push(format!("took {:?} (limit {limit:?})", o.wall));
    }
    eprintln!("{what:>50} | {:?} | {:>5} ms | {err}", o.code, o.wall.as_millis());
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}\n    stderr: {:?}", bad.join("; "), o.stderr))
    }
}

fn assert_all(failures: Vec<String>) {
    assert!(failures.is_empty(), "{} violation(s):\n  {}", failures.len(), failures.join("\n  "));
}

fn mkfifo(p: &Path) {
    assert!(Command::new("mkfifo").arg(p).status().expect("mkfifo").success());
}

fn is_root() -> bool {
    let o = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

/// Makes `p` unwritable for the user running the tests, whoever that is: root ignores mode
/// bits, so as root the immutable flag (`chattr +i`), which binds root too. Returns the undo.
fn make_unwritable(p: &Path) -> Box<dyn FnOnce()> {
    let ps = p.to_string_lossy().into_owned();
    if is_root() {
        let ok = Command::new("chattr").args(["+i", &ps]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "chattr +i {ps} failed: the tests run as root and need a filesystem with the immutable flag (ext4, xfs, btrfs)");
        Box::new(move || {
            let _ = Command::new("chattr").args(["-i", &ps]).status();
        })
    } else {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & !0o222)).unwrap();
        let p = p.to_path_buf();
        Box::new(move || {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
        })
    }
}

/// A real session file (one short greedy turn) at `p`.
fn make_session(model: &str, p: &Path, ctx: &str) {
    let o =
        run(&["run", "-m", model, "--temp", "0", "-c", ctx, "-n", "2", "-q", "--session", &p.to_string_lossy(), "Hi"], Input::Null, None);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}

fn messages_in(p: &Path) -> usize {
    let b = std::fs::read(p).unwrap();
    String::from_utf8_lossy(&b).matches("\"role\":").count()
}

// ---- item 2: special files and sizes ----------------------------------------------------------

/// `-f`, `run --session` and `chat --session` given each special file: exit 2 with one line,
/// from the path's metadata, before the model loads (so well within a second), never opening it.
#[test]
fn special_files_are_refused_at_once() {
    let model = smollm2();
    let dir = Scratch::new("io-special");
    let fifo = dir.path("fifo");
    mkfifo(&fifo);
    let sub = dir.path("subdir");
    std::fs::create_dir(&sub).unwrap();
    let paths = [
        ("/dev/zero".to_string(), "not a regular file (a character device)"),
        ("/dev/full".to_string(), "not a regular file (a character device)"),
        (fifo.to_string_lossy().into_owned(), "not a regular file (a FIFO)"),
        (sub.to_string_lossy().into_owned(), "is a directory"),
    ];
    let mut failures = Vec::new();
    for (p, msg) in &paths {
        let cases: [(&str, Vec<&str>, &str); 3] = [
            ("run -f", vec!["run", "-m", &model, "-n", "1", "-f", p], "prompt file"),
            ("run --session", vec!["run", "-m", &model, "-n", "1", "--session", p, "hi"], "session file"),
            ("chat --session", vec!["chat", "-m", &model, "--session", p], "session file"),
        ];
        for (what, args, kind) in cases {
            let o = run(&args, Input::Null, None);
            if let Err(e) = refused(&format!("{what} {p}"), &o, 2, &[p, msg, kind], QUICK) {
                failures.push(e);
            }
        }
    }
    assert_all(failures);
}

/// A 5 MB prompt, whichever way it comes, is refused from its byte size (the cap: 16 bytes a
/// token of the context, at least 64 KiB), not tokenized; an endless stdin (`/dev/zero`) is
/// refused once the cap is crossed; an argument cannot be 5 MB on Linux (one argument is at
/// most 128 KiB), so 100 KB stands for it. A session file larger than the model's context can
/// hold (a sparse 3 GiB file) is refused from its size without being read.
#[test]
fn oversized_inputs_are_refused_from_their_size() {
    let model = smollm2();
    let dir = Scratch::new("io-sizes");
    let big = "All work and no play makes Jack a dull boy.\n".repeat(5_000_000 / 44);
    let big_file = dir.path("big.txt");
    std::fs::write(&big_file, &big).unwrap();
    let bf = big_file.to_string_lossy().into_owned();
    let arg = big[..100_000].to_string();
    let huge = dir.path("huge.session");
    std::fs::File::create(&huge).unwrap().set_len(3 << 30).unwrap();
    let hs = huge.to_string_lossy().into_owned();
    let cap = "at most 65536 bytes";
    let mut failures = Vec::new();
    let mut check = |what: &str, o: Out, needles: &[&str], limit: Duration| {
        if let Err(e) = refused(what, &o, 2, needles, limit) {
            failures.push(e);
        }
    };
    check("-f FILE (5 MB)", run(&["run", "-m", &model, "-f", &bf], Input::Null, None), &[&bf, "4.8 MiB", cap, "raise -c"], QUICK);
    check("-f - (5 MB piped)", run(&["run", "-m", &model, "-f", "-"], Input::Bytes(big.as_bytes()), None), &["standard input", cap], QUICK);
    check(
        "PROMPT + 5 MB document piped",
        run(&["run", "-m", &model, "Summarize:"], Input::Bytes(big.as_bytes()), None),
        &["standard input", cap],
        QUICK,
    );
    check("5 MB piped, no PROMPT", run(&["run", "-m", &model], Input::Bytes(big.as_bytes()), None), &["standard input", cap], QUICK);
    check("-f - < /dev/zero", run(&["run", "-m", &model, "-f", "-"], Input::File("/dev/zero"), None), &["standard input", cap], QUICK);
    check("PROMPT < /dev/zero", run(&["run", "-m", &model, "hi"], Input::File("/dev/zero"), None), &["standard input", cap], QUICK);
    check("PROMPT of 100 KB", run(&["run", "-m", &model, &arg], Input::Null, None), &["PROMPT is 100000 bytes", cap], QUICK);
    // the cap follows -c
    check("-c 8192: 5 MB", run(&["run", "-m", &model, "-c", "8192", "-f", &bf], Input::Null, None), &["at most 131072 bytes"], QUICK);
    check(
        "--session of 3 GiB",
        run(&["run", "-m", &model, "-c", "512", "--session", &hs, "hi"], Input::Null, None),
        &[&hs, "3072.0 MiB", "session file"],
        AFTER_LOAD,
    );
    assert_all(failures);
}

/// `/load` in the REPL given each special file or an oversized file: the one-line error comes at
/// once (a FIFO nobody writes to does not block), and the REPL goes on with its conversation.
#[test]
fn repl_load_refuses_special_and_oversized_files() {
    let model = smollm2();
    let dir = Scratch::new("io-load");
    let fifo = dir.path("fifo");
    mkfifo(&fifo);
    std::fs::create_dir(dir.path("subdir")).unwrap();
    std::fs::File::create(dir.path("huge.session")).unwrap().set_len(3 << 30).unwrap();
    let t = Tmux::start("io-load", &dir.0, &["chat", "-m", &model, "--temp", "0", "-c", "512", "-n", "4"]);
    t.wait_prompt(1, 60);
    t.line("Hi");
    t.wait_prompt(2, 60);
    let cases = [
        ("/dev/zero", "/dev/zero: not a regular file (a character device), cannot be a session file"),
        ("/dev/full", "/dev/full: not a regular file (a character device), cannot be a session file"),
        ("fifo", "fifo: not a regular file (a FIFO), cannot be a session file"),
        ("subdir", "subdir: is a directory, cannot be a session file"),
        ("huge.session", "huge.session: 3072.0 MiB is larger than a session file can be here"),
    ];
    for (i, (file, msg)) in cases.iter().enumerate() {
        let t0 = Instant::now();
        t.line(&format!("/load {file}"));
        t.wait_for(msg, 5);
        t.wait_prompt(3 + i, 5);
        assert!(t0.elapsed() < Duration::from_secs(3), "/load {file} took {:?}", t0.elapsed());
    }
    t.line("/show");
    t.wait_for("(2 messages)", 10);
    t.line("/exit");
    assert_eq!(t.wait_exit(30), 0);
}

// ---- item 4: writes that fail ------------------------------------------------------------------

/// The answer to a full disk is exit 1 with one line, as text and as JSON; nothing is saved.
#[test]
fn answer_to_a_full_disk_is_exit_1() {
    let model = smollm2();
    let dir = Scratch::new("io-full");
    let s = dir.path("s.session");
    let ss = s.to_string_lossy().into_owned();
    let mut failures = Vec::new();
    for json in [false, true] {
        let mut a = vec!["run", "-m", &model, "--temp", "0", "-c", "512", "-n", "4", "-q", "--session", &ss];
        if json {
            a.push("--json");
        }
        a.push("Hi");
        let o = run(&a, Input::Null, Some("/dev/full"));
        if let Err(e) = refused(
            if json { "--json > /dev/full" } else { "text > /dev/full" },
            &o,
            1,
            &["writing the answer to stdout failed: No space left on device"],
            KILL_AFTER,
        ) {
            failures.push(e);
        }
    }
    assert_all(failures);
    assert!(!s.exists(), "a session whose answer was lost is not saved");
}

/// A log on a full disk (`2>>log`) costs the log, not the run: the answer still reaches stdout
/// with exit 0 (and `-v`'s extra lines change nothing), a refusal keeps its exit code 2, a full
/// stdout keeps its 1. `eprintln!` would panic there (exit 101), inside ggml's log callback abort.
#[test]
fn stderr_on_a_full_disk_keeps_answers_and_exit_codes() {
    let model = smollm2();
    let full = || Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap());
    let cases: [(&[&str], bool, i32); 4] = [
        (&["run", "-m", &model, "--temp", "0", "-c", "512", "-n", "4", "Hi"], false, 0),
        (&["run", "-m", &model, "--temp", "0", "-c", "512", "-n", "4", "-v", "Hi"], false, 0),
        (&["run", "-m", "/nonexistent/model.gguf", "Hi"], false, 2),
        (&["run", "-m", &model, "--temp", "0", "-c", "512", "-n", "4", "Hi"], true, 1),
    ];
    let mut failures = Vec::new();
    for (args, stdout_full, code) in cases {
        let o = Command::new(FERRITE)
            .args(args)
            .stdin(Stdio::null())
            .stdout(if stdout_full { full() } else { Stdio::piped() })
            .stderr(full())
            .output()
            .expect("starting ferrite");
        let stdout = String::from_utf8_lossy(&o.stdout);
        let want_answer = code == 0;
        if o.status.code() != Some(code) || want_answer == stdout.trim().is_empty() {
            failures.push(format!("{args:?} (stdout full: {stdout_full}): exit {:?} (want {code}), stdout {stdout:?}", o.status.code()));
        }
    }
    assert_all(failures);
}

/// A session file that cannot be written is refused before the model is loaded, so before
/// anything is generated: a missing directory, a directory that refuses new files, a file whose
/// permission bits say read-only (honoured for root too: they state the owner's intent), and a
/// file the system refuses to open for writing (immutable for root, mode bits otherwise).
#[test]
fn unwritable_sessions_are_refused_before_generating() {
    let model = smollm2();
    let dir = Scratch::new("io-unwritable");
    let mut failures = Vec::new();
    let mut check = |what: &str, path: &Path, needles: &[&str]| {
        let ps = path.to_string_lossy().into_owned();
        let o = run(&["run", "-m", &model, "--temp", "0", "-c", "512", "-n", "4", "--session", &ps, "Hi"], Input::Null, None);
        if let Err(e) = refused(what, &o, 2, needles, QUICK) {
            failures.push(e);
        }
    };
    check("missing directory", &dir.path("nowhere/s.session"), &["cannot save the session", "directory", "does not exist"]);

    let ro = dir.path("ro");
    std::fs::create_dir(&ro).unwrap();
    let undo = make_unwritable(&ro);
    check("unwritable directory", &ro.join("s.session"), &["cannot save the session", "is not writable"]);
    undo();
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0, "nothing was left in the directory");

    let s = dir.path("s.session");
    make_session(&model, &s, "512");
    let before = snapshot(&s);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o444)).unwrap();
    check("read-only file (mode 444)", &s, &["read-only; not replacing it"]);
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(snapshot(&s), before, "the read-only session file is untouched");

    let undo = make_unwritable(&s);
    check("file refused by the system", &s, &["cannot be written"]);
    undo();
    assert_eq!(snapshot(&s), before, "the unwritable session file is untouched");
    assert_all(failures);
}

/// The advisory lock: while another process holds a session file, `run --session` waits up to
/// 5 s for it, then fails with exit 1; released meanwhile, it goes on. Two real processes on one
/// file never both succeed with a turn lost.
#[test]
fn a_second_process_on_one_session_waits_then_fails() {
    let model = smollm2();
    let dir = Scratch::new("io-lock");
    let s = dir.path("s.session");
    let ss = s.to_string_lossy().into_owned();
    make_session(&model, &s, "512");
    let args = ["run", "-m", &model, "--temp", "0", "-c", "512", "-n", "2", "-q", "--session", &ss, "Again"];

    // held by "another process" (this test, on the documented companion lock file)
    let lock = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.path(".s.session.lock")).unwrap();
    lock.lock().unwrap();
    let before = snapshot(&s);
    let o = run(&args, Input::Null, None);
    refused("session held for good", &o, 1, &[&ss, "in use by another ferrite process", "waited 5 s"], Duration::from_secs(9)).unwrap();
    assert!(o.wall >= Duration::from_secs(5), "it waited: {:?}", o.wall);
    assert_eq!(snapshot(&s), before);

    // released after a second: the waiting process takes its turn
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        lock.unlock().unwrap();
    });
    let o = run(&args, Input::Null, None);
    releaser.join().unwrap();
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(messages_in(&s), 4);

    // two at once: each either adds its turn or fails saying so
    let a = std::thread::spawn({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || run(&args.iter().map(String::as_str).collect::<Vec<_>>(), Input::Null, None)
    });
    let b = run(&args, Input::Null, None);
    let a = a.join().unwrap();
    let ok = [&a, &b].iter().filter(|o| o.code == Some(0)).count();
    for o in [&a, &b] {
        assert!(o.code == Some(0) || (o.code == Some(1) && o.stderr.contains("in use by another ferrite process")), "{o:?}");
    }
    assert_eq!(messages_in(&s), 4 + 2 * ok, "every process that succeeded kept its turn");
}

/// A session saved with one `-c` and cache type continues under others: the conversation is
/// prefilled again from its messages (announced on stderr), later turns reuse the cache again,
/// and saving leaves no temporary file behind.
#[test]
fn sessions_survive_a_changed_context_or_cache_type() {
    let model = smollm2();
    let dir = Scratch::new("io-reprefill");
    let s = dir.path("s.session");
    let ss = s.to_string_lossy().into_owned();
    make_session(&model, &s, "512");
    let turn = |extra: &[&str], prompt: &str| {
        let mut a = vec!["run", "-m", &model, "--temp", "0", "-n", "4", "--session", &ss];
        a.extend_from_slice(extra);
        a.push(prompt);
        let o = run(&a, Input::Null, None);
        assert_eq!(o.code, Some(0), "{extra:?}: {}", o.stderr);
        o
    };
    let json = |o: &Out| -> serde_json::Value { serde_json::from_str(o.stdout.trim()).unwrap() };
    let computed = |v: &serde_json::Value| (v["timings"]["prompt_tokens_computed"].as_u64().unwrap(), v["prompt_tokens"].as_u64().unwrap());

    // another -c: the notice (not in --json, which keeps stderr quiet), then everything computed
    let o = turn(&["-c", "1024"], "What is 2+2?");
    assert!(o.stderr.contains("different context size (-c)") && o.stderr.contains("computed again"), "{}", o.stderr);
    let o = turn(&["-c", "768", "--json"], "And 3+3?");
    let (c, p) = computed(&json(&o));
    assert_eq!(c, p, "the whole conversation is prefilled again");
    // another cache type
    let o = turn(&["-c", "768", "-ctk", "q8_0", "-ctv", "q8_0", "--json"], "And 4+4?");
    let (c, p) = computed(&json(&o));
    assert_eq!(c, p);
    // the same settings again: the saved cache is used
    let o = turn(&["-c", "768", "-ctk", "q8_0", "-ctv", "q8_0", "--json"], "And 5+5?");
    let (c, p) = computed(&json(&o));
    assert!(c < p / 2, "the cache is reused: {c} of {p} computed");
    assert_eq!(messages_in(&s), 10, "no turn was lost");
    let names: Vec<String> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, [".s.session.lock", "s.session"], "no temporary or probe file is left");
}
