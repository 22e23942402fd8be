//! Keepalive decisions: when to ping a quiet peer, and when to give up on its pong.
//!
//! A TCP connection whose peer vanished (a pulled cable, a NAT that forgot the
//! mapping) shows no error until something is sent, so a server that only waits would
//! keep it forever. After `idle` milliseconds of silence we send a ping (§5.5.2); a
//! peer must answer it with a pong "as soon as practical" (§5.5.3), so silence for
//! `pong` milliseconds more means it is gone. Any frame counts as an answer, not just
//! the pong: bytes from the peer prove it is there, and a peer busy sending a large
//! message may answer only after it.
//!
//! Pure arithmetic on a caller's clock (u64 milliseconds): the caller reads the clock,
//! sends the ping and drops the connection; this only says when.

/// What falls due at the moment [`Keepalive::next`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveDue {
    /// The peer has been quiet for the idle timeout: send a ping, then call
    /// [`Keepalive::ping_sent`].
    Ping,
    /// Our ping got no answer within the pong timeout: the peer is gone. The caller
    /// may send a close (1011), but a peer that ignores pings will not answer it, so it
    /// drops the connection without waiting.
    PongOverdue,
}

/// Bytes of a keepalive ping's payload: the moment it was sent, in microseconds on
/// the caller's clock, big-endian (see [`Keepalive::stamp`]).
pub const PING_PAYLOAD_LEN: usize = 8;

/// The keepalive state of one connection: 16 bytes.
///
/// One timestamp suffices for the timeouts, because which one matters depends on
/// whether a ping is out: while none is, the next ping is due `idle` after the peer
/// was last heard from; while one is, only the time of that ping counts.
///
/// The round trip is measured without a timestamp of its own: the ping carries its
/// send time in its payload (µs), the pong echoes it, and only the low 32 bits of the
/// latest stamp are kept, to recognize the echo of that ping and no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// While `pinged`, when our ping went out and nothing has been heard since;
    /// otherwise when the peer was last heard from.
    at: u64,
    /// The low 32 bits of the latest keepalive ping's stamp (µs), while `stamped`.
    stamp: u32,
    pinged: bool,
    /// A stamped ping is out whose echo has not come back.
    stamped: bool,
}

impl Keepalive {
    /// A connection that opened at `now`: the opening counts as hearing from the peer.
    pub fn new(now: u64) -> Keepalive {
        Keepalive {
            at: now,
            stamp: 0,
            pinged: false,
            stamped: false,
        }
    }

    /// Something arrived from the peer at `now`: it is alive, so an outstanding ping
    /// is answered (whatever the frame was) and the idle period starts again. A time
    /// earlier than one already heard (a caller's clock that stepped back) does not
    /// move the idle deadline earlier.
    pub fn heard(&mut self, now: u64) {
        self.at = if self.pinged { now } else { self.at.max(now) };
        self.pinged = false;
    }

    /// Our keepalive ping went out at `now`; the pong timeout runs from it. The caller
    /// pings when [`next`](Self::next) says so, which is never while a ping is out; if
    /// it pings again anyway, the timeout runs from the latest ping, the one it just
    /// chose to wait for (but, as in [`heard`](Self::heard), never from an earlier
    /// moment than one already recorded).
    pub fn ping_sent(&mut self, now: u64) {
        self.at = if self.pinged { self.at.max(now) } else { now };
        self.pinged = true;
    }

    /// The payload for a keepalive ping sent at `micros` (the caller's microsecond
    /// clock): that moment, big-endian. Remembered, so that the pong echoing it gives
    /// the round trip ([`pong`](Self::pong)); a newer stamp replaces an older one.
    pub fn stamp(&mut self, micros: u64) -> [u8; PING_PAYLOAD_LEN] {
        self.stamp = micros as u32;
        self.stamped = true;
        micros.to_be_bytes()
    }

    /// A pong with `payload` arrived at `micros`: the round trip in microseconds if it
    /// echoes the latest stamped ping, once; `None` for any other pong.
    ///
    /// A peer may send any pong (unsolicited, a guess, a replay), so the payload is
    /// checked: 8 bytes, a moment not in the future, less than 2³² µs (71 minutes) ago,
    /// whose low 32 bits are those of the latest stamp. In that window only one moment
    /// has those bits, so the echo is exactly the stamp we sent: a pong for an older
    /// ping, a forged or shifted time, or the same pong again gives nothing.
    pub fn pong(&mut self, payload: &[u8], micros: u64) -> Option<u64> {
        let sent = u64::from_be_bytes(payload.try_into().ok()?);
        let age = micros.checked_sub(sent)?;
        if !self.stamped || sent as u32 != self.stamp || age >> 32 != 0 {
            return None;
        }
        self.stamped = false;
        Some(age)
    }

    /// Whether a ping is out and unanswered.
    pub fn awaiting_pong(&self) -> bool {
        self.pinged
    }

