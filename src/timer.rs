//! Deadlines for the loop: mio has no timers, so the reactor keeps its own.
//!
//! An indexed binary min-heap with at most one entry per connection slot: each slot
//! knows where its entry sits, so an entry is moved or removed in O(log n) and the heap
//! never holds more entries than there are live connections, however fast they come and
//! go. (A plain heap with lazy deletion grows with connection churn: every connection
//! that closes leaves its entry behind until that moment comes.) Nothing scans every
//! connection per tick.
//!
//! A deadline that moves *later* — the usual case, since activity pushes the idle
//! deadline back — is not touched: the entry surfaces early, the connection is asked
//! for its real deadline, and the entry is moved down once. A deadline that moves
//! earlier is moved up at once. So a busy connection costs one heap operation per idle
//! period, not one per message.

use std::time::{Duration, Instant};

/// Milliseconds since the server started: 8 bytes per timestamp instead of `Instant`'s 16,
/// and plain integer arithmetic.
pub(crate) type Millis = u64;

/// The loop's clock, read once per turn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Never 0, so that [`When`] can use 0 for "none".
    pub fn now(&self) -> Millis {
        self.at(Instant::now())
    }

    /// The loop-clock millisecond of `instant` (a reading taken for something else too).
    pub fn at(&self, instant: Instant) -> Millis {
        instant.saturating_duration_since(self.epoch).as_millis() as Millis + 1
    }

    /// Microseconds since the same epoch, read now (not once per turn): for the
    /// keepalive round trip, which the turn's millisecond would blur.
    pub fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// A moment on the loop clock, or none, in 8 bytes instead of `Option<u64>`'s 16:
/// connections keep several, and every byte of a connection counts ten thousand times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct When(Millis);

impl When {
    pub const NONE: When = When(0);

    pub fn at(moment: Millis) -> When {
        When(moment.max(1))
    }

    pub fn get(self) -> Option<Millis> {
        (self.0 != 0).then_some(self.0)
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    pub fn is_some(self) -> bool {
        self.0 != 0
    }
}

impl From<Option<Millis>> for When {
    fn from(moment: Option<Millis>) -> When {
        moment.map_or(When::NONE, When::at)
    }
}

/// Timeouts longer than this mean "never": about 100 years, past the life of any
/// process, so `Duration::MAX` (the natural way to say "no timeout" in Rust) works,
/// and so small against `u64::MAX` milliseconds (584 million years) that a deadline
/// `start + timeout` is exact rather than saturated.
pub(crate) const NEVER_AFTER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Converts a configured timeout: zero, and anything longer than [`NEVER_AFTER`]
/// (`Duration::MAX` included), mean "never" and map to `None`; a nonzero timeout under
/// a millisecond counts as one.
pub(crate) fn millis(duration: Duration) -> Option<Millis> {
    if duration.is_zero() || duration > NEVER_AFTER {
        return None;
    }
    Millis::try_from(duration.as_millis())
        .ok()
        .map(|ms| ms.max(1))
}

/// The moment `timeout` after `start`. Saturating: no configured value can make
/// deadline arithmetic overflow (a panic in a debug build, a deadline in the past,
/// firing at once, in a release build).
pub(crate) fn deadline_after(start: Millis, timeout: Millis) -> Millis {
    start.saturating_add(timeout)
}

/// One queued deadline: `(when, slot)` as three 32-bit words instead of a `(u64, u32)`
/// padded to 16 bytes; every open connection has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry([u32; 3]);

impl Entry {
    fn new(when: Millis, slot: u32) -> Entry {
        Entry([(when >> 32) as u32, when as u32, slot])
    }

    fn when(self) -> Millis {
        (Millis::from(self.0[0]) << 32) | Millis::from(self.0[1])
    }

    fn slot(self) -> u32 {
        self.0[2]
    }
}

/// Marks a slot with no entry in [`DeadlineQueue::position`].
const ABSENT: u32 = u32::MAX;

/// Pending deadlines of connections, earliest first, at most one per slot.
#[derive(Debug, Default)]
pub(crate) struct DeadlineQueue {
    heap: Vec<Entry>,
    /// Slot → index of its entry in `heap`, or `ABSENT`.
    position: Vec<u32>,
}

impl DeadlineQueue {
    pub fn with_capacity(slots: usize) -> DeadlineQueue {
        DeadlineQueue {
            heap: Vec::with_capacity(slots),
            position: Vec::with_capacity(slots),
        }
    }

