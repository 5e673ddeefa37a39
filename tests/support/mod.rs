//! Test support for hostile-input tests: an editable GGUF image (parsed from a real model file,
//! every field open to corruption, written back byte for byte) and a runner that drives the
//! `ferrite` binary on a file and captures exit code, stderr and wall time.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// GGUF value type ids.
pub mod vt {
    pub const U8: u32 = 0;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STR: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
}

/// One metadata pair as raw parts: the key bytes (not necessarily UTF-8), the type id and the
/// encoded value (for strings and arrays including their length prefixes).
#[derive(Clone, Debug)]
pub struct Kv {
    pub key: Vec<u8>,
    pub ty: u32,
    pub payload: Vec<u8>,
}

/// One tensor directory entry as written (n_dims is `dims.len()`).
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: Vec<u8>,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub offset: u64,
}

/// An editable GGUF image: header fields, metadata, tensor directory and the data section.
#[derive(Clone)]
pub struct Gguf {
    pub magic: u32,
    pub version: u32,
    /// Written instead of the real counts when set.
    pub n_tensors_override: Option<u64>,
    pub n_kv_override: Option<u64>,
    pub kv: Vec<Kv>,
    pub tensors: Vec<TensorEntry>,
    /// Padding of the header before the data section.
    pub pad_alignment: u64,
    pub data: Arc<Vec<u8>>,
}

/// (block size, bytes per block) of the ggml types used here.
pub fn type_layout(ty: u32) -> (u64, u64) {
    match ty {
        0 => (1, 4),       // f32
        1 => (1, 2),       // f16
        2 => (32, 18),     // q4_0
        3 => (32, 20),     // q4_1
        8 => (32, 34),     // q8_0
        9 => (32, 36),     // q8_1
        15 => (256, 292),  // q8_K
        24 => (1, 1),      // i8
        25 => (1, 2),      // i16
        26 => (1, 4),      // i32
        27 | 28 => (1, 8), // i64, f64
        30 => (1, 2),      // bf16
        _ => panic!("type {ty} not in the test table"),
    }
}

pub fn str_bytes(s: &[u8]) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s);
    b
}

/// Encodes an array payload of `n` elements of type `elem` from already encoded elements.
pub fn array_payload(elem: u32, n: u64, elems: &[u8]) -> Vec<u8> {
    let mut b = elem.to_le_bytes().to_vec();
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(elems);
    b
}

pub fn str_array(v: &[String]) -> Vec<u8> {
    let elems: Vec<u8> = v.iter().flat_map(|s| str_bytes(s.as_bytes())).collect();
    array_payload(vt::STR, v.len() as u64, &elems)
}

pub fn i32_array(v: &[i32]) -> Vec<u8> {
    let elems: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    array_payload(vt::I32, v.len() as u64, &elems)
}

pub fn f32_array(v: &[f32]) -> Vec<u8> {
    let elems: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    array_payload(vt::F32, v.len() as u64, &elems)
}

/// A little-endian cursor for the test-side parser (panics on malformed input: it only reads
/// the real model files).
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cur<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> Vec<u8> {
        let n = self.u64() as usize;
        self.take(n).to_vec()
    }
    fn skip_value(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => self.pos += 1,
            2 | 3 => self.pos += 2,
            4..=6 => self.pos += 4,
            10..=12 => self.pos += 8,
            8 => {
                self.string();
            }
            9 => {
                let et = self.u32();
                let n = self.u64();
                for _ in 0..n {
                    self.skip_value(et);
                }
            }
            _ => panic!("bad type {ty}"),
        }
    }
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// The bytes of a real model file, read once per test process.
pub fn model_bytes(name: &str) -> &'static [u8] {
    static SMOL: OnceLock<Vec<u8>> = OnceLock::new();
    static GEMMA: OnceLock<Vec<u8>> = OnceLock::new();
    let (cell, file) = match name {
        "smollm2" => (&SMOL, "SmolLM2-135M-Instruct.Q4_1.gguf"),
        "gemma3" => (&GEMMA, "gemma-3-270m-q4_k_m.gguf"),
        _ => unreachable!(),
    };
    cell.get_or_init(|| {
        let p = Path::new(ROOT).join("models").join(file);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run models/fetch.sh)", p.display()))
    })
}

impl Gguf {
    /// Parses a well-formed GGUF image.
    pub fn parse(b: &[u8]) -> Gguf {
        let mut c = Cur { b, pos: 0 };
        let magic = c.u32();
        let version = c.u32();
        let n_tensors = c.u64();
        let n_kv = c.u64();
        let mut kv = Vec::new();
        let mut alignment = 32;
        for _ in 0..n_kv {
            let key = c.string();
            let ty = c.u32();
            let start = c.pos;
            c.skip_value(ty);
            let payload = b[start..c.pos].to_vec();
            if key == b"general.alignment" {
                alignment = u32::from_le_bytes(payload[..4].try_into().unwrap()) as u64;
            }
            kv.push(Kv { key, ty, payload });
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string();
            let nd = c.u32();
            let dims = (0..nd).map(|_| c.u64()).collect();
            let ty = c.u32();
            let offset = c.u64();
            tensors.push(TensorEntry { name, dims, ty, offset });
        }
        let data_offset = align_up(c.pos as u64, alignment) as usize;
        Gguf {
            magic,
            version,
            n_tensors_override: None,
            n_kv_override: None,
            kv,
            tensors,
            pad_alignment: alignment,
            data: Arc::new(b[data_offset..].to_vec()),
        }
    }

