//! How long the loop's work takes: every handler callback and every turn is timed
//! into `Stats`' histograms (`callback_micros`, `turn_micros`), and one that held the
//! loop longer than `Config::stall_threshold` — it delayed every connection — is a
//! stall: logged at most once a second with the worst case and a count, and counted in
//! `Stats::loop_stalls`.
//!
//! Timed with `Instant` (the vDSO's monotonic clock, about 25 ns a reading here): two
//! readings per callback, under 1% of the cheapest echo's cost.

use crate::handler::ConnId;
use crate::stats::Stats;
use crate::timer::Millis;
use std::time::Instant;

/// What took the time, for the log line.
#[derive(Debug, Clone, Copy)]
struct Stall {
    what: &'static str,
    conn: Option<ConnId>,
    took: Millis,
}

#[derive(Debug)]
pub(super) struct StallWatch {
    /// In µs; `None`: stalls are not reported (the histograms are kept regardless).
    threshold: Option<u64>,
    turn_started: Instant,
    /// A callback stalled in this turn: the turn is not counted again.
    counted_this_turn: bool,
    /// Stalls since the last log line, and the worst of them.
    unreported: u64,
    worst: Option<Stall>,
    last_report: Option<Instant>,
}

impl StallWatch {
    pub fn new(threshold: Option<Millis>) -> StallWatch {
        StallWatch {
            threshold: threshold.map(|ms| ms.saturating_mul(1000)),
            turn_started: Instant::now(),
            counted_this_turn: false,
            unreported: 0,
            worst: None,
            last_report: None,
        }
    }

    /// A reading of the clock to time something from.
    pub fn start(&self) -> Instant {
        Instant::now()
    }

    /// A handler callback (`what`, on `conn`) that began at `started` has returned.
    pub fn callback_done(
        &mut self,
        started: Instant,
        what: &'static str,
        conn: Option<ConnId>,
        stats: &mut Stats,
    ) {
        let took = micros_since(started);
        stats.callback_micros.record(took);
        if let Some(took) = self.overran(took) {
            self.counted_this_turn = true;
            self.note(Stall { what, conn, took }, stats);
        }
    }

    /// A turn began at `at` (the reading the loop takes for its clock anyway).
    pub fn turn_started(&mut self, at: Instant) {
        self.turn_started = at;
        self.counted_this_turn = false;
    }

    /// The turn is over: counts it if it stalled without a callback to blame, and
    /// logs what stalled since the last report (at most once a second).
    pub fn turn_done(&mut self, stats: &mut Stats) {
        let took = micros_since(self.turn_started);
        stats.turn_micros.record(took);
        if let Some(took) = self.overran(took) {
            if !self.counted_this_turn {
                let turn = Stall {
                    what: "a loop turn (I/O and the loop's own work)",
                    conn: None,
                    took,
                };
                self.note(turn, stats);
            }
        }
        self.report();
    }

    /// `took` (µs) in ms, if it is over the threshold.
    fn overran(&self, took: u64) -> Option<Millis> {
        let threshold = self.threshold?;
        (took > threshold).then_some(took / 1000)
    }

    fn note(&mut self, stall: Stall, stats: &mut Stats) {
        stats.loop_stalls += 1;
        self.unreported += 1;
        if self.worst.is_none_or(|worst| stall.took > worst.took) {
            self.worst = Some(stall);
        }
    }

    fn report(&mut self) {
        let Some(worst) = self.worst else {
            return;
        };
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|last| now.duration_since(last).as_millis() < 1000)
        {
            return;
        }
        let conn = worst
            .conn
            .map_or(String::new(), |id| format!(" on connection {id}"));
        log::warn!(
            "loop stalled: {} took {} ms{conn} (every connection waited; {} stall(s) over the threshold since the last report)",
            worst.what,
            worst.took,
            self.unreported
        );
        self.worst = None;
        self.unreported = 0;
        self.last_report = Some(now);
    }
}

fn micros_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}
