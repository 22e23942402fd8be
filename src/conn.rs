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

use crate::config::{Config, Timeouts};
use crate::handler::CloseReason;
use crate::outbox::{Meter, Outbox};
use crate::proto::closing::CloseState;
use crate::proto::deflate::{DeflateParams, Deflater};
use crate::proto::frame::Opcode;
use crate::proto::frame::MAX_CONTROL_PAYLOAD;
use crate::proto::handshake::HeadReader;
use crate::proto::keepalive::KeepaliveDue;
use crate::proto::{CloseCode, Receiver};
use crate::proto::{CloseFrame, CloseHandshake, Keepalive, ProtocolError};
use crate::timer::{deadline_after, Millis, When};
use crate::transport::Transport;

mod flow;
mod peer;
mod send;

pub(crate) use flow::low_water;
pub use flow::QueuePolicy;
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
    /// A relay paused for a full queue, for a peer that reads none of it
    /// ([`RELAY_PATIENCE`]; see [`Conn::is_relaying`]).
    RelayStuck,
}

/// How long a relay paused for a full queue waits for its peer to read before it
/// reads on (see [`Conn::is_relaying`]): long enough for a reading peer to show it
/// reads (any write the socket takes restarts it), short next to a whole message's
/// transfer.
pub(crate) const RELAY_PATIENCE: Millis = 100;

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
    /// The message sent in parts that is open on this connection, if any: whether
    /// it is text.
    pub fn sending_part(&self) -> Option<bool> {
        self.extras.as_ref()?.sending_part
    }

    /// Whether a message is half received while one sent in parts is open: the
    /// pattern of a streaming echo or proxy, relaying a message as it arrives.
    ///
    /// Reading pauses above `write_high_water` as usual, which keeps memory flat for
    /// a peer that reads while it writes. But most clients write a whole message
    /// before they read anything: paused in the middle, we would wait for a reader
    /// that waits for us. So a relay whose output has not moved for
    /// [`RELAY_PATIENCE`] while reading is paused is read on
    /// ([`unpause_relay`](Self::unpause_relay)) until its message ends, bounded by
    /// `max_send_queue` (which refuses a part): such a peer makes us hold one
    /// message's output, as much as assembling the message whole would.
    pub fn is_relaying(&self) -> bool {
        self.rx.is_mid_message() && self.sending_part().is_some()
    }

    /// Whether reading may pause for a full queue: not while relaying a message
    /// whose peer was found not to read (see [`is_relaying`](Self::is_relaying)).
    pub fn may_pause_reading(&self) -> bool {
        !(self.is_relaying() && self.extras.as_ref().is_some_and(|e| e.relay_unpaused))
    }

    /// Since when a relay has waited, paused, for a peer that takes none of its
    /// output (`None` if it is not such a relay).
    pub fn relay_waiting_since(&self) -> Option<Millis> {
        (self.is_read_paused() && self.is_relaying() && self.may_pause_reading())
            .then(|| self.out.last_moved())
    }

    /// Reads on to the end of the message being relayed, whatever its echo queues.
    pub fn unpause_relay(&mut self) {
        self.extras_mut().relay_unpaused = true;
        self.flow.set_read_paused(false);
    }

    /// Opens (`Some(is_text)`) or finishes (`None`) a message sent in parts.
    pub fn set_sending_part(&mut self, open: Option<bool>) {
        if open.is_some() || self.extras.is_some() {
            let extras = self.extras_mut();
            extras.sending_part = open;
            extras.relay_unpaused = false;
        }
    }

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

    /// Stops reading: the send queue is over the high-water mark, so a peer that sends
    /// without reading feels TCP backpressure instead of growing our memory.
    pub fn pause_reading(&mut self) {
        self.flow.set_read_paused(true);
    }

    pub fn is_read_paused(&self) -> bool {
        self.flow.read_paused()
    }

    /// The socket took queued bytes: ends a send stall once the queue is down to half
    /// its cap, and returns whether reading, paused above the high-water mark, may
    /// resume: once the queue is empty.
    ///
    /// Not at half of the mark: a peer that streams to us while we stream back (the
    /// echo of a large message in parts) would then be read about half a mark per
    /// pause, less than Linux waits for before it reopens a receive window it closed
    /// (1/16 of a buffer autotuned up to `tcp_rmem`'s 32 MiB), so the peer's sends sat
    /// until a zero-window probe (200 ms, backing off past a second). Measured: (d)
    /// echo stalls of 0.1–1.5 s at half, none when resuming empty, where the echo is
    /// written straight to the socket and each pause is followed by megabytes read.
    pub fn queue_drained(&mut self, max_queue: usize) -> bool {
        let pending = self.out.pending();
        if self.stalled_since.is_some() && pending <= max_queue / 2 {
            self.stalled_since = When::NONE;
        }
        let resume = self.flow.read_paused() && pending == 0;
        if resume {
            self.flow.set_read_paused(false);
        }
        resume
    }

    /// A send was refused: the send-stall clock starts, unless it runs already.
    /// Returns whether it started now.
    pub fn send_refused(&mut self, now: Millis) -> bool {
        let starts = self.is_open() && self.stalled_since.is_none();
        if starts {
            self.stalled_since = When::at(now);
        }
        starts
    }

    /// The half-received message grew (or began): its stall clock starts again.
    pub fn message_grew(&mut self, now: Millis) {
        self.progress = When::at(now);
    }

    /// When the half-received message last grew.
    pub fn message_progress(&self) -> Option<Millis> {
        self.progress.get()
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

    /// The next moment something must happen on this connection if nothing else does,
    /// and what it waits for then.
    pub fn next_deadline(&self, timeouts: &Timeouts) -> Option<(Millis, Wait)> {
        let after = |start: Millis, timeout: Option<Millis>, wait: Wait| {
            Some((deadline_after(start, timeout?), wait))
        };
        match self.phase {
            Phase::Handshake { accepted } => after(accepted, timeouts.handshake, Wait::Handshake),
            Phase::Answered { since, .. } => after(since, timeouts.close, Wait::Close),
            Phase::WebSocket { close, .. } if close.may_send() => {
                let keepalive =
                    self.keepalive
                        .next(timeouts.idle, timeouts.pong)
                        .map(|(at, due)| match due {
                            KeepaliveDue::Ping => (at, Wait::Idle),
                            KeepaliveDue::PongOverdue => (at, Wait::Pong),
                        });
                let stall = self
                    .stalled_since
                    .get()
                    .and_then(|since| after(since, timeouts.send_stall, Wait::SendStall));
                let message = match self.progress.get() {
                    Some(progress) if self.rx.is_mid_message() => {
                        after(progress, timeouts.message, Wait::MessageProgress)
                    }
                    _ => None,
                };
                let relay = self
                    .relay_waiting_since()
                    .map(|since| (since.saturating_add(RELAY_PATIENCE), Wait::RelayStuck));
                [keepalive, stall, message, relay]
                    .into_iter()
                    .flatten()
                    .min_by_key(|(at, _)| *at)
            }
            Phase::WebSocket { closing_since, .. } => {
                after(closing_since.get()?, timeouts.close, Wait::Close)
            }
            Phase::Closed => None,
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
