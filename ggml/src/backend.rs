//! Backend devices from ggml's registry, buffer types, RAII buffers (including one over a
//! memory-mapped region, without copying) and backends.

use crate::context::{Context, Tensor};
use crate::{err, sys, Result};
use std::ffi::CStr;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub(crate) fn cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns static or registry-owned NUL-terminated names.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The kind of a backend device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Gpu,
    IntegratedGpu,
    Accel,
    Other,
}

/// A device from ggml's backend registry (static for the life of the program).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Device(sys::ggml_backend_dev_t);

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.name())
    }
}

impl Device {
    /// A device handle from the registry (static for the life of the program).
    pub(crate) fn from_raw(d: sys::ggml_backend_dev_t) -> Device {
        Device(d)
    }

    pub(crate) fn raw(&self) -> sys::ggml_backend_dev_t {
        self.0
    }

    /// Every registered device, in registry order.
    pub fn all() -> Vec<Device> {
        crate::init();
        // SAFETY: registry queries; indices are below the reported count.
        unsafe { (0..sys::ggml_backend_dev_count()).map(|i| Device(sys::ggml_backend_dev_get(i))).collect() }
    }

    /// The CPU device.
    pub fn cpu() -> Result<Device> {
        crate::init();
        // SAFETY: registry query; null when no CPU backend is compiled in.
        let d = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        if d.is_null() {
            return err("no CPU backend in this build of ggml");
        }
        Ok(Device(d))
    }

    pub fn name(&self) -> String {
        // SAFETY: live registry device.
        cstr(unsafe { sys::ggml_backend_dev_name(self.0) })
    }

    pub fn description(&self) -> String {
        // SAFETY: live registry device.
        cstr(unsafe { sys::ggml_backend_dev_description(self.0) })
    }

    pub fn kind(&self) -> DeviceKind {
        // SAFETY: live registry device.
        match unsafe { sys::ggml_backend_dev_type(self.0) } {
            sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
            sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceKind::Gpu,
            sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::IntegratedGpu,
            sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => DeviceKind::Accel,
            _ => DeviceKind::Other,
        }
    }

