//! Counters the loop keeps as it works: cheap enough to be always on.

use crate::histogram::Histogram;
use std::fmt;

/// What the server has done since it started. Read it with
/// [`Server::stats`](crate::Server::stats) or [`Loop::stats`](crate::Loop::stats) (a `Ctx` too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// WebSocket connections open right now.
    pub open_connections: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// TCP connections refused with 503 (over `max_connections` or `max_handshakes`).
    pub refused: u64,
    /// Upgrades completed (101 sent).
    pub handshakes: u64,
    /// Requests answered with an HTTP error or a page instead of a 101.
    pub http_responses: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages sent (or queued), broadcast receivers counted one by one.
    pub messages_out: u64,
    /// Payload bytes of data messages received (inflated size if compressed).
    pub bytes_in: u64,
    /// Payload bytes of data messages sent (before compression).
    pub bytes_out: u64,
    /// Frames encoded for broadcast or publish: one per call that has receivers on the
    /// loop, however many they are (none for a topic nobody here joined).
    pub fanout_frames_encoded: u64,
    /// Receivers a broadcast or published frame was handed to (sent or queued).
    pub fanout_deliveries: u64,
    /// Connections failed because the peer broke the protocol.
    pub protocol_errors: u64,
    /// Handler panics caught: in a connection's callback the connection was closed
    /// with 1011; in a server-level timer or a deferred closure it was logged.
    pub handler_panics: u64,
    /// Closed WebSocket connections, by close code (1006 for a lost TCP connection).
    pub closes: Vec<(u16, u64)>,
    /// Sends refused: the receiver's queue was over `max_send_queue`, the loop's
    /// outgoing budget had no room, or the connection was closing. Broadcast and
    /// publish receivers count one by one.
    pub sends_refused: u64,
    /// Data messages an open connection missed because its queue was full: sends
    /// refused at `max_send_queue` or for the outgoing budget (in-loop, fan-out and
    /// `Handle` sends alike), and whole messages dropped from queues by
    /// `QueuePolicy::DropOldest` or discarded by `QueuePolicy::Close`. Counted at the
    /// end of the turn, when `Handler::on_dropped` is told.
    pub messages_dropped: u64,
    /// Connections closed (1008) by `QueuePolicy::Close` because a send would have
    /// taken their queue past `max_send_queue`.
    pub queue_full_closes: u64,
    /// Connections closed (1013) to make room in the incoming budget, or because the
    /// room they needed was not there.
    pub incoming_budget_closes: u64,
    /// Connections dropped (1008) because their queues took the outgoing budget.
    pub outgoing_budget_closes: u64,
    /// Connections closed (1008) because a half-received message stopped growing for
    /// `message_timeout`.
    pub message_timeouts: u64,
    /// Loop stalls: a handler callback, or a whole loop turn, that took longer than
    /// `Config::stall_threshold` (each logged, at most once a second, with what took
    /// the time). A turn is counted only if no callback in it was.
    pub loop_stalls: u64,
    /// Messages this node published to the cluster's broker (topic publishes and
    /// broadcasts; feature `cluster`, zero without one attached).
    pub cluster_published: u64,
    /// Publishes that did not reach the broker (delivered locally only): the queue
    /// towards it was full, it was away, or the write failed.
    pub cluster_publishes_dropped: u64,
    /// Messages from other nodes, received through the broker and delivered locally.
    pub cluster_received: u64,
    /// Messages from the broker not delivered: the loop's inbox was full, or the
    /// message was malformed or over `max_message_size`.
    pub cluster_received_dropped: u64,
    /// TLS handshakes that failed: bytes that are not TLS (plain HTTP on the TLS port), a
    /// bad or refused ClientHello, an alert from the client, or a handshake that did not
    /// finish within `handshake_timeout`. Always 0 without the `tls` feature.
    pub tls_handshake_failures: u64,
    /// Gauge: connections still in the upgrade handshake.
    pub handshakes_in_progress: u64,
    /// Gauge: entries in the loop's deadline queue (at most one per connection).
    pub deadline_entries: u64,
    /// Gauge: bytes held for incoming messages that are not complete yet (assembly
    /// buffers kept for reuse and lent inflaters included), against `incoming_budget`.
    pub incoming_bytes: u64,
    /// Gauge: bytes queued for sending over all connections (a shared broadcast frame
    /// once), against `outgoing_budget`.
    pub outgoing_bytes: u64,
    /// Gauge: bytes of capacity held by the loop's pool of drained send buffers (at
    /// most 32 buffers and 2 MiB per loop, emptied after a second unused): the
    /// loop's memory, outside `outgoing_budget`.
    pub send_pool_bytes: u64,
    /// Gauge: topic subscriptions, over all topics and connections.
    pub topic_memberships: u64,
    /// Gauge: inflaters held by connections (lent from the loop's pool, or kept with
    /// context takeover).
    pub inflaters_lent: u64,
    /// Gauge: application timers pending (per connection and server-level), against
    /// `Config::max_timers`.
    pub timers_pending: u64,
    /// Gauge: 1 while a cluster bridge is connected to its broker, else 0.
    pub cluster_connected: u64,
    /// Histogram (µs): how long each loop turn worked, from the poll's return to the
    /// end of the turn (the wait in the poll is not counted).
    pub turn_micros: Histogram,
    /// Histogram (µs): how long each handler callback ran.
    pub callback_micros: Histogram,
    /// Histogram (µs): keepalive ping round trips, ping sent to pong received.
    pub ping_rtt_micros: Histogram,
    /// Histogram (bytes): what a connection had queued each time the loop flushed it
    /// (the replies corked during an event, or a backlog the socket could take again).
    pub flush_bytes: Histogram,
}

