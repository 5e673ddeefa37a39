//! The CPU device as `ferrite rpc-server` serves it: ggml's CPU device, except that a graph
//! computed on it runs its weight products through ferrite's tiled kernel where that kernel
//! applies (`kernels`: the same bits as ggml's `mul_mat`, faster), as a local ferrite graph
//! does with `Context::mul_mat_w`. ggml's RPC server computes the graphs its clients send with
//! `ggml_backend_graph_compute` on a backend of the device it serves; the device here is a copy
//! of the CPU device whose backends are the CPU's with their `graph_compute` entry replaced.
//!
//! bindgen leaves ggml's backend structs opaque; their layouts (ggml-backend-impl.h of the
//! pinned llama-cpp-sys-2 0.1.161) are spelled out below as arrays of pointers.

use crate::backend::Device;
use crate::sys;
use std::os::raw::{c_char, c_void};
use std::sync::OnceLock;

/// `struct ggml_backend_device`: 15 interface entries, then `reg` and `context`.
const DEVICE_WORDS: usize = 17;
/// `ggml_backend_device_i::get_memory` and `init_backend`.
const DEVICE_GET_MEMORY: usize = 2;
const DEVICE_INIT_BACKEND: usize = 5;
/// `struct ggml_backend`: `guid`, 16 interface entries, `device`, `context`; `graph_compute` is
/// the interface's 13th entry.
const BACKEND_GRAPH_COMPUTE: usize = 1 + 12;
const BACKEND_DEVICE: usize = 1 + 16;

// SAFETY: (the three types) the signatures of ggml_backend_device_i::get_memory and
// init_backend, and of ggml_backend_i::graph_compute, in ggml-backend-impl.h.
type GetMemory = unsafe extern "C" fn(sys::ggml_backend_dev_t, *mut usize, *mut usize);
type InitBackend = unsafe extern "C" fn(sys::ggml_backend_dev_t, *const c_char) -> sys::ggml_backend_t;
type GraphCompute = unsafe extern "C" fn(sys::ggml_backend_t, *mut sys::ggml_cgraph) -> sys::ggml_status;

/// The CPU device's own entries, saved when the served device is made.
struct Originals {
    cpu: usize,
    init_backend: InitBackend,
    graph_compute: OnceLock<GraphCompute>,
    /// Whether products go through ferrite's kernel.
    own_kernels: bool,
    /// The memory reported to clients, when capped (`rpc-server --mem`).
    memory: Option<usize>,
}

static ORIGINALS: OnceLock<Originals> = OnceLock::new();

/// The CPU device as served: weight products through ferrite's kernel with `own_kernels` (where
/// this CPU has it), and `memory` bytes reported to clients as its free and total memory when
/// given (clients split layers by it). The plain CPU device when neither applies. Made once per
/// process: later calls return the first one.
pub(crate) fn cpu_device(cpu: Device, own_kernels: bool, memory: Option<usize>) -> Device {
    let own_kernels = own_kernels && crate::kernels::available();
    if !own_kernels && memory.is_none() {
        return cpu;
    }
    static SERVED: OnceLock<usize> = OnceLock::new();
    let p = *SERVED.get_or_init(|| {
        let raw = cpu.raw() as *const usize;
        // SAFETY: a registry device is a live `struct ggml_backend_device` of DEVICE_WORDS
        // pointer-sized words (layout above); copying it copies its interface table and context,
        // which the CPU backend's functions read through the device pointer they are given.
        let mut words: Box<[usize; DEVICE_WORDS]> = Box::new([0; DEVICE_WORDS]);
        unsafe { std::ptr::copy_nonoverlapping(raw, words.as_mut_ptr(), DEVICE_WORDS) };
        // SAFETY: entry DEVICE_INIT_BACKEND of the CPU device's interface is its non-null
        // `init_backend`, with this signature.
        let init: InitBackend = unsafe { std::mem::transmute::<usize, InitBackend>(words[DEVICE_INIT_BACKEND]) };
        let _ = ORIGINALS.set(Originals { cpu: raw as usize, init_backend: init, graph_compute: OnceLock::new(), own_kernels, memory });
        words[DEVICE_INIT_BACKEND] = init_backend as InitBackend as usize;
        if memory.is_some() {
            words[DEVICE_GET_MEMORY] = get_memory as GetMemory as usize;
        }
        // lives as long as the process, as registry devices do
        Box::into_raw(words) as usize
    });
    Device::from_raw(p as sys::ggml_backend_dev_t)
}

/// `get_memory` of the served device: the cap given, or less when the machine has less free.
// SAFETY: called by ggml only, as the served device's get_memory, with valid out-pointers.
unsafe extern "C" fn get_memory(_dev: sys::ggml_backend_dev_t, free: *mut usize, total: *mut usize) {
    let o = ORIGINALS.get().expect("set before the device exists");
    let cap = o.memory.unwrap_or(usize::MAX);
    // SAFETY: the CPU device's own query, with the caller's out-pointers.
    unsafe {
        sys::ggml_backend_dev_memory(o.cpu as sys::ggml_backend_dev_t, free, total);
        *free = (*free).min(cap);
        *total = (*total).min(cap);
    }
}

