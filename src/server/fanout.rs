//! One message to many connections: broadcast and topic publish, encoded (and
//! compressed) once and shared by every queue that has to hold it.

use super::Core;
use crate::conn::Conn;
use crate::handler::SendStatus;
use crate::outbox::SharedFrame;
use crate::proto::frame::{FrameHeader, Opcode};
use mio::Token;

impl<S> Core<S> {
    /// Sends one message to every open connection (encoded once).
    pub(super) fn broadcast_frame(&mut self, opcode: Opcode, payload: &[u8]) -> Fanout {
        #[cfg(feature = "cluster")]
        self.cluster_publish(None, opcode, payload);
        self.relay(None, opcode, payload);
        self.deliver_here(None, opcode, payload)
    }

    /// Sends one message to every subscriber of `topic` (encoded once).
    pub(super) fn publish_frame(&mut self, topic: &str, opcode: Opcode, payload: &[u8]) -> Fanout {
        #[cfg(feature = "cluster")]
        self.cluster_publish(Some(topic), opcode, payload);
        self.relay(Some(topic), opcode, payload);
        self.deliver_here(Some(topic), opcode, payload)
    }

    /// Delivers to this loop's subscribers of `topic` (every open connection for
    /// `None`) and nowhere else: the last step of a local broadcast or publish, and
    /// all of one that another loop relayed or another node sent through the broker
    /// (which are never passed on again).
    pub(super) fn deliver_here(
        &mut self,
        topic: Option<&str>,
        opcode: Opcode,
        payload: &[u8],
    ) -> Fanout {
        let slots = match topic {
            Some(topic) => self.topics.members(topic).to_vec(),
            None => self.slots(),
        };
        self.fanout(&slots, opcode, payload)
    }

    /// Sends one message to each open connection in `slots`, encoded once (and
    /// compressed once, for receivers that can share a compressed frame). Receivers
    /// that are behind queue the one shared copy.
    pub(super) fn fanout(&mut self, slots: &[usize], opcode: Opcode, payload: &[u8]) -> Fanout {
        if slots.is_empty() {
            // Nobody here to send to (a topic no one on this loop joined, as the
            // binary's stats stream is while no page watches): nothing to encode.
            return Fanout::default();
        }
        let encoded = FrameHeader::server(opcode, payload.len()).frame_with(payload);
        let plain = SharedFrame::new(encoded, &self.io.meter);
        self.stats.fanout_frames_encoded += 1;
        let bits = self.config.deflate_window_bits.clamp(9, 15);
        let shares_compressed = |conn: &Conn<S>| {
            conn.deflate().is_some_and(|d| {
                d.params.server_no_context_takeover && d.params.server_max_window_bits == bits
            })
        };
        let compressed = (payload.len() >= self.config.deflate_threshold
            && matches!(opcode, Opcode::Text | Opcode::Binary)
            && slots
                .iter()
                .any(|&slot| self.conns.get(slot).is_some_and(shares_compressed)))
        .then(|| {
            self.stats.fanout_frames_encoded += 1;
            let frame = self.compression.encode_shared(bits, opcode, payload);
            SharedFrame::new(frame, &self.io.meter)
        });
        let payload_len = payload.len();
        let mut fanout = Fanout::default();
        for &slot in slots {
            let Some(conn) = self.conns.get(slot) else {
                continue;
            };
            if !conn.is_open() {
                continue;
            }
            let frame = match &compressed {
                Some(compressed) if shares_compressed(conn) => compressed,
                _ => &plain,
            };
            let behind = conn.out.pending() > 0;
            let status = if conn.sending_part().is_some() {
                // Its own message in parts is open: refused, not held back (see
                // `parts`), and counted as any refusal.
                SendStatus::Busy
            } else if behind && !self.outgoing_room(slot, frame.bytes().len()) {
                SendStatus::Refused
            } else {
                let max_queue = self.config.max_send_queue;
                self.conns[slot].send_shared(&self.io, Token(slot), frame, max_queue)
            };
            match status {
                SendStatus::Refused | SendStatus::Busy => fanout.refused += 1,
                _ => {
                    fanout.sent += 1;
                    self.stats.fanout_deliveries += 1;
                }
            }
            self.count_send(slot, status, payload_len);
            self.touched.push(slot);
        }
        fanout
    }
}

/// How a broadcast or publish went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Receivers whose socket took the frame or who queued it.
    pub sent: usize,
    /// Receivers that refused it (queue over the cap, or the outgoing budget full);
    /// they miss this message. A receiver whose [`QueuePolicy`](crate::QueuePolicy)
    /// made room by dropping older messages counts as sent (the drops are reported by
    /// [`Handler::on_dropped`](crate::Handler::on_dropped)).
    pub refused: usize,
}