    /// (free, total) bytes of device memory as ggml reports them.
    pub fn memory(&self) -> (usize, usize) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-pointers to locals.
        unsafe { sys::ggml_backend_dev_memory(self.0, &mut free, &mut total) };
        (free, total)
    }

    /// The device's default buffer type.
    pub fn buffer_type(&self) -> BufferType {
        // SAFETY: live registry device; buffer types are static.
        BufferType(unsafe { sys::ggml_backend_dev_buffer_type(self.0) })
    }

    /// The CPU device's "extra" buffer types: layouts (repacked weights) that make some matrix
    /// products faster, in ggml's order of preference.
    pub fn extra_buffer_types(&self) -> Vec<BufferType> {
        let mut out = Vec::new();
        let name = c"ggml_backend_dev_get_extra_bufts";
        // SAFETY: registry lookups; the returned function has the documented signature
        // `ggml_backend_dev_get_extra_bufts_t` and returns a NULL-terminated static array.
        unsafe {
            let reg = sys::ggml_backend_dev_backend_reg(self.0);
            if reg.is_null() {
                return out;
            }
            let f = sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr());
            if f.is_null() {
                return out;
            }
            let f: unsafe extern "C" fn(sys::ggml_backend_dev_t) -> *mut sys::ggml_backend_buffer_type_t = std::mem::transmute(f);
            let mut p = f(self.0);
            while !p.is_null() && !(*p).is_null() {
                out.push(BufferType(*p));
                p = p.add(1);
            }
        }
        out
    }

    /// Whether this device can run the operation that produces `op` when its weight `w` lives in a
    /// buffer of type `buft` (ggml decides per buffer type, e.g. repacked layouts only for some
    /// matrix products). `w` must not be allocated yet.
    pub fn supports_op_with(&self, op: &Tensor, w: &Tensor, buft: BufferType) -> Result<bool> {
        if !w.buffer_raw().is_null() {
            return err("supports_op_with: the weight is already allocated");
        }
        // SAFETY: a zero-size buffer of `buft` is attached to the unallocated weight only for the
        // duration of the query (ggml inspects `w->buffer`'s type), then detached and freed.
        unsafe {
            let dummy = sys::ggml_backend_buft_alloc_buffer(buft.0, 0);
            if dummy.is_null() {
                return Ok(false);
            }
            (*w.raw()).buffer = dummy;
            let ok = sys::ggml_backend_dev_supports_op(self.0, op.raw());
            (*w.raw()).buffer = std::ptr::null_mut();
            sys::ggml_backend_buffer_free(dummy);
            Ok(ok)
        }
    }

    /// Whether this device runs `op` with its current sources.
    pub fn supports_op(&self, op: &Tensor) -> bool {
        // SAFETY: query on live tensor metadata.
        unsafe { sys::ggml_backend_dev_supports_op(self.0, op.raw()) }
    }

    /// A backend (execution stream) on this device.
    pub fn init_backend(&self) -> Result<Backend> {
        // SAFETY: registry device; null params mean defaults.
        let b = unsafe { sys::ggml_backend_dev_init(self.0, std::ptr::null()) };
        if b.is_null() {
            return err(format!("failed to initialise the {} backend", self.name()));
        }
        Ok(Backend(Rc::new(BackendInner {
            ptr: b,
            abort_flag: std::cell::Cell::new(None),
            threadpool: std::cell::Cell::new((std::ptr::null_mut(), 0)),
            n_threads: std::cell::Cell::new(4),
        })))
    }

    /// A buffer over `bytes` (host memory, e.g. a memory map) without copying: tensors placed in
    /// it read the mapped bytes in place. `bytes` is kept alive as long as the buffer.
    pub fn buffer_from_host(&self, bytes: Arc<dyn AsRef<[u8]> + Send + Sync>, max_tensor_size: usize) -> Result<Buffer> {
        let s: &[u8] = (*bytes).as_ref();
        let (ptr, len) = (s.as_ptr(), s.len());
        // ggml's CPU buffers require 32-byte aligned bases (a memory map is page-aligned).
        if !(ptr as usize).is_multiple_of(32) || len == 0 {
            return err("host memory for a buffer must be non-empty and 32-byte aligned");
        }
        // SAFETY: the region [ptr, ptr+len) stays valid while the returned Buffer holds `bytes`;
        // ggml never writes to it unless a tensor in it is written, which our API only does
        // through `Tensor::write_bytes` (never used on mapped weights; memmap2 maps them
        // read-only, and the CPU backend does not write weights).
        let b = unsafe { sys::ggml_backend_dev_buffer_from_host_ptr(self.0, ptr as *mut _, len, max_tensor_size) };
        if b.is_null() {
            return err(format!("the {} device cannot use host memory directly", self.name()));
        }
        Ok(Buffer(Rc::new(BufferInner { ptr: b, _keep: Some(bytes) })))
    }
}

/// A buffer type (static for the life of the program).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BufferType(pub(crate) sys::ggml_backend_buffer_type_t);

impl std::fmt::Debug for BufferType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufferType({})", self.name())
    }
}

impl BufferType {
    pub fn cpu() -> BufferType {
        crate::init();
        // SAFETY: static buffer type.
        BufferType(unsafe { sys::ggml_backend_cpu_buffer_type() })
    }

    pub fn name(&self) -> String {
        // SAFETY: static buffer type.
        cstr(unsafe { sys::ggml_backend_buft_name(self.0) })
    }

    pub fn is_host(&self) -> bool {
        // SAFETY: static buffer type.
        unsafe { sys::ggml_backend_buft_is_host(self.0) }
    }

