//! Sending: write-through to the transport, corking of small frames into one write
//! per event, queueing only what the socket did not take, and WRITABLE interest only
//! while something waits.

use super::{Conn, Io, Phase};
use crate::handler::{CloseReason, SendStatus};
use crate::outbox::SharedFrame;
use crate::proto::frame::{FrameHeader, Opcode, MAX_HEADER_LEN};
use mio::{Interest, Registry, Token};
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// Frames up to this size are corked (copied into the queue and written once per
/// event); larger ones are written straight from the caller's buffer.
const CORK_LIMIT: usize = 16 * 1024;

impl<S> Conn<S> {
    /// Sends one unfragmented frame, writing through to the socket when nothing is
    /// queued and queueing only what the socket did not take.
    pub fn send_frame(
        &mut self,
        io: &Io,
        token: Token,
        opcode: Opcode,
        payload: &[u8],
        max_queue: usize,
    ) -> SendStatus {
        let header = FrameHeader::server(opcode, payload.len());
        self.send_with_header(io, token, header, payload, max_queue)
    }

    /// Sends one frame with the given header (e.g. RSV1 for a compressed message).
    pub fn send_with_header(
        &mut self,
        io: &Io,
        token: Token,
        header: FrameHeader,
        payload: &[u8],
        max_queue: usize,
    ) -> SendStatus {
        let mut bytes = [0u8; MAX_HEADER_LEN];
        let header_len = header.encode(&mut bytes);
        let header = bytes;
        let total = header_len + payload.len();
        if self.out.pending() + total > max_queue && !self.make_room(io, token, total, max_queue) {
            return SendStatus::Refused;
        }
        self.send_parts(io, token, &header[..header_len], payload, true)
    }

    /// Sends a frame encoded once for many receivers (broadcast, publish). A receiver
    /// that is behind queues a reference to it, not a copy.
    pub fn send_shared(
        &mut self,
        io: &Io,
        token: Token,
        frame: &Arc<SharedFrame>,
        max_queue: usize,
    ) -> SendStatus {
        let bytes = frame.bytes();
        if self.out.pending() + bytes.len() > max_queue
            && !self.make_room(io, token, bytes.len(), max_queue)
        {
            return SendStatus::Refused;
        }
        if self.writable_interest && self.may_write() {
            self.out.push_shared(&io.meter, frame);
            return SendStatus::Queued(self.out.pending());
        }
        self.send_parts(io, token, bytes, &[], true)
    }

    /// Sends raw bytes (an HTTP response), bypassing the queue cap.
    ///
    /// Not corked: written straight through, so that the 101 of a connection that then
    /// stays idle does not leave it holding a queue buffer (frames the handler sends in
    /// `on_open` are corked after it, in order).
    pub fn send_bytes(&mut self, io: &Io, token: Token, bytes: &[u8]) -> SendStatus {
        self.send_parts(io, token, bytes, &[], false)
    }

