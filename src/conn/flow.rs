//! Flow control of one connection's sends: what happens at its queue cap (its
//! [`QueuePolicy`]), when reading pauses for backpressure and when it resumes (the
//! send stall, and the relay that reads on: [`Conn::is_relaying`]), and the notes the
//! loop keeps for the handler — reading paused, a drain owed — all in one byte of the
//! connection.

use super::{Conn, Io};
use crate::handler::CloseReason;
use crate::proto::CloseCode;
use crate::timer::{Millis, When};
use mio::Token;

/// What happens when a send would take a connection's queue past
/// [`Config::max_send_queue`](crate::Config::max_send_queue). Server-wide default:
/// [`Config::queue_policy`](crate::Config::queue_policy); per connection:
/// [`Decision::with_queue_policy`](crate::Decision::with_queue_policy).
///
/// Whatever the policy, only whole data messages are ever dropped from a queue —
/// never a control frame waiting there (a pong, a ping, the close), never a message
/// the socket has taken part of, never one compressed with server context takeover
/// (the peer could not inflate the ones after it; negotiate without it,
/// [`Config::deflate_context_takeover`](crate::Config::deflate_context_takeover) off,
/// the default, for conflation to work on compressed connections) — so the peer always
/// gets whole, valid frames. (The
/// close and keepalive pings are not subject to the cap at all.) Every message a
/// connection misses while open is counted in
/// [`Stats::messages_dropped`](crate::Stats::messages_dropped) and reported to
/// [`Handler::on_dropped`](crate::Handler::on_dropped). A message larger than the cap
/// on its own is refused whatever the policy (it would never fit: the application's
/// mistake, not a slow peer's).
///
/// # Sizing the caps for fan-out
///
/// `max_send_queue` is how far behind a slow client may fall, in bytes: the number of
/// messages times their frame size. A ticker publishing 2,000 updates a second of about
/// 500 bytes fills the default 20 MiB in 20 s, which is 20 s of stale prices; for a
/// live feed, size it to the lag you accept (1 s: about 1 MiB) and choose `DropOldest`
/// or `Close`, with `write_high_water` at or below it (half of it is the drain mark).
/// The kernel's socket buffers hold some more before the queue starts (up to a few
/// MiB on Linux). `outgoing_budget` bounds all queues together: a published frame is
/// stored once however many queues hold it, and each holder costs a few dozen bytes,
/// so S slow subscribers of one topic need about `max_send_queue` +
/// S × (`max_send_queue` / message size) × 32 bytes of it, plus S × `max_send_queue`
/// for what is sent to each of them alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueuePolicy {
    /// The new message is refused ([`SendStatus::Refused`](crate::SendStatus::Refused))
    /// and the queue kept as it is: the peer gets every message up to the gap. Suits
    /// request/response and anything where order and completeness matter; a producer
    /// waits for [`Handler::on_drain`](crate::Handler::on_drain). A connection whose
    /// sends stay refused for `send_stall_timeout` is closed with 1008. The default.
    #[default]
    Refuse,
    /// The connection is closed with 1008 ("send queue full"): the whole messages
    /// still waiting are discarded first (a peer this far behind would only get stale
    /// data, and the memory is freed at once), so the close frame follows at most the
    /// one frame the socket has taken part of. A peer that reads gets the close
    /// promptly and can reconnect and resynchronize; one that does not read is
    /// dropped after `close_timeout`. The triggering send is refused. Reported as
    /// [`CloseReason::QueueFull`] and counted in
    /// [`Stats::queue_full_closes`](crate::Stats::queue_full_closes). Suits feeds
    /// whose clients must see every message or know they missed some.
    Close,
    /// Conflation: the oldest whole data messages still waiting are dropped, as many
    /// as it takes to make room for the new one, which is queued; each dropped one is
    /// counted as a drop. A slow peer gets the newest messages and misses older ones,
    /// which suits live feeds where only the latest value matters (prices, positions).
    /// Messages waiting for such a connection are queued one per chunk so that each
    /// can be dropped whole (the default policy merges small ones into one buffer).
    /// If no room can be made (the waiting bytes are control frames or a message the
    /// socket has taken part of), the new message is refused as with `Refuse`.
    DropOldest,
}

const READ_PAUSED: u8 = 1;
const OWES_DRAIN: u8 = 2;
const POLICY_SHIFT: u32 = 2;
const POLICY_MASK: u8 = 0b11 << POLICY_SHIFT;

