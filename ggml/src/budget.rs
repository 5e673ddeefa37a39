//! A global allocator that bounds what one thread may hold: the system allocator, plus a per-thread
//! count of live bytes for threads that opted in with [`with_budget`]. Used for chat-template
//! rendering, where a hostile template can double a string or list in a loop (60 doublings is a
//! few hundred instructions, far inside any fuel limit) and the template engine's allocations
//! abort the process when memory runs out; here the thread's budget ends the process first with a
//! one-line message and exit status 2 (bad input), before the allocation is attempted.
//!
//! Why exit, not fail: a global allocator must not unwind, and the engine's `String`/`Vec` growth
//! treats a failed allocation as fatal (abort), so there is nothing to hand an error back to.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

/// The system allocator with per-thread budgets (install with `#[global_allocator]`).
pub struct BudgetAlloc;

thread_local! {
    /// Budget in bytes of the current thread (0: unlimited) and its live bytes.
    static BUDGET: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static MESSAGE: Cell<&'static str> = const { Cell::new("") };
}

impl BudgetAlloc {
    /// Counts `size` more bytes for this thread; ends the process when its budget would be passed.
    fn charge(size: usize) {
        // try_with: thread-locals are unavailable while a thread is being torn down
        let _ = BUDGET.try_with(|b| {
            let budget = b.get();
            if budget == 0 {
                return;
            }
            let live = LIVE.with(|l| {
                let v = l.get().saturating_add(size);
                l.set(v);
                v
            });
            if live > budget {
                b.set(0); // no second refusal while exiting (exit may allocate)
                let msg = MESSAGE.with(|m| m.get());
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(b"ferrite: ");
                let _ = err.write_all(msg.as_bytes());
                let _ = err.write_all(b"\n");
                std::process::exit(2);
            }
        });
    }

    fn credit(size: usize) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(size)));
    }
}

// SAFETY: every call is forwarded to the system allocator with the same arguments; the budget
// bookkeeping only reads and writes this thread's counters, and never unwinds (it exits instead).
unsafe impl GlobalAlloc for BudgetAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::charge(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::charge(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Self::credit(layout.size());
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            Self::charge(new_size - layout.size());
        } else {
            Self::credit(layout.size() - new_size);
        }
        // SAFETY: as for `alloc`/`dealloc`: `ptr` and `layout` are the caller's, from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` with this thread's live allocations bounded by `bytes` (counted from zero at the
/// start: memory freed here that was allocated before counts nothing). Passing the bound ends the
/// process with `ferrite: {message}` on stderr and exit status 2 — but only where `BudgetAlloc` is
/// the global allocator (in the `ferrite` binary; unit tests run unbounded).
pub fn with_budget<T>(bytes: usize, message: &'static str, f: impl FnOnce() -> T) -> T {
    struct Reset(usize, usize, &'static str);
    impl Drop for Reset {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
            LIVE.with(|l| l.set(self.1));
            MESSAGE.with(|m| m.set(self.2));
        }
    }
    let _reset = Reset(BUDGET.with(|b| b.get()), LIVE.with(|l| l.get()), MESSAGE.with(|m| m.get()));
    MESSAGE.with(|m| m.set(message));
    LIVE.with(|l| l.set(0));
    BUDGET.with(|b| b.set(bytes.max(1)));
    f()
}