    /// Entries queued: never more than the slots that have a deadline.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// When `slot`'s entry is queued for, if it has one.
    pub fn queued(&self, slot: usize) -> Option<Millis> {
        let at = *self.position.get(slot)?;
        (at != ABSENT).then(|| self.heap[at as usize].when())
    }

    /// Makes sure `slot` is woken no later than `when`: queues it, or moves its entry
    /// earlier. An entry that is already earlier stays: when it surfaces, the caller
    /// moves it to the real deadline with [`set`](Self::set).
    pub fn schedule(&mut self, slot: usize, when: Millis) {
        match self.queued(slot) {
            Some(queued) if queued <= when => {}
            _ => self.set(slot, when),
        }
    }

    /// Queues `slot` for exactly `when`, moving its entry if it has one.
    pub fn set(&mut self, slot: usize, when: Millis) {
        // Slots are bounded by the file descriptors a process can have.
        let entry = Entry::new(when, slot as u32);
        match self.queued(slot) {
            Some(queued) => {
                let at = self.position[slot] as usize;
                self.heap[at] = entry;
                if when < queued {
                    self.sift_up(at);
                } else {
                    self.sift_down(at);
                }
            }
            None => {
                if self.position.len() <= slot {
                    self.position.resize(slot + 1, ABSENT);
                }
                self.heap.push(entry);
                let at = self.heap.len() - 1;
                self.position[slot] = at as u32;
                self.sift_up(at);
            }
        }
    }

    /// Removes `slot`'s entry, if any (its connection closed, or has nothing to wait for).
    pub fn remove(&mut self, slot: usize) {
        let Some(&at) = self.position.get(slot) else {
            return;
        };
        if at == ABSENT {
            return;
        }
        let at = at as usize;
        self.position[slot] = ABSENT;
        let last = self.heap.len() - 1;
        if at == last {
            self.heap.pop();
            return;
        }
        let moved = self.heap[last];
        self.heap[at] = moved;
        self.heap.pop();
        self.position[moved.slot() as usize] = at as u32;
        if at > 0 && moved.when() < self.heap[(at - 1) / 2].when() {
            self.sift_up(at);
        } else {
            self.sift_down(at);
        }
    }

    /// The earliest queued deadline (possibly earlier than the connection's real one,
    /// which only costs an early wake-up).
    pub fn next(&self) -> Option<Millis> {
        self.heap.first().map(|entry| entry.when())
    }

    /// The slot whose entry is due at `now`, if any; it stays queued until the caller
    /// moves or removes it.
    pub fn due(&self, now: Millis) -> Option<usize> {
        let first = self.heap.first()?;
        (first.when() <= now).then_some(first.slot() as usize)
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.heap[parent].when() <= self.heap[at].when() {
                break;
            }
            self.swap(at, parent);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let left = 2 * at + 1;
            if left >= self.heap.len() {
                break;
            }
            let right = left + 1;
            let child =
                if right < self.heap.len() && self.heap[right].when() < self.heap[left].when() {
                    right
                } else {
                    left
                };
            if self.heap[at].when() <= self.heap[child].when() {
                break;
            }
            self.swap(at, child);
            at = child;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.position[self.heap[a].slot() as usize] = a as u32;
        self.position[self.heap[b].slot() as usize] = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pops every due entry the way the reactor does (remove after reading).
    fn pop_due(queue: &mut DeadlineQueue, now: Millis) -> Option<(Millis, usize)> {
        let slot = queue.due(now)?;
        let when = queue.queued(slot)?;
        queue.remove(slot);
        Some((when, slot))
    }

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut queue = DeadlineQueue::default();
        queue.set(3, 30);
        queue.set(1, 10);
        queue.set(2, 20);
        assert_eq!(queue.next(), Some(10));
        assert_eq!(queue.due(5), None);
        assert_eq!(pop_due(&mut queue, 25), Some((10, 1)));
        assert_eq!(pop_due(&mut queue, 25), Some((20, 2)));
        assert_eq!(pop_due(&mut queue, 25), None);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn deadlines_past_32_bits_keep_their_order() {
        let mut queue = DeadlineQueue::default();
        queue.set(7, 1 << 33);
        queue.set(8, (1 << 32) - 1);
        queue.set(9, 1 << 32);
        assert_eq!(std::mem::size_of::<Entry>(), 12);
        assert_eq!(pop_due(&mut queue, u64::MAX), Some(((1 << 32) - 1, 8)));
        assert_eq!(pop_due(&mut queue, u64::MAX), Some((1 << 32, 9)));
        assert_eq!(pop_due(&mut queue, u64::MAX), Some((1 << 33, 7)));
    }

    #[test]
    fn one_entry_per_slot_however_often_it_is_scheduled() {
        let mut queue = DeadlineQueue::default();
        for round in 0..1000u64 {
            // A slot reused by connection after connection, each moving its deadline
            // earlier and later: the churn that used to pile up entries.
            queue.schedule(5, 10_000 - round);
            queue.schedule(5, 20_000 + round);
            queue.set(5, 30_000 + round);
        }
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.queued(5), Some(30_999));
        queue.remove(5);
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.next(), None);
    }

