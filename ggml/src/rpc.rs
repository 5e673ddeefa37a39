//! ggml's RPC backend (built with `GGML_RPC=ON`), reached through the backend registry's
//! proc-address lookup as llama.cpp's tools reach it: serving this machine's devices to remote
//! clients, and adding a remote server's devices to the registry. Its protocol has no
//! authentication; callers decide where it may listen.

use crate::backend::Device;
use crate::{err, sys, Result};
use std::ffi::CString;
use std::path::Path;

/// The RPC backend's registry entry, if this build has one.
fn registry() -> Option<sys::ggml_backend_reg_t> {
    crate::init();
    // SAFETY: registry lookup by a NUL-terminated name; null when absent.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    (!reg.is_null()).then_some(reg)
}

/// A function of the RPC backend, by name (null when absent).
fn proc_address(name: &std::ffi::CStr) -> Option<*mut std::os::raw::c_void> {
    let reg = registry()?;
    // SAFETY: live registry entry; a NUL-terminated name.
    let f = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    (!f.is_null()).then_some(f)
}

/// Whether this build of ggml has the RPC backend.
pub fn available() -> bool {
    proc_address(c"ggml_backend_rpc_start_server").is_some()
}

/// Serves `devices` to RPC clients on `endpoint` (HOST:PORT), `n_threads` for CPU devices, with
/// an optional local cache of tensors (`cache_dir`). With `own_kernels`, the CPU device computes
/// weight products with ferrite's kernel where it applies (same bits as ggml's; see `served`);
/// `memory` caps the memory it reports to clients (bytes).
/// Blocks for as long as it serves: it returns only when it cannot start (the address is taken,
/// say), as an error.
pub fn start_server(
    endpoint: &str,
    cache_dir: Option<&Path>,
    n_threads: usize,
    devices: &[Device],
    own_kernels: bool,
    memory: Option<usize>,
) -> Result<()> {
    let Some(f) = proc_address(c"ggml_backend_rpc_start_server") else {
        return err("this build has no RPC backend (build with GGML_RPC=ON)");
    };
    if devices.is_empty() {
        return err("no device to serve");
    }
    let ep = CString::new(endpoint).map_err(|_| crate::Error("the endpoint holds a NUL byte".into()))?;
    let cache = match cache_dir {
        Some(d) => Some(CString::new(d.to_string_lossy().as_bytes()).map_err(|_| crate::Error("the cache path holds a NUL byte".into()))?),
        None => None,
    };
    let cpu = Device::cpu().ok();
    let served = |d: &Device| match Some(*d) == cpu {
        true => crate::served::cpu_device(*d, own_kernels, memory),
        false => *d,
    };
    let mut devs: Vec<sys::ggml_backend_dev_t> = devices.iter().map(|d| served(d).raw()).collect();
    // SAFETY: `f` is the registry's `ggml_backend_rpc_start_server` (documented signature in
    // ggml-rpc.h); the strings and the device array outlive the call, which blocks while serving.
    unsafe {
        let f: unsafe extern "C" fn(*const std::os::raw::c_char, *const std::os::raw::c_char, usize, usize, *mut sys::ggml_backend_dev_t) =
            std::mem::transmute(f);
        f(ep.as_ptr(), cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()), n_threads, devs.len(), devs.as_mut_ptr());
    }
    err(format!("the RPC server on {endpoint} stopped (could it listen there? see the lines above)"))
}

/// Adds the devices of the RPC server at `endpoint` (HOST:PORT) to ggml's registry and returns
/// them. The server must be reachable: ggml aborts the process when it cannot connect, so the
/// caller checks that first.
pub fn add_server(endpoint: &str) -> Result<Vec<Device>> {
    let Some(f) = proc_address(c"ggml_backend_rpc_add_server") else {
        return err("this build has no RPC backend (build with GGML_RPC=ON)");
    };
    let ep = CString::new(endpoint).map_err(|_| crate::Error("the endpoint holds a NUL byte".into()))?;
    // SAFETY: `f` is the registry's `ggml_backend_rpc_add_server` (ggml-rpc.h); it copies the
    // endpoint, and returns a registry entry that lives as long as the process (or null).
    let reg = unsafe {
        let f: unsafe extern "C" fn(*const std::os::raw::c_char) -> sys::ggml_backend_reg_t = std::mem::transmute(f);
        f(ep.as_ptr())
    };
    if reg.is_null() {
        return err(format!("the RPC server at {endpoint} offers no device"));
    }
    // SAFETY: a live registry entry; indices below its device count.
    let devices =
        unsafe { (0..sys::ggml_backend_reg_dev_count(reg)).map(|i| Device::from_raw(sys::ggml_backend_reg_dev_get(reg, i))).collect() };
    Ok(devices)
}

/// ggml's abort callback while remote devices are in use: ggml aborts the process when a
/// remote server disappears or answers nonsense ("Remote RPC server crashed…"); this turns that
/// into one line on stderr and exit status 1 (`_exit`: other threads may hold ggml's locks).
extern "C" fn on_abort(message: *const std::os::raw::c_char) {
    let msg = crate::backend::cstr(message);
    let line = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    // one write, so the line is not interleaved with another thread's output
    crate::write_stderr(&format!("ferrite: a device failed: {line} (is the RPC server still running?)\n"));
    // SAFETY: _exit ends the process without running destructors, which could wait on the
    // threads ggml left mid-computation.
    unsafe { libc::_exit(1) }
}

/// From now on a ggml abort (a remote device lost, say) is a one-line error with exit status
/// 1 instead of SIGABRT.
pub fn exit_cleanly_on_abort() {
    // SAFETY: installs a callback with the signature ggml expects (`ggml_abort_callback_t`).
    unsafe {
        sys::ggml_set_abort_callback(Some(on_abort));
    }
}
