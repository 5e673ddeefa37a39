//! `ferrite chat` driven through a pseudo-terminal (tmux) on the real SmolLM2 model: turns,
//! Ctrl-C during an answer and at the prompt, /undo, /regen, /save and /load in a new process,
//! exit codes, and corrupt session files. Greedy settings make the answers deterministic.

mod common_cli;

use common_cli::*;

/// `ferrite chat` with greedy sampling on SmolLM2, plus `extra` flags.
fn chat_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["chat", "-m", model, "--temp", "0", "-c", "1024"];
    v.extend_from_slice(extra);
    v
}

/// The text between the line `>>> {question}` and the timing line after it.
fn answer_to(screen: &str, question: &str) -> String {
    let start = screen.rfind(&format!(">>> {question}\n")).unwrap_or_else(|| panic!("no {question:?} turn in:\n{screen}"));
    let rest = &screen[start + question.len() + 5..];
    let end = rest.find("\nprompt ").unwrap_or_else(|| panic!("no timing line after {question:?} in:\n{screen}"));
    rest[..end].trim().to_string()
}

#[test]
fn a_turn_answers_and_the_second_prefills_only_new_tokens() {
    let model = smollm2();
    let dir = Scratch::new("turns");
    let t = Tmux::start("turns", &dir.0, &chat_args(&model, &["-n", "40"]));
    t.wait_prompt(1, 60);
    t.line("Hi");
    let s = t.wait_prompt(2, 60);
    let a = answer_to(&s, "Hi");
    assert!(!a.is_empty(), "no answer to Hi:\n{s}");
    t.line("What is 2+2?");
    let s = t.wait_prompt(3, 60);
    assert!(!answer_to(&s, "What is 2+2?").is_empty(), "no second answer:\n{s}");
    let counts = prefill_counts(&s);
    assert_eq!(counts.len(), 2, "two timing lines expected:\n{s}");
    // the second turn computes only what the cache lacks: the end of the first reply (its
    // end-of-turn token was sampled, not decoded) and the new user turn with the assistant header
    let new = ferrite(
        &["tokenize", "-m", &model, "--count", "--no-bos", "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"],
        None,
    );
    assert_eq!(new.code, 0, "{}", new.stderr);
    let expected: usize = new.stdout.trim().parse().unwrap();
    assert_eq!(counts[1], expected, "second turn prefill (first turn prefilled {}):\n{s}", counts[0]);
    assert!(counts[1] < counts[0], "{counts:?}");
    t.line("/exit");
    assert_eq!(t.wait_exit(30), 0);
}

#[test]
fn ctrl_c_stops_a_long_answer_and_the_next_turn_works() {
    let model = smollm2();
    let dir = Scratch::new("ctrlc");
    let mut extra = vec!["-n", "2000"];
    extra.extend_from_slice(&NO_EOS);
    let t = Tmux::start("ctrlc", &dir.0, &chat_args(&model, &extra));
    t.wait_prompt(1, 60);
    let q = "Tell me a long story about a dragon.";
    t.line(q);
    // some of the answer, then Ctrl-C
    t.wait("part of the answer", 90, |s| s.find(q).is_some_and(|i| s[i + q.len()..].trim().len() > 150));
    t.key("C-c");
    let s = t.wait_prompt(2, 30);
    assert!(s.contains("(stopped)"), "no (stopped) notice:\n{s}");
    let partial = answer_to(&s, q);
    assert!(partial.len() > 150, "the partial answer stays on screen:\n{s}");
    // the process goes on, and so does the conversation
    t.line("/set n-predict 8");
    t.wait_prompt(3, 10);
    t.line("/show");
    let s = t.wait_prompt(4, 10);
    assert!(s.contains("\nn-predict 8\n"), "{s}");
    assert!(s.contains("(2 messages)"), "the stopped answer is kept in the conversation:\n{s}");
    t.line("Hi");
    let s = t.wait_prompt(5, 60);
    assert!(!answer_to(&s, "Hi").is_empty(), "no answer after the interruption:\n{s}");
    t.key("C-d");
    assert_eq!(t.wait_exit(30), 0, "Ctrl-D leaves with status 0");
}

