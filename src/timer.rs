//! Deadlines for the loop: mio has no timers, so the reactor keeps its own.
//!
//! A min-heap of `(when, slot)` with lazy deletion: a connection records the one
//! deadline it currently cares about; the heap may hold older entries for it, which
//! are recognised as stale when they come out (no connection in the slot, or its
//! recorded deadline differs) and dropped. An entry outliving its connection and
//! meeting the slot's next one can only wake that one early, and the connection's own
//! deadline decides what happens, so entries need no generation: 12 bytes each (see
//! [`Entry`]). Insertion and removal are O(log n), and nothing scans every connection
//! per tick. A deadline that moves *later* (the usual
//! case: activity pushes the idle deadline back) costs nothing until the old entry
//! surfaces, when it is re-inserted once at the new time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
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
        self.epoch.elapsed().as_millis() as Millis + 1
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

/// One queued deadline: `(when, slot)` as three 32-bit words, high half of `when`
/// first, so that the derived order is the deadline order. A `(u64, u32)` would be
/// padded to 16 bytes; every open connection has an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry([u32; 3]);

impl Entry {
    fn new(when: Millis, slot: usize) -> Entry {
        // Slots are bounded by the file descriptors a process can have.
        Entry([(when >> 32) as u32, when as u32, slot as u32])
    }

    fn when(self) -> Millis {
        (Millis::from(self.0[0]) << 32) | Millis::from(self.0[1])
    }

    fn slot(self) -> usize {
        self.0[2] as usize
    }
}

/// Pending deadlines of connections, earliest first.
#[derive(Debug, Default)]
pub(crate) struct DeadlineQueue {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl DeadlineQueue {
    pub fn with_capacity(entries: usize) -> DeadlineQueue {
        DeadlineQueue {
            heap: BinaryHeap::with_capacity(entries),
        }
    }

    pub fn push(&mut self, when: Millis, slot: usize) {
        self.heap.push(Reverse(Entry::new(when, slot)));
    }

    /// The earliest deadline, stale or not (a stale one only causes an early wake-up).
    pub fn next(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse(entry)| entry.when())
    }

    /// Removes and returns an entry that is due at `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, usize)> {
        match self.heap.peek() {
            Some(Reverse(entry)) if entry.when() <= now => {
                let Reverse(entry) = self.heap.pop()?;
                Some((entry.when(), entry.slot()))
            }
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut queue = DeadlineQueue::default();
        queue.push(30, 3);
        queue.push(10, 1);
        queue.push(20, 2);
        assert_eq!(queue.next(), Some(10));
        assert_eq!(queue.pop_due(5), None);
        assert_eq!(queue.pop_due(25), Some((10, 1)));
        assert_eq!(queue.pop_due(25), Some((20, 2)));
        assert_eq!(queue.pop_due(25), None);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn deadlines_past_32_bits_keep_their_order() {
        let mut queue = DeadlineQueue::default();
        queue.push(1 << 33, 7);
        queue.push((1 << 32) - 1, 8);
        queue.push(1 << 32, 9);
        assert_eq!(std::mem::size_of::<Entry>(), 12);
        assert_eq!(queue.pop_due(u64::MAX), Some(((1 << 32) - 1, 8)));
        assert_eq!(queue.pop_due(u64::MAX), Some((1 << 32, 9)));
        assert_eq!(queue.pop_due(u64::MAX), Some((1 << 33, 7)));
    }

    #[test]
    fn zero_duration_means_never() {
        assert_eq!(millis(Duration::ZERO), None);
        assert_eq!(millis(Duration::from_micros(10)), Some(1));
        assert_eq!(millis(Duration::from_secs(2)), Some(2000));
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
        queue.push(deadline_after(u64::MAX - 3, 100), 4);
        assert_eq!(queue.next(), Some(u64::MAX));
        assert_eq!(queue.pop_due(u64::MAX - 1), None);
    }
}
