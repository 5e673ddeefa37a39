//! The backend scheduler: allocates graphs in compute buffers and runs them on backends.
//! Graph tensors it allocates are only written and read through it, and only while their graph
//! is the one its buffers hold.

use crate::backend::Backend;
use crate::context::Tensor;
use crate::graph::Graph;
use crate::types::Type;
use crate::{err, sys, Result};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A plain element type that can be copied to and from tensors of the matching ggml type.
/// Sealed: reads write raw bytes into it, so only types valid for every bit pattern qualify.
pub trait Element: Copy + Default + 'static + sealed::Plain {
    const TYPE: Type;
}

mod sealed {
    pub trait Plain {}
    impl Plain for f32 {}
    impl Plain for i32 {}
    impl Plain for i64 {}
    impl Plain for u16 {}
}
impl Element for f32 {
    const TYPE: Type = Type::F32;
}
impl Element for i32 {
    const TYPE: Type = Type::I32;
}
impl Element for i64 {
    const TYPE: Type = Type::I64;
}
/// IEEE half-precision bits.
impl Element for u16 {
    const TYPE: Type = Type::F16;
}

/// What the evaluation callback sees of each computed node.
pub struct NodeEval<'a> {
    pub name: &'a str,
    pub op: &'a str,
    pub ne: [i64; 4],
    /// The node's values when it is a contiguous F32 tensor in host memory.
    pub data: Option<Vec<f32>>,
}

