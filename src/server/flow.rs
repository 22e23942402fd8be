//! Flow events for the handler: a queue drained to its low-water mark (`on_drain`),
//! messages a connection missed (`on_dropped`, once per turn, and
//! `Stats::messages_dropped`), and pongs with the keepalive round trip (`on_pong`,
//! `Ctx::ping_rtt`).
//!
//! Sends note what the handler is owed on the connection (a bit for a drain, a count
//! of drops in its queue) and put a connection with new drops on a list; the loop pays
//! drains after a write the socket took, and reports the listed drops at the end of the
//! turn, so a fan-out to many slow receivers runs no callback inside its loop.

use super::dispatch::guard;
use super::{Core, Ctx, Server};
use crate::conn::{low_water, QueuePolicy};
use crate::handler::{Handler, SendStatus};
use mio::Token;
use std::time::Duration;

impl<S> Core<S> {
    /// After a send to `slot` (any path: `Ctx`, fan-out, `Handle`): a queued or
    /// refused send owes a drain; a refusal of an open connection is a drop; a
    /// connection with new drops goes on the list to report.
    pub(super) fn note_flow(&mut self, slot: usize, status: SendStatus) {
        let conn = &mut self.conns[slot];
        match status {
            SendStatus::Written => {}
            SendStatus::Queued(_) => conn.owe_drain(),
            SendStatus::Refused => {
                if conn.is_open() {
                    conn.owe_drain();
                    conn.out.note_dropped(&self.io.meter, 1);
                }
            }
            // A message in parts is open on this connection: the other message is
            // missed (a drop), but no queue has to drain for the next one.
            SendStatus::Busy => {
                if conn.is_open() {
                    conn.out.note_dropped(&self.io.meter, 1);
                }
            }
        }
        // Drops are noted by a refusal, or by a policy that drops from the queue.
        let may_have_dropped = matches!(status, SendStatus::Refused | SendStatus::Busy)
            || conn.queue_policy() == QueuePolicy::DropOldest;
        if may_have_dropped {
            self.list_drops(slot);
        }
    }

    /// Puts `slot` on the list of drops to report at the end of the turn, if it has
    /// drops noted that are not listed yet.
    pub(super) fn list_drops(&mut self, slot: usize) {
        if self.conns[slot].out.take_unlisted_drops() {
            self.dropped.push(slot);
        }
    }

    /// Counts the drops noted on `slot` that were not reported (it is closing, or its
    /// queue is about to be discarded).
    pub(super) fn count_unreported_drops(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            self.stats.messages_dropped += conn.out.take_dropped();
        }
    }
}

impl<H: Handler> Server<H> {
    /// The socket took queued bytes from `slot`: pays a drain owed if the queue is
    /// down to the low-water mark, and flushes what the handler sent from it.
    pub(super) fn drained(&mut self, slot: usize) {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(slot) else {
            return;
        };
        if !conn.take_drain(low_water(core.config.write_high_water)) {
            return;
        }
        let handler = &mut self.handler;
        guard(core, slot, "on_drain", |cx| handler.on_drain(cx));
        if let Some(conn) = core.conns.get_mut(slot) {
            if conn.is_unflushed() {
                conn.flush(&core.io, Token(slot));
            }
        }
    }

    /// Counts the drops of this turn and tells each connection's handler once.
    pub(super) fn report_drops(&mut self) {
        if self.core.dropped.is_empty() {
            return;
        }
        let mut slots = std::mem::take(&mut self.core.dropped);
        for &slot in &slots {
            let core = &mut self.core;
            // A slot listed for a connection that has closed since, and been reused:
            // the newcomer has nothing noted, and is skipped.
            let Some(conn) = core.conns.get_mut(slot) else {
                continue;
            };
            let dropped = conn.out.take_dropped();
            if dropped == 0 {
                continue;
            }
            core.stats.messages_dropped += dropped;
            if conn.is_open() {
                let handler = &mut self.handler;
                guard(core, slot, "on_dropped", |cx| {
                    handler.on_dropped(cx, dropped)
                });
                core.touched.push(slot);
            }
        }
        // Keep the list's buffer, unless the callbacks listed new drops meanwhile.
        if self.core.dropped.is_empty() {
            slots.clear();
            self.core.dropped = slots;
        }
    }
}

/// A pong from the peer: its round trip if it answers our keepalive ping, then the
/// handler's `on_pong`.
pub(super) fn pong<H: Handler>(
    core: &mut Core<H::Session>,
    handler: &mut H,
    slot: usize,
    payload: &[u8],
) {
    let micros = core.clock.micros();
    if let Some(rtt) = core.conns[slot].pong(payload, micros) {
        core.stats.ping_rtt_micros.record(rtt);
    }
    guard(core, slot, "on_pong", |cx| handler.on_pong(cx, payload));
}

impl<S> Ctx<'_, S> {
    /// The round trip of this connection's last answered keepalive ping, if one was.
    ///
    /// What it measures: from just before the loop hands the ping to the socket
    /// (when `idle_timeout` of silence has passed) to the moment the loop parses the
    /// pong that echoes it, in microseconds — the network both ways, the peer's time
    /// to answer, anything queued ahead of the ping on this connection (a peer that
    /// is behind on reading shows a long round trip), and how long the loop took to
    /// get to the pong's bytes. A pong is taken only if it echoes the latest ping's
    /// payload exactly (its 8 bytes are the send time), so an unsolicited or forged
    /// pong, or the answer to an older ping, leaves it as it was. Pings sent with
    /// [`ping`](Ctx::ping) are not measured (see [`Handler::on_pong`]). Saturates at
    /// `u32::MAX` µs (71 minutes).
    pub fn ping_rtt(&self) -> Option<Duration> {
        let rtt = self.core.conns[self.slot].rtt()?;
        Some(Duration::from_micros(rtt as u64))
    }
}
