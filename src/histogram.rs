//! Fixed-bucket histograms for the loop's timings and sizes.
//!
//! Buckets are powers of two of the unit (1, 2, 4, ... 2^24 µs for durations, bytes
//! for sizes), so recording a value is a leading-zeros count and an add: no
//! allocation, no floating point, cheap enough to stay on for every handler callback.
//! Power-of-two buckets are coarse (a value is known to within a factor of two), which
//! is what latency alerting needs ("p99 over 1 ms"); `hdrhistogram` would give finer
//! quantiles but allocates per histogram, costs more per record, and its buckets do
//! not map onto Prometheus' cumulative `le` buckets without a pass of conversion.

/// Buckets, the last one open-ended: bucket `i < 25` counts values `≤ 2^i` units (and
/// above the previous bound), so the largest bound is 2^24 (16.8 s in µs, 16 MiB in
/// bytes); bucket 25 is everything larger (Prometheus' `+Inf`).
pub const BUCKETS: usize = 26;

/// Counts of recorded values by power-of-two bucket, with their sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    sum: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: [0; BUCKETS],
            sum: 0,
        }
    }
}

impl Histogram {
    /// Counts one value (µs, or bytes: whatever unit the histogram is in).
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    /// Adds every value `other` recorded (e.g. to sum the loops of a
    /// [`Reactor`](crate::Reactor)).
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the values recorded (saturating).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The count in each bucket (not cumulative), bucket `i` holding values up to
    /// [`upper_bound(i)`](Histogram::upper_bound).
    pub fn counts(&self) -> &[u64; BUCKETS] {
        &self.counts
    }

    /// The inclusive upper bound of bucket `i`, in the histogram's unit; `None` for
    /// the last, open-ended bucket.
    pub fn upper_bound(i: usize) -> Option<u64> {
        (i + 1 < BUCKETS).then(|| 1u64 << i)
    }

    /// The upper bound of the bucket that holds the `q` quantile (0.0–1.0) of the
    /// values recorded, in the histogram's unit: the value is at most this, and more
    /// than half of it. `None` if nothing was recorded, or if the quantile falls in the
    /// open-ended bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest rank with at least q of the
        // values at or below it.
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Histogram::upper_bound(i);
            }
        }
        None
    }
}

/// The bucket of `value`: the smallest `i` with `value ≤ 2^i`, or the open-ended one.
fn bucket_of(value: u64) -> usize {
    if value <= 1 {
        return 0;
    }
    let bits = (64 - (value - 1).leading_zeros()) as usize;
    bits.min(BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_lands_in_the_smallest_bucket_whose_bound_holds_it() {
        for (value, bucket) in [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (8, 3),
            (9, 4),
            (1 << 24, 24),
            ((1 << 24) + 1, 25),
            (u64::MAX, 25),
        ] {
            assert_eq!(bucket_of(value), bucket, "{value}");
            if let Some(bound) = Histogram::upper_bound(bucket) {
                assert!(value <= bound, "{value} above its bucket's bound {bound}");
            }
            if bucket > 0 {
                let below = Histogram::upper_bound(bucket - 1).unwrap();
                assert!(value > below, "{value} belongs below {below}");
            }
        }
    }

    #[test]
    fn counts_sum_and_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_bound(0.5), None);
        for v in 1..=100u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.sum(), 5050);
        // 64 of 100 values are ≤ 64; the 99th is in (64, 128].
        assert_eq!(h.quantile_bound(0.5), Some(64));
        assert_eq!(h.quantile_bound(0.99), Some(128));
        assert_eq!(h.quantile_bound(0.0), Some(1));
        h.record(u64::MAX);
        assert_eq!(h.sum(), u64::MAX, "the sum saturates");
        assert_eq!(
            h.quantile_bound(1.0),
            None,
            "the largest is beyond every bound"
        );
    }
}
