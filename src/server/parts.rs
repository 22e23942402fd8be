//! Messages in parts: choosing to receive them, and sending one message as several
//! frames without assembling it.
//!
//! Outbound, a connection has at most one message in parts open at a time (a bit of
//! its state: [`Conn::sending_part`](crate::conn::Conn::sending_part)). While it is open, the frames of that message
//! are the only data frames that may go out on the connection — RFC 6455 §5.4 allows
//! control frames between fragments, so pongs, keepalive pings and a close still do —
//! and any other message is turned away with [`SendStatus::Busy`] (a broadcast or
//! publish counts that receiver as refused): interleaving it would corrupt the stream,
//! and holding it back would need a queue the streaming sender could grow without
//! bound.

use super::Ctx;
use crate::handle::Payload;
use crate::handler::{CloseReason, SendStatus};
use crate::proto::frame::{FrameHeader, Opcode};
use crate::proto::CloseCode;
use crate::proto::{Message, Part};
use mio::Token;

/// Why [`Ctx::send_part`] sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartError {
    /// A part that is not `first`, with no message in parts open on the connection
    /// (never begun, or already finished).
    NotStarted,
    /// A `first` part while a message in parts is still open on the connection: it
    /// must be finished (a part with `last`) before another begins.
    AlreadyStarted,
    /// The part's kind (text or binary) is not the open message's.
    KindMismatch,
}

impl std::fmt::Display for PartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PartError::NotStarted => "no message in parts is open on this connection",
            PartError::AlreadyStarted => "a message in parts is already open on this connection",
            PartError::KindMismatch => "the part's kind differs from the open message's",
        })
    }
}

impl std::error::Error for PartError {}

impl<S> Ctx<'_, S> {
    /// Receives this connection's data messages in parts through
    /// [`Handler::on_part`](crate::Handler::on_part) (`true`) or whole through
    /// `on_message` (`false`), whatever [`Config::message_parts`](crate::Config::message_parts)
    /// says. Call it from `on_open`: frames are read only after it returns, so every
    /// message of the connection comes in the chosen mode. Once the connection has
    /// received data (or from a callback for one of its messages) it is too late:
    /// nothing changes and `false` is returned.
    pub fn receive_in_parts(&mut self, on: bool) -> bool {
        let core = &mut *self.core;
        if core.rx_lent == Some(self.slot) {
            // Called for one of its messages: the receiver is out of the table.
            return false;
        }
        let rx = &mut core.conns[self.slot].rx;
        if rx.in_parts() == on {
            return true;
        }
        if rx.is_mid_message() || rx.data_received() != 0 {
            return false;
        }
        let (parts, whole) = (
            core.config.max_streamed_message_size,
            core.config.max_message_size as u64,
        );
        rx.set_mode(on, if on { parts } else { whole });
        true
    }

    /// Sends one part of a message sent in parts: several frames of one message,
    /// without assembling it (RFC 6455 fragmentation).
    ///
    /// A part with [`first`](Part::first) begins a message of its kind; later parts
    /// must be of the same kind and not `first`; a part with [`last`](Part::last)
    /// finishes it (a part may be both: a message in one frame). Each part is one
    /// frame, an empty one included. A part received by
    /// [`Handler::on_part`](crate::Handler::on_part) can be passed straight on.
    ///
    /// Between `first` and `last`, no other message can start on this connection
    /// ([`send`](Ctx::send) and the others return [`SendStatus::Busy`]; broadcasts
    /// and publishes count it as refused) but pings, pongs and a close can. With
    /// permessage-deflate negotiated, parts go out uncompressed (RSV1 clear): a
    /// message may be sent either way, and compressing a message whose end is not
    /// known yet would cost a compressor per open message.
    ///
    /// `Ok(Refused)` (the queue is over [`Config::max_send_queue`](crate::Config::max_send_queue),
    /// or the connection is closing) sends nothing and leaves the message as it was:
    /// the part may be sent again. An `Err` is a misuse and sends nothing.
    pub fn send_part(&mut self, part: Part<'_>) -> Result<SendStatus, PartError> {
        self.core.send_part(self.slot, part)
    }
}

impl<S> super::Core<S> {
    /// [`Ctx::send_part`] for the connection in `slot` (also a `Handle`'s).
    pub(super) fn send_part(
        &mut self,
        slot: usize,
        part: Part<'_>,
    ) -> Result<SendStatus, PartError> {
        let text = matches!(part.data, Message::Text(_));
        let conn = &mut self.conns[slot];
        match (conn.sending_part(), part.first) {
            (None, false) => return Err(PartError::NotStarted),
            (Some(_), true) => return Err(PartError::AlreadyStarted),
            (Some(open_text), false) if open_text != text => return Err(PartError::KindMismatch),
            _ => {}
        }
        if !conn.is_open() {
            self.stats.sends_refused += 1;
            return Ok(SendStatus::Refused);
        }
        let payload = part.as_bytes();
        if conn.out.pending() > 0 && !self.outgoing_room(slot, payload.len()) {
            self.count_part(slot, SendStatus::Refused, &part);
            return Ok(SendStatus::Refused);
        }
        let opcode = match (part.first, text) {
            (false, _) => Opcode::Continuation,
            (true, true) => Opcode::Text,
            (true, false) => Opcode::Binary,
        };
        let header = FrameHeader {
            fin: part.last,
            ..FrameHeader::server(opcode, payload.len())
        };
        let conn = &mut self.conns[slot];
        let status = conn.send_with_header(
            &self.io,
            Token(slot),
            header,
            payload,
            self.config.max_send_queue,
        );
        if status != SendStatus::Refused {
            conn.set_sending_part((!part.last).then_some(text));
        }
        self.count_part(slot, status, &part);
        Ok(status)
    }

    /// A part from a [`Handle`](crate::Handle): nobody can hear about a refusal or a misuse, and
    /// the message it belongs to would arrive with a piece missing, so either ends the
    /// connection (1011) rather than let the stream go on wrong.
    pub(super) fn send_part_from_handle(
        &mut self,
        slot: usize,
        payload: &Payload,
        first: bool,
        last: bool,
    ) {
        let data = match payload {
            Payload::Text(text) => Message::Text(text),
            Payload::Binary(bytes) => Message::Binary(bytes),
        };
        let outcome = self.send_part(slot, Part { data, first, last });
        if !matches!(outcome, Ok(SendStatus::Written | SendStatus::Queued(_))) {
            log::debug!(
                "{}: a part sent through a Handle failed ({outcome:?}): closing with 1011",
                self.id(slot)
            );
            let code = CloseCode::INTERNAL_ERROR;
            self.close(slot, code, "message part lost", CloseReason::Local { code });
        }
    }

    fn count_part(&mut self, slot: usize, status: SendStatus, part: &Part<'_>) {
        match status {
            SendStatus::Written | SendStatus::Queued(_) => {
                self.stats.bytes_out += part.len() as u64;
                if part.last {
                    self.stats.messages_out += 1;
                }
            }
            _ => self.count_send(slot, status, part.len()),
        }
    }
}