    #[test]
    fn schedule_only_moves_earlier() {
        let mut queue = DeadlineQueue::default();
        queue.schedule(1, 100);
        queue.schedule(1, 200);
        assert_eq!(queue.queued(1), Some(100));
        queue.schedule(1, 50);
        assert_eq!(queue.queued(1), Some(50));
    }

    #[test]
    fn zero_duration_means_never() {
        assert_eq!(millis(Duration::ZERO), None);
        assert_eq!(millis(Duration::from_micros(10)), Some(1));
        assert_eq!(millis(Duration::from_secs(2)), Some(2000));
    }

    proptest! {
        /// Against a model: whatever mix of set/schedule/remove, the queue holds exactly
        /// the model's entries and yields them in deadline order.
        #[test]
        fn behaves_like_a_map_of_slots_to_deadlines(
            ops in proptest::collection::vec((0u8..3, 0usize..40, 0u64..1000), 0..400)
        ) {
            let mut queue = DeadlineQueue::default();
            let mut model = std::collections::BTreeMap::new();
            for (op, slot, when) in ops {
                match op {
                    0 => { queue.set(slot, when); model.insert(slot, when); }
                    1 => {
                        queue.schedule(slot, when);
                        let entry = model.entry(slot).or_insert(when);
                        *entry = (*entry).min(when);
                    }
                    _ => { queue.remove(slot); model.remove(&slot); }
                }
                prop_assert_eq!(queue.len(), model.len());
            }
            let mut last = 0;
            while let Some((when, slot)) = pop_due(&mut queue, u64::MAX) {
                prop_assert!(when >= last);
                last = when;
                prop_assert_eq!(model.remove(&slot), Some(when));
            }
            prop_assert!(model.is_empty());
        }
    }

    #[test]
    fn duration_max_and_other_huge_durations_mean_never() {
        assert_eq!(millis(Duration::MAX), None);
        // Too large for u64 milliseconds.
        assert_eq!(millis(Duration::from_secs(u64::MAX)), None);
        assert_eq!(millis(Duration::from_millis(u64::MAX)), None);
        // Representable, but past the ~100 year cut.
        assert_eq!(millis(NEVER_AFTER + Duration::from_millis(1)), None);
        assert_eq!(millis(Duration::from_secs(1000 * 365 * 24 * 3600)), None);
        // Up to the cut, a timeout is taken literally.
        let cut = NEVER_AFTER.as_millis() as Millis;
        assert_eq!(millis(NEVER_AFTER), Some(cut));
        assert_eq!(
            millis(Duration::from_secs(365 * 24 * 3600)),
            Some(31_536_000_000)
        );
    }

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        assert_eq!(deadline_after(5, 10), 15);
        assert_eq!(deadline_after(u64::MAX - 1, 10), u64::MAX);
        assert_eq!(deadline_after(u64::MAX, u64::MAX), u64::MAX);
        // The longest timeout taken literally, from a clock that ran for a century.
        let cut = millis(NEVER_AFTER).unwrap();
        assert_eq!(deadline_after(cut, cut), 2 * cut);
    }

    #[test]
    fn a_saturated_deadline_is_queued_and_never_due_early() {
        let mut queue = DeadlineQueue::default();
        queue.set(4, deadline_after(u64::MAX - 3, 100));
        assert_eq!(queue.next(), Some(u64::MAX));
        assert_eq!(queue.due(u64::MAX - 1), None);
    }
}
