//! GGUF v2/v3 files: memory-mapped, validated as hostile input, with typed metadata getters and
//! zero-copy tensor views.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Every count, size, offset
//! and dimension product is checked before use; a violation is a [`BadInput`] error naming the
//! file, the field and the value.

mod reader;
pub mod vocab;
pub mod writer;

use crate::error::BadInput;
use anyhow::Result;
use ggml::Type;
use memmap2::Mmap;
use reader::Reader;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// "GGUF" as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Upper bounds that no real model comes near; they keep hostile counts from driving allocation.
pub const MAX_KV: u64 = 1 << 20;
pub const MAX_TENSORS: u64 = 1 << 20;
pub const MAX_STRING: u64 = 64 << 20;
pub const MAX_ARRAY: u64 = 1 << 28;
pub const MAX_ALIGNMENT: u32 = 1 << 20;
/// ggml's GGML_MAX_NAME minus the terminating NUL.
pub const MAX_TENSOR_NAME: usize = 63;
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// A GGUF metadata value type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    Str,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => Str,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Bytes per element on disk; strings count their 8-byte length prefix as the minimum.
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | Str => 8,
            Array => 12,
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            Str => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(Array),
}

/// A homogeneous metadata array (arrays of arrays are refused when parsing).
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::Str(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::Str(_) => ValueType::Str,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Integer elements widened to i64 (None for non-integer arrays).
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Array::U64(v) => v.iter().map(|&x| x.min(i64::MAX as u64) as i64).collect(),
            Array::I64(v) => v.clone(),
            Array::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            _ => return None,
        })
    }
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::Str,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// The value as an integer, if it is one of the integer types.
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(x) => x as i128,
            Value::I8(x) => x as i128,
            Value::U16(x) => x as i128,
            Value::I16(x) => x as i128,
            Value::U32(x) => x as i128,
            Value::I32(x) => x as i128,
            Value::U64(x) => x as i128,
            Value::I64(x) => x as i128,
            _ => return None,
        })
    }

    /// A short rendering for messages and `ferrite info` (arrays summarised).
    pub fn short(&self) -> String {
        match self {
            Value::Str(s) if s.len() > 60 => format!("{:?}…", s.chars().take(57).collect::<String>()),
            Value::Str(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{}; {}]", a.elem_type().name(), a.len()),
            Value::U8(x) => x.to_string(),
            Value::I8(x) => x.to_string(),
            Value::U16(x) => x.to_string(),
            Value::I16(x) => x.to_string(),
            Value::U32(x) => x.to_string(),
            Value::I32(x) => x.to_string(),
            Value::F32(x) => x.to_string(),
            Value::Bool(x) => x.to_string(),
            Value::U64(x) => x.to_string(),
            Value::I64(x) => x.to_string(),
            Value::F64(x) => x.to_string(),
        }
    }
}

/// One tensor's directory entry, validated against the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub ty: Type,
    /// Shape in ggml order, padded with 1s to 4 dims.
    pub ne: [i64; 4],
    pub n_dims: usize,
    /// Offset of the data from the start of the file.
    pub offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    pub fn nelements(&self) -> i64 {
        self.ne.iter().product()
    }

    /// The shape as written (without the padding 1s).
    pub fn shape(&self) -> &[i64] {
        &self.ne[..self.n_dims]
    }
}

/// The bytes of a memory-mapped file, shareable with ggml buffers that point into them.
pub struct MappedBytes(Mmap);

impl AsRef<[u8]> for MappedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    bytes: Arc<MappedBytes>,
    pub version: u32,
    kv: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u32,
    /// Offset of the tensor data section.
    pub data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GgufFile({}, {} kv, {} tensors)", self.path.display(), self.kv.len(), self.tensors.len())
    }
}

/// Builds the error for a violation: "FILE: FIELD: MESSAGE".
fn violation(path: &Path, field: &str, msg: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(BadInput(format!("{}: {field}: {msg}", path.display())))
}

