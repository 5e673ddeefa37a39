//! RAII ggml contexts, tensor handles that keep their context alive, and the graph operations.

use crate::backend::Buffer;
use crate::types::{Prec, RopeMode, Type};
use crate::{err, sys, Result};
use std::cell::RefCell;
use std::ffi::CString;
use std::fmt;
use std::os::raw::{c_int, c_void};
use std::ptr::NonNull;
use std::rc::Rc;

pub(crate) struct CtxInner {
    pub(crate) ptr: NonNull<sys::ggml_context>,
    /// Contexts whose tensors are sources of tensors in this one.
    deps: RefCell<Vec<Rc<CtxInner>>>,
    /// Buffers holding the data of this context's tensors (weights, KV cache).
    pub(crate) buffers: RefCell<Vec<Buffer>>,
    /// Keeps scheduler state alive for graphs it allocated (see `Sched`).
    pub(crate) keep: RefCell<Vec<Rc<dyn std::any::Any>>>,
}

impl Drop for CtxInner {
    fn drop(&mut self) {
        // SAFETY: the context was created by ggml_init and is freed exactly once; every tensor
        // handle into it holds an Rc to this inner value, so none is left.
        unsafe { sys::ggml_free(self.ptr.as_ptr()) }
    }
}

/// A ggml context: metadata arena for tensors (never their data: contexts are `no_alloc`).
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Rc<CtxInner>,
}

/// A tensor handle. Cloning it is cheap; it keeps its context (and so its data) alive.
#[derive(Clone)]
pub struct Tensor {
    ctx: Rc<CtxInner>,
    ptr: NonNull<sys::ggml_tensor>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} {:?} {:?})", self.name(), self.ty(), self.ne())
    }
}

impl Context {
    /// A context with room for the metadata of `n_tensors` tensors and, if `graph_size` > 0,
    /// one graph of that many nodes.
    pub fn new(n_tensors: usize, graph_size: usize) -> Result<Context> {
        crate::init();
        // SAFETY: pure size computations.
        let mem = unsafe {
            n_tensors * sys::ggml_tensor_overhead() + if graph_size > 0 { sys::ggml_graph_overhead_custom(graph_size, false) } else { 0 }
        };
        let params = sys::ggml_init_params { mem_size: mem, mem_buffer: std::ptr::null_mut(), no_alloc: true };
        // SAFETY: ggml_init allocates its own arena (mem_buffer is null); it returns null on failure.
        let ptr = unsafe { sys::ggml_init(params) };
        let ptr = NonNull::new(ptr).ok_or_else(|| crate::Error("ggml_init failed (out of memory)".into()))?;
        Ok(Context {
            inner: Rc::new(CtxInner {
                ptr,
                deps: RefCell::new(Vec::new()),
                buffers: RefCell::new(Vec::new()),
                keep: RefCell::new(Vec::new()),
            }),
        })
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_context {
        self.inner.ptr.as_ptr()
    }

    /// Bytes of metadata arena left.
    pub fn mem_left(&self) -> usize {
        // SAFETY: the context is live.
        unsafe { sys::ggml_get_mem_size(self.raw()) - sys::ggml_used_mem(self.raw()) }
    }

    fn ensure_room(&self) {
        // SAFETY: pure size query.
        let need = unsafe { sys::ggml_tensor_overhead() };
        // Running out is a sizing bug in ferrite, never an input condition; ggml would abort.
        assert!(self.mem_left() >= need, "ggml context arena exhausted (sizing bug)");
    }

    /// Records that tensors of this context use `t` (of possibly another context) as a source.
    fn adopt(&self, t: &Tensor) -> *mut sys::ggml_tensor {
        if !Rc::ptr_eq(&self.inner, &t.ctx) {
            let mut deps = self.inner.deps.borrow_mut();
            if !deps.iter().any(|d| Rc::ptr_eq(d, &t.ctx)) {
                deps.push(t.ctx.clone());
            }
        }
        t.ptr.as_ptr()
    }

    pub(crate) fn adopt_pub(&self, t: &Tensor) -> *mut sys::ggml_tensor {
        self.adopt(t)
    }

    pub(crate) fn same(&self, t: &Tensor) -> bool {
        Rc::ptr_eq(&self.inner, &t.ctx)
    }

    fn wrap(&self, p: *mut sys::ggml_tensor) -> Tensor {
        let ptr = NonNull::new(p).expect("ggml returned a null tensor");
        Tensor { ctx: self.inner.clone(), ptr }
    }

    /// Keeps `buf` alive as long as this context; tensors of this context may live in it.
    pub fn attach_buffer(&self, buf: &Buffer) {
        let mut bufs = self.inner.buffers.borrow_mut();
        if !bufs.iter().any(|b| b.raw() == buf.raw()) {
            bufs.push(buf.clone());
        }
    }

    pub(crate) fn keep_alive(&self, x: Rc<dyn std::any::Any>) {
        self.inner.keep.borrow_mut().push(x);
    }

    /// Iterates the tensors of this context in creation order.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        // SAFETY: walking the context's own tensor list.
        let mut p = unsafe { sys::ggml_get_first_tensor(self.raw()) };
        while let Some(t) = NonNull::new(p) {
            out.push(Tensor { ctx: self.inner.clone(), ptr: t });
            // SAFETY: `t` belongs to this live context.
            p = unsafe { sys::ggml_get_next_tensor(self.raw(), t.as_ptr()) };
        }
        out
    }

