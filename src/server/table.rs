//! The connection table: look a connection up by id, send to it, close it, fail it;
//! and the gauges copied into `Stats` after every turn.

use super::Core;
use crate::handler::{CloseReason, ConnId, SendStatus};
use crate::proto::frame::{FrameHeader, Opcode};
use crate::proto::{CloseCode, Message, ProtocolError};
use mio::Token;

impl<S> Core<S> {
    pub(super) fn id(&self, slot: usize) -> ConnId {
        ConnId {
            loop_index: self.loop_index,
            slot: slot as u32,
            generation: self.conns[slot].generation,
        }
    }

    /// The slot of a live connection, if `id` still names one.
    pub(super) fn slot_of(&self, id: ConnId) -> Option<usize> {
        let slot = id.slot as usize;
        if id.loop_index != self.loop_index {
            return None;
        }
        match self.conns.get(slot) {
            Some(conn) if conn.generation == id.generation => Some(slot),
            _ => None,
        }
    }

    pub(super) fn eof(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        // Nothing worth keeping the socket for once the peer has gone.
        conn.peer_eof();
    }

    /// Sends one frame to an open connection, counting it and noting a stall.
    pub(super) fn send(&mut self, slot: usize, opcode: Opcode, payload: &[u8]) -> SendStatus {
        if !self.conns[slot].is_open() {
            self.stats.sends_refused += 1;
            return SendStatus::Refused;
        }
        if self.conns[slot].sending_part().is_some() && !opcode.is_control() {
            // A message sent in parts is open: another would land inside it.
            self.count_send(slot, SendStatus::Busy, payload.len());
            return SendStatus::Busy;
        }
        // A connection that is behind queues whatever it is sent: it needs room in
        // the outgoing budget first. (One that is not writes through; what the socket
        // does not take is queued and the budget is enforced at the end of the turn.)
        if self.conns[slot].out.pending() > 0 && !self.outgoing_room(slot, payload.len()) {
            self.count_send(slot, SendStatus::Refused, payload.len());
            return SendStatus::Refused;
        }
        let conn = &mut self.conns[slot];
        let (io, max_queue) = (&self.io, self.config.max_send_queue);
        let compress = payload.len() >= self.config.deflate_threshold
            && matches!(opcode, Opcode::Text | Opcode::Binary);
        let deflate = conn.extras.as_mut().and_then(|e| e.deflate.as_mut());
        let status = match deflate {
            Some(deflate) if compress => {
                let compressed = self.compression.compress(deflate, payload);
                let header = FrameHeader::server_compressed(opcode, compressed.len());
                conn.send_with_header(io, Token(slot), header, compressed, max_queue)
            }
            _ => conn.send_frame(io, Token(slot), opcode, payload, max_queue),
        };
        self.count_send(slot, status, payload.len());
        status
    }

    pub(super) fn count_send(&mut self, slot: usize, status: SendStatus, len: usize) {
        match status {
            SendStatus::Written | SendStatus::Queued(_) => {
                self.stats.messages_out += 1;
                self.stats.bytes_out += len as u64;
            }
            SendStatus::Busy => self.stats.sends_refused += 1,
            SendStatus::Refused => {
                self.stats.sends_refused += 1;
                if self.conns[slot].send_refused(self.now) {
                    self.touched.push(slot);
                }
            }
        }
        self.note_flow(slot, status);
    }

    /// Every connection's slot: a copy, so the table can change while they are visited.
    pub(super) fn slots(&self) -> Vec<usize> {
        self.conns.iter().map(|(slot, _)| slot).collect()
    }

    /// Starts the close handshake on an open connection.
    pub(super) fn close(&mut self, slot: usize, code: CloseCode, reason: &str, why: CloseReason) {
        let conn = &mut self.conns[slot];
        if !conn.is_open() {
            return;
        }
        conn.close(&self.io, Token(slot), code, reason, self.now);
        conn.set_close_reason(why);
        self.touched.push(slot);
    }

    /// Fails the connection (§7.1.7): a close frame with the error's code, then shut down.
    pub(super) fn fail(&mut self, slot: usize, error: ProtocolError) {
        if error == ProtocolError::OverBudget {
            // Whether the connection asked for the room or was closed to make it.
            self.stats.incoming_budget_closes += 1;
            self.budget_log
                .note("incoming budget full: closing connections with 1013");
        }
        let conn = &mut self.conns[slot];
        log::debug!("{}: protocol error: {error}", conn.peer);
        if conn.is_open() {
            conn.set_close_reason(CloseReason::Protocol(error));
        }
        conn.fail(&self.io, Token(slot), error, self.now);
    }

    /// Copies the gauges into the stats, and logs budget closes once per burst.
    pub(super) fn update_gauges(&mut self) {
        self.stats.handshakes_in_progress = self.handshaking as u64;
        self.stats.deadline_entries = self.timers.len() as u64;
        self.stats.incoming_bytes = self.incoming as u64;
        self.stats.outgoing_bytes = self.io.meter.get() as u64;
        self.stats.send_pool_bytes = self.io.meter.pooled() as u64;
        self.stats.topic_memberships = self.topics.memberships() as u64;
        self.stats.inflaters_lent = self.compression.lent() as u64;
        self.stats.timers_pending = self.app_timers.len() as u64;
        self.budget_log.report(self.now);
        self.trim
            .after_turn(self.incoming + self.io.meter.get(), self.now);
    }
}

pub(super) fn opcode_of(message: &Message<'_>) -> Opcode {
    match message {
        Message::Text(_) => Opcode::Text,
        Message::Binary(_) => Opcode::Binary,
    }
}

#[cfg(test)]
mod tests {
    use crate::outbox::{Outbox, POOL_IDLE};
    use crate::{Config, Ctx, Handler, Message, Server};

    struct Quiet;

    impl Handler for Quiet {
        type Session = ();
        fn on_message(&mut self, _cx: &mut Ctx<'_>, _message: Message<'_>) {}
    }

    /// `send_pool_bytes` is what the loop's pool of drained send buffers holds when the
    /// gauges are copied: nothing at start, a large drained buffer once it went back,
    /// nothing again once the pool was emptied for want of use.
    #[test]
    fn the_send_pool_gauge_follows_the_pool() {
        let addr = "127.0.0.1:0".parse().unwrap();
        let mut server = Server::bind(addr, Config::default(), Quiet).unwrap();
        let core = &mut server.core;
        core.update_gauges();
        assert_eq!(core.stats.send_pool_bytes, 0);
        let meter = core.io.meter.clone();
        meter.set_now(10);
        // The rest of a large frame the socket did not take, written later: its
        // buffer is too large to stay with the queue, so it goes to the pool.
        let mut out = Outbox::default();
        out.push(&meter, &[&[7; 100_000]]);
        assert!(out.write_to(&mut Vec::new()).unwrap());
        core.update_gauges();
        assert!(core.stats.send_pool_bytes >= 100_000);
        assert_eq!(core.stats.send_pool_bytes, meter.pooled() as u64);
        meter.set_now(10 + POOL_IDLE);
        core.update_gauges();
        assert_eq!(core.stats.send_pool_bytes, 0);
    }
}
