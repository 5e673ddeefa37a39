//! ferrite's own CPU matrix kernel: Q4_1, Q5_1, Q5_0 and (for a few columns) Q8_0 weights × 8-bit
//! quantized activations in register tiles (two columns a 512-bit register where the build has
//! AVX-512), giving per output exactly the bits of ggml's x86 vector dots
//! (`ggml_vec_dot_q4_1_q8_1`, `ggml_vec_dot_q5_1_q8_1`, `ggml_vec_dot_q5_0_q8_0`).
//!
//! Why: ggml's mul_mat computes a single column (generation) one row at a time with the vector
//! dot, whose loop carries its floating-point accumulator (and Q4_1's scalar `summs`) through
//! every 32-value block, so it runs at an FMA's latency per block and leaves memory latency
//! exposed; for Q4_1 and Q5_1 it does the same for prompts too (on x86 they have no repacked or
//! llamafile kernel). Here one pass computes an R×C tile of outputs: the unpacked weight block is
//! reused across C columns, the activation block across R rows, the R·C chains are independent,
//! and the weight rows are prefetched ahead (two tiles for a single column, one for several:
//! without it an 8-column SmolLM2 step waited on weight loads; +20 % with it). Several columns
//! read their activations from a panel laid out once per node and thread. Every output still goes
//! through ggml's operations in ggml's order, so the results are identical:
//!
//! ```text
//! per block b:  acc[0..8] = fma(d_w·d_x, f32(Σ_{4 lanes} q_w·q_x), acc)   (d_w·d_x of two f16: exact)
//!               summs     = fma(m_w, s_x, summs)                          (Q4_1, Q5_1)
//! out = hsum(acc) [+ summs],  hsum = ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))
//! ```
//!
//! The lane sums are integers, exact however they are formed (`vpdpbusd` where the build targets
//! AVX-512 VNNI, else AVX2's `maddubs`/`madd`); Q5_0's q − 16 is summed as q·x − 16·Σx rather than
//! through ggml's sign trick, the same integers. (ref: ggml-cpu/arch/x86/quants.c and its
//! `hsum_float_8`. The unit tests compare against ggml's mul_mat bit for bit.)

use crate::sys;
use std::os::raw::{c_int, c_void};

const QK: usize = 32;

/// Whether this CPU can run the tiled kernel.
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The activation type ggml's mul_mat quantizes to for weights of type `w` (its `vec_dot_type`),
/// if the kernel is faster than ggml for `w` and `n` columns (measured on Zen 4, see the README):
/// Q4_1 and Q5_1 always (on x86 ggml has no repacked or llamafile kernel for them); Q5_0 for a
/// single column only (for more, llamafile's tinyBLAS tiles are faster).
/// Q8_0 is left to ggml: a single column of it streams at memory speed already, and four rows
/// in step defeat the hardware prefetcher (gemma3's LM head: −15 %).
/// Q8_0 goes through the kernel for a few columns (several sequences generating together): each
/// 4-row tile then serves every column while its rows are in cache, where tinyBLAS streams the
/// whole matrix once per 4 columns (gemma3's 178 MB LM head). More columns stay tinyBLAS's (a
/// prompt), a single one ggml's dot (see above).
const Q8_0_MAX_COLUMNS: i64 = 16;

pub(crate) fn activation_type(w: sys::ggml_type, n: i64) -> Option<sys::ggml_type> {
    match w {
        sys::GGML_TYPE_Q4_1 | sys::GGML_TYPE_Q5_1 => Some(sys::GGML_TYPE_Q8_1),
        sys::GGML_TYPE_Q5_0 if n == 1 => Some(sys::GGML_TYPE_Q8_0),
        sys::GGML_TYPE_Q8_0 if (2..=Q8_0_MAX_COLUMNS).contains(&n) => Some(sys::GGML_TYPE_Q8_0),
        _ => None,
    }
}