    fn send_parts(
        &mut self,
        io: &Io,
        token: Token,
        first: &[u8],
        second: &[u8],
        cork: bool,
    ) -> SendStatus {
        if !self.may_write() {
            return SendStatus::Refused;
        }
        let total = first.len() + second.len();
        // A connection whose policy may drop queued messages keeps each whole one
        // apart (frames, not HTTP: those are not corked).
        let whole = cork && self.flow.whole_messages() && self.may_drop(first);
        if cork && total <= CORK_LIMIT && !self.writable_interest {
            // Cork: small frames wait in the queue until the loop settles this
            // connection, so the replies to many frames of one read leave in one write.
            if whole {
                self.out.push_whole(&io.meter, &[first, second]);
            } else {
                self.out.push(&io.meter, &[first, second]);
            }
            self.unflushed = true;
            return SendStatus::Written;
        }
        if self.unflushed {
            // Keep the order: what was corked goes before this larger frame.
            self.flush(io, token);
        }
        let mut written = 0;
        if self.out.pending() == 0 {
            // Write-through: header and payload in one syscall, no copy.
            while written < total {
                let result = if written < first.len() {
                    self.transport
                        .write_vectored(&[IoSlice::new(&first[written..]), IoSlice::new(second)])
                } else {
                    self.transport.write(&second[written - first.len()..])
                };
                match result {
                    Ok(0) => {
                        self.fail_io(io::ErrorKind::WriteZero.into());
                        return SendStatus::Refused;
                    }
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.fail_io(e);
                        return SendStatus::Refused;
                    }
                }
            }
        }
        if written == total {
            // A TLS transport took it all but the socket not all of its ciphertext.
            if self.transport.wants_write() {
                self.want_writable(&io.registry, token, true);
            }
            return SendStatus::Written;
        }
        if written == 0 && whole {
            self.out.push_whole(&io.meter, &[first, second]);
        } else if written < first.len() {
            self.out.push(&io.meter, &[&first[written..], second]);
        } else {
            self.out
                .push(&io.meter, &[&second[written - first.len()..]]);
        }
        self.want_writable(&io.registry, token, true);
        SendStatus::Queued(self.out.pending())
    }

    /// Writes queued bytes (after a WRITABLE event, or corked ones when the loop settles
    /// the connection); once they are out, a connection that is finishing half-closes.
    pub fn flush(&mut self, io: &Io, token: Token) {
        self.unflushed = false;
        if self.transport.wants_write() {
            // Ciphertext the socket refused before (TLS) goes first.
            match self.transport.flush_held() {
                Ok(true) if self.out.pending() == 0 => {
                    self.want_writable(&io.registry, token, false)
                }
                Ok(true) => {}
                Ok(false) => return self.want_writable(&io.registry, token, true),
                Err(e) => return self.fail_io(e),
            }
        }
        if self.out.pending() > 0 {
            match self.out.write_to(&mut self.transport) {
                // A transport that holds bytes of its own (TLS) still needs the socket.
                Ok(true) => {
                    let more = self.transport.wants_write();
                    self.want_writable(&io.registry, token, more)
                }
                Ok(false) => return self.want_writable(&io.registry, token, true),
                Err(e) => return self.fail_io(e),
            }
        }
        // Half-close: the peer sees EOF after our last bytes, and we read (and drop)
        // whatever it still sends until it closes too, so it never gets a reset.
        let half_close = match &mut self.phase {
            Phase::WebSocket { close, .. } => close.flushed(),
            Phase::Answered { draining, .. } if !*draining => {
                *draining = true;
                true
            }
            _ => false,
        };
        if half_close && self.transport.shutdown_write().is_err() {
            self.abort();
        } else if half_close && self.transport.wants_write() {
            // TLS: the close_notify waits for room; the half-close follows it.
            self.want_writable(&io.registry, token, true);
        }
    }

    /// After a read: bytes a TLS transport produced itself (its handshake) that the
    /// socket did not take need WRITABLE interest.
    pub fn after_read(&mut self, io: &Io, token: Token) {
        if self.transport.wants_write() && !self.writable_interest {
            self.want_writable(&io.registry, token, true);
        }
    }

    /// Whether input may wait that no readiness event will announce (TLS).
    pub fn read_may_have_more(&self) -> bool {
        self.transport.may_have_more()
    }

    /// Whether a TLS handshake is still under way.
    pub fn tls_handshaking(&self) -> bool {
        self.transport.tls_handshaking()
    }

    /// The socket failed: nothing more can be sent or received.
    pub fn fail_io(&mut self, error: io::Error) {
        log::debug!("{}: I/O error: {}", self.peer, error);
        self.abort();
        self.note_close_reason(CloseReason::Abnormal);
    }

    fn want_writable(&mut self, registry: &Registry, token: Token, writable: bool) {
        if self.writable_interest == writable {
            return;
        }
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match self.transport.reregister(registry, token, interest) {
            Ok(()) => self.writable_interest = writable,
            Err(e) => self.fail_io(e),
        }
    }
}

impl<S> Conn<S> {
    /// Whether the frame that starts with `frame` may be dropped whole from the queue
    /// by a queue policy: an unfragmented text or binary frame (never a control frame),
    /// and not one compressed with server context takeover, whose successors the peer
    /// can only inflate after it.
    fn may_drop(&self, frame: &[u8]) -> bool {
        let Some(&b0) = frame.first() else {
            return false;
        };
        let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
        let data = opcode == Opcode::Text as u8 || opcode == Opcode::Binary as u8;
        let chained = rsv1
            && self
                .deflate()
                .is_some_and(|d| !d.params.server_no_context_takeover);
        fin && data && !chained
    }
}