#[test]
fn undo_regen_save_then_load_in_a_new_process() {
    let model = smollm2();
    let dir = Scratch::new("saveload");
    let file = dir.path("conv.session");
    let file_s = file.to_string_lossy().into_owned();
    {
        let t = Tmux::start("save", &dir.0, &chat_args(&model, &["-n", "30"]));
        t.wait_prompt(1, 60);
        t.line("Hi");
        let s = t.wait_prompt(2, 60);
        let first = answer_to(&s, "Hi");
        assert!(!first.is_empty(), "{s}");
        t.line("/regen");
        let s = t.wait_prompt(3, 60);
        let again = answer_to(&s, "/regen");
        assert_eq!(again, first, "greedy regeneration gives the same answer:\n{s}");
        // the cache still holds the prompt: only its last token is recomputed for logits
        assert_eq!(prefill_counts(&s).last(), Some(&1), "{s}");
        t.line("What is 2+2?");
        t.wait_prompt(4, 60);
        t.line("/undo");
        let s = t.wait_for("last exchange removed", 10);
        assert!(!s.contains("nothing to undo"), "{s}");
        t.wait_prompt(5, 10);
        t.line("/show");
        t.wait_for("(2 messages)", 10);
        t.wait_prompt(6, 10);
        t.line(&format!("/save {file_s}"));
        t.wait_for("saved 2 messages", 10);
        t.wait_prompt(7, 10);
        t.line("/exit");
        assert_eq!(t.wait_exit(30), 0);
    }
    let saved = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
    assert!(saved.contains("\"content\":\"Hi\""), "the first turn is saved");
    assert!(!saved.contains("What is 2+2?"), "the undone turn is not saved");

    let t = Tmux::start("load", &dir.0, &chat_args(&model, &["-n", "30"]));
    t.wait_prompt(1, 60);
    t.line(&format!("/load {file_s}"));
    t.wait_for("loaded 2 messages", 20);
    t.wait_prompt(2, 10);
    t.line("/show");
    t.wait_for("(2 messages)", 10);
    t.wait_prompt(3, 10);
    t.line("Thanks!");
    let s = t.wait_prompt(4, 60);
    assert!(!answer_to(&s, "Thanks!").is_empty(), "no answer after /load:\n{s}");
    // the cache came with the file: the turn prefills only its own tokens (the cache still
    // holds the undone turn, whose "<|im_end|>\n<|im_start|>user\n" opening is reused too)
    let new = ferrite(&["tokenize", "-m", &model, "--count", "--no-bos", "Thanks!<|im_end|>\n<|im_start|>assistant\n"], None);
    let expected: usize = new.stdout.trim().parse().unwrap();
    assert_eq!(prefill_counts(&s), vec![expected], "{s}");
    t.line("/save");
    t.wait_for("/save needs a FILE", 10);
    t.wait_prompt(5, 10);
    t.line(&format!("/save {file_s}"));
    t.wait_for("saved 4 messages", 10);
    t.line("/exit");
    assert_eq!(t.wait_exit(30), 0);
    let saved = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
    assert!(saved.contains("\"content\":\"Hi\"") && saved.contains("\"content\":\"Thanks!\""), "both sessions' turns are saved");
}

#[test]
fn ctrl_c_at_the_prompt_twice_leaves_with_0_once_does_not() {
    let model = smollm2();
    let dir = Scratch::new("ctrlc-prompt");
    let t = Tmux::start("ctrlc-prompt", &dir.0, &chat_args(&model, &[]));
    t.wait_prompt(1, 60);
    t.key("C-c");
    t.wait_for("(Ctrl-C again or Ctrl-D to leave)", 10);
    t.wait_prompt(2, 10);
    // anything in between resets it
    t.line("/help");
    t.wait_prompt(3, 10);
    t.key("C-c");
    t.wait_prompt(4, 10);
    t.key("C-c");
    assert_eq!(t.wait_exit(30), 0, "Ctrl-C twice at an empty prompt leaves normally: status 0");

    let t = Tmux::start("ctrld", &dir.0, &chat_args(&model, &[]));
    t.wait_prompt(1, 60);
    t.key("C-d");
    assert_eq!(t.wait_exit(30), 0, "Ctrl-D: status 0");
}

/// A real session file with one byte flipped.
fn corrupt_session(model: &str, dir: &Scratch) -> std::path::PathBuf {
    let p = dir.path("bad.session");
    let r = ferrite(&["run", "-m", model, "--temp", "0", "-c", "1024", "-n", "4", "-q", "--session", &p.to_string_lossy(), "Hi"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x5a;
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn a_corrupt_session_file_is_refused_and_left_untouched() {
    let model = smollm2();
    let dir = Scratch::new("corrupt");
    let bad = corrupt_session(&model, &dir);
    let bad_s = bad.to_string_lossy().into_owned();
    let before = snapshot(&bad);

    // `chat --session FILE`: exit 2 before the REPL starts
    let r = ferrite(&["chat", "-m", &model, "-c", "1024", "--session", &bad_s], None);
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("damaged session file"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
    assert_eq!(snapshot(&bad), before);

    // `/load FILE` in the REPL: the error is reported, the conversation and the file stay as
    // they were, and the REPL goes on (a failed command does not end it)
    let t = Tmux::start("corrupt", &dir.0, &chat_args(&model, &["-n", "8"]));
    t.wait_prompt(1, 60);
    t.line("Hi");
    t.wait_prompt(2, 60);
    t.line(&format!("/load {bad_s}"));
    t.wait_for("damaged session file (checksum mismatch)", 10);
    t.wait_prompt(3, 10);
    t.line("/show");
    t.wait_for("(2 messages)", 10);
    t.wait_prompt(4, 10);
    t.line("/exit");
    assert_eq!(t.wait_exit(30), 0);
    assert_eq!(snapshot(&bad), before, "the corrupt file is byte-identical with the same mtime");
}
