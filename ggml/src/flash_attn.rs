//! ferrite's own flash attention for one shape ggml computes slowly: F32 queries over F16 K and V
//! with 64-value heads on a build with AVX-512 FP16, giving per output exactly the bits of ggml's
//! CPU `flash_attn_ext` (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`).
//!
//! Why: on such a build ggml's F16 vectors are 32 halves wide and its `ggml_vec_mad_f16` and
//! `ggml_vec_scale_f16` take their vector path only for multiples of 128 values, so a 64-value
//! head (SmolLM2, Llama 3.2 1B's 64 …) updates its F16 accumulator one value at a time, through
//! converted scalars; at a few hundred cells that loop is most of a generated token's attention
//! (`perf`: ~30 % of an 8-sequence step of SmolLM2). Here the same arithmetic runs on 512-bit
//! vectors with hardware conversions, and the query heads that share a K/V head walk the cells
//! together (each K and V row read once for them, their chains independent).
//!
//! Per query row, exactly ggml's sequence (ref: ggml-cpu/ops.cpp, vec.h, vec.cpp,
//! simd-mappings.h):
//!
//! ```text
//! q16 = f16(q)                                   (RNE, as ggml_cpu_fp32_to_fp16)
//! for each cell c whose mask value m is not −inf:
//!     s  = dot(k_c, q16)      4 lanes-of-16 FMAs from 0, then (x0+x2)+(x1+x3), then GCC's
//!                             _mm512_reduce_add_ps: halves, quarters, {2,3,0,1}, lanes 0+1
//!     s  = s·scale + m
//!     if s > M:  ms = expf(M_old − s), M = s, acc = f16(acc·ms)   (ggml_vec_scale_f16)
//!     else:      vs = expf(s − M)
//!     acc = f16(fma(v_c, vs, acc))                                (ggml_vec_mad_f16)
//!     S   = S·ms + vs
//! out = f32(acc) · (1/S)
//! ```
//!
//! Whether GCC contracted ggml's scalar `a + b*c` and `S*ms + vs` into FMAs is part of those bits;
//! the unit tests compare against ggml's own node, bit for bit, on this machine's build.

// Without AVX-512 FP16 the nodes are never built (`available()` is false), so what only the
// kernel reads is unused there.
#![cfg_attr(not(all(target_arch = "x86_64", target_feature = "avx512fp16", target_feature = "avx512f")), allow(dead_code))]

use crate::sys;
use std::os::raw::{c_int, c_void};

/// Head size this kernel computes.
pub(crate) const HEAD: i64 = 64;

/// Whether this build and CPU run the kernel: ggml's slow path exists only where ggml was built
/// with AVX-512 FP16 (as this crate is, for the same machine).
pub(crate) fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512fp16", target_feature = "avx512f"))]
    {
        true
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512fp16", target_feature = "avx512f")))]
    {
        false
    }
}

/// Where a pass over cells leaves its rows: normalized in the result, or (ggml's split-cells
/// path) as the partial [M, S, acc…] of chunk `.0` in a partials tensor [2 + 64, chunks, n_head].
#[derive(Clone, Copy)]
enum Out {
    Final,
    Partial(usize),
}

