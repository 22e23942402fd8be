//! Accepting connections: at most `max_accepts_per_turn` a turn (a connect flood must
//! not keep the loop from the connections it already has), a 503 without a slot for
//! clients over the connection or handshake limits, and a pause instead of a spin when
//! the process runs out of file descriptors.

use super::{Core, Server};
use crate::conn::Conn;
use crate::handler::Handler;
use crate::proto::http::{HttpResponse, StatusCode};
use crate::timer::Millis;
use crate::transport::Transport;
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

/// How long accepting pauses after the process ran out of file descriptors. Pending
/// clients wait in the kernel's backlog meanwhile; retrying sooner would only spin.
pub(super) const ACCEPT_BACKOFF: Millis = 100;

impl<H: Handler> Server<H> {
    /// Accepts up to `max_accepts_per_turn` connections: a connect flood must not
    /// keep the loop here while open connections wait for their reads and writes.
    pub(super) fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..self.core.config.max_accepts_per_turn.max(1) {
            let Some(listener) = &self.listener else {
                return;
            };
            let (socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    // EMFILE/ENFILE: pending clients stay in the kernel's backlog; pause
                    // instead of spinning on an accept that cannot succeed, and log once
                    // per burst (until an accept succeeds again).
                    if !self.accept_exhausted {
                        log::warn!("accept paused, retrying every {ACCEPT_BACKOFF} ms: {e}");
                        self.accept_exhausted = true;
                    }
                    self.accept_paused_until = Some(self.core.now + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            if self.accept_exhausted {
                log::info!("accepting again");
                self.accept_exhausted = false;
            }
            self.core.stats.accepted += 1;
            if self.core.conns.len() >= self.core.config.max_connections
                || self.core.handshaking >= self.core.config.max_handshakes
            {
                self.core.stats.refused += 1;
                log::debug!("{peer}: refused with 503 (connection limits)");
                #[cfg(feature = "tls")]
                if self.tls.is_some() {
                    // A 503 in plaintext means nothing to a TLS client: just close.
                    continue;
                }
                refuse_busy(socket);
                continue;
            }
            #[cfg(feature = "tls")]
            if let Some(tls) = &self.tls {
                let _ = socket.set_nodelay(true);
                match crate::tls::TlsStream::new(socket, tls.current()) {
                    Ok(stream) => self.core.add(Transport::Tls(Box::new(stream)), peer),
                    Err(e) => log::warn!("{peer}: cannot start TLS: {e}"),
                }
                continue;
            }
            // Small frames go out at once; batching is ours to do, not Nagle's.
            let _ = socket.set_nodelay(true);
            self.core.add(Transport::Tcp(socket), peer);
        }
        // The cap was reached before WouldBlock: come back next turn.
        self.accept_more = self.listener.is_some();
    }
}

pub(super) fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// `503 Service Unavailable` with `Retry-After: 1`: what an overloaded server says.
pub(super) fn busy_response() -> Vec<u8> {
    HttpResponse::text(StatusCode::SERVICE_UNAVAILABLE, "server busy\n")
        .with_header("Retry-After", "1")
        .to_bytes()
}

/// Answers a connection over our limits with 503 and closes it, without giving it a
/// slot: a refusal must cost less than a connection.
pub(super) fn refuse_busy(mut socket: TcpStream) {
    let response = busy_response();
    // Drain what the client already sent, so closing does not reset the connection
    // and destroy the answer before the client reads it.
    let mut sink = [0u8; 1024];
    let _ = socket.read(&mut sink);
    let _ = socket.write(&response);
    let _ = socket.shutdown(Shutdown::Both);
}

impl<S> Core<S> {
    pub(super) fn add(&mut self, mut transport: Transport, peer: SocketAddr) {
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) = transport.register(&self.io.registry, Token(slot), Interest::READABLE) {
            log::warn!("{peer}: cannot register: {e}");
            return;
        }
        let generation = self.stats.accepted;
        log::debug!("{peer}: connected");
        entry.insert(Conn::new(
            transport,
            peer,
            generation,
            &self.config,
            self.now,
        ));
        self.handshaking += 1;
        self.touched.push(slot);
    }
}
