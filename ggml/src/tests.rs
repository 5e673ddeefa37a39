//! Op tests: ggml's CPU kernels against naive Rust references, with named tolerances.

use crate::*;

/// Max abs error allowed where ggml computes in f32 throughout.
const TOL_F32: f32 = 1e-4;
/// Relative error allowed for products through 8-bit quantized operands (weights and activations).
const TOL_Q8_REL: f32 = 2e-2;
/// Max abs error for transcendental kernels (ggml uses its own exp/sin/cos approximations).
const TOL_TRANSCENDENTAL: f32 = 1e-4;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Builds tensors of `shapes` in a CPU buffer with the given data, runs `build` on them and
/// returns the output values.
fn run(inputs: &[(Type, Vec<i64>, Vec<u8>)], build: impl FnOnce(&Context, &[Tensor]) -> Tensor) -> Vec<f32> {
    let wctx = Context::new(inputs.len(), 0).unwrap();
    let ts: Vec<Tensor> = inputs.iter().map(|(ty, ne, _)| wctx.new_tensor(*ty, ne)).collect();
    BufferType::cpu().alloc_ctx_tensors(&wctx).unwrap();
    for (t, (_, _, data)) in ts.iter().zip(inputs) {
        t.write_bytes(data).unwrap();
    }
    let gctx = Context::new(64, 64).unwrap();
    let out = build(&gctx, &ts);
    let g = Graph::new(&gctx, 64).unwrap();
    g.expand(&out);
    let backend = Device::cpu().unwrap().init_backend().unwrap();
    backend.set_n_threads(2);
    let mut sched = Sched::new(&[backend], 64, false).unwrap();
    sched.alloc(&g).unwrap();
    sched.compute(&g).unwrap();
    let mut v = vec![0f32; out.nelements() as usize];
    sched.read(&g, &out, 0, &mut v).unwrap();
    // a graph computed again gives the same bits
    sched.compute(&g).unwrap();
    let mut again = vec![0f32; v.len()];
    sched.read(&g, &out, 0, &mut again).unwrap();
    assert!(v.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "second computation differs");
    v
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn naive_matmul(w: &[f32], x: &[f32], k: usize, m: usize, n: usize) -> Vec<f32> {
    // w: m rows of k; x: n rows of k; out: n rows of m
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[j * m + i] = (0..k).map(|l| w[i * k + l] * x[j * k + l]).sum();
        }
    }
    out
}

#[test]
fn mul_mat_f32() {
    let (k, m, n) = (64, 12, 5);
    let mut r = Rng(1);
    let (w, x) = (r.vec(k * m), r.vec(k * n));
    let got = run(&[(Type::F32, vec![k as i64, m as i64], f32_bytes(&w)), (Type::F32, vec![k as i64, n as i64], f32_bytes(&x))], |c, t| {
        c.mul_mat(&t[0], &t[1])
    });
    let want = naive_matmul(&w, &x, k, m, n);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= TOL_F32, "{g} vs {w}");
    }
}

#[test]
fn mul_mat_q8_0() {
    let (k, m, n) = (256, 16, 3);
    let mut r = Rng(2);
    let (w, x) = (r.vec(k * m), r.vec(k * n));
    let wq = quantize(Type::Q8_0, &w, k).unwrap();
    let wd = dequantize(Type::Q8_0, &wq, k).unwrap();
    let got = run(&[(Type::Q8_0, vec![k as i64, m as i64], wq), (Type::F32, vec![k as i64, n as i64], f32_bytes(&x))], |c, t| {
        c.mul_mat(&t[0], &t[1])
    });
    let want = naive_matmul(&wd, &x, k, m, n);
    let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= TOL_Q8_REL * scale, "{g} vs {w}");
    }
}

#[test]
fn rms_norm() {
    let (k, n) = (48, 4);
    let eps = 1e-5;
    let x = Rng(3).vec(k * n);
    let got = run(&[(Type::F32, vec![k as i64, n as i64], f32_bytes(&x))], |c, t| c.rms_norm(&t[0], eps));
    for j in 0..n {
        let row = &x[j * k..(j + 1) * k];
        let ms = row.iter().map(|v| v * v).sum::<f32>() / k as f32;
        let s = 1.0 / (ms + eps).sqrt();
        for i in 0..k {
            assert!((got[j * k + i] - row[i] * s).abs() <= TOL_F32);
        }
    }
}

