//! Writing GGUF files (version 3), byte for byte as ggml's `gguf_write_to_file` lays them out:
//! header, metadata in order, tensor directory, zero padding to the alignment, then each
//! tensor's data padded to the alignment. Files are written to a temporary name beside the
//! target and renamed into place, so a failed or interrupted write never leaves a half file
//! under the target's name.

use super::{Array, Value};
use crate::atomic_file::AtomicFile;
use anyhow::Result;
use ggml::Type;
use std::path::Path;

/// ggml's default data alignment (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: usize = 32;

/// One tensor of the directory.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub ty: Type,
    /// Shape in ggml order; `n_dims` of it are written.
    pub ne: [i64; 4],
    pub n_dims: usize,
}

impl TensorEntry {
    pub fn nbytes(&self) -> usize {
        let rows: i64 = self.ne[1..].iter().product();
        self.ty.row_size(self.ne[0]) * rows as usize
    }
}

fn pad(n: usize, align: usize) -> usize {
    n.div_ceil(align) * align
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF's type id of a value (and of an array's elements).
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn array_type_id(a: &Array) -> u32 {
    match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::Str(_) => 8,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => {
            out.extend_from_slice(&array_type_id(a).to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            match a {
                Array::U8(v) => out.extend_from_slice(v),
                Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
                Array::U16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Array::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Array::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Array::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Array::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Array::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
                Array::Str(v) => v.iter().for_each(|s| put_str(out, s)),
                Array::U64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Array::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                Array::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            }
        }
    }
}

/// The header, metadata and tensor directory, padded with zeros to `alignment`: everything
/// before the first tensor's data.
pub fn meta(kv: &[(String, Value)], tensors: &[TensorEntry], alignment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as i64).to_le_bytes());
    out.extend_from_slice(&(kv.len() as i64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut out, k);
        out.extend_from_slice(&type_id(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.n_dims as u32).to_le_bytes());
        for &n in &t.ne[..t.n_dims] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.id().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += pad(t.nbytes(), alignment);
    }
    out.resize(pad(out.len(), alignment), 0);
    out
}

/// Refuses `target` as the output of a model derived from `source` (named `what`, e.g. "merged
/// model", and `source_name`, e.g. "base model"): an existing device, FIFO or directory must not
/// be replaced by a renamed file, and the source must not be written over.
pub fn check_target(target: &Path, source: &Path, what: &str, source_name: &str) -> Result<()> {
    if let Ok(md) = std::fs::metadata(target) {
        if !md.is_file() {
            crate::bail_input!("{}: exists and is not a regular file; give a file path for the {what}", target.display());
        }
        if std::fs::canonicalize(target).ok() == std::fs::canonicalize(source).ok() {
            crate::bail_input!("{}: the output would overwrite the {source_name}", target.display());
        }
    }
    Ok(())
}

/// A GGUF file being written: the directory first, then each tensor's data in directory order.
/// Written atomically: nothing appears under the target's name until [`finish`](Self::finish).
pub struct Writer {
    file: AtomicFile,
    tensors: Vec<TensorEntry>,
    next: usize,
    alignment: usize,
}

impl Writer {
    /// Starts `target`.
    pub fn create(target: &Path, kv: &[(String, Value)], tensors: Vec<TensorEntry>, alignment: usize) -> Result<Writer> {
        let mut file = AtomicFile::create(target)?;
        file.write_all(&meta(kv, &tensors, alignment))?;
        Ok(Writer { file, tensors, next: 0, alignment })
    }

    /// The next tensor of the directory (its entry), if any is left to write.
    pub fn next_tensor(&self) -> Option<&TensorEntry> {
        self.tensors.get(self.next)
    }

    /// Writes the next tensor's data, which must be exactly its size.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        let Some(t) = self.tensors.get(self.next) else { anyhow::bail!("all tensors are written already") };
        if data.len() != t.nbytes() {
            anyhow::bail!("tensor {} has {} bytes, its directory entry says {}", t.name, data.len(), t.nbytes());
        }
        let padding = pad(data.len(), self.alignment) - data.len();
        self.file.write_all(data)?;
        self.file.write_all(&vec![0u8; padding])?;
        self.next += 1;
        Ok(())
    }

    /// Syncs and renames the file into place.
    pub fn finish(self) -> Result<()> {
        if self.next != self.tensors.len() {
            anyhow::bail!("{} of {} tensors were written", self.next, self.tensors.len());
        }
        self.file.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back() {
        let dir = std::env::temp_dir().join(format!("ferrite-gguf-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let kv = vec![
            ("general.architecture".to_string(), Value::Str("llama".into())),
            ("x.list".to_string(), Value::Array(Array::Str(vec!["a".into(), "bc".into()]))),
            ("x.f".to_string(), Value::F32(1.5)),
        ];
        let t = TensorEntry { name: "w".into(), ty: Type::F32, ne: [3, 2, 1, 1], n_dims: 2 };
        let mut w = Writer::create(&path, &kv, vec![t], DEFAULT_ALIGNMENT).unwrap();
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.write_tensor(&data).unwrap();
        w.finish().unwrap();
        let f = crate::gguf::GgufFile::open(&path).unwrap();
        assert_eq!(f.metadata(), &kv[..]);
        let info = &f.tensors()[0];
        assert_eq!((info.name.as_str(), info.ne), ("w", [3, 2, 1, 1]));
        assert_eq!(f.tensor_data(info), &data[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
