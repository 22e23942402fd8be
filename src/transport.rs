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
}

impl Transport {
    /// Half-closes: the peer reads EOF after our last bytes (the server closes TCP
    /// first, RFC 6455 §7.1.1), while we go on reading until its EOF.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(socket) => socket.shutdown(Shutdown::Write),
        }
    }

    /// Whether the transport itself holds bytes that must reach the socket (never, for
    /// TCP: what the socket does not take stays in the connection's send queue).
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
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
        }
    }

    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Transport::Tcp(socket) => socket.deregister(registry),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(socket) => socket.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(socket) => socket.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(socket) => socket.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(socket) => socket.flush(),
        }
    }
}
