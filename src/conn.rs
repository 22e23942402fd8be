//! One connection: its transport, where it is in its life, and its outgoing bytes.
//!
//! ```text
//!  Handshake ──101──► WebSocket: Open ──our close──► CloseSent ──peer's close──┐
//!      │                          │                                           ▼
//!      │                          └──peer's close / failure──────────────► Flushing
//!      │                                                                      │
//!      └──HTTP answer──► Answered (flush) ──────────────────────────────► half-close,
//!                                                                   drain to EOF ──► Closed
//! ```
//!
//! The WebSocket's close handshake is the sans-I/O [`CloseHandshake`] and its
//! keepalive decisions the sans-I/O [`Keepalive`]; this file does their I/O: it
//! writes the frames they ask for and half-closes the transport when they say so.
//! Every transition is a method here, stamped with the loop's time, so each wait
//! (handshake, keepalive, close) carries its own start: the loop asks, it does not poke.
//! Flushing ends in a half-close: the peer reads our last bytes, then EOF, instead of a
//! reset.
//!
//! This file keeps the connection itself: its phases, the transitions between them,
//! and what only some connections have ([`Extras`]). Its rooms: `send` writes
//! (write-through, corking, the queue, WRITABLE interest); `flow` rules the queue's
//! cap and reading (the queue policy, pausing for backpressure and resuming, the
//! send stall, the relay that reads on, a drain owed); `deadline` says what the
//! connection waits for and when; `peer` keeps the peer's address small.

use crate::config::Config;
use crate::handler::CloseReason;
use crate::outbox::{Meter, Outbox};
use crate::proto::closing::CloseState;
use crate::proto::deflate::{DeflateParams, Deflater};
use crate::proto::frame::Opcode;
use crate::proto::frame::MAX_CONTROL_PAYLOAD;
use crate::proto::handshake::HeadReader;
use crate::proto::{CloseCode, Receiver};
use crate::proto::{CloseFrame, CloseHandshake, Keepalive, ProtocolError};
use crate::timer::{Millis, When};
use crate::transport::Transport;

mod deadline;
mod flow;
mod peer;
mod send;

pub(crate) use deadline::Wait;
pub(crate) use flow::low_water;
pub use flow::QueuePolicy;
pub(crate) use flow::RELAY_PATIENCE;
use mio::{Registry, Token};
pub(crate) use peer::PeerAddr;
use std::io::{self, Read};
use std::net::SocketAddr;

/// What every connection's I/O goes through: the poller's registry (for WRITABLE
/// interest) and the loop-wide count of queued bytes.
pub(crate) struct Io {
    pub registry: Registry,
    pub meter: Meter,
}

/// permessage-deflate state of one connection.
#[derive(Debug)]
pub(crate) struct ConnDeflate {
    pub params: DeflateParams,
    /// Our compressor, kept between messages only with server context takeover;
    /// otherwise the loop's shared one is used.
    pub deflater: Option<Box<Deflater>>,
}

/// Where a connection is in its life, with the moment its current wait began.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading the HTTP upgrade request, since the accept (`handshake_timeout`). A
    /// request that arrives in one read needs no storage; the start of one that does
    /// not waits in [`Extras::handshake`].
    Handshake { accepted: Millis },
    /// An HTTP answer (a refusal, a page) is queued: flush it, half-close, then read
    /// until the peer's EOF (`close_timeout` from `since`).
    Answered { since: Millis, draining: bool },
    /// The WebSocket, where its close handshake stands, and when the close began.
    WebSocket {
        close: CloseHandshake,
        closing_since: When,
    },
    /// Done with; the loop removes the connection.
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
    /// A message sent in parts is open (`Some(true)` for text): no other message
    /// may start until it is finished. Here rather than in `Conn`, which has no
    /// byte to spare, as only connections that stream pay for it.
    pub sending_part: Option<bool>,
    /// The message being relayed (see [`Conn::is_relaying`]) is read on whatever its
    /// echo's queue holds: the peer did not read while we waited.
    pub relay_unpaused: bool,
}

