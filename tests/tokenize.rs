//! Tokenizer parity with llama.cpp: the reference strings (tests/golden/reference), the golden extra cases and
//! 1 MiB runs (tests/golden/tokenize, made by scripts/make-tokenize-golden.py with llama-tokenize),
//! llama.cpp's vocabulary test files (tests/golden/vocab), streaming detokenization of the
//! reference generations, and the `ferrite tokenize` command.

use ferrite::gguf::vocab::{SpecialIds, TokenType, VocabMeta};
use ferrite::gguf::GgufFile;
use ferrite::tokenizer::{Options, StreamDecoder, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

mod paths;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| json(&paths::reference("llamacpp-reference.json")))
}

fn model_path(name: &str) -> PathBuf {
    ferrite::catalogue::resolve(Some(name)).expect("models are fetched by scripts/test.sh")
}

fn tokenizer(name: &str) -> &'static Tokenizer {
    static S: OnceLock<Tokenizer> = OnceLock::new();
    static G: OnceLock<Tokenizer> = OnceLock::new();
    let cell = match name {
        "smollm2" => &S,
        "gemma3" => &G,
        _ => unreachable!(),
    };
    cell.get_or_init(|| Tokenizer::from_gguf(&GgufFile::open(&model_path(name)).unwrap()).unwrap())
}

/// The reference JSON's key for a model.
fn ref_key(name: &str) -> &'static str {
    match name {
        "smollm2" => "smollm2-135m-instruct-q4_1",
        _ => "gemma3-270m-q4_k_m",
    }
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Checks one case in both modes and the round trip; returns a description of any mismatch.
fn check_case(tok: &Tokenizer, text: &str, want: &[u32], want_plain: &[u32]) -> Option<String> {
    let got = tok.encode(text, tok.add_bos(), true).unwrap();
    let got_plain = tok.encode(text, tok.add_bos(), false).unwrap();
    if got != want {
        return Some(format!("{text:?} (special parsed):\n  want {want:?}\n  got  {got:?}"));
    }
    if got_plain != want_plain {
        return Some(format!("{text:?} (no special parsing):\n  want {want_plain:?}\n  got  {got_plain:?}"));
    }
    let body = &got_plain[tok.add_bos() as usize..];
    let back = tok.decode(body, true);
    if back != text {
        return Some(format!("{text:?} decodes back to {back:?}"));
    }
    None
}

