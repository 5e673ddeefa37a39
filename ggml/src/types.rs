//! ggml's tensor element types, precisions and RoPE modes as checked Rust values.

use crate::sys;
use std::fmt;

/// A ggml tensor element type. Only ids that ggml still implements can be constructed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Type(pub(crate) sys::ggml_type);

impl Type {
    pub const F32: Type = Type(sys::GGML_TYPE_F32);
    pub const F16: Type = Type(sys::GGML_TYPE_F16);
    pub const BF16: Type = Type(sys::GGML_TYPE_BF16);
    pub const Q4_0: Type = Type(sys::GGML_TYPE_Q4_0);
    pub const Q4_1: Type = Type(sys::GGML_TYPE_Q4_1);
    pub const Q5_0: Type = Type(sys::GGML_TYPE_Q5_0);
    pub const Q5_1: Type = Type(sys::GGML_TYPE_Q5_1);
    pub const Q8_0: Type = Type(sys::GGML_TYPE_Q8_0);
    pub const Q8_1: Type = Type(sys::GGML_TYPE_Q8_1);
    pub const Q2_K: Type = Type(sys::GGML_TYPE_Q2_K);
    pub const Q3_K: Type = Type(sys::GGML_TYPE_Q3_K);
    pub const Q4_K: Type = Type(sys::GGML_TYPE_Q4_K);
    pub const Q5_K: Type = Type(sys::GGML_TYPE_Q5_K);
    pub const Q6_K: Type = Type(sys::GGML_TYPE_Q6_K);
    pub const Q8_K: Type = Type(sys::GGML_TYPE_Q8_K);
    pub const I8: Type = Type(sys::GGML_TYPE_I8);
    pub const I16: Type = Type(sys::GGML_TYPE_I16);
    pub const I32: Type = Type(sys::GGML_TYPE_I32);
    pub const I64: Type = Type(sys::GGML_TYPE_I64);
    pub const F64: Type = Type(sys::GGML_TYPE_F64);

    /// The type with GGUF/ggml id `id`, if ggml implements it (removed ids such as the old
    /// Q4_2/Q4_3 have no block size and are refused).
    pub fn from_id(id: u32) -> Option<Type> {
        if id >= sys::GGML_TYPE_COUNT {
            return None;
        }
        crate::init();
        // SAFETY: `id` is below GGML_TYPE_COUNT, so ggml's trait table has an entry for it.
        let traits = unsafe { &*sys::ggml_get_type_traits(id) };
        if traits.blck_size <= 0 || traits.type_size == 0 {
            return None;
        }
        Some(Type(id))
    }

    pub fn id(self) -> u32 {
        self.0
    }

    fn traits(self) -> &'static sys::ggml_type_traits {
        // SAFETY: a `Type` always holds an id below GGML_TYPE_COUNT (see `from_id`/consts);
        // the trait table is static.
        unsafe { &*sys::ggml_get_type_traits(self.0) }
    }

    /// ggml's name for the type, e.g. "q4_K".
    pub fn name(self) -> &'static str {
        let p = self.traits().type_name;
        if p.is_null() {
            return "?";
        }
        // SAFETY: type names are static NUL-terminated ASCII strings.
        unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap_or("?")
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> i64 {
        self.traits().blck_size
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.traits().type_size
    }

    pub fn is_quantized(self) -> bool {
        self.traits().is_quantized
    }

    /// Can ggml's CPU backend compute with weights of this type: multiply matrices of it (it has
    /// a dot product) and, for quantized types, dequantize its rows (`get_rows`)? False for the
    /// integer types, f64 and the activation-only quantizations q8_1/q8_K, on which ggml's
    /// kernels would dereference a missing function or abort.
    pub fn cpu_weight_capable(self) -> bool {
        crate::init();
        // SAFETY: a `Type` holds an id below GGML_TYPE_COUNT; ggml's CPU trait table has an
        // entry for every such id (zeroed for the types it cannot compute with) and is static.
        let cpu = unsafe { &*sys::ggml_get_type_traits_cpu(self.0) };
        cpu.vec_dot.is_some() && (!self.is_quantized() || self.traits().to_float.is_some())
    }

    /// Bytes of a row of `ne` elements (`ne` must be a multiple of the block size).
    pub fn row_size(self, ne: i64) -> usize {
        (ne / self.block_size()) as usize * self.type_size()
    }

    /// Parses the names used on ferrite's command line (`f16`, `q8_0`, …), case-insensitively.
    pub fn from_name(name: &str) -> Option<Type> {
        (0..sys::GGML_TYPE_COUNT).filter_map(Type::from_id).find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Debug for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Minimum accumulator precision asked of an operation (ggml's `ggml_prec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prec {
    Default,
    F32,
}

impl Prec {
    pub(crate) fn raw(self) -> sys::ggml_prec {
        match self {
            Prec::Default => sys::GGML_PREC_DEFAULT,
            Prec::F32 => sys::GGML_PREC_F32,
        }
    }
}

/// RoPE variants (ggml's `GGML_ROPE_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Rotates adjacent pairs (x0,x1), (x2,x3)… — Llama's original layout.
    Normal,
    /// Rotates (x_i, x_{i+n/2}) — GPT-NeoX layout, used by Qwen, Gemma, Phi-3…
    Neox,
}

impl RopeMode {
    pub(crate) fn raw(self) -> i32 {
        match self {
            RopeMode::Normal => 0,
            RopeMode::Neox => 2, // GGML_ROPE_TYPE_NEOX (a #define, not in the bindings),
        }
    }
}