fn rope_ref(x: &[f32], d: usize, n_head: usize, pos: &[i32], base: f32, neox: bool) -> Vec<f32> {
    let mut out = x.to_vec();
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..n_head {
            let o = (t * n_head + h) * d;
            for i in 0..d / 2 {
                let theta = p as f32 * base.powf(-((2 * i) as f32) / d as f32);
                let (c, s) = (theta.cos(), theta.sin());
                let (a, b) = if neox { (o + i, o + i + d / 2) } else { (o + 2 * i, o + 2 * i + 1) };
                out[a] = x[a] * c - x[b] * s;
                out[b] = x[a] * s + x[b] * c;
            }
        }
    }
    out
}

#[test]
fn rope_normal_and_neox() {
    let (d, h, n) = (16, 2, 3);
    let x = Rng(4).vec(d * h * n);
    let pos = [0, 5, 17];
    for mode in [RopeMode::Normal, RopeMode::Neox] {
        let got =
            run(&[(Type::F32, vec![d as i64, h as i64, n as i64], f32_bytes(&x)), (Type::I32, vec![n as i64], i32_bytes(&pos))], |c, t| {
                c.rope_ext(&t[0], &t[1], None, d as i32, mode, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)
            });
        let want = rope_ref(&x, d, h, &pos, 10000.0, mode == RopeMode::Neox);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= TOL_TRANSCENDENTAL, "{mode:?}: {g} vs {w}");
        }
    }
}

#[test]
fn soft_max_ext_with_mask() {
    let (k, n) = (10, 3);
    let x = Rng(5).vec(k * n);
    let mut mask = vec![0f32; k * n];
    for j in 0..n {
        for i in (7 + j)..k {
            mask[j * k + i] = f32::NEG_INFINITY;
        }
    }
    let scale = 0.7;
    let got =
        run(&[(Type::F32, vec![k as i64, n as i64], f32_bytes(&x)), (Type::F32, vec![k as i64, n as i64], f32_bytes(&mask))], |c, t| {
            c.soft_max_ext(&t[0], Some(&t[1]), scale, 0.0)
        });
    for j in 0..n {
        let z: Vec<f32> = (0..k).map(|i| x[j * k + i] * scale + mask[j * k + i]).collect();
        let mx = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = z.iter().map(|v| (v - mx).exp()).collect();
        let s: f32 = e.iter().sum();
        for i in 0..k {
            assert!((got[j * k + i] - e[i] / s).abs() <= TOL_TRANSCENDENTAL);
        }
    }
}

#[test]
fn tensors_keep_their_context_alive() {
    let t = {
        let ctx = Context::new(1, 0).unwrap();
        ctx.new_tensor(Type::F32, &[4, 2])
    };
    // The context was dropped by name, but the tensor still holds it.
    assert_eq!(t.ne(), [4, 2, 1, 1]);
    assert!(t.read_bytes().is_err(), "an unallocated tensor has nothing to read");
}

#[test]
fn views_cannot_escape_their_source() {
    let ctx = Context::new(4, 0).unwrap();
    let a = ctx.new_tensor(Type::F32, &[8, 4]);
    let ok = ctx.view(&a, &[8, 2], &[32], 64);
    assert_eq!(ok.ne(), [8, 2, 1, 1]);
    let bad = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.view(&a, &[8, 2], &[32], 96)));
    assert!(bad.is_err());
}

#[test]
fn scheduler_refuses_stale_graphs() {
    let ctx = Context::new(8, 16).unwrap();
    let a = ctx.new_tensor(Type::F32, &[4]);
    a.set_input();
    let b = ctx.scale(&a, 2.0);
    let g = Graph::new(&ctx, 16).unwrap();
    g.expand(&b);
    let backend = Device::cpu().unwrap().init_backend().unwrap();
    let mut sched = Sched::new(&[backend], 16, false).unwrap();
    assert!(sched.set_input(&g, &a, &[1f32, 2., 3., 4.]).is_err(), "not allocated yet");
    sched.alloc(&g).unwrap();
    sched.set_input(&g, &a, &[1f32, 2., 3., 4.]).unwrap();
    sched.compute(&g).unwrap();
    let mut out = [0f32; 4];
    sched.read(&g, &b, 0, &mut out).unwrap();
    assert_eq!(out, [2., 4., 6., 8.]);
    let ctx2 = Context::new(8, 16).unwrap();
    let c = ctx2.new_tensor(Type::F32, &[4]);
    c.set_input();
    let g2 = Graph::new(&ctx2, 16).unwrap();
    g2.expand(&ctx2.scale(&c, 1.0));
    sched.alloc(&g2).unwrap();
    assert!(sched.read(&g, &b, 0, &mut out).is_err(), "the first graph's buffers were reused");
}

