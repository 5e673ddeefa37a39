//! ferrite's own CPU matrix kernel: Q4_1 weights × Q8_1 activations in register tiles, giving
//! exactly the bits of ggml's `ggml_vec_dot_q4_1_q8_1` (x86, AVX2/AVX-512 build) per output.
//!
//! Why: on x86 ggml has no repacked or llamafile kernel for Q4_1, so its mul_mat calls the vector
//! dot once per (row, column). That loop carries two floating-point dependency chains (the 8-lane
//! accumulator and the scalar `summs`) through every 32-value block, so it runs at the latency of
//! an FMA per block. Here one pass computes an R×C tile of outputs: the unpacked weight block is
//! reused across C columns, the activation block across R rows, and the R·C chains are independent.
//! Every output still goes through ggml's operations in ggml's order, so results are identical:
//!
//! ```text
//! per block b:  acc[0..8] = fma(d_w·d_x, f32(Σ_{4 lanes} q_w·q_x), acc)   (one rounding each)
//!               summs     = fma(m_w, s_x, summs)
//! out = hsum(acc) + summs,  hsum = ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))
//! ```
//!
//! (ref: ggml-cpu/arch/x86/quants.c `ggml_vec_dot_q4_1_q8_1` and `hsum_float_8`; the built
//! library contracts `summs += m*s` to `vfmadd231ss`, which the unit test against ggml's mul_mat
//! pins down.)

use crate::sys;
use std::os::raw::{c_int, c_void};

/// Bytes of one `block_q4_1` (f16 d, f16 m, 16 bytes of nibbles) and one `block_q8_1`
/// (f16 d, f16 s = d·Σq, 32 signed bytes).
const Q4_1_BLOCK: usize = 20;
const Q8_1_BLOCK: usize = 36;
const QK: usize = 32;

