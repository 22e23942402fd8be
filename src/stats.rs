//! Counters the loop keeps as it works: cheap enough to be always on.

use std::fmt;

/// What the server has done since it started. Read it with
/// [`Server::stats`](crate::Server::stats) or [`Ctx::stats`](crate::Ctx::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// WebSocket connections open right now.
    pub open_connections: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// TCP connections refused with 503 (over `max_connections` or `max_handshakes`).
    pub refused: u64,
    /// Upgrades completed (101 sent).
    pub handshakes: u64,
    /// Requests answered with an HTTP error or a page instead of a 101.
    pub http_responses: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages sent (or queued), broadcast receivers counted one by one.
    pub messages_out: u64,
    /// Payload bytes of data messages received (inflated size if compressed).
    pub bytes_in: u64,
    /// Payload bytes of data messages sent (before compression).
    pub bytes_out: u64,
    /// Frames encoded for broadcast or publish: one per call, however many receive it.
    pub fanout_frames_encoded: u64,
    /// Receivers a broadcast or published frame was handed to (sent or queued).
    pub fanout_deliveries: u64,
    /// Connections failed because the peer broke the protocol.
    pub protocol_errors: u64,
    /// Handler panics caught (each closed its connection with 1011).
    pub handler_panics: u64,
    /// Closed WebSocket connections, by close code (1006 for a lost TCP connection).
    pub closes: Vec<(u16, u64)>,
    /// Sends refused: the receiver's queue was over `max_send_queue`, the loop's
    /// outgoing budget had no room, or the connection was closing. Broadcast and
    /// publish receivers count one by one.
    pub sends_refused: u64,
    /// Connections closed (1013) to make room in the incoming budget, or because the
    /// room they needed was not there.
    pub incoming_budget_closes: u64,
    /// Connections dropped (1008) because their queues took the outgoing budget.
    pub outgoing_budget_closes: u64,
    /// Connections closed (1008) because a half-received message stopped growing for
    /// `message_timeout`.
    pub message_timeouts: u64,
    /// Gauge: connections still in the upgrade handshake.
    pub handshakes_in_progress: u64,
    /// Gauge: entries in the loop's deadline queue (at most one per connection).
    pub deadline_entries: u64,
    /// Gauge: bytes held for incoming messages that are not complete yet (assembly
    /// buffers kept for reuse and lent inflaters included), against `incoming_budget`.
    pub incoming_bytes: u64,
    /// Gauge: bytes queued for sending over all connections (a shared broadcast frame
    /// once), against `outgoing_budget`.
    pub outgoing_bytes: u64,
    /// Gauge: topic subscriptions, over all topics and connections.
    pub topic_memberships: u64,
    /// Gauge: inflaters held by connections (lent from the loop's pool, or kept with
    /// context takeover).
    pub inflaters_lent: u64,
}

impl Stats {
    pub(crate) fn count_close(&mut self, code: u16) {
        match self.closes.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => {
                self.closes.push((code, 1));
                self.closes.sort_unstable();
            }
        }
    }
}

impl fmt::Display for Stats {
    /// A one-line summary for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open {} accepted {} refused {} handshakes {} http {} msgs in/out {}/{} bytes in/out {}/{} fanout encodes/deliveries {}/{} sends refused {} held in/out {}/{} budget closes in/out {}/{} message timeouts {} upgrading {} deadlines {} memberships {} inflaters {} protocol errors {} panics {} closes",
            self.open_connections,
            self.accepted,
            self.refused,
            self.handshakes,
            self.http_responses,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            self.fanout_frames_encoded,
            self.fanout_deliveries,
            self.sends_refused,
            self.incoming_bytes,
            self.outgoing_bytes,
            self.incoming_budget_closes,
            self.outgoing_budget_closes,
            self.message_timeouts,
            self.handshakes_in_progress,
            self.deadline_entries,
            self.topic_memberships,
            self.inflaters_lent,
            self.protocol_errors,
            self.handler_panics,
        )?;
        if self.closes.is_empty() {
            f.write_str(" none")?;
        }
        for (code, n) in &self.closes {
            write!(f, " {code}:{n}")?;
        }
        Ok(())
    }
}
