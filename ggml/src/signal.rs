//! Ctrl-C (SIGINT) as a flag: the handler only stores to an atomic (async-signal-safe); a
//! second Ctrl-C while the flag is still set ends the process at once with status 130.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

const SIGINT: i32 = 2;
type Handler = extern "C" fn(i32);

extern "C" {
    fn signal(signum: i32, handler: Handler) -> usize;
    fn _exit(status: i32) -> !;
}

static FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_sigint(_: i32) {
    let p = FLAG.load(Ordering::SeqCst);
    if p.is_null() {
        return;
    }
    // SAFETY: FLAG only ever holds the address of a `&'static AtomicBool` (see `install`).
    let flag = unsafe { &*p };
    if flag.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe; a second interrupt means "stop now".
        unsafe { _exit(130) }
    }
}

/// Routes SIGINT to `flag` (set on the first Ctrl-C; the program clears it when it has handled
/// the interruption).
pub fn install(flag: &'static AtomicBool) {
    FLAG.store(flag as *const AtomicBool as *mut AtomicBool, Ordering::SeqCst);
    // SAFETY: installs an async-signal-safe handler with the C signature `signal` expects.
    unsafe {
        signal(SIGINT, on_sigint);
    }
}