/// Whether this CPU can run the tiled kernel (and `FERRITE_GGML_MATMUL` does not ask for ggml's).
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("FERRITE_GGML_MATMUL").is_some_and(|v| v != "0") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The operation ggml calls for the custom node: `dst` [m, n] F32 = src0 (Q4_1 [k, m])ᵀ ·
/// src1 (Q8_1 [k, n]); thread `ith` of `nth` computes its own contiguous range of rows.
///
/// # Safety
/// ggml calls this only for nodes built by `Context::mul_mat_q4_1`, whose shapes, types and
/// contiguity were checked there, with `dst` and its sources allocated.
pub(crate) unsafe extern "C" fn mul_mat_q4_1_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _user: *mut c_void) {
    // SAFETY: see the function's contract: dst and both sources are live, allocated tensors.
    let (d, w, x) = unsafe { (&*dst, &*(*dst).src[0], &*(*dst).src[1]) };
    let (k, m) = (w.ne[0] as usize, w.ne[1] as usize);
    let n = (x.ne[1] * x.ne[2] * x.ne[3]) as usize;
    let rows = split(m, ith as usize, nth as usize);
    if rows.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the node exists only when `available()` found every feature the kernel enables;
    // pointers and strides describe the tensors' allocated data (rows of `nb[1]` bytes).
    unsafe {
        x86::mul_mat(
            w.data as *const u8,
            w.nb[1],
            x.data as *const u8,
            x.nb[1],
            d.data as *mut f32,
            m,
            n,
            k / QK,
            rows,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (d, x, k, n, rows);
        unreachable!("the Q4_1 kernel is built only on x86_64")
    }
}

/// Thread `ith`'s share of `m` rows, in whole tiles of 8 rows where possible.
fn split(m: usize, ith: usize, nth: usize) -> std::ops::Range<usize> {
    let tiles = m.div_ceil(8);
    let per = tiles.div_ceil(nth.max(1));
    let start = (ith * per * 8).min(m);
    let end = ((ith + 1) * per * 8).min(m);
    start..end
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q4_1_BLOCK, Q8_1_BLOCK};
    use std::arch::x86_64::*;

    /// Rows `rows` of out[n][m] from weights `w` (rows of `w_stride` bytes) and activations `x`
    /// (columns of `x_stride` bytes), `nb` blocks each.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/VL/BW/VNNI, FMA and F16C; the pointers cover m rows, n columns and
    /// an n×m output.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,fma,f16c,avx2")]
    pub(super) unsafe fn mul_mat(
        w: *const u8,
        w_stride: usize,
        x: *const u8,
        x_stride: usize,
        out: *mut f32,
        m: usize,
        n: usize,
        nb: usize,
        rows: std::ops::Range<usize>,
    ) {
        let mut r = rows.start;
        if n == 1 {
            // One column (generation): 8 independent rows per pass.
            while r < rows.end {
                // SAFETY: rows r.. are in range; caller's features hold.
                unsafe {
                    let (wp, op) = (w.add(r * w_stride), out.add(r));
                    if rows.end - r >= 4 {
                        tile::<4, 1, true>(wp, w_stride, x, x_stride, op, m, nb);
                        r += 4;
                    } else {
                        tile::<1, 1, false>(wp, w_stride, x, x_stride, op, m, nb);
                        r += 1;
                    }
                }
            }
            return;
        }
        while r < rows.end {
            let rt = (rows.end - r).min(4);
            let mut c = 0;
            while c < n {
                let ct = (n - c).min(4);
                // SAFETY: the tile's rows and columns are in range; caller's features hold.
                unsafe {
                    let (wp, xp, op) = (w.add(r * w_stride), x.add(c * x_stride), out.add(c * m + r));
                    match (rt, ct) {
                        (4, 4) => tile::<4, 4, false>(wp, w_stride, xp, x_stride, op, m, nb),
                        (4, 3) => tile::<4, 3, false>(wp, w_stride, xp, x_stride, op, m, nb),
                        (4, 2) => tile::<4, 2, false>(wp, w_stride, xp, x_stride, op, m, nb),
                        (4, 1) => tile::<4, 1, false>(wp, w_stride, xp, x_stride, op, m, nb),
                        (3, _) => tile::<3, 1, false>(wp, w_stride, xp, x_stride, op, m, nb),
                        (2, _) => tile::<2, 1, false>(wp, w_stride, xp, x_stride, op, m, nb),
                        _ => tile::<1, 1, false>(wp, w_stride, xp, x_stride, op, m, nb),
                    }
                }
                // Row tails take one column at a time (rare: m is a multiple of 4 in practice).
                c += if rt == 4 { ct } else { 1 };
            }
            r += rt;
        }
    }

    /// ggml's `hsum_float_8`: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(hi, _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The f16 pair (d, m) that starts a Q4_1 block at `p`, as f32.
    ///
    /// # Safety
    /// `p` points at 4 readable bytes; the CPU has F16C.
    #[inline]
    #[target_feature(enable = "f16c,avx2")]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        // SAFETY: every block starts with two f16 values (caller's range).
        let h = unsafe { std::ptr::read_unaligned(p as *const i32) };
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(h));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// R rows × C columns of outputs; out[c·m + r].
    ///
    /// # Safety
    /// As `mul_mat`, for rows `w .. w + R·w_stride` and columns `x .. x + C·x_stride`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,fma,f16c,avx2")]
    unsafe fn tile<const R: usize, const C: usize, const PF: bool>(
        w: *const u8,
        w_stride: usize,
        x: *const u8,
        x_stride: usize,
        out: *mut f32,
        m: usize,
        nb: usize,
    ) {
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        // summs of row r for columns 0..C in the lanes of one vector: fma lane by lane is the
        // scalar fma of ggml, and one instruction serves all C columns.
        let mut summs = [_mm_setzero_ps(); R];
        for b in 0..nb {
            let mut qy = [_mm256_setzero_si256(); C];
            // (d, s) of each column as f16 pairs, converted together: lanes d0 s0 d1 s1 ...
            let mut ds = [0i32; 4];
            for c in 0..C {
                // SAFETY: column c, block b is inside the activations.
                unsafe {
                    let p = x.add(c * x_stride + b * Q8_1_BLOCK);
                    ds[c] = std::ptr::read_unaligned(p as *const i32);
                    qy[c] = _mm256_loadu_si256(p.add(4) as *const __m256i);
                }
            }
            // SAFETY: reads the 4 local i32 values.
            let dsf = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(ds.as_ptr() as *const __m128i) });
            let sv = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(dsf, _mm256_setr_epi32(1, 3, 5, 7, 0, 0, 0, 0)));
            let mut dy = [0f32; 8];
            // SAFETY: writes 8 local f32 values.
            unsafe { _mm256_storeu_ps(dy.as_mut_ptr(), dsf) };
            for r in 0..R {
                // SAFETY: row r, block b is inside the weights.
                let (dw, mw, qx) = unsafe {
                    let p = w.add(r * w_stride + b * Q4_1_BLOCK);
                    if PF {
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * R * w_stride) as *const i8);
                    }
                    let (dw, mw) = scales(p);
                    let q = _mm_loadu_si128(p.add(4) as *const __m128i);
                    let both = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(q), _mm_srli_epi16::<4>(q));
                    (dw, mw, _mm256_and_si256(both, low))
                };
                summs[r] = _mm_fmadd_ps(_mm_set1_ps(mw), sv, summs[r]);
                for c in 0..C {
                    let xy = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), qx, qy[c]));
                    acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dy[2 * c]), xy, acc[r][c]);
                }
            }
        }
        for r in 0..R {
            let mut sm = [0f32; 4];
            // SAFETY: writes 4 local f32 values.
            unsafe { _mm_storeu_ps(sm.as_mut_ptr(), summs[r]) };
            for c in 0..C {
                // SAFETY: output (r, c) of the tile is inside dst.
                unsafe { *out.add(c * m + r) = hsum(acc[r][c]) + sm[c] };
            }
        }
    }
}