impl GgufFile {
    /// Memory-maps and validates `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let meta = std::fs::metadata(path).map_err(|e| violation(path, "file", open_error(&e)))?;
        if meta.is_dir() {
            return Err(violation(path, "file", "is a directory, not a GGUF file"));
        }
        // Opening a FIFO would block until a writer comes, and devices (/dev/zero) have no
        // length to map: only regular files are models.
        if !meta.is_file() {
            return Err(violation(path, "file", format!("is not a regular file ({}); only regular files can be models", file_kind(&meta))));
        }
        let file = std::fs::File::open(path).map_err(|e| violation(path, "file", open_error(&e)))?;
        // The path may have been replaced between the two looks: check what was opened.
        let meta = file.metadata().map_err(|e| violation(path, "file", open_error(&e)))?;
        if !meta.is_file() {
            return Err(violation(path, "file", format!("is not a regular file ({}); only regular files can be models", file_kind(&meta))));
        }
        if meta.len() == 0 {
            return Err(violation(path, "file", "is empty"));
        }
        // SAFETY of the mapping (memmap2's contract): the file must not be truncated while mapped.
        // ferrite maps read-only and validates every offset against the length seen here; a file
        // truncated by another process during a run is outside what any mmap-based loader
        // (llama.cpp included) can defend against.
        let map = map_file(&file).map_err(|e| violation(path, "file", format!("cannot be memory-mapped: {e}")))?;
        // Best effort: pages the map faults in from disk come as 2 MiB page-cache folios mapped
        // whole (one TLB entry instead of 512); generation streams every weight per token.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Self::parse(path, Arc::new(MappedBytes(map)))
    }

    /// Validates a GGUF image already in memory (used by tests and the fuzzer).
    pub fn parse_bytes(name: &Path, bytes: Vec<u8>) -> Result<GgufFile> {
        let map = anon_copy(&bytes).map_err(|e| violation(name, "file", format!("cannot be mapped: {e}")))?;
        Self::parse(name, Arc::new(MappedBytes(map)))
    }

    fn parse(path: &Path, bytes: Arc<MappedBytes>) -> Result<GgufFile> {
        let data: &[u8] = (*bytes).as_ref();
        let mut r = Reader::new(data);
        let fail = |field: &str, msg: String| violation(path, field, msg);

        let magic = r.u32().map_err(|e| fail("magic", e))?;
        if magic != MAGIC {
            return Err(fail("magic", format!("not a GGUF file (starts with {:02x?})", &data[..data.len().min(4)])));
        }
        let version = r.u32().map_err(|e| fail("version", e))?;
        if version != 2 && version != 3 {
            return Err(fail("version", format!("unsupported GGUF version {version} (ferrite reads 2 and 3)")));
        }
        let n_tensors = r.u64().map_err(|e| fail("n_tensors", e))?;
        let n_kv = r.u64().map_err(|e| fail("n_kv", e))?;
        // Each tensor entry takes at least 8 (name len) + 1 + 4 (n_dims) + 8 (one dim) + 4 + 8 bytes,
        // each kv at least 8 (key len) + 1 + 4 (type) + 1 bytes: counts are bounded by bytes left.
        if n_kv > MAX_KV || n_kv > r.left() as u64 / 14 {
            return Err(fail("n_kv", format!("{n_kv} key-value pairs cannot fit in the {} bytes left", r.left())));
        }
        if n_tensors > MAX_TENSORS || n_tensors > r.left() as u64 / 33 {
            return Err(fail("n_tensors", format!("{n_tensors} tensors cannot fit in the {} bytes left", r.left())));
        }

        let mut kv = Vec::with_capacity(n_kv as usize);
        let mut kv_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(MAX_STRING).map_err(|e| fail(&format!("key #{i}"), e))?;
            if key.is_empty() {
                return Err(fail(&format!("key #{i}"), "empty key".into()));
            }
            let tid = r.u32().map_err(|e| fail(&key, e))?;
            let ty = ValueType::from_id(tid).ok_or_else(|| fail(&key, format!("unknown value type {tid}")))?;
            let value = read_value(&mut r, ty).map_err(|e| fail(&key, e))?;
            if kv_index.insert(key.clone(), kv.len()).is_some() {
                return Err(fail(&key, "duplicate key".into()));
            }
            kv.push((key, value));
        }

        let alignment = match kv_index.get("general.alignment").map(|&i| &kv[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() && *a <= MAX_ALIGNMENT => *a,
            Some(Value::U32(a)) => return Err(fail("general.alignment", format!("{a} is not a power of two in 1..={MAX_ALIGNMENT}"))),
            Some(v) => return Err(fail("general.alignment", format!("must be u32, is {}", v.value_type().name()))),
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(MAX_STRING).map_err(|e| fail(&format!("tensor #{i} name"), e))?;
            let field = |what: &str| format!("tensor '{name}' {what}");
            if name.is_empty() || name.len() > MAX_TENSOR_NAME {
                return Err(fail(&format!("tensor #{i} name"), format!("length {} is not in 1..={MAX_TENSOR_NAME}", name.len())));
            }
            let n_dims = r.u32().map_err(|e| fail(&field("n_dims"), e))?;
            if !(1..=4).contains(&n_dims) {
                return Err(fail(&field("n_dims"), format!("{n_dims} is not in 1..=4")));
            }
            let mut ne = [1i64; 4];
            for (d, slot) in ne.iter_mut().enumerate().take(n_dims as usize) {
                let v = r.u64().map_err(|e| fail(&field("shape"), e))?;
                if v == 0 || v > i64::MAX as u64 {
                    return Err(fail(&field("shape"), format!("dimension {d} is {v}")));
                }
                *slot = v as i64;
            }
            let tid = r.u32().map_err(|e| fail(&field("type"), e))?;
            let ty = Type::from_id(tid).ok_or_else(|| fail(&field("type"), format!("unknown ggml type id {tid}")))?;
            if ne[0] % ty.block_size() != 0 {
                return Err(fail(
                    &field("shape"),
                    format!("ne[0] = {} is not a multiple of {}'s block size {}", ne[0], ty.name(), ty.block_size()),
                ));
            }
            let nelements = ne.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d));
            let nbytes = nelements
                .and_then(|_| {
                    let rows = ne[1].checked_mul(ne[2])?.checked_mul(ne[3])?;
                    (ty.row_size(ne[0]) as u64).checked_mul(rows as u64)
                })
                .ok_or_else(|| fail(&field("shape"), format!("{:?} overflows", &ne[..n_dims as usize])))?;
            let offset = r.u64().map_err(|e| fail(&field("offset"), e))?;
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(fail(&field("name"), "duplicate tensor name".into()));
            }
            tensors.push(TensorInfo { name, ty, ne, n_dims: n_dims as usize, offset, nbytes });
        }

        // The data section starts at the next multiple of the alignment.
        let header_end = r.pos() as u64;
        let data_offset = align_up(header_end, alignment as u64).ok_or_else(|| fail("data section", "offset overflows".into()))?;
        let file_len = data.len() as u64;
        // Tensors follow each other in directory order, each padded to the alignment, as ggml's
        // writer lays them out; anything else (gaps, overlaps, reordering) is refused.
        let mut expect = 0u64;
        for t in &mut tensors {
            if t.offset != expect {
                return Err(fail(
                    &format!("tensor '{}' offset", t.name),
                    format!("{} is not where the previous tensor ends ({expect}; alignment {alignment})", t.offset),
                ));
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.nbytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(fail(
                        &format!("tensor '{}' data", t.name),
                        format!("{} bytes at offset {} run past the end of the {file_len}-byte file", t.nbytes, t.offset),
                    ))
                }
            }
            t.offset = start.expect("checked above");
            expect = t
                .offset
                .checked_sub(data_offset)
                .and_then(|o| o.checked_add(t.nbytes))
                .and_then(|o| align_up(o, alignment as u64))
                .ok_or_else(|| fail("data section", "offset overflows".into()))?;
        }

        Ok(GgufFile { path: path.to_path_buf(), bytes, version, kv, kv_index, tensors, tensor_index, alignment, data_offset })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        (*self.bytes).as_ref().len() as u64
    }

    /// The mapped file, for ggml buffers that read tensors in place.
    pub fn bytes(&self) -> Arc<MappedBytes> {
        self.bytes.clone()
    }

    /// Every metadata pair in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.kv
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Index of the tensor named `name` in directory order.
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.tensor_index.get(name).copied()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Marks the map's pages that lie wholly inside tensor `t` as read elsewhere (the tensor was
    /// copied out with pread), so that faults on their neighbours do not map them. Linux maps a
    /// file fault's whole page-cache folio (up to 2 MiB) and the pages around it, but never past
    /// the mapping's area: advising the range apart (MADV_RANDOM, which also stops read-ahead
    /// there) makes it an area of its own, so pages nobody reads stay out of the process's
    /// resident memory. Best effort; the bytes stay readable.
    pub fn set_apart(&self, t: &TensorInfo) {
        #[cfg(target_os = "linux")]
        {
            const PAGE: u64 = 4096;
            let (Some(start), end) = (align_up(t.offset, PAGE), (t.offset + t.nbytes) / PAGE * PAGE) else { return };
            if end > start {
                let _ = self.bytes.0.advise_range(memmap2::Advice::Random, start as usize, (end - start) as usize);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = t;
    }

    /// The bytes of a tensor (zero-copy view into the map; bounds were checked when opening).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let s = t.offset as usize;
        &(*self.bytes).as_ref()[s..s + t.nbytes as usize]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv_index.get(key).map(|&i| &self.kv[i].1)
    }

    /// A BadInput error naming this file and `field`.
    pub fn error(&self, field: &str, msg: impl fmt::Display) -> anyhow::Error {
        violation(&self.path, field, msg)
    }

    fn wrong_type(&self, key: &str, want: &str, v: &Value) -> anyhow::Error {
        self.error(key, format!("must be {want}, is {}", v.value_type().name()))
    }

    /// An integer key of any integer type, checked to lie in [min, max].
    fn get_int(&self, key: &str, min: i128, max: i128, want: &str) -> Result<Option<i128>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i128() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                Some(x) => Err(self.error(key, format!("{x} is out of range for {want}"))),
                None => Err(self.wrong_type(key, want, v)),
            },
        }
    }

    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        Ok(self.get_int(key, 0, u32::MAX as i128, "u32")?.map(|x| x as u32))
    }

    pub fn get_i32(&self, key: &str) -> Result<Option<i32>> {
        Ok(self.get_int(key, i32::MIN as i128, i32::MAX as i128, "i32")?.map(|x| x as i32))
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.get_int(key, 0, u64::MAX as i128, "u64")?.map(|x| x as u64))
    }

    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) if x.is_finite() => Ok(Some(*x)),
            Some(Value::F64(x)) if x.is_finite() => Ok(Some(*x as f32)),
            Some(Value::F32(x)) => Err(self.error(key, format!("{x} is not a finite number"))),
            Some(Value::F64(x)) => Err(self.error(key, format!("{x} is not a finite number"))),
            Some(v) => Err(self.wrong_type(key, "f32", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "string", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(key, "array", v)),
        }
    }

    /// A required key: the error names the missing key.
    pub fn require<T>(&self, key: &str, v: Result<Option<T>>) -> Result<T> {
        v?.ok_or_else(|| self.error(key, "missing required key"))
    }

    /// An array of strings of exactly `len` elements when `len` is given.
    pub fn get_str_array(&self, key: &str, len: Option<usize>) -> Result<Option<&[String]>> {
        match self.get_array(key)? {
            None => Ok(None),
            Some(Array::Str(v)) => {
                self.check_len(key, v.len(), len)?;
                Ok(Some(v))
            }
            Some(a) => Err(self.error(key, format!("must be an array of string, is an array of {}", a.elem_type().name()))),
        }
    }

    pub fn get_f32_array(&self, key: &str, len: Option<usize>) -> Result<Option<&[f32]>> {
        match self.get_array(key)? {
            None => Ok(None),
            Some(Array::F32(v)) => {
                self.check_len(key, v.len(), len)?;
                Ok(Some(v))
            }
            Some(a) => Err(self.error(key, format!("must be an array of f32, is an array of {}", a.elem_type().name()))),
        }
    }

    /// An array of integers of any integer type, widened to i64.
    pub fn get_int_array(&self, key: &str, len: Option<usize>) -> Result<Option<Vec<i64>>> {
        match self.get_array(key)? {
            None => Ok(None),
            Some(a) => {
                let v = a
                    .as_i64s()
                    .ok_or_else(|| self.error(key, format!("must be an array of integers, is an array of {}", a.elem_type().name())))?;
                self.check_len(key, v.len(), len)?;
                Ok(Some(v))
            }
        }
    }

    fn check_len(&self, key: &str, got: usize, want: Option<usize>) -> Result<()> {
        match want {
            Some(n) if n != got => Err(self.error(key, format!("has {got} elements, expected {n}"))),
            _ => Ok(()),
        }
    }

    /// `general.architecture`, required.
    pub fn architecture(&self) -> Result<&str> {
        self.require("general.architecture", self.get_str("general.architecture"))
    }
}