    /// Allocates one buffer holding every tensor of `ctx` (which must all be unallocated), and
    /// ties its lifetime to `ctx`. Returns None if `ctx` has no tensors.
    pub fn alloc_ctx_tensors(&self, ctx: &Context) -> Result<Option<Buffer>> {
        let tensors = ctx.tensors();
        if tensors.is_empty() {
            return Ok(None);
        }
        if tensors.iter().any(|t| !t.buffer_raw().is_null()) {
            return err("alloc_ctx_tensors: some tensors are already allocated");
        }
        // SAFETY: all tensors of the live context are unallocated; ggml sizes and places them.
        let b = unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.raw(), self.0) };
        if b.is_null() {
            return err(format!("failed to allocate a {} buffer (out of memory?)", self.name()));
        }
        let buf = Buffer(Rc::new(BufferInner { ptr: b, _keep: None }));
        ctx.attach_buffer(&buf);
        Ok(Some(buf))
    }
}

pub(crate) struct BufferInner {
    ptr: sys::ggml_backend_buffer_t,
    _keep: Option<Arc<dyn AsRef<[u8]> + Send + Sync>>,
}

impl Drop for BufferInner {
    fn drop(&mut self) {
        // SAFETY: freed once; every context with tensors in it holds an Rc to this value.
        // Field `_keep` (the mapped bytes) is dropped after the buffer is freed.
        unsafe { sys::ggml_backend_buffer_free(self.ptr) }
    }
}

/// A backend buffer (RAII).
#[derive(Clone)]
pub struct Buffer(Rc<BufferInner>);

impl Buffer {
    pub(crate) fn raw(&self) -> sys::ggml_backend_buffer_t {
        self.0.ptr
    }

    pub fn size(&self) -> usize {
        // SAFETY: live buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.raw()) }
    }

    pub fn name(&self) -> String {
        // SAFETY: live buffer.
        cstr(unsafe { sys::ggml_backend_buffer_name(self.raw()) })
    }

    /// Whether a byte range of a tensor in this buffer is that range of its data: host memory, or
    /// another device's (written and read through the backend); not a repacked CPU layout.
    pub fn is_byte_addressed(&self) -> bool {
        // SAFETY: live buffer; buffer types and their devices are static.
        unsafe {
            if sys::ggml_backend_buffer_is_host(self.raw()) {
                return true;
            }
            let dev = sys::ggml_backend_buft_get_device(sys::ggml_backend_buffer_get_type(self.raw()));
            !dev.is_null() && sys::ggml_backend_dev_type(dev) != sys::GGML_BACKEND_DEVICE_TYPE_CPU
        }
    }

    /// Fills the whole buffer with `value`.
    pub fn clear(&self, value: u8) {
        // SAFETY: live buffer.
        unsafe { sys::ggml_backend_buffer_clear(self.raw(), value) }
    }

