//! The few calls into the C library the loop needs, each with its SAFETY note, in one
//! place: nothing else in the crate uses `unsafe`.

/// Hands memory that the allocator keeps after large frees back to the system.
///
/// glibc raises its mmap threshold after the first large buffer is freed, so later
/// large buffers (assembled messages, send queues) come from the heap and stay in the
/// process's RSS after they are freed. After an attack is closed out of the budgets
/// that memory is free but still resident; trimming returns it. Elsewhere, a no-op.
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's own state,
    // which it locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