/// The operation ggml calls for the custom node: `dst` [m, n] F32 = src0 ([k, m])ᵀ · src1
/// ([k, n], of `activation_type(src0)`); thread `ith` of `nth` computes its own contiguous range
/// of rows. (Handing rows out a chunk at a time from a shared counter instead cut the time the
/// two threads wait at ggml's barrier after the node, but cost more in the kernel: 8-sequence
/// SmolLM2 steps −9 %.)
///
/// # Safety
/// ggml calls this only for nodes built by `Context::mul_mat_w`, whose shapes, types and
/// contiguity were checked there, with `dst` and its sources allocated.
pub(crate) unsafe extern "C" fn mul_mat_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _user: *mut c_void) {
    // SAFETY: see the function's contract: dst and both sources are live, allocated tensors.
    let (d, w, x) = unsafe { (&*dst, &*(*dst).src[0], &*(*dst).src[1]) };
    let (k, m) = (w.ne[0] as usize, w.ne[1] as usize);
    let n = (x.ne[1] * x.ne[2] * x.ne[3]) as usize;
    let rows = split(m, ith as usize, nth as usize);
    if rows.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the node exists only when `available()` found every feature the kernel enables and
    // `activation_type` accepted the weight type; pointers and strides describe the tensors'
    // allocated data (rows of `nb[1]` bytes).
    unsafe {
        let a = x86::Args {
            w: w.data as *const u8,
            w_stride: w.nb[1],
            x: x.data as *const u8,
            x_stride: x.nb[1],
            out: d.data as *mut f32,
            m,
            nb: k / QK,
        };
        match w.type_ {
            sys::GGML_TYPE_Q4_1 => x86::run::<x86::Q4_1>(&a, n, rows),
            sys::GGML_TYPE_Q5_0 => x86::run::<x86::Q5_0>(&a, n, rows),
            sys::GGML_TYPE_Q5_1 => x86::run::<x86::Q5_1>(&a, n, rows),
            sys::GGML_TYPE_Q8_0 => x86::run::<x86::Q8_0>(&a, n, rows),
            t => unreachable!("custom mul_mat node with weight type {t}"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (d, x, k, n, rows);
        unreachable!("the tiled kernel is built only on x86_64")
    }
}

/// Thread `ith`'s share of `m` rows, in whole tiles of 4 rows where possible.
fn split(m: usize, ith: usize, nth: usize) -> std::ops::Range<usize> {
    let tiles = m.div_ceil(4);
    let per = tiles.div_ceil(nth.max(1));
    let start = (ith * per * 4).min(m);
    let end = ((ith + 1) * per * 4).min(m);
    start..end
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// One weight block format: its size, its unpacking into 32 bytes, and their products with
    /// the activation bytes.
    pub(super) trait Weight {
        /// Bytes of one block of 32 weights.
        const BLOCK: usize;
        /// Bytes of one activation block (block_q8_1: d, s, 32 q; block_q8_0: d, 32 q).
        const X_BLOCK: usize;
        /// Offset of the 32 activation bytes in their block.
        const X_QS: usize;
        /// A per-block minimum (Q4_1, Q5_1), which adds `m_w · s_x` through `summs`.
        const MIN: bool;
        /// Quants stored as q + 16 (Q5_0): the lane sums start from −16·Σx.
        const OFFSET: bool;
        /// Signed quants (Q8_0): products through ggml's sign trick, |w| · (x signed by w).
        const SIGNED: bool = false;
        /// (d, m, q) of the block at `p`: scale, minimum (0 without one) and the 32 quants as
        /// unsigned bytes (Q5_0's as stored, q + 16).
        ///
        /// # Safety
        /// `p` points at one readable block; the CPU has the kernel's features.
        unsafe fn load(p: *const u8) -> (f32, f32, __m256i);

        /// As `load`, the 32 bytes twice in a 512-bit vector (for two columns a register), signed
        /// quants as w + 128.
        ///
        /// # Safety
        /// As `load`; the CPU has the build's AVX-512.
        #[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512dq", target_feature = "avx512vnni"))]
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,fma,f16c,avx2")]
        unsafe fn load_wide(p: *const u8) -> (f32, f32, __m512i) {
            // SAFETY: the caller's block.
            let (d, m, q) = unsafe { Self::load(p) };
            let wide = _mm512_broadcast_i64x4(q);
            (d, m, if Self::SIGNED { _mm512_xor_si512(wide, _mm512_set1_epi8(-128)) } else { wide })
        }
    }

    /// f16 pair at `p` as f32 (d and m of Q4_1, or d and 16 bits that are ignored).
    ///
    /// # Safety
    /// `p` points at 4 readable bytes; the CPU has F16C.
    #[inline]
    #[target_feature(enable = "f16c,avx2")]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        // SAFETY: the caller's 4 readable bytes.
        let h = unsafe { std::ptr::read_unaligned(p as *const i32) };
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(h));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// The 32 nibbles of 16 bytes: low ones first (ggml's `bytes_from_nibbles_32`).
    ///
    /// # Safety
    /// `p` points at 16 readable bytes; the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: the caller's 16 readable bytes.
        let q = unsafe { _mm_loadu_si128(p as *const __m128i) };
        let both = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(q), _mm_srli_epi16::<4>(q));
        _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
    }

    /// The 32 bits at `p` as bytes: all ones where bit j is set (ggml's `bytes_from_bits_32`:
    /// byte j gets the bits' byte j/8 with every bit but j%8 set, compared with all ones).
    ///
    /// # Safety
    /// `p` points at 4 readable bytes; the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn bits(p: *const u8) -> __m256i {
        // SAFETY: the caller's 4 readable bytes.
        let qh = unsafe { std::ptr::read_unaligned(p as *const i32) };
        let spread =
            _mm256_shuffle_epi8(_mm256_set1_epi32(qh), _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
        _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi64x(-1))
    }

    /// 32 five-bit quants, 0..31: low nibbles from the 16 bytes at `qs`, fifth bits from the 4 at
    /// `qh`.
    ///
    /// # Safety
    /// Both pointers are readable for those sizes; the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn five_bits(qh: *const u8, qs: *const u8) -> __m256i {
        // SAFETY: the caller's readable bytes.
        unsafe { _mm256_or_si256(nibbles(qs), _mm256_and_si256(bits(qh), _mm256_set1_epi8(0x10))) }
    }

    /// `init` (when `with_init`) plus unsigned bytes times signed bytes summed in fours: 8 i32
    /// lanes, exact (ggml's `mul_sum_us8_pairs`). This build targets AVX-512 VNNI: `vpdpbusd`.
    #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    fn dot(init: __m256i, u: __m256i, s: __m256i, with_init: bool) -> __m256i {
        _mm256_dpbusd_epi32(if with_init { init } else { _mm256_setzero_si256() }, u, s)
    }

    /// As above without VNNI: AVX2's `maddubs` (pairs fit in i16: q ≤ 31, |x| ≤ 127) and `madd`.
    #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot(init: __m256i, u: __m256i, s: __m256i, with_init: bool) -> __m256i {
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
        if with_init {
            _mm256_add_epi32(init, sums)
        } else {
            sums
        }
    }

    /// block_q4_1: f16 d, f16 m, 16 bytes of nibbles; value = d·q + m.
    pub(super) struct Q4_1;
    impl Weight for Q4_1 {
        const BLOCK: usize = 20;
        const X_BLOCK: usize = 36;
        const X_QS: usize = 4;
        const MIN: bool = true;
        const OFFSET: bool = false;
        /// # Safety
        /// As [`Weight::load`].
        #[inline]
        #[target_feature(enable = "fma,f16c,avx2")]
        unsafe fn load(p: *const u8) -> (f32, f32, __m256i) {
            // SAFETY: one readable block at p (caller).
            unsafe {
                let (d, m) = scales(p);
                (d, m, nibbles(p.add(4)))
            }
        }

        /// # Safety
        /// As [`Weight::load_wide`].
        #[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512dq", target_feature = "avx512vnni"))]
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,fma,f16c,avx2")]
        unsafe fn load_wide(p: *const u8) -> (f32, f32, __m512i) {
            // SAFETY: one readable block at p (caller).
            unsafe {
                let (d, m) = scales(p);
                // the 16 bytes in each 128-bit lane, the high nibbles shifted down in lanes 1
                // and 3: low nibbles, high nibbles, twice (`nibbles`' order)
                let q = _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(4) as *const __m128i));
                let q = _mm512_mask_srli_epi16::<4>(q, 0xff00_ff00, q);
                (d, m, _mm512_and_si512(q, _mm512_set1_epi8(0x0f)))
            }
        }
    }

    /// block_q5_1: f16 d, f16 m, 32 high bits, 16 bytes of low nibbles; value = d·q + m.
    pub(super) struct Q5_1;
    impl Weight for Q5_1 {
        const BLOCK: usize = 24;
        const X_BLOCK: usize = 36;
        const X_QS: usize = 4;
        const MIN: bool = true;
        const OFFSET: bool = false;
        /// # Safety
        /// As [`Weight::load`].
        #[inline]
        #[target_feature(enable = "fma,f16c,avx2")]
        unsafe fn load(p: *const u8) -> (f32, f32, __m256i) {
            // SAFETY: one readable block at p (caller).
            unsafe {
                let (d, m) = scales(p);
                (d, m, five_bits(p.add(4), p.add(8)))
            }
        }
    }

    /// block_q5_0: f16 d, 32 high bits, 16 bytes of low nibbles; value = d·(q − 16).
    pub(super) struct Q5_0;
    impl Weight for Q5_0 {
        const BLOCK: usize = 22;
        const X_BLOCK: usize = 34;
        const X_QS: usize = 2;
        const MIN: bool = false;
        const OFFSET: bool = true;
        /// # Safety
        /// As [`Weight::load`].
        #[inline]
        #[target_feature(enable = "fma,f16c,avx2")]
        unsafe fn load(p: *const u8) -> (f32, f32, __m256i) {
            // SAFETY: one readable block at p (caller).
            unsafe {
                let (d, _) = scales(p);
                (d, 0.0, five_bits(p.add(2), p.add(6)))
            }
        }
    }

    /// block_q8_0: f16 d, 32 signed bytes; value = d·q.
    pub(super) struct Q8_0;
    impl Weight for Q8_0 {
        const BLOCK: usize = 34;
        const X_BLOCK: usize = 34;
        const X_QS: usize = 2;
        const MIN: bool = false;
        const OFFSET: bool = false;
        const SIGNED: bool = true;
        /// # Safety
        /// As [`Weight::load`].
        #[inline]
        #[target_feature(enable = "fma,f16c,avx2")]
        unsafe fn load(p: *const u8) -> (f32, f32, __m256i) {
            // SAFETY: one readable block at p (caller): 2 bytes of d, then 32 quants.
            unsafe {
                let (d, _) = scales(p);
                (d, 0.0, _mm256_loadu_si256(p.add(2) as *const __m256i))
            }
        }
    }

    /// The tensors of one product: weight rows of `w_stride` bytes, activation columns of
    /// `x_stride` bytes, `nb` blocks each; out[c·m + r].
    pub(super) struct Args {
        pub w: *const u8,
        pub w_stride: usize,
        pub x: *const u8,
        pub x_stride: usize,
        pub out: *mut f32,
        pub m: usize,
        pub nb: usize,
    }

    /// A 64-byte line (one 512-bit vector), the unit of the column panels.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    pub(super) struct Line([u8; 64]);

    thread_local! {
        /// This thread's column panels for the node it is computing (see `panels`).
        static PANELS: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// The node's product for rows `rows`, after this thread laid out its column panels.
    ///
    /// # Safety
    /// As `mul_mat`.
    #[target_feature(enable = "fma,f16c,avx2")]
    pub(super) unsafe fn run<W: Weight>(a: &Args, n: usize, rows: std::ops::Range<usize>) {
        PANELS.with_borrow_mut(|buf| {
            // SAFETY: the caller's activations and features; then as the function's contract,
            // with the panels just laid out.
            unsafe {
                panels::<W>(a, n, buf);
                mul_mat::<W>(a, buf.as_ptr(), n, rows)
            }
        })
    }

    /// Lines a block takes in the panel of `C` columns: per pair of columns their bytes, the lane
    /// sums' start where the type has one (else zero) and their d; then the C s values.
    #[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512dq", target_feature = "avx512vnni"))]
    const fn panel_lines<W: Weight>(c: usize) -> usize {
        c / 2 * if W::OFFSET || W::SIGNED { 3 } else { 2 } + 1
    }

    /// Offset in lines of the panel of the 4 or 8 columns from `c0` (a multiple of 8: groups of
    /// 8, then one of 4).
    #[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512dq", target_feature = "avx512vnni"))]
    fn panel_offset<W: Weight>(a: &Args, c0: usize) -> usize {
        c0 / 8 * a.nb * panel_lines::<W>(8)
    }

    /// Lays out in `buf` what the 512-bit tiles read of the activations, for every group of
    /// 8 (then 4) columns, block by block: each pair of columns' 32 bytes side by side as one
    /// vector, its lane sums' start, its d in each half, and the group's s, once for the node
    /// instead of once per 4-row tile (the work of `columns` was ~40 % of the vector operations
    /// of an 8-column tile). Nothing without the build's AVX-512, or under 4 columns.
    ///
    /// # Safety
    /// `a` covers n columns of activations; the CPU has the kernel's features.
    #[target_feature(enable = "fma,f16c,avx2")]
    unsafe fn panels<W: Weight>(a: &Args, n: usize, buf: &mut Vec<Line>) {
        buf.clear();
        #[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512dq", target_feature = "avx512vnni"))]
        if n >= 4 {
            let groups = (0..n / 8).map(|g| (8 * g, 8)).chain((n % 8 >= 4).then_some((n / 8 * 8, 4)));
            buf.resize(panel_offset::<W>(a, n / 8 * 8) + if n % 8 >= 4 { a.nb * panel_lines::<W>(4) } else { 0 }, Line([0; 64]));
            for (c0, c) in groups {
                // SAFETY: the group's columns are inside the activations; its lines inside buf.
                unsafe {
                    let out = buf.as_mut_ptr().add(panel_offset::<W>(a, c0));
                    if c == 8 {
                        panel::<W, 8>(a, c0, out)
                    } else {
                        panel::<W, 4>(a, c0, out)
                    }
                }
            }
        }
        let _ = (a, n);
    }

    /// The panel of columns c0..c0+C (see `panels`) at `out`.
    ///
    /// # Safety
    /// Those columns are inside the activations; `out` has `nb · panel_lines(C)` lines; the CPU
    /// has the build's AVX-512.
    #[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512dq", target_feature = "avx512vnni"))]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,fma,f16c,avx2")]
    unsafe fn panel<W: Weight, const C: usize>(a: &Args, c0: usize, out: *mut Line) {
        let pairs = C / 2;
        let with_start = W::OFFSET || W::SIGNED;
        let x = a.x.wrapping_add(c0 * a.x_stride);
        let pair_i = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        let pair_f = |lo: f32, hi: f32| _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_set1_ps(lo)), _mm256_set1_ps(hi));
        for b in 0..a.nb {
            // SAFETY: columns 0..C, block b are inside the activations; the block's lines are
            // inside `out` (caller).
            unsafe {
                let (qy, init, dy, sv) = columns::<W, C>(a, x, b);
                let lines = out.add(b * panel_lines::<W>(C)) as *mut __m512i;
                let mut i = 0;
                for p in 0..pairs {
                    let y = pair_i(qy[2 * p], qy[2 * p + 1]);
                    _mm512_store_si512(lines.add(i), y);
                    i += 1;
                    if with_start {
                        let start = if W::SIGNED {
                            // signed weights as unsigned w + 128, the lane sums starting from
                            // −128·Σx: Σ(w+128)·x − 128·Σx = Σw·x, the integers of ggml's sign
                            // trick (VNNI's `vpdpbusd` does not saturate; AVX2's `maddubs`
                            // would, hence the 256-bit tile keeps the sign trick)
                            let zero = _mm512_setzero_si512();
                            _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(-128), y))
                        } else {
                            pair_i(init[2 * p], init[2 * p + 1])
                        };
                        _mm512_store_si512(lines.add(i), start);
                        i += 1;
                    }
                    _mm512_store_ps(lines.add(i) as *mut f32, pair_f(dy[4 * p], dy[4 * p + 2]));
                    i += 1;
                }
                _mm256_store_ps(lines.add(i) as *mut f32, sv);
            }
        }
    }

    /// Rows `rows` of all `n` columns.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `a` covers m rows, n columns and the n×m
    /// output; `panel` holds `panels`' layout of those columns.
    #[target_feature(enable = "fma,f16c,avx2")]
    unsafe fn mul_mat<W: Weight>(a: &Args, panel: *const Line, n: usize, rows: std::ops::Range<usize>) {
        #[cfg(not(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512dq",
            target_feature = "avx512vnni"
        )))]
        let _ = panel;
        let mut r = rows.start;
        while r < rows.end {
            let rt = (rows.end - r).min(4);
            if n == 1 {
                // One column (generation): independent rows, next tiles prefetched.
                // SAFETY: rows r..r+rt are in range; caller's features hold.
                unsafe {
                    match rt {
                        4 => tile::<W, 4, 1, true>(a, r, 0),
                        _ => tile::<W, 1, 1, false>(a, r, 0),
                    }
                }
                r += if rt == 4 { 4 } else { 1 };
                continue;
            }
            let mut c = 0;
            while c < n {
                let ct = (n - c).min(4);
                // Eight columns at once where the build has AVX-512: each weight block unpacked
                // once for all of them.
                #[cfg(all(
                    target_feature = "avx512f",
                    target_feature = "avx512bw",
                    target_feature = "avx512dq",
                    target_feature = "avx512vnni"
                ))]
                if rt == 4 && n - c >= 8 {
                    // SAFETY: rows r..r+4 and columns c..c+8 are in range; the build's features hold.
                    unsafe { tile4_zmm::<W, 8>(a, panel.add(panel_offset::<W>(a, c)), r, c) };
                    c += 8;
                    continue;
                }
                // SAFETY: the tile's rows and columns are in range; caller's features hold.
                unsafe {
                    match (rt, ct) {
                        #[cfg(all(
                            target_feature = "avx512f",
                            target_feature = "avx512bw",
                            target_feature = "avx512dq",
                            target_feature = "avx512vnni"
                        ))]
                        (4, 4) => tile4_zmm::<W, 4>(a, panel.add(panel_offset::<W>(a, c)), r, c),
                        #[cfg(not(all(
                            target_feature = "avx512f",
                            target_feature = "avx512bw",
                            target_feature = "avx512dq",
                            target_feature = "avx512vnni"
                        )))]
                        (4, 4) => tile::<W, 4, 4, false>(a, r, c),
                        (4, 3) => tile::<W, 4, 3, false>(a, r, c),
                        (4, 2) => tile::<W, 4, 2, false>(a, r, c),
                        (4, 1) => tile::<W, 4, 1, false>(a, r, c),
                        (3, _) => tile::<W, 3, 1, false>(a, r, c),
                        (2, _) => tile::<W, 2, 1, false>(a, r, c),
                        _ => tile::<W, 1, 1, false>(a, r, c),
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

    /// Block `b` of `C` (at most 8) activation columns from `x`: their 32 bytes, the lane sums'
    /// start (Q5_0's −16·Σx: Σ(q+16)·x − 16·Σx = Σq·x, exactly as ggml's signed products,
    /// |x| ≤ 127; else 0), and their (d, s) f16 pairs converted together: d of column c in lane
    /// 2c, the s in lane c of `sv`.
    ///
    /// # Safety
    /// Columns 0..C of block b are inside the activations; the CPU has the kernel's features.
    #[inline]
    #[target_feature(enable = "fma,f16c,avx2")]
    unsafe fn columns<W: Weight, const C: usize>(a: &Args, x: *const u8, b: usize) -> ([__m256i; C], [__m256i; C], [f32; 16], __m256) {
        let mut qy = [_mm256_setzero_si256(); C];
        let mut ds = [0i32; 8];
        for c in 0..C {
            // SAFETY: column c, block b is inside the activations (caller).
            unsafe {
                let p = x.add(c * a.x_stride + b * W::X_BLOCK);
                ds[c] = std::ptr::read_unaligned(p as *const i32);
                qy[c] = _mm256_loadu_si256(p.add(W::X_QS) as *const __m256i);
            }
        }
        let mut init = [_mm256_setzero_si256(); C];
        if W::OFFSET {
            let zero = _mm256_setzero_si256();
            for c in 0..C {
                init[c] = _mm256_sub_epi32(zero, dot(zero, _mm256_set1_epi8(16), qy[c], false));
            }
        }
        // SAFETY: reads the 8 local i32 values.
        let (lo, hi) = unsafe {
            let lo = _mm256_cvtph_ps(_mm_loadu_si128(ds.as_ptr() as *const __m128i));
            let hi = if C > 4 { _mm256_cvtph_ps(_mm_loadu_si128(ds.as_ptr().add(4) as *const __m128i)) } else { _mm256_setzero_ps() };
            (lo, hi)
        };
        let mut dy = [0f32; 16];
        // SAFETY: writes 16 local f32 values.
        unsafe {
            _mm256_storeu_ps(dy.as_mut_ptr(), lo);
            _mm256_storeu_ps(dy.as_mut_ptr().add(8), hi);
        }
        let odd = _mm256_setr_epi32(1, 3, 5, 7, 0, 0, 0, 0);
        let s_lo = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(lo, odd));
        let s_hi = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(hi, odd));
        (qy, init, dy, _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(s_lo), s_hi))
    }

    /// `tile::<W, 4, C, false>` (C = 4 or 8) with two columns a 512-bit register (where the
    /// build has AVX-512), the columns read from their panel (see `panels`): the lane sums, their
    /// conversion, the scale d_w·d_x and the FMA into each column's 8 accumulator lanes are
    /// those of the 256-bit tile, lane by lane, so the outputs are the same bits with half the
    /// instructions. Eight columns (several sequences generating) unpack each weight block once
    /// for all of them.
    ///
    /// # Safety
    /// As `mul_mat`, for rows r0..r0+4 and columns c0..c0+C, whose panel is at `panel`; the CPU
    /// has the build's AVX-512.
    #[cfg(all(target_feature = "avx512f", target_feature = "avx512bw", target_feature = "avx512dq", target_feature = "avx512vnni"))]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vnni,fma,f16c,avx2")]
    unsafe fn tile4_zmm<W: Weight, const C: usize>(a: &Args, panel: *const Line, r0: usize, c0: usize) {
        const R: usize = 4;
        const PF_TILES: usize = 1;
        let pairs = C / 2;
        let with_start = W::OFFSET || W::SIGNED;
        let w = a.w.wrapping_add(r0 * a.w_stride);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let mut summs = [_mm256_setzero_ps(); R];
        for b in 0..a.nb {
            // SAFETY: the panel's lines of block b (caller).
            let lines = unsafe { panel.add(b * panel_lines::<W>(C)) } as *const __m512i;
            // SAFETY: likewise; the last line holds the C s values.
            let sv = unsafe { _mm256_load_ps(lines.add(panel_lines::<W>(C) - 1) as *const f32) };
            for (r, accr) in acc.iter_mut().enumerate() {
                // SAFETY: row r, block b is inside the weights; prefetching never faults.
                let (dw, mw, u) = unsafe {
                    let p = w.add(r * a.w_stride + b * W::BLOCK);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF_TILES * R * a.w_stride) as *const i8);
                    W::load_wide(p)
                };
                if W::MIN {
                    summs[r] = _mm256_fmadd_ps(_mm256_set1_ps(mw), sv, summs[r]);
                }
                // d_w·d_x per lane: the scalar product ggml broadcasts
                let dwv = _mm512_set1_ps(dw);
                for (p, ap) in accr.iter_mut().enumerate().take(pairs) {
                    let i = p * if with_start { 3 } else { 2 };
                    // SAFETY: the pair's lines in the panel (see `panel_lines`).
                    let (y, start, dyp) = unsafe {
                        let y = _mm512_load_si512(lines.add(i));
                        let start = if with_start { _mm512_load_si512(lines.add(i + 1)) } else { _mm512_setzero_si512() };
                        (y, start, _mm512_load_ps(lines.add(i + if with_start { 2 } else { 1 }) as *const f32))
                    };
                    let xy = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u, y));
                    *ap = _mm512_fmadd_ps(_mm512_mul_ps(dwv, dyp), xy, *ap);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            let mut sm = [0f32; 8];
            // SAFETY: writes 8 local f32 values.
            unsafe { _mm256_storeu_ps(sm.as_mut_ptr(), summs[r]) };
            for (p, ap) in accr.iter().take(pairs).enumerate() {
                for (h, half) in [_mm512_castps512_ps256(*ap), _mm512_extractf32x8_ps::<1>(*ap)].into_iter().enumerate() {
                    let c = 2 * p + h;
                    let v = if W::MIN { hsum(half) + sm[c] } else { hsum(half) };
                    // SAFETY: output (r, c) of the tile is inside dst.
                    unsafe { *a.out.add((c0 + c) * a.m + r0 + r) = v };
                }
            }
        }
    }

    /// Outputs of rows r0..r0+R × columns c0..c0+C; with `PF`, the rows two tiles ahead are
    /// prefetched (a single column streams the weights once, so their latency is exposed).
    ///
    /// # Safety
    /// As `mul_mat`, for those rows and columns.
    #[inline]
    #[target_feature(enable = "fma,f16c,avx2")]
    unsafe fn tile<W: Weight, const R: usize, const C: usize, const PF: bool>(a: &Args, r0: usize, c0: usize) {
        let w = a.w.wrapping_add(r0 * a.w_stride);
        let x = a.x.wrapping_add(c0 * a.x_stride);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        // summs of row r for columns 0..C in the lanes of one vector: fma lane by lane is ggml's
        // scalar fma, and one instruction serves all C columns.
        let mut summs = [_mm256_setzero_ps(); R];
        for b in 0..a.nb {
            // SAFETY: columns 0..C, block b are inside the activations.
            let (qy, init, dy, sv) = unsafe { columns::<W, C>(a, x, b) };
            for r in 0..R {
                // SAFETY: row r, block b is inside the weights; prefetching never faults.
                let (dw, mw, qx) = unsafe {
                    let p = w.add(r * a.w_stride + b * W::BLOCK);
                    if PF {
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * R * a.w_stride) as *const i8);
                    }
                    W::load(p)
                };
                if W::MIN {
                    summs[r] = _mm256_fmadd_ps(_mm256_set1_ps(mw), sv, summs[r]);
                }
                // signed weights: ggml's `mul_sum_i8_pairs_float`, the same integers
                let ux = if W::SIGNED { _mm256_sign_epi8(qx, qx) } else { qx };
                for c in 0..C {
                    let xy = if W::SIGNED {
                        _mm256_cvtepi32_ps(dot(init[c], ux, _mm256_sign_epi8(qy[c], qx), false))
                    } else {
                        _mm256_cvtepi32_ps(dot(init[c], qx, qy[c], W::OFFSET))
                    };
                    acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dy[2 * c]), xy, acc[r][c]);
                }
            }
        }
        for r in 0..R {
            let mut sm = [0f32; 8];
            // SAFETY: writes 8 local f32 values.
            unsafe { _mm256_storeu_ps(sm.as_mut_ptr(), summs[r]) };
            for c in 0..C {
                // Types without a minimum end at the hsum (adding 0 would turn −0 into +0).
                let v = if W::MIN { hsum(acc[r][c]) + sm[c] } else { hsum(acc[r][c]) };
                // SAFETY: output (r, c) of the tile is inside dst.
                unsafe { *a.out.add((c0 + c) * a.m + r0 + r) = v };
            }
        }
    }
}
