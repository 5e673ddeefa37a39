//! "As a user would": the habits people bring from llama.cpp and ollama, threads, the build's
//! CPU features, and the REPL's small commands — each a table row run through the real binary
//! with what the user would see checked (exit code, stdout, stderr). Long documents are in
//! `long_prompts.rs`, hostile files and failed writes in `hostile_io.rs`, templates in
//! `template_bounds.rs`.

mod common_cli;

use common_cli::{ferrite, smollm2, Run};

/// What a row expects.
struct Row {
    name: &'static str,
    args: &'static [&'static str],
    stdin: Option<&'static str>,
    code: i32,
    /// Substrings stderr must contain / must not contain.
    stderr_has: &'static [&'static str],
    stderr_lacks: &'static [&'static str],
    /// stdout must be non-empty (an answer came).
    answers: bool,
}

const ROWS: &[Row] = &[
    Row {
        name: "llama.cpp -ngl is accepted and explained",
        args: &["run", "-ngl", "99", "--temp", "0", "-n", "3", "hi"],
        stdin: None,
        code: 0,
        stderr_has: &["--n-gpu-layers", "CPU"],
        stderr_lacks: &["'-n'", "gl"],
        answers: true,
    },
    Row {
        name: "llama.cpp -sys is the system prompt",
        args: &["run", "-sys", "Answer in French.", "--temp", "0", "-n", "3", "--show-prompt", "hi"],
        stdin: None,
        code: 0,
        stderr_has: &["Answer in French."],
        stderr_lacks: &[],
        answers: true,
    },
    Row {
        name: "llama.cpp -p is the prompt",
        args: &["run", "-p", "hi", "--temp", "0", "-n", "3", "--show-prompt"],
        stdin: None,
        code: 0,
        stderr_has: &["hi"],
        stderr_lacks: &[],
        answers: true,
    },
    Row {
        name: "--seed -1 is a random seed",
        args: &["run", "--seed", "-1", "-n", "2", "-v", "hi"],
        stdin: None,
        code: 0,
        stderr_has: &["ferrite: seed "],
        stderr_lacks: &["seed 18446744073709551615"],
        answers: true,
    },
    Row {
        name: "other negative seeds are refused",
        args: &["run", "--seed", "-7", "hi"],
        stdin: None,
        code: 2,
        stderr_has: &["--seed", "-7"],
        stderr_lacks: &[],
        answers: false,
    },
    Row {
        name: "an unknown multi-letter short flag is named as typed",
        args: &["run", "-nfoo", "hi"],
        stdin: None,
        code: 2,
        stderr_has: &["'-nfoo'"],
        stderr_lacks: &["'-n'", "'foo'"],
        answers: false,
    },
    Row {
        name: "--stop \"\" is refused",
        args: &["run", "--stop", "", "hi"],
        stdin: None,
        code: 2,
        stderr_has: &["empty stop string"],
        stderr_lacks: &[],
        answers: false,
    },
    Row {
        name: "--top-logits without --json is warned",
        args: &["run", "--top-logits", "3", "-n", "1", "hi"],
        stdin: None,
        code: 0,
        stderr_has: &["--top-logits", "--json"],
        stderr_lacks: &[],
        answers: true,
    },
    Row {
        name: "-c above the training context is warned",
        args: &["run", "-c", "9000", "-n", "1", "hi"],
        stdin: None,
        code: 0,
        stderr_has: &["9000", "8192", "trained"],
        stderr_lacks: &[],
        answers: true,
    },
    Row {
        name: "-v prints settings without Rust debug syntax",
        args: &["run", "-v", "-t", "2", "-n", "1", "hi"],
        stdin: None,
        code: 0,
        stderr_has: &["threads 2", "flash attention on"],
        stderr_lacks: &["Some(", "None"],
        answers: true,
    },
    Row {
        name: "-t above the CPUs is capped with one warning",
        args: &["run", "-t", "4096", "-n", "1", "hi"],
        stdin: None,
        code: 0,
        stderr_has: &["--threads 4096", "CPUs available"],
        stderr_lacks: &[],
        answers: true,
    },
    Row {
        name: "ollama's `run MODEL PROMPT`",
        args: &["run", "smollm2", "--temp", "0", "-n", "2", "-v", "hi"],
        stdin: None,
        code: 0,
        stderr_has: &["context"],
        stderr_lacks: &["no such file"],
        answers: true,
    },
    Row {
        name: "-cnv starts the REPL",
        args: &["run", "-cnv", "--temp", "0", "-n", "3"],
        stdin: Some("hi\n/exit\n"),
        code: 0,
        stderr_has: &["ferrite chat —", "SmolLM2", "context 4096", "template"],
        stderr_lacks: &[],
        answers: true,
    },
];

