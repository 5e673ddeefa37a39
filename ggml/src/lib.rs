//! ferrite's safe layer over ggml (from llama-cpp-sys-2): the project's only `unsafe` code.
//!
//! Ownership model: a [`Context`] owns ggml tensor metadata; every [`Tensor`] holds a strong
//! reference to its context, and a context holds strong references to the contexts whose tensors
//! its own tensors use as sources, and to the buffers that hold its tensors' data. So no tensor,
//! graph or buffer can be freed while something that points into it is still reachable.
//! Tensors allocated by a [`Sched`] are read and written only through that scheduler, which checks
//! that the graph is the one its buffers currently hold.

mod backend;
pub mod budget;
mod context;
mod flash_attn;
mod graph;
mod kernels;
pub mod rpc;
mod sched;
mod served;
pub mod signal;
mod types;

pub use backend::{Backend, Buffer, BufferType, Device, DeviceKind};
pub use context::{Context, Tensor};
pub use graph::Graph;
pub use sched::{Element, EvalFn, MatMulEval, MatMulObserver, NodeEval, Sched};
pub use types::{Prec, RopeMode, Type};

/// Whether `Context::flash_attn_w` can use ferrite's own flash-attention kernel on this build
/// (for tests that count the graph's custom nodes).
pub fn own_flash_attn_available() -> bool {
    flash_attn::available()
}

/// The raw bindings, for constants only; calling them is reserved to this crate.
#[doc(hidden)]
pub use llama_cpp_sys_2 as sys;

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

/// An error from the ggml layer: a failed allocation, a refused operation or a failed compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// How much of ggml's own log reaches stderr: 0 nothing, 1 errors, 2 warnings, 3 info, 4 debug.
static LOG_LEVEL: AtomicU8 = AtomicU8::new(1);
static INIT: Once = Once::new();

/// Writes `text` to stderr, ignoring a failed write: the callbacks ggml calls must not panic
/// (`eprint!` does when stderr is a full disk), which would unwind across C frames and abort.
pub(crate) fn write_stderr(text: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
}

// SAFETY: only ggml calls this (registered in `init`), with a level and a NUL-terminated string
// or null; it is not reentrant-sensitive and never unwinds (`write_stderr` cannot panic).
unsafe extern "C" fn log_callback(level: sys::ggml_log_level, text: *const std::os::raw::c_char, _user: *mut std::os::raw::c_void) {
    let want = LOG_LEVEL.load(Ordering::Relaxed) as u32;
    // ggml levels: 1 debug, 2 info, 3 warn, 4 error, 5 cont.
    let rank = match level {
        sys::GGML_LOG_LEVEL_ERROR => 1,
        sys::GGML_LOG_LEVEL_WARN => 2,
        sys::GGML_LOG_LEVEL_INFO => 3,
        sys::GGML_LOG_LEVEL_DEBUG => 4,
        _ => 4,
    };
    if rank <= want && !text.is_null() {
        // SAFETY: ggml passes a NUL-terminated string that lives for the duration of the call.
        let s = unsafe { std::ffi::CStr::from_ptr(text) };
        write_stderr(&s.to_string_lossy());
    }
}

// SAFETY: only ggml calls this (registered in `init`), with a NUL-terminated message or null.
unsafe extern "C" fn abort_callback(msg: *const std::os::raw::c_char) {
    let text = if msg.is_null() {
        String::from("unknown failure")
    } else {
        // SAFETY: ggml passes a NUL-terminated message that lives for the duration of the call.
        unsafe { std::ffi::CStr::from_ptr(msg) }.to_string_lossy().into_owned()
    };
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("unknown failure").trim();
    write_stderr(&format!("ferrite: internal error in ggml: {line}\n"));
    // A ggml abort is a bug of ours (inputs are validated before they reach ggml); exit with the
    // runtime-failure code instead of SIGABRT and a core dump. Unwinding out of C is not allowed.
    std::process::exit(1);
}

/// Initialises ggml once per process: routes its log through our level filter and turns its
/// aborts into a one-line error. Called by every constructor of this crate.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: both callbacks are `extern "C"` functions with the signatures ggml expects and
        // live for the whole program; `ggml_cpu_init` only fills ggml's static lookup tables.
        unsafe {
            sys::ggml_log_set(Some(log_callback), std::ptr::null_mut());
            sys::ggml_set_abort_callback(Some(abort_callback));
            sys::ggml_cpu_init();
        }
    });
}

/// Sets how much of ggml's log is shown on stderr (0 none … 4 debug). Default: errors only.
pub fn set_log_level(level: u8) {
    init();
    LOG_LEVEL.store(level.min(4), Ordering::Relaxed);
}

/// The ggml version this crate was built against, e.g. "0.26.0".
pub fn version() -> String {
    // SAFETY: ggml_version returns a pointer to a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(sys::ggml_version()) }.to_string_lossy().into_owned()
}