    /// The SmolLM2 135M Q4_1 model, parsed.
    pub fn smollm2() -> Gguf {
        static G: OnceLock<Gguf> = OnceLock::new();
        G.get_or_init(|| Gguf::parse(model_bytes("smollm2"))).clone()
    }

    /// The Gemma 3 270M Q4_K_M model, parsed.
    pub fn gemma3() -> Gguf {
        static G: OnceLock<Gguf> = OnceLock::new();
        G.get_or_init(|| Gguf::parse(model_bytes("gemma3"))).clone()
    }

    /// The header (everything before the data section, padding included).
    pub fn header(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.magic.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.n_tensors_override.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.n_kv_override.unwrap_or(self.kv.len() as u64).to_le_bytes());
        for kv in &self.kv {
            b.extend(str_bytes(&kv.key));
            b.extend_from_slice(&kv.ty.to_le_bytes());
            b.extend_from_slice(&kv.payload);
        }
        for t in &self.tensors {
            b.extend(str_bytes(&t.name));
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.to_le_bytes());
            b.extend_from_slice(&t.offset.to_le_bytes());
        }
        b.resize(align_up(b.len() as u64, self.pad_alignment) as usize, 0);
        b
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = self.header();
        b.extend_from_slice(&self.data);
        b
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).unwrap();
    }

    pub fn kv_pos(&self, key: &str) -> Option<usize> {
        self.kv.iter().position(|kv| kv.key == key.as_bytes())
    }

    pub fn kv(&self, key: &str) -> &Kv {
        &self.kv[self.kv_pos(key).unwrap_or_else(|| panic!("no key {key}"))]
    }

    /// Replaces the value of `key` (appending the key when absent).
    pub fn set(&mut self, key: &str, ty: u32, payload: Vec<u8>) -> &mut Self {
        match self.kv_pos(key) {
            Some(i) => {
                self.kv[i].ty = ty;
                self.kv[i].payload = payload;
            }
            None => self.kv.push(Kv { key: key.as_bytes().to_vec(), ty, payload }),
        }
        self
    }

    pub fn set_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.set(key, vt::U32, v.to_le_bytes().to_vec())
    }

    pub fn set_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.set(key, vt::STR, str_bytes(v.as_bytes()))
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        let i = self.kv_pos(key).unwrap_or_else(|| panic!("no key {key}"));
        self.kv.remove(i);
        self
    }

    pub fn rename(&mut self, key: &str, to: &str) -> &mut Self {
        let i = self.kv_pos(key).unwrap_or_else(|| panic!("no key {key}"));
        self.kv[i].key = to.as_bytes().to_vec();
        self
    }

    /// The elements of a string array value.
    pub fn strings(&self, key: &str) -> Vec<String> {
        let kv = self.kv(key);
        let mut c = Cur { b: &kv.payload, pos: 0 };
        assert_eq!(c.u32(), vt::STR);
        let n = c.u64();
        (0..n).map(|_| String::from_utf8(c.string()).unwrap()).collect()
    }

    /// The elements of an i32 array value.
    pub fn i32s(&self, key: &str) -> Vec<i32> {
        let kv = self.kv(key);
        let mut c = Cur { b: &kv.payload, pos: 0 };
        assert_eq!(c.u32(), vt::I32);
        let n = c.u64();
        (0..n).map(|_| c.u32() as i32).collect()
    }

    pub fn tensor_pos(&self, name: &str) -> usize {
        self.tensors.iter().position(|t| t.name == name.as_bytes()).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    pub fn tensor(&mut self, name: &str) -> &mut TensorEntry {
        let i = self.tensor_pos(name);
        &mut self.tensors[i]
    }

    /// Bytes of a tensor by its (type, dims) as ggml lays it out.
    pub fn nbytes(t: &TensorEntry) -> u64 {
        let (bs, ts) = type_layout(t.ty);
        let rows: u64 = t.dims.iter().skip(1).product();
        t.dims[0] / bs * ts * rows
    }

    /// Lays the tensors out again in directory order after shapes or types changed: new offsets,
    /// and a data section with each tensor's old bytes (zero-filled where it grew).
    pub fn relayout(&mut self, old: &Gguf) {
        let align = self.pad_alignment;
        let mut data = Vec::new();
        for t in &mut self.tensors {
            let n = Self::nbytes(t) as usize;
            let src = old.tensors.iter().find(|o| o.name == t.name).map(|o| {
                let s = o.offset as usize;
                &old.data[s..(s + Self::nbytes(o) as usize).min(old.data.len())]
            });
            t.offset = data.len() as u64;
            let start = data.len();
            data.resize(start + n, 0);
            if let Some(src) = src {
                let m = src.len().min(n);
                data[start..start + m].copy_from_slice(&src[..m]);
            }
            data.resize(align_up(data.len() as u64, align) as usize, 0);
        }
        self.data = Arc::new(data);
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Outcome {
    pub args: Vec<String>,
    pub code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
}

/// Runs `ferrite ARGS` with stdin closed, killing it after `limit`.
pub fn ferrite(args: &[&str], limit: Duration) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrite");
    // read the pipes on threads so a chatty process cannot block on a full pipe
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut s).ok();
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > limit {
            child.kill().ok();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = t.elapsed();
    Outcome {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: status.code(),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&to.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&te.join().unwrap()).into_owned(),
        wall,
    }
}

/// A fresh scratch directory under the target dir (removed and recreated).
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(ROOT).join("target").join("hostile-scratch").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
