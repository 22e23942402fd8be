//! Deadlines: what happens when a connection's wait runs out — the handshake, the
//! keepalive ping and its pong, a send queue stuck over its cap, a half-received
//! message that stopped growing, the peer's side of the close.

use super::{Core, Server};
use crate::conn::{Wait, RELAY_PATIENCE};
use crate::handler::{CloseReason, Handler};
use crate::proto::CloseCode;
use mio::Token;

impl<H: Handler> Server<H> {
    /// Acts on every deadline that has passed.
    pub(super) fn expire_deadlines(&mut self) {
        let now = self.core.now;
        while let Some(slot) = self.core.timers.due(now) {
            let Some(conn) = self.core.conns.get(slot) else {
                self.core.timers.remove(slot);
                continue;
            };
            match conn.next_deadline(&self.core.timeouts) {
                Some((at, wait)) if at <= now => {
                    self.core.timers.remove(slot);
                    self.core.on_deadline(slot, wait);
                    self.settle_conn(slot);
                    // Every wait moves the connection on; should one not, it must not
                    // spin this loop.
                    if self.core.timers.queued(slot).is_some_and(|at| at <= now) {
                        self.core.timers.set(slot, now + 1);
                    }
                }
                // The deadline moved later since the entry was queued: move the entry.
                Some((at, _)) => self.core.timers.set(slot, at),
                None => self.core.timers.remove(slot),
            }
        }
        if let Some(deadline) = self.shutdown_deadline {
            if deadline <= now {
                for slot in self.core.slots() {
                    self.core.conns[slot].abort();
                    self.settle_conn(slot);
                }
            }
        }
    }
}

impl<S> Core<S> {
    /// A connection's deadline passed: what it was waiting for did not happen.
    pub(super) fn on_deadline(&mut self, slot: usize, wait: Wait) {
        let now = self.now;
        let conn = &mut self.conns[slot];
        match wait {
            Wait::Handshake => {
                log::debug!("{}: handshake timed out", conn.peer);
                if conn.tls_handshaking() {
                    self.stats.tls_handshake_failures += 1;
                }
                conn.abort();
            }
            Wait::SendStall => {
                log::debug!("{}: send queue full for too long", conn.peer);
                let why = CloseReason::SendStalled;
                self.close(slot, CloseCode::POLICY_VIOLATION, "send queue full", why);
            }
            Wait::MessageProgress => {
                log::debug!("{}: half-received message stalled", conn.peer);
                self.stats.message_timeouts += 1;
                let (code, reason) = (CloseCode::POLICY_VIOLATION, "message timeout");
                conn.close(&self.io, Token(slot), code, reason, now);
                conn.set_close_reason(CloseReason::MessageTimeout);
                // The rest of that message is not waited for.
                conn.stop_reading(&self.io, Token(slot));
                self.release_incoming(slot);
            }
            Wait::Pong => {
                log::debug!("{}: no answer to keepalive ping", conn.peer);
                let (code, reason) = (CloseCode::INTERNAL_ERROR, "keepalive timeout");
                conn.close(&self.io, Token(slot), code, reason, now);
                conn.set_close_reason(CloseReason::KeepaliveTimeout);
                // A peer that does not answer pings will not answer a close either.
                conn.abort();
            }
            Wait::Idle => {
                conn.ping(&self.io, Token(slot), now, self.clock.micros());
                // Quiet for a whole idle period: give back the buffers its last
                // messages left (they are kept while traffic flows, so that the
                // echo path allocates nothing per message).
                conn.flush(&self.io, Token(slot));
                conn.out.shed();
                // And the extras a message sent in parts left (nothing else in them).
                conn.shed_extras();
                let held = conn.rx.held();
                conn.rx.shed_buffers();
                let after = conn.rx.held();
                self.adjust_incoming(held, after);
            }
            Wait::Close => {
                log::debug!("{}: close timed out", conn.peer);
                conn.abort();
            }
            Wait::RelayStuck => {
                // The deadline moves as the socket takes output; here it did not.
                let waited = conn.relay_waiting_since();
                if waited.is_some_and(|since| since.saturating_add(RELAY_PATIENCE) <= now) {
                    log::debug!("{}: relay reads on, the peer reads none of it", conn.peer);
                    conn.unpause_relay();
                    // Edge-triggered: the input that waited raises no new event.
                    self.backlog.push(slot);
                }
            }
        }
    }
}
