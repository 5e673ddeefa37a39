//! Computation graphs built in a context.

use crate::context::{Context, Tensor};
use crate::{sys, Result};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A forward computation graph (its node list lives in `ctx`'s arena).
pub struct Graph {
    ctx: Context,
    ptr: NonNull<sys::ggml_cgraph>,
    id: u64,
}

impl Graph {
    /// A graph of at most `size` nodes in `ctx` (which must have been created with room for it).
    pub fn new(ctx: &Context, size: usize) -> Result<Graph> {
        // SAFETY: pure size query.
        let need = unsafe { sys::ggml_graph_overhead_custom(size, false) };
        if ctx.mem_left() < need {
            return crate::err("graph does not fit in its context");
        }
        // SAFETY: the context has room for the graph (checked above).
        let p = unsafe { sys::ggml_new_graph_custom(ctx.raw(), size, false) };
        let ptr = NonNull::new(p).ok_or_else(|| crate::Error("ggml_new_graph_custom failed".into()))?;
        Ok(Graph { ctx: ctx.clone(), ptr, id: NEXT_ID.fetch_add(1, Ordering::Relaxed) })
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_cgraph {
        self.ptr.as_ptr()
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Adds `t` and everything it depends on to the graph.
    pub fn expand(&self, t: &Tensor) {
        let p = self.ctx.adopt_pub(t);
        // Each expansion adds at most the nodes of the contexts involved; graphs are sized by
        // their builders for the worst case, and running out is a sizing bug.
        // SAFETY: `p` is a live tensor kept alive through the graph context's dependencies.
        unsafe { sys::ggml_build_forward_expand(self.raw(), p) };
        assert!(self.n_nodes() < self.size(), "ggml graph is full (sizing bug)");
    }

    pub fn n_nodes(&self) -> usize {
        // SAFETY: live graph.
        unsafe { sys::ggml_graph_n_nodes(self.raw()) as usize }
    }

    pub fn size(&self) -> usize {
        // SAFETY: live graph.
        unsafe { sys::ggml_graph_size(self.raw()) as usize }
    }

    /// The names and ops of the graph's nodes, in execution order (for debugging and tests).
    pub fn node_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for i in 0..self.n_nodes() {
            // SAFETY: index below n_nodes of a live graph; names/ops are static strings.
            unsafe {
                let t = sys::ggml_graph_node(self.raw(), i as i32);
                let name = std::ffi::CStr::from_ptr((*t).name.as_ptr()).to_string_lossy().into_owned();
                let op = std::ffi::CStr::from_ptr(sys::ggml_op_desc(t)).to_string_lossy().into_owned();
                out.push((name, op));
            }
        }
        out
    }
}