impl Extras {
    fn is_empty(&self) -> bool {
        self.handshake.is_none()
            && self.protocol.is_none()
            && self.deflate.is_none()
            && self.topics.capacity() == 0
            && self.close_reason.is_none()
            && self.sending_part.is_none()
            && !self.relay_unpaused
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
    transport: Transport,
    pub peer: PeerAddr,
    pub generation: u64,
    phase: Phase,
    pub rx: Receiver,
    pub out: Outbox,
    /// Whether WRITABLE interest is registered: the socket refused bytes that still
    /// wait in `out`.
    writable_interest: bool,
    /// Corked bytes wait in `out` for [`flush`](Conn::flush), which the reactor calls
    /// when it settles the connection at the end of the event.
    unflushed: bool,
    /// Reading paused for backpressure, a drain owed to the handler, the queue policy.
    flow: flow::Flow,
    /// The round trip of the last keepalive ping that was answered, in µs (at least
    /// 1, saturating); 0 until one is.
    rtt_micros: u32,
    /// Whether this connection is counted in the loop's handshakes in progress.
    counted_as_handshake: bool,
    /// Rarely set things, boxed so that connections without them stay small.
    pub extras: Option<Box<Extras>>,
    /// The handler's own per-connection state: set when the WebSocket opens, taken
    /// for `on_close`. So it is also the flag "the handler saw `on_open` and is still
    /// owed its `on_close`", which a `bool` used to be: the `Option` costs nothing
    /// for `()` (its tag took the bool's byte) or for a type with a niche (a `Box`,
    /// a `String`, an enum).
    pub session: Option<S>,
    /// When the peer was last heard from, or our ping went out.
    keepalive: Keepalive,
    /// Since when sends have been refused for a full queue.
    stalled_since: When,
    /// When the message being received last grew (or began): a half-received message
    /// that stops growing is closed after `message_timeout`.
    progress: When,
}

impl<S> Conn<S> {
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
            phase: Phase::Handshake { accepted: now },
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
            flow: flow::Flow::default(),
            rtt_micros: 0,
            counted_as_handshake: true,
            extras: None,
            session: None,
            keepalive: Keepalive::new(now),
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

    /// Still reading the upgrade request.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshake { .. })
    }

