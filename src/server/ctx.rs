//! What a handler acts through: [`Loop`], the loop without a connection in question
//! (other connections by id, broadcast, topics, stats, shutdown), and [`Ctx`], which
//! is a `Loop` plus the connection a callback was called for, and dereferences to the
//! `Loop` so that its methods are written once.

use super::table::opcode_of;
use super::{Core, Fanout, Loop};
use crate::conn::Conn;
use crate::handler::{CloseReason, ConnId, SendStatus};
use crate::proto::frame::{Opcode, MAX_CONTROL_PAYLOAD};
use crate::proto::{CloseCode, InvalidCloseCode, Message};
use crate::stats::Stats;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// What a handler acts through: the current connection, and through it the rest of
/// the loop.
///
/// A `Ctx` dereferences to the [`Loop`], so everything that does not need "this
/// connection" (`send_to`, `close_connection`, `broadcast`, `publish`, `stats`,
/// `shutdown`, ...) is a [`Loop`] method called on the `Ctx` as if it were its own.
pub struct Ctx<'a, S = ()> {
    pub(super) core: &'a mut Core<S>,
    pub(super) slot: usize,
}

impl<S> Deref for Ctx<'_, S> {
    type Target = Loop<S>;

    fn deref(&self) -> &Loop<S> {
        self.core
    }
}

impl<S> DerefMut for Ctx<'_, S> {
    fn deref_mut(&mut self) -> &mut Loop<S> {
        self.core
    }
}

impl<S> Ctx<'_, S> {
    fn conn(&self) -> &Conn<S> {
        &self.core.conns[self.slot]
    }

    /// This connection's id (valid in [`Handle`](crate::Handle) calls from other threads too).
    pub fn id(&self) -> ConnId {
        self.core.id(self.slot)
    }

    /// The peer's address (for IPv6, without flow info and scope id, which are not kept).
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn().peer.get()
    }

    /// The subprotocol agreed at the upgrade, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.conn().protocol()
    }

    /// Whether permessage-deflate was negotiated: messages may arrive compressed,
    /// and whole messages sent here are compressed (above `deflate_threshold`);
    /// messages sent in parts are not.
    pub fn is_compressed(&self) -> bool {
        self.conn().deflate().is_some()
    }

    /// This connection's session: the handler's own state for it.
    ///
    /// It borrows the whole `Ctx`; to use the session while calling other `Ctx`
    /// methods, see [`with_session`](Ctx::with_session).
    ///
    /// # Panics
    ///
    /// Inside [`with_session`](Ctx::with_session), which holds the session already.
    pub fn session(&mut self) -> &mut S {
        self.core.conns[self.slot]
            .session
            .as_mut()
            .expect("the session is lent to with_session's closure: use its argument")
    }

    /// Lends the session and the `Ctx` at once: `f` gets both, for the moments when
    /// [`session`](Ctx::session), which borrows the whole `Ctx`, would force a clone
    /// (say, subscribing to a topic that a session field names). Returns what `f`
    /// returns.
    ///
    /// ```
    /// # use wsreactor::{Ctx, Handler, Message};
    /// #[derive(Default)]
    /// struct Reader { room: String }
    /// # struct Rooms;
    /// # impl Handler for Rooms {
    /// #     type Session = Reader;
    /// fn on_message(&mut self, cx: &mut Ctx<'_, Reader>, message: Message<'_>) {
    ///     if let Message::Text(room) = message {
    ///         cx.with_session(|reader, cx| {
    ///             cx.unsubscribe(&reader.room);
    ///             reader.room = room.to_owned();
    ///             cx.subscribe(&reader.room); // no clone of the name
    ///         });
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// The session is moved out of the connection table for the call and back after
    /// it (a copy of `size_of::<S>()` bytes each way, nothing for `()`, and nothing
    /// at all where this is not called): Rust cannot lend a field of the table and
    /// the table at once without `unsafe`, and this costs no memory per connection.
    /// A panic in `f` puts the session back before it goes on.
    ///
    /// # Panics
    ///
    /// Inside `f`, [`session`](Ctx::session) and a nested `with_session` panic: `f`
    /// holds the session already.
    pub fn with_session<R>(&mut self, f: impl FnOnce(&mut S, &mut Ctx<'_, S>) -> R) -> R {
        let mut session = self.core.conns[self.slot]
            .session
            .take()
            .expect("with_session inside with_session: the session is lent already");
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut session, self)));
        // Callbacks never remove connections (only the loop does, when it settles
        // them afterwards), so the slot is still this connection's.
        self.core.conns[self.slot].session = Some(session);
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Bytes waiting for the socket to take them: the backlog a peer that reads
    /// slower than we send builds up (see [`SendStatus::Queued`]).
    pub fn queued_bytes(&self) -> usize {
        self.conn().backlog()
    }

    /// Sends a message as one frame: written through to the socket if it takes it,
    /// queued otherwise, refused if the connection is closing or its queue is full.
    pub fn send(&mut self, message: Message<'_>) -> SendStatus {
        self.core
            .send(self.slot, opcode_of(&message), message.as_bytes())
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.core.send(self.slot, Opcode::Text, text.as_bytes())
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, bytes: &[u8]) -> SendStatus {
        self.core.send(self.slot, Opcode::Binary, bytes)
    }

    /// Sends a ping (at most 125 bytes of payload, else refused).
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return SendStatus::Refused;
        }
        self.core.send(self.slot, Opcode::Ping, payload)
    }

    /// Starts the close handshake with `code` and `reason` (cut at a character
    /// boundary to fit 123 bytes). Messages that arrive until the peer's close are
    /// dropped. A code that may not be sent ([`CloseCode::is_sendable`]: e.g. 1005,
    /// 1006, 1015, 0, 5000) is an error and nothing happens: a peer would answer it
    /// with a protocol error. Closing a connection that is closing already is `Ok`
    /// and does nothing.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), InvalidCloseCode> {
        let code = code.sendable()?;
        self.core
            .close(self.slot, code, reason, CloseReason::Local { code });
        Ok(())
    }

    /// Subscribes this connection to `topic`; false if it already was.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        let added = self.core.topics.subscribe(topic, self.slot);
        if added {
            self.core.conns[self.slot]
                .extras_mut()
                .topics
                .push(topic.into());
        }
        added
    }

    /// Unsubscribes this connection from `topic`; false if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        let removed = self.core.topics.unsubscribe(topic, self.slot);
        if removed {
            self.core.conns[self.slot]
                .extras_mut()
                .topics
                .retain(|t| &**t != topic);
        }
        removed
    }
}

