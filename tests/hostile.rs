//! Hostile model files: every crafted, truncated or corrupt GGUF (built by mutating one field of
//! the real SmolLM2 file, see `support`), and every path that is not a regular file, must make
//! `ferrite info`, `ferrite run` (and `ferrite tokenize` where the vocabulary is involved) exit
//! with code 2 and one stderr line naming the problem, within a second, without a panic or abort.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use support::{f32_array, ferrite, i32_array, str_array, str_bytes, vt, Gguf, Outcome};

/// Each process must finish within this.
const LIMIT: Duration = Duration::from_secs(1);
/// Processes are killed after this (a hang shows as a timeout, not a stuck test).
const KILL_AFTER: Duration = Duration::from_secs(10);

/// The tests of this file run one at a time so that wall times are not skewed by each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which subcommands must refuse a case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cmds {
    /// info, run and tokenize (the failure is in the file itself or its vocabulary)
    All,
    /// info and run (the failure is in the model: hyper-parameters, tensors)
    Model,
}

struct Case {
    name: String,
    file: Source,
    cmds: Cmds,
    /// Substrings the stderr line must contain (the field named).
    needles: Vec<&'static str>,
}

enum Source {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

fn case(name: impl Into<String>, file: Source, cmds: Cmds, needles: &[&'static str]) -> Case {
    Case { name: name.into(), file, cmds, needles: needles.to_vec() }
}

/// The SmolLM2 image with one edit.
fn smol(edit: impl FnOnce(&mut Gguf)) -> Source {
    let mut g = Gguf::smollm2();
    edit(&mut g);
    Source::Bytes(g.bytes())
}

/// Checks the refusal discipline on one process outcome.
fn check(o: &Outcome, needles: &[&str]) -> Result<(), String> {
    let err = o.stderr.strip_suffix('\n').unwrap_or(&o.stderr);
    let mut bad = Vec::new();
    if let Some(s) = o.signal {
        bad.push(format!("killed by signal {s}"));
    }
    if o.code != Some(2) {
        bad.push(format!("exit code {:?}, expected 2", o.code));
    }
    if err.is_empty() || err.contains('\n') {
        bad.push(format!("stderr is {} lines, expected 1", err.lines().count()));
    }
    if !err.starts_with("ferrite: ") {
        bad.push("stderr does not start with 'ferrite: '".into());
    }
    if err.contains("panicked") || err.contains("RUST_BACKTRACE") || err.contains("GGML_ASSERT") {
        bad.push("stderr shows a panic or assertion".into());
    }
    for n in needles {
        if !err.contains(n) {
            bad.push(format!("stderr does not mention {n:?}"));
        }
    }
    if !o.stdout.is_empty() {
        bad.push(format!("stdout is not empty: {:?}", o.stdout.chars().take(200).collect::<String>()));
    }
    if o.wall >= LIMIT {
        bad.push(format!("took {:?}", o.wall));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n      stderr: {:?}", bad.join("; "), o.stderr.chars().take(600).collect::<String>()))
    }
}

fn commands(path: &str, cmds: Cmds) -> Vec<Vec<String>> {
    let mut v = vec![vec!["info", "-m", path], vec!["run", "-m", path, "--raw", "-n", "1", "-t", "1", "hi"]];
    if cmds == Cmds::All {
        v.push(vec!["tokenize", "-m", path, "hi"]);
    }
    v.into_iter().map(|a| a.into_iter().map(String::from).collect()).collect()
}

/// Runs every case through its commands; fails listing every violation. Returns the slowest time.
fn run_cases(dir: &Path, cases: Vec<Case>) -> Duration {
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for (i, c) in cases.into_iter().enumerate() {
        let path = match &c.file {
            Source::Path(p) => p.clone(),
            Source::Bytes(b) => {
                let p = dir.join(format!("case{i:03}.gguf"));
                std::fs::write(&p, b).unwrap();
                p
            }
        };
        let ps = path.to_str().unwrap().to_string();
        for args in commands(&ps, c.cmds) {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = ferrite(&a, KILL_AFTER);
            slowest = slowest.max(o.wall);
            eprintln!("{:>40} | {:<8} | {:>4} ms | {}", c.name, a[0], o.wall.as_millis(), o.stderr.trim_end());
            if let Err(e) = check(&o, &c.needles) {
                failures.push(format!("{} / {}: {e}", c.name, a[0]));
            }
        }
        if matches!(c.file, Source::Bytes(_)) {
            std::fs::remove_file(&path).ok();
        }
    }
    eprintln!("slowest process: {slowest:?}");
    assert!(failures.is_empty(), "{} violation(s):\n  {}", failures.len(), failures.join("\n  "));
    slowest
}

fn set_u64(g: &mut Gguf, key: &str, v: u64) {
    g.set(key, vt::U64, v.to_le_bytes().to_vec());
}

// ---- paths -------------------------------------------------------------------------------------

#[test]
fn paths_that_are_not_model_files() {
    let _s = serial();
    let dir = support::scratch("paths");
    let fifo = dir.join("fifo.gguf");
    let st = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let sub = dir.join("subdir.gguf");
    std::fs::create_dir(&sub).unwrap();
    let dangling = dir.join("dangling.gguf");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    let cases = vec![
        case("missing path", Source::Path(dir.join("missing.gguf")), Cmds::All, &["no such file"]),
        case("dangling symlink", Source::Path(dangling), Cmds::All, &["no such file"]),
        case("directory", Source::Path(sub), Cmds::All, &["directory"]),
        case("empty file", Source::Path(empty), Cmds::All, &["empty"]),
        case("fifo", Source::Path(fifo), Cmds::All, &["not a regular file"]),
        case("/dev/zero", Source::Path("/dev/zero".into()), Cmds::All, &["not a regular file"]),
        case("/dev/null", Source::Path("/dev/null".into()), Cmds::All, &["not a regular file"]),
    ];
    run_cases(&dir, cases);
}

// ---- the container: header, metadata, tensor directory, data ---------------------------------

#[test]
fn corrupt_container() {
    let _s = serial();
    let dir = support::scratch("container");
    let real = support::model_bytes("smollm2");
    let g0 = Gguf::smollm2();
    let header_len = g0.header().len();
    // end of the metadata section (where the tensor directory starts)
    let kv_end = {
        let mut g = g0.clone();
        g.tensors.clear();
        g.pad_alignment = 1;
        g.header().len()
    };
    let tokens_at = {
        let mut g = g0.clone();
        let i = g.kv_pos("tokenizer.ggml.tokens").unwrap();
        g.kv.truncate(i);
        g.tensors.clear();
        g.pad_alignment = 1;
        g.header().len()
    };
    let t = |n: usize| Source::Bytes(real[..n].to_vec());
    let b = |v: Vec<u8>| Source::Bytes(v);
    let n_kv = g0.kv.len() as u64;
    let n_t = g0.tensors.len() as u64;

    let mut cases = vec![
        // header
        case("wrong magic", b(b"GGML\x03\0\0\0".iter().copied().chain(real[8..4096].iter().copied()).collect()), Cmds::All, &["magic"]),
        case("text file", b(b"hello, world\n".to_vec()), Cmds::All, &["magic"]),
        case("1 byte", t(1), Cmds::All, &["magic"]),
        case("magic only", t(4), Cmds::All, &["version"]),
        case("truncated in n_tensors", t(10), Cmds::All, &["n_tensors"]),
        case("truncated in n_kv", t(20), Cmds::All, &["n_kv"]),
        case("no metadata at all", t(24), Cmds::All, &["n_kv"]),
        case("n_tensors 2^62", smol(|g| g.n_tensors_override = Some(1 << 62)), Cmds::All, &["n_tensors"]),
        case("n_tensors u64::MAX", smol(|g| g.n_tensors_override = Some(u64::MAX)), Cmds::All, &["n_tensors"]),
        case("n_kv 2^62", smol(|g| g.n_kv_override = Some(1 << 62)), Cmds::All, &["n_kv"]),
        case("n_kv one too many", smol(|g| g.n_kv_override = Some(n_kv + 1)), Cmds::All, &[]),
        case("n_tensors one too many", smol(|g| g.n_tensors_override = Some(n_t + 1)), Cmds::All, &["tensor"]),
        case("n_tensors one too few", smol(|g| g.n_tensors_override = Some(n_t - 1)), Cmds::Model, &["tensor"]),
        // truncation at every region
        case("truncated mid-key", t(24 + 8 + 5), Cmds::All, &["n_kv", "cannot fit"]),
        case("truncated mid-tokens", t(tokens_at + 200_000), Cmds::All, &["tokenizer.ggml.tokens"]),
        case("truncated mid-metadata", t(kv_end - 100), Cmds::All, &[]),
        case("truncated at tensor directory", t(kv_end), Cmds::All, &["tensor #0 name"]),
        case("truncated mid-tensor directory", t((kv_end + header_len) / 2), Cmds::All, &["tensor"]),
        case("truncated at data", t(header_len), Cmds::All, &["token_embd.weight", "past the end"]),
        case("truncated mid-data", t(real.len() / 2), Cmds::All, &["past the end"]),
        case("one byte short", t(real.len() - 1), Cmds::All, &["output_norm.weight", "past the end"]),
    ];
    for v in [0u32, 1, 4, 0xFFFF_FFFF] {
        cases.push(case(format!("version {v}"), smol(|g| g.version = v), Cmds::All, &["version"]));
    }

    // metadata values
    let mut huge_key = g0.bytes();
    huge_key[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.extend([
        case("key length u64::MAX", b(huge_key), Cmds::All, &["key #0"]),
        case("key not UTF-8", smol(|g| g.kv[1].key = b"general.\xff\xfe".to_vec()), Cmds::All, &["key #1", "UTF-8"]),
        case("empty key", smol(|g| g.kv[1].key.clear()), Cmds::All, &["key #1", "empty key"]),
        case(
            "string length u64::MAX",
            smol(|g| {
                g.set("general.name", vt::STR, [u64::MAX.to_le_bytes().to_vec(), b"x".to_vec()].concat());
            }),
            Cmds::All,
            &["general.name"],
        ),
        case(
            "string not UTF-8",
            smol(|g| {
                g.set("general.name", vt::STR, str_bytes(b"ab\xc3\x28"));
            }),
            Cmds::All,
            &["general.name", "UTF-8"],
        ),
        case("unknown value type 13", smol(|g| g.kv[2].ty = 13), Cmds::All, &["general.name", "unknown value type"]),
        case("unknown value type u32::MAX", smol(|g| g.kv[2].ty = u32::MAX), Cmds::All, &["general.name", "unknown value type"]),
        case(
            "array length 2^62",
            smol(|g| {
                let mut p = g.kv("tokenizer.ggml.token_type").payload.clone();
                p[4..12].copy_from_slice(&(1u64 << 62).to_le_bytes());
                g.set("tokenizer.ggml.token_type", vt::ARRAY, p);
            }),
            Cmds::All,
            &["tokenizer.ggml.token_type", "cannot fit"],
        ),
        case(
            "string array length 2^40",
            smol(|g| {
                let mut p = g.kv("tokenizer.ggml.tokens").payload.clone();
                p[4..12].copy_from_slice(&(1u64 << 40).to_le_bytes());
                g.set("tokenizer.ggml.tokens", vt::ARRAY, p);
            }),
            Cmds::All,
            &["tokenizer.ggml.tokens", "cannot fit"],
        ),
        case(
            "array of arrays",
            smol(|g| {
                let mut p = g.kv("general.languages").payload.clone();
                p[0..4].copy_from_slice(&vt::ARRAY.to_le_bytes());
                g.set("general.languages", vt::ARRAY, p);
            }),
            Cmds::All,
            &["general.languages", "arrays of arrays"],
        ),
        case(
            "array element type 77",
            smol(|g| {
                let mut p = g.kv("general.languages").payload.clone();
                p[0..4].copy_from_slice(&77u32.to_le_bytes());
                g.set("general.languages", vt::ARRAY, p);
            }),
            Cmds::All,
            &["general.languages", "unknown array element type"],
        ),
        case(
            "bool byte 2",
            smol(|g| {
                g.set("tokenizer.ggml.add_bos_token", vt::BOOL, vec![2]);
            }),
            Cmds::All,
            &["tokenizer.ggml.add_bos_token", "bool"],
        ),
        case(
            "duplicate key",
            smol(|g| {
                let k = g.kv("general.architecture").clone();
                g.kv.push(k);
            }),
            Cmds::All,
            &["general.architecture", "duplicate key"],
        ),
    ]);

    // alignment
    for (name, ty, payload) in [
        ("alignment 0", vt::U32, 0u32.to_le_bytes().to_vec()),
        ("alignment 3", vt::U32, 3u32.to_le_bytes().to_vec()),
        ("alignment 2^31", vt::U32, (1u32 << 31).to_le_bytes().to_vec()),
        ("alignment as u64", vt::U64, 32u64.to_le_bytes().to_vec()),
    ] {
        cases.push(case(
            name,
            smol(move |g| {
                g.set("general.alignment", ty, payload);
            }),
            Cmds::All,
            &["general.alignment"],
        ));
    }

    // tensor directory
    let second = String::from_utf8(g0.tensors[1].name.clone()).unwrap();
    cases.extend([
        case(
            "duplicate tensor name",
            smol(|g| g.tensors[1].name = g.tensors[0].name.clone()),
            Cmds::All,
            &["token_embd.weight", "duplicate tensor name"],
        ),
        case("empty tensor name", smol(|g| g.tensors[1].name.clear()), Cmds::All, &["tensor #1 name"]),
        case("tensor name 64 bytes", smol(|g| g.tensors[1].name = vec![b'a'; 64]), Cmds::All, &["tensor #1 name"]),
        case("n_dims 0", smol(|g| g.tensors[1].dims.clear()), Cmds::All, &[&*second.clone().leak(), "n_dims"]),
        case("n_dims 5", smol(|g| g.tensors[1].dims = vec![576, 1, 1, 1, 1]), Cmds::All, &["n_dims"]),
        case("dimension 0", smol(|g| g.tensors[0].dims[1] = 0), Cmds::All, &["token_embd.weight", "shape"]),
        case("dimension negative", smol(|g| g.tensors[0].dims[1] = (-5i64) as u64), Cmds::All, &["token_embd.weight", "shape"]),
        case(
            "dimension product overflows",
            smol(|g| g.tensors[0].dims = vec![1 << 40, 1 << 40, 1 << 40]),
            Cmds::All,
            &["token_embd.weight", "overflows"],
        ),
        case("dimension huge, no overflow", smol(|g| g.tensors[0].dims = vec![1 << 30, 1 << 30]), Cmds::All, &["past the end"]),
        case("ggml type 99", smol(|g| g.tensors[0].ty = 99), Cmds::All, &["token_embd.weight", "type"]),
        case("ggml type 4 (removed q4_2)", smol(|g| g.tensors[0].ty = 4), Cmds::All, &["token_embd.weight", "type"]),
        case("ggml type u32::MAX", smol(|g| g.tensors[0].ty = u32::MAX), Cmds::All, &["token_embd.weight", "type"]),
        case("ne[0] not a multiple of the block", smol(|g| g.tensors[0].dims[0] = 577), Cmds::All, &["token_embd.weight", "block size"]),
        case("offset misaligned", smol(|g| g.tensors[1].offset += 1), Cmds::All, &["offset"]),
        case("offset past end of file", smol(|g| g.tensors.last_mut().unwrap().offset = u64::MAX - 7), Cmds::All, &["offset"]),
        case("tensors overlap", smol(|g| g.tensors[1].offset = g.tensors[0].offset), Cmds::All, &["offset"]),
        case("tensors reordered", smol(|g| g.tensors.swap(1, 2)), Cmds::All, &["offset"]),
    ]);
    run_cases(&dir, cases);
}

// ---- the model: architecture, hyper-parameters, tensors ---------------------------------------

#[test]
fn corrupt_model() {
    let _s = serial();
    let dir = support::scratch("model");
    let m = Cmds::Model;
    let mut cases = vec![
        case(
            "unknown architecture",
            smol(|g| {
                g.set_str("general.architecture", "bogus");
            }),
            m,
            &["general.architecture", "bogus"],
        ),
        case(
            "architecture missing",
            smol(|g| {
                g.remove("general.architecture");
            }),
            m,
            &["general.architecture", "missing"],
        ),
        case(
            "architecture not a string",
            smol(|g| {
                g.set_u32("general.architecture", 7);
            }),
            m,
            &["general.architecture"],
        ),
        case(
            "block_count missing",
            smol(|g| {
                g.rename("llama.block_count", "llama.block_kount");
            }),
            m,
            &["llama.block_count", "missing"],
        ),
        case(
            "block_count 1e9",
            smol(|g| {
                g.set_u32("llama.block_count", 1_000_000_000);
            }),
            m,
            &["llama.block_count"],
        ),
        case(
            "block_count 0",
            smol(|g| {
                g.set_u32("llama.block_count", 0);
            }),
            m,
            &["llama.block_count"],
        ),
        case(
            "block_count 31 (tensors for 30)",
            smol(|g| {
                g.set_u32("llama.block_count", 31);
            }),
            m,
            &["blk.30"],
        ),
        case(
            "block_count 29 (tensors for 30)",
            smol(|g| {
                g.set_u32("llama.block_count", 29);
            }),
            m,
            &["blk.29", "not used"],
        ),
        case(
            "block_count a string",
            smol(|g| {
                g.set_str("llama.block_count", "30");
            }),
            m,
            &["llama.block_count", "string"],
        ),
        case("block_count u64 2^40", smol(|g| set_u64(g, "llama.block_count", 1 << 40)), m, &["llama.block_count"]),
        case(
            "context_length 0",
            smol(|g| {
                g.set_u32("llama.context_length", 0);
            }),
            m,
            &["llama.context_length"],
        ),
        case(
            "embedding_length 0",
            smol(|g| {
                g.set_u32("llama.embedding_length", 0);
            }),
            m,
            &["llama.embedding_length"],
        ),
        case(
            "embedding_length 2^31",
            smol(|g| {
                g.set_u32("llama.embedding_length", 1 << 31);
            }),
            m,
            &["llama.embedding_length"],
        ),
        case(
            "embedding_length 577",
            smol(|g| {
                g.set_u32("llama.embedding_length", 577);
            }),
            m,
            &["llama.attention.head_count"],
        ),
        case(
            "head_count 0",
            smol(|g| {
                g.set_u32("llama.attention.head_count", 0);
            }),
            m,
            &["llama.attention.head_count"],
        ),
        case(
            "embedding_length not divisible by head_count",
            smol(|g| {
                g.set_u32("llama.attention.head_count", 7);
                g.set_u32("llama.attention.head_count_kv", 7);
            }),
            m,
            &["llama.attention.head_count", "576"],
        ),
        case(
            "head_count_kv 0",
            smol(|g| {
                g.set_u32("llama.attention.head_count_kv", 0);
            }),
            m,
            &["llama.attention.head_count_kv"],
        ),
        case(
            "head_count_kv 2 (does not divide 9)",
            smol(|g| {
                g.set_u32("llama.attention.head_count_kv", 2);
            }),
            m,
            &["llama.attention.head_count_kv"],
        ),
        case(
            "head_count_kv > head_count",
            smol(|g| {
                g.set_u32("llama.attention.head_count_kv", 18);
            }),
            m,
            &["llama.attention.head_count_kv"],
        ),
        case(
            "feed_forward_length 0",
            smol(|g| {
                g.set_u32("llama.feed_forward_length", 0);
            }),
            m,
            &["llama.feed_forward_length"],
        ),
        case(
            "feed_forward_length u32::MAX",
            smol(|g| {
                g.set_u32("llama.feed_forward_length", u32::MAX);
            }),
            m,
            &["llama.feed_forward_length"],
        ),
        case(
            "rope.dimension_count odd",
            smol(|g| {
                g.set_u32("llama.rope.dimension_count", 63);
            }),
            m,
            &["llama.rope.dimension_count"],
        ),
        case(
            "rope.freq_base negative",
            smol(|g| {
                g.set("llama.rope.freq_base", vt::F32, (-1.0f32).to_le_bytes().to_vec());
            }),
            m,
            &["llama.rope.freq_base"],
        ),
        case(
            "rms epsilon NaN",
            smol(|g| {
                g.set("llama.attention.layer_norm_rms_epsilon", vt::F32, f32::NAN.to_le_bytes().to_vec());
            }),
            m,
            &["layer_norm_rms_epsilon"],
        ),
        case(
            "rms epsilon missing",
            smol(|g| {
                g.remove("llama.attention.layer_norm_rms_epsilon");
            }),
            m,
            &["layer_norm_rms_epsilon", "missing"],
        ),
        case(
            "vocab_size 2^30",
            smol(|g| {
                g.set_u32("llama.vocab_size", 1 << 30);
            }),
            m,
            &["llama.vocab_size"],
        ),
        case(
            "vocab_size 49151",
            smol(|g| {
                g.set_u32("llama.vocab_size", 49151);
            }),
            m,
            &["tokenizer.ggml.tokens", "49151"],
        ),
        case(
            "expert_count 1e6",
            smol(|g| {
                g.set_u32("llama.expert_count", 1_000_000);
            }),
            m,
            &["llama.expert_count"],
        ),
        case(
            "rope scaling type unknown",
            smol(|g| {
                g.set_str("llama.rope.scaling.type", "warp");
            }),
            m,
            &["llama.rope.scaling.type"],
        ),
        // tensors against the model
        case("token_embd shape transposed", smol(|g| g.tensors[0].dims.reverse()), m, &["token_embd.weight", "shape"]),
        case(
            "missing tensor",
            smol(|g| g.tensor("blk.0.attn_q.weight").name = b"blk.0.attn_x.weight".to_vec()),
            m,
            &["blk.0.attn_q.weight", "missing"],
        ),
        case(
            "unexpected tensor",
            smol(|g| g.tensor("blk.3.attn_q.weight").name = b"blk.99.attn_q.weight".to_vec()),
            m,
            &["blk.3.attn_q.weight"],
        ),
    ];
    // tensor types the model's operations cannot use (relaid out so the container is valid)
    for (name, tensor, ty, needles) in [
        ("norm as i32", "output_norm.weight", 26u32, &["output_norm.weight", "f32"][..]),
        ("matmul weight as i32", "blk.0.attn_q.weight", 26, &["blk.0.attn_q.weight", "i32"][..]),
        ("matmul weight as q8_1", "blk.0.attn_q.weight", 9, &["blk.0.attn_q.weight", "q8_1"][..]),
        ("matmul weight as f64", "blk.0.ffn_up.weight", 28, &["blk.0.ffn_up.weight", "f64"][..]),
        ("matmul weight as q8_K", "blk.0.ffn_down.weight", 15, &["blk.0.ffn_down.weight", "q8_K"][..]),
        ("embedding as i8", "token_embd.weight", 24, &["token_embd.weight", "i8"][..]),
        ("embedding as q8_1", "token_embd.weight", 9, &["token_embd.weight", "q8_1"][..]),
    ] {
        cases.push(case(
            name,
            smol(|g| {
                let old = g.clone();
                g.tensor(tensor).ty = ty;
                g.relayout(&old);
            }),
            m,
            needles,
        ));
    }
    run_cases(&dir, cases);
}

/// Sliding-window and head-size parameters, on the Gemma 3 file.
#[test]
fn corrupt_gemma3() {
    let _s = serial();
    let dir = support::scratch("gemma3");
    let gem = |edit: &dyn Fn(&mut Gguf)| {
        let mut g = Gguf::gemma3();
        edit(&mut g);
        Source::Bytes(g.bytes())
    };
    let m = Cmds::Model;
    let cases = vec![
        case(
            "sliding_window u32::MAX",
            gem(&|g| {
                g.set_u32("gemma3.attention.sliding_window", u32::MAX);
            }),
            m,
            &["gemma3.attention.sliding_window"],
        ),
        case(
            "sliding_window_pattern too short",
            gem(&|g| {
                g.set("gemma3.attention.sliding_window_pattern", vt::ARRAY, support::array_payload(vt::BOOL, 3, &[1, 1, 0]));
            }),
            m,
            &["gemma3.attention.sliding_window_pattern"],
        ),
        case(
            "rope.freq_base_swa negative",
            gem(&|g| {
                g.set("gemma3.rope.freq_base_swa", vt::F32, (-10000.0f32).to_le_bytes().to_vec());
            }),
            m,
            &["gemma3.rope.freq_base_swa"],
        ),
        case(
            "key_length 0",
            gem(&|g| {
                g.set_u32("gemma3.attention.key_length", 0);
            }),
            m,
            &["gemma3.attention.key_length"],
        ),
        case(
            "key_length 2^17",
            gem(&|g| {
                g.set_u32("gemma3.attention.key_length", 1 << 17);
            }),
            m,
            &["blk.0.attn_q.weight", "shape"],
        ),
        case(
            "value_length u32::MAX",
            gem(&|g| {
                g.set_u32("gemma3.attention.value_length", u32::MAX);
            }),
            m,
            &["gemma3.attention.value_length"],
        ),
    ];
    run_cases(&dir, cases);
}

// ---- the vocabulary --------------------------------------------------------------------------

#[test]
fn corrupt_vocabulary() {
    let _s = serial();
    let dir = support::scratch("vocab");
    let g0 = Gguf::smollm2();
    let tokens = g0.strings("tokenizer.ggml.tokens");
    let types = g0.i32s("tokenizer.ggml.token_type");
    let merges = g0.strings("tokenizer.ggml.merges");
    let n = tokens.len();
    let a = Cmds::All;
    let cases = vec![
        case(
            "bos id = n_vocab",
            smol(|g| {
                g.set_u32("tokenizer.ggml.bos_token_id", n as u32);
            }),
            a,
            &["tokenizer.ggml.bos_token_id", "49152"],
        ),
        case(
            "eos id u32::MAX",
            smol(|g| {
                g.set_u32("tokenizer.ggml.eos_token_id", u32::MAX);
            }),
            a,
            &["tokenizer.ggml.eos_token_id"],
        ),
        case(
            "bos id -5",
            smol(|g| {
                g.set("tokenizer.ggml.bos_token_id", vt::I32, (-5i32).to_le_bytes().to_vec());
            }),
            a,
            &["tokenizer.ggml.bos_token_id"],
        ),
        case("pad id u64 2^40", smol(|g| set_u64(g, "tokenizer.ggml.padding_token_id", 1 << 40)), a, &["tokenizer.ggml.padding_token_id"]),
        case(
            "eot id a string",
            smol(|g| {
                g.set_str("tokenizer.ggml.eot_token_id", "2");
            }),
            a,
            &["tokenizer.ggml.eot_token_id"],
        ),
        case(
            "tokens shorter than token_type",
            smol(|g| {
                g.set("tokenizer.ggml.tokens", vt::ARRAY, str_array(&tokens[..n - 1]));
            }),
            a,
            &["tokenizer.ggml.token_type", "49151"],
        ),
        case(
            "tokens and token_type shorter than vocab_size",
            smol(|g| {
                g.set("tokenizer.ggml.tokens", vt::ARRAY, str_array(&tokens[..n - 1]));
                g.set("tokenizer.ggml.token_type", vt::ARRAY, i32_array(&types[..n - 1]));
            }),
            Cmds::Model,
            &["tokenizer.ggml.tokens", "49151"],
        ),
        case(
            "token_type shorter",
            smol(|g| {
                g.set("tokenizer.ggml.token_type", vt::ARRAY, i32_array(&types[..n - 1]));
            }),
            a,
            &["tokenizer.ggml.token_type"],
        ),
        case(
            "token_type unknown value",
            smol(|g| {
                let mut t = types.clone();
                t[100] = 99;
                g.set("tokenizer.ggml.token_type", vt::ARRAY, i32_array(&t));
            }),
            a,
            &["tokenizer.ggml.token_type", "99"],
        ),
        case(
            "token_type not integers",
            smol(|g| {
                g.set("tokenizer.ggml.token_type", vt::ARRAY, f32_array(&vec![1.0; n]));
            }),
            a,
            &["tokenizer.ggml.token_type"],
        ),
        case(
            "scores length mismatch",
            smol(|g| {
                g.set("tokenizer.ggml.scores", vt::ARRAY, f32_array(&vec![0.0; n + 1]));
            }),
            a,
            &["tokenizer.ggml.scores"],
        ),
        case(
            "score NaN",
            smol(|g| {
                let mut s = vec![0.0; n];
                s[7] = f32::NAN;
                g.set("tokenizer.ggml.scores", vt::ARRAY, f32_array(&s));
            }),
            a,
            &["tokenizer.ggml.scores"],
        ),
        case(
            "byte token malformed",
            smol(|g| {
                let mut t = types.clone();
                t[0] = 6;
                g.set("tokenizer.ggml.token_type", vt::ARRAY, i32_array(&t));
            }),
            a,
            &["tokenizer.ggml.tokens", "byte token 0"],
        ),
        case(
            "duplicate token text",
            smol(|g| {
                let mut t = tokens.clone();
                t[501] = t[500].clone();
                g.set("tokenizer.ggml.tokens", vt::ARRAY, str_array(&t));
            }),
            a,
            &["500", "501"],
        ),
        case(
            "tokens empty",
            smol(|g| {
                g.set("tokenizer.ggml.tokens", vt::ARRAY, str_array(&[]));
            }),
            a,
            &["tokenizer.ggml."],
        ),
        case(
            "tokens missing",
            smol(|g| {
                g.remove("tokenizer.ggml.tokens");
            }),
            a,
            &["tokenizer.ggml.tokens"],
        ),
        case(
            "tokens not strings",
            smol(|g| {
                g.set("tokenizer.ggml.tokens", vt::ARRAY, i32_array(&vec![0; n]));
            }),
            a,
            &["tokenizer.ggml.tokens"],
        ),
        case(
            "merge without a space",
            smol(|g| {
                let mut m = merges.clone();
                m[10] = "abc".into();
                g.set("tokenizer.ggml.merges", vt::ARRAY, str_array(&m));
            }),
            a,
            &["tokenizer.ggml.merges", "merge 10"],
        ),
        case(
            "merges missing (gpt2)",
            smol(|g| {
                g.remove("tokenizer.ggml.merges");
            }),
            a,
            &["tokenizer.ggml.merges"],
        ),
        case(
            "tokenizer model unknown",
            smol(|g| {
                g.set_str("tokenizer.ggml.model", "wordpiece9");
            }),
            a,
            &["wordpiece9"],
        ),
        case(
            "tokenizer model missing",
            smol(|g| {
                g.remove("tokenizer.ggml.model");
            }),
            a,
            &["tokenizer.ggml.model"],
        ),
        case(
            "pre-tokenizer unknown",
            smol(|g| {
                g.set_str("tokenizer.ggml.pre", "no-such-pre");
            }),
            a,
            &["no-such-pre"],
        ),
    ];
    run_cases(&dir, cases);
}

/// Merges that name pieces missing from the vocabulary are dropped, as llama.cpp's BPE never
/// finds them: not an error, and no crash.
#[test]
fn merges_with_unknown_tokens_are_ignored() {
    let _s = serial();
    let dir = support::scratch("merges");
    let mut g = Gguf::smollm2();
    let mut m = g.strings("tokenizer.ggml.merges");
    m[0] = "zzqq_no_such zzqq_token".into();
    m.push("\u{1F980}x y\u{1F980}".into());
    g.set("tokenizer.ggml.merges", vt::ARRAY, str_array(&m));
    let p = dir.join("merges.gguf");
    g.write(&p);
    let o = ferrite(&["tokenize", "-m", p.to_str().unwrap(), "--ids", "hello world"], KILL_AFTER);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.starts_with('['), "{o:?}");
    let o = ferrite(&["info", "-m", p.to_str().unwrap()], KILL_AFTER);
    assert_eq!(o.code, Some(0), "{o:?}");
    std::fs::remove_file(&p).ok();
}

/// The test writer reproduces the real file byte for byte, so the corruptions above differ from
/// a valid model only in the field they change.
#[test]
fn writer_round_trips_the_real_file() {
    let real = support::model_bytes("smollm2");
    assert!(Gguf::smollm2().bytes() == real);
    let mut g = Gguf::smollm2();
    let old = g.clone();
    g.relayout(&old);
    assert!(g.bytes() == real, "relayout of an unchanged file is the identity");
}

// ---- absurd sizes on the command line ----------------------------------------------------------

#[test]
fn absurd_context_sizes() {
    let _s = serial();
    let mut failures = Vec::new();
    for c in ["4294967295", "4294967041", "100000000"] {
        for args in [vec!["info", "-m", "smollm2", "-c", c], vec!["run", "-m", "smollm2", "--raw", "-n", "1", "-t", "1", "-c", c, "hi"]] {
            let o = ferrite(&args, KILL_AFTER);
            eprintln!("{args:?}: {:?} {} ms {}", o.code, o.wall.as_millis(), o.stderr.trim_end());
            if let Err(e) = check(&o, &["ctx-size"]) {
                failures.push(format!("{args:?}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A chat template in the file that does not parse: a templated `run` refuses it with exit 2 and
/// one line naming the key (`--raw` never reads it).
#[test]
fn broken_chat_template() {
    let _s = serial();
    let dir = support::scratch("template");
    let mut g = Gguf::smollm2();
    g.set_str("tokenizer.chat_template", "{% for %}");
    let p = dir.join("template.gguf");
    g.write(&p);
    let o = ferrite(&["run", "-m", p.to_str().unwrap(), "-n", "1", "-t", "1", "hi"], KILL_AFTER);
    eprintln!("{:?} {} ms {}", o.code, o.wall.as_millis(), o.stderr.trim_end());
    std::fs::remove_file(&p).ok();
    check(&o, &["tokenizer.chat_template"]).unwrap();
}