/// The CPU features ggml was compiled to use, as ggml names them (e.g. "AVX2", "AVX512").
pub fn cpu_features() -> Vec<&'static str> {
    init();
    let mut out = Vec::new();
    // SAFETY: these functions only read compile-time/cpuid flags.
    unsafe {
        let checks: [(&str, unsafe extern "C" fn() -> std::os::raw::c_int); 10] = [
            ("SSE3", sys::ggml_cpu_has_sse3),
            ("AVX", sys::ggml_cpu_has_avx),
            ("AVX2", sys::ggml_cpu_has_avx2),
            ("F16C", sys::ggml_cpu_has_f16c),
            ("FMA", sys::ggml_cpu_has_fma),
            ("AVX_VNNI", sys::ggml_cpu_has_avx_vnni),
            ("AVX512", sys::ggml_cpu_has_avx512),
            ("AVX512_VNNI", sys::ggml_cpu_has_avx512_vnni),
            ("AVX512_BF16", sys::ggml_cpu_has_avx512_bf16),
            ("AMX_INT8", sys::ggml_cpu_has_amx_int8),
        ];
        for (name, f) in checks {
            if f() != 0 {
                out.push(name);
            }
        }
    }
    out
}

/// Converts f32 values to IEEE half precision exactly as ggml does.
pub fn fp32_to_fp16_row(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "fp32_to_fp16_row: length mismatch");
    init();
    // SAFETY: both slices hold `src.len()` elements; ggml_fp16_t is a u16.
    unsafe { sys::ggml_fp32_to_fp16_row(src.as_ptr(), dst.as_mut_ptr() as *mut sys::ggml_fp16_t, src.len() as i64) }
}

/// Quantizes `n_rows` rows of `n_per_row` f32 values into `ty`, returning the bytes (ggml's own
/// reference quantizer; used by tests and by callers that must produce ggml's exact blocks).
pub fn quantize(ty: Type, src: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    quantize_weighted(ty, src, n_per_row, None)
}

/// [`quantize`] with importance weights: one value per column (an importance matrix's row),
/// which the types that need one require and the others use to weight their rounding error.
pub fn quantize_weighted(ty: Type, src: &[f32], n_per_row: usize, imatrix: Option<&[f32]>) -> Result<Vec<u8>> {
    init();
    if n_per_row == 0 || !src.len().is_multiple_of(n_per_row) {
        return err("quantize: the data is not a whole number of rows");
    }
    if n_per_row as i64 % ty.block_size() != 0 {
        return err(format!("quantize: row length {n_per_row} is not a multiple of {}'s block size", ty.name()));
    }
    if imatrix.is_some_and(|m| m.len() != n_per_row) {
        return err("quantize: the importance weights are not one per column");
    }
    let n_rows = src.len() / n_per_row;
    let row_size = ty.row_size(n_per_row as i64);
    let mut out = vec![0u8; row_size * n_rows];
    // F16, BF16 and F32 are conversions ggml_quantize_chunk also does
    if !ty.is_quantized() && ![Type::F16, Type::BF16, Type::F32].contains(&ty) {
        return err(format!("quantize: {} is not a type to quantize to", ty.name()));
    }
    // SAFETY: `src` holds n_rows*n_per_row floats, `out` n_rows rows of `ty`, `imatrix` (when
    // given) n_per_row floats; ggml asserts the type is quantizable (a from_float routine,
    // F16/BF16/F32 included; others refused above) and, for the types that need weights, that
    // they are given (checked here first).
    unsafe {
        sys::ggml_quantize_init(ty.0);
        if sys::ggml_quantize_requires_imatrix(ty.0) && imatrix.is_none() {
            return err(format!("quantize: {} needs an importance matrix", ty.name()));
        }
        let w = imatrix.map_or(std::ptr::null(), |m| m.as_ptr());
        sys::ggml_quantize_chunk(ty.0, src.as_ptr(), out.as_mut_ptr() as *mut _, 0, n_rows as i64, n_per_row as i64, w);
    }
    Ok(out)
}

/// Converts rows of type `ty` back to f32 with ggml's own routine.
pub fn dequantize(ty: Type, src: &[u8], n_per_row: usize) -> Result<Vec<f32>> {
    init();
    let row_size = ty.row_size(n_per_row as i64);
    if n_per_row as i64 % ty.block_size() != 0 || row_size == 0 || !src.len().is_multiple_of(row_size) {
        return err("dequantize: the data is not a whole number of rows");
    }
    let n = src.len() / row_size * n_per_row;
    let mut out = vec![0f32; n];
    // SAFETY: the type traits' to_float converts exactly `n` elements from `src` (n/blck blocks of
    // type_size bytes, checked above) into `out`.
    unsafe {
        let traits = sys::ggml_get_type_traits(ty.0);
        match (*traits).to_float {
            Some(f) => f(src.as_ptr() as *const _, out.as_mut_ptr(), n as i64),
            None => return err(format!("dequantize: no conversion for {}", ty.name())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

/// Memory-maps `file` read-only.
///
/// memmap2 marks mapping `unsafe` because the contents can change underneath the program if
/// another process modifies or truncates the file. Callers validate every offset against the
/// length seen at mapping time; concurrent truncation of a model file is outside what any
/// mmap-based loader can defend against (llama.cpp maps models the same way).
pub fn map_readonly(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: read-only mapping of a regular file; see the function documentation.
    unsafe { memmap2::Mmap::map(file) }
}

/// The CPUID instruction: `[eax, ebx, ecx, edx]` of `leaf`/`subleaf` (x86-64 only; every x86-64
/// CPU has CPUID). Leaves above the CPU's maximum return unspecified values: ask for
/// `leaf & 0x8000_0000` first.
#[cfg(target_arch = "x86_64")]
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // SAFETY: CPUID exists on every x86-64 CPU and only reads identification registers. (The
    // intrinsic became a safe function in newer toolchains, hence the allow; the workspace's
    // minimum Rust still has it unsafe.)
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid_count(leaf, subleaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}