/// Flow notes of one connection, in one byte (a connection's size counts once per
/// connection): reading paused, a drain owed, and the queue policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flow(u8);

impl Flow {
    pub fn policy(self) -> QueuePolicy {
        match (self.0 & POLICY_MASK) >> POLICY_SHIFT {
            0 => QueuePolicy::Refuse,
            1 => QueuePolicy::Close,
            _ => QueuePolicy::DropOldest,
        }
    }

    pub fn set_policy(&mut self, policy: QueuePolicy) {
        let bits = match policy {
            QueuePolicy::Refuse => 0,
            QueuePolicy::Close => 1,
            QueuePolicy::DropOldest => 2,
        };
        self.0 = (self.0 & !POLICY_MASK) | (bits << POLICY_SHIFT);
    }

    /// Whether queued messages are kept one per chunk, so that they can be dropped
    /// whole (every policy but `Refuse`).
    pub fn whole_messages(self) -> bool {
        self.0 & POLICY_MASK != 0
    }

    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    pub fn read_paused(self) -> bool {
        self.0 & READ_PAUSED != 0
    }

    pub fn set_read_paused(&mut self, on: bool) {
        self.set(READ_PAUSED, on);
    }

    pub fn owes_drain(self) -> bool {
        self.0 & OWES_DRAIN != 0
    }

    pub fn set_owes_drain(&mut self, on: bool) {
        self.set(OWES_DRAIN, on);
    }
}

/// The queue length at or under which a drain owed is paid: half of
/// `write_high_water` (a read paused for backpressure resumes later, at empty).
pub(crate) fn low_water(write_high_water: usize) -> usize {
    write_high_water / 2
}

impl<S> Conn<S> {
    pub fn queue_policy(&self) -> QueuePolicy {
        self.flow.policy()
    }

    pub fn set_queue_policy(&mut self, policy: QueuePolicy) {
        self.flow.set_policy(policy);
    }

    /// A send to this connection was queued or refused: the handler is owed an
    /// `on_drain` once the queue is down to the low-water mark (not on a connection
    /// that no longer sends).
    pub fn owe_drain(&mut self) {
        if self.is_open() {
            self.flow.set_owes_drain(true);
        }
    }

    /// Whether the drain owed is due now (the queue is down to `low_water` and the
    /// connection still open); true once per episode.
    pub fn take_drain(&mut self, low_water: usize) -> bool {
        let due = self.flow.owes_drain() && self.out.pending() <= low_water;
        if due {
            self.flow.set_owes_drain(false);
        }
        due && self.is_open()
    }

    /// A send of `total` bytes would take the queue past `max_queue`: applies the
    /// queue policy, and returns whether the send may go ahead now. Messages dropped
    /// are noted in the queue, for the loop to count and report.
    pub(super) fn make_room(&mut self, io: &Io, token: Token, total: usize, max: usize) -> bool {
        // A message larger than the cap on its own is the application's mistake, not a
        // slow peer's: refused whatever the policy, nothing dropped or closed for it.
        if !self.is_open() || total > max {
            return false;
        }
        match self.flow.policy() {
            QueuePolicy::Refuse => false,
            QueuePolicy::DropOldest => {
                let over = (self.out.pending() + total).saturating_sub(max);
                let dropped = self.out.drop_oldest(over);
                self.out.note_dropped(&io.meter, dropped);
                self.out.pending() + total <= max
            }
            QueuePolicy::Close => {
                log::debug!("{}: send queue full: closing (queue policy)", self.peer);
                let dropped = self.out.drop_oldest(usize::MAX);
                self.out.note_dropped(&io.meter, dropped);
                let (code, reason) = (CloseCode::POLICY_VIOLATION, "send queue full");
                self.close(io, token, code, reason, io.meter.now());
                self.set_close_reason(CloseReason::QueueFull);
                false
            }
        }
    }
}

/// How long a relay paused for a full queue waits for its peer to read before it
/// reads on (see [`Conn::is_relaying`]): long enough for a reading peer to show it
/// reads (any write the socket takes restarts it), short next to a whole message's
/// transfer.
pub(crate) const RELAY_PATIENCE: Millis = 100;

impl<S> Conn<S> {
    /// Stops reading: the send queue is over the high-water mark, so a peer that sends
    /// without reading feels TCP backpressure instead of growing our memory.
    pub fn pause_reading(&mut self) {
        self.flow.set_read_paused(true);
    }

    pub fn is_read_paused(&self) -> bool {
        self.flow.read_paused()
    }

