//! The write side of a TLS connection: plaintext from the send queue, encrypted into a
//! scratch buffer per loop thread and written; the session is turned first until it
//! can encrypt (its handshake messages and alerts go out on the way). A connection
//! keeps only the ciphertext the socket did not take.

use super::read::stash;
use super::{invalid, with_scratch, TlsStream, PLAIN_CHUNK};
use mio::net::TcpStream;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::cell::RefCell;
use std::io::{self, IoSlice, Write};
use std::net::Shutdown;

thread_local! {
    /// Ciphertext encrypted for a socket, while it is written (one per loop thread).
    static SCRATCH_OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The slices of a vectored write gathered for one encryption.
    static SCRATCH_GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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
pub(super) fn encode_into(
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

impl TlsStream {
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
