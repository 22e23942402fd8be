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
//! **Crypto provider: ring.** Its build is a little C and assembly (about 20 s on the
//! two-core machine this was written on); aws-lc-rs (rustls' default) compiles all of
//! AWS-LC, minutes there, and wants a larger toolchain. Both are fast for AES-GCM and
//! ChaCha20 on x86-64.

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;
use std::cell::RefCell;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

mod config;
#[cfg(feature = "signals")]
pub use config::reload_on_sighup;
pub use config::{TlsConfig, TlsError};

/// Plaintext encrypted per write: four full records and a little more, so that a 64 KiB
/// payload with its frame header (up to 14 bytes) leaves in one write rather than a
/// second, tiny one. What the socket does not take of it stays with the connection, so
/// this is also the most ciphertext one connection keeps outside its send queue.
pub const PLAIN_CHUNK: usize = (64 << 10) + 64;

/// The receive scratch: room for several full records (16 KiB of plaintext + 2 KiB of
/// expansion + header each), so one read brings in a good batch.
const CIPHER_IN: usize = 80 << 10;

/// A fatal `decode_error` alert in a plaintext record (TLS 1.2 record version, which
/// TLS 1.3 uses on the wire too).
const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];

/// The most of an unfinished client handshake flight a connection keeps: a ClientHello
/// is a few KiB (post-quantum key shares included), and there are no client
/// certificates. Bounds what a handshaking connection can make us hold.
const MAX_HANDSHAKE_HELD: usize = 16 << 10;

/// The longest TLS record's plaintext: a read into less room than this may leave part of
/// a record's plaintext to keep for the next read.
const MAX_RECORD_PLAIN: usize = 16 << 10;

