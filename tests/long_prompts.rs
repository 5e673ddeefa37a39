//! Prompts longer than one micro-batch, as people send them: a document of ~600, ~1,700 and ~3,000
//! tokens through `ferrite run` (a file, and piped on stdin under an instruction) and `ferrite chat`,
//! and perplexity at `-c 1024` and `-c 2048` — each compared with llama.cpp built on this machine
//! (`$FERRITE_LLAMACPP_BIN`: `greedy_ref` for greedy ids, `llama-perplexity` for perplexity).
//!
//! Until these tests existed every prompt longer than 512 tokens crashed: a micro-batch with no
//! output rows reached an `add` of two empty tensors. No stored golden stands in for llama.cpp here:
//! without it the tests fail, saying how to build it (`scripts/test.sh` always does).

mod heavy;
mod paths;

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const N_CTX: &str = "4096";
/// Tokens generated after each document: enough for the answer to depend on the whole cache.
const N_GEN: usize = 16;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model(name: &str) -> PathBuf {
    let f = match name {
        "smollm2" => "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma3" => "models/gemma-3-270m-q4_k_m.gguf",
        _ => unreachable!(),
    };
    let p = root().join(f);
    assert!(p.is_file(), "{} is missing: run models/fetch.sh (scripts/test.sh does)", p.display());
    p
}

fn llamacpp_bin() -> PathBuf {
    paths::llamacpp_bin().unwrap_or_else(|| panic!("these tests need llama.cpp built on this machine: {}", paths::how_to_get_llamacpp()))
}

/// The GPL-3 text (the perplexity reference text), whose first `bytes` bytes make a document.
fn gpl3() -> String {
    std::fs::read_to_string(paths::reference("GPL-3.txt")).unwrap()
}