/// `init_backend` of the served device: the CPU's backend, with `graph_compute` replaced.
// SAFETY: called by ggml only, as the served device's init_backend.
unsafe extern "C" fn init_backend(dev: sys::ggml_backend_dev_t, params: *const c_char) -> sys::ggml_backend_t {
    let o = ORIGINALS.get().expect("set before the device exists");
    // SAFETY: the CPU device's own init_backend, called with the CPU device.
    let backend = unsafe { (o.init_backend)(o.cpu as sys::ggml_backend_dev_t, params) };
    if backend.is_null() {
        return backend;
    }
    let words = backend as *mut usize;
    // SAFETY: a CPU backend is a live `struct ggml_backend` (layout above); its graph_compute
    // entry is non-null and has this signature; the backend is ours alone until returned.
    unsafe {
        let original = std::mem::transmute::<usize, GraphCompute>(*words.add(BACKEND_GRAPH_COMPUTE));
        let _ = o.graph_compute.set(original);
        *words.add(BACKEND_GRAPH_COMPUTE) = graph_compute as GraphCompute as usize;
        // the backend's device is the served one, whose memory the server reports to clients
        *words.add(BACKEND_DEVICE) = dev as usize;
    }
    backend
}

/// Whether ferrite's kernel computes `node` (a weight product as `Context::mul_mat_w` takes
/// it), and with which activation type.
///
/// # Safety
/// `node` is a live node of a graph being computed on the CPU.
unsafe fn applies(node: *const sys::ggml_tensor) -> Option<sys::ggml_type> {
    // SAFETY: the caller's contract; sources of a MUL_MAT node are live tensors.
    unsafe {
        let t = &*node;
        if t.op != sys::GGML_OP_MUL_MAT || t.type_ != sys::GGML_TYPE_F32 {
            return None;
        }
        let (a, b) = (&*t.src[0], &*t.src[1]);
        let act = crate::kernels::activation_type(a.type_, b.ne[1] * b.ne[2] * b.ne[3])?;
        let ok = a.ne[0] == b.ne[0]
            && a.ne[0] % 32 == 0
            && a.ne[2] == 1
            && a.ne[3] == 1
            && !a.data.is_null()
            && (a.buffer.is_null() || sys::ggml_backend_buffer_is_host(a.buffer))
            && b.type_ == sys::GGML_TYPE_F32
            && sys::ggml_is_contiguous(t.src[1])
            && sys::ggml_is_contiguous(node)
            && !t.data.is_null();
        ok.then_some(act)
    }
}