/// Runs the query heads of K/V head `hk` (for query i1 of plane i3) over `cells`, at most four
/// heads a pass.
fn group_pass(t: Tensors, i1: usize, i3: usize, hk: usize, cells: std::ops::Range<usize>, scale: f32, out: Out) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512fp16", target_feature = "avx512f"))]
    {
        let group = (t.q.ne[2] / t.k.ne[2]) as usize;
        let mut h = hk * group;
        while h < (hk + 1) * group {
            let g = ((hk + 1) * group - h).min(4);
            // SAFETY: the nodes exist only where `available()` holds; (i1, h.., i3) index rows of
            // q, of the mask and of the output, hk (= h / group) a head of k and v, and `cells`
            // cells of k, v and the mask, all inside the tensors as checked when the node was
            // built.
            unsafe {
                let a = x86::Rows { t, i1, i3, h, hk, cells: cells.clone(), scale, out };
                match g {
                    4 => x86::rows::<4>(&a),
                    3 => x86::rows::<3>(&a),
                    2 => x86::rows::<2>(&a),
                    _ => x86::rows::<1>(&a),
                }
            }
            h += g;
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512fp16", target_feature = "avx512f")))]
    {
        let _ = (t, i1, i3, hk, &cells, scale, out);
        unreachable!("the flash-attention kernel is built only with AVX-512 FP16")
    }
}

/// The tensors of one attention node: q, k, v, mask, and the output (the result, or partials).
#[derive(Clone, Copy)]
struct Tensors<'a> {
    q: &'a sys::ggml_tensor,
    k: &'a sys::ggml_tensor,
    v: &'a sys::ggml_tensor,
    m: &'a sys::ggml_tensor,
    d: &'a sys::ggml_tensor,
}

/// # Safety
/// `dst` is a live custom node whose sources 0..4 are q, k, v and the mask.
unsafe fn tensors<'a>(dst: *mut sys::ggml_tensor) -> Tensors<'a> {
    // SAFETY: the caller's live node and sources.
    unsafe { Tensors { q: &*(*dst).src[0], k: &*(*dst).src[1], v: &*(*dst).src[2], m: &*(*dst).src[3], d: &*dst } }
}

/// Thread `ith`'s share of `n` units.
fn share(n: usize, ith: c_int, nth: c_int) -> std::ops::Range<usize> {
    let per = n.div_ceil(nth.max(1) as usize);
    (ith as usize * per).min(n)..((ith as usize + 1) * per).min(n)
}

/// The operation ggml calls for the one-pass node (sources q, k, v, mask; `user` carries the
/// scale's bits): thread `ith` of `nth` computes its share of (plane, query, K/V head) groups.
///
/// # Safety
/// ggml calls this only for nodes built by `Context::flash_attn_w`, whose shapes, types and
/// strides were checked there, with `dst` and its sources allocated.
pub(crate) unsafe extern "C" fn flash_attn_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, user: *mut c_void) {
    // SAFETY: see the function's contract.
    let t = unsafe { tensors(dst) };
    let scale = f32::from_bits(user as usize as u32);
    let (n_q, n_head_kv, n_kv) = (t.q.ne[1] as usize, t.k.ne[2] as usize, t.k.ne[1] as usize);
    let units = t.q.ne[3] as usize * n_q * n_head_kv;
    for u in share(units, ith, nth) {
        let (i3, rest) = (u / (n_q * n_head_kv), u % (n_q * n_head_kv));
        group_pass(t, rest / n_head_kv, i3, rest % n_head_kv, 0..n_kv, scale, Out::Final);
    }
}

/// ggml's split-cells path (one query, one plane, 512 cells or more), first half: the cells cut
/// into as many chunks as ggml has threads (`dst.ne[1]`, fixed when the node was built), each
/// chunk's [M, S, unnormalized acc] per head. Units of (K/V head, chunk) are shared among threads.
///
/// # Safety
/// As `flash_attn_op`; `dst` is F32 [2 + 64, chunks, n_head].
pub(crate) unsafe extern "C" fn flash_attn_partials_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, user: *mut c_void) {
    // SAFETY: see the function's contract.
    let t = unsafe { tensors(dst) };
    let scale = f32::from_bits(user as usize as u32);
    let (n_head_kv, n_kv, chunks) = (t.k.ne[2] as usize, t.k.ne[1] as usize, t.d.ne[1] as usize);
    let size = n_kv.div_ceil(chunks);
    for u in share(n_head_kv * chunks, ith, nth) {
        let (hk, chunk) = (u / chunks, u % chunks);
        let cells = (chunk * size).min(n_kv)..((chunk + 1) * size).min(n_kv);
        group_pass(t, 0, 0, hk, cells, scale, Out::Partial(chunk));
    }
}

