//! The read side of a TLS connection: ciphertext from the socket, through the session
//! (which answers the handshake on the way), to plaintext in the reader's buffer.
//! Records are read into one scratch buffer per loop thread; a connection keeps only
//! the tail of a record a read cut off, and plaintext that did not fit the reader.

use super::write::encode_into;
use super::{invalid, with_scratch, TlsStream};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use std::cell::RefCell;
use std::io::{self, Read};

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
}

/// Keeps decrypted records met outside a read for the next read (and says there is
/// more to read).
pub(super) fn stash(
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