    /// The socket took queued bytes: ends a send stall once the queue is down to half
    /// its cap, and returns whether reading, paused above the high-water mark, may
    /// resume: once the queue is empty.
    ///
    /// Not at half of the mark: a peer that streams to us while we stream back (the
    /// echo of a large message in parts) would then be read about half a mark per
    /// pause, less than Linux waits for before it reopens a receive window it closed
    /// (1/16 of a buffer autotuned up to `tcp_rmem`'s 32 MiB), so the peer's sends sat
    /// until a zero-window probe (200 ms, backing off past a second). Measured: (d)
    /// echo stalls of 0.1–1.5 s at half, none when resuming empty, where the echo is
    /// written straight to the socket and each pause is followed by megabytes read.
    pub fn queue_drained(&mut self, max_queue: usize) -> bool {
        let pending = self.out.pending();
        if self.stalled_since.is_some() && pending <= max_queue / 2 {
            self.stalled_since = When::NONE;
        }
        let resume = self.flow.read_paused() && pending == 0;
        if resume {
            self.flow.set_read_paused(false);
        }
        resume
    }

    /// A send was refused: the send-stall clock starts, unless it runs already.
    /// Returns whether it started now.
    pub fn send_refused(&mut self, now: Millis) -> bool {
        let starts = self.is_open() && self.stalled_since.is_none();
        if starts {
            self.stalled_since = When::at(now);
        }
        starts
    }

    /// The message sent in parts that is open on this connection, if any: whether
    /// it is text.
    pub fn sending_part(&self) -> Option<bool> {
        self.extras.as_ref()?.sending_part
    }

    /// Whether a message is half received while one sent in parts is open: the
    /// pattern of a streaming echo or proxy, relaying a message as it arrives.
    ///
    /// Reading pauses above `write_high_water` as usual, which keeps memory flat for
    /// a peer that reads while it writes. But most clients write a whole message
    /// before they read anything: paused in the middle, we would wait for a reader
    /// that waits for us. So a relay whose output has not moved for
    /// [`RELAY_PATIENCE`] while reading is paused is read on
    /// ([`unpause_relay`](Self::unpause_relay)) until its message ends, bounded by
    /// `max_send_queue` (which refuses a part): such a peer makes us hold one
    /// message's output, as much as assembling the message whole would.
    pub fn is_relaying(&self) -> bool {
        self.rx.is_mid_message() && self.sending_part().is_some()
    }

    /// Whether reading may pause for a full queue: not while relaying a message
    /// whose peer was found not to read (see [`is_relaying`](Self::is_relaying)).
    pub fn may_pause_reading(&self) -> bool {
        !(self.is_relaying() && self.extras.as_ref().is_some_and(|e| e.relay_unpaused))
    }

    /// Since when a relay has waited, paused, for a peer that takes none of its
    /// output (`None` if it is not such a relay).
    pub fn relay_waiting_since(&self) -> Option<Millis> {
        (self.is_read_paused() && self.is_relaying() && self.may_pause_reading())
            .then(|| self.out.last_moved())
    }

    /// Reads on to the end of the message being relayed, whatever its echo queues.
    pub fn unpause_relay(&mut self) {
        self.extras_mut().relay_unpaused = true;
        self.flow.set_read_paused(false);
    }

    /// Opens (`Some(is_text)`) or finishes (`None`) a message sent in parts.
    pub fn set_sending_part(&mut self, open: Option<bool>) {
        if open.is_some() || self.extras.is_some() {
            let extras = self.extras_mut();
            extras.sending_part = open;
            extras.relay_unpaused = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bits_do_not_disturb_each_other() {
        let mut flow = Flow::default();
        assert_eq!(flow.policy(), QueuePolicy::Refuse);
        assert!(!flow.whole_messages());
        for policy in [
            QueuePolicy::DropOldest,
            QueuePolicy::Close,
            QueuePolicy::Refuse,
        ] {
            flow.set_read_paused(true);
            flow.set_owes_drain(true);
            flow.set_policy(policy);
            assert_eq!(flow.policy(), policy);
            assert_eq!(flow.whole_messages(), policy != QueuePolicy::Refuse);
            assert!(flow.read_paused() && flow.owes_drain());
            flow.set_read_paused(false);
            assert!(!flow.read_paused() && flow.owes_drain());
            flow.set_owes_drain(false);
            assert!(!flow.owes_drain());
            assert_eq!(flow.policy(), policy);
        }
    }
}