fn reference_strings(name: &str) {
    let tok = tokenizer(name);
    let cases = reference()["tokenize"][ref_key(name)].as_array().unwrap();
    let bad: Vec<String> =
        cases.iter().filter_map(|c| check_case(tok, c["text"].as_str().unwrap(), &ids(&c["ids"]), &ids(&c["ids_no_special"]))).collect();
    assert!(bad.is_empty(), "{} of {} reference strings differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
    eprintln!("{name}: {} reference strings match in both modes", cases.len());
}

#[test]
fn reference_strings_smollm2() {
    reference_strings("smollm2");
}

#[test]
fn reference_strings_gemma3() {
    reference_strings("gemma3");
}

fn golden(name: &str) -> Value {
    json(&Path::new(ROOT).join(format!("tests/golden/tokenize/{name}.json")))
}

fn golden_cases(name: &str) {
    let tok = tokenizer(name);
    let g = golden(name);
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 50);
    let bad: Vec<String> =
        cases.iter().filter_map(|c| check_case(tok, c["text"].as_str().unwrap(), &ids(&c["ids"]), &ids(&c["ids_no_special"]))).collect();
    assert!(bad.is_empty(), "{} of {} golden cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
    eprintln!("{name}: {} golden cases match in both modes", cases.len());
}

#[test]
fn golden_cases_smollm2() {
    golden_cases("smollm2");
}

#[test]
fn golden_cases_gemma3() {
    golden_cases("gemma3");
}

fn fnv1a64(ids: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for b in id.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn one_mib_runs(name: &str) {
    let tok = tokenizer(name);
    let g = golden(name);
    for run in g["big"].as_array().unwrap() {
        let unit = run["unit"].as_str().unwrap();
        let text = unit.repeat(run["bytes"].as_u64().unwrap() as usize / unit.len());
        let t = Instant::now();
        let got = tok.encode(&text, tok.add_bos(), true).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let label = format!("{name}/{}", run["name"].as_str().unwrap());
        assert_eq!(got.len() as u64, run["n_ids"].as_u64().unwrap(), "{label}: token count");
        assert_eq!(&got[..8.min(got.len())], &ids(&run["head"])[..], "{label}: first ids");
        assert_eq!(format!("{:016x}", fnv1a64(&got)), run["fnv1a64"].as_str().unwrap(), "{label}: ids hash");
        eprintln!("{label}: 1 MiB -> {} tokens in {secs:.2} s", got.len());
        // a quadratic pre-tokenizer would take minutes here
        assert!(secs < 60.0, "{label}: {secs:.1} s");
    }
}

#[test]
fn one_mib_runs_smollm2() {
    one_mib_runs("smollm2");
}

#[test]
fn one_mib_runs_gemma3() {
    one_mib_runs("gemma3");
}

// --- llama.cpp's vocabulary test files --------------------------------------------------------

fn token_type(t: i64) -> TokenType {
    match t {
        0 => TokenType::Undefined,
        1 => TokenType::Normal,
        2 => TokenType::Unknown,
        3 => TokenType::Control,
        4 => TokenType::UserDefined,
        5 => TokenType::Unused,
        6 => TokenType::Byte,
        _ => panic!("token type {t}"),
    }
}

/// The vocabulary of an extract: kept tokens at their ids, a placeholder that can never match
/// input text elsewhere.
fn extract_meta(doc: &Value) -> VocabMeta {
    let n = doc["n_vocab"].as_u64().unwrap() as usize;
    let kept = doc["tokens"].as_object().unwrap();
    let tokens: Vec<String> = (0..n)
        .map(|i| match kept.get(&i.to_string()) {
            Some(t) => t.as_str().unwrap().to_string(),
            None => format!("\u{e000}{i}"),
        })
        .collect();
    assert!(kept.values().all(|t| !t.as_str().unwrap().contains('\u{e000}')));
    let types = doc["types"].as_object().unwrap();
    let token_types = (0..n).map(|i| types.get(&i.to_string()).map_or(TokenType::Normal, |t| token_type(t.as_i64().unwrap()))).collect();
    let scores =
        doc["scores"].as_object().map(|s| (0..n).map(|i| s.get(&i.to_string()).map_or(0.0, |x| x.as_f64().unwrap() as f32)).collect());
    let meta = &doc["meta"];
    let id = |k: &str| meta[format!("tokenizer.ggml.{k}")].as_u64().map(|v| v as u32);
    let flag = |k: &str| meta[format!("tokenizer.ggml.{k}")].as_bool();
    VocabMeta {
        model: meta["tokenizer.ggml.model"].as_str().unwrap().to_string(),
        pre: meta["tokenizer.ggml.pre"].as_str().map(str::to_string),
        tokens,
        scores,
        token_types,
        merges: doc["merges"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect(),
        special: SpecialIds {
            bos: id("bos_token_id"),
            eos: id("eos_token_id"),
            eot: id("eot_token_id"),
            eom: id("eom_token_id"),
            unk: id("unknown_token_id"),
            sep: id("seperator_token_id"),
            pad: id("padding_token_id"),
            ..SpecialIds::default()
        },
        add_bos: flag("add_bos_token"),
        add_eos: flag("add_eos_token"),
        add_sep: flag("add_sep_token"),
        add_space_prefix: flag("add_space_prefix"),
        remove_extra_whitespaces: flag("remove_extra_whitespaces"),
        chat_template: None,
    }
}

/// test-tokenizer-0's reading of NAME.inp / NAME.out.
fn vocab_cases(dir: &Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(dir.join(format!("{name}.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap();
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(texts.len(), lines.len(), "{name}: .inp and .out disagree on the number of cases");
    texts.iter().zip(lines).map(|(t, l)| (t.to_string(), l.split_whitespace().map(|x| x.parse().unwrap()).collect())).collect()
}

#[test]
fn llamacpp_vocab_files() {
    let dir = Path::new(ROOT).join("tests/golden/vocab");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".vocab.json").map(str::to_string))
        .collect();
    names.sort();
    assert!(names.len() >= 11, "{names:?}");
    let mut bad = Vec::new();
    let mut total = 0;
    for name in &names {
        let doc = json(&dir.join(format!("{name}.vocab.json")));
        let meta = extract_meta(&doc);
        let opts = Options {
            pre: None,
            model_name: doc["meta"]["general.name"].as_str().map(str::to_string),
            arch: doc["meta"]["general.architecture"].as_str().map(str::to_string),
        };
        let tok = Tokenizer::from_vocab(&meta, &opts).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let cases = vocab_cases(&dir, name);
        for (text, want) in &cases {
            let got = tok.encode(text, false, false).unwrap();
            if &got != want {
                bad.push(format!("{name}: {text:?}\n  want {want:?}\n  got  {got:?}"));
            }
        }
        eprintln!("{name} ({}): {} cases", meta.pre.as_deref().unwrap_or(&meta.model), cases.len());
        total += cases.len();
    }
    assert!(bad.is_empty(), "{} of {total} vocabulary cases differ:\n{}", bad.len(), bad.join("\n"));
    eprintln!("{} vocabularies, {total} cases match", names.len());
}

// --- detokenization ---------------------------------------------------------------------------

fn stream(tok: &Tokenizer, ids: &[u32], render_special: bool) -> (String, usize) {
    let mut d = StreamDecoder::new(tok, render_special);
    let mut text = String::new();
    let mut chunks = 0;
    for &id in ids {
        let s = d.push(id);
        chunks += !s.is_empty() as usize;
        text.push_str(&s);
    }
    text.push_str(&d.finish());
    (text, chunks)
}

#[test]
fn streaming_decode_equals_decode_of_reference_generations() {
    let mut n = 0;
    for name in ["smollm2", "gemma3"] {
        let tok = tokenizer(name);
        for case in reference()["greedy"][ref_key(name)].as_array().unwrap() {
            let prompt = ids(&case["prompt_ids"]);
            let generated = ids(&case["generated_ids"]);
            for seq in [generated.clone(), [prompt, generated].concat()] {
                for special in [false, true] {
                    let (text, chunks) = stream(tok, &seq, special);
                    assert_eq!(text, tok.decode(&seq, special), "{name}: {seq:?}");
                    assert!(chunks > 0 || text.is_empty());
                    n += 1;
                }
            }
        }
    }
    eprintln!("{n} streams equal their one-shot decode");
}

#[test]
fn stream_never_splits_a_character() {
    let tok = tokenizer("gemma3");
    // byte-fallback tokens of "€" (e2 82 ac) arrive one at a time
    let ids = tok.encode("x€😀y", false, false).unwrap();
    let mut d = StreamDecoder::new(tok, false);
    let mut pieces: Vec<String> = ids.iter().map(|&i| d.push(i)).collect();
    pieces.push(d.finish());
    assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "{pieces:?}");
    assert_eq!(pieces.concat(), "x€😀y");
    // an orphan continuation byte can never start a character: U+FFFD at once
    let byte = |b: u8| (0..tok.n_vocab() as u32).find(|&i| tok.token_text(i) == Some(&format!("<0x{b:02X}>"))).unwrap();
    let mut d = StreamDecoder::new(tok, false);
    assert_eq!(d.push(byte(0x82)), "\u{fffd}");
    assert_eq!(d.push(byte(0xe2)), "");
    assert_eq!(d.push(byte(0x82)), "");
    assert_eq!(d.finish(), "\u{fffd}");
}

// --- ferrite tokenize -------------------------------------------------------------------------

fn ferrite(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn cli_ids_match_llama_tokenize_format() {
    for name in ["smollm2", "gemma3"] {
        let case = &reference()["tokenize"][ref_key(name)][0];
        let text = case["text"].as_str().unwrap();
        let want: Vec<String> = ids(&case["ids"]).iter().map(u32::to_string).collect();
        let (code, out, err) = ferrite(&["tokenize", "-m", name, "--ids", text], b"");
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("[{}]\n", want.join(", ")));
    }
}

#[test]
fn cli_reads_stdin_byte_for_byte() {
    let text = "a\r\n<|im_start|>b\n\n";
    let tok = tokenizer("smollm2");
    let want = format!("{:?}\n", tok.encode(text, false, true).unwrap());
    for args in [&["tokenize", "--ids"][..], &["tokenize", "--ids", "-"][..]] {
        let (code, out, err) = ferrite(args, text.as_bytes());
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, want);
    }
    let (_, out, _) = ferrite(&["tokenize", "--ids", "--no-parse-special", "-"], text.as_bytes());
    assert_eq!(out, format!("{:?}\n", tok.encode(text, false, false).unwrap()));
}

#[test]
fn cli_lines_count_and_bos() {
    let (code, out, _) = ferrite(&["tokenize", "-m", "gemma3", "Hello world\n"], b"");
    assert_eq!(code, 0);
    assert_eq!(out, "2\t<bos>\n9259\tHello\n1902\t world\n107\t\\n\n");
    let (_, out, _) = ferrite(&["tokenize", "-m", "gemma3", "--no-bos", "--count", "Hello world"], b"");
    assert_eq!(out, "2\n");
    let (_, out, _) = ferrite(&["tokenize", "-m", "gemma3", "--count", ""], b"");
    assert_eq!(out, "1\n");
}

#[test]
fn cli_invalid_utf8_is_bad_input_with_offset() {
    let (code, out, err) = ferrite(&["tokenize"], b"abc\xe2\x82");
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("byte offset 3"), "{err}");
    let (code, _, err) = ferrite(&["tokenize", "-"], b"\xff");
    assert_eq!(code, 2);
    assert!(err.contains("byte offset 0"), "{err}");
}

#[test]
fn cli_pre_tokenizer_override() {
    let (code, _, err) = ferrite(&["tokenize", "--tokenizer-pre", "no-such-pre", "x"], b"");
    assert_eq!(code, 2);
    assert!(err.contains("unknown pre-tokenizer 'no-such-pre'"), "{err}");
    // falcon's first regex isolates punctuation runs, so " \\" no longer stays one piece
    let (_, own, _) = ferrite(&["tokenize", "--ids", "x \\n"], b"");
    let (code, falcon, err) = ferrite(&["tokenize", "--ids", "--tokenizer-pre", "falcon", "x \\n"], b"");
    assert_eq!(code, 0, "{err}");
    assert_eq!(own, "[104, 3814, 94]\n");
    assert_eq!(falcon, "[104, 216, 76, 94]\n");
}

#[test]
fn cli_unknown_model_is_bad_input() {
    let (code, _, err) = ferrite(&["tokenize", "-m", "/nonexistent.gguf", "x"], b"");
    assert_eq!(code, 2, "{err}");
}

/// llama-tokenize's habits: `-p TEXT`, `-f FILE` and `--stdin` give what TEXT gives; `-f` reads
/// only a regular file (one line, exit 2, for `/dev/zero`); two sources at once are refused.
#[test]
fn cli_llama_tokenize_flags() {
    let text = "Hello world\n<|im_start|>x";
    let (_, want, _) = ferrite(&["tokenize", "--ids", text], b"");
    let file = std::env::temp_dir().join(format!("ferrite-tokenize-{}.txt", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let f = file.to_str().unwrap();
    for (args, stdin) in [
        (&["tokenize", "--ids", "-p", text][..], &b""[..]),
        (&["tokenize", "--ids", "-f", f][..], b""),
        (&["tokenize", "--ids", "--stdin"][..], text.as_bytes()),
    ] {
        let (code, out, err) = ferrite(args, stdin);
        assert_eq!((code, out.as_str()), (0, want.as_str()), "{args:?}: {err}");
    }
    std::fs::remove_file(&file).ok();
    let (code, out, err) = ferrite(&["tokenize", "-f", "/dev/zero"], b"");
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty() && err.trim_end().lines().count() == 1 && err.contains("/dev/zero: not a regular file"), "{err}");
    let (code, _, _) = ferrite(&["tokenize", "-p", "a", "b"], b"");
    assert_eq!(code, 2);
}