/// Second half: per head, the chunks combined in order as ggml's
/// `ggml_flash_attn_ext_reduce_partials` does, then normalized. Source: the partials; `dst`
/// F32 [64, n_head].
///
/// # Safety
/// `dst` is a live custom node built by `Context::flash_attn_w` over a partials node.
pub(crate) unsafe extern "C" fn flash_attn_reduce_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _user: *mut c_void) {
    // SAFETY: see the function's contract: dst and its source are live, allocated tensors.
    let (d, p) = unsafe { (&*dst, &*(*dst).src[0]) };
    let (width, chunks, n_head) = (p.ne[0] as usize, p.ne[1] as usize, p.ne[2] as usize);
    let dv = width - 2;
    for h in share(n_head, ith, nth) {
        let (mut big_m, mut big_s) = (f32::NEG_INFINITY, 0f32);
        let mut acc = [0f32; HEAD as usize];
        let acc = &mut acc[..dv];
        for chunk in 0..chunks {
            // SAFETY: partial (chunk, h) is `width` floats inside the source.
            let part = unsafe { std::slice::from_raw_parts((p.data as *const u8).add(chunk * p.nb[1] + h * p.nb[2]) as *const f32, width) };
            let (m_c, s_c) = (part[0], part[1]);
            if s_c == 0.0 {
                continue;
            }
            let m_new = big_m.max(m_c);
            let (old, new) = ((big_m - m_new).exp(), (m_c - m_new).exp());
            for (a, &x) in acc.iter_mut().zip(&part[2..]) {
                *a = a.mul_add(old, x * new);
            }
            big_s = big_s.mul_add(old, s_c * new);
            big_m = m_new;
        }
        if big_s != 0.0 {
            let inv = 1.0 / big_s;
            acc.iter_mut().for_each(|a| *a *= inv);
        }
        // SAFETY: row h of dst holds dv floats.
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), (d.data as *mut u8).add(h * d.nb[1]) as *mut f32, dv) };
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512fp16", target_feature = "avx512f"))]
mod x86 {
    use crate::sys;
    use std::arch::x86_64::*;

