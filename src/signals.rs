//! Graceful shutdown on Ctrl-C and SIGTERM, for a service that embeds the server
//! (feature `signals`; the `wsreactor` binary uses it too).
//!
//! It is two steps because the order matters: handlers must be in place *before* the
//! port opens, or a supervisor that sees the port accept and sends SIGTERM at once
//! kills the process by the default action instead of closing its clients with 1001.
//! Signals that arrive between [`ShutdownSignals::install`] and
//! [`forward_to`](ShutdownSignals::forward_to) are kept and acted on then.
//!
//! ```no_run
//! use wsreactor::signals::ShutdownSignals;
//! use wsreactor::{Config, Ctx, Handler, Message, Server};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     type Session = ();
//!     fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
//!         let _ = cx.send(message);
//!     }
//! }
//!
//! let signals = ShutdownSignals::install()?; // before binding
//! let mut server = Server::bind("127.0.0.1:9998".parse()?, Config::default(), Echo)?;
//! signals.forward_to(server.handle());
//! server.run()?; // returns once every client got its 1001 and answered (or timed out)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::Handle;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io;
use std::thread::JoinHandle;

/// SIGINT and SIGTERM, caught (their default action, death, is off) and waiting to
/// be forwarded to a server as a graceful shutdown.
#[derive(Debug)]
pub struct ShutdownSignals {
    signals: Signals,
}

impl ShutdownSignals {
    /// Catches SIGINT and SIGTERM from now on. Call it before binding the server.
    pub fn install() -> io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            signals: Signals::new([SIGINT, SIGTERM])?,
        })
    }

    /// Starts a thread that turns the first signal into [`Handle::shutdown`] (stop
    /// accepting, close every connection with 1001, then `run` returns) and a second
    /// one into an immediate `exit(130)`, for when a peer never finishes closing —
    /// what a user pressing Ctrl-C twice expects. The thread ends with the process.
    pub fn forward_to(mut self, handle: Handle) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("wsreactor-signals".into())
            .spawn(move || {
                let mut received = 0;
                for signal in self.signals.forever() {
                    received += 1;
                    if received > 1 {
                        log::warn!("signal {signal} again: exiting without waiting");
                        std::process::exit(130);
                    }
                    log::info!("signal {signal}: shutting down (again to force)");
                    let _ = handle.shutdown();
                }
            })
            .expect("spawning the signal thread")
    }
}

/// [`install`](ShutdownSignals::install) and [`forward_to`](ShutdownSignals::forward_to)
/// in one call, for a server that is bound already (a signal that comes before this
/// call still has its default action).
pub fn shutdown_on_signals(handle: Handle) -> io::Result<()> {
    ShutdownSignals::install()?.forward_to(handle);
    Ok(())
}
