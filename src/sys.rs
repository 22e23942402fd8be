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

/// A listening TCP socket on `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`) set
/// before the bind, so that several loops can each hold their own listener on one
/// address and the kernel spreads new connections between them (by a hash of the
/// connection's addresses and ports). Listens with `backlog`.
pub(crate) fn bind_reuseport(
    addr: std::net::SocketAddr,
    backlog: i32,
) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (domain, storage, len) = sockaddr_of(addr);
    // SAFETY: socket() takes no pointers; the descriptor it returns is owned by the
    // OwnedFd at once, so every error path below closes it.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor we just opened and own alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener = std::net::TcpListener::from(fd);
    set_flag(&listener, libc::SO_REUSEADDR)?;
    set_flag(&listener, libc::SO_REUSEPORT)?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: storage is a sockaddr_in or sockaddr_in6 on our stack, len its size.
        let ok = unsafe {
            libc::bind(
                listener.as_raw_fd(),
                &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
                len,
            )
        };
        if ok != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    listen(&listener, backlog)?;
    Ok(listener)
}

fn set_flag(listener: &std::net::TcpListener, option: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from our stack, of the size we pass.
    let ok = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ok != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `addr` as the C library's socket address: family, storage, length.
fn sockaddr_of(
    addr: std::net::SocketAddr,
) -> (libc::c_int, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        std::net::SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                std::ptr::write(
                    &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in,
                    sin,
                )
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            (libc::AF_INET, storage, len)
        }
        std::net::SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                std::ptr::write(
                    &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6,
                    sin6,
                )
            };
            let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            (libc::AF_INET6, storage, len)
        }
    }
}

/// Pins the calling thread to CPU `cpu` (Linux; elsewhere an `Unsupported` error).
pub(crate) fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data (all zeroes is the empty set); CPU_SET
        // writes inside it (it checks the index against the set's size), and
        // sched_setaffinity reads it, of the size we pass, for the calling thread (0).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}
