//! Application timers: per-connection ([`Ctx::set_timer`], cancelled with their
//! connection) and server-level ([`Loop::set_loop_timer`]), fired on the loop thread
//! through [`Handler::on_timer`] and [`Handler::on_loop_timer`].
//!
//! They live in a slab of their own, and their deadlines in a [`DeadlineQueue`]
//! keyed by slab index, the loop's indexed heap: cancelling removes the heap entry at
//! once, so set/cancel churn never grows the heap (a heap with lazy deletion would
//! keep every cancelled entry until its moment came), and firing pops due entries
//! without a scan. A connection's timers are linked through the slab (a doubly
//! linked list per connection, its head in a table indexed by connection slot), so
//! its close cancels them all without a search and `Conn` grows by nothing.
//! Ids carry a serial that is never reused: an id of a timer that fired, was
//! cancelled or went with its connection names nothing, never a newer timer.

use super::dispatch::guard;
use super::{Core, Ctx, Loop, Server};
use crate::handler::Handler;
use crate::timer::{DeadlineQueue, Millis};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Identifies one application timer, for [`Loop::cancel_timer`].
///
/// Never reused: once the timer has fired or been cancelled (by hand, or with its
/// connection) its id names nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    serial: u64,
}

/// Why a timer was not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerError {
    /// [`Config::max_timers`](crate::Config::max_timers) timers are pending already.
    TooMany,
    /// This connection has
    /// [`Config::max_timers_per_connection`](crate::Config::max_timers_per_connection)
    /// timers pending already.
    TooManyForConnection,
    /// The connection is closing: its timers would never fire.
    Closing,
}

impl fmt::Display for TimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimerError::TooMany => "too many timers pending (Config::max_timers)",
            TimerError::TooManyForConnection => {
                "too many timers pending for this connection (Config::max_timers_per_connection)"
            }
            TimerError::Closing => "the connection is closing",
        })
    }
}

impl std::error::Error for TimerError {}

/// No timer / no connection, in the links.
const NONE: u32 = u32::MAX;

/// One slab entry: a pending timer, or a free one (`serial == 0`).
#[derive(Debug, Clone, Copy)]
struct Timer {
    serial: u64,
    token: u64,
    /// The connection slot it belongs to, or `NONE` for a server-level timer.
    owner: u32,
    /// Its neighbours in its connection's list (unused for server-level timers).
    prev: u32,
    next: u32,
}

/// A connection's timers: the head of its list, and how many.
#[derive(Debug, Clone, Copy)]
struct Owned {
    head: u32,
    count: u32,
}

const NO_TIMERS: Owned = Owned {
    head: NONE,
    count: 0,
};

/// A timer that came due, taken out of the slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    /// The connection slot, or `None` for a server-level timer.
    pub owner: Option<usize>,
    pub token: u64,
}

/// Every pending application timer.
#[derive(Debug, Default)]
pub(crate) struct AppTimers {
    slab: Vec<Timer>,
    free: Vec<u32>,
    queue: DeadlineQueue,
    /// Connection slot → its timers.
    owned: Vec<Owned>,
    /// The serial of the last timer set (0: none yet, and the mark of a free entry).
    serial: u64,
    max: usize,
    max_per_connection: u32,
}

impl AppTimers {
    pub fn new(max: usize, max_per_connection: usize) -> AppTimers {
        AppTimers {
            max,
            max_per_connection: u32::try_from(max_per_connection).unwrap_or(u32::MAX),
            ..AppTimers::default()
        }
    }

    /// Timers pending.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The earliest moment a timer is due, for the loop's poll timeout.
    pub fn next(&self) -> Option<Millis> {
        self.queue.next()
    }

    /// Sets a timer for `at`, owned by connection slot `owner` if any.
    pub fn set(
        &mut self,
        at: Millis,
        token: u64,
        owner: Option<usize>,
    ) -> Result<TimerId, TimerError> {
        if self.len() >= self.max {
            return Err(TimerError::TooMany);
        }
        let owner = owner.map_or(NONE, |slot| slot as u32);
        if owner != NONE {
            let owned = self.owned.get(owner as usize).copied().unwrap_or(NO_TIMERS);
            if owned.count >= self.max_per_connection {
                return Err(TimerError::TooManyForConnection);
            }
        }
        self.serial += 1;
        let timer = Timer {
            serial: self.serial,
            token,
            owner,
            prev: NONE,
            next: NONE,
        };
        // Bounded by `max`, which is below u32::MAX in any real configuration
        // (`TooMany` otherwise, once the indices run out).
        let index = match self.free.pop() {
            Some(index) => {
                self.slab[index as usize] = timer;
                index
            }
            None => {
                let Ok(index) = u32::try_from(self.slab.len()) else {
                    return Err(TimerError::TooMany);
                };
                if index == NONE {
                    return Err(TimerError::TooMany);
                }
                self.slab.push(timer);
                index
            }
        };
        if owner != NONE {
            self.link(index, owner as usize);
        }
        self.queue.set(index as usize, at);
        Ok(TimerId {
            index,
            serial: self.serial,
        })
    }

