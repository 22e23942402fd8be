//! The host's side of nesting: drives a wsreactor `Server` from a tokio runtime
//! through its poll descriptor. Shared by `examples/tokio_nested.rs` and
//! `tests/nesting.rs`, so the test checks the code the example shows.

use std::io;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use wsreactor::{Handler, Server};

/// Drives `server` from the tokio runtime until its shutdown completes: a turn that
/// never blocks whenever its descriptor is readable or its `next_timeout` passes.
pub async fn drive<H: Handler>(server: Server<H>) -> io::Result<()> {
    // SAFETY: the descriptor is the server's poller, which the server owns and keeps
    // open, the same one, for as long as it lives; the AsyncFd owns the server, so
    // the descriptor outlives the registration (wsreactor documents this guarantee
    // on `impl AsRawFd for Server`).
    let mut server = unsafe { AsyncFd::register_with_interest(server, Interest::READABLE) }
        .map_err(io::Error::from)?;
    while !server.get_ref().is_finished() {
        // Timers, deadlines and left-over work raise no readiness: wake for them too.
        let timeout = server.get_ref().next_timeout();
        let sleep = async move {
            match timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = server.readable_mut() => {
                let mut ready = ready?;
                ready.get_inner_mut().turn(Some(Duration::ZERO))?;
                // Edge-triggered: readiness that arrived during the turn is kept.
                ready.clear_ready();
            }
            () = sleep => server.get_mut().turn(Some(Duration::ZERO))?,
        }
    }
    Ok(())
}
