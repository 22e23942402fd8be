//! How a connection's bytes reach the network: the seam between a connection and its
//! socket.
//!
//! Plain TCP is the one kind today. A second kind (TLS, behind a cargo feature) is a
//! second variant here, and nothing in the loop changes: the connection reads, writes
//! and shuts down through these methods, and asks [`Transport::wants_write`] whether
//! the transport itself holds bytes for the socket (TLS records it has encrypted but
//! not written), which keeps WRITABLE interest on even with the send queue empty.
//!
//! An enum rather than a trait object: one match per call, which the compiler folds
//! away while TCP is the only variant, so the plain path pays nothing for the seam.

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

/// One connection's byte stream.
#[derive(Debug)]
pub(crate) enum Transport {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS (feature `tls`), boxed: a plain connection's `Conn` does not grow by the size
    /// of a TLS session.
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsStream>),
}

impl Transport {
    /// Half-closes: the peer reads EOF after our last bytes (the server closes TCP
    /// first, RFC 6455 §7.1.1), while we go on reading until its EOF.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(socket) => socket.shutdown(Shutdown::Write),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => shielded(|| tls.shutdown_write()),
        }
    }

    /// Whether the transport itself holds bytes that must reach the socket (never, for
    /// TCP: what the socket does not take stays in the connection's send queue).
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.wants_write(),
        }
    }

    /// Writes what the transport holds (see [`wants_write`](Transport::wants_write)):
    /// true once nothing is left.
    pub fn flush_held(&mut self) -> io::Result<bool> {
        match self {
            Transport::Tcp(_) => Ok(true),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => shielded(|| tls.flush_pending()),
        }
    }

    /// Whether input may wait that no readiness event will announce: a read that
    /// returned less than asked has emptied a TCP socket, but not necessarily a TLS one
    /// (its read fills a scratch buffer with ciphertext, and returns the plaintext).
    pub fn may_have_more(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.may_have_more(),
        }
    }

    /// Whether a TLS handshake is still under way (never, for TCP).
    pub fn tls_handshaking(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.is_handshaking(),
        }
    }

    pub fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Tcp(socket) => socket.register(registry, token, interest),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.socket().register(registry, token, interest),
        }
    }

    pub fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Tcp(socket) => socket.reregister(registry, token, interest),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.socket().reregister(registry, token, interest),
        }
    }

    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Transport::Tcp(socket) => socket.deregister(registry),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.socket().deregister(registry),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(socket) => socket.read(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => shielded(|| tls.read(buf)),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(socket) => socket.write(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => shielded(|| tls.write(buf)),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(socket) => socket.write_vectored(bufs),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => shielded(|| tls.write_vectored(bufs)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(socket) => socket.flush(),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.flush(),
        }
    }
}

/// Runs a TLS operation so that a panic inside the TLS library fails this connection
/// alone (an I/O error; the loop drops it) instead of the loop: its input is the
/// network's, and no bug in its handling may take the other connections down.
#[cfg(feature = "tls")]
fn shielded<T>(op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(op))
        .unwrap_or_else(|_| Err(io::Error::other("TLS: internal panic")))
}
