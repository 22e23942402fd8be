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

/// Listens again on a bound socket with `backlog`: std's `TcpListener::bind` listens
/// with 128, too few for a burst of connects.
pub(crate) fn listen(listener: &std::net::TcpListener, backlog: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: listen() on a descriptor the listener owns and keeps open for the call;
    // the kernel caps the backlog at somaxconn.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The soft limit on open files (`RLIMIT_NOFILE`).
pub(crate) fn open_file_limit() -> std::io::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives on our stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// Raises the soft limit on open files to the hard limit; the new soft limit.
pub(crate) fn raise_open_file_limit() -> std::io::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the struct we pass, which lives on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}