    /// When the next keepalive step is due, and which, given the idle and pong
    /// timeouts in milliseconds (`None`: off).
    ///
    /// `None` when keepalive is off (`idle` is `None`), and while a ping is out with no
    /// pong timeout (the caller waits forever, as it asked). Deadlines saturate at
    /// `u64::MAX` instead of wrapping, so no timeout makes one fall in the past.
    pub fn next(&self, idle: Option<u64>, pong: Option<u64>) -> Option<(u64, KeepaliveDue)> {
        let idle = idle?;
        if self.pinged {
            Some((self.at.saturating_add(pong?), KeepaliveDue::PongOverdue))
        } else {
            Some((self.at.saturating_add(idle), KeepaliveDue::Ping))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IDLE: Option<u64> = Some(30_000);
    const PONG: Option<u64> = Some(10_000);

    /// Every connection carries one.
    #[test]
    fn is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Keepalive>(), 16);
    }

    #[test]
    fn the_echo_of_the_latest_stamp_gives_the_round_trip_once() {
        let mut ka = Keepalive::new(0);
        let payload = ka.stamp(5_000_123);
        assert_eq!(payload.len(), PING_PAYLOAD_LEN);
        assert_eq!(ka.pong(&payload, 5_000_400), Some(277));
        // The same pong again (a replay) gives nothing.
        assert_eq!(ka.pong(&payload, 5_000_500), None);
        // An echo that comes at once: zero, not nothing.
        let payload = ka.stamp(6_000_000);
        assert_eq!(ka.pong(&payload, 6_000_000), Some(0));
    }

    #[test]
    fn a_forged_or_stale_pong_gives_nothing() {
        let mut ka = Keepalive::new(0);
        // Nothing stamped yet.
        assert_eq!(ka.pong(&1_000u64.to_be_bytes(), 2_000), None);
        let old = ka.stamp(1_000_000);
        ka.stamp(2_000_000);
        let now = 2_000_050;
        // The echo of an older ping.
        assert_eq!(ka.pong(&old, now), None);
        // A moment in the future, even with the stamp's bits.
        let future = ka.stamp(now + 10);
        assert_eq!(ka.pong(&future, now), None);
        // The right low 32 bits, but 2^32 µs off: outside the window.
        let far = 5 << 32 | 777;
        let stamped = ka.stamp(far);
        assert_eq!(ka.pong(&(far - (1 << 32)).to_be_bytes(), far + 50), None);
        assert_eq!(ka.pong(&stamped, far + (1 << 32)), None);
        assert_eq!(ka.pong(&stamped, far + 60), Some(60));
        let latest = ka.stamp(2_000_000);
        // Wrong lengths, an empty payload, text.
        assert_eq!(ka.pong(&latest[..7], now), None);
        assert_eq!(ka.pong(&[], now), None);
        assert_eq!(ka.pong(b"keepalive", now), None);
        // None of that spent the stamp: the real echo still counts.
        assert_eq!(ka.pong(&latest, now), Some(50));
    }

    #[test]
    fn stamps_do_not_touch_the_timeouts() {
        let mut ka = Keepalive::new(1_000);
        ka.ping_sent(31_000);
        let payload = ka.stamp(31_000_000);
        ka.heard(31_010);
        assert!(!ka.awaiting_pong());
        // A pong that comes after other frames still gives the round trip.
        assert_eq!(ka.pong(&payload, 31_010_000), Some(10_000));
        assert_eq!(ka.next(IDLE, PONG), Some((61_010, KeepaliveDue::Ping)));
    }

    #[test]
    fn a_ping_is_due_after_idle() {
        let ka = Keepalive::new(1_000);
        assert!(!ka.awaiting_pong());
        assert_eq!(ka.next(IDLE, PONG), Some((31_000, KeepaliveDue::Ping)));
    }

    #[test]
    fn hearing_from_the_peer_postpones_the_ping() {
        let mut ka = Keepalive::new(1_000);
        ka.heard(20_000);
        assert_eq!(ka.next(IDLE, PONG), Some((50_000, KeepaliveDue::Ping)));
        // A time from before does not bring it back.
        ka.heard(5_000);
        assert_eq!(ka.next(IDLE, PONG), Some((50_000, KeepaliveDue::Ping)));
    }

    #[test]
    fn the_pong_is_overdue_after_ping_plus_pong_timeout() {
        let mut ka = Keepalive::new(1_000);
        ka.ping_sent(31_000);
        assert!(ka.awaiting_pong());
        assert_eq!(
            ka.next(IDLE, PONG),
            Some((41_000, KeepaliveDue::PongOverdue))
        );
    }

    #[test]
    fn hearing_anything_after_the_ping_answers_it() {
        let mut ka = Keepalive::new(1_000);
        ka.ping_sent(31_000);
        ka.heard(32_000);
        assert!(!ka.awaiting_pong());
        assert_eq!(ka.next(IDLE, PONG), Some((62_000, KeepaliveDue::Ping)));
    }

