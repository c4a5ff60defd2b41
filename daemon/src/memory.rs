//! Giving memory back after a burst. glibc keeps what a thread freed in that thread's arena, so
//! a snapshot that briefly needed tens of MiB (decoded chunks, SQLite's page cache and index
//! sorts on a blocking thread) would otherwise leave the daemon at that size until a restart.

/// Asks the C allocator to return free pages to the system; returns whether any came back.
/// Called once after each snapshot, off the async workers: it walks and locks every arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim takes no pointer and touches only the allocator's own state, which it
    // locks like any malloc call (MT-Safe per malloc_trim(3)); 0 = keep no extra padding.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries (musl) return memory on their own and have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

/// Pins glibc's thresholds at their initial values (128 KiB): by default each large block freed
/// raises them (up to 32 MiB), after which a snapshot's chunk and decode buffers come from the
/// heap and stay there once freed, until a trim that may run before they are. Pinned, blocks of
/// 128 KiB and more are mapped on their own and unmapped when freed, and the heap's free top is
/// returned past 128 KiB. Called once at start, before any thread is spawned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn return_large_blocks_when_freed() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    for param in [libc::M_MMAP_THRESHOLD, libc::M_TRIM_THRESHOLD] {
        // SAFETY: mallopt takes two integers and changes only the allocator's own settings;
        // it is called before the runtime starts any thread.
        unsafe { libc::mallopt(param, THRESHOLD) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn return_large_blocks_when_freed() {}
