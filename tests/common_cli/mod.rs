//! Helpers for the tests that drive the real `ferrite` binary: the model path, scratch
//! directories, and a tmux session that runs the REPL in a pseudo-terminal.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const FERRITE: &str = env!("CARGO_BIN_EXE_ferrite");

/// Bans SmolLM2's end tokens (<|endoftext|>, <|im_start|>, <|im_end|>) so a greedy answer runs
/// until -n or Ctrl-C.
pub const NO_EOS: [&str; 6] = ["--logit-bias", "0-inf", "--logit-bias", "1-inf", "--logit-bias", "2-inf"];

/// The default test model (fails with the fix when it is missing).
pub fn smollm2() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run models/fetch.sh smollm2 (or scripts/test.sh)", p.display());
    p.to_string_lossy().into_owned()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("ferrite-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Quotes a word for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Marker the wrapper shell prints when ferrite ends: `[ferrite exited N]`.
const EXIT_MARK: &str = "[ferrite exited ";

/// One tmux server (own socket) running one command in a 200x50 pane; killed on drop, so a
/// failing test leaves nothing behind.
pub struct Tmux {
    socket: String,
    pub log: PathBuf,
}

impl Tmux {
    /// Starts `ferrite ARGS` in a pseudo-terminal; stderr goes to the pane as well.
    pub fn start(name: &str, dir: &Path, args: &[&str]) -> Tmux {
        let ok = Command::new("tmux").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
        assert!(ok, "tmux is required for the REPL tests: apt-get install -y tmux (scripts/deps.sh installs it)");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let socket = format!("ferrite-{name}-{}-{n}", std::process::id());
        let cmd: Vec<String> =
            std::iter::once(FERRITE.to_string()).chain(args.iter().map(|a| a.to_string())).map(|a| sh_quote(&a)).collect();
        let hist = dir.join("history");
        let script = format!(
            // the wrapper shell shares ferrite's process group, so it gets the Ctrl-Cs too: a
            // no-op trap keeps it alive (and, unlike ignoring, is not inherited by ferrite)
            "trap : INT; cd {}; FERRITE_HISTORY={} {}; echo \"{EXIT_MARK}$?]\"; sleep 600",
            sh_quote(&dir.to_string_lossy()),
            sh_quote(&hist.to_string_lossy()),
            cmd.join(" ")
        );
        let t = Tmux { socket, log: dir.join("pane.txt") };
        let st = Command::new("tmux")
            .args(["-L", &t.socket, "-f", "/dev/null", "new-session", "-d", "-x", "200", "-y", "50", "sh", "-c", &script])
            .env_remove("TMUX")
            .status()
            .expect("running tmux");
        assert!(st.success(), "tmux new-session failed");
        t
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("running tmux")
    }

    /// The whole pane with its scrollback, wrapped lines joined.
    pub fn screen(&self) -> String {
        let o = self.tmux(&["capture-pane", "-p", "-J", "-S", "-5000"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Types `text` literally, then Enter.
    pub fn line(&self, text: &str) {
        assert!(self.tmux(&["send-keys", "-l", text]).status.success());
        self.key("Enter");
    }

    /// Sends a key (`C-c`, `C-d`, `Enter`).
    pub fn key(&self, k: &str) {
        assert!(self.tmux(&["send-keys", k]).status.success());
    }

    /// Waits until `pred(screen)` holds, up to `secs`; panics with the screen otherwise.
    pub fn wait(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if t.elapsed() > Duration::from_secs(secs) {
                panic!("timed out after {secs} s waiting for {what}; the pane shows:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for `needle` to appear.
    pub fn wait_for(&self, needle: &str, secs: u64) -> String {
        self.wait(&format!("{needle:?}"), secs, |s| s.contains(needle))
    }

    /// Waits until the REPL shows an empty prompt on its last line, with `n` prompts in all
    /// (so the prompt seen is a new one).
    pub fn wait_prompt(&self, n: usize, secs: u64) -> String {
        self.wait(&format!("prompt number {n}"), secs, |s| {
            let lines: Vec<&str> = s.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
            lines.last() == Some(&">>>") && lines.iter().filter(|l| l.starts_with(">>>")).count() >= n
        })
    }

    /// Waits for ferrite to end and returns its exit status.
    pub fn wait_exit(&self, secs: u64) -> i32 {
        let s = self.wait("ferrite to exit", secs, |s| s.contains(EXIT_MARK));
        let at = s.find(EXIT_MARK).unwrap() + EXIT_MARK.len();
        let end = s[at..].find(']').unwrap() + at;
        s[at..end].parse().unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // keep the last screen for post-mortems, then end the server and everything in it
        let _ = std::fs::write(&self.log, self.screen());
        let _ = self.tmux(&["kill-server"]);
    }
}

/// Output of a finished run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `ferrite ARGS` with stdin from `input` (empty when None), waiting for it.
pub fn ferrite(args: &[&str], input: Option<&str>) -> Run {
    use std::io::Write;
    use std::process::Stdio;
    let mut c = Command::new(FERRITE)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ferrite");
    let mut stdin = c.stdin.take().unwrap();
    let data = input.unwrap_or("").to_string();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(data.as_bytes());
    });
    let o = c.wait_with_output().unwrap();
    w.join().unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A file's bytes and modification time, to show it was not touched.
pub fn snapshot(p: &Path) -> (Vec<u8>, std::time::SystemTime) {
    (std::fs::read(p).unwrap(), std::fs::metadata(p).unwrap().modified().unwrap())
}

/// The "prompt N tok" count of each timing line in `s`.
pub fn prefill_counts(s: &str) -> Vec<usize> {
    s.lines()
        .filter_map(|l| l.trim_start().strip_prefix("prompt ").and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()))
        .collect()
}