    /// G query heads h..h+G of query i1 in plane i3, which share K/V head hk, over `cells`.
    pub(super) struct Rows<'a> {
        pub t: super::Tensors<'a>,
        pub i1: usize,
        pub i3: usize,
        pub h: usize,
        pub hk: usize,
        pub cells: std::ops::Range<usize>,
        pub scale: f32,
        pub out: super::Out,
    }

    /// 64 values as four vectors of 16, rounded to f16 and back (ggml's F16 row, exactly).
    #[inline]
    #[target_feature(enable = "avx512f,avx512fp16")]
    fn round_f16(x: __m512) -> __m512 {
        _mm512_cvtph_ps(_mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x))
    }

    /// 64 halves at `p` as f32.
    ///
    /// # Safety
    /// `p` points at 128 readable bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512fp16")]
    unsafe fn load_f16(p: *const u8) -> [__m512; 4] {
        // SAFETY: the caller's 128 readable bytes.
        unsafe { std::array::from_fn(|j| _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32 * j) as *const __m256i))) }
    }

    /// ggml_vec_dot_f16 of 64 values on this build: one FMA step from zero per 16 lanes,
    /// `(x0+x2)+(x1+x3)`, then GCC's `_mm512_reduce_add_ps`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512fp16")]
    fn dot(k: &[__m512; 4], q: &[__m512; 4]) -> f32 {
        let z = _mm512_setzero_ps();
        let s: [__m512; 4] = std::array::from_fn(|j| _mm512_fmadd_ps(k[j], q[j], z));
        let x = _mm512_add_ps(_mm512_add_ps(s[0], s[2]), _mm512_add_ps(s[1], s[3]));
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
        let t3 = _mm256_add_ps(hi, _mm512_castps512_ps256(x));
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        let t8 = _mm_add_ps(t6, _mm_permute_ps::<0b01_00_11_10>(t6));
        _mm_cvtss_f32(t8) + _mm_cvtss_f32(_mm_movehdup_ps(t8))
    }

    /// Attention of G heads of one query over every cell, written to dst.
    ///
    /// # Safety
    /// As `flash_attn_op`'s contract, for these rows; the CPU has AVX-512 F and FP16.
    #[target_feature(enable = "avx512f,avx512fp16,fma,f16c")]
    pub(super) unsafe fn rows<const G: usize>(a: &Rows) {
        let (q, k, v, m, d) = (a.t.q, a.t.k, a.t.v, a.t.m, a.t.d);
        let base = |t: &sys::ggml_tensor| t.data as *const u8;
        // SAFETY: (whole body) every offset below indexes an element the node's shapes hold
        // (checked when it was built); rows are 64 contiguous values.
        unsafe {
            let mut qf = [[_mm512_setzero_ps(); 4]; G];
            for (g, qg) in qf.iter_mut().enumerate() {
                let p = base(q).add(a.i1 * q.nb[1] + (a.h + g) * q.nb[2] + a.i3 * q.nb[3]) as *const f32;
                *qg = std::array::from_fn(|j| round_f16(_mm512_loadu_ps(p.add(16 * j))));
            }
            let mask = base(m).add(a.i1 * m.nb[1] + (a.i3 % m.ne[3] as usize) * m.nb[3]) as *const u16;
            let k0 = base(k).add(a.hk * k.nb[2] + a.i3 * k.nb[3]);
            let v0 = base(v).add(a.hk * v.nb[2] + a.i3 * v.nb[3]);
            let mut acc = [[_mm512_setzero_ps(); 4]; G];
            let mut big_m = [f32::NEG_INFINITY; G];
            let mut big_s = [0f32; G];
            for c in a.cells.clone() {
                let mv = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(*mask.add(c) as i32)));
                if mv == f32::NEG_INFINITY {
                    continue;
                }
                let kc = load_f16(k0.add(c * k.nb[1]));
                let vc = load_f16(v0.add(c * v.nb[1]));
                for g in 0..G {
                    let s = dot(&kc, &qf[g]) * a.scale + mv;
                    let (ms, vs);
                    if s > big_m[g] {
                        ms = (big_m[g] - s).exp();
                        vs = 1.0;
                        big_m[g] = s;
                        let msv = _mm512_set1_ps(ms);
                        for x in acc[g].iter_mut() {
                            *x = round_f16(_mm512_mul_ps(*x, msv));
                        }
                    } else {
                        ms = 1.0;
                        vs = (s - big_m[g]).exp();
                    }
                    let vsv = _mm512_set1_ps(vs);
                    for (x, vj) in acc[g].iter_mut().zip(&vc) {
                        *x = round_f16(_mm512_fmadd_ps(*vj, vsv, *x));
                    }
                    big_s[g] = big_s[g].mul_add(ms, vs);
                }
            }
            for g in 0..G {
                match a.out {
                    super::Out::Final => {
                        let inv = if big_s[g] == 0.0 { 0.0 } else { 1.0 / big_s[g] };
                        // dst is [64, n_head, n_q, planes]: row (h, i1, i3)
                        let out = (d.data as *mut u8).add((a.h + g) * d.nb[1] + a.i1 * d.nb[2] + a.i3 * d.nb[3]) as *mut f32;
                        for (j, x) in acc[g].iter().enumerate() {
                            _mm512_storeu_ps(out.add(16 * j), _mm512_mul_ps(*x, _mm512_set1_ps(inv)));
                        }
                    }
                    super::Out::Partial(chunk) => {
                        // partials are [2 + 64, chunks, n_head]: M, S, then acc as it stands
                        let out = (d.data as *mut u8).add(chunk * d.nb[1] + (a.h + g) * d.nb[2]) as *mut f32;
                        *out = big_m[g];
                        *out.add(1) = big_s[g];
                        for (j, x) in acc[g].iter().enumerate() {
                            _mm512_storeu_ps(out.add(2 + 16 * j), *x);
                        }
                    }
                }
            }
        }
    }
}