fn check(row: &Row, r: &Run) {
    let ctx = format!("{}: ferrite {:?}\nexit {}\nstdout: {}\nstderr: {}", row.name, row.args, r.code, r.stdout, r.stderr);
    assert_eq!(r.code, row.code, "{ctx}");
    for s in row.stderr_has {
        assert!(r.stderr.contains(s), "stderr lacks {s:?}: {ctx}");
    }
    for s in row.stderr_lacks {
        assert!(!r.stderr.contains(s), "stderr has {s:?}: {ctx}");
    }
    assert_eq!(!r.stdout.trim().is_empty(), row.answers, "{ctx}");
}

#[test]
fn habits_from_llamacpp_and_ollama() {
    smollm2();
    for row in ROWS {
        let r = ferrite(row.args, row.stdin);
        check(row, &r);
    }
}

/// Unquoted words are one prompt: `ferrite run What is ...` answers as the quoted prompt does.
#[test]
fn unquoted_words_are_joined() {
    let quoted = ferrite(&["run", "--raw", "--temp", "0", "-n", "6", "-q", "The capital of France is"], None);
    let words = ferrite(&["run", "--raw", "--temp", "0", "-n", "6", "-q", "The", "capital", "of", "France", "is"], None);
    assert_eq!(quoted.code, 0, "{}", quoted.stderr);
    assert_eq!(words.stdout, quoted.stdout, "{}", words.stderr);
    assert!(!words.stdout.trim().is_empty());
}

/// The thread warning is printed once, and the default is one thread per physical core (the
/// distinct hyper-thread sibling sets in sysfs, as llama.cpp counts them).
#[test]
fn threads_default_to_physical_cores_and_cap_at_the_cpus() {
    let r = ferrite(&["run", "-t", "4096", "-n", "1", "-v", "hi"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr.matches("CPUs available").count(), 1, "{}", r.stderr);
    let avail = std::thread::available_parallelism().unwrap().get();
    assert!(r.stderr.contains(&format!("threads {avail},")), "capped to {avail}: {}", r.stderr);

    let mut sets = std::collections::BTreeSet::new();
    for cpu in 0.. {
        match std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings")) {
            Ok(s) => sets.insert(s.trim().to_string()),
            Err(_) => break,
        };
    }
    let physical = if sets.is_empty() { avail } else { sets.len().min(avail) };
    let r = ferrite(&["run", "-n", "1", "-v", "hi"], None);
    assert!(r.stderr.contains(&format!("threads {physical},")), "default {physical}: {}", r.stderr);
}

/// `--help` names every built-in template.
#[test]
fn help_lists_every_builtin_template() {
    let r = ferrite(&["run", "--help"], None);
    assert_eq!(r.code, 0);
    let flat = r.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for name in ferrite::chat::BUILTIN_NAMES {
        assert!(flat.contains(&format!("{name},")) || flat.contains(&format!("{name})")), "--help lacks {name}: {flat}");
    }
}

/// `--version` names the commit, ggml and the CPU features the build needs; a CPU that lacks one
/// is refused at start, naming it (simulated with FERRITE_CPU_HIDE, the check's test switch).
#[test]
fn version_names_cpu_features_and_a_missing_one_is_refused() {
    let r = ferrite(&["--version"], None);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("ggml 0.26.0") && r.stdout.contains("commit "), "{}", r.stdout);
    let features = r.stdout.lines().find(|l| l.starts_with("built for:")).unwrap_or_else(|| panic!("{}", r.stdout));
    #[cfg(target_arch = "x86_64")]
    assert!(features.contains("avx2") && features.contains("fma"), "{features}");
    let need = features.split_whitespace().last().unwrap().to_string();

    let out =
        std::process::Command::new(common_cli::FERRITE).args(["run", "-n", "1", "hi"]).env("FERRITE_CPU_HIDE", &need).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("ferrite: ") && stderr.contains(&need) && stderr.contains("rebuild"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}