thread_local! {
    /// Ciphertext read from a socket, while it is decrypted (one per loop thread).
    static SCRATCH_IN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Ciphertext encrypted for a socket, while it is written.
    static SCRATCH_OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The slices of a vectored write gathered for one encryption.
    static SCRATCH_GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

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

/// Writes `out[*at..]` to the socket until it is all out or the socket is full; true once
/// nothing is left (and then the buffer is given back).
fn write_pending(socket: &mut TcpStream, out: &mut Vec<u8>, at: &mut usize) -> io::Result<bool> {
    while *at < out.len() {
        match socket.write(&out[*at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    *out = Vec::new();
    *at = 0;
    Ok(true)
}

/// Appends what an `EncodeTlsData` state holds (a handshake message, an alert) to `out`.
fn encode_into(
    state: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    out.resize(start + 1024, 0);
    loop {
        match state.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) => out.resize(start + e.required_size, 0),
            Err(e) => {
                out.truncate(start);
                return Err(rustls::Error::General(e.to_string()));
            }
        }
    }
}

/// Encrypts `plain` into the thread's scratch buffer and writes it; what the socket does
/// not take is appended to `cipher_out` (after anything already waiting there).
fn encrypt_out(
    state: &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
    plain: &[u8],
    socket: &mut TcpStream,
    cipher_out: &mut Vec<u8>,
    out_at: &mut usize,
) -> io::Result<usize> {
    with_scratch(&SCRATCH_OUT, PLAIN_CHUNK + 1024, |scratch| {
        let n = loop {
            match state.encrypt(plain, scratch) {
                Ok(n) => break n,
                Err(EncryptError::InsufficientSize(e)) => scratch.resize(e.required_size, 0),
                Err(e) => return Err(io::Error::other(format!("TLS encrypt: {e}"))),
            }
        };
        // Behind bytes still waiting: in order, after them.
        let mut sent = 0;
        while sent < n && cipher_out.is_empty() {
            match socket.write(&scratch[sent..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if sent < n {
            let behind = !cipher_out.is_empty();
            if !behind {
                *out_at = 0;
            }
            cipher_out.extend_from_slice(&scratch[sent..n]);
            if behind {
                // Handshake bytes (tickets) went first: try both now rather than at the
                // next WRITABLE.
                write_pending(socket, cipher_out, out_at)?;
            }
        }
        Ok(plain.len())
    })
}

/// Keeps decrypted records met outside a read for the next read (and says there is
/// more to read).
fn stash(
    traffic: &mut rustls::unbuffered::ReadTraffic<'_, '_, rustls::server::ServerConnectionData>,
    plain_in: &mut Vec<u8>,
    more: &mut bool,
) -> io::Result<()> {
    while let Some(record) = traffic.next_record() {
        let record = record.map_err(|e| invalid(e, false))?;
        plain_in.extend_from_slice(record.payload);
        *more = true;
    }
    Ok(())
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

    /// Writes waiting ciphertext; true once none is left (and an owed half-close done).
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        if !write_pending(&mut self.socket, &mut self.cipher_out, &mut self.out_at)? {
            return Ok(false);
        }
        if self.shutdown_owed {
            self.shutdown_owed = false;
            self.socket.shutdown(Shutdown::Write)?;
        }
        Ok(true)
    }

    /// Sends close_notify, then half-closes the socket once it is out.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if !self.handshaking {
            let _ = self.drive(|state, _, out, _| {
                let start = out.len();
                out.resize(start + 64, 0);
                match state.queue_close_notify(&mut out[start..]) {
                    Ok(n) => out.truncate(start + n),
                    Err(_) => out.truncate(start),
                }
                Ok(0)
            });
        }
        self.shutdown_owed = true;
        self.flush_pending().map(|_| ())
    }

    /// Turns the session until it can encrypt, encoding and sending what the handshake
    /// has to say on the way, then runs `f` with the encrypting state and the way out
    /// (the socket, and `cipher_out` from `out_at` on).
    fn drive(
        &mut self,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut TcpStream,
            &mut Vec<u8>,
            &mut usize,
        ) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut f = Some(f);
        for _ in 0..16 {
            // rustls' deframer may point into what we hold of the input: it must see
            // that again (an empty slice would be out of its bounds), and its discard
            // applied.
            let mut held = std::mem::take(&mut self.cipher_in);
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut held);
            let state = state.map_err(|e| invalid(e, self.handshaking));
            let result = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    stash(&mut traffic, &mut self.plain_in, &mut self.more)
                }
                Ok(ConnectionState::EncodeTlsData(mut state)) => {
                    encode_into(&mut state, &mut self.cipher_out)
                        .map_err(|e| invalid(e, self.handshaking))
                }
                Ok(ConnectionState::TransmitTlsData(state)) => {
                    // Ours to send, in order, from cipher_out.
                    state.done();
                    Ok(())
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(())
                }
                Ok(ConnectionState::WriteTraffic(mut state)) => {
                    let f = f.take().expect("runs once");
                    let result = f(
                        &mut state,
                        &mut self.socket,
                        &mut self.cipher_out,
                        &mut self.out_at,
                    );
                    held.drain(..discard);
                    self.cipher_in = held;
                    return result;
                }
                Ok(ConnectionState::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
                Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
            };
            held.drain(..discard);
            self.cipher_in = held;
            result?;
        }
        Err(io::Error::other("TLS session made no progress"))
    }

    /// Encrypts up to [`PLAIN_CHUNK`] of `plain` and writes it; what the socket does not
    /// take is kept (and `wants_write` says so). Refuses with `WouldBlock` while earlier
    /// ciphertext still waits.
    fn write_plain(&mut self, plain: &[u8]) -> io::Result<usize> {
        if !self.flush_pending()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let plain = &plain[..plain.len().min(PLAIN_CHUNK)];
        if plain.is_empty() {
            return Ok(0);
        }
        self.drive(|state, socket, cipher_out, out_at| {
            encrypt_out(state, plain, socket, cipher_out, out_at)
        })
    }

    /// Reads ciphertext, runs it through the session (answering the handshake as it goes)
    /// and returns the plaintext it carried. `WouldBlock` once the socket is empty with no
    /// plaintext to give; 0 at the peer's close_notify or EOF.
    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.plain_at < self.plain_in.len() {
            let n = (self.plain_in.len() - self.plain_at).min(buf.len());
            buf[..n].copy_from_slice(&self.plain_in[self.plain_at..self.plain_at + n]);
            self.plain_at += n;
            if self.plain_at == self.plain_in.len() {
                self.plain_in = Vec::new();
                self.plain_at = 0;
            }
            // Records may wait behind it, undecrypted: read again before waiting for
            // the socket (a short read of ours says nothing about it).
            self.more = !self.cipher_in.is_empty();
            return Ok(n);
        }
        self.more = false;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.peer_closed {
                return Ok(0);
            }
            let (written, progress) = with_scratch(&SCRATCH_IN, CIPHER_IN, |scratch| {
                let carried = self.cipher_in.len();
                scratch[..carried].copy_from_slice(&self.cipher_in);
                let room = scratch.len() - carried;
                // Defensive: each pass consumes a record when it has one, so the carried
                // bytes stay a record short of the scratch; but a read into no room
                // would look like EOF.
                let (got, eof) = if room == 0 {
                    (0, false)
                } else {
                    loop {
                        match self.socket.read(&mut scratch[carried..]) {
                            Ok(0) => break (0, true),
                            Ok(n) => break (n, false),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break (0, false),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                };
                self.more = got == room;
                if got == 0 && !eof && carried == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let filled = carried + got;
                let (written, consumed) = self.process(&mut scratch[..filled], buf)?;
                if consumed < filled {
                    if self.handshaking && filled - consumed > MAX_HANDSHAKE_HELD {
                        // A client's handshake flight (no client certificates) is a few
                        // KiB; more waiting for its end is an attack on our memory.
                        let error = rustls::Error::General("client handshake too large".into());
                        return Err(invalid(error, true));
                    }
                    self.cipher_in = scratch[consumed..filled].to_vec();
                } else if carried > 0 {
                    self.cipher_in = Vec::new();
                }
                if eof && written > 0 && !self.cipher_in.is_empty() {
                    // Records left for a full reader come first; the socket says EOF
                    // again on the next read.
                    self.more = true;
                } else if eof {
                    // The end; a record cut short by it is dropped.
                    self.peer_closed = true;
                }
                Ok((written, got > 0))
            })?;
            if written > 0 || self.peer_closed {
                // Plaintext, or the end (0) once nothing is left to give.
                return Ok(written);
            }
            if !progress || !self.more {
                // The socket is empty (a short read) and the handshake waits for the peer.
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    /// Runs `input` through the session, writing plaintext to `out`: how much was
    /// written, and how much input was consumed.
    fn process(&mut self, input: &mut [u8], out: &mut [u8]) -> io::Result<(usize, usize)> {
        let (mut at, mut written) = (0, 0);
        loop {
            let handshaking = self.handshaking;
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut input[at..]);
            let state = match state {
                Ok(state) => state,
                Err(error) => {
                    self.send_alert(&mut input[at + discard..]);
                    return Err(invalid(error, handshaking));
                }
            };
            let mut stop = false;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(|e| invalid(e, false))?;
                        let payload = record.payload;
                        let n = payload.len().min(out.len() - written);
                        out[written..written + n].copy_from_slice(&payload[..n]);
                        written += n;
                        if n < payload.len() {
                            self.plain_in = payload[n..].to_vec();
                            self.plain_at = 0;
                            stop = true;
                            break;
                        }
                    }
                    // Another record's plaintext may not fit: leave it for the next read,
                    // which no readiness event will announce.
                    if out.len() - written < MAX_RECORD_PLAIN.min(out.len()) {
                        stop = true;
                        self.more = true;
                    }
                }
                ConnectionState::EncodeTlsData(mut state) => {
                    self.spoke = true;
                    encode_into(&mut state, &mut self.cipher_out)
                        .map_err(|e| invalid(e, handshaking))?;
                }
                ConnectionState::TransmitTlsData(state) => {
                    // Sent in order from cipher_out; what the socket does not take now
                    // goes on WRITABLE.
                    state.done();
                    self.flush_pending()?;
                }
                ConnectionState::WriteTraffic(_) => {
                    self.handshaking = false;
                    stop = true;
                }
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    stop = true;
                }
                _ => {
                    let error = rustls::Error::General("unexpected TLS state".into());
                    return Err(invalid(error, handshaking));
                }
            }
            at += discard;
            // Asked of rustls, not inferred from the states we met: a small reader can
            // stop at the first application data, before a WriteTraffic shows.
            self.handshaking = self.conn.is_handshaking();
            // Plaintext given and every byte read taken: one more turn of the session
            // would only report the state it is in (WriteTraffic), a third of the
            // session work of a small echo. Anything it holds for the peer meanwhile (a
            // KeyUpdate's answer) goes out at our next write, which turns the session
            // first, and TLS 1.3 asks for it no sooner than our next application data.
            let drained = written > 0 && at == input.len() && !self.handshaking;
            if stop || drained {
                return Ok((written, at));
            }
        }
    }

    /// Sends the alert rustls queued for the error it just reported, if any (best effort:
    /// the connection is dropped next). Asked once only: the call after would run the
    /// rest of the bad input through again, and rustls asserts it never sends a second
    /// fatal alert. `rest` is the input after the error's discard, which rustls' deframer
    /// may still point into.
    fn send_alert(&mut self, rest: &mut [u8]) {
        let status = self.conn.process_tls_records(rest);
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut state)) => {
                let _ = encode_into(&mut state, &mut self.cipher_out);
            }
            // Some errors (a ClientHello that does not parse) leave no alert queued. Before
            // we said anything, a plaintext fatal decode_error is what the peer expects.
            _ if !self.spoke => self.cipher_out.extend_from_slice(&DECODE_ERROR_ALERT),
            _ => {}
        }
        let _ = self.flush_pending();
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_plain(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_plain(buf)
    }

    /// The slices are gathered into one encryption (a frame header and its payload make
    /// one record, not two).
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let nonempty = bufs.iter().filter(|b| !b.is_empty()).count();
        if nonempty <= 1 {
            let first = bufs.iter().find(|b| !b.is_empty());
            return self.write_plain(first.map_or(&[][..], |b| &b[..]));
        }
        SCRATCH_GATHER.with(|cell| {
            let mut gathered = cell.borrow_mut();
            gathered.clear();
            for buf in bufs {
                let room = PLAIN_CHUNK - gathered.len();
                if room == 0 {
                    break;
                }
                gathered.extend_from_slice(&buf[..buf.len().min(room)]);
            }
            self.write_plain(&gathered)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.flush_pending()? {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}