    /// Asks the kernel to back this buffer's pages with transparent huge pages (Linux, a host
    /// buffer; before it is written, so the pages are allocated that way). Best effort: returns
    /// whether the advice was taken. Weights stream through memory once per token; 2 MiB pages
    /// spare the TLB.
    pub fn advise_huge_pages(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: live buffer.
            if !unsafe { sys::ggml_backend_buffer_is_host(self.raw()) } {
                return false;
            }
            // SAFETY: live buffer.
            let base = unsafe { sys::ggml_backend_buffer_get_base(self.raw()) } as usize;
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
            let start = base.next_multiple_of(page);
            let end = (base + self.size()) / page * page;
            if base == 0 || end <= start {
                return false;
            }
            // SAFETY: [start, end) lies inside the buffer's own allocation; MADV_HUGEPAGE changes
            // only how the kernel backs those pages, never their contents or validity.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) == 0 }
        }
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Marks the buffer as holding weights (lets the scheduler prefer running ops where they are).
    pub fn set_usage_weights(&self) {
        // SAFETY: live buffer.
        unsafe { sys::ggml_backend_buffer_set_usage(self.raw(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS) }
    }

    /// Places the unallocated tensor `t` at byte `offset` of this buffer, and ties the buffer's
    /// lifetime to `t`'s context. Checks that the tensor fits and is aligned.
    pub fn place(&self, t: &Tensor, offset: usize) -> Result<()> {
        if !t.buffer_raw().is_null() {
            return err(format!("tensor '{}' is already allocated", t.name()));
        }
        let size = self.size();
        let n = t.nbytes();
        if offset.checked_add(n).is_none_or(|end| end > size) {
            return err(format!("tensor '{}' ({} bytes at {}) lies outside its buffer of {} bytes", t.name(), n, offset, size));
        }
        if t.is_view() {
            return err(format!("tensor '{}' is a view and cannot be placed", t.name()));
        }
        // SAFETY: live buffer.
        let base = unsafe { sys::ggml_backend_buffer_get_base(self.raw()) as usize };
        // SAFETY: [base+offset, base+offset+n) lies inside the buffer (checked above).
        let status = unsafe { sys::ggml_backend_tensor_alloc(self.raw(), t.raw(), (base + offset) as *mut _) };
        if status != sys::GGML_STATUS_SUCCESS {
            return err(format!("failed to place tensor '{}' in its buffer", t.name()));
        }
        t.context().attach_buffer(self);
        Ok(())
    }
}

pub(crate) struct BackendInner {
    pub(crate) ptr: sys::ggml_backend_t,
    abort_flag: std::cell::Cell<Option<&'static AtomicBool>>,
    /// The CPU backend's persistent worker threads (null until `set_n_threads`).
    threadpool: std::cell::Cell<(*mut sys::ggml_threadpool, i32)>,
    /// The CPU backend's thread count (ggml's default, GGML_DEFAULT_N_THREADS, until set).
    n_threads: std::cell::Cell<i32>,
}

impl Drop for BackendInner {
    fn drop(&mut self) {
        // SAFETY: freed once; schedulers using it hold an Rc. The backend goes first: it refers
        // to the threadpool until freed.
        unsafe {
            sys::ggml_backend_free(self.ptr);
            let (tp, _) = self.threadpool.replace((std::ptr::null_mut(), 0));
            if !tp.is_null() {
                sys::ggml_threadpool_free(tp);
            }
        }
    }
}

/// An execution backend (RAII).
#[derive(Clone)]
pub struct Backend(pub(crate) Rc<BackendInner>);

/// ggml's abort callback: reads the flag registered by `set_abort_flag`.
///
/// # Safety
/// `data` must be the address of a `&'static AtomicBool`.
unsafe extern "C" fn abort_trampoline(data: *mut std::os::raw::c_void) -> bool {
    // SAFETY: `data` is the address of a `&'static AtomicBool` set by `set_abort_flag`.
    let flag = unsafe { &*(data as *const AtomicBool) };
    flag.load(std::sync::atomic::Ordering::Relaxed)
}

impl Backend {
    pub fn name(&self) -> String {
        // SAFETY: live backend.
        cstr(unsafe { sys::ggml_backend_name(self.0.ptr) })
    }

    pub fn device(&self) -> Device {
        // SAFETY: live backend.
        Device(unsafe { sys::ggml_backend_get_device(self.0.ptr) })
    }

    pub fn is_cpu(&self) -> bool {
        // SAFETY: live backend.
        unsafe { sys::ggml_backend_is_cpu(self.0.ptr) }
    }