fn open_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// What a non-regular file is, for messages ("a FIFO", "a character device", ...).
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

/// memmap2's `Mmap::map` is `unsafe` (another process could truncate the file); the ggml crate,
/// which owns all of the project's unsafe code, wraps it.
fn map_file(file: &std::fs::File) -> std::io::Result<Mmap> {
    ggml::map_readonly(file)
}

fn anon_copy(bytes: &[u8]) -> std::io::Result<Mmap> {
    let mut m = memmap2::MmapMut::map_anon(bytes.len().max(1))?;
    m[..bytes.len()].copy_from_slice(bytes);
    let ro = m.make_read_only()?;
    if bytes.is_empty() {
        // An empty image is still reported as empty (the anonymous map needs one byte).
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty image"));
    }
    Ok(ro)
}

fn read_value(r: &mut Reader, ty: ValueType) -> Result<Value, String> {
    Ok(match ty {
        ValueType::U8 => Value::U8(r.u8()?),
        ValueType::I8 => Value::I8(r.u8()? as i8),
        ValueType::U16 => Value::U16(r.u16()?),
        ValueType::I16 => Value::I16(r.u16()? as i16),
        ValueType::U32 => Value::U32(r.u32()?),
        ValueType::I32 => Value::I32(r.u32()? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(r.u32()?)),
        ValueType::Bool => match r.u8()? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(format!("bool byte is {b}, not 0 or 1")),
        },
        ValueType::Str => Value::Str(r.string(MAX_STRING)?),
        ValueType::U64 => Value::U64(r.u64()?),
        ValueType::I64 => Value::I64(r.u64()? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(r.u64()?)),
        ValueType::Array => {
            let tid = r.u32()?;
            let et = ValueType::from_id(tid).ok_or_else(|| format!("unknown array element type {tid}"))?;
            if et == ValueType::Array {
                return Err("arrays of arrays are not allowed".into());
            }
            let n = r.u64()?;
            if n > MAX_ARRAY || n.checked_mul(et.min_size()).is_none_or(|b| b > r.left() as u64) {
                return Err(format!("array of {n} {} cannot fit in the {} bytes left", et.name(), r.left()));
            }
            let n = n as usize;
            Value::Array(match et {
                ValueType::U8 => Array::U8(r.bytes(n)?.to_vec()),
                ValueType::I8 => Array::I8(r.bytes(n)?.iter().map(|&b| b as i8).collect()),
                ValueType::U16 => Array::U16((0..n).map(|_| r.u16()).collect::<Result<_, _>>()?),
                ValueType::I16 => Array::I16((0..n).map(|_| r.u16().map(|x| x as i16)).collect::<Result<_, _>>()?),
                ValueType::U32 => Array::U32((0..n).map(|_| r.u32()).collect::<Result<_, _>>()?),
                ValueType::I32 => Array::I32((0..n).map(|_| r.u32().map(|x| x as i32)).collect::<Result<_, _>>()?),
                ValueType::F32 => Array::F32((0..n).map(|_| r.u32().map(f32::from_bits)).collect::<Result<_, _>>()?),
                ValueType::Bool => Array::Bool(
                    r.bytes(n)?
                        .iter()
                        .map(|&b| match b {
                            0 => Ok(false),
                            1 => Ok(true),
                            _ => Err(format!("bool byte is {b}, not 0 or 1")),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                ValueType::Str => Array::Str((0..n).map(|_| r.string(MAX_STRING)).collect::<Result<_, _>>()?),
                ValueType::U64 => Array::U64((0..n).map(|_| r.u64()).collect::<Result<_, _>>()?),
                ValueType::I64 => Array::I64((0..n).map(|_| r.u64().map(|x| x as i64)).collect::<Result<_, _>>()?),
                ValueType::F64 => Array::F64((0..n).map(|_| r.u64().map(f64::from_bits)).collect::<Result<_, _>>()?),
                ValueType::Array => unreachable!("refused above"),
            })
        }
    })
}

#[cfg(test)]
mod tests;
