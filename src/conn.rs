//! One connection: its socket, where it is in its life, and its outgoing bytes.
//!
//! ```text
//!  Handshake ──101──► Open ──close sent──► CloseSent ──peer's close──┐
//!      │               │                                             ▼
//!      └─HTTP answer─► └─peer's close / protocol error──────────► Finishing ──► (dropped)
//! ```
//!
//! `Finishing` flushes what is queued (a close frame or an HTTP response), then
//! half-closes the socket and reads until the peer's EOF, so the peer reads our last
//! bytes instead of a reset.

use crate::config::{Config, Timeouts};
use crate::handler::{CloseReason, SendStatus};
use crate::outbox::{Meter, Outbox, SharedFrame};
use crate::proto::close::encode_close_payload;
use crate::proto::deflate::{DeflateParams, Deflater};
use crate::proto::frame::{FrameHeader, Opcode, MAX_HEADER_LEN};
use crate::proto::handshake::HeadReader;
use crate::proto::{CloseCode, Receiver};
use crate::timer::{deadline_after, Millis, When};
use crate::transport::Transport;
use mio::{Interest, Registry, Token};
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::sync::Arc;

/// Frames up to this size are corked (copied into the queue and written once per
/// event); larger ones are written straight from the caller's buffer.
const CORK_LIMIT: usize = 16 * 1024;

/// What every connection's I/O goes through: the poller's registry (for WRITABLE
/// interest) and the loop-wide count of queued bytes.
pub(crate) struct Io {
    pub registry: Registry,
    pub meter: Meter,
}

/// What a connection is waiting for when its deadline comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The upgrade request to complete (`handshake_timeout`).
    Handshake,
    /// Any sign of life, after which a keepalive ping is sent (`idle_timeout`).
    Idle,
    /// An answer to our keepalive ping (`pong_timeout`).
    Pong,
    /// Room in a send queue that is over its cap (`send_stall_timeout`).
    SendStall,
    /// More of a message that is half received (`message_timeout`).
    MessageProgress,
    /// The peer's side of the close (`close_timeout`).
    Close,
}

/// permessage-deflate state of one connection.
#[derive(Debug)]
pub(crate) struct ConnDeflate {
    pub params: DeflateParams,
    /// Our compressor, kept between messages only with server context takeover;
    /// otherwise the loop's shared one is used.
    pub deflater: Option<Box<Deflater>>,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the HTTP upgrade request. A request that arrives in one read needs no
    /// storage; the start of one that does not waits in [`Extras::handshake`].
    Handshake,
    /// Exchanging messages.
    Open,
    /// We sent a close frame and read on until the peer's close arrives.
    CloseSent,
    /// Nothing more will be parsed: flush the queue, then shut down.
    Finishing,
    /// Our side is shut down; discard input until the peer's EOF.
    Draining,
    /// The socket is done with; the reactor removes the connection.
    Closed,
}

/// What only some connections have, or have only for a while: one pointer in every
/// connection instead of a field each.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// The start of an upgrade request that did not arrive in one read.
    pub handshake: Option<Handshake>,
    /// The subprotocol agreed at the upgrade.
    pub protocol: Option<Box<str>>,
    /// permessage-deflate, if negotiated.
    pub deflate: Option<ConnDeflate>,
    /// Topics this connection is subscribed to (so closing it can leave them).
    pub topics: Vec<Box<str>>,
    /// How the WebSocket ended, once it has; reported to the handler when set.
    pub close_reason: Option<CloseReason>,
}

impl Extras {
    fn is_empty(&self) -> bool {
        self.handshake.is_none()
            && self.protocol.is_none()
            && self.deflate.is_none()
            && self.topics.capacity() == 0
            && self.close_reason.is_none()
    }
}

/// A peer's address in 19 bytes instead of `SocketAddr`'s 32: every byte of a
/// connection counts once per connection. IPv6 flow info and scope id are not kept:
/// the address serves logs, `Handler::on_request` and `Ctx::peer_addr`, and the
/// handler is told so.
#[derive(Clone, Copy)]
pub(crate) struct PeerAddr {
    ip: [u8; 16],
    port: [u8; 2],
    v6: bool,
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> PeerAddr {
        let (ip, v6) = match addr.ip() {
            std::net::IpAddr::V4(ip) => (ip.to_ipv6_mapped().octets(), false),
            std::net::IpAddr::V6(ip) => (ip.octets(), true),
        };
        PeerAddr {
            ip,
            port: addr.port().to_ne_bytes(),
            v6,
        }
    }
}

