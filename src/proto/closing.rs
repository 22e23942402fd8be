//! The close handshake from the server's side (RFC 6455 §5.5.1, §7.1.1–§7.1.7), as a
//! state machine that says what to send and when to shut the socket, and does neither.
//!
//! ```text
//!          close()                        peer's close, fail()
//!   Open ───────────► CloseSent ──────────────────────────────┐
//!     │                                                       ▼
//!     └───── peer's close (answered), fail() ───────────► Flushing ──flushed()──► Draining
//!                                                                                   │
//!   Open, CloseSent ──peer_eof() (1006)──► Closed ◄──────────── peer_eof() ─────────┘
//!   any state ──abort()──► Closed
//! ```
//!
//! The caller owns the socket and the send queue: it sends the close payloads this
//! returns, tells it when the queue has drained ([`CloseHandshake::flushed`]) and when
//! the peer's EOF arrives ([`CloseHandshake::peer_eof`]). Which close code a connection
//! ended with is recorded here too ([`sent`](CloseHandshake::sent),
//! [`received`](CloseHandshake::received)), so the caller can report it.

use super::close::{encode_close_payload, CloseCode, CloseFrame};
use super::error::ProtocolError;
use super::frame::MAX_CONTROL_PAYLOAD;

/// Where a WebSocket connection is in its close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseState {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame (§7.1.2) and wait for the peer's. Frames are still parsed
    /// — the peer's close is among them — but data frames are dropped: after sending a
    /// close we send nothing more (§5.5.1), and the application is told nothing it
    /// could answer.
    CloseSent,
    /// Nothing more is parsed: both closes have been exchanged, or the connection
    /// failed (§7.1.7). The caller flushes what it queued (our close frame last), then
    /// calls [`CloseHandshake::flushed`] and half-closes the socket: the server closes
    /// TCP first (§7.1.1), so it, not the client, holds TIME_WAIT.
    Flushing,
    /// Our side of the TCP connection is shut down. Input is read and discarded until
    /// the peer's EOF: closing a socket with unread input makes the kernel send a
    /// reset, which can destroy our close frame before the peer reads it.
    Draining,
    /// Done: the socket can be dropped.
    Closed,
}

/// The close handshake of one connection, seen from the server.
///
/// Six bytes: it lives in every connection. The codes sent and received are kept as
/// raw `u16`s beside a byte of flags, rather than as `Option<Option<CloseCode>>`s
/// (four bytes each), because a code may be any `u16` and so none can mean "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseHandshake {
    state: CloseState,
    /// [`SENT`], [`SENT_CODE`], [`RECEIVED`], [`RECEIVED_CODE`].
    flags: u8,
    sent: u16,
    received: u16,
}

/// We sent (or queued) a close frame.
const SENT: u8 = 1;
/// ... and it carried a code, in `sent`.
const SENT_CODE: u8 = 2;
/// The peer's close frame arrived.
const RECEIVED: u8 = 4;
/// ... and it carried a code, in `received`.
const RECEIVED_CODE: u8 = 8;

impl Default for CloseHandshake {
    fn default() -> CloseHandshake {
        CloseHandshake::new()
    }
}

impl CloseHandshake {
    /// A connection that has just been upgraded: open, nothing sent or received.
    pub const fn new() -> CloseHandshake {
        CloseHandshake {
            state: CloseState::Open,
            flags: 0,
            sent: 0,
            received: 0,
        }
    }

    /// Where the handshake is.
    pub fn state(&self) -> CloseState {
        self.state
    }

    /// Whether the application may still send messages (and pings). Only while open:
    /// after its close frame an endpoint must not send more data frames (§5.5.1).
    pub fn may_send(&self) -> bool {
        self.state == CloseState::Open
    }

    /// Whether incoming bytes are still parsed as frames: while open, and after our
    /// close until the peer's arrives (§7.1.2 waits for it).
    pub fn parses_frames(&self) -> bool {
        matches!(self.state, CloseState::Open | CloseState::CloseSent)
    }