    /// Whether frames and messages may still be sent by the application.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::WebSocket { close, .. } if close.may_send())
    }

    /// Whether the frames the peer sends are still parsed (open, or our close sent and
    /// the peer's awaited).
    pub fn parses_frames(&self) -> bool {
        matches!(self.phase, Phase::WebSocket { close, .. } if close.parses_frames())
    }

    /// Whether the connection is done with and can be removed. (A WebSocket whose
    /// close handshake reaches its end, by EOF or abort, becomes `Phase::Closed`.)
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether bytes may still be written (not after the half-close).
    fn may_write(&self) -> bool {
        match self.phase {
            Phase::Closed | Phase::Answered { draining: true, .. } => false,
            Phase::WebSocket { close, .. } => matches!(
                close.state(),
                CloseState::Open | CloseState::CloseSent | CloseState::Flushing
            ),
            _ => true,
        }
    }

    /// The session of a WebSocket the handler was told of and owes `on_close`, now
    /// that it no longer parses frames: once, so `on_close` is called once.
    pub fn take_ended(&mut self) -> Option<S> {
        if self.parses_frames() {
            return None;
        }
        self.session.take()
    }

    /// Whether this connection still counted as a handshake in progress and has now
    /// left the handshake: true once.
    pub fn take_left_handshake(&mut self) -> bool {
        let left = self.counted_as_handshake && !self.is_handshaking();
        if left {
            self.counted_as_handshake = false;
        }
        left
    }

    /// Reads what the transport has into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.transport.read(buf)
    }

    /// Takes the connection out of the poller (it is being removed).
    pub fn deregister(&mut self, registry: &Registry) {
        let _ = self.transport.deregister(registry);
    }

    /// Whether sends were corked and wait for [`flush`](Self::flush).
    pub fn is_unflushed(&self) -> bool {
        self.unflushed
    }

    /// The upgrade went through: the WebSocket is open with `session`, and the
    /// handler will be told.
    pub fn open(&mut self, now: Millis, session: S) {
        if self.is_handshaking() {
            self.phase = Phase::WebSocket {
                close: CloseHandshake::new(),
                closing_since: When::NONE,
            };
            self.keepalive = Keepalive::new(now);
            self.session = Some(session);
        }
    }

    /// Answers the request with an HTTP response (a refusal, a page) and ends the
    /// connection after it: flush, half-close, drain.
    pub fn answer(&mut self, io: &Io, token: Token, response: &[u8], now: Millis) {
        let _ = self.send_bytes(io, token, response);
        if self.is_handshaking() {
            self.phase = Phase::Answered {
                since: now,
                draining: false,
            };
        }
        self.flush(io, token);
    }

    /// The peer sent something: it is alive (this answers a keepalive ping too).
    pub fn heard(&mut self, now: Millis) {
        self.keepalive.heard(now);
    }

    /// Sends a keepalive ping stamped with `micros`, the loop clock's microseconds
    /// read just before it goes out (its pong gives [`rtt`](Self::rtt)).
    pub fn ping(&mut self, io: &Io, token: Token, now: Millis, micros: u64) {
        let payload = self.keepalive.stamp(micros);
        let _ = self.send_frame(io, token, Opcode::Ping, &payload, usize::MAX);
        self.keepalive.ping_sent(now);
    }

    /// A pong arrived at `micros`: if it echoes our latest keepalive ping, its round
    /// trip becomes this connection's [`rtt`](Self::rtt), and is returned (µs).
    pub fn pong(&mut self, payload: &[u8], micros: u64) -> Option<u64> {
        let rtt = self.keepalive.pong(payload, micros)?;
        self.rtt_micros = rtt.clamp(1, u32::MAX as u64) as u32;
        Some(rtt)
    }

    /// The round trip of the last keepalive ping that was answered, in µs.
    pub fn rtt(&self) -> Option<u32> {
        (self.rtt_micros != 0).then_some(self.rtt_micros)
    }

    /// Starts the close handshake from our side with `code` and `reason`; a no-op
    /// unless open.
    pub fn close(&mut self, io: &Io, token: Token, code: CloseCode, reason: &str, now: Millis) {
        if self.close_step(io, token, |close, out| close.close(code, reason, out)) {
            self.closing_began(now);
        }
    }

    /// Fails the connection (RFC 6455 §7.1.7): a close frame with the error's code if
    /// ours is not out yet, then no more parsing; flushed and half-closed.
    pub fn fail(&mut self, io: &Io, token: Token, error: ProtocolError, now: Millis) {
        self.close_step(io, token, |close, out| close.fail(error, out));
        self.closing_began(now);
        self.flush(io, token);
    }

    /// The peer's close arrived: echo its code if ours is not out yet (§5.5.1); either
    /// way the handshake is complete, and the server closes TCP first (§7.1.1).
    pub fn receive_close(
        &mut self,
        io: &Io,
        token: Token,
        frame: Option<CloseFrame<'_>>,
        now: Millis,
    ) {
        self.close_step(io, token, |close, out| close.receive_close(frame, out));
        self.closing_began(now);
        self.flush(io, token);
    }

    /// Stops waiting for the peer's close after ours went out (a handler that
    /// panicked, a message that stalled): nothing more is parsed.
    pub fn stop_reading(&mut self, io: &Io, token: Token) {
        if let Phase::WebSocket { close, .. } = &mut self.phase {
            close.stop_reading();
        }
        self.flush(io, token);
    }

    /// The peer closed its side (EOF): nothing more will come. Notes an abnormal end
    /// if the WebSocket was open or awaiting the peer's close.
    pub fn peer_eof(&mut self) {
        let abnormal = match &mut self.phase {
            Phase::WebSocket { close, .. } => close.peer_eof(),
            _ => false,
        };
        if abnormal {
            log::debug!("{}: peer closed TCP without a close handshake", self.peer);
            self.note_close_reason(CloseReason::Abnormal);
        }
        self.phase = Phase::Closed;
    }

    /// Drops the connection at once: its transport failed, or it must go without
    /// ceremony (a timeout, a reader that stopped reading).
    pub fn abort(&mut self) {
        self.phase = Phase::Closed;
    }

    /// Records when the close began (the close timeout runs from there), once.
    fn closing_began(&mut self, now: Millis) {
        if let Phase::WebSocket { closing_since, .. } = &mut self.phase {
            if closing_since.is_none() {
                *closing_since = When::at(now);
            }
        }
    }

    /// Moves the WebSocket's close handshake one `step` and sends the close frame the
    /// step asks for, if any; whether one was sent. (Not a WebSocket: nothing to do.)
    fn close_step(
        &mut self,
        io: &Io,
        token: Token,
        step: impl FnOnce(&mut CloseHandshake, &mut [u8; MAX_CONTROL_PAYLOAD]) -> Option<usize>,
    ) -> bool {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let Phase::WebSocket { close, .. } = &mut self.phase else {
            return false;
        };
        let Some(len) = step(close, &mut payload) else {
            return false;
        };
        // A close frame is never refused for the queue cap: it ends the queue's growth.
        let _ = self.send_frame(io, token, Opcode::Close, &payload[..len], usize::MAX);
        true
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
        // With the `tls` feature the transport is a socket or a boxed TLS session: an
        // enum of 16 bytes where the bare socket took 4 (measured: 216 in release). The
        // pin without the feature stays 200.
        let tls_extra = if cfg!(feature = "tls") { 16 } else { 0 };
        let size = std::mem::size_of::<Conn<()>>();
        eprintln!("size_of::<Conn<()>>() = {size} ({debug_extra} of it debug-only)");
        assert!(
            size <= 200 + allowance + tls_extra,
            "Conn<()> grew to {size} bytes"
        );
    }
}
