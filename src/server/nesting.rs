//! Nesting: a service that already has an event loop (its own epoll or mio, tokio)
//! drives the server from it, through the poller's descriptor and
//! [`Server::next_timeout`], calling a turn that never blocks.

use super::Server;
use crate::handler::Handler;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// The descriptor of the server's poller (an epoll instance on Linux), for a host
/// event loop to watch for readability.
///
/// It is readable while the server has I/O or [`Handle`](crate::Handle) commands
/// waiting (the `Handle`'s waker is registered in it too). A host loop calls
/// [`turn`](Server::turn)`(Some(Duration::ZERO))`, which never blocks:
///
/// - whenever the descriptor is readable, and
/// - whenever [`next_timeout`](Server::next_timeout) has passed since the last turn,
///   readable or not: timers, connection deadlines and work the server left for its
///   next turn (a connection with input past its per-turn share, a burst of accepts)
///   raise no readiness on the descriptor.
///
/// Most hosts watch descriptors edge-triggered (tokio does): after a turn, clear the
/// readiness the host recorded and wait for the next edge; what arrived during the
/// turn raises a new one (tokio's `AsyncFdReadyGuard::clear_ready` keeps readiness
/// that arrived after the guard was taken), and events a turn left unread make
/// `next_timeout` zero. A level-triggered host (plain `poll(2)`) just calls `turn`
/// whenever it is readable. Do not read from the descriptor, and do not close it:
/// the server owns it.
///
/// It is the same descriptor for the server's whole life, open until the `Server`
/// is dropped: what registering it with a host loop needs (tokio's
/// `AsyncFd::register_with_interest` asks exactly this of its caller, hence its
/// `unsafe`). See `examples/tokio_nested.rs`.
impl<H: Handler> AsRawFd for Server<H> {
    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }
}

impl<H: Handler> Server<H> {
    /// How long a host event loop may wait on the [descriptor](std::os::fd::AsRawFd)
    /// before it must call [`turn`](Server::turn) anyway: until the next timer or
    /// connection deadline (rounded up to the next millisecond), `Some(ZERO)` if the
    /// server has work left from its last turn, `None` if it has nothing to do
    /// until the descriptor is readable (or once it has finished).
    pub fn next_timeout(&self) -> Option<Duration> {
        if self.finished {
            return None;
        }
        self.poll_timeout(None)
    }
}