    // ---- tensor creation -------------------------------------------------------------------

    /// A new tensor of type `ty` and shape `ne` (ggml order, 1 to 4 dims, each ≥ 0; an empty
    /// tensor is valid, e.g. a micro-batch that produces no outputs).
    pub fn new_tensor(&self, ty: Type, ne: &[i64]) -> Tensor {
        assert!((1..=4).contains(&ne.len()), "a tensor has 1 to 4 dimensions");
        assert!(ne.iter().all(|&n| n >= 0), "tensor dimensions must not be negative: {ne:?}");
        assert!(ne[0] % ty.block_size() == 0, "ne[0] = {} is not a multiple of {}'s block size", ne[0], ty.name());
        self.ensure_room();
        // SAFETY: dims are validated above; the context has room for the metadata.
        let p = unsafe { sys::ggml_new_tensor(self.raw(), ty.0, ne.len() as i32, ne.as_ptr()) };
        self.wrap(p)
    }

    // ---- views and shape ops ---------------------------------------------------------------

    /// A view of `a` with shape `ne`, byte strides `nb[1..]` and byte offset `offset`.
    /// Panics if the view would reach outside `a`'s data.
    pub fn view(&self, a: &Tensor, ne: &[i64], nb: &[usize], offset: usize) -> Tensor {
        assert!((1..=4).contains(&ne.len()) && nb.len() + 1 == ne.len(), "view: bad rank");
        assert!(ne.iter().all(|&n| n >= 1), "view: dimensions must be positive");
        let ty = a.ty();
        assert!(ne[0] % ty.block_size() == 0, "view: ne[0] not a multiple of the block size");
        let mut last = offset + ty.row_size(ne[0]);
        for (i, &n) in ne.iter().enumerate().skip(1) {
            last += (n as usize - 1) * nb[i - 1];
        }
        assert!(last <= a.nbytes(), "view reaches outside its source ({last} > {} bytes)", a.nbytes());
        self.ensure_room();
        let src = self.adopt(a);
        // SAFETY: the view stays within the source tensor's data (checked above).
        let p = unsafe {
            match ne.len() {
                1 => sys::ggml_view_1d(self.raw(), src, ne[0], offset),
                2 => sys::ggml_view_2d(self.raw(), src, ne[0], ne[1], nb[0], offset),
                3 => sys::ggml_view_3d(self.raw(), src, ne[0], ne[1], ne[2], nb[0], nb[1], offset),
                _ => sys::ggml_view_4d(self.raw(), src, ne[0], ne[1], ne[2], ne[3], nb[0], nb[1], nb[2], offset),
            }
        };
        self.wrap(p)
    }

    /// `a` with a new shape of the same element count (a must be contiguous).
    pub fn reshape(&self, a: &Tensor, ne: &[i64]) -> Tensor {
        assert!((1..=4).contains(&ne.len()), "reshape: bad rank");
        assert_eq!(ne.iter().product::<i64>(), a.nelements(), "reshape: element count differs");
        assert!(a.is_contiguous(), "reshape: source is not contiguous");
        self.ensure_room();
        let src = self.adopt(a);
        // SAFETY: element counts match and the source is contiguous (ggml's preconditions).
        let p = unsafe {
            match ne.len() {
                1 => sys::ggml_reshape_1d(self.raw(), src, ne[0]),
                2 => sys::ggml_reshape_2d(self.raw(), src, ne[0], ne[1]),
                3 => sys::ggml_reshape_3d(self.raw(), src, ne[0], ne[1], ne[2]),
                _ => sys::ggml_reshape_4d(self.raw(), src, ne[0], ne[1], ne[2], ne[3]),
            }
        };
        self.wrap(p)
    }

    pub fn permute(&self, a: &Tensor, axes: [i32; 4]) -> Tensor {
        let mut seen = [false; 4];
        for &x in &axes {
            assert!((0..4).contains(&x) && !seen[x as usize], "permute: axes must be a permutation of 0..4");
            seen[x as usize] = true;
        }
        self.ensure_room();
        let src = self.adopt(a);
        // SAFETY: axes form a permutation (checked).
        self.wrap(unsafe { sys::ggml_permute(self.raw(), src, axes[0], axes[1], axes[2], axes[3]) })
    }

    pub fn transpose(&self, a: &Tensor) -> Tensor {
        self.ensure_room();
        let src = self.adopt(a);
        // SAFETY: transpose is valid for any tensor.
        self.wrap(unsafe { sys::ggml_transpose(self.raw(), src) })
    }

    pub fn cont(&self, a: &Tensor) -> Tensor {
        self.unary(a, sys::ggml_cont)
    }

    /// A contiguous copy of `a` with shape `ne` (same element count).
    pub fn cont_shape(&self, a: &Tensor, ne: &[i64]) -> Tensor {
        assert_eq!(ne.iter().product::<i64>(), a.nelements(), "cont_shape: element count differs");
        self.ensure_room();
        let src = self.adopt(a);
        // SAFETY: element counts match (checked).
        let p = unsafe {
            match ne.len() {
                1 => sys::ggml_cont_1d(self.raw(), src, ne[0]),
                2 => sys::ggml_cont_2d(self.raw(), src, ne[0], ne[1]),
                3 => sys::ggml_cont_3d(self.raw(), src, ne[0], ne[1], ne[2]),
                4 => sys::ggml_cont_4d(self.raw(), src, ne[0], ne[1], ne[2], ne[3]),
                _ => panic!("cont_shape: bad rank"),
            }
        };
        self.wrap(p)
    }