fn document(bytes: usize) -> String {
    let text = gpl3();
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// One ferrite/llama.cpp setting: ferrite's flags and greedy_ref's environment.
struct Setting {
    name: &'static str,
    flags: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

/// ferrite's default sliding-window cache is llama.cpp's tools' (the window plus a micro-batch,
/// `common_params.swa_full = false`), not its library's default (full size), so greedy_ref is told.
const SETTINGS: [Setting; 3] = [
    Setting { name: "default", flags: &[], env: &[("REF_SWA_FULL", "off")] },
    Setting { name: "flash attention off", flags: &["--flash-attn", "off"], env: &[("REF_FLASH_ATTN", "off"), ("REF_SWA_FULL", "off")] },
    Setting { name: "q8_0 K/V", flags: &["-ctk", "q8_0", "-ctv", "q8_0"], env: &[("REF_CACHE_TYPE", "q8_0"), ("REF_SWA_FULL", "off")] },
];

/// `ferrite --swa-full` against llama.cpp's library default (a full-size sliding-window cache).
const SWA_FULL: Setting = Setting { name: "--swa-full", flags: &["--swa-full"], env: &[] };

/// llama.cpp's greedy answer: (prompt ids, generated ids).
fn greedy_ref(model: &Path, prompt: &str, env: &[(&str, &str)]) -> (Vec<u64>, Vec<u64>) {
    let mut cmd = paths::greedy_ref(&llamacpp_bin(), model, prompt, N_GEN as u64);
    cmd.env("REF_N_CTX", N_CTX).envs(env.iter().copied());
    let what = format!("greedy_ref on {} bytes", prompt.len());
    let o = heavy::output(&mut cmd, &what, heavy::LIMIT);
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    let v = paths::greedy_ref_answer(&o.stdout, &what);
    let ids = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<_>>();
    (ids("prompt_ids"), ids("generated_ids"))
}

/// Runs ferrite with `stdin` (None: closed) and returns its output.
fn ferrite(args: &[&str], stdin: Option<&str>, what: &str) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args(args);
    let Some(input) = stdin else {
        return heavy::output(&mut cmd, what, heavy::LIMIT);
    };
    // stdin from a file, as `cat doc |` gives it (a pipe this size would need a writer thread)
    let f = tempfile(what, input);
    let o = heavy::output_from(&mut cmd, Stdio::from(std::fs::File::open(&f).unwrap()), what, heavy::LIMIT);
    std::fs::remove_file(&f).ok();
    o
}

fn tempfile(tag: &str, text: &str) -> PathBuf {
    let clean: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let p = std::env::temp_dir().join(format!("ferrite-long-{}-{clean}.txt", std::process::id()));
    std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
    p
}

fn json_ids(v: &Value, key: &str) -> Vec<u64> {
    v[key].as_array().unwrap_or_else(|| panic!("no {key} in {v}")).iter().map(|x| x.as_u64().unwrap()).collect()
}

/// A raw document from a file (`-f`), greedy, in `setting`, against greedy_ref on the same text.
fn raw_document_matches(name: &str, bytes: usize, setting: &Setting, extra: &[&str], ref_env: &[(&str, &str)]) {
    let m = model(name);
    let doc = document(bytes);
    let f = tempfile(&format!("{name}-{bytes}-{}", setting.name), &doc);
    let mut args = vec!["run", "--raw", "--temp", "0", "-n", "16", "-c", N_CTX, "-t", "2", "--json", "-f"];
    let fs = f.to_str().unwrap().to_string();
    args.push(&fs);
    let ms = m.to_str().unwrap().to_string();
    args.extend(["-m", &ms]);
    args.extend(setting.flags);
    args.extend(extra);
    let o = ferrite(&args, None, &format!("ferrite run {name} {bytes} bytes {}", setting.name));
    std::fs::remove_file(&f).ok();
    assert!(
        o.status.success(),
        "{name} {bytes} bytes {}: exit {:?}: {}",
        setting.name,
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut env: Vec<(&str, &str)> = setting.env.to_vec();
    env.extend(ref_env);
    let (want_prompt, want) = greedy_ref(&m, &doc, &env);
    let n_prompt = v["prompt_tokens"].as_u64().unwrap();
    assert_eq!(n_prompt, want_prompt.len() as u64, "{name} {bytes} bytes: prompt length");
    assert!(n_prompt > 512, "{name} {bytes} bytes: only {n_prompt} tokens, not longer than a micro-batch");
    assert_eq!(json_ids(&v, "tokens"), want, "{name}, {n_prompt}-token document, {}: greedy ids differ from llama.cpp's", setting.name);
    eprintln!("{name}: {n_prompt}-token document, {}: {} greedy ids equal llama.cpp's", setting.name, want.len());
}

/// Document sizes in bytes: about 600, 1,700 and 3,000 tokens (the GPL-3 text is ~4.2 bytes per
/// token with either tokenizer).
const SIZES: [usize; 3] = [2_600, 7_200, 12_800];

fn all_sizes_and_settings(name: &str) {
    for bytes in SIZES {
        for s in &SETTINGS {
            raw_document_matches(name, bytes, s, &[], &[]);
        }
    }
}

#[test]
fn long_documents_smollm2_match_llamacpp() {
    all_sizes_and_settings("smollm2");
}

#[test]
fn long_documents_gemma3_match_llamacpp() {
    all_sizes_and_settings("gemma3");
}

/// Micro-batches of an odd size (`-ub 300`, so the last one is short) split as llama.cpp splits
/// them, and gemma3's sliding-window layers with a full-size cache (`--swa-full`; the default
/// cache wraps around past 1,024 tokens, this one never does).
#[test]
fn odd_micro_batches_and_swa_full_match_llamacpp() {
    for name in ["smollm2", "gemma3"] {
        raw_document_matches(name, SIZES[1], &SETTINGS[0], &["-ub", "300"], &[("REF_N_UBATCH", "300")]);
    }
    raw_document_matches("gemma3", SIZES[2], &SWA_FULL, &[], &[]);
}

/// The way people use it: `cat doc | ferrite run "Summarize this document:"` (chat template,
/// stdin appended under the instruction), and the same document pasted into `ferrite chat` as a
/// `"""` block. The templated prompt ferrite shows (`--show-prompt`) goes through greedy_ref, and
/// chat must answer exactly as run does.
#[test]
fn piped_document_through_run_and_chat_matches_llamacpp() {
    for name in ["smollm2", "gemma3"] {
        let m = model(name);
        let ms = m.to_str().unwrap();
        let doc = document(SIZES[2]);
        let instruction = "Summarize this document in one sentence:";
        let common = ["--temp", "0", "-n", "16", "-c", N_CTX, "-t", "2", "-m", ms];
        let mut args = vec!["run", "--json", "-q", "--show-prompt"];
        args.extend(common);
        args.push(instruction);
        let o = ferrite(&args, Some(&doc), &format!("cat doc | ferrite run {name}"));
        assert!(o.status.success(), "{name}: cat doc | ferrite run: exit {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let n_prompt = v["prompt_tokens"].as_u64().unwrap();
        assert!(n_prompt > 2_500, "{name}: {n_prompt} prompt tokens");
        // --show-prompt prints the rendered prompt (special tokens as text) before generating;
        // greedy_ref adds the model's BOS itself, so a rendered BOS is dropped once.
        let stderr = String::from_utf8_lossy(&o.stderr);
        let rendered = stderr.strip_suffix('\n').unwrap_or(&stderr);
        let rendered = rendered.strip_prefix("<bos>").unwrap_or(rendered);
        let (want_prompt, want) = greedy_ref(&m, rendered, SETTINGS[0].env);
        assert_eq!(n_prompt, want_prompt.len() as u64, "{name}: templated prompt length");
        let got = json_ids(&v, "tokens");
        assert_eq!(got, want, "{name}: cat doc | ferrite run: greedy ids differ from llama.cpp's");

        // chat: the instruction and the document as one multi-line message, then leave
        // the block opens on the instruction's line and closes on the document's last line, so
        // the message is exactly run's prompt text (instruction, blank line, document)
        let input = format!("\"\"\"{instruction}\n\n{doc}\"\"\"\n/exit\n");
        let mut args = vec!["chat", "-q"];
        args.extend(common);
        let o = ferrite(&args, Some(&input), &format!("ferrite chat {name} with a document"));
        assert!(o.status.success(), "{name}: chat: exit {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr));
        let answer = String::from_utf8_lossy(&o.stdout);
        let run_text = v["text"].as_str().unwrap();
        assert_eq!(answer.trim_end(), run_text.trim_end(), "{name}: chat answered the document differently from run");
        eprintln!("{name}: {n_prompt}-token templated document: run and chat equal llama.cpp ({} ids)", want.len());
    }
}

/// llama-perplexity's final estimate on the GPL-3 text.
fn reference_perplexity(model: &Path, text: &Path, n_ctx: &str) -> f64 {
    let bin = llamacpp_bin();
    let mut cmd = Command::new(bin.join("llama-perplexity"));
    cmd.arg("-m").arg(model).arg("-f").arg(text).args(["-c", n_ctx, "-t", "2"]).env("LD_LIBRARY_PATH", &bin);
    let o = heavy::output(&mut cmd, &format!("llama-perplexity -c {n_ctx}"), heavy::LIMIT);
    assert!(o.status.success(), "llama-perplexity failed: {}", String::from_utf8_lossy(&o.stderr));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let line = all.lines().find(|l| l.contains("Final estimate: PPL =")).unwrap_or_else(|| panic!("no final estimate in:\n{all}"));
    line.split("PPL =").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

fn perplexity_matches(name: &str, n_ctx: &str) {
    let m = model(name);
    let text = tempfile(&format!("gpl3-{name}-{n_ctx}"), &gpl3());
    let ms = m.to_str().unwrap();
    let ts = text.to_str().unwrap();
    let o = ferrite(
        &["perplexity", "-c", n_ctx, "-t", "2", "--json", "-f", ts, "-m", ms],
        None,
        &format!("ferrite perplexity {name} -c {n_ctx}"),
    );
    assert!(o.status.success(), "ferrite perplexity {name} -c {n_ctx}: {}", String::from_utf8_lossy(&o.stderr));
    let have = serde_json::from_slice::<Value>(&o.stdout).unwrap()["ppl"].as_f64().unwrap();
    let want = reference_perplexity(&m, &text, n_ctx);
    std::fs::remove_file(&text).ok();
    eprintln!("{name} -c {n_ctx}: perplexity ferrite {have:.4}, llama-perplexity {want:.4}");
    // llama-perplexity prints four decimals: equal to them
    assert!((have - want).abs() <= 0.5e-4 + 1e-9, "{name} -c {n_ctx}: perplexity {have:.6} vs llama-perplexity's {want:.4}");
}

#[test]
fn perplexity_at_long_contexts_matches_llama_perplexity() {
    for name in ["smollm2", "gemma3"] {
        for n_ctx in ["1024", "2048"] {
            perplexity_matches(name, n_ctx);
        }
    }
}
