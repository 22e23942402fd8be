//! wss://: TLS on rustls (feature `tls`), as a second kind of transport (the seam in
//! `src/transport.rs`).
//!
//! ```no_run
//! use wsreactor::tls::TlsConfig;
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
//! let tls = TlsConfig::from_pem_files("cert.pem".as_ref(), "key.pem".as_ref())?;
//! let mut server = Server::bind("127.0.0.1:9443".parse()?, Config::default(), Echo)?
//!     .with_tls(tls.clone());
//! // Later, from any thread: new connections get the new certificate.
//! tls.reload_pem_files("cert.pem".as_ref(), "key.pem".as_ref())?;
//! server.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Why rustls' unbuffered API.** A buffered `rustls::ServerConnection` keeps, per
//! connection, a 4 KiB receive buffer for as long as the connection lives (its deframer
//! only shrinks to one read's worth), besides its plaintext and ciphertext queues. An idle
//! connection should hold its keys and nothing else, so this transport drives
//! `UnbufferedServerConnection`, which keeps no buffers: ciphertext is read into a
//! thread-wide scratch buffer (one per loop thread), decrypted straight into the loop's
//! read buffer, and encrypted into a second scratch buffer on the way out. A connection
//! keeps bytes of its own only while it must: the tail of a record cut by a read, and
//! ciphertext the socket did not take (at most one write's worth, [`PLAIN_CHUNK`] plus
//! record overhead). Both are given back once empty.
//!
//! The rooms: this file holds a connection's state and what both directions share;
//! `read.rs` is ciphertext in, plaintext out (and the handshake it drives); `write.rs`
//! is plaintext in, ciphertext out; `config.rs` loads and reloads the certificate.
//!
//! **Crypto provider: ring.** Its build is a little C and assembly (about 20 s on the
//! two-core machine this was written on); aws-lc-rs (rustls' default) compiles all of
//! AWS-LC, minutes there, and wants a larger toolchain. Both are fast for AES-GCM and
//! ChaCha20 on x86-64.

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::sync::Arc;

mod config;
mod read;
mod write;

#[cfg(feature = "signals")]
pub use config::reload_on_sighup;
pub use config::{TlsConfig, TlsError};

/// Plaintext encrypted per write: four full records and a little more, so that a 64 KiB
/// payload with its frame header (up to 14 bytes) leaves in one write rather than a
/// second, tiny one. What the socket does not take of it stays with the connection, so
/// this is also the most ciphertext one connection keeps outside its send queue.
pub const PLAIN_CHUNK: usize = (64 << 10) + 64;

/// The error a TLS transport fails with: what rustls refused, and whether the
/// handshake had completed (for [`Stats::tls_handshake_failures`](crate::Stats)).
#[derive(Debug)]
pub(crate) struct TlsFailure {
    pub during_handshake: bool,
    error: rustls::Error,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = if self.during_handshake {
            "TLS handshake"
        } else {
            "TLS"
        };
        write!(f, "{when}: {}", self.error)
    }
}

impl std::error::Error for TlsFailure {}

/// Whether an I/O error is a TLS handshake that failed.
pub(crate) fn is_handshake_failure(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsFailure>())
        .is_some_and(|f| f.during_handshake)
}

/// One TLS connection's state: rustls' session (keys, handshake) and only the bytes that
/// could not be dealt with at once.
pub(crate) struct TlsStream {
    socket: TcpStream,
    conn: UnbufferedServerConnection,
    /// The start of a record a read cut off, kept for the next read.
    cipher_in: Vec<u8>,
    /// Plaintext of a record that did not fit the reader's buffer, from `plain_at` on.
    plain_in: Vec<u8>,
    plain_at: usize,
    /// Ciphertext the socket has not taken, from `out_at` on.
    cipher_out: Vec<u8>,
    out_at: usize,
    handshaking: bool,
    /// We have sent the peer something (our first handshake flight, at least).
    spoke: bool,
    /// The peer sent close_notify (or its EOF came): reads return 0.
    peer_closed: bool,
    /// `shutdown_write` was asked while ciphertext waited: done once it is out.
    shutdown_owed: bool,
    /// The last socket read filled the scratch: the socket may hold more.
    more: bool,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("socket", &self.socket)
            .field("handshaking", &self.handshaking)
            .finish_non_exhaustive()
    }
}

fn invalid(error: rustls::Error, during_handshake: bool) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        TlsFailure {
            during_handshake,
            error,
        },
    )
}

fn with_scratch<T>(
    scratch: &'static std::thread::LocalKey<RefCell<Vec<u8>>>,
    size: usize,
    f: impl FnOnce(&mut Vec<u8>) -> T,
) -> T {
    scratch.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < size {
            buf.resize(size, 0);
        }
        f(&mut buf)
    })
}

impl TlsStream {
    pub fn new(socket: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(|e| invalid(e, true))?;
        Ok(TlsStream {
            socket,
            conn,
            cipher_in: Vec::new(),
            plain_in: Vec::new(),
            plain_at: 0,
            cipher_out: Vec::new(),
            out_at: 0,
            handshaking: true,
            spoke: false,
            peer_closed: false,
            shutdown_owed: false,
            more: false,
        })
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.socket
    }

    pub fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    /// Whether input may be waiting that no new readiness event will announce.
    pub fn may_have_more(&self) -> bool {
        self.more || self.plain_at < self.plain_in.len()
    }

    /// Whether ciphertext waits for the socket.
    pub fn wants_write(&self) -> bool {
        self.out_at < self.cipher_out.len()
    }
}