/// The REPL's small commands: `/system` alone shows the system prompt, `/set` confirms, and
/// `/show` right after `/undo` counts what the conversation holds now.
#[test]
fn repl_commands_say_what_they_did() {
    let input = "/system\n/system Be brief.\n/system\n/set temp 0\nhi\n/undo\n/show\n/exit\n";
    let r = ferrite(&["chat", "-n", "4", "--temp", "0.5"], Some(input));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("system prompt: (none)"), "{}", r.stderr);
    assert!(r.stderr.contains("system prompt: Be brief."), "{}", r.stderr);
    assert!(r.stderr.contains("temp set to 0"), "{}", r.stderr);
    assert!(r.stderr.contains("last exchange removed"), "{}", r.stderr);
    assert!(r.stderr.contains("context   0 used") && r.stderr.contains("(0 messages)"), "{}", r.stderr);
    assert!(r.stderr.contains("temp 0 "), "/show shows the set temperature: {}", r.stderr);
}

/// A 20-turn chat in a 256-token context, under each overflow policy: drop-oldest and shift keep
/// answering every turn; fail refuses the turns that no longer fit, one line each, and the REPL
/// goes on to the end.
#[test]
fn twenty_turn_chat_overflows_under_each_policy() {
    let input: String = (1..=20).map(|i| format!("Tell me fact number {i} about the sea.\n")).collect::<String>() + "/exit\n";
    for policy in ["drop-oldest", "shift", "fail"] {
        let r = ferrite(&["chat", "-c", "256", "--overflow", policy, "--temp", "0", "-n", "16"], Some(&input));
        assert_eq!(r.code, 0, "{policy}: {}", r.stderr);
        let answered = common_cli::prefill_counts(&r.stderr).len();
        if policy == "fail" {
            assert!(answered < 20 && answered > 0, "{policy}: {answered} answers\n{}", r.stderr);
            let refused = r.stderr.lines().filter(|l| l.starts_with("ferrite: ") && l.contains("--overflow fail")).count();
            assert!(refused > 0, "{policy}: {}", r.stderr);
        } else {
            assert_eq!(answered, 20, "{policy}: every turn answered\n{}", r.stderr);
            assert!(!r.stderr.lines().any(|l| l.starts_with("ferrite: ") && l.contains("error")), "{policy}: {}", r.stderr);
        }
    }
}

/// On a real older CPU: the binary under `qemu-x86_64 -cpu Haswell` (AVX2, FMA, F16C, BMI, no
/// AVX-512, GFNI, VAES or AVX-VNNI). A build that uses any feature Haswell lacks stops at start
/// with one line naming them (exit 1), not SIGILL; a build that needs none of them runs.
#[cfg(target_arch = "x86_64")]
#[test]
fn an_older_cpu_gets_one_line_not_sigill() {
    const HASWELL: &[&str] =
        &["sse3", "ssse3", "fma", "sse4.1", "sse4.2", "movbe", "popcnt", "avx", "f16c", "bmi1", "avx2", "bmi2", "lzcnt"];
    let have = std::process::Command::new("qemu-x86_64").arg("--version").output();
    assert!(have.is_ok_and(|o| o.status.success()), "qemu-x86_64 is missing: apt-get install qemu-user (scripts/deps.sh does)");
    let v = ferrite(&["--version"], None);
    let line = v.stdout.lines().find(|l| l.starts_with("built for:")).unwrap().to_string();
    let needs: Vec<&str> = line.split(" with ").nth(1).unwrap().split_whitespace().collect();
    let beyond: Vec<&str> = needs.iter().copied().filter(|f| !HASWELL.contains(f)).collect();
    let out = std::process::Command::new("qemu-x86_64").args(["-cpu", "Haswell", common_cli::FERRITE, "--version"]).output().unwrap();
    let stderr: String =
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.contains("TCG doesn't support")).collect::<Vec<_>>().join("\n");
    if beyond.is_empty() {
        assert_eq!(out.status.code(), Some(0), "a build for Haswell's features runs there: {stderr}");
    } else {
        assert_eq!(out.status.code(), Some(1), "needs {beyond:?}: exit {:?} (132 is SIGILL): {stderr}", out.status.code());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        for f in &beyond {
            assert!(stderr.contains(f), "{f} not named: {stderr}");
        }
        assert!(stderr.contains("rebuild"), "{stderr}");
    }
}