    /// Cancels a pending timer: false if `id` names none (fired, cancelled, or gone
    /// with its connection).
    pub fn cancel(&mut self, id: TimerId) -> bool {
        let live = self
            .slab
            .get(id.index as usize)
            .is_some_and(|timer| timer.serial == id.serial);
        if live {
            self.remove(id.index);
        }
        live
    }

    /// Cancels every timer of connection slot `slot` (it closed).
    pub fn cancel_connection(&mut self, slot: usize) {
        while let Some(head) = self.owned.get(slot).map(|o| o.head).filter(|&h| h != NONE) {
            self.remove(head);
        }
    }

    /// Takes out the timer that is due at `now`, if any: it is gone (its id dead)
    /// before the handler hears of it, so the handler may set it again.
    pub fn pop_due(&mut self, now: Millis) -> Option<Due> {
        let index = self.queue.due(now)? as u32;
        let timer = self.slab[index as usize];
        self.remove(index);
        Some(Due {
            owner: (timer.owner != NONE).then_some(timer.owner as usize),
            token: timer.token,
        })
    }

    fn remove(&mut self, index: u32) {
        let timer = self.slab[index as usize];
        if timer.owner != NONE {
            self.unlink(timer);
        }
        self.queue.remove(index as usize);
        self.slab[index as usize].serial = 0;
        self.free.push(index);
    }

    fn link(&mut self, index: u32, slot: usize) {
        if self.owned.len() <= slot {
            self.owned.resize(slot + 1, NO_TIMERS);
        }
        let owned = &mut self.owned[slot];
        let head = owned.head;
        owned.head = index;
        owned.count += 1;
        self.slab[index as usize].next = head;
        if head != NONE {
            self.slab[head as usize].prev = index;
        }
    }

    fn unlink(&mut self, timer: Timer) {
        let owned = &mut self.owned[timer.owner as usize];
        owned.count -= 1;
        if timer.prev == NONE {
            owned.head = timer.next;
        } else {
            self.slab[timer.prev as usize].next = timer.next;
        }
        if timer.next != NONE {
            self.slab[timer.next as usize].prev = timer.prev;
        }
    }
}

/// `after` as whole milliseconds from the loop's time, rounded up and at least one,
/// so that a timer set while timers fire (say, re-armed from its own callback with
/// `Duration::ZERO`) waits for a later pass instead of spinning this one.
fn due_at(now: Millis, after: Duration) -> Millis {
    let ms = after.as_nanos().div_ceil(1_000_000).max(1);
    now.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX))
}

impl<S> Loop<S> {
    /// Sets a server-level timer: [`Handler::on_loop_timer`] is called with `token`
    /// once `after` has passed (counted from the start of the current loop turn, in
    /// whole milliseconds, at least one: a timer never fires in the pass that set it).
    ///
    /// Timers live in the loop's deadline heap, so the loop sleeps exactly until the
    /// next one; a pending one costs about 50 bytes, and at most
    /// [`Config::max_timers`](crate::Config::max_timers) may be pending
    /// ([`TimerError::TooMany`] past it). To repeat, set the next one from
    /// `on_loop_timer`.
    pub fn set_loop_timer(&mut self, after: Duration, token: u64) -> Result<TimerId, TimerError> {
        self.app_timers.set(due_at(self.now, after), token, None)
    }

    /// Cancels a pending timer, per-connection or server-level: true if it was
    /// pending, false if it has fired, was cancelled already, or went with its
    /// connection.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.app_timers.cancel(id)
    }

    /// Application timers pending in the whole server.
    pub fn timers_pending(&self) -> usize {
        self.app_timers.len()
    }
}