    /// `a` converted to type `ty`.
    pub fn cast(&self, a: &Tensor, ty: Type) -> Tensor {
        self.ensure_room();
        let src = self.adopt(a);
        // SAFETY: ggml_cast creates a copy node of the same shape.
        self.wrap(unsafe { sys::ggml_cast(self.raw(), src, ty.0) })
    }

    /// Copies `a` into `b` (same element count); returns the node that performs the copy.
    pub fn cpy(&self, a: &Tensor, b: &Tensor) -> Tensor {
        assert_eq!(a.nelements(), b.nelements(), "cpy: element count differs");
        self.binary(a, b, sys::ggml_cpy)
    }

    pub fn dup(&self, a: &Tensor) -> Tensor {
        self.unary(a, sys::ggml_dup)
    }

    pub fn concat(&self, a: &Tensor, b: &Tensor, dim: i32) -> Tensor {
        assert!((0..4).contains(&dim), "concat: bad dim");
        for d in 0..4 {
            if d != dim as usize {
                assert_eq!(a.ne()[d], b.ne()[d], "concat: shapes differ outside dim {dim}");
            }
        }
        self.ensure_room();
        let (pa, pb) = (self.adopt(a), self.adopt(b));
        // SAFETY: shapes agree outside `dim` (checked).
        self.wrap(unsafe { sys::ggml_concat(self.raw(), pa, pb, dim) })
    }

    pub fn repeat_4d(&self, a: &Tensor, ne: [i64; 4]) -> Tensor {
        let an = a.ne();
        for d in 0..4 {
            assert!(ne[d] >= 1 && ne[d] % an[d] == 0, "repeat_4d: target shape is not a multiple");
        }
        self.ensure_room();
        let pa = self.adopt(a);
        // SAFETY: target dims are multiples of the source dims (checked).
        self.wrap(unsafe { sys::ggml_repeat_4d(self.raw(), pa, ne[0], ne[1], ne[2], ne[3]) })
    }

    /// Zero-pads `a` by `p` elements at the end of each dimension.
    pub fn pad(&self, a: &Tensor, p: [i32; 4]) -> Tensor {
        assert!(p.iter().all(|&x| x >= 0), "pad: negative padding");
        self.ensure_room();
        let pa = self.adopt(a);
        // SAFETY: non-negative padding.
        self.wrap(unsafe { sys::ggml_pad(self.raw(), pa, p[0], p[1], p[2], p[3]) })
    }

    // ---- arithmetic ------------------------------------------------------------------------

    fn unary(&self, a: &Tensor, f: unsafe extern "C" fn(*mut sys::ggml_context, *mut sys::ggml_tensor) -> *mut sys::ggml_tensor) -> Tensor {
        self.ensure_room();
        let pa = self.adopt(a);
        // SAFETY: element-wise unary ops accept any tensor.
        self.wrap(unsafe { f(self.raw(), pa) })
    }

    fn binary(
        &self,
        a: &Tensor,
        b: &Tensor,
        f: unsafe extern "C" fn(*mut sys::ggml_context, *mut sys::ggml_tensor, *mut sys::ggml_tensor) -> *mut sys::ggml_tensor,
    ) -> Tensor {
        self.ensure_room();
        let (pa, pb) = (self.adopt(a), self.adopt(b));
        // SAFETY: callers check the shape preconditions of `f`.
        self.wrap(unsafe { f(self.raw(), pa, pb) })
    }

    /// ggml's `ggml_can_repeat(b, a)`: an empty `b` (a dimension of 0, as the rows kept by
    /// `get_rows` for a micro-batch with no outputs) repeats only to an empty `a`.
    fn check_broadcast(a: &Tensor, b: &Tensor, what: &str) {
        let (an, bn) = (a.ne(), b.ne());
        let ok = if bn.contains(&0) { an.contains(&0) } else { (0..4).all(|d| an[d] % bn[d] == 0) };
        assert!(ok, "{what}: {bn:?} does not broadcast to {an:?}");
    }

    /// a + b, with b broadcast over a.
    pub fn add(&self, a: &Tensor, b: &Tensor) -> Tensor {
        Self::check_broadcast(a, b, "add");
        self.binary(a, b, sys::ggml_add)
    }

    /// a * b element-wise, with b broadcast over a.
    pub fn mul(&self, a: &Tensor, b: &Tensor) -> Tensor {
        Self::check_broadcast(a, b, "mul");
        self.binary(a, b, sys::ggml_mul)
    }

    /// a / b element-wise, with b broadcast over a.
    pub fn div(&self, a: &Tensor, b: &Tensor) -> Tensor {
        Self::check_broadcast(a, b, "div");
        self.binary(a, b, sys::ggml_div)
    }

    pub fn scale(&self, a: &Tensor, s: f32) -> Tensor {
        self.ensure_room();
        let pa = self.adopt(a);
        // SAFETY: scale accepts any float tensor.
        self.wrap(unsafe { sys::ggml_scale(self.raw(), pa, s) })
    }

    pub fn clamp(&self, a: &Tensor, min: f32, max: f32) -> Tensor {
        self.ensure_room();
        let pa = self.adopt(a);
        // SAFETY: clamp accepts any float tensor.
        self.wrap(unsafe { sys::ggml_clamp(self.raw(), pa, min, max) })
    }