#[test]
fn type_table() {
    assert_eq!(Type::from_id(2), Some(Type::Q4_0));
    assert_eq!(Type::from_id(4), None, "Q4_2 was removed from ggml");
    assert_eq!(Type::from_id(9999), None);
    assert_eq!(Type::Q4_K.block_size(), 256);
    assert_eq!(Type::from_name("q8_0"), Some(Type::Q8_0));
}

/// ferrite's tiled kernel gives exactly the bits of ggml's mul_mat for each weight type it takes,
/// for tile tails in both directions (m not a multiple of 4, n from 1 to past a whole tile) and
/// more threads than tiles.
#[test]
fn mul_mat_w_matches_ggml_bit_for_bit() {
    let k = 576;
    for ty in [Type::Q4_1, Type::Q5_1, Type::Q5_0, Type::Q8_0] {
        // Q5_0 goes through the kernel for a single column only, Q8_0 for 2 to 16.
        let shapes: &[(usize, usize, u64)] = match ty {
            Type::Q5_0 => &[(18, 1, 11), (9, 1, 13), (37, 1, 16), (64, 1, 18), (3, 1, 19)],
            Type::Q8_0 => &[(18, 2, 11), (16, 3, 12), (9, 8, 13), (20, 5, 14), (4, 7, 15), (37, 13, 16), (2, 4, 17), (64, 16, 18)],
            _ => &[
                (18, 1, 11),
                (16, 2, 12),
                (9, 3, 13),
                (20, 5, 14),
                (4, 7, 15),
                (37, 13, 16),
                (2, 4, 17),
                (64, 1, 18),
                (12, 8, 19),
                (8, 16, 20),
                (21, 11, 21),
            ],
        };
        for &(m, n, seed) in shapes {
            let mut r = Rng(seed);
            // Rows of different magnitudes and offsets so that d, m and s all vary.
            let w: Vec<f32> = (0..k * m).map(|i| r.next() * (1.0 + (i / k) as f32) + 0.3 * ((i / k) % 3) as f32).collect();
            let x: Vec<f32> = (0..k * n).map(|i| r.next() * (0.5 + (i / k) as f32 * 0.25)).collect();
            let wq = quantize(ty, &w, k).unwrap();
            let inputs = [(ty, vec![k as i64, m as i64], wq), (Type::F32, vec![k as i64, n as i64], f32_bytes(&x))];
            let own = run(&inputs, |c, t| c.mul_mat_w(&t[0], &t[1]));
            let ggml = run(&inputs, |c, t| c.mul_mat(&t[0], &t[1]));
            assert_eq!(own.len(), m * n);
            for (i, (a, b)) in own.iter().zip(&ggml).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{ty:?} m={m} n={n} output {i}: {a} vs ggml {b}");
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        assert!(crate::kernels::available(), "the tiled kernel should run on this CPU");
    }
}

/// The custom node is used (not a silent fallback to ggml's mul_mat) where the kernel applies.
#[test]
fn mul_mat_w_builds_the_custom_node_where_it_applies() {
    if !crate::kernels::available() {
        return;
    }
    let wctx = Context::new(7, 0).unwrap();
    let w = wctx.new_tensor(Type::Q4_1, &[64, 8]);
    let w51 = wctx.new_tensor(Type::Q5_1, &[64, 8]);
    let w5 = wctx.new_tensor(Type::Q5_0, &[64, 8]);
    let w8 = wctx.new_tensor(Type::Q8_0, &[64, 8]);
    let wf = wctx.new_tensor(Type::F32, &[64, 8]);
    let x = wctx.new_tensor(Type::F32, &[64, 3]);
    let x1 = wctx.new_tensor(Type::F32, &[64, 1]);
    let g = Context::new(16, 0).unwrap();
    // Not yet in memory: ggml's mul_mat.
    assert_eq!(g.mul_mat_w(&w, &x).op_name(), "MUL_MAT");
    BufferType::cpu().alloc_ctx_tensors(&wctx).unwrap();
    assert_eq!(g.mul_mat_w(&w, &x).op_name(), "CUSTOM");
    assert_eq!(g.mul_mat_w(&w, &x1).op_name(), "CUSTOM");
    assert_eq!(g.mul_mat_w(&w51, &x).op_name(), "CUSTOM");
    assert_eq!(g.mul_mat_w(&w5, &x1).op_name(), "CUSTOM");
    assert_eq!(g.mul_mat_w(&w5, &x).op_name(), "MUL_MAT");
    assert_eq!(g.mul_mat_w(&w8, &x1).op_name(), "MUL_MAT");
    assert_eq!(g.mul_mat_w(&w8, &x).op_name(), "CUSTOM");
    assert_eq!(g.mul_mat_w(&wf, &x).op_name(), "MUL_MAT");
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    let mut h = vec![0u16; v.len()];
    fp32_to_fp16_row(v, &mut h);
    h.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// ferrite's flash attention gives ggml's bits where it applies: 64-value heads, query heads
/// grouped over K/V heads (1, 3 and 8 per group), several planes, masks with holes, new maxima
/// late in the cells; and it is a custom node exactly where it applies.
#[test]
fn flash_attn_w_matches_ggml_bit_for_bit() {
    if !crate::flash_attn::available() {
        return;
    }
    let d = 64i64;
    // (n_q, n_head, n_head_kv, n_kv, planes, seed)
    let cases = [
        (1, 9, 3, 256, 1, 1u64),
        (1, 9, 3, 37, 4, 2),
        (3, 8, 1, 300, 2, 3),
        (1, 4, 4, 511, 1, 4),
        (2, 6, 2, 700, 1, 5),
        (1, 9, 3, 600, 3, 6),
        (1, 9, 3, 512, 1, 7),
        (1, 9, 3, 1500, 1, 8),
        (1, 8, 2, 777, 1, 9),
    ];
    for (n_q, n_head, n_head_kv, n_kv, planes, seed) in cases {
        let mut r = Rng(seed);
        // queries stored [d, n_head, n_q, planes] and K/V [d, n_head_kv, n_kv, planes], viewed
        // permuted as the graph does
        let q: Vec<f32> = r.vec((d * n_head * n_q * planes) as usize).iter().map(|x| 3.0 * x).collect();
        let k: Vec<f32> = r.vec((d * n_head_kv * n_kv * planes) as usize).iter().map(|x| 2.0 * x).collect();
        let v = r.vec((d * n_head_kv * n_kv * planes) as usize);
        let n_q_pad = n_q.max(1);
        let mut mask = vec![0f32; (n_kv * n_q_pad * planes) as usize];
        for (i, m) in mask.iter_mut().enumerate() {
            let (c, row) = (i as i64 % n_kv, i as i64 / n_kv);
            // holes, and each row's tail past its own end masked (as a shorter stream's)
            if r.next() > 0.7 || c >= n_kv - (row % 3) * 11 {
                *m = f32::NEG_INFINITY;
            }
        }
        let inputs = [
            (Type::F32, vec![d, n_head, n_q, planes], f32_bytes(&q)),
            (Type::F16, vec![d, n_head_kv, n_kv, planes], f16_bytes(&k)),
            (Type::F16, vec![d, n_head_kv, n_kv, planes], f16_bytes(&v)),
            (Type::F16, vec![n_kv, n_q_pad, 1, planes], f16_bytes(&mask)),
        ];
        let scale = 0.125f32;
        let build = |own: bool| {
            move |c: &Context, t: &[Tensor]| {
                let q = c.permute(&t[0], [0, 2, 1, 3]);
                let k = c.permute(&t[1], [0, 2, 1, 3]);
                let v = c.permute(&t[2], [0, 2, 1, 3]);
                let out = if own {
                    c.flash_attn_w(&q, &k, &v, &t[3], scale, 0.0, 2)
                } else {
                    let o = c.flash_attn_ext(&q, &k, &v, Some(&t[3]), scale, 0.0, 0.0);
                    o.set_prec(Prec::F32);
                    o
                };
                if own {
                    assert_eq!(out.op_name(), "CUSTOM", "n_q={n_q} n_kv={n_kv} planes={planes}");
                }
                out
            }
        };
        let own = run(&inputs, build(true));
        let ggml = run(&inputs, build(false));
        assert_eq!(own.len(), ggml.len());
        for (i, (a, b)) in own.iter().zip(&ggml).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "n_q={n_q} heads={n_head}/{n_head_kv} n_kv={n_kv} planes={planes} output {i}: {a} vs ggml {b}"
            );
        }
    }
}
