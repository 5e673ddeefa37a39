//! Unit tests of the GGUF parser on small files written by a minimal test writer.

use super::*;

/// A minimal GGUF writer for tests: metadata pairs and F32 tensors laid out as ggml does.
pub(crate) struct Writer {
    pub version: u32,
    pub kv: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    pub alignment: u64,
}

impl Writer {
    pub fn new() -> Self {
        Writer { version: 3, kv: Vec::new(), tensors: Vec::new(), alignment: 32 }
    }
    fn s(v: &str) -> Vec<u8> {
        let mut b = (v.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(v.as_bytes());
        b
    }
    pub fn u32(mut self, k: &str, v: u32) -> Self {
        self.kv.push((k.into(), 4, v.to_le_bytes().to_vec()));
        self
    }
    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.kv.push((k.into(), 8, Self::s(v)));
        self
    }
    pub fn raw(mut self, k: &str, ty: u32, bytes: Vec<u8>) -> Self {
        self.kv.push((k.into(), ty, bytes));
        self
    }
    pub fn tensor_f32(mut self, name: &str, ne: &[u64]) -> Self {
        let n: u64 = ne.iter().product();
        self.tensors.push((name.into(), ne.to_vec(), 0, vec![0u8; n as usize * 4]));
        self
    }
    pub fn build(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            b.extend(Self::s(k));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(v);
        }
        let mut off = 0u64;
        for (name, ne, ty, data) in &self.tensors {
            b.extend(Self::s(name));
            b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
            off = (off + data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        while !(b.len() as u64).is_multiple_of(self.alignment) {
            b.push(0);
        }
        for (_, _, _, data) in &self.tensors {
            b.extend_from_slice(data);
            while !(b.len() as u64).is_multiple_of(self.alignment) {
                b.push(0);
            }
        }
        b
    }
}

fn parse(b: Vec<u8>) -> Result<GgufFile> {
    GgufFile::parse_bytes(Path::new("test.gguf"), b)
}

fn err_of(b: Vec<u8>) -> String {
    let e = parse(b).expect_err("must be refused");
    assert!(e.downcast_ref::<BadInput>().is_some(), "not a BadInput: {e}");
    e.to_string()
}

#[test]
fn reads_metadata_and_tensors() {
    let f = parse(
        Writer::new()
            .str("general.architecture", "llama")
            .u32("llama.block_count", 2)
            .tensor_f32("a", &[4, 2])
            .tensor_f32("b", &[3])
            .build(),
    )
    .unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), Some(2));
    assert_eq!(f.tensors().len(), 2);
    let b = f.tensor("b").unwrap();
    assert_eq!(b.ne, [3, 1, 1, 1]);
    assert_eq!(f.tensor_data(b).len(), 12);
    assert!(f.get_str("llama.block_count").is_err(), "declared type is checked");
}

#[test]
fn refuses_violations_with_named_fields() {
    let mut bad_magic = Writer::new().build();
    bad_magic[0] = b'X';
    assert!(err_of(bad_magic).contains("magic"));
    let mut w = Writer::new();
    w.version = 7;
    assert!(err_of(w.build()).contains("version 7"));
    assert!(err_of(Writer::new().u32("k", 1).u32("k", 2).build()).contains("duplicate key"));
    assert!(err_of(Writer::new().tensor_f32("t", &[2]).tensor_f32("t", &[2]).build()).contains("duplicate tensor"));
    assert!(err_of(Writer::new().raw("k", 13, vec![]).build()).contains("unknown value type 13"));
    let aoa = [9u32.to_le_bytes().to_vec(), 0u64.to_le_bytes().to_vec()].concat();
    assert!(err_of(Writer::new().raw("k", 9, aoa).build()).contains("arrays of arrays"));
    let huge = [0u32.to_le_bytes().to_vec(), (1u64 << 40).to_le_bytes().to_vec()].concat();
    assert!(err_of(Writer::new().raw("k", 9, huge).build()).contains("cannot fit"));
    assert!(err_of(Writer::new().u32("general.alignment", 3).build()).contains("power of two"));
    assert!(err_of(Writer::new().u32("general.alignment", 1 << 21).build()).contains("power of two"));
    let mut t = Writer::new().tensor_f32("t", &[2]).build();
    t.truncate(t.len() - 28); // 24 bytes of padding, then into the data
    assert!(err_of(t).contains("run past the end"));
}

#[test]
fn truncation_anywhere_is_an_error() {
    let full = Writer::new().str("general.architecture", "llama").u32("x", 1).tensor_f32("a", &[8, 2]).build();
    for n in 0..full.len() {
        assert!(parse(full[..n].to_vec()).is_err(), "prefix of {n} bytes accepted");
    }
}