/// Whether a metric only goes up (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever increases (from zero at start): exposed as `wsreactor_<name>_total`.
    Counter,
    /// A level right now: exposed as `wsreactor_<name>`.
    Gauge,
}

/// One field of [`Stats`] as the exposition names it: see [`Stats::METRICS`].
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The field's name (`messages_in`); the exposed name adds the `wsreactor_` prefix,
    /// and `_total` for a counter.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// What it counts, one line (the `# HELP` text).
    pub help: &'static str,
    /// Reads the value.
    pub get: fn(&Stats) -> u64,
}

impl Metric {
    /// The name in the Prometheus exposition: `wsreactor_messages_in_total`.
    pub fn exposed_name(&self) -> String {
        match self.kind {
            MetricKind::Counter => format!("wsreactor_{}_total", self.name),
            MetricKind::Gauge => format!("wsreactor_{}", self.name),
        }
    }
}

/// A histogram field of [`Stats`] as the exposition names it: see
/// [`Stats::HISTOGRAMS`].
#[derive(Debug, Clone, Copy)]
pub struct HistogramMetric {
    /// The field's name (`turn_micros`), as the JSON has it.
    pub name: &'static str,
    /// The name in the Prometheus exposition, in base units (`wsreactor_turn_seconds`).
    pub exposed: &'static str,
    /// What it measures, one line (the `# HELP` text).
    pub help: &'static str,
    /// Multiplies a recorded value into the exposition's unit (1e-6 for µs → s).
    pub scale: f64,
    /// Reads the histogram.
    pub get: fn(&Stats) -> &Histogram,
}

macro_rules! metrics {
    ($($kind:ident $name:ident: $help:literal;)*) => {
        &[$(Metric {
            name: stringify!($name),
            kind: MetricKind::$kind,
            help: $help,
            get: |stats: &Stats| stats.$name,
        }),*]
    };
}

/// The exposition name of [`Stats::closes`], a counter family with a `code` label.
pub const CLOSES_METRIC: &str = "wsreactor_closes_total";
const CLOSES_HELP: &str =
    "Closed WebSocket connections, by close code (1006 for a lost TCP connection).";

