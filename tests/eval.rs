//! `ferrite eval` as a user runs it: a suite over two sizes of one model (smollm2 Q4_1 and the
//! same requantized to Q8_0). Every answer equals what `ferrite run` answers for that prompt, the
//! counts equal an independent judging of `run`'s answers, the report gives size, accuracy,
//! speed and memory, names the smallest passing model, and bad suites are one-line errors.

mod heavy;
mod paths;

use paths::root;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ferrite(args: &[&str], what: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(args);
    heavy::output(&mut cmd, what, heavy::LIMIT)
}

fn suite() -> PathBuf {
    root().join("tests/evals/smoke.jsonl")
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrite-eval-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The two models: smollm2 as fetched, and a larger requantization of it.
fn models(dir: &Path) -> (PathBuf, PathBuf) {
    let q4 = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let q8 = dir.join("smollm2-q8_0.gguf");
    if !q8.exists() {
        let o = ferrite(&["quantize", "-q", "--allow-requantize", q4.to_str().unwrap(), q8.to_str().unwrap(), "Q8_0", "2"], "quantize");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    (q4, q8)
}

/// The test's own judge of an answer (written apart from ferrite's, to check it).
fn judge(case: &Value, answer: &str) -> bool {
    let expect = case["expect"].as_str().unwrap_or("");
    let lower = |s: &str| s.to_lowercase();
    match case["check"].as_str().unwrap_or("exact") {
        "exact" => answer.trim() == expect.trim(),
        "contains" if case["ignore_case"] == true => lower(answer).contains(&lower(expect)),
        "contains" => answer.contains(expect),
        "regex" => regex::Regex::new(expect).unwrap().is_match(answer),
        "json_schema" => {
            // the suite's schemas ask for an object with string "name"
            let block = answer.split("```").nth(1).map(|b| b.trim_start_matches("json"));
            let v: Option<Value> =
                serde_json::from_str(answer.trim()).ok().or_else(|| block.and_then(|b| serde_json::from_str(b.trim()).ok()));
            v.is_some_and(|v| v["name"].is_string())
        }
        "choice" => {
            let words: Vec<String> =
                lower(answer).split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(String::from).collect();
            let choices: Vec<String> = case["choices"].as_array().unwrap().iter().map(|c| lower(c.as_str().unwrap())).collect();
            // the first word when it is a choice, else the only choice named
            let named: Vec<&String> = choices.iter().filter(|c| words.contains(c)).collect();
            let picked = match words.first() {
                Some(w) if choices.contains(w) => Some(w),
                _ if named.len() == 1 => Some(named[0]),
                _ => None,
            };
            picked == Some(&lower(expect))
        }
        other => panic!("the suite has an unknown check {other}"),
    }
}

/// The prompt text `ferrite run` is given for a case (its one user turn).
fn prompt_of(case: &Value) -> String {
    match case.get("prompt") {
        Some(p) => p.as_str().unwrap().to_string(),
        None => case["messages"][0]["content"].as_str().unwrap().to_string(),
    }
}

#[test]
fn eval_counts_agree_with_ferrite_run() {
    let dir = scratch();
    let (q4, q8) = models(&dir);
    let s = suite();
    let cases: Vec<Value> =
        std::fs::read_to_string(&s).unwrap().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    let o = ferrite(
        &[
            "eval",
            s.to_str().unwrap(),
            "-m",
            q4.to_str().unwrap(),
            "-m",
            q8.to_str().unwrap(),
            "-t",
            "2",
            "--min-accuracy",
            "0.2",
            "--json",
        ],
        "ferrite eval --json",
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    let ms = report["models"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(report["cases"], cases.len());
    let mut passing = Vec::new();
    for (m, path) in ms.iter().zip([&q4, &q8]) {
        assert_eq!(m["model"], path.to_str().unwrap());
        assert_eq!(m["size_bytes"], std::fs::metadata(path).unwrap().len());
        let results = m["results"].as_array().unwrap();
        let mut passed = 0;
        for (case, r) in cases.iter().zip(results) {
            let n = case["max_tokens"].as_u64().unwrap().to_string();
            let run = ferrite(&["run", "-m", path.to_str().unwrap(), "--temp", "0", "-n", &n, "-t", "2", &prompt_of(case)], "ferrite run");
            assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
            let answer = String::from_utf8(run.stdout).unwrap();
            let answer = answer.strip_suffix('\n').unwrap_or(&answer);
            assert_eq!(r["answer"], answer, "{}: case {}: eval's answer is not run's", path.display(), case["id"]);
            let ok = judge(case, answer);
            assert_eq!(r["passed"], ok, "{}: case {} judged differently: {answer:?}", path.display(), case["id"]);
            passed += usize::from(ok);
        }
        eprintln!("{}: {passed}/{} passed; eval: {}", path.display(), cases.len(), m);
        assert_eq!(m["passed"], passed);
        let acc = passed as f64 / cases.len() as f64;
        assert!((m["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12);
        let (lo, hi) = (m["ci95"][0].as_f64().unwrap(), m["ci95"][1].as_f64().unwrap());
        assert!(lo <= acc && acc <= hi && hi - lo > 0.1, "interval {lo}..{hi} around {acc}");
        assert!(m["tokens_per_second"].as_f64().unwrap() > 0.0 && m["completion_tokens"].as_u64().unwrap() > 0);
        // the model is mapped and read: its resident peak is at least a good part of the file
        let rss = m["peak_rss_bytes"].as_u64().unwrap();
        assert!(rss > m["size_bytes"].as_u64().unwrap() / 2 && rss < 4 << 30, "peak RSS {rss}");
        if acc >= 0.2 {
            passing.push(path.to_str().unwrap());
        }
    }
    // the smaller file (Q4_1) first
    assert_eq!(report["smallest_passing"], passing.first().map(|p| Value::from(*p)).unwrap_or(Value::Null));
    assert_eq!(o.status.code(), Some(if passing.is_empty() { 3 } else { 0 }), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_table_the_plot_and_the_bar() {
    let dir = scratch().join("table");
    std::fs::create_dir_all(&dir).unwrap();
    let (q4, q8) = models(&dir);
    let s = suite();
    let plot = dir.join("accuracy.svg");
    let args = ["eval", s.to_str().unwrap(), "-m", q8.to_str().unwrap(), "-m", q4.to_str().unwrap(), "-t", "2", "--show-failures"];
    let o = ferrite(&[&args[..], &["--plot", plot.to_str().unwrap(), "--min-accuracy", "100%"]].concat(), "ferrite eval");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    for want in
        ["model", "size", "accuracy", "95% interval", "t/s", "peak RSS", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-q8_0.gguf", "MiB"]
    {
        assert!(out.contains(want), "no {want:?} in the table:\n{out}");
    }
    // these small models do not answer everything: the bar is missed, exit 3 with one line
    assert_eq!(o.status.code(), Some(3), "{out}{err}");
    assert!(out.contains("no model reaches 100.0%") && out.contains("failures of"), "{out}");
    assert!(err.lines().last().unwrap().starts_with("ferrite: no model reaches --min-accuracy 100.0%"), "{err}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("smollm2-q8_0.gguf") && svg.contains("accuracy"), "{svg}");
    // no bar: the smallest of the best
    let o = ferrite(&[&args[..], &["-q"]].concat(), "ferrite eval, no bar");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("smallest with the best accuracy"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_suites_and_models_are_refused_before_running() {
    let dir = scratch().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let m = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let ms = m.to_str().unwrap();
    for (name, text, want) in [
        ("check", "{\"prompt\": \"p\", \"expect\": \"x\"}\n{\"prompt\": \"p\", \"expect\": \"x\", \"check\": \"close\"}\n", "suite line 2"),
        ("json", "not json\n", "suite line 1: not JSON"),
        ("empty", "\n\n", "no cases"),
        ("regex", "{\"prompt\": \"p\", \"expect\": \"(\", \"check\": \"regex\"}\n", "not a regular expression"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let o = ferrite(&["eval", p.to_str().unwrap(), "-m", ms], name);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want) && err.lines().count() == 1, "{name}: {err}");
    }
    let s = suite();
    for (args, want) in [
        (vec!["eval", "/dev/zero", "-m", ms], "not a regular file"),
        (vec!["eval", s.to_str().unwrap(), "-m", ms, "-m", "/nonexistent.gguf"], "nonexistent"),
        (vec!["eval", s.to_str().unwrap(), "-m", ms, "--min-accuracy", "150"], "percentage"),
        (vec!["eval", s.to_str().unwrap(), "-m", ms, "--plot", "/tmp"], "not a regular file"),
    ] {
        let o = ferrite(&args, want);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