/// `graph_compute` of the served device's backends: the graph with each product ferrite's
/// kernel applies to replaced by that kernel's two nodes (activations quantized by ggml's own
/// copy, then the kernel writing into the product's memory), computed by the CPU backend in
/// one go.
// SAFETY: called by ggml only, as a backend's graph_compute, with a live backend and graph.
unsafe extern "C" fn graph_compute(backend: sys::ggml_backend_t, graph: *mut sys::ggml_cgraph) -> sys::ggml_status {
    let o = ORIGINALS.get().expect("set before the backend exists");
    let original = *o.graph_compute.get().expect("set when the backend was made");
    if !o.own_kernels {
        // SAFETY: the CPU backend's own graph_compute, with ggml's arguments.
        return unsafe { original(backend, graph) };
    }
    // SAFETY: `graph` is the live graph the RPC server hands to this backend; its nodes are
    // allocated in the CPU buffers this device serves.
    unsafe {
        let n = sys::ggml_graph_n_nodes(graph);
        let nodes: Vec<*mut sys::ggml_tensor> = (0..n).map(|i| sys::ggml_graph_node(graph, i)).collect();
        let swaps: Vec<(usize, sys::ggml_type)> = nodes.iter().enumerate().filter_map(|(i, &t)| Some((i, applies(t)?))).collect();
        if swaps.is_empty() {
            return original(backend, graph);
        }
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            crate::write_stderr(&format!("ferrite: computing {} of a graph's {n} nodes with ferrite's matrix kernel\n", swaps.len()))
        });
        // the quantized activations: one buffer for all, since each is read only by the node
        // right after the one that writes it (ggml computes nodes one after the other)
        let mut size = 0usize;
        for &(i, act) in &swaps {
            let b = (*nodes[i]).src[1];
            let rows = ((*b).ne[1] * (*b).ne[2] * (*b).ne[3]) as usize;
            size = size.max(sys::ggml_row_size(act, (*b).ne[0]) * rows);
        }
        let mut scratch = vec![0u8; size + 64];
        let base = scratch.as_mut_ptr().add(scratch.as_ptr().align_offset(64));
        let n_new = nodes.len() + swaps.len() + 8;
        let params = sys::ggml_init_params {
            mem_size: sys::ggml_tensor_overhead() * 2 * swaps.len() + sys::ggml_graph_overhead_custom(n_new, false) + 4096,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        let ctx = sys::ggml_init(params);
        if ctx.is_null() {
            return original(backend, graph);
        }
        let g = sys::ggml_new_graph_custom(ctx, n_new, false);
        let mut next = swaps.iter().peekable();
        for (i, &t) in nodes.iter().enumerate() {
            let Some((_, act)) = next.next_if(|(j, _)| *j == i) else {
                sys::ggml_graph_add_node(g, t);
                continue;
            };
            let (w, x) = ((*t).src[0], (*t).src[1]);
            let xq = sys::ggml_cast(ctx, x, *act);
            (*xq).data = base as *mut c_void;
            let mut args = [w, xq];
            let mm = sys::ggml_custom_4d(
                ctx,
                sys::GGML_TYPE_F32,
                (*t).ne[0],
                (*t).ne[1],
                (*t).ne[2],
                (*t).ne[3],
                args.as_mut_ptr(),
                2,
                Some(crate::kernels::mul_mat_op),
                -1,
                std::ptr::null_mut(),
            );
            (*mm).data = (*t).data;
            // (the CPU backend computes only nodes so marked, as graph building marks them)
            (*xq).flags |= sys::GGML_TENSOR_FLAG_COMPUTE as i32;
            (*mm).flags |= sys::GGML_TENSOR_FLAG_COMPUTE as i32;
            sys::ggml_graph_add_node(g, xq);
            sys::ggml_graph_add_node(g, mm);
        }
        // the original nodes' use counts, which the CPU backend's fusions read
        for &t in &nodes {
            if let Some(count) = use_count(graph, t) {
                set_use_count(g, t, count);
            }
        }
        let status = original(backend, g);
        sys::ggml_free(ctx);
        drop(scratch);
        status
    }
}

/// `struct ggml_cgraph` (ggml-impl.h) up to its hash set: three ints, then six pointers
/// (nodes, grads, grad_accs, leafs, use_counts, then the set's size, used bits, keys).
#[repr(C)]
struct CGraph {
    size: i32,
    n_nodes: i32,
    n_leafs: i32,
    nodes: *mut *mut sys::ggml_tensor,
    grads: *mut *mut sys::ggml_tensor,
    grad_accs: *mut *mut sys::ggml_tensor,
    leafs: *mut *mut sys::ggml_tensor,
    use_counts: *mut i32,
    hash_size: usize,
    hash_used: *mut u32,
    hash_keys: *mut *mut sys::ggml_tensor,
}

/// The slot of `t` in the graph's hash set (ggml's `ggml_hash_find`: linear probing from
/// `(address >> 4) % size`), and whether it holds `t`.
///
/// # Safety
/// `g` is a live graph.
unsafe fn hash_slot(g: *mut sys::ggml_cgraph, t: *mut sys::ggml_tensor) -> Option<(usize, bool)> {
    // SAFETY: the caller's contract; the set's arrays hold `hash_size` slots.
    unsafe {
        let g = &*(g as *const CGraph);
        if g.hash_size == 0 {
            return None;
        }
        let used = |i: usize| *g.hash_used.add(i / 32) & (1u32 << (i % 32)) != 0;
        let start = (t as usize >> 4) % g.hash_size;
        let mut i = start;
        while used(i) && *g.hash_keys.add(i) != t {
            i = (i + 1) % g.hash_size;
            if i == start {
                return None;
            }
        }
        Some((i, used(i)))
    }
}

/// How many nodes of `g` use `t` (None: not in its set).
///
/// # Safety
/// `g` is a live graph.
unsafe fn use_count(g: *mut sys::ggml_cgraph, t: *mut sys::ggml_tensor) -> Option<i32> {
    // SAFETY: the caller's contract; a slot found is within `use_counts`.
    unsafe {
        let (i, found) = hash_slot(g, t)?;
        found.then(|| *(*(g as *const CGraph)).use_counts.add(i))
    }
}

/// Records `t` in `g`'s hash set with `count` uses.
///
/// # Safety
/// `g` is a live graph made by `ggml_new_graph_custom`.
unsafe fn set_use_count(g: *mut sys::ggml_cgraph, t: *mut sys::ggml_tensor, count: i32) {
    // SAFETY: the caller's contract; a slot found is within the set's arrays.
    unsafe {
        if let Some((i, _)) = hash_slot(g, t) {
            let c = &*(g as *const CGraph);
            *c.hash_used.add(i / 32) |= 1u32 << (i % 32);
            *c.hash_keys.add(i) = t;
            *c.use_counts.add(i) = count;
        }
    }
}
