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
