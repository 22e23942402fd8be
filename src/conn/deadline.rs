//! What a connection waits for and when: the one deadline the loop keeps for it,
//! chosen among the waits its phase has running (handshake, keepalive, send stall,
//! a half-received message, a stuck relay, the close). Each wait's start is stamped
//! by the transition that begins it (a message's progress, here); the deadline only
//! reads them.

use super::flow::RELAY_PATIENCE;
use super::{Conn, Phase};
use crate::config::Timeouts;
use crate::proto::keepalive::KeepaliveDue;
use crate::timer::{deadline_after, Millis, When};

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

impl<S> Conn<S> {
    /// The half-received message grew (or began): its stall clock starts again.
    pub fn message_grew(&mut self, now: Millis) {
        self.progress = When::at(now);
    }

    /// When the half-received message last grew.
    pub fn message_progress(&self) -> Option<Millis> {
        self.progress.get()
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