    #[test]
    fn a_second_ping_restarts_the_pong_timeout() {
        let mut ka = Keepalive::new(0);
        ka.ping_sent(30_000);
        ka.ping_sent(35_000);
        assert_eq!(
            ka.next(IDLE, PONG),
            Some((45_000, KeepaliveDue::PongOverdue))
        );
        // But not from a moment before the first.
        ka.ping_sent(20_000);
        assert_eq!(
            ka.next(IDLE, PONG),
            Some((45_000, KeepaliveDue::PongOverdue))
        );
    }

    #[test]
    fn a_ping_at_time_zero_is_exact() {
        let mut ka = Keepalive::new(0);
        ka.ping_sent(0);
        assert_eq!(
            ka.next(IDLE, PONG),
            Some((10_000, KeepaliveDue::PongOverdue))
        );
    }

    #[test]
    fn off_when_idle_is_none() {
        let mut ka = Keepalive::new(1_000);
        assert_eq!(ka.next(None, PONG), None);
        ka.ping_sent(2_000);
        assert_eq!(ka.next(None, PONG), None);
    }

    #[test]
    fn no_pong_timeout_means_waiting_forever_once_pinged() {
        let mut ka = Keepalive::new(1_000);
        assert_eq!(ka.next(IDLE, None), Some((31_000, KeepaliveDue::Ping)));
        ka.ping_sent(31_000);
        assert_eq!(ka.next(IDLE, None), None);
    }

    #[test]
    fn deadlines_saturate_at_the_end_of_time() {
        let mut ka = Keepalive::new(u64::MAX - 5);
        assert_eq!(
            ka.next(Some(u64::MAX), PONG),
            Some((u64::MAX, KeepaliveDue::Ping))
        );
        assert_eq!(ka.next(Some(5), PONG), Some((u64::MAX, KeepaliveDue::Ping)));
        ka.ping_sent(u64::MAX);
        assert!(ka.awaiting_pong());
        assert_eq!(
            ka.next(IDLE, Some(1)),
            Some((u64::MAX, KeepaliveDue::PongOverdue))
        );
        ka.heard(u64::MAX);
        assert_eq!(ka.next(IDLE, PONG), Some((u64::MAX, KeepaliveDue::Ping)));
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        Heard(u64),
        PingSent(u64),
    }

    fn time() -> impl Strategy<Value = u64> {
        prop_oneof![0..100_000u64, (u64::MAX - 100_000)..=u64::MAX, any::<u64>(),]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            time().prop_map(Step::Heard),
            time().prop_map(Step::PingSent)
        ]
    }

    fn timeout() -> impl Strategy<Value = Option<u64>> {
        proptest::option::of(prop_oneof![0..100_000u64, any::<u64>()])
    }

    proptest! {
        /// Whatever the events and timeouts, the next deadline is never earlier than
        /// the last event: nothing falls due in the past, so a caller never fires a
        /// deadline at once because of overflow or a stale timestamp. (The caller's
        /// clock may even step back between events.)
        #[test]
        fn next_is_never_before_the_last_event(
            start in time(),
            steps in proptest::collection::vec(step(), 0..12),
            idle in timeout(),
            pong in timeout(),
        ) {
            let mut ka = Keepalive::new(start);
            let mut last = start;
            for step in &steps {
                match *step {
                    Step::Heard(now) => ka.heard(now),
                    Step::PingSent(now) => ka.ping_sent(now),
                }
                last = match *step {
                    Step::Heard(now) | Step::PingSent(now) => now,
                };
                if let Some((at, due)) = ka.next(idle, pong) {
                    prop_assert!(at >= last, "{at} < {last} after {step:?}");
                    prop_assert_eq!(due == KeepaliveDue::PongOverdue, ka.awaiting_pong());
                }
            }
            if let Some((at, _)) = ka.next(idle, pong) {
                prop_assert!(at >= last);
            }
            prop_assert_eq!(ka.next(None, pong), None);
        }

        /// With a monotonic clock (the caller's case), the deadline is never earlier
        /// than any event at all.
        #[test]
        fn with_a_monotonic_clock_next_is_after_every_event(
            start in 0..1_000_000u64,
            gaps in proptest::collection::vec((0..100_000u64, any::<bool>()), 0..12),
            idle in timeout(),
            pong in timeout(),
        ) {
            let mut ka = Keepalive::new(start);
            let mut now = start;
            for (gap, ping) in gaps {
                now += gap;
                if ping {
                    ka.ping_sent(now);
                } else {
                    ka.heard(now);
                }
                if let Some((at, _)) = ka.next(idle, pong) {
                    prop_assert!(at >= now, "{at} < {now}");
                }
            }
        }
    }
}
