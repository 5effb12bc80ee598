//! A counting global allocator: how bedside proves its memory claims instead of guessing.
//!
//! It wraps the system allocator and keeps, for the whole process, the bytes live now and
//! the most ever live, and for each thread the number of allocations and bytes it asked
//! for. The daemon installs it (`src/main.rs`) and reports it in its metrics; tests install
//! it to show that processing a frame or an image after warm-up allocates a documented
//! constant, and that the peak stays under the memory plan.
//!
//! Cost: two relaxed atomic adds and a thread-local add per allocation, and a thread-local
//! read for the cap ([`capped`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes of thread stack bedside asks for its own threads (inference, image worker,
/// capture, smoothing, senders; tokio's workers get the same). Here, below everything that
/// starts a thread, so that the memory plan and the threads read one figure.
pub const THREAD_STACK: usize = 2 << 20;

pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);
static INSTALLED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_COUNT: Cell<u64> = const { Cell::new(0) };
    static THREAD_BYTES: Cell<u64> = const { Cell::new(0) };
    /// The largest single allocation this thread may make now ([`capped`]).
    static THREAD_CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// True when `size` is over the calling thread's cap: the allocation is refused (null), as
/// the system would refuse one it cannot give.
fn over_cap(size: usize) -> bool {
    THREAD_CAP.try_with(|c| size > c.get()).unwrap_or(false)
}

/// Runs `f` with every single allocation of this thread over `max_bytes` refused.
///
/// Why: dicom-parser sizes a value's buffer from the length in its header with
/// `try_reserve_exact` before reading it. `dicom::lengths` checks every length first, but it
/// is a second walk that must agree with dicom-rs's, and it has disagreed (five times, each
/// found by the fuzzer or by reading dicom-rs). Under a cap a few times the file's size, such
/// a reservation fails and dicom-parser says so ("could not allocate"), instead of
/// zero-filling gigabytes until the board's `MemoryMax=` kills the daemon. An infallible
/// allocation over the cap aborts the process (systemd restarts it) — so the cap must be
/// above anything a sound read of that file allocates at once.
///
/// Only where [`Counting`] is the global allocator (the daemon, its tests); elsewhere `f`
/// runs uncapped.
pub fn capped<R>(max_bytes: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = THREAD_CAP.try_with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(THREAD_CAP.with(|c| c.replace(max_bytes)));
    f()
}

fn on_alloc(size: usize) {
    INSTALLED.store(1, Ordering::Relaxed);
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
    TOTAL.fetch_add(1, Ordering::Relaxed);
    // `try_with`: a thread being torn down has no thread-locals left; it is not counted.
    let _ = THREAD_COUNT.try_with(|c| c.set(c.get() + 1));
    let _ = THREAD_BYTES.try_with(|c| c.set(c.get() + size as u64));
}

fn on_free(size: usize) {
    LIVE.fetch_sub(size, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged (or refused with null, which
// the contract allows); only counters move.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            on_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            on_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        on_free(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && over_cap(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            on_free(layout.size());
            on_alloc(new_size);
        }
        p
    }
}

/// True when the counting allocator is the process's global allocator (and has seen an
/// allocation); the figures below are zero otherwise.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed) != 0
}

/// Heap bytes live now.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The most heap bytes ever live at once (since start or [`reset_peak`]).
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak from what is live now (to measure one operation's working memory).
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Allocations made by the whole process.
pub fn total_allocations() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

/// Allocations and bytes requested so far by the calling thread.
pub fn thread_allocations() -> (u64, u64) {
    (
        THREAD_COUNT.try_with(Cell::get).unwrap_or(0),
        THREAD_BYTES.try_with(Cell::get).unwrap_or(0),
    )
}

/// What the calling thread allocates while running `f`: (allocations, bytes).
pub fn count<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    let (c0, b0) = thread_allocations();
    let r = f();
    let (c1, b1) = thread_allocations();
    (r, c1 - c0, b1 - b0)
}

/// Keeps freed memory in the process instead of returning it to the kernel (glibc): no
/// `munmap`/`brk` shrink after every frame and no page faults to get it back a frame later.
/// Under a fixed budget that the daemon's peak is planned for, giving memory back buys
/// nothing, and RSS stays at its plateau instead of swinging by a frame's worth. Also caps
/// glibc's per-thread arenas, which fragment a long-running process with many threads.
/// A no-op on other C libraries.
pub fn hold_memory() {
    // For measuring what these settings change (benchmarks): keep glibc's defaults.
    if std::env::var_os("BEDSIDE_MALLOC_DEFAULTS").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before other threads start.
    unsafe {
        // Allocations up to 32 MiB (glibc's maximum) come from the heap, not from mmap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}