impl<S> Ctx<'_, S> {
    /// Sets a timer for this connection: [`Handler::on_timer`] is called with this
    /// connection's `Ctx` and `token` once `after` has passed (counted from the
    /// start of the current loop turn, in whole milliseconds, at least one).
    ///
    /// The timer goes with the connection: once its close handshake has begun it no
    /// longer fires, and when it has closed it is cancelled (it never fires after
    /// [`on_close`](Handler::on_close)). Bounded per connection
    /// ([`Config::max_timers_per_connection`](crate::Config::max_timers_per_connection))
    /// and in all ([`Config::max_timers`](crate::Config::max_timers)), so a handler
    /// that sets one per client message cannot be made to hold memory without
    /// bound. For a timer of the whole server, see [`Loop::set_loop_timer`].
    pub fn set_timer(&mut self, after: Duration, token: u64) -> Result<TimerId, TimerError> {
        if !self.core.conns[self.slot].is_open() {
            return Err(TimerError::Closing);
        }
        let at = due_at(self.core.now, after);
        self.core.app_timers.set(at, token, Some(self.slot))
    }
}

impl<S> Core<S> {
    /// Runs a handler callback that has no connection: a panic is logged and counted,
    /// and the loop goes on (there is no connection to close for it).
    pub(super) fn guard_loop(&mut self, what: &'static str, callback: impl FnOnce(&mut Loop<S>)) {
        let started = self.stalls.start();
        let result = catch_unwind(AssertUnwindSafe(|| callback(self)));
        self.stalls
            .callback_done(started, what, None, &mut self.stats);
        if result.is_err() {
            log::error!("handler panicked in {what}; the loop goes on");
            self.stats.handler_panics += 1;
        }
    }
}