    pub fn silu(&self, a: &Tensor) -> Tensor {
        self.unary(a, sys::ggml_silu)
    }

    pub fn gelu(&self, a: &Tensor) -> Tensor {
        self.unary(a, sys::ggml_gelu)
    }

    pub fn tanh(&self, a: &Tensor) -> Tensor {
        self.unary(a, sys::ggml_tanh)
    }

    pub fn sigmoid(&self, a: &Tensor) -> Tensor {
        self.unary(a, sys::ggml_sigmoid)
    }

    pub fn sum_rows(&self, a: &Tensor) -> Tensor {
        self.unary(a, sys::ggml_sum_rows)
    }

    /// silu(a) * b (SwiGLU with separate gate and up projections).
    pub fn swiglu_split(&self, a: &Tensor, b: &Tensor) -> Tensor {
        assert_eq!(a.ne(), b.ne(), "swiglu_split: shapes differ");
        self.binary(a, b, sys::ggml_swiglu_split)
    }

    /// silu(first half of each row) * second half (SwiGLU over a fused [gate|up] projection).
    pub fn swiglu(&self, a: &Tensor) -> Tensor {
        assert!(a.ne()[0] % 2 == 0, "swiglu: row length must be even");
        self.unary(a, sys::ggml_swiglu)
    }

    /// gelu(first half of each row) * second half (GeGLU over a fused [gate|up] projection).
    pub fn geglu(&self, a: &Tensor) -> Tensor {
        assert!(a.ne()[0] % 2 == 0, "geglu: row length must be even");
        self.unary(a, sys::ggml_geglu)
    }

    /// gelu(a) * b (GeGLU with separate gate and up projections).
    pub fn geglu_split(&self, a: &Tensor, b: &Tensor) -> Tensor {
        assert_eq!(a.ne(), b.ne(), "geglu_split: shapes differ");
        self.binary(a, b, sys::ggml_geglu_split)
    }

    /// RMS-normalises each row of `a`.
    pub fn rms_norm(&self, a: &Tensor, eps: f32) -> Tensor {
        self.ensure_room();
        let pa = self.adopt(a);
        // SAFETY: rms_norm accepts any F32 tensor.
        self.wrap(unsafe { sys::ggml_rms_norm(self.raw(), pa, eps) })
    }

    /// Layer-normalises each row of `a` (no affine part).
    pub fn norm(&self, a: &Tensor, eps: f32) -> Tensor {
        self.ensure_room();
        let pa = self.adopt(a);
        // SAFETY: norm accepts any F32 tensor.
        self.wrap(unsafe { sys::ggml_norm(self.raw(), pa, eps) })
    }

    /// Rows of `a` selected by the I32 indices `ids`.
    pub fn get_rows(&self, a: &Tensor, ids: &Tensor) -> Tensor {
        assert_eq!(ids.ty(), Type::I32, "get_rows: indices must be I32");
        assert_eq!(a.ne()[2], ids.ne()[1], "get_rows: batch dims differ");
        self.binary(a, ids, sys::ggml_get_rows)
    }

    /// Writes the rows of `b` into `a` at the I64 row indices `ids`; returns the updated `a`.
    pub fn set_rows(&self, a: &Tensor, b: &Tensor, ids: &Tensor) -> Tensor {
        assert_eq!(a.ne()[0], b.ne()[0], "set_rows: row lengths differ");
        assert!(matches!(ids.ty(), Type::I64 | Type::I32), "set_rows: indices must be I64 or I32");
        assert_eq!(b.ne()[1], ids.ne()[0], "set_rows: one index per row");
        self.ensure_room();
        let (pa, pb, pc) = (self.adopt(a), self.adopt(b), self.adopt(ids));
        // SAFETY: shapes checked above; ggml bounds-checks the indices at compute time.
        self.wrap(unsafe { sys::ggml_set_rows(self.raw(), pa, pb, pc) })
    }

    /// a^T · b: `a` is [k, m, ...] (the weight), `b` is [k, n, ...]; the result is [m, n, ...].
    pub fn mul_mat(&self, a: &Tensor, b: &Tensor) -> Tensor {
        let (an, bn) = (a.ne(), b.ne());
        assert_eq!(an[0], bn[0], "mul_mat: inner dimensions differ ({an:?} x {bn:?})");
        assert!(bn[2] % an[2] == 0 && bn[3] % an[3] == 0, "mul_mat: batch dims do not broadcast");
        assert!(!a.is_transposed(), "mul_mat: a must not be transposed");
        self.binary(a, b, sys::ggml_mul_mat)
    }

    /// `mul_mat` of a weight by activations, through ferrite's own tiled kernel where it applies
    /// (Q4_1 or Q5_1 weights, or Q5_0 for a single column, in host memory; F32 activations; an
    /// x86 CPU with AVX2, FMA and F16C): ggml's own copy quantizes the activations to the type
    /// mul_mat would quantize them to, then `kernels` computes every output with ggml's
    /// arithmetic, so the bits are the same.
    pub fn mul_mat_w(&self, a: &Tensor, b: &Tensor) -> Tensor {
        let (an, bn) = (a.ne(), b.ne());
        let act = crate::kernels::activation_type(a.ty().0, bn[1] * bn[2] * bn[3]);
        let applies = act.is_some()
            && an[0] == bn[0]
            && an[0] % 32 == 0
            && an[2] == 1
            && an[3] == 1
            && a.is_host_data()
            && b.ty() == Type::F32
            && b.is_contiguous()
            && crate::kernels::available();
        let Some(act) = act.filter(|_| applies) else {
            return self.mul_mat(a, b);
        };
        // [k, n, ...] in Q8_1 or Q8_0
        let xq = self.cast(b, Type(act));
        // SAFETY: the custom node reads its two sources (checked above: rows of whole blocks of a
        // type the kernel handles, activations contiguous of the same k in that type's activation
        // type) and writes its own F32 [m, n...] result.
        unsafe { self.custom_f32([an[1], bn[1], bn[2], bn[3]], &[a, &xq], crate::kernels::mul_mat_op, std::ptr::null_mut()) }
    }

