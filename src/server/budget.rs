//! The loop-wide memory budgets: bytes held for incomplete incoming messages and bytes
//! queued for sending, counted in one place, and who is closed when they run out. Also
//! the burst-rate logging of those closes, and handing freed memory back to the system.

use super::Core;
use crate::handler::CloseReason;
use crate::proto::ProtocolError;
use crate::timer::Millis;

impl<S> Core<S> {
    /// Brings the incoming total up to date after a receiver went from holding
    /// `before` bytes to `after`.
    pub(super) fn adjust_incoming(&mut self, before: usize, after: usize) {
        self.incoming = (self.incoming + after).saturating_sub(before);
    }

    /// Takes back everything a connection's receiver holds (it will parse no more).
    pub(super) fn release_incoming(&mut self, slot: usize) {
        let rx = &mut self.conns[slot].rx;
        let held = rx.held();
        self.compression.release(rx);
        self.adjust_incoming(held, 0);
    }

    /// Lets `asking` (whose receiver is out of the table, reading) hold `bytes` more,
    /// if the incoming budget has room or can be made to have it. `asking_holds` is
    /// what it holds already.
    pub(super) fn grant_incoming(
        &mut self,
        asking: usize,
        asking_holds: usize,
        bytes: usize,
    ) -> bool {
        let budget = self.config.incoming_budget;
        if self.incoming + bytes > budget {
            self.make_incoming_room(asking, asking_holds + bytes, self.incoming + bytes - budget);
        }
        if self.incoming + bytes > budget {
            return false;
        }
        self.incoming += bytes;
        true
    }

    /// Frees at least `needed` bytes of the incoming budget if it can, for a connection
    /// that would then hold `wanted`: first the buffers idle connections keep for
    /// reuse, then stalled half-received messages (longest stalled first), then any
    /// holder larger than `wanted` (largest first). Closed ones get 1013.
    pub(super) fn make_incoming_room(&mut self, asking: usize, wanted: usize, needed: usize) {
        let target = self.incoming.saturating_sub(needed);
        // Buffers kept for reuse by connections between messages: free, no harm done.
        for (slot, conn) in self.conns.iter_mut() {
            if self.incoming <= target {
                return;
            }
            if slot != asking && !conn.rx.is_mid_message() && conn.rx.held() > 0 {
                let held = conn.rx.held();
                conn.rx.shed_buffers();
                self.incoming = (self.incoming + conn.rx.held()).saturating_sub(held);
            }
        }
        let stalled_before = self.now.saturating_sub(STALL_GRACE);
        let mut holders: Vec<(bool, Millis, usize, usize)> = self
            .conns
            .iter()
            .filter(|&(slot, conn)| {
                slot != asking
                    && conn.rx.is_mid_message()
                    && conn.rx.held() > 0
                    && conn.parses_frames()
            })
            .map(|(slot, conn)| {
                let progress = conn.message_progress().unwrap_or(0);
                let stalled = progress <= stalled_before;
                (stalled, progress, conn.rx.held(), slot)
            })
            .filter(|&(stalled, _, held, _)| stalled || held > wanted)
            .collect();
        // Stalled first, longest stalled first; then the largest.
        holders.sort_unstable_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| if a.0 { a.1.cmp(&b.1) } else { b.2.cmp(&a.2) })
        });
        for (_, _, _, slot) in holders {
            if self.incoming <= target {
                return;
            }
            self.release_incoming(slot);
            self.fail(slot, ProtocolError::OverBudget);
            self.touched.push(slot);
        }
    }

    /// Whether `bytes` more may be queued for `slot`, after dropping the stalest queues
    /// of other connections if the outgoing budget is short.
    pub(super) fn outgoing_room(&mut self, slot: usize, bytes: usize) -> bool {
        let budget = self.config.outgoing_budget;
        if self.io.meter.get() + bytes <= budget {
            return true;
        }
        self.make_outgoing_room(Some(slot), bytes);
        self.io.meter.get() + bytes <= budget
    }

    /// Called at the end of every turn: write-through sends that the socket did not
    /// take may have queued past the budget.
    pub(super) fn enforce_outgoing_budget(&mut self) {
        if self.io.meter.get() > self.config.outgoing_budget {
            self.make_outgoing_room(None, 0);
        }
    }

    /// Drops connections whose send queues have not moved for longest — readers that
    /// stopped reading — until `bytes` more fit with an eighth of the budget to spare
    /// (so that a stream of sends does not rescan every connection each time).
    pub(super) fn make_outgoing_room(&mut self, except: Option<usize>, bytes: usize) {
        let budget = self.config.outgoing_budget;
        let target = (budget - budget / 8).saturating_sub(bytes);
        // The queue that has not moved for longest first (a reader that stopped
        // reading), the largest first among equals. Not the largest alone: a reader that
        // keeps up may have a large queue for a moment, and shared frames are freed only
        // when every queue that holds them is gone.
        let mut queues: Vec<(u64, std::cmp::Reverse<usize>, usize)> = self
            .conns
            .iter()
            .filter(|&(slot, conn)| Some(slot) != except && conn.out.pending() > 0)
            .map(|(slot, conn)| {
                (
                    conn.out.last_moved(),
                    std::cmp::Reverse(conn.out.pending()),
                    slot,
                )
            })
            .collect();
        queues.sort_unstable();
        for (_, _, slot) in queues {
            if self.io.meter.get() <= target {
                break;
            }
            self.count_unreported_drops(slot);
            let conn = &mut self.conns[slot];
            log::debug!(
                "{}: dropped: its send queue took the outgoing budget",
                conn.peer
            );
            conn.out.clear();
            conn.note_close_reason(CloseReason::OutgoingBudget);
            conn.abort();
            self.stats.outgoing_budget_closes += 1;
            self.budget_log
                .note("outgoing budget full: dropped connections whose send queues stopped moving");
            self.touched.push(slot);
        }
    }
}