impl<H: Handler> Server<H> {
    /// Fires every application timer that is due, each on the loop thread with its
    /// connection's `Ctx` (a panic closes that connection, 1011) or the `Loop`.
    pub(super) fn fire_timers(&mut self) {
        let now = self.core.now;
        while let Some(due) = self.core.app_timers.pop_due(now) {
            let handler = &mut self.handler;
            match due.owner {
                Some(slot) => {
                    // Closing: what it was for is over (as messages after our close
                    // are dropped). Closed connections have no timers left.
                    if !self.core.conns.get(slot).is_some_and(|c| c.is_open()) {
                        continue;
                    }
                    guard(&mut self.core, slot, "on_timer", |cx| {
                        handler.on_timer(cx, due.token)
                    });
                    self.settle_conn(slot);
                }
                None => {
                    self.core
                        .guard_loop("on_loop_timer", |lp| handler.on_loop_timer(lp, due.token));
                }
            }
            self.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(timers: &mut AppTimers, now: Millis) -> Vec<Due> {
        std::iter::from_fn(|| timers.pop_due(now)).collect()
    }

    #[test]
    fn fires_in_order_only_when_due_and_ids_die_after() {
        let mut timers = AppTimers::new(10, 10);
        let late = timers.set(30, 3, None).unwrap();
        let early = timers.set(10, 1, Some(4)).unwrap();
        timers.set(20, 2, None).unwrap();
        assert_eq!(timers.next(), Some(10));
        assert_eq!(drain(&mut timers, 5), []);
        let due = drain(&mut timers, 25);
        assert_eq!(
            due,
            [
                Due {
                    owner: Some(4),
                    token: 1
                },
                Due {
                    owner: None,
                    token: 2
                }
            ]
        );
        assert!(!timers.cancel(early), "a fired timer's id is dead");
        assert!(timers.cancel(late));
        assert!(!timers.cancel(late));
        assert_eq!(timers.len(), 0);
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn a_reused_entry_does_not_answer_to_an_old_id() {
        let mut timers = AppTimers::new(10, 10);
        let old = timers.set(10, 1, None).unwrap();
        assert!(timers.cancel(old));
        let new = timers.set(10, 2, None).unwrap();
        assert_eq!(old.index, new.index, "the slab entry is reused");
        assert!(!timers.cancel(old));
        assert_eq!(timers.len(), 1);
        assert!(timers.cancel(new));
    }

    #[test]
    fn caps_are_errors_and_room_comes_back() {
        let mut timers = AppTimers::new(3, 2);
        let a = timers.set(10, 0, Some(1)).unwrap();
        timers.set(10, 0, Some(1)).unwrap();
        assert_eq!(
            timers.set(10, 0, Some(1)),
            Err(TimerError::TooManyForConnection)
        );
        timers.set(10, 0, Some(2)).unwrap();
        assert_eq!(timers.set(10, 0, None), Err(TimerError::TooMany));
        assert!(timers.cancel(a));
        timers.set(10, 0, Some(1)).unwrap();
        assert_eq!(
            AppTimers::new(0, 5).set(1, 0, None),
            Err(TimerError::TooMany)
        );
    }

    #[test]
    fn a_connection_takes_its_timers_and_only_its_own() {
        let mut timers = AppTimers::new(100, 100);
        let mine: Vec<_> = (0..5)
            .map(|t| timers.set(10 + t, t, Some(7)).unwrap())
            .collect();
        let other = timers.set(12, 99, Some(8)).unwrap();
        let server = timers.set(13, 98, None).unwrap();
        assert!(timers.cancel(mine[2]), "unlink from the middle");
        timers.cancel_connection(7);
        assert_eq!(timers.len(), 2);
        assert!(mine.iter().all(|&id| !timers.cancel(id)));
        timers.cancel_connection(7);
        timers.cancel_connection(1000);
        assert_eq!(
            drain(&mut timers, 100),
            [
                Due {
                    owner: Some(8),
                    token: 99
                },
                Due {
                    owner: None,
                    token: 98
                }
            ]
        );
        assert!(!timers.cancel(other) && !timers.cancel(server));
    }

    #[test]
    fn set_and_cancel_churn_keeps_everything_bounded() {
        let mut timers = AppTimers::new(1000, 1000);
        for round in 0..10_000 {
            let id = timers.set(1_000_000 + round, round, Some(3)).unwrap();
            assert!(timers.cancel(id));
        }
        assert_eq!(timers.len(), 0);
        assert_eq!(timers.slab.len(), 1, "one entry, reused");
        assert_eq!(timers.queue.len(), 0);
    }

    /// What `Config::max_timers` documents: about 50 bytes a pending timer (this
    /// entry, its 12-byte heap entry and 4-byte heap position, a free-list slot).
    #[test]
    fn a_pending_timer_is_about_50_bytes() {
        assert_eq!(std::mem::size_of::<Timer>(), 32);
    }

    #[test]
    fn durations_round_up_to_at_least_a_millisecond() {
        assert_eq!(due_at(100, Duration::ZERO), 101);
        assert_eq!(due_at(100, Duration::from_micros(1)), 101);
        assert_eq!(due_at(100, Duration::from_micros(1500)), 102);
        assert_eq!(due_at(100, Duration::from_secs(2)), 2100);
        assert_eq!(due_at(100, Duration::MAX), Millis::MAX);
    }

    proptest! {
        /// Against a model: whatever mix of set, cancel, connection closes and pops,
        /// the pending timers are exactly the model's, per connection counts agree,
        /// and they fire in deadline order.
        #[test]
        fn behaves_like_a_map_of_ids(
            ops in proptest::collection::vec((0u8..4, 0usize..6, 0u64..500), 0..300)
        ) {
            let mut timers = AppTimers::new(40, 8);
            let mut model: Vec<(TimerId, Millis, Option<usize>, u64)> = Vec::new();
            for (i, (op, n, when)) in ops.into_iter().enumerate() {
                match op {
                    0 => {
                        let owner = (n < 4).then_some(n);
                        let mine = model.iter().filter(|m| m.2 == owner && owner.is_some()).count();
                        match timers.set(when, i as u64, owner) {
                            Ok(id) => model.push((id, when, owner, i as u64)),
                            Err(TimerError::TooMany) => prop_assert_eq!(model.len(), 40),
                            Err(TimerError::TooManyForConnection) => prop_assert_eq!(mine, 8),
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                    1 if !model.is_empty() => {
                        let (id, ..) = model.remove(n % model.len());
                        prop_assert!(timers.cancel(id));
                        prop_assert!(!timers.cancel(id));
                    }
                    2 => {
                        timers.cancel_connection(n);
                        model.retain(|m| m.2 != Some(n));
                    }
                    _ => {
                        let mut due: Vec<_> = model.iter().filter(|m| m.1 <= when).collect();
                        due.sort_by_key(|m| m.1);
                        let popped = drain(&mut timers, when);
                        prop_assert_eq!(popped.len(), due.len());
                        let mut last = 0;
                        for fired in &popped {
                            let m = model.iter().position(|m| m.3 == fired.token).unwrap();
                            let (_, at, owner, _) = model.remove(m);
                            prop_assert!(at >= last && at <= when);
                            prop_assert_eq!(owner, fired.owner);
                            last = at;
                        }
                    }
                }
                prop_assert_eq!(timers.len(), model.len());
                for slot in 0..4 {
                    let count = model.iter().filter(|m| m.2 == Some(slot)).count();
                    let owned = timers.owned.get(slot).map_or(0, |o| o.count as usize);
                    prop_assert_eq!(owned, count);
                }
            }
        }
    }
}