    /// A custom node computed by `op` on every thread (GGML_N_TASKS_MAX): F32 of shape `ne`
    /// over `srcs`, with `user` passed to `op` (ggml copies the argument list into the node).
    ///
    /// # Safety
    /// `op` reads only `srcs`, within the shapes and types they have, writes only its own F32
    /// result of shape `ne`, and takes `user` as given.
    unsafe fn custom_f32(
        &self,
        ne: [i64; 4],
        srcs: &[&Tensor],
        op: unsafe extern "C" fn(*mut sys::ggml_tensor, c_int, c_int, *mut c_void),
        user: *mut c_void,
    ) -> Tensor {
        self.ensure_room();
        let mut args: Vec<*mut sys::ggml_tensor> = srcs.iter().map(|t| self.adopt(t)).collect();
        // SAFETY: the caller's contract on `op`; the argument list lives through the call.
        self.wrap(unsafe {
            sys::ggml_custom_4d(
                self.raw(),
                sys::GGML_TYPE_F32,
                ne[0],
                ne[1],
                ne[2],
                ne[3],
                args.as_mut_ptr(),
                args.len() as c_int,
                Some(op),
                -1,
                user,
            )
        })
    }

    /// Per-token expert matrix products: `as_` is [k, m, n_expert], `b` [k, n_used|1, n_tokens],
    /// `ids` I32 [n_used, n_tokens].
    pub fn mul_mat_id(&self, as_: &Tensor, b: &Tensor, ids: &Tensor) -> Tensor {
        assert_eq!(ids.ty(), Type::I32, "mul_mat_id: ids must be I32");
        assert_eq!(as_.ne()[0], b.ne()[0], "mul_mat_id: inner dimensions differ");
        assert_eq!(b.ne()[2], ids.ne()[1], "mul_mat_id: token counts differ");
        assert!(b.ne()[1] == 1 || b.ne()[1] == ids.ne()[0], "mul_mat_id: b rows must be 1 or n_used");
        self.ensure_room();
        let (pa, pb, pc) = (self.adopt(as_), self.adopt(b), self.adopt(ids));
        // SAFETY: shapes checked above; ggml bounds-checks expert ids at compute time.
        self.wrap(unsafe { sys::ggml_mul_mat_id(self.raw(), pa, pb, pc) })
    }