impl Stats {
    /// Every numeric field, in the order the exposition and the JSON list them:
    /// counters first, then gauges. [`closes`](Stats::closes) is the one field not
    /// here (it is a family, by code); it comes between the counters and the gauges.
    pub const METRICS: &'static [Metric] = metrics! {
        Counter accepted: "TCP connections accepted.";
        Counter refused: "TCP connections refused with 503 (over max_connections or max_handshakes).";
        Counter handshakes: "Upgrades completed (101 sent).";
        Counter http_responses: "Requests answered with an HTTP error or a page instead of a 101.";
        Counter messages_in: "Data messages received.";
        Counter messages_out: "Data messages sent or queued, broadcast receivers counted one by one.";
        Counter bytes_in: "Payload bytes of data messages received (inflated size if compressed).";
        Counter bytes_out: "Payload bytes of data messages sent (before compression).";
        Counter fanout_frames_encoded: "Frames encoded for broadcast or publish, one per call that has receivers on the loop.";
        Counter fanout_deliveries: "Receivers a broadcast or published frame was handed to.";
        Counter protocol_errors: "Connections failed because the peer broke the protocol.";
        Counter handler_panics: "Handler panics caught (in a connection's callback it closed the connection with 1011; in a server-level timer or deferred closure it was logged).";
        Counter sends_refused: "Sends refused (queue over max_send_queue, outgoing budget full, or closing).";
        Counter messages_dropped: "Data messages an open connection missed for a full queue (refused, or dropped by its queue policy).";
        Counter queue_full_closes: "Connections closed (1008) by the Close queue policy for a full send queue.";
        Counter incoming_budget_closes: "Connections closed (1013) to make room in the incoming budget.";
        Counter outgoing_budget_closes: "Connections dropped (1008) because their queues took the outgoing budget.";
        Counter message_timeouts: "Connections closed (1008) because a half-received message stopped growing.";
        Counter loop_stalls: "Handler callbacks or loop turns that took longer than the stall threshold.";
        Counter cluster_published: "Messages published to the cluster's broker.";
        Counter cluster_publishes_dropped: "Publishes that did not reach the cluster's broker (delivered locally only).";
        Counter cluster_received: "Messages from other nodes received through the broker.";
        Counter cluster_received_dropped: "Messages from the broker not delivered (inbox full, malformed or too large).";
        Counter tls_handshake_failures: "TLS handshakes that failed (not TLS, a bad or refused ClientHello, an alert) or timed out.";
        Gauge open_connections: "WebSocket connections open right now.";
        Gauge handshakes_in_progress: "Connections still in the upgrade handshake.";
        Gauge deadline_entries: "Entries in the loop's deadline queue.";
        Gauge incoming_bytes: "Bytes held for incoming messages that are not complete yet.";
        Gauge outgoing_bytes: "Bytes queued for sending over all connections.";
        Gauge send_pool_bytes: "Bytes held in the loop's pool of drained send buffers, outside the outgoing budget.";
        Gauge topic_memberships: "Topic subscriptions, over all topics and connections.";
        Gauge inflaters_lent: "Inflaters held by connections.";
        Gauge timers_pending: "Application timers pending, per connection and server-level.";
        Gauge cluster_connected: "1 while the cluster bridge is connected to its broker, else 0.";
    };

    /// The histogram fields, in the order the exposition and the JSON list them
    /// (after every metric of [`METRICS`](Stats::METRICS)).
    pub const HISTOGRAMS: &'static [HistogramMetric] = &[
        HistogramMetric {
            name: "turn_micros",
            exposed: "wsreactor_turn_seconds",
            help: "Loop turns: time from the poll's return to the end of the turn's work.",
            scale: 1e-6,
            get: |stats| &stats.turn_micros,
        },
        HistogramMetric {
            name: "callback_micros",
            exposed: "wsreactor_callback_seconds",
            help: "Handler callbacks: time in each call.",
            scale: 1e-6,
            get: |stats| &stats.callback_micros,
        },
        HistogramMetric {
            name: "ping_rtt_micros",
            exposed: "wsreactor_ping_rtt_seconds",
            help: "Keepalive pings: time from the ping sent to its pong received.",
            scale: 1e-6,
            get: |stats| &stats.ping_rtt_micros,
        },
        HistogramMetric {
            name: "flush_bytes",
            exposed: "wsreactor_flush_bytes",
            help: "Bytes a connection had queued when the loop flushed it.",
            scale: 1.0,
            get: |stats| &stats.flush_bytes,
        },
    ];

    /// Writes every field in the Prometheus text exposition format 0.0.4 (serve it
    /// with `Content-Type: text/plain; version=0.0.4`): for each metric a `# HELP` and
    /// a `# TYPE` line, then its sample; counters are `wsreactor_<field>_total`, gauges
    /// `wsreactor_<field>`, and the close codes one counter family,
    /// `wsreactor_closes_total{code="1000"} 3`, in ascending code order. The order is
    /// that of [`METRICS`](Stats::METRICS), stable from one scrape to the next.
    ///
    /// It takes a [`fmt::Write`] (a `String`, a `Formatter`): the text is small and
    /// is built in memory for a response body, so there is no I/O error to carry;
    /// for an `io::Write`, write into a `String` first.
    pub fn write_prometheus(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let family = |out: &mut dyn fmt::Write, name: &str, kind: MetricKind, help: &str| {
            let kind = match kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
            };
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} {kind}")
        };
        let (counters, gauges) = Stats::counters_and_gauges();
        for metric in counters {
            let name = metric.exposed_name();
            family(out, &name, metric.kind, metric.help)?;
            writeln!(out, "{name} {}", (metric.get)(self))?;
        }
        family(out, CLOSES_METRIC, MetricKind::Counter, CLOSES_HELP)?;
        for (code, n) in &self.closes {
            writeln!(out, "{CLOSES_METRIC}{{code=\"{code}\"}} {n}")?;
        }
        for metric in gauges {
            let name = metric.exposed_name();
            family(out, &name, metric.kind, metric.help)?;
            writeln!(out, "{name} {}", (metric.get)(self))?;
        }
        for metric in Stats::HISTOGRAMS {
            let name = metric.exposed;
            let histogram = (metric.get)(self);
            writeln!(out, "# HELP {name} {}", metric.help)?;
            writeln!(out, "# TYPE {name} histogram")?;
            // Prometheus buckets are cumulative: each counts everything up to its bound.
            let mut cumulative = 0;
            for (i, n) in histogram.counts().iter().enumerate() {
                cumulative += n;
                match Histogram::upper_bound(i) {
                    Some(bound) => {
                        let le = bound as f64 * metric.scale;
                        writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}")?
                    }
                    None => writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}")?,
                }
            }
            writeln!(out, "{name}_sum {}", histogram.sum() as f64 * metric.scale)?;
            writeln!(out, "{name}_count {cumulative}")?;
        }
        Ok(())
    }

    /// The exposition as a `String` (see [`write_prometheus`](Stats::write_prometheus)).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        self.write_prometheus(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    /// Every field as one JSON object, in the order of the exposition, keyed by field
    /// name (`{"accepted":2,...,"closes":{"1000":2},...}`): `closes` is an object from
    /// code (a string, as JSON keys are) to count. Each histogram of
    /// [`HISTOGRAMS`](Stats::HISTOGRAMS) is an object with its `count`, its `sum`
    /// (µs or bytes) and `buckets`: the count in each power-of-two bucket, not
    /// cumulative (bucket `i` holds values up to 2^i, the last one everything larger).
    pub fn to_json(&self) -> String {
        use fmt::Write as _;
        let (counters, gauges) = Stats::counters_and_gauges();
        let mut out = String::from("{");
        for metric in counters {
            let _ = write!(out, "\"{}\":{},", metric.name, (metric.get)(self));
        }
        out.push_str("\"closes\":{");
        for (i, (code, n)) in self.closes.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            let _ = write!(out, "{comma}\"{code}\":{n}");
        }
        out.push('}');
        for metric in gauges {
            let _ = write!(out, ",\"{}\":{}", metric.name, (metric.get)(self));
        }
        for metric in Stats::HISTOGRAMS {
            let histogram = (metric.get)(self);
            let _ = write!(
                out,
                ",\"{}\":{{\"count\":{},\"sum\":{},\"buckets\":[",
                metric.name,
                histogram.count(),
                histogram.sum()
            );
            for (i, n) in histogram.counts().iter().enumerate() {
                let comma = if i == 0 { "" } else { "," };
                let _ = write!(out, "{comma}{n}");
            }
            out.push_str("]}");
        }
        out.push('}');
        out
    }

    /// [`METRICS`](Stats::METRICS) split where the gauges start (a test checks that
    /// no counter follows a gauge).
    fn counters_and_gauges() -> (&'static [Metric], &'static [Metric]) {
        let first_gauge = Stats::METRICS
            .iter()
            .position(|m| m.kind == MetricKind::Gauge)
            .unwrap_or(Stats::METRICS.len());
        Stats::METRICS.split_at(first_gauge)
    }

    pub(crate) fn count_close(&mut self, code: u16) {
        match self.closes.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => {
                self.closes.push((code, 1));
                self.closes.sort_unstable();
            }
        }
    }
}