impl<S> Loop<S> {
    /// The server's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sends a message to the connection `to` (from a `Ctx`, usually another one);
    /// refused if it is gone or closing.
    ///
    /// An id another loop of a [`Reactor`](crate::Reactor) owns is routed there, as a
    /// [`Handle`](crate::Handle) send is, at the end of the turn and in order with
    /// this turn's publishes: `Queued(0)` (that loop applies the usual rules and
    /// counts the outcome; if its inbox is full, the message is dropped and counted
    /// in this loop's `Stats::messages_dropped`).
    pub fn send_to(&mut self, to: ConnId, message: Message<'_>) -> SendStatus {
        if let Some(status) = self.route_send(to, opcode_of(&message), message.as_bytes()) {
            return status;
        }
        match self.slot_of(to) {
            Some(slot) => {
                let status = self.send(slot, opcode_of(&message), message.as_bytes());
                self.touched.push(slot);
                status
            }
            None => SendStatus::Refused,
        }
    }

    /// Starts the close handshake on the connection `id`, as [`Ctx::close`] does on
    /// its own (routed to the loop that owns it, with several loops). An id of a connection that is gone is `Ok` and does nothing;
    /// a code that may not be sent is an error, whatever the id.
    pub fn close_connection(
        &mut self,
        id: ConnId,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), InvalidCloseCode> {
        let code = code.sendable()?;
        if self.route_close(id, code, reason) {
            return Ok(());
        }
        if let Some(slot) = self.slot_of(id) {
            self.close(slot, code, reason, CloseReason::Local { code });
        }
        Ok(())
    }

    /// Sends a message to every open connection (from a `Ctx`, its own included). The frame is
    /// encoded once; each receiver's queue cap applies to it separately.
    pub fn broadcast(&mut self, message: Message<'_>) -> Fanout {
        self.broadcast_frame(opcode_of(&message), message.as_bytes())
    }

    /// Sends a message to every subscriber of `topic` (encoded once).
    pub fn publish(&mut self, topic: &str, message: Message<'_>) -> Fanout {
        self.publish_frame(topic, opcode_of(&message), message.as_bytes())
    }

    /// Starts a graceful shutdown of the whole server after the current callback (or
    /// deferred closure): from then on [`Handle`](crate::Handle) calls are
    /// [`ShuttingDown`](crate::HandleError::ShuttingDown).
    pub fn shutdown(&mut self) {
        self.shutdown_requested = true;
    }
}