    /// Rotary position embedding over the first `n_dims` of each head.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_ext(
        &self,
        a: &Tensor,
        pos: &Tensor,
        freq_factors: Option<&Tensor>,
        n_dims: i32,
        mode: RopeMode,
        n_ctx_orig: i32,
        freq_base: f32,
        freq_scale: f32,
        ext_factor: f32,
        attn_factor: f32,
        beta_fast: f32,
        beta_slow: f32,
    ) -> Tensor {
        assert_eq!(pos.ty(), Type::I32, "rope: positions must be I32");
        assert_eq!(pos.ne()[0], a.ne()[2], "rope: one position per token");
        assert!(n_dims > 0 && n_dims as i64 <= a.ne()[0] && n_dims % 2 == 0, "rope: bad n_dims");
        if let Some(f) = freq_factors {
            assert!(f.ne()[0] >= n_dims as i64 / 2, "rope: too few frequency factors");
        }
        self.ensure_room();
        let (pa, pb) = (self.adopt(a), self.adopt(pos));
        let pc = freq_factors.map(|f| self.adopt(f)).unwrap_or(std::ptr::null_mut());
        // SAFETY: shapes checked above.
        self.wrap(unsafe {
            sys::ggml_rope_ext(
                self.raw(),
                pa,
                pb,
                pc,
                n_dims,
                mode.raw(),
                n_ctx_orig,
                freq_base,
                freq_scale,
                ext_factor,
                attn_factor,
                beta_fast,
                beta_slow,
            )
        })
    }

    /// softmax(a * scale + mask) over rows (ALiBi when `max_bias` > 0).
    pub fn soft_max_ext(&self, a: &Tensor, mask: Option<&Tensor>, scale: f32, max_bias: f32) -> Tensor {
        if let Some(m) = mask {
            assert!(matches!(m.ty(), Type::F16 | Type::F32), "soft_max: mask must be F16 or F32");
            assert_eq!(m.ne()[0], a.ne()[0], "soft_max: mask row length differs");
            assert!(m.ne()[1] >= a.ne()[1], "soft_max: mask has too few rows");
        }
        self.ensure_room();
        let pa = self.adopt(a);
        let pm = mask.map(|m| self.adopt(m)).unwrap_or(std::ptr::null_mut());
        // SAFETY: shapes checked above.
        self.wrap(unsafe { sys::ggml_soft_max_ext(self.raw(), pa, pm, scale, max_bias) })
    }

    /// Fused attention: q [d, n_tokens, n_head], k [d, n_kv, n_head_kv], v [dv, n_kv, n_head_kv],
    /// mask F16 [n_kv, n_tokens]; result [dv, n_head, n_tokens].
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attn_ext(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f32,
        max_bias: f32,
        logit_softcap: f32,
    ) -> Tensor {
        assert_eq!(q.ne()[0], k.ne()[0], "flash_attn: q and k head sizes differ");
        assert_eq!(k.ne()[1], v.ne()[1], "flash_attn: k and v lengths differ");
        assert!(q.ne()[2] % k.ne()[2] == 0, "flash_attn: heads do not group");
        if let Some(m) = mask {
            assert_eq!(m.ty(), Type::F16, "flash_attn: mask must be F16");
            assert_eq!(m.ne()[0], k.ne()[1], "flash_attn: mask length differs from n_kv");
            assert!(m.ne()[1] >= q.ne()[1], "flash_attn: mask has too few rows");
        }
        self.ensure_room();
        let (pq, pk, pv) = (self.adopt(q), self.adopt(k), self.adopt(v));
        let pm = mask.map(|m| self.adopt(m)).unwrap_or(std::ptr::null_mut());
        // SAFETY: shapes checked above.
        self.wrap(unsafe { sys::ggml_flash_attn_ext(self.raw(), pq, pk, pv, pm, scale, max_bias, logit_softcap) })
    }

    /// ggml's `flash_attn_ext` as llama.cpp's graphs use it: F32 precision, no n_kv limit, no
    /// ALiBi. Result F32 [head_v, n_head, n_q, planes].
    pub fn flash_attn_f32(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f32, logit_softcap: f32) -> Tensor {
        let cur = self.flash_attn_ext(q, k, v, Some(mask), scale, 0.0, logit_softcap);
        cur.set_flash_attn_n_kv_max(0);
        cur.set_prec(Prec::F32);
        cur
    }

    /// Flash attention as the graph uses it (ggml's `flash_attn_ext` with F32 precision and no
    /// n_kv limit), through ferrite's own kernel where it gives ggml's bits faster (see
    /// `flash_attn.rs`: F32 q over F16 K/V of 64-value heads, a mask, no softcap, fewer than 64
    /// queries a plane). One query over 512 cells or more is ggml's split-cells path, in as many
    /// chunks as `n_threads`, the threads the graph will be computed with.
    /// Result F32 [head_v, n_head, n_q, planes].
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attn_w(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        scale: f32,
        logit_softcap: f32,
        n_threads: usize,
    ) -> Tensor {
        let (qn, kn, vn, mn) = (q.ne(), k.ne(), v.ne(), mask.ne());
        let n_kv = kn[1];
        // K and V in host memory: a cache on another device runs ggml's operation there
        let applies = crate::flash_attn::available()
            && k.data_is_host()
            && v.data_is_host()
            && q.ty() == Type::F32
            && k.ty() == Type::F16
            && v.ty() == Type::F16
            && mask.ty() == Type::F16
            && logit_softcap == 0.0
            && qn[0] == crate::flash_attn::HEAD
            && kn[0] == qn[0]
            && vn[0] == qn[0]
            && vn[1] == n_kv
            && vn[2] == kn[2]
            && kn[2] > 0
            && qn[2] % kn[2] == 0
            && kn[3] == qn[3]
            && vn[3] == qn[3]
            && mn[0] == n_kv
            && mn[1] >= qn[1]
            && mn[2] == 1
            && qn[3] % mn[3] == 0
            && qn[1] < 64
            && q.nb()[0] == 4
            && k.nb()[0] == 2
            && v.nb()[0] == 2
            && mask.nb()[0] == 2;
        if !applies {
            return self.flash_attn_f32(q, k, v, mask, scale, logit_softcap);
        }
        let user = scale.to_bits() as usize as *mut c_void;
        let srcs = [q, k, v, mask];
        // SAFETY: (all three nodes) they read q, k, v and the mask as checked above (types,
        // 64-value contiguous rows, K/V heads that group the query heads, one K/V plane per query
        // plane, a mask row of n_kv halves per query), and the scale travels in the user
        // pointer's bits.
        unsafe {
            if qn[1] == 1 && qn[3] == 1 && n_kv >= 512 {
                // ggml's split-cells path: one chunk of cells a thread ([2 + 64, chunks, n_head]
                // partials), then their combination ([64, n_head]) from the partials alone
                let chunks = n_threads.max(1) as i64;
                let partials = self.custom_f32([2 + vn[0], chunks, qn[2], 1], &srcs, crate::flash_attn::flash_attn_partials_op, user);
                return self.custom_f32([vn[0], qn[2], 1, 1], &[&partials], crate::flash_attn::flash_attn_reduce_op, std::ptr::null_mut());
            }
            self.custom_f32([vn[0], qn[2], qn[1], qn[3]], &srcs, crate::flash_attn::flash_attn_op, user)
        }
    }

    /// Indices of the `k` largest values of each row (I32 [k, rows]), in descending order.
    pub fn argsort_top_k(&self, a: &Tensor, k: i32) -> Tensor {
        assert!(k >= 1 && k as i64 <= a.ne()[0], "argsort_top_k: bad k");
        self.ensure_room();
        let pa = self.adopt(a);
        // SAFETY: 1 <= k <= row length.
        self.wrap(unsafe { sys::ggml_argsort_top_k(self.raw(), pa, k) })
    }

    /// Softmax over rows without scale or mask.
    pub fn soft_max(&self, a: &Tensor) -> Tensor {
        self.unary(a, sys::ggml_soft_max)
    }
}