/// An evaluation callback: sees every node as it is computed.
pub type EvalFn = Box<dyn FnMut(&NodeEval<'_>)>;

/// What a matrix-product observer sees of one product of a weight (`mul_mat`, `mul_mat_id`).
pub struct MatMulEval<'a> {
    /// The weight's (src0's) name and shape.
    pub weight: &'a str,
    pub weight_ne: [i64; 4],
    /// The activations (src1), made contiguous: ne[1]·ne[2]·ne[3] rows of ne[0] values.
    pub input: &'a [f32],
    pub input_ne: [i64; 4],
    /// For `mul_mat_id`: the chosen experts, `ids[token * n_ids + k]`, and n_ids.
    pub ids: Option<(&'a [i32], usize)>,
}

/// Observes the products of weights as they are computed (llama-imatrix's callback): `wants`
/// is asked first, with the weight's name, whether the product is a `mul_mat_id`, and the
/// input's shape, whether it wants to see that product (each yes splits the graph there, so
/// the fewer the faster); `see` then gets its activations.
pub struct MatMulObserver {
    pub wants: WantsFn,
    pub see: Box<dyn FnMut(&MatMulEval<'_>)>,
}

/// Whether an observer wants a product: (weight name, is `mul_mat_id`, input shape).
pub type WantsFn = Box<dyn Fn(&str, bool, [i64; 4]) -> bool>;

/// What the scheduler's evaluation callback serves.
enum Observer {
    Nodes(EvalFn),
    MatMuls(MatMulObserver),
}

struct SchedInner {
    ptr: sys::ggml_backend_sched_t,
    // Boxed so the callback has a stable thin address to hand to C.
    eval: RefCell<Option<Box<Observer>>>,
    backends: Vec<Backend>,
}

impl Drop for SchedInner {
    fn drop(&mut self) {
        // SAFETY: freed once; graphs it allocated keep this value alive through their context.
        unsafe { sys::ggml_backend_sched_free(self.ptr) }
    }
}

/// A backend scheduler over one or more backends (the last one must be the CPU).
pub struct Sched {
    inner: Rc<SchedInner>,
    /// Id of the graph whose tensors the compute buffers currently hold (0: none).
    current: Cell<u64>,
    /// Work buffer of graphs run directly on the CPU backend (see `Backend::compute_cpu`).
    work: Option<memmap2::MmapMut>,
}

/// ggml's evaluation callback: hands each computed node to the registered observer.
///
/// # Safety
/// `user` must be the address of a live `Observer`, and `t` a node of the graph being computed
/// (computed already when `ask` is false).
unsafe extern "C" fn eval_trampoline(t: *mut sys::ggml_tensor, ask: bool, user: *mut std::os::raw::c_void) -> bool {
    // SAFETY: `user` is the address of the `Observer` owned by the live SchedInner (set in
    // `set_observer`, cleared before it is dropped).
    let observer = unsafe { &mut *(user as *mut Observer) };
    let f = match observer {
        Observer::Nodes(f) => f,
        // SAFETY: as this function's contract.
        Observer::MatMuls(m) => return unsafe { observe_matmul(m, t, ask) },
    };
    if ask {
        return true; // observe every node
    }
    // SAFETY: `t` is a computed node.
    unsafe {
        let meta = &*t;
        let name = std::ffi::CStr::from_ptr(meta.name.as_ptr()).to_string_lossy();
        let op = std::ffi::CStr::from_ptr(sys::ggml_op_desc(t)).to_string_lossy();
        let data = if meta.type_ == sys::GGML_TYPE_F32 && sys::ggml_is_contiguous(t) && !meta.buffer.is_null() {
            let n = sys::ggml_nelements(t) as usize;
            let mut v = vec![0f32; n];
            sys::ggml_backend_tensor_get(t, v.as_mut_ptr() as *mut _, 0, n * 4);
            Some(v)
        } else {
            None
        };
        f(&NodeEval { name: &name, op: &op, ne: meta.ne, data });
    }
    true
}

/// The bytes of a computed tensor, read through its backend.
///
/// # Safety
/// `t` is a computed tensor with a buffer.
unsafe fn tensor_bytes(t: *const sys::ggml_tensor) -> Vec<u8> {
    // SAFETY: as the contract; the read covers exactly the tensor's bytes.
    unsafe {
        let n = sys::ggml_nbytes(t);
        let mut v = vec![0u8; n];
        sys::ggml_backend_tensor_get(t as *mut _, v.as_mut_ptr() as *mut _, 0, n);
        v
    }
}

/// The matrix-product observer's side of the callback.
///
/// # Safety
/// `t` is a node of the graph being computed, computed already when `ask` is false.
unsafe fn observe_matmul(m: &mut MatMulObserver, t: *mut sys::ggml_tensor, ask: bool) -> bool {
    // SAFETY: `t` is a live node; its sources are live tensors of the same graph (or weights).
    unsafe {
        let meta = &*t;
        let is_id = meta.op == sys::GGML_OP_MUL_MAT_ID;
        if meta.op != sys::GGML_OP_MUL_MAT && !is_id {
            return !ask; // not asked for: nothing to see
        }
        let (w, x) = (&*meta.src[0], &*meta.src[1]);
        let name = std::ffi::CStr::from_ptr(w.name.as_ptr()).to_string_lossy();
        // only F32 activations with contiguous rows are read
        // (asked: "not wanted"; told: "go on" — false there would abort the computation)
        if x.type_ != sys::GGML_TYPE_F32 || x.nb[0] != 4 || x.buffer.is_null() || !(m.wants)(&name, is_id, x.ne) {
            return !ask;
        }
        if ask {
            return true;
        }
        let raw = tensor_bytes(x);
        let [ne0, ne1, ne2, ne3] = x.ne.map(|n| n as usize);
        let mut input = Vec::with_capacity(ne0 * ne1 * ne2 * ne3);
        for i3 in 0..ne3 {
            for i2 in 0..ne2 {
                for i1 in 0..ne1 {
                    let at = i1 * x.nb[1] + i2 * x.nb[2] + i3 * x.nb[3];
                    input.extend(raw[at..at + 4 * ne0].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
                }
            }
        }
        let ids = if is_id {
            let idt = &*meta.src[2];
            let raw = tensor_bytes(idt);
            let (n_ids, n_tok) = (idt.ne[0] as usize, idt.ne[1] as usize);
            let mut v = Vec::with_capacity(n_ids * n_tok);
            for row in 0..n_tok {
                for k in 0..n_ids {
                    let at = row * idt.nb[1] + k * idt.nb[0];
                    v.push(i32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]));
                }
            }
            Some((v, n_ids))
        } else {
            None
        };
        (m.see)(&MatMulEval {
            weight: &name,
            weight_ne: w.ne,
            input: &input,
            input_ne: x.ne,
            ids: ids.as_ref().map(|(v, n)| (v.as_slice(), *n)),
        });
        true
    }
}

impl Sched {
    /// A scheduler for graphs of up to `graph_size` nodes over `backends` (in priority order).
    pub fn new(backends: &[Backend], graph_size: usize, op_offload: bool) -> Result<Sched> {
        if backends.is_empty() || !backends.last().is_some_and(|b| b.is_cpu()) {
            return err("the scheduler needs the CPU backend last");
        }
        let mut raw: Vec<sys::ggml_backend_t> = backends.iter().map(|b| b.0.ptr).collect();
        // SAFETY: `raw` holds live backends (kept alive by SchedInner); null bufts = defaults.
        let p =
            unsafe { sys::ggml_backend_sched_new(raw.as_mut_ptr(), std::ptr::null_mut(), raw.len() as i32, graph_size, false, op_offload) };
        if p.is_null() {
            return err("failed to create the backend scheduler");
        }
        Ok(Sched {
            inner: Rc::new(SchedInner { ptr: p, eval: RefCell::new(None), backends: backends.to_vec() }),
            current: Cell::new(0),
            work: None,
        })
    }

    /// Sizes the compute buffers for `graph` (the largest graph to come) without running it.
    pub fn reserve(&mut self, graph: &Graph) -> Result<()> {
        self.current.set(0);
        // SAFETY: live scheduler and graph; reserve may reallocate the compute buffers, which is
        // why no graph counts as allocated afterwards.
        let ok = unsafe {
            sys::ggml_backend_sched_reset(self.inner.ptr);
            sys::ggml_backend_sched_reserve(self.inner.ptr, graph.raw())
        };
        if !ok {
            return err("failed to reserve compute buffers (out of memory?)");
        }
        Ok(())
    }

    /// Allocates `graph`'s tensors in the compute buffers (replacing any previous graph).
    pub fn alloc(&mut self, graph: &Graph) -> Result<()> {
        self.current.set(0);
        // SAFETY: live scheduler and graph; previous graphs' tensors may now point to reused or
        // freed memory, which `current` guards against.
        let ok = unsafe {
            sys::ggml_backend_sched_reset(self.inner.ptr);
            sys::ggml_backend_sched_alloc_graph(self.inner.ptr, graph.raw())
        };
        if !ok {
            return err("failed to allocate the compute graph (out of memory?)");
        }
        graph.context().keep_alive(self.inner.clone());
        self.current.set(graph.id());
        Ok(())
    }

    /// Whether `graph` is the graph the compute buffers hold (so it can run again as is).
    pub fn holds(&self, graph: &Graph) -> bool {
        self.current.get() == graph.id()
    }

    fn check(&self, graph: &Graph, t: &Tensor) -> Result<()> {
        if self.current.get() != graph.id() {
            return err("graph is not allocated in this scheduler");
        }
        if !graph.context().same(t) {
            return err(format!("tensor '{}' is not part of this graph", t.name()));
        }
        if t.buffer_raw().is_null() {
            return err(format!("tensor '{}' was not allocated (not used by the graph?)", t.name()));
        }
        Ok(())
    }

    /// Copies `data` into the graph input `t`.
    pub fn set_input<T: Element>(&self, graph: &Graph, t: &Tensor, data: &[T]) -> Result<()> {
        self.check(graph, t)?;
        if t.ty() != T::TYPE || data.len() as i64 != t.nelements() || !t.is_contiguous() {
            return err(format!("input '{}': wrong type or length ({} values for {:?} {})", t.name(), data.len(), t.ne(), t.ty()));
        }
        // SAFETY: `t` is allocated in the live compute buffers (checked), contiguous, and `data`
        // has exactly its size.
        unsafe { sys::ggml_backend_tensor_set(t.raw(), data.as_ptr() as *const _, 0, t.nbytes()) };
        Ok(())
    }

    /// Runs the allocated `graph`.
    pub fn compute(&mut self, graph: &Graph) -> Result<()> {
        if self.current.get() != graph.id() {
            return err("graph is not allocated in this scheduler");
        }
        let status = match self.cpu_only(graph) {
            // SAFETY: every tensor of the graph is allocated in the CPU backend's buffers (one
            // split, on the CPU backend).
            Some(cpu) => unsafe { cpu.compute_cpu(graph.raw(), &mut self.work)? },
            // SAFETY: the graph is allocated in this scheduler's live buffers.
            None => unsafe { sys::ggml_backend_sched_graph_compute(self.inner.ptr, graph.raw()) },
        };
        match status {
            sys::GGML_STATUS_SUCCESS => Ok(()),
            sys::GGML_STATUS_ABORTED => err("computation aborted"),
            sys::GGML_STATUS_ALLOC_FAILED => err("computation failed: out of memory"),
            _ => err(format!("computation failed (ggml status {status})")),
        }
    }

    /// The CPU backend, when the allocated `graph` runs on it alone (one split, no evaluation
    /// callback): the scheduler would then only hand the whole graph to it, which
    /// `Backend::compute_cpu` does with a better-aligned work buffer.
    fn cpu_only(&self, graph: &Graph) -> Option<Backend> {
        if self.inner.eval.borrow().is_some() {
            return None;
        }
        let cpu = self.inner.backends.last()?;
        // SAFETY: live scheduler; `graph` is the graph it allocated (checked by the caller), so
        // its splits and node assignments are current.
        unsafe {
            let n = sys::ggml_graph_n_nodes(graph.raw());
            if n == 0 || sys::ggml_backend_sched_get_n_splits(self.inner.ptr) != 1 {
                return None;
            }
            let last = sys::ggml_graph_node(graph.raw(), n - 1);
            (sys::ggml_backend_sched_get_tensor_backend(self.inner.ptr, last) == cpu.0.ptr).then(|| cpu.clone())
        }
    }

    /// Copies `n` values of the computed tensor `t` starting at element `offset` into `out`.
    pub fn read<T: Element>(&self, graph: &Graph, t: &Tensor, offset: usize, out: &mut [T]) -> Result<()> {
        self.check(graph, t)?;
        if t.ty() != T::TYPE || !t.is_contiguous() || offset + out.len() > t.nelements() as usize {
            return err(format!("output '{}': wrong type or range", t.name()));
        }
        let es = std::mem::size_of::<T>();
        // SAFETY: `t` is allocated in the live compute buffers; the range is inside it (checked).
        unsafe { sys::ggml_backend_tensor_get(t.raw(), out.as_mut_ptr() as *mut _, offset * es, std::mem::size_of_val(out)) };
        Ok(())
    }

    /// Appends the first `n` elements of output `t` to `out`, written once (no zero-fill first:
    /// for a 262k-token vocabulary that is a 1 MiB memset saved per generated token).
    pub fn read_append<T: Element>(&self, graph: &Graph, t: &Tensor, n: usize, out: &mut Vec<T>) -> Result<()> {
        self.check(graph, t)?;
        if t.ty() != T::TYPE || !t.is_contiguous() || n > t.nelements() as usize {
            return err(format!("output '{}': wrong type or range", t.name()));
        }
        out.reserve(n);
        let es = std::mem::size_of::<T>();
        // SAFETY: `t` is allocated in the live compute buffers and holds at least `n` elements
        // (checked); the reserved spare capacity holds `n` more; ggml writes all `n * es` bytes,
        // and every bit pattern is a valid `Element` (plain numbers), so the new length covers
        // initialised values only.
        unsafe {
            sys::ggml_backend_tensor_get(t.raw(), out.as_mut_ptr().add(out.len()) as *mut _, 0, n * es);
            out.set_len(out.len() + n);
        }
        Ok(())
    }

    /// Calls `f` for every node as it is computed (None removes the callback).
    pub fn set_eval_callback(&mut self, f: Option<EvalFn>) {
        self.set_observer(f.map(Observer::Nodes));
    }

    /// Hands the products of weights to `m` as they are computed (None: stop; replaces an
    /// evaluation callback).
    pub fn set_matmul_observer(&mut self, m: Option<MatMulObserver>) {
        self.set_observer(m.map(Observer::MatMuls));
    }

    fn set_observer(&mut self, o: Option<Observer>) {
        let mut slot = self.inner.eval.borrow_mut();
        // SAFETY: the callback pointer is registered while the box lives in `slot` and cleared
        // before the box is replaced or dropped.
        unsafe { sys::ggml_backend_sched_set_eval_callback(self.inner.ptr, None, std::ptr::null_mut()) };
        *slot = o.map(Box::new);
        if let Some(b) = slot.as_mut() {
            let user = &mut **b as *mut Observer as *mut std::os::raw::c_void;
            // SAFETY: `user` points to the boxed callback owned by `slot` (stable address).
            unsafe { sys::ggml_backend_sched_set_eval_callback(self.inner.ptr, Some(eval_trampoline), user) };
        }
    }

    /// Bytes of compute buffer held for `backend`.
    pub fn buffer_size(&self, backend: &Backend) -> usize {
        // SAFETY: live scheduler and backend.
        unsafe { sys::ggml_backend_sched_get_buffer_size(self.inner.ptr, backend.0.ptr) }
    }

    /// How the allocated `graph`'s nodes are spread over the backends: (device name, nodes), in
    /// the scheduler's order, backends without nodes left out.
    pub fn node_placement(&self, graph: &Graph) -> Vec<(String, usize)> {
        let mut counts = vec![0usize; self.inner.backends.len()];
        if self.current.get() == graph.id() {
            // SAFETY: live scheduler; `graph` is the graph it allocated (checked), so its node
            // assignments are current; indices are below the node count.
            unsafe {
                for i in 0..sys::ggml_graph_n_nodes(graph.raw()) {
                    let b = sys::ggml_backend_sched_get_tensor_backend(self.inner.ptr, sys::ggml_graph_node(graph.raw(), i));
                    if let Some(k) = self.inner.backends.iter().position(|x| x.0.ptr == b) {
                        counts[k] += 1;
                    }
                }
            }
        }
        self.inner.backends.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(b, n)| (b.device().name(), n)).collect()
    }

    /// Number of graph splits across backends in the last allocation.
    pub fn n_splits(&self) -> usize {
        // SAFETY: live scheduler.
        unsafe { sys::ggml_backend_sched_get_n_splits(self.inner.ptr) as usize }
    }
}
