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

/// The keepalive state of one connection: 16 bytes.
///
/// One timestamp suffices, because which one matters depends on whether a ping is out:
/// while none is, the next ping is due `idle` after the peer was last heard from; while
/// one is, only the time of that ping counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive(Since);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    /// No ping is out; the peer was last heard from at this moment.
    Heard(u64),
    /// Our ping went out at this moment and nothing has been heard since.
    Pinged(u64),
}

impl Keepalive {
    /// A connection that opened at `now`: the opening counts as hearing from the peer.
    pub fn new(now: u64) -> Keepalive {
        Keepalive(Since::Heard(now))
    }

    /// Something arrived from the peer at `now`: it is alive, so an outstanding ping
    /// is answered (whatever the frame was) and the idle period starts again. A time
    /// earlier than one already heard (a caller's clock that stepped back) does not
    /// move the idle deadline earlier.
    pub fn heard(&mut self, now: u64) {
        self.0 = match self.0 {
            Since::Heard(last) => Since::Heard(last.max(now)),
            Since::Pinged(_) => Since::Heard(now),
        };
    }

    /// Our keepalive ping went out at `now`; the pong timeout runs from it. The caller
    /// pings when [`next`](Self::next) says so, which is never while a ping is out; if
    /// it pings again anyway, the timeout runs from the latest ping, the one it just
    /// chose to wait for (but, as in [`heard`](Self::heard), never from an earlier
    /// moment than one already recorded).
    pub fn ping_sent(&mut self, now: u64) {
        self.0 = match self.0 {
            Since::Heard(_) => Since::Pinged(now),
            Since::Pinged(at) => Since::Pinged(at.max(now)),
        };
    }

    /// Whether a ping is out and unanswered.
    pub fn awaiting_pong(&self) -> bool {
        matches!(self.0, Since::Pinged(_))
    }

    /// When the next keepalive step is due, and which, given the idle and pong
    /// timeouts in milliseconds (`None`: off).
    ///
    /// `None` when keepalive is off (`idle` is `None`), and while a ping is out with no
    /// pong timeout (the caller waits forever, as it asked). Deadlines saturate at
    /// `u64::MAX` instead of wrapping, so no timeout makes one fall in the past.
    pub fn next(&self, idle: Option<u64>, pong: Option<u64>) -> Option<(u64, KeepaliveDue)> {
        let idle = idle?;
        match self.0 {
            Since::Heard(at) => Some((at.saturating_add(idle), KeepaliveDue::Ping)),
            Since::Pinged(at) => Some((at.saturating_add(pong?), KeepaliveDue::PongOverdue)),
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