impl Tensor {
    pub(crate) fn raw(&self) -> *mut sys::ggml_tensor {
        self.ptr.as_ptr()
    }

    fn meta(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor's metadata lives in its context, which `self.ctx` keeps alive.
        unsafe { self.ptr.as_ref() }
    }

    pub fn ty(&self) -> Type {
        Type(self.meta().type_)
    }

    /// Shape in ggml order (ne[0] is the innermost, contiguous dimension).
    pub fn ne(&self) -> [i64; 4] {
        self.meta().ne
    }

    /// Byte strides.
    pub fn nb(&self) -> [usize; 4] {
        self.meta().nb
    }

    pub fn nelements(&self) -> i64 {
        self.ne().iter().product()
    }

    pub fn nbytes(&self) -> usize {
        // SAFETY: metadata read of a live tensor.
        unsafe { sys::ggml_nbytes(self.raw()) }
    }

    pub fn is_contiguous(&self) -> bool {
        // SAFETY: metadata read of a live tensor.
        unsafe { sys::ggml_is_contiguous(self.raw()) }
    }

    /// Whether the tensor's data is in host memory the CPU can read (a view: its source's).
    pub(crate) fn is_host_data(&self) -> bool {
        let buf = self.meta().buffer;
        // SAFETY: a non-null buffer of a live tensor is a live backend buffer.
        !buf.is_null() && !self.meta().data.is_null() && unsafe { sys::ggml_backend_buffer_is_host(buf) }
    }

    /// Whether the tensor's data, or its view source's, sits in host memory the CPU reads
    /// directly (a view's own buffer is set only when a graph is allocated).
    pub(crate) fn data_is_host(&self) -> bool {
        let mut t = self.raw();
        // SAFETY: a live tensor's view_src chain holds live tensors of the same or older contexts
        // (kept alive through `adopt`); the buffer of a non-null buffer field is live.
        unsafe {
            while !(*t).view_src.is_null() {
                t = (*t).view_src;
            }
            let buf = (*t).buffer;
            !buf.is_null() && !(*t).data.is_null() && sys::ggml_backend_buffer_is_host(buf)
        }
    }

    /// Whether the tensor's data sits in a buffer the CPU cannot address directly: a repacked
    /// ("extra") CPU layout or a device. There a matrix product's arithmetic per output may
    /// depend on how many columns are computed together (ggml's repacked kernels take columns
    /// four at a time through a different routine than a single one).
    pub fn is_repacked(&self) -> bool {
        let buf = self.meta().buffer;
        // SAFETY: a non-null buffer of a live tensor is a live backend buffer.
        !buf.is_null() && !unsafe { sys::ggml_backend_buffer_is_host(buf) }
    }

    /// ggml's name of the operation that computes this tensor ("NONE" for a leaf).
    pub fn op_name(&self) -> String {
        // SAFETY: ggml_op_name returns a static NUL-terminated string for any op of a live tensor.
        crate::backend::cstr(unsafe { sys::ggml_op_name(self.meta().op) })
    }

    pub fn is_view(&self) -> bool {
        !self.meta().view_src.is_null()
    }

    pub fn is_transposed(&self) -> bool {
        // SAFETY: metadata read of a live tensor.
        unsafe { sys::ggml_is_transposed(self.raw()) }
    }

    /// The context this tensor belongs to.
    pub fn context(&self) -> Context {
        Context { inner: self.ctx.clone() }
    }

    pub fn name(&self) -> String {
        let raw = &self.meta().name;
        let bytes: Vec<u8> = raw.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Sets the tensor's name (truncated to ggml's 63 bytes; interior NULs are dropped).
    pub fn set_name(&self, name: &str) -> &Self {
        let clean: Vec<u8> = name.bytes().filter(|&b| b != 0).collect();
        let c = CString::new(clean).expect("NULs removed");
        // SAFETY: ggml copies at most sizeof(name)-1 bytes of the NUL-terminated string.
        unsafe { sys::ggml_set_name(self.raw(), c.as_ptr()) };
        self
    }

    /// Marks the tensor as a graph input (the scheduler allocates it in a host-visible buffer).
    pub fn set_input(&self) -> &Self {
        // SAFETY: flag update on a live tensor.
        unsafe { sys::ggml_set_input(self.raw()) };
        self
    }

    /// Marks the tensor as a graph output (its memory is not reused by later nodes).
    pub fn set_output(&self) -> &Self {
        // SAFETY: flag update on a live tensor.
        unsafe { sys::ggml_set_output(self.raw()) };
        self
    }

    /// Asks for at least `prec` accumulation in this node (mul_mat, flash attention).
    pub fn set_prec(&self, prec: Prec) -> &Self {
        // SAFETY: op-parameter update on a live tensor; ggml ignores it where not applicable.
        unsafe { sys::ggml_prec_set_acc(self.raw(), prec.raw()) };
        self
    }

    /// Tells ggml that src0 of this mul_mat is a Walsh-Hadamard matrix (it may use a fast path).
    pub fn set_hadamard_hint(&self) -> &Self {
        assert_eq!(self.meta().op, sys::GGML_OP_MUL_MAT, "hadamard hint on a non-mul_mat node");
        // SAFETY: op-parameter update on a live mul_mat node.
        unsafe { sys::ggml_mul_mat_set_hint(self.raw(), sys::GGML_HINT_SRC0_IS_HADAMARD) };
        self
    }