    /// Sets the number of threads (for backends that have a thread count, such as the CPU).
    pub fn set_n_threads(&self, n: usize) {
        let n = n.clamp(1, 512) as i32;
        self.0.n_threads.set(n);
        if self.is_cpu() {
            // A persistent pool: without one, ggml starts and joins its worker threads at every
            // graph computation, i.e. at every generated token.
            let (old, old_n) = self.0.threadpool.get();
            // SAFETY: `old` is null or the pool this backend owns; a new pool is attached before
            // the old one is freed, so the backend never refers to a freed pool.
            unsafe {
                if old.is_null() || old_n != n {
                    let mut params = sys::ggml_threadpool_params_default(n);
                    let tp = sys::ggml_threadpool_new(&mut params);
                    if !tp.is_null() {
                        sys::ggml_backend_cpu_set_threadpool(self.0.ptr, tp);
                        self.0.threadpool.set((tp, n));
                        if !old.is_null() {
                            sys::ggml_threadpool_free(old);
                        }
                    }
                }
            }
        }
        // SAFETY: registry lookup of the documented `ggml_backend_set_n_threads` entry point.
        unsafe {
            let dev = sys::ggml_backend_get_device(self.0.ptr);
            let reg = if dev.is_null() { std::ptr::null_mut() } else { sys::ggml_backend_dev_backend_reg(dev) };
            if reg.is_null() {
                return;
            }
            let f = sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_set_n_threads".as_ptr());
            if !f.is_null() {
                let f: unsafe extern "C" fn(sys::ggml_backend_t, std::os::raw::c_int) = std::mem::transmute(f);
                f(self.0.ptr, n);
            }
        }
    }

    /// Runs `graph` on this CPU backend as ggml's CPU backend does (plan for the backend's
    /// threads and pool, compute, stop early on the abort flag), but with a work buffer of our
    /// own: page-aligned, where the backend's own (`new uint8_t[]`) is only 16-byte aligned. The
    /// work buffer holds per-thread scratch tiles that the kernels read with 64-byte vector
    /// loads — flash attention's tiles among them, ~30 % slower when those loads straddle cache
    /// lines (gemma3 pp512: prompt processing +5 %).
    ///
    /// # Safety
    /// Every tensor of `graph` must be allocated in memory this backend can read and write.
    pub(crate) unsafe fn compute_cpu(&self, graph: *mut sys::ggml_cgraph, work: &mut Option<memmap2::MmapMut>) -> Result<sys::ggml_status> {
        let (tp, _) = self.0.threadpool.get();
        // SAFETY: a live graph (caller); `tp` is null or the live pool attached to this backend.
        let mut plan = unsafe { sys::ggml_graph_plan(graph, self.0.n_threads.get(), tp) };
        if plan.work_size > 0 {
            if work.as_ref().is_none_or(|w| w.len() < plan.work_size) {
                *work = None; // the old buffer goes before the new one is mapped
                *work = Some(
                    memmap2::MmapMut::map_anon(plan.work_size)
                        .map_err(|e| crate::Error(format!("allocating the compute work buffer: {e}")))?,
                );
            }
            plan.work_data = work.as_mut().expect("mapped above").as_mut_ptr();
        }
        if let Some(flag) = self.0.abort_flag.get() {
            plan.abort_callback = Some(abort_trampoline);
            plan.abort_callback_data = flag as *const AtomicBool as *mut std::os::raw::c_void;
        }
        // SAFETY: the plan is ggml's own for this graph, its work buffer holds `work_size` bytes
        // and outlives the call; the abort data is a 'static flag.
        Ok(unsafe { sys::ggml_graph_compute(graph, &mut plan) })
    }

    /// Makes graph computation on this (CPU) backend stop early when `flag` becomes true.
    pub fn set_abort_flag(&self, flag: &'static AtomicBool) {
        if !self.is_cpu() {
            return;
        }
        self.0.abort_flag.set(Some(flag));
        // SAFETY: the flag is 'static, so the pointer stays valid for every later compute.
        unsafe {
            sys::ggml_backend_cpu_set_abort_callback(
                self.0.ptr,
                Some(abort_trampoline),
                flag as *const AtomicBool as *mut std::os::raw::c_void,
            )
        }
    }
}