impl fmt::Display for Stats {
    /// A one-line summary for logs: every field of [`METRICS`](Stats::METRICS) as
    /// `name=value`, in its order, then the close codes (`closes=1000:3,1006:1`); not
    /// the histograms, which do not fit on a line.
    /// Built from the same list as the exposition, so a new field cannot be left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, metric) in Stats::METRICS.iter().enumerate() {
            let space = if i == 0 { "" } else { " " };
            write!(f, "{space}{}={}", metric.name, (metric.get)(self))?;
        }
        f.write_str(" closes=")?;
        if self.closes.is_empty() {
            f.write_str("none")?;
        }
        for (i, (code, n)) in self.closes.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}{code}:{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::BUCKETS;

    /// A `Stats` with a distinct value in every field, so a field read from the wrong
    /// place shows.
    fn sample() -> Stats {
        let mut stats = Stats::default();
        for (i, metric) in Stats::METRICS.iter().enumerate() {
            let value = 100 + i as u64;
            match metric.name {
                "open_connections" => stats.open_connections = value,
                "accepted" => stats.accepted = value,
                "refused" => stats.refused = value,
                "handshakes" => stats.handshakes = value,
                "http_responses" => stats.http_responses = value,
                "messages_in" => stats.messages_in = value,
                "messages_out" => stats.messages_out = value,
                "bytes_in" => stats.bytes_in = value,
                "bytes_out" => stats.bytes_out = value,
                "fanout_frames_encoded" => stats.fanout_frames_encoded = value,
                "fanout_deliveries" => stats.fanout_deliveries = value,
                "protocol_errors" => stats.protocol_errors = value,
                "handler_panics" => stats.handler_panics = value,
                "sends_refused" => stats.sends_refused = value,
                "messages_dropped" => stats.messages_dropped = value,
                "queue_full_closes" => stats.queue_full_closes = value,
                "incoming_budget_closes" => stats.incoming_budget_closes = value,
                "outgoing_budget_closes" => stats.outgoing_budget_closes = value,
                "message_timeouts" => stats.message_timeouts = value,
                "loop_stalls" => stats.loop_stalls = value,
                "cluster_published" => stats.cluster_published = value,
                "cluster_publishes_dropped" => stats.cluster_publishes_dropped = value,
                "cluster_received" => stats.cluster_received = value,
                "cluster_received_dropped" => stats.cluster_received_dropped = value,
                "cluster_connected" => stats.cluster_connected = value,
                "tls_handshake_failures" => stats.tls_handshake_failures = value,
                "handshakes_in_progress" => stats.handshakes_in_progress = value,
                "deadline_entries" => stats.deadline_entries = value,
                "incoming_bytes" => stats.incoming_bytes = value,
                "outgoing_bytes" => stats.outgoing_bytes = value,
                "send_pool_bytes" => stats.send_pool_bytes = value,
                "topic_memberships" => stats.topic_memberships = value,
                "inflaters_lent" => stats.inflaters_lent = value,
                "timers_pending" => stats.timers_pending = value,
                other => panic!("sample() does not set {other}"),
            }
        }
        stats.count_close(1006);
        stats.count_close(1000);
        stats.count_close(1000);
        // Histograms: distinct shapes, so one read from the wrong field shows.
        for (i, metric) in Stats::HISTOGRAMS.iter().enumerate() {
            let histogram = match metric.name {
                "turn_micros" => &mut stats.turn_micros,
                "callback_micros" => &mut stats.callback_micros,
                "ping_rtt_micros" => &mut stats.ping_rtt_micros,
                "flush_bytes" => &mut stats.flush_bytes,
                other => panic!("sample() does not set {other}"),
            };
            for _ in 0..=i {
                histogram.record(3);
            }
            histogram.record(1000);
        }
        stats
    }

    /// The field names of `Stats`, read from its derived `Debug` (at the top level:
    /// a histogram's own fields, inside braces, are not `Stats`' fields).
    fn field_names() -> Vec<String> {
        let debug = format!("{:?}", Stats::default());
        let inner = debug
            .strip_prefix("Stats { ")
            .and_then(|s| s.strip_suffix(" }"))
            .unwrap();
        let mut fields = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    fields.push(&inner[start..i]);
                    start = i + 2;
                }
                _ => {}
            }
        }
        fields.push(&inner[start..]);
        fields
            .iter()
            .map(|field| field.split(':').next().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn every_field_is_a_metric_once_and_each_reads_its_own_field() {
        let fields = field_names();
        let mut names: Vec<&str> = Stats::METRICS.iter().map(|m| m.name).collect();
        names.extend(Stats::HISTOGRAMS.iter().map(|h| h.name));
        names.push("closes");
        let mut sorted_fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        sorted_fields.sort_unstable();
        names.sort_unstable();
        assert_eq!(names, sorted_fields);
        let stats = sample();
        for (i, metric) in Stats::METRICS.iter().enumerate() {
            assert_eq!((metric.get)(&stats), 100 + i as u64, "{}", metric.name);
        }
    }

    #[test]
    fn counters_come_before_gauges_and_help_is_one_plain_line() {
        let (counters, gauges) = Stats::counters_and_gauges();
        assert!(counters.iter().all(|m| m.kind == MetricKind::Counter));
        assert!(gauges.iter().all(|m| m.kind == MetricKind::Gauge));
        assert!(!counters.is_empty() && !gauges.is_empty());
        // HELP text would need escaping for these; keep it without.
        for help in Stats::METRICS.iter().map(|m| m.help).chain([CLOSES_HELP]) {
            assert!(!help.contains(['\\', '\n']), "{help}");
        }
    }

    #[test]
    fn prometheus_exposition_format() {
        let text = sample().to_prometheus();
        let lines: Vec<&str> = text.lines().collect();
        assert!(text.ends_with('\n'));
        // Pinned beginning: HELP, TYPE, sample for each family.
        assert_eq!(
            &lines[..6],
            [
                "# HELP wsreactor_accepted_total TCP connections accepted.",
                "# TYPE wsreactor_accepted_total counter",
                "wsreactor_accepted_total 100",
                "# HELP wsreactor_refused_total TCP connections refused with 503 (over max_connections or max_handshakes).",
                "# TYPE wsreactor_refused_total counter",
                "wsreactor_refused_total 101",
            ]
        );
        // The close codes: one family, a sample per code in ascending order.
        let closes = lines
            .iter()
            .position(|l| *l == "# TYPE wsreactor_closes_total counter")
            .unwrap();
        assert!(lines[closes - 1].starts_with("# HELP wsreactor_closes_total Closed"));
        assert_eq!(
            &lines[closes + 1..closes + 3],
            [
                "wsreactor_closes_total{code=\"1000\"} 2",
                "wsreactor_closes_total{code=\"1006\"} 1",
            ]
        );
        assert_eq!(
            lines[closes + 3],
            "# HELP wsreactor_open_connections WebSocket connections open right now."
        );
        assert!(text
            .contains("# TYPE wsreactor_open_connections gauge\nwsreactor_open_connections 124\n"));
        // Every metric: HELP then TYPE then its one sample, in METRICS order.
        let mut at = 0;
        for metric in Stats::METRICS {
            let name = metric.exposed_name();
            let help = format!("# HELP {name} {}", metric.help);
            let i = at + lines[at..].iter().position(|l| *l == help).unwrap();
            let kind = match metric.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
            };
            assert_eq!(lines[i + 1], format!("# TYPE {name} {kind}"));
            assert_eq!(lines[i + 2], format!("{name} {}", (metric.get)(&sample())));
            at = i + 3;
        }
        // Then each histogram: HELP, TYPE, cumulative buckets with their bounds in
        // base units, sum and count.
        let turn = lines
            .iter()
            .position(|l| *l == "# TYPE wsreactor_turn_seconds histogram")
            .unwrap();
        assert_eq!(
            &lines[turn + 1..turn + 4],
            [
                "wsreactor_turn_seconds_bucket{le=\"0.000001\"} 0",
                "wsreactor_turn_seconds_bucket{le=\"0.000002\"} 0",
                "wsreactor_turn_seconds_bucket{le=\"0.000004\"} 1",
            ]
        );
        assert_eq!(
            &lines[turn + 11..turn + 13],
            [
                "wsreactor_turn_seconds_bucket{le=\"0.001024\"} 2",
                "wsreactor_turn_seconds_bucket{le=\"0.002048\"} 2",
            ]
        );
        assert_eq!(
            &lines[turn + 26..turn + 29],
            [
                "wsreactor_turn_seconds_bucket{le=\"+Inf\"} 2",
                "wsreactor_turn_seconds_sum 0.001003",
                "wsreactor_turn_seconds_count 2",
            ]
        );
        assert!(text.contains("wsreactor_flush_bytes_bucket{le=\"4\"} 4\n"));
        assert!(text.contains("wsreactor_flush_bytes_bucket{le=\"16777216\"} 5\n"));
        // 3 lines per metric, plus the closes family (HELP, TYPE, two samples), plus
        // per histogram HELP, TYPE, the buckets, sum and count.
        assert_eq!(
            lines.len(),
            3 * Stats::METRICS.len() + 4 + Stats::HISTOGRAMS.len() * (4 + BUCKETS)
        );
        // Nothing yet closed: the family is announced with no samples.
        let empty = Stats::default().to_prometheus();
        assert!(empty
            .contains("# TYPE wsreactor_closes_total counter\n# HELP wsreactor_open_connections "));
    }

    #[test]
    fn json_has_every_field_and_closes_as_an_object() {
        let json = sample().to_json();
        assert!(
            json.starts_with("{\"accepted\":100,\"refused\":101,"),
            "{json}"
        );
        assert!(json.contains(",\"closes\":{\"1000\":2,\"1006\":1},\"open_connections\":124,"));
        assert!(json.contains(",\"inflaters_lent\":131,"), "{json}");
        let zeros = |n: usize| vec!["0"; n].join(",");
        assert!(
            json.ends_with(&format!(
                ",\"flush_bytes\":{{\"count\":5,\"sum\":1012,\"buckets\":[0,0,4,{},1,{}]}}}}",
                zeros(7),
                zeros(15)
            )),
            "{json}"
        );
        for name in field_names() {
            assert_eq!(json.matches(&format!("\"{name}\":")).count(), 1, "{name}");
        }
        // Structure: balanced braces, no trailing or doubled commas.
        let objects = 2 + Stats::HISTOGRAMS.len();
        assert_eq!(json.matches('{').count(), objects);
        assert_eq!(json.matches('}').count(), objects);
        assert!(!json.contains(",}") && !json.contains(",,") && !json.contains("{,"));
        assert_eq!(
            Stats::default().to_json().matches("\"closes\":{},").count(),
            1
        );
        // It parses, and says what the fields say.
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let object = value.as_object().unwrap();
        assert_eq!(
            object.len(),
            Stats::METRICS.len() + 1 + Stats::HISTOGRAMS.len()
        );
        for metric in Stats::METRICS {
            assert_eq!(object[metric.name].as_u64(), Some((metric.get)(&sample())));
        }
        let sampled = sample();
        for metric in Stats::HISTOGRAMS {
            let histogram = (metric.get)(&sampled);
            let value = &object[metric.name];
            assert_eq!(value["count"].as_u64(), Some(histogram.count()));
            assert_eq!(value["sum"].as_u64(), Some(histogram.sum()));
            let buckets: Vec<u64> = value["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap())
                .collect();
            assert_eq!(buckets, histogram.counts());
        }
        assert_eq!(object["closes"]["1000"].as_u64(), Some(2));
        assert_eq!(object["closes"]["1006"].as_u64(), Some(1));
    }

    #[test]
    fn the_log_line_names_every_field_with_its_value() {
        let stats = sample();
        let line = stats.to_string();
        assert!(!line.contains('\n'));
        for metric in Stats::METRICS {
            let name = metric.name;
            let pair = format!("{name}={}", (metric.get)(&stats));
            assert_eq!(
                line.split(' ').filter(|word| *word == pair).count(),
                1,
                "{pair} in {line}"
            );
        }
        assert!(line.ends_with(" closes=1000:2,1006:1"), "{line}");
        assert!(Stats::default().to_string().ends_with(" closes=none"));
    }

    /// README.md's Metrics table is written by hand: it must list every metric, with
    /// its type and help text, in the order of the exposition.
    #[test]
    fn the_readme_table_lists_every_metric() {
        let readme = include_str!("../README.md");
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|line| *line != "| metric | type | meaning |")
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .collect();
        let (counters, gauges) = Stats::counters_and_gauges();
        let row = |m: &Metric| {
            let kind = match m.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
            };
            format!("| `{}` | {kind} | {} |", m.exposed_name(), m.help)
        };
        let mut expected: Vec<String> = counters.iter().map(row).collect();
        expected.push(format!(
            "| `{CLOSES_METRIC}{{code=\"…\"}}` | counter | {CLOSES_HELP} |"
        ));
        expected.extend(gauges.iter().map(row));
        expected.extend(
            Stats::HISTOGRAMS
                .iter()
                .map(|h| format!("| `{}` | histogram | {} |", h.exposed, h.help)),
        );
        assert_eq!(table, expected);
    }
}
