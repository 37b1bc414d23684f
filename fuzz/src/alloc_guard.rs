//! A global allocator that remembers the largest single allocation since the last [`reset`].
//!
//! Each target resets it before decoding and then checks the peak against a bound derived from
//! the input's size and the decoder's configured limit: a decoder that reserves memory for a
//! length it read from untrusted bytes (a frame header or record header claiming 4 GiB) before
//! checking that length shows up as a peak far above the bound, even when the allocation itself
//! would have succeeded. libFuzzer's own `-malloc_limit_mb` needs sanitizer malloc hooks; this
//! works in every build (`-s none` too).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct PeakTracking;

static PEAK: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    PEAK.fetch_max(size, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a size is recorded.
unsafe impl GlobalAlloc for PeakTracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakTracking = PeakTracking;

/// Forgets the peak seen so far.
pub fn reset() {
    PEAK.store(0, Ordering::Relaxed);
}

/// Largest single allocation (or reallocation's new size) since the last [`reset`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Panics if a single allocation since the last [`reset`] was larger than `bound` bytes.
pub fn assert_peak_at_most(bound: usize, what: &str) {
    let peak = peak();
    assert!(
        peak <= bound,
        "{what}: a single allocation of {peak} bytes, above the bound of {bound} bytes \
         (allocated for an unchecked length?)"
    );
}

/// `WEIR_FUZZ_STRICT_ALLOC=1`: hold decoders to allocations proportional to the input, not just
/// to their configured limits (see README.md: the frame decoder does not meet this today).
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("WEIR_FUZZ_STRICT_ALLOC").is_some_and(|v| v == "1"))
}