    /// Caps the number of KV entries a flash-attention node may visit (0 = no cap).
    pub fn set_flash_attn_n_kv_max(&self, n: i32) -> &Self {
        assert_eq!(self.meta().op, sys::GGML_OP_FLASH_ATTN_EXT, "n_kv_max on a non-flash-attention node");
        // SAFETY: op-parameter update on a live flash-attention node.
        unsafe { sys::ggml_flash_attn_ext_set_n_kv_max(self.raw(), n) };
        self
    }

    /// The buffer holding this tensor's data, if that buffer is owned by its context (weights,
    /// caches). Scheduler-allocated tensors return None: read them through their `Sched`.
    fn owned_buffer(&self) -> Option<Buffer> {
        let b = self.meta().buffer;
        if b.is_null() {
            return None;
        }
        self.ctx.buffers.borrow().iter().find(|x| x.raw() == b).cloned()
    }

    pub(crate) fn buffer_raw(&self) -> *mut sys::ggml_backend_buffer {
        self.meta().buffer
    }

    /// Copies `data` into the tensor (which must live in a buffer its context owns).
    /// For repacking buffer types this is where the layout conversion happens.
    pub fn write_bytes(&self, data: &[u8]) -> Result<()> {
        if self.owned_buffer().is_none() {
            return err(format!("tensor '{}' has no buffer of its own to write to", self.name()));
        }
        if data.len() != self.nbytes() || !self.is_contiguous() {
            return err(format!("tensor '{}': wrote {} bytes, needs {}", self.name(), data.len(), self.nbytes()));
        }
        // SAFETY: the tensor is allocated in a live buffer (checked), contiguous, and `data` has
        // exactly its size.
        unsafe { sys::ggml_backend_tensor_set(self.raw(), data.as_ptr() as *const _, 0, data.len()) };
        Ok(())
    }

    /// Copies the tensor's bytes out (it must live in a buffer its context owns).
    pub fn read_bytes(&self) -> Result<Vec<u8>> {
        if self.owned_buffer().is_none() {
            return err(format!("tensor '{}' has no buffer of its own to read from", self.name()));
        }
        if !self.is_contiguous() {
            return err(format!("tensor '{}' is not contiguous", self.name()));
        }
        let mut out = vec![0u8; self.nbytes()];
        // SAFETY: the tensor is allocated in a live buffer (checked) and `out` has its size.
        unsafe { sys::ggml_backend_tensor_get(self.raw(), out.as_mut_ptr() as *mut _, 0, out.len()) };
        Ok(out)
    }

    /// Copies `len` bytes starting at byte `offset` of the tensor's data (owned buffer only, in
    /// any device's memory, but not a repacked CPU layout, where ranges mean nothing).
    pub fn read_range(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        if !self.owned_buffer().is_some_and(|b| b.is_byte_addressed()) || !self.is_contiguous() {
            return err(format!("tensor '{}' has no contiguous buffer of its own to read from", self.name()));
        }
        if offset.checked_add(out.len()).is_none_or(|end| end > self.nbytes()) {
            return err(format!("tensor '{}': read of {} bytes at {} is out of range", self.name(), out.len(), offset));
        }
        // SAFETY: the tensor is allocated in a live buffer (checked) and the range lies inside it.
        unsafe { sys::ggml_backend_tensor_get(self.raw(), out.as_mut_ptr() as *mut _, offset, out.len()) };
        Ok(())
    }

    /// Writes `data` at byte `offset` of the tensor's data (owned buffer only).
    pub fn write_range(&self, offset: usize, data: &[u8]) -> Result<()> {
        if !self.owned_buffer().is_some_and(|b| b.is_byte_addressed()) || !self.is_contiguous() {
            return err(format!("tensor '{}' has no contiguous buffer of its own to write to", self.name()));
        }
        if offset.checked_add(data.len()).is_none_or(|end| end > self.nbytes()) {
            return err(format!("tensor '{}': write of {} bytes at {} is out of range", self.name(), data.len(), offset));
        }
        // SAFETY: the tensor is allocated in a live buffer (checked) and the range lies inside it.
        unsafe { sys::ggml_backend_tensor_set(self.raw(), data.as_ptr() as *const _, offset, data.len()) };
        Ok(())
    }

    /// Sets `len` bytes at byte `offset` of the tensor's data to zero (owned buffer only).
    pub fn zero_range(&self, offset: usize, len: usize) -> Result<()> {
        if !self.owned_buffer().is_some_and(|b| b.is_byte_addressed()) || !self.is_contiguous() {
            return err(format!("tensor '{}' has no contiguous buffer of its own to write to", self.name()));
        }
        if offset.checked_add(len).is_none_or(|end| end > self.nbytes()) {
            return err(format!("tensor '{}': write of {len} bytes at {offset} is out of range", self.name()));
        }
        // SAFETY: the tensor is allocated in a live buffer (checked) and the range lies inside it.
        unsafe { sys::ggml_backend_tensor_memset(self.raw(), 0, offset, len) };
        Ok(())
    }

    /// Reads an F32 tensor from a buffer its context owns.
    pub fn read_f32(&self) -> Result<Vec<f32>> {
        if self.ty() != Type::F32 {
            return err(format!("tensor '{}' is {}, not f32", self.name(), self.ty()));
        }
        let b = self.read_bytes()?;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}