/// A half-received message that has not grown for this long counts as stalled when the
/// incoming budget needs room: its connection is closed before any that is sending.
pub(super) const STALL_GRACE: Millis = 1000;

/// Gives freed message and queue memory back to the system once a lot of it has been
/// freed and stayed free for a second (an attack closed out of the budgets, a burst of
/// large messages over): otherwise the allocator keeps it, and RSS stays at the peak.
/// Not while large messages keep flowing: the next one would fault every page in again.
#[derive(Debug, Default)]
pub(super) struct HeapTrim {
    high_water: usize,
    low_since: Option<Millis>,
}

/// Freed bytes (of what the budgets count) worth a trim.
pub(super) const TRIM_AFTER_FREEING: usize = 16 << 20;

/// How long that much must stay free before the trim.
pub(super) const TRIM_AFTER_QUIET: Millis = 1000;

impl HeapTrim {
    /// When a trim is waiting to happen, so that an idle loop wakes for it.
    pub(super) fn due(&self) -> Option<Millis> {
        Some(self.low_since? + TRIM_AFTER_QUIET)
    }

    pub(super) fn after_turn(&mut self, held: usize, now: Millis) {
        self.high_water = self.high_water.max(held);
        if self.high_water - held < TRIM_AFTER_FREEING {
            self.low_since = None;
            return;
        }
        match self.low_since {
            None => self.low_since = Some(now),
            Some(since) if now >= since + TRIM_AFTER_QUIET => {
                crate::sys::trim_heap();
                self.high_water = held;
                self.low_since = None;
            }
            Some(_) => {}
        }
    }
}

/// Counts events worth a warning and logs them at most once a second, so that an
/// attack that closes thousands of connections leaves a few lines, not thousands.
#[derive(Debug, Default)]
pub(super) struct BurstLog {
    what: &'static str,
    count: u64,
    last: Option<Millis>,
}

impl BurstLog {
    pub(super) fn note(&mut self, what: &'static str) {
        self.what = what;
        self.count += 1;
    }

    pub(super) fn report(&mut self, now: Millis) {
        if self.count > 0 && self.last.is_none_or(|last| now >= last + 1000) {
            log::warn!("{} ({} since the last report)", self.what, self.count);
            self.count = 0;
            self.last = Some(now);
        }
    }
}