    /// Whether the close has begun but the socket is not done with: the caller's close
    /// timeout runs in these states, so that a peer that never answers our close,
    /// never reads our last bytes or never sends its EOF cannot hold the connection.
    pub fn is_closing(&self) -> bool {
        matches!(
            self.state,
            CloseState::CloseSent | CloseState::Flushing | CloseState::Draining
        )
    }

    /// We start the close handshake (§7.1.2): while open, writes the close payload for
    /// `code` and `reason` into `out` and returns its length; the caller sends it as a
    /// close frame. Then frames are still parsed until the peer's close comes back.
    ///
    /// Anywhere else it returns `None` and changes nothing: a close is sent once, and a
    /// second close (or one after the peer's) is a no-op.
    ///
    /// The reason is cut to fit at a character boundary (see [`encode_close_payload`]).
    /// The code is written as given: callers that take it from outside check it with
    /// [`CloseCode::sendable`] first.
    pub fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
        out: &mut [u8; MAX_CONTROL_PAYLOAD],
    ) -> Option<usize> {
        if self.state != CloseState::Open {
            return None;
        }
        self.state = CloseState::CloseSent;
        Some(self.send(Some(code), reason, out))
    }

    /// Fails the connection (§7.1.7): the peer broke the protocol or one of our limits.
    ///
    /// While open, writes a close payload with the error's code
    /// ([`ProtocolError::close_code`], the one place that decides it) and its message
    /// as the reason, and returns its length. After our close was sent, there is
    /// nothing more to send (`None`): that close stands. Either way nothing more is
    /// parsed — a peer that breaks the protocol is not read further (§7.1.7) — and the
    /// connection goes to [`CloseState::Flushing`]. In later states it is a no-op.
    pub fn fail(
        &mut self,
        error: ProtocolError,
        out: &mut [u8; MAX_CONTROL_PAYLOAD],
    ) -> Option<usize> {
        match self.state {
            CloseState::Open => {
                self.state = CloseState::Flushing;
                Some(self.send(Some(error.close_code()), &error.to_string(), out))
            }
            CloseState::CloseSent => {
                self.state = CloseState::Flushing;
                None
            }
            CloseState::Flushing | CloseState::Draining | CloseState::Closed => None,
        }
    }

    /// Stops waiting for the peer's close after ours went out: nothing more it sends
    /// will be parsed (a handler that panicked is not trusted with more input, a
    /// message that stalled is not waited for). From CloseSent → Flushing; elsewhere a
    /// no-op (from Open, [`close`](Self::close) or [`fail`](Self::fail) first).
    pub fn stop_reading(&mut self) {
        if self.state == CloseState::CloseSent {
            self.state = CloseState::Flushing;
        }
    }

    /// The peer's close frame arrived (`None`: it had an empty payload).
    ///
    /// While open, §5.5.1 asks for a close in reply, "typically echoing the status code
    /// it received": this writes that echo into `out` and returns its length — its
    /// code, or an empty payload (`Some(0)`, still a close frame to send) if it sent
    /// none, since §7.4 forbids putting 1005 on the wire. The peer's reason is never
    /// echoed: it was written for us, sending it back tells the peer nothing, and it
    /// keeps the peer's bytes out of what we send. A code that may not be sent (which a
    /// frame from [`parse_close_payload`] never holds) is answered with an empty close
    /// rather than put on the wire.
    ///
    /// After our own close the handshake is complete and nothing more is sent (`None`).
    /// Either way nothing more is parsed, and the server closes TCP first (§7.1.1):
    /// the state becomes [`CloseState::Flushing`]. In later states, a no-op.
    ///
    /// [`parse_close_payload`]: super::close::parse_close_payload
    pub fn receive_close(
        &mut self,
        frame: Option<CloseFrame<'_>>,
        out: &mut [u8; MAX_CONTROL_PAYLOAD],
    ) -> Option<usize> {
        let code = frame.map(|f| f.code);
        match self.state {
            CloseState::Open => {
                self.note_received(code);
                self.state = CloseState::Flushing;
                let echo = code.filter(|c| c.is_sendable());
                Some(self.send(echo, "", out))
            }
            CloseState::CloseSent => {
                self.note_received(code);
                self.state = CloseState::Flushing;
                None
            }
            CloseState::Flushing | CloseState::Draining | CloseState::Closed => None,
        }
    }

    /// The caller's send queue is empty. From [`CloseState::Flushing`] this moves to
    /// [`CloseState::Draining`] and returns `true`: the caller shuts down the write
    /// side of the socket now (half-close, §7.1.1), so the peer reads our close and
    /// then EOF. If that shutdown fails, the caller calls [`abort`](Self::abort).
    /// Anywhere else, `false` and nothing changes.
    pub fn flushed(&mut self) -> bool {
        if self.state != CloseState::Flushing {
            return false;
        }
        self.state = CloseState::Draining;
        true
    }

    /// The peer closed its side of TCP (read returned 0): the connection is closed.
    ///
    /// Returns `true` if the peer left without completing the close handshake — while
    /// open, or after our close but before its own — which the caller reports as 1006
    /// (§7.1.5, §7.4.1). An EOF while flushing or draining is the end we expected (or
    /// follows a failure already reported), so `false`.
    pub fn peer_eof(&mut self) -> bool {
        let abnormal = matches!(self.state, CloseState::Open | CloseState::CloseSent);
        self.state = CloseState::Closed;
        abnormal
    }

    /// The connection is closed at once, whatever its state: an I/O error, a peer that
    /// does not answer keepalive pings (and so would not answer a close either), a
    /// close timeout. A close the caller sent just before (e.g. 1011 for the keepalive)
    /// stays recorded in [`sent`](Self::sent).
    pub fn abort(&mut self) {
        self.state = CloseState::Closed;
    }

    /// The close we sent, for reporting: `None` if we sent none, `Some(None)` if it
    /// had no code (the echo of a codeless close), `Some(Some(code))` otherwise.
    pub fn sent(&self) -> Option<Option<CloseCode>> {
        Self::noted(self.flags, SENT, SENT_CODE, self.sent)
    }

    /// The peer's close, for reporting: `None` if none arrived, `Some(None)` if it had
    /// no code (reported as 1005, §7.1.5), `Some(Some(code))` otherwise.
    pub fn received(&self) -> Option<Option<CloseCode>> {
        Self::noted(self.flags, RECEIVED, RECEIVED_CODE, self.received)
    }

    fn send(
        &mut self,
        code: Option<CloseCode>,
        reason: &str,
        out: &mut [u8; MAX_CONTROL_PAYLOAD],
    ) -> usize {
        self.flags |= SENT;
        if let Some(code) = code {
            self.flags |= SENT_CODE;
            self.sent = code.0;
        }
        encode_close_payload(code, reason, out)
    }

    fn note_received(&mut self, code: Option<CloseCode>) {
        self.flags |= RECEIVED;
        if let Some(code) = code {
            self.flags |= RECEIVED_CODE;
            self.received = code.0;
        }
    }

    fn noted(flags: u8, present: u8, with_code: u8, code: u16) -> Option<Option<CloseCode>> {
        (flags & present != 0).then(|| (flags & with_code != 0).then_some(CloseCode(code)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::close::{parse_close_payload, MAX_CLOSE_REASON};

    const ALL: [CloseState; 5] = [
        CloseState::Open,
        CloseState::CloseSent,
        CloseState::Flushing,
        CloseState::Draining,
        CloseState::Closed,
    ];

    fn buf() -> [u8; MAX_CONTROL_PAYLOAD] {
        [0xAA; MAX_CONTROL_PAYLOAD]
    }

    /// A handshake driven into `state` the usual way (our close, then the peer's).
    fn in_state(state: CloseState) -> CloseHandshake {
        let mut hs = CloseHandshake::new();
        let out = &mut buf();
        match state {
            CloseState::Open => {}
            CloseState::CloseSent => {
                hs.close(CloseCode::NORMAL, "", out);
            }
            CloseState::Flushing => {
                hs.receive_close(None, out);
            }
            CloseState::Draining => {
                hs.receive_close(None, out);
                hs.flushed();
            }
            CloseState::Closed => hs.abort(),
        }
        assert_eq!(hs.state(), state);
        hs
    }

    fn frame(code: u16, reason: &str) -> Option<CloseFrame<'_>> {
        Some(CloseFrame {
            code: CloseCode(code),
            reason,
        })
    }

    /// Every connection carries one.
    #[test]
    fn is_six_bytes() {
        assert_eq!(std::mem::size_of::<CloseHandshake>(), 6);
        assert_eq!(std::mem::size_of::<CloseState>(), 1);
    }

    #[test]
    fn starts_open_with_nothing_exchanged() {
        let hs = CloseHandshake::new();
        assert_eq!(hs, CloseHandshake::default());
        assert_eq!(hs.state(), CloseState::Open);
        assert!(hs.may_send() && hs.parses_frames() && !hs.is_closing());
        assert_eq!((hs.sent(), hs.received()), (None, None));
    }

    #[test]
    fn what_each_state_allows() {
        for state in ALL {
            let hs = in_state(state);
            assert_eq!(hs.may_send(), state == CloseState::Open, "{state:?}");
            assert_eq!(
                hs.parses_frames(),
                matches!(state, CloseState::Open | CloseState::CloseSent),
                "{state:?}"
            );
            assert_eq!(
                hs.is_closing(),
                matches!(
                    state,
                    CloseState::CloseSent | CloseState::Flushing | CloseState::Draining
                ),
                "{state:?}"
            );
        }
    }

    #[test]
    fn close_while_open_sends_code_and_reason_then_waits() {
        let mut hs = CloseHandshake::new();
        let out = &mut buf();
        let len = hs.close(CloseCode::GOING_AWAY, "restarting", out).unwrap();
        assert_eq!(&out[..len], b"\x03\xe9restarting");
        assert_eq!(hs.state(), CloseState::CloseSent);
        assert_eq!(hs.sent(), Some(Some(CloseCode::GOING_AWAY)));
        assert_eq!(hs.received(), None);
    }

    #[test]
    fn close_is_a_no_op_once_closing() {
        for state in &ALL[1..] {
            let mut hs = in_state(*state);
            let before = hs;
            let out = &mut buf();
            assert_eq!(hs.close(CloseCode(4000), "again", out), None, "{state:?}");
            assert_eq!(hs, before, "{state:?}");
            assert_eq!(out, &buf(), "{state:?}: out untouched");
        }
    }

    /// §7.1.2 then §7.1.3: our close, the peer's answer, and the server closes TCP.
    #[test]
    fn our_close_then_the_peers_then_flush_then_eof() {
        let mut hs = CloseHandshake::new();
        let out = &mut buf();
        hs.close(CloseCode::NORMAL, "bye", out).unwrap();
        // Frames are still parsed: the peer's close is among them.
        assert!(hs.parses_frames() && !hs.may_send());
        assert_eq!(hs.receive_close(frame(1000, "ok"), out), None);
        assert_eq!(hs.state(), CloseState::Flushing);
        assert_eq!(hs.sent(), Some(Some(CloseCode::NORMAL)));
        assert_eq!(hs.received(), Some(Some(CloseCode::NORMAL)));
        assert!(hs.flushed());
        assert_eq!(hs.state(), CloseState::Draining);
        assert!(!hs.peer_eof(), "a completed handshake is not abnormal");
        assert_eq!(hs.state(), CloseState::Closed);
    }

    /// §5.5.1: the peer closes with 1000, we answer 1000.
    #[test]
    fn a_peer_close_1000_is_answered_with_1000() {
        let mut hs = CloseHandshake::new();
        let out = &mut buf();
        let len = hs.receive_close(frame(1000, "done"), out).unwrap();
        assert_eq!(&out[..len], b"\x03\xe8");
        assert_eq!(hs.state(), CloseState::Flushing);
        assert_eq!(hs.sent(), Some(Some(CloseCode::NORMAL)));
        assert_eq!(hs.received(), Some(Some(CloseCode::NORMAL)));
    }

    /// A close without a code is answered with an empty close: 1005 never goes on
    /// the wire (§7.4.1).
    #[test]
    fn a_peer_close_without_code_gets_an_empty_close() {
        let mut hs = CloseHandshake::new();
        let out = &mut buf();
        assert_eq!(hs.receive_close(None, out), Some(0));
        assert_eq!(hs.state(), CloseState::Flushing);
        assert_eq!(hs.sent(), Some(None));
        assert_eq!(hs.received(), Some(None));
        assert_eq!(parse_close_payload(&out[..0]), Ok(None));
    }

    #[test]
    fn the_peers_reason_is_not_echoed_but_its_code_is() {
        let mut hs = CloseHandshake::new();
        let out = &mut buf();
        let len = hs.receive_close(frame(4321, "why not"), out).unwrap();
        assert_eq!(&out[..len], &4321u16.to_be_bytes());
    }

    #[test]
    fn an_unsendable_code_in_a_peer_frame_is_not_echoed() {
        for code in [0, 1005, 1006, 1015, 5000] {
            let mut hs = CloseHandshake::new();
            let out = &mut buf();
            assert_eq!(hs.receive_close(frame(code, ""), out), Some(0), "{code}");
            assert_eq!(hs.sent(), Some(None));
            // Still reported as what arrived.
            assert_eq!(hs.received(), Some(Some(CloseCode(code))));
        }
    }

    #[test]
    fn a_peer_close_after_the_handshake_is_a_no_op() {
        for state in [
            CloseState::Flushing,
            CloseState::Draining,
            CloseState::Closed,
        ] {
            let mut hs = in_state(state);
            let before = hs;
            assert_eq!(hs.receive_close(frame(1001, "late"), &mut buf()), None);
            assert_eq!(hs, before, "{state:?}");
        }
    }

    /// §7.1.7: fail while open sends the error's code and message, and stops parsing.
    #[test]
    fn fail_while_open_sends_the_errors_close_and_flushes() {
        for error in [
            ProtocolError::UnmaskedFrame,
            ProtocolError::InvalidUtf8,
            ProtocolError::MessageTooBig,
            ProtocolError::OverBudget,
        ] {
            let mut hs = CloseHandshake::new();
            let out = &mut buf();
            let len = hs.fail(error, out).unwrap();
            let sent = parse_close_payload(&out[..len]).unwrap().unwrap();
            assert_eq!(sent.code, error.close_code());
            assert_eq!(sent.reason, error.to_string());
            assert_eq!(hs.state(), CloseState::Flushing);
            assert!(!hs.parses_frames());
            assert_eq!(hs.sent(), Some(Some(error.close_code())));
            assert_eq!(hs.received(), None);
        }
    }

    #[test]
    fn fail_after_our_close_sends_nothing_more_and_flushes() {
        let mut hs = in_state(CloseState::CloseSent);
        let out = &mut buf();
        assert_eq!(hs.fail(ProtocolError::ReservedBits, out), None);
        assert_eq!(out, &buf());
        assert_eq!(hs.state(), CloseState::Flushing);
        // The close that went out is the one reported.
        assert_eq!(hs.sent(), Some(Some(CloseCode::NORMAL)));
    }

    #[test]
    fn fail_once_flushing_is_a_no_op() {
        for state in [
            CloseState::Flushing,
            CloseState::Draining,
            CloseState::Closed,
        ] {
            let mut hs = in_state(state);
            let before = hs;
            assert_eq!(hs.fail(ProtocolError::InvalidUtf8, &mut buf()), None);
            assert_eq!(hs, before, "{state:?}");
        }
    }

    #[test]
    fn flushed_moves_only_flushing_on() {
        for state in ALL {
            let mut hs = in_state(state);
            let moved = hs.flushed();
            assert_eq!(moved, state == CloseState::Flushing, "{state:?}");
            let expected = if moved { CloseState::Draining } else { state };
            assert_eq!(hs.state(), expected);
            // A second call never moves it again.
            assert!(!hs.flushed());
        }
    }

    /// §7.1.5: the peer's EOF without a completed handshake is reported as 1006.
    #[test]
    fn eof_in_each_state() {
        for state in ALL {
            let mut hs = in_state(state);
            let abnormal = hs.peer_eof();
            assert_eq!(
                abnormal,
                matches!(state, CloseState::Open | CloseState::CloseSent),
                "{state:?}"
            );
            assert_eq!(hs.state(), CloseState::Closed);
            assert!(!hs.peer_eof(), "a second EOF is not news");
        }
    }

    #[test]
    fn eof_after_failing_is_not_abnormal() {
        let mut hs = CloseHandshake::new();
        hs.fail(ProtocolError::UnmaskedFrame, &mut buf());
        assert!(!hs.peer_eof());
        hs = CloseHandshake::new();
        hs.fail(ProtocolError::UnmaskedFrame, &mut buf());
        hs.flushed();
        assert!(!hs.peer_eof());
    }

    #[test]
    fn abort_closes_from_every_state_and_keeps_the_record() {
        for state in ALL {
            let mut hs = in_state(state);
            let (sent, received) = (hs.sent(), hs.received());
            hs.abort();
            assert_eq!(hs.state(), CloseState::Closed);
            assert!(!hs.may_send() && !hs.parses_frames() && !hs.is_closing());
            assert_eq!((hs.sent(), hs.received()), (sent, received));
            let out = &mut buf();
            assert_eq!(hs.close(CloseCode::NORMAL, "", out), None);
            assert_eq!(hs.fail(ProtocolError::InvalidUtf8, out), None);
            assert_eq!(hs.receive_close(None, out), None);
            assert!(!hs.flushed());
        }
    }

    /// The keepalive give-up: a 1011 goes out, then the connection is dropped at once.
    #[test]
    fn close_then_abort_reports_what_was_sent() {
        let mut hs = CloseHandshake::new();
        hs.close(CloseCode::INTERNAL_ERROR, "keepalive timeout", &mut buf());
        hs.abort();
        assert_eq!(hs.sent(), Some(Some(CloseCode::INTERNAL_ERROR)));
        assert!(!hs.peer_eof());
    }

    #[test]
    fn a_long_multibyte_reason_is_cut_to_123_bytes_at_a_character() {
        // 121 ASCII bytes, then "€" straddling byte 123: it is left out whole.
        let reason = format!("{}€€€", "a".repeat(121));
        let mut hs = CloseHandshake::new();
        let out = &mut buf();
        let len = hs.close(CloseCode::NORMAL, &reason, out).unwrap();
        assert_eq!(len, 2 + 121);
        let parsed = parse_close_payload(&out[..len]).unwrap().unwrap();
        assert_eq!(parsed.reason, &reason[..121]);

        // All 3-byte characters: 41 of them fill exactly 123 bytes.
        let reason = "€".repeat(60);
        let mut hs = CloseHandshake::new();
        let len = hs.close(CloseCode(4000), &reason, out).unwrap();
        assert_eq!(len, 2 + MAX_CLOSE_REASON);
        let parsed = parse_close_payload(&out[..len]).unwrap().unwrap();
        assert_eq!(parsed.reason, "€".repeat(41));
    }

    #[test]
    fn every_code_round_trips_through_the_record() {
        for code in [0u16, 1, 1000, 1005, 4999, u16::MAX] {
            let mut hs = CloseHandshake::new();
            hs.close(CloseCode(code), "", &mut buf());
            hs.receive_close(frame(code, ""), &mut buf());
            assert_eq!(hs.sent(), Some(Some(CloseCode(code))));
            assert_eq!(hs.received(), Some(Some(CloseCode(code))));
        }
    }

    #[test]
    fn stop_reading_ends_the_wait_for_the_peers_close_only_after_ours() {
        let mut out = [0u8; MAX_CONTROL_PAYLOAD];
        let mut open = CloseHandshake::new();
        open.stop_reading();
        assert_eq!(open.state(), CloseState::Open);
        let mut closing = CloseHandshake::new();
        assert!(closing
            .close(CloseCode::POLICY_VIOLATION, "stalled", &mut out)
            .is_some());
        closing.stop_reading();
        assert_eq!(closing.state(), CloseState::Flushing);
        assert!(!closing.parses_frames());
        assert!(closing.flushed());
        assert_eq!(closing.state(), CloseState::Draining);
        closing.stop_reading();
        assert_eq!(closing.state(), CloseState::Draining);
    }
}