impl PeerAddr {
    pub fn get(self) -> SocketAddr {
        let ip = std::net::Ipv6Addr::from(self.ip);
        let port = u16::from_ne_bytes(self.port);
        match ip.to_ipv4_mapped() {
            Some(v4) if !self.v6 => SocketAddr::new(v4.into(), port),
            _ => SocketAddr::new(ip.into(), port),
        }
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl std::fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// The start of an upgrade request that did not arrive in one read.
#[derive(Debug)]
pub(crate) struct Handshake {
    pub head: Vec<u8>,
    pub reader: HeadReader,
}

/// One client connection.
pub(crate) struct Conn<S> {
    pub transport: Transport,
    pub peer: PeerAddr,
    pub generation: u64,
    pub phase: Phase,
    pub rx: Receiver,
    pub out: Outbox,
    /// Whether WRITABLE interest is registered: the socket refused bytes that still
    /// wait in `out`.
    writable_interest: bool,
    /// Corked bytes wait in `out` for [`flush`](Conn::flush), which the reactor calls
    /// when it settles the connection at the end of the event.
    pub unflushed: bool,
    /// Reading stopped because the send queue is over the high-water mark.
    pub read_paused: bool,
    /// Whether this connection is counted in the loop's handshakes in progress.
    pub counted_as_handshake: bool,
    /// Whether the handler saw `on_open` (and so is owed an `on_close`).
    pub opened: bool,
    /// Rarely set things, boxed so that connections without them stay small.
    pub extras: Option<Box<Extras>>,
    /// The handler's own per-connection state.
    pub session: S,
    /// When the current timed wait began. The phase says which wait: the accept
    /// (handshake), our keepalive ping while its pong is awaited (open; `NONE` when no
    /// ping is out), the start of the close (closing phases). One field, as the waits
    /// never overlap.
    pub since: When,
    /// When the peer last sent anything (for keepalive).
    pub last_seen: Millis,
    /// Since when sends have been refused for a full queue.
    pub stalled_since: When,
    /// When the message being received last grew (or began): a half-received message
    /// that stops growing is closed after `message_timeout`.
    pub progress: When,
}

impl<S: Default> Conn<S> {
    pub fn new(
        transport: Transport,
        peer: SocketAddr,
        generation: u64,
        config: &Config,
        now: Millis,
    ) -> Conn<S> {
        Conn {
            transport,
            peer: PeerAddr::from(peer),
            generation,
            phase: Phase::Handshake,
            rx: {
                // The loop counts what receivers hold in its incoming budget, and sheds
                // their buffers when it runs short or a connection goes quiet.
                let mut rx = Receiver::new(config.max_message_size as u64);
                rx.keep_buffers(true);
                rx
            },
            out: Outbox::default(),
            writable_interest: false,
            unflushed: false,
            read_paused: false,
            counted_as_handshake: true,
            opened: false,
            extras: None,
            session: S::default(),
            since: When::at(now),
            last_seen: now,
            stalled_since: When::NONE,
            progress: When::NONE,
        }
    }
}

impl<S> Conn<S> {
    /// Bytes the socket has not taken yet: the backlog a slow reader causes. Small
    /// frames corked for the write at the end of the event are not a backlog.
    pub fn backlog(&self) -> usize {
        if self.writable_interest {
            self.out.pending()
        } else {
            0
        }
    }

    /// Bytes kept of an upgrade request that did not arrive in one read.
    pub fn head_bytes(&self) -> usize {
        self.extras
            .as_ref()
            .and_then(|e| e.handshake.as_ref())
            .map_or(0, |h| h.head.capacity())
    }

    pub fn protocol(&self) -> Option<&str> {
        self.extras.as_ref()?.protocol.as_deref()
    }

    pub fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Gives the extras back once nothing is left in them.
    pub fn shed_extras(&mut self) {
        if self.extras.as_ref().is_some_and(|e| e.is_empty()) {
            self.extras = None;
        }
    }

    pub fn deflate(&self) -> Option<&ConnDeflate> {
        self.extras.as_ref()?.deflate.as_ref()
    }

    /// Records how the WebSocket ended, unless that is known already.
    pub fn note_close_reason(&mut self, reason: CloseReason) {
        let extras = self.extras_mut();
        if extras.close_reason.is_none() {
            extras.close_reason = Some(reason);
        }
    }

    /// Records how the WebSocket ended, replacing what was known.
    pub fn set_close_reason(&mut self, reason: CloseReason) {
        self.extras_mut().close_reason = Some(reason);
    }

    pub fn take_close_reason(&mut self) -> Option<CloseReason> {
        self.extras.as_mut()?.close_reason.take()
    }

    /// Whether the close handshake (or a failure) has begun.
    pub fn is_closing(&self) -> bool {
        matches!(
            self.phase,
            Phase::CloseSent | Phase::Finishing | Phase::Draining
        )
    }

    /// The next moment something must happen on this connection if nothing else does,
    /// and what it waits for then.
    pub fn next_deadline(&self, timeouts: &Timeouts) -> Option<(Millis, Wait)> {
        let after = |start: When, timeout: Option<Millis>, wait: Wait| {
            Some((deadline_after(start.get()?, timeout?), wait))
        };
        match self.phase {
            Phase::Handshake => after(self.since, timeouts.handshake, Wait::Handshake),
            Phase::Open => {
                let keepalive = if self.since.is_some() {
                    after(self.since, timeouts.pong, Wait::Pong)
                } else {
                    after(When::at(self.last_seen), timeouts.idle, Wait::Idle)
                };
                let stall = after(self.stalled_since, timeouts.send_stall, Wait::SendStall);
                let message = if self.rx.is_mid_message() {
                    after(self.progress, timeouts.message, Wait::MessageProgress)
                } else {
                    None
                };
                [keepalive, stall, message]
                    .into_iter()
                    .flatten()
                    .min_by_key(|(at, _)| *at)
            }
            Phase::CloseSent | Phase::Finishing | Phase::Draining => {
                after(self.since, timeouts.close, Wait::Close)
            }
            Phase::Closed => None,
        }
    }

    /// Whether frames and messages may still be sent by the application.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

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
        if self.out.pending() + total > max_queue {
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
        if self.out.pending() + bytes.len() > max_queue {
            return SendStatus::Refused;
        }
        if self.writable_interest && !matches!(self.phase, Phase::Closed | Phase::Draining) {
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
        if matches!(self.phase, Phase::Closed | Phase::Draining) {
            return SendStatus::Refused;
        }
        let total = first.len() + second.len();
        if cork && total <= CORK_LIMIT && !self.writable_interest {
            // Cork: small frames wait in the queue until the loop settles this
            // connection, so the replies to many frames of one read leave in one write.
            self.out.push(&io.meter, &[first, second]);
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
            return SendStatus::Written;
        }
        if written < first.len() {
            self.out.push(&io.meter, &[&first[written..], second]);
        } else {
            self.out
                .push(&io.meter, &[&second[written - first.len()..]]);
        }
        self.want_writable(&io.registry, token, true);
        SendStatus::Queued(self.out.pending())
    }

    /// Sends a close frame with `code` and `reason` (cut to fit, see
    /// [`encode_close_payload`]).
    pub fn send_close(&mut self, io: &Io, token: Token, code: Option<CloseCode>, reason: &str) {
        let mut payload = [0u8; 125];
        let len = encode_close_payload(code, reason, &mut payload);
        // A close frame is never refused for the queue cap: it ends the queue's growth.
        let _ = self.send_frame(io, token, Opcode::Close, &payload[..len], usize::MAX);
    }

    /// Writes queued bytes (after a WRITABLE event, or corked ones when the loop settles
    /// the connection); moves `Finishing` on once empty.
    pub fn flush(&mut self, io: &Io, token: Token) {
        self.unflushed = false;
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
        if matches!(self.phase, Phase::Finishing) {
            // Half-close: the peer sees EOF after our last bytes, and we read (and drop)
            // whatever it still sends until it closes too, so it never gets a reset.
            match self.transport.shutdown_write() {
                Ok(()) => self.phase = Phase::Draining,
                Err(_) => self.phase = Phase::Closed,
            }
        }
    }

    /// Stops parsing input; once the queue is flushed the connection shuts down.
    pub fn finish(&mut self, io: &Io, token: Token) {
        self.enter_closing(Phase::Finishing);
        self.flush(io, token);
    }

    /// The socket failed: nothing more can be sent or received.
    pub fn fail_io(&mut self, error: io::Error) {
        log::debug!("{}: I/O error: {}", self.peer, error);
        self.phase = Phase::Closed;
        self.note_close_reason(CloseReason::Abnormal);
    }

    /// Moves to a closing phase; the close timeout runs from the first of them (the
    /// reactor stamps `since` when it settles the connection).
    pub fn enter_closing(&mut self, phase: Phase) {
        if !self.is_closing() {
            self.since = When::NONE;
        }
        self.phase = phase;
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

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::TcpStream;

    #[test]
    fn a_peer_address_survives_compaction() {
        for text in [
            "127.0.0.1:9998",
            "[::1]:443",
            "[::ffff:10.0.0.1]:80",
            "0.0.0.0:0",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(PeerAddr::from(addr).get(), addr, "{text}");
            assert_eq!(PeerAddr::from(addr).to_string(), addr.to_string());
        }
        assert_eq!(std::mem::size_of::<PeerAddr>(), 19);
    }

    /// Every open connection costs this much of the loop's memory (plus its 12-byte
    /// deadline entry and the kernel's socket buffers). The budget is 256 bytes of RSS
    /// per idle connection, measured by `make bench` at about 229: keep this at 200.
    #[test]
    fn an_idle_connection_is_small() {
        // mio's TcpStream carries a selector id in debug builds only (one file
        // descriptor in release builds); allow for it, padded to the struct's alignment.
        let debug_extra = std::mem::size_of::<TcpStream>() - std::mem::size_of::<i32>();
        let allowance = debug_extra.next_multiple_of(std::mem::align_of::<Conn<()>>());
        let size = std::mem::size_of::<Conn<()>>();
        eprintln!("size_of::<Conn<()>>() = {size} ({debug_extra} of it debug-only)");
        assert!(size <= 200 + allowance, "Conn<()> grew to {size} bytes");
    }
}
