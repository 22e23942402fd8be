//! Loop-stall warnings: a handler callback or a whole turn that held the loop longer
//! than `Config::stall_threshold` delayed every connection. Timed with the coarse
//! monotonic clock (a few ns per reading, a few ms of resolution), so it stays on;
//! logged at most once a second with the worst case and a count, and counted in
//! `Stats::loop_stalls`.

use crate::handler::ConnId;
use crate::stats::Stats;
use crate::sys::coarse_millis;
use crate::timer::Millis;

/// What took the time, for the log line.
#[derive(Debug, Clone, Copy)]
struct Stall {
    what: &'static str,
    conn: Option<ConnId>,
    took: Millis,
}

#[derive(Debug)]
pub(super) struct StallWatch {
    threshold: Option<Millis>,
    turn_started: Millis,
    /// A callback stalled in this turn: the turn is not counted again.
    counted_this_turn: bool,
    /// Stalls since the last log line, and the worst of them.
    unreported: u64,
    worst: Option<Stall>,
    last_report: Millis,
}

impl StallWatch {
    pub fn new(threshold: Option<Millis>) -> StallWatch {
        StallWatch {
            threshold,
            turn_started: 0,
            counted_this_turn: false,
            unreported: 0,
            worst: None,
            last_report: 0,
        }
    }

    /// A reading of the clock to time something from (0 when stall checks are off).
    pub fn start(&self) -> Millis {
        if self.threshold.is_some() {
            coarse_millis()
        } else {
            0
        }
    }

    /// A handler callback (`what`, on `conn`) that began at `started` has returned.
    pub fn callback_done(
        &mut self,
        started: Millis,
        what: &'static str,
        conn: Option<ConnId>,
        stats: &mut Stats,
    ) {
        if let Some(took) = self.overran(started) {
            self.counted_this_turn = true;
            self.note(Stall { what, conn, took }, stats);
        }
    }

    pub fn turn_started(&mut self) {
        self.turn_started = self.start();
        self.counted_this_turn = false;
    }

    /// The turn is over: counts it if it stalled without a callback to blame, and
    /// logs what stalled since the last report (at most once a second).
    pub fn turn_done(&mut self, stats: &mut Stats) {
        if let Some(took) = self.overran(self.turn_started) {
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

    fn overran(&self, started: Millis) -> Option<Millis> {
        let threshold = self.threshold?;
        let took = coarse_millis().saturating_sub(started);
        (took > threshold).then_some(took)
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
        let now = coarse_millis();
        if now < self.last_report + 1000 {
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
        self.last_report = now;
    }
}
