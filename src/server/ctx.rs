//! `Ctx`: what a handler acts through — the connection it was called for, and through
//! it the rest of the loop (other connections, broadcast, topics, stats, shutdown).

use super::table::opcode_of;
use super::{Core, Fanout};
use crate::conn::Conn;
use crate::handler::{CloseReason, ConnId, SendStatus};
use crate::proto::frame::{Opcode, MAX_CONTROL_PAYLOAD};
use crate::proto::{CloseCode, InvalidCloseCode, Message};
use crate::stats::Stats;
use std::net::SocketAddr;

/// What a handler acts through: the current connection, and through it the rest of
/// the loop (other connections, broadcast, topics, stats, shutdown).
pub struct Ctx<'a, S = ()> {
    pub(super) core: &'a mut Core<S>,
    pub(super) slot: usize,
}

impl<S> Ctx<'_, S> {
    fn conn(&self) -> &Conn<S> {
        &self.core.conns[self.slot]
    }

    /// This connection's id (valid in [`Handle`] calls from other threads too).
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

    /// This connection's session: the handler's own state for it.
    pub fn session(&mut self) -> &mut S {
        &mut self.core.conns[self.slot].session
    }

    /// Bytes waiting for the socket to take them: the backlog a peer that reads
    /// slower than we send builds up (see [`SendStatus::Queued`]).
    pub fn queued_bytes(&self) -> usize {
        self.conn().backlog()
    }

    /// The server's counters.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
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

    /// Sends a message to another connection; refused if it is gone or closing.
    pub fn send_to(&mut self, to: ConnId, message: Message<'_>) -> SendStatus {
        match self.core.slot_of(to) {
            Some(slot) => {
                let status = self
                    .core
                    .send(slot, opcode_of(&message), message.as_bytes());
                self.core.touched.push(slot);
                status
            }
            None => SendStatus::Refused,
        }
    }

    /// Starts the close handshake on another connection, as [`close`](Ctx::close)
    /// does on this one. An id of a connection that is gone is `Ok` and does nothing;
    /// a code that may not be sent is an error, whatever the id.
    pub fn close_connection(
        &mut self,
        id: ConnId,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), InvalidCloseCode> {
        let code = code.sendable()?;
        if let Some(slot) = self.core.slot_of(id) {
            self.core
                .close(slot, code, reason, CloseReason::Local { code });
        }
        Ok(())
    }

    /// Sends a message to every open connection, this one included. The frame is
    /// encoded once; each receiver's queue cap applies to it separately.
    pub fn broadcast(&mut self, message: Message<'_>) -> Fanout {
        self.core.broadcast(opcode_of(&message), message.as_bytes())
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

    /// Sends a message to every subscriber of `topic` (encoded once).
    pub fn publish(&mut self, topic: &str, message: Message<'_>) -> Fanout {
        self.core
            .publish(topic, opcode_of(&message), message.as_bytes())
    }

    /// Starts a graceful shutdown of the whole server after this callback.
    pub fn shutdown(&mut self) {
        self.core.shutdown_requested = true;
    }
}
