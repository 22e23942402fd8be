//! Every limit and timeout the server enforces, in one place, each with its default
//! and the reason for it.

use crate::proto::deflate::DeflatePolicy;
use crate::proto::frame::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::timer::{millis, Millis};
use std::fmt;
use std::time::Duration;

/// The smallest send queue that holds a largest control frame (a pong answering a
/// 125-byte ping: 2 bytes of header and the payload).
const MIN_SEND_QUEUE: usize = 2 + MAX_CONTROL_PAYLOAD;

/// Limits, sizes and timeouts for a [`Server`](crate::Server).
///
/// The defaults suit a public echo or chat service: large enough for the Autobahn
/// TestSuite's 16 MiB messages, bounded everywhere so that no peer can take the machine.
///
/// Every `Duration` is accepted. A timeout of zero turns that timeout off, and so does
/// one longer than about 100 years: `Duration::MAX` reads as "never" (the field docs
/// say what "off" means for each). [`Config::validate`] names the other values that
/// make no sense; [`Server::bind`](crate::Server::bind) refuses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The largest message (all fragments together) a peer may send; larger ones are
    /// refused with close code 1009 as soon as a frame header announces them, before
    /// any of their payload is buffered. Default: 16 MiB. Must not be zero.
    pub max_message_size: usize,
    /// Hand every connection's data messages to [`Handler::on_part`](crate::Handler::on_part)
    /// in parts as they arrive, instead of whole to `on_message` (one connection can
    /// choose with [`Ctx::receive_in_parts`](crate::Ctx::receive_in_parts)). Parts
    /// are never assembled, so a message costs the server no memory whatever its
    /// size; `max_streamed_message_size` limits it instead of `max_message_size`.
    /// Default: false.
    pub message_parts: bool,
    /// The largest message a peer may send to a connection that receives in parts
    /// (all fragments together, inflated if compressed); a larger one is refused with
    /// 1009 as soon as a frame header announces it (or, compressed, as soon as
    /// inflating passes it). Nothing is buffered, so this guards the application, not
    /// the server's memory. Default: 1 GiB; at most 4 GiB − 1 (larger values are
    /// capped there).
    pub max_streamed_message_size: u64,
    /// The largest HTTP request head (request line and headers) accepted for the
    /// upgrade; a larger one gets `431` and the connection is closed. Default: 16 KiB,
    /// several times what browsers send, small enough that half-sent heads are cheap.
    /// Must not be zero.
    pub max_header_bytes: usize,
    /// Size of the one read buffer the whole loop shares. Idle connections own no read
    /// buffer at all. Default: 128 KiB, so that a 64 KiB message with its header
    /// usually arrives in one read and is handed out in place instead of being
    /// assembled (measured: 19.5 vs 23.7 µs of server CPU per 64 KiB echo against
    /// 64 KiB; 256 KiB was slower again). Must not be zero; a size under 139 bytes is
    /// raised to 139, so that a largest control frame with its header always fits.
    pub read_buffer_size: usize,
    /// While more than this many bytes wait in a connection's send queue, the server
    /// stops reading from it, so a peer that sends without reading feels TCP
    /// backpressure instead of growing our memory. Reading resumes once the queue
    /// has drained completely (not at a lower mark: resuming at half made a streamed
    /// echo read ~0.5 MiB per pause, too little for the kernel to reopen the peer's TCP
    /// window, and the transfer stalled on zero-window probes). A drain owed
    /// ([`Handler::on_drain`](crate::Handler::on_drain)) is paid earlier, at half of
    /// this. Default: 1 MiB. Zero stops reading whenever anything is queued. At most
    /// `max_send_queue` (above it, the queue could never reach it).
    pub write_high_water: usize,
    /// A send that would take a connection's queue past this many bytes is refused
    /// ([`SendStatus::Refused`](crate::SendStatus::Refused)): the most memory one slow
    /// consumer can hold. Default: 20 MiB — above `max_message_size + write_high_water`,
    /// so an echo of a largest message is never refused, and no higher, because every
    /// byte of it is memory a peer that does not read makes us keep. At least 127
    /// bytes, a largest control frame (else not even a pong could be sent). Smaller
    /// than `max_message_size` + 14 is allowed, with a warning logged at bind: sends
    /// of the largest messages are then always refused, which suits a server that
    /// receives large messages and sends small ones, but not an echo.
    pub max_send_queue: usize,
    /// What happens when a send would take a connection's queue past
    /// `max_send_queue`: refuse the message (the default), close the connection, or
    /// drop the oldest whole messages waiting (conflation). Per connection:
    /// [`Decision::with_queue_policy`](crate::Decision::with_queue_policy). See
    /// [`QueuePolicy`](crate::QueuePolicy), and the README on sizing the caps for
    /// fan-out.
    pub queue_policy: crate::QueuePolicy,
    /// A connection whose sends stay refused (queue over `max_send_queue`) this long is
    /// closed with 1008, so a consumer that stopped reading cannot hold its queue
    /// forever. Default: 30 s. Zero (or `Duration::MAX`): never closed for it; its
    /// sends stay refused while its queue is full.
    pub send_stall_timeout: Duration,
    /// Time allowed from TCP accept to a complete upgrade request; a slowloris that
    /// sends half a request is dropped. Default: 10 s. Zero (or `Duration::MAX`): no
    /// limit, and only `max_handshakes` bounds what slow clients hold.
    pub handshake_timeout: Duration,
    /// After we send a close frame (or an HTTP refusal), time allowed for the peer to
    /// answer and close; then the TCP connection is dropped. It also bounds a graceful
    /// shutdown. Default: 5 s. Zero (or `Duration::MAX`): no close timeout, wait for
    /// the peer however long it takes; a graceful shutdown then ends only once every
    /// peer has closed (never cut short at once).
    pub close_timeout: Duration,
    /// After this much silence from the peer, send a ping (keepalive: finds dead peers
    /// and keeps NAT mappings alive). Default: 30 s. Zero (or `Duration::MAX`) turns
    /// keepalive off.
    pub idle_timeout: Duration,
    /// Time allowed for any answer to a keepalive ping; then the connection is closed
    /// with 1011. Default: 30 s. Zero (or `Duration::MAX`): an unanswered ping never
    /// closes the connection (and no new ping is sent until the peer sends something).
    pub pong_timeout: Duration,
    /// Open connections at most (in any phase); past it, new TCP connections get `503`
    /// and are closed. Default: the process's open-file limit minus 64 spare
    /// descriptors (read when the `Config` is made). Must not be zero.
    pub max_connections: usize,
    /// Connections at most that are still in the handshake; past it, new ones get `503`.
    /// Bounds the descriptors half-open or slow clients can hold (the bytes of request
    /// heads that do not arrive in one read count in `incoming_budget`, and each is
    /// dropped after `handshake_timeout`). Default: 4096 — a storm of 17,000 new
    /// connections a second, each upgrade + echo + close, filled 1024 on this machine
    /// (the clients were slower to send their requests than we were to accept them)
    /// and got 15% refused; with 4096, none. Must not be zero.
    pub max_handshakes: usize,
    /// If not empty, upgrade requests whose `Origin` is not in this list get `403`.
    /// An entry is a whole origin — scheme, host and port exactly as a browser sends
    /// them, compared case-insensitively, no wildcards, no trailing slash: a page on
    /// `http://localhost:9600` sends `http://localhost:9600`, which neither
    /// `"localhost"` nor `"http://localhost"` matches. Requests without
    /// an `Origin` come from non-browser clients and are let through: browsers always
    /// send it, and it is browsers that cross-site requests abuse. Default: empty.
    pub allowed_origins: Vec<String>,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it. Text-heavy
    /// traffic shrinks several times, for CPU on both ends. Default: off, so that
    /// CPU and memory per connection stay what the rest of this table says unless
    /// asked for.
    pub deflate: bool,
    /// Keep compression context between messages when the client allows it: better
    /// ratios, but each connection then holds its own compressor (~256 KiB at a 15-bit
    /// window) and inflater (~48 KiB) for as long as it lives. Off (the default), the
    /// server asks for no context takeover both ways, and connections share one
    /// compressor and a small pool of inflaters: no compression memory per connection.
    pub deflate_context_takeover: bool,
    /// The largest LZ77 window our compressor uses, 9–15 bits (RFC 7692 §7.1.2).
    /// Default: 15.
    pub deflate_window_bits: u8,
    /// zlib compression level, 0–9 (0 stores, uncompressed). Default: 6, zlib's own
    /// default balance.
    pub deflate_level: u32,
    /// Messages shorter than this are sent uncompressed: the savings would not pay for
    /// the CPU. Default: 128 bytes. Zero compresses every message.
    pub deflate_threshold: usize,
    /// The most bytes the whole loop holds for incoming messages that are not complete
    /// yet: fragments being assembled, inflated output of compressed messages, frames
    /// that straddle reads, and the inflaters lent to them. Without it, every
    /// connection may hold up to `max_message_size`, and a client that sends the first
    /// fragment of a message (or 15 KiB of a compressed one that inflates to 15 MiB) and
    /// then goes quiet holds that much for as long as it likes. When a connection needs
    /// more than is left, the loop first takes back buffers that idle connections kept
    /// for reuse, then closes connections whose half-received message has stalled
    /// (longest-stalled first), then the largest holder if it holds more than the one
    /// asking, each with 1013 (try again later); if that does not make room, the
    /// connection asking is closed with 1013. Default: 256 MiB — sixteen largest
    /// messages at once.
    pub incoming_budget: usize,
    /// The most bytes the whole loop holds queued for sending, over all connections; a
    /// frame broadcast to many connections is stored once and counted once. When a send
    /// would take the total past it, the connections with the largest queues (readers
    /// that stopped reading) are dropped (reported to the handler as
    /// [`CloseReason::OutgoingBudget`](crate::CloseReason::OutgoingBudget), code 1008)
    /// until it fits; the send is refused if it still does not. Per-connection queues
    /// stay capped by `max_send_queue`. Default: 256 MiB.
    pub outgoing_budget: usize,
    /// A message that is half received and gets no more of its bytes for this long is
    /// closed with 1008, so a stalled fragment cannot hold memory forever. Pings and
    /// pongs do not count as progress. Default: 30 s; zero turns it off (the incoming
    /// budget still bounds the total).
    pub message_timeout: Duration,
    /// New connections accepted per loop turn at most, so that a connect flood cannot
    /// keep the loop in `accept` while open connections wait for their reads; the rest
    /// wait in the kernel's backlog for the next turn. Default: 64.
    pub max_accepts_per_turn: usize,
    /// A handler callback, or a whole loop turn, that takes longer than this is a loop
    /// stall: every connection waited for it. It is logged as a warning naming what
    /// took the time (which callback, which connection, how long), at most once a
    /// second with a count, and counted in `Stats::loop_stalls`. The timing itself is
    /// always on (it feeds `Stats::callback_micros` and `turn_micros`). Default:
    /// 50 ms; zero turns the warnings off.
    pub stall_threshold: Duration,
    /// Commands a [`Handle`](crate::Handle) may queue before calls fail with
    /// [`HandleError::Full`](crate::HandleError::Full). Default: 65,536. Must not be
    /// zero.
    pub handle_queue_capacity: usize,
    /// Application timers ([`Ctx::set_timer`](crate::Ctx::set_timer),
    /// [`Loop::set_loop_timer`](crate::Loop::set_loop_timer)) that may be pending at
    /// once, in the whole server: past it, setting one is
    /// [`TimerError::TooMany`](crate::TimerError::TooMany). About 50 bytes each, so
    /// the default bounds them at about 6.5 MiB, even for a handler that sets a timer
    /// per client message. Default: 131,072; zero allows none.
    pub max_timers: usize,
    /// Application timers one connection may have pending at once: past it,
    /// [`TimerError::TooManyForConnection`](crate::TimerError::TooManyForConnection),
    /// so one client cannot take the whole `max_timers`. Default: 64.
    pub max_timers_per_connection: usize,
    /// Loops a [`Reactor`](crate::Reactor) runs, each a single-threaded reactor on a
    /// thread of its own, all on one address; 0 is one per available core. Default:
    /// 1. A [`Server`](crate::Server) is always one loop and ignores it.
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_message_size: 16 << 20,
            message_parts: false,
            max_streamed_message_size: 1 << 30,
            max_header_bytes: 16 << 10,
            read_buffer_size: 128 << 10,
            write_high_water: 1 << 20,
            max_send_queue: 20 << 20,
            queue_policy: crate::QueuePolicy::Refuse,
            send_stall_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            max_connections: open_file_limit().saturating_sub(64).max(16),
            max_handshakes: 4096,
            allowed_origins: Vec::new(),
            handle_queue_capacity: 1 << 16,
            max_timers: 1 << 17,
            max_timers_per_connection: 64,
            threads: 1,
            incoming_budget: 256 << 20,
            outgoing_budget: 256 << 20,
            message_timeout: Duration::from_secs(30),
            max_accepts_per_turn: 64,
            stall_threshold: Duration::from_millis(50),
            deflate: false,
            deflate_context_takeover: false,
            deflate_window_bits: 15,
            deflate_level: 6,
            deflate_threshold: 128,
        }
    }
}

impl Config {
    /// Checks for values that make no sense, naming the first one found.
    ///
    /// Refused: zero `read_buffer_size`, `max_message_size`, `max_header_bytes`,
    /// `max_connections`, `max_handshakes` or `handle_queue_capacity` (nothing could
    /// be read, every message or request would be refused, every connection would
    /// get 503, every `Handle` call `Full`); a `max_send_queue` under 127 bytes (not
    /// even a pong fits); a `write_high_water` above `max_send_queue` (the queue never
    /// gets that long, so reading would never pause and backpressure would be off);
    /// `deflate_window_bits` outside 9–15 (RFC 7692 §7.1.2) and `deflate_level`
    /// above 9 (zlib's range), also with `deflate` off, since they are mistakes
    /// waiting for it to be turned on.
    ///
    /// Every `Duration` is valid (see the field docs for what zero and
    /// `Duration::MAX` mean). A `max_send_queue` smaller than a largest message plus
    /// its frame header is allowed: only sends of such messages are refused, which
    /// suits a server that takes large messages in and sends small ones out (it is
    /// logged as a warning at bind, since for an echo it means every largest message
    /// is dropped).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            (
                "read_buffer_size",
                self.read_buffer_size,
                "the loop would have nothing to read into",
            ),
            (
                "max_message_size",
                self.max_message_size,
                "every non-empty message would be refused with 1009",
            ),
            (
                "max_header_bytes",
                self.max_header_bytes,
                "every request would be refused with 431",
            ),
            (
                "max_connections",
                self.max_connections,
                "every connection would be refused with 503",
            ),
            (
                "max_handshakes",
                self.max_handshakes,
                "every connection would be refused with 503",
            ),
            (
                "handle_queue_capacity",
                self.handle_queue_capacity,
                "every Handle call but shutdown would fail with Full",
            ),
            (
                "incoming_budget",
                self.incoming_budget,
                "every fragmented or compressed message would be refused with 1013",
            ),
            (
                "outgoing_budget",
                self.outgoing_budget,
                "every connection that falls behind would be dropped",
            ),
            (
                "max_accepts_per_turn",
                self.max_accepts_per_turn,
                "no connection would ever be accepted",
            ),
        ];
        for (field, value, why) in nonzero {
            if value == 0 {
                return Err(ConfigError::new(field, format!("must not be 0: {why}")));
            }
        }
        if self.max_send_queue < MIN_SEND_QUEUE {
            return Err(ConfigError::new(
                "max_send_queue",
                format!(
                    "{} is below {MIN_SEND_QUEUE} bytes, a largest control frame: \
                     not even a pong could be sent",
                    self.max_send_queue
                ),
            ));
        }
        if self.write_high_water > self.max_send_queue {
            return Err(ConfigError::new(
                "write_high_water",
                format!(
                    "{} is above max_send_queue ({}): the queue never gets that long, \
                     so reading would never pause for a peer that does not read",
                    self.write_high_water, self.max_send_queue
                ),
            ));
        }
        if !(9..=15).contains(&self.deflate_window_bits) {
            return Err(ConfigError::new(
                "deflate_window_bits",
                format!(
                    "{} is outside 9-15 (RFC 7692 window sizes)",
                    self.deflate_window_bits
                ),
            ));
        }
        if self.deflate_level > 9 {
            return Err(ConfigError::new(
                "deflate_level",
                format!("{} is above 9, zlib's highest level", self.deflate_level),
            ));
        }
        Ok(())
    }

    /// [`validate`](Config::validate) as the `io::Error` that `Server::bind` returns.
    pub(crate) fn check(&self) -> std::io::Result<()> {
        self.validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }

    /// Whether a frame carrying a largest message fits the send queue: if not, every
    /// send of such a message is refused (an echo server drops them all).
    pub fn largest_message_fits_send_queue(&self) -> bool {
        self.max_message_size.saturating_add(MAX_HEADER_LEN) <= self.max_send_queue
    }

    /// Logs what [`validate`](Config::validate) allows but is likely a mistake.
    pub(crate) fn log_warnings(&self) {
        if !self.largest_message_fits_send_queue() {
            log::warn!(
                "max_send_queue ({}) is smaller than max_message_size ({}) plus a frame \
                 header: sends of messages that large will always be refused",
                self.max_send_queue,
                self.max_message_size
            );
        }
    }

    pub(crate) fn deflate_policy(&self) -> DeflatePolicy {
        DeflatePolicy {
            context_takeover: self.deflate_context_takeover,
            max_window_bits: self.deflate_window_bits,
        }
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            handshake: millis(self.handshake_timeout),
            close: millis(self.close_timeout),
            idle: millis(self.idle_timeout),
            pong: millis(self.pong_timeout),
            send_stall: millis(self.send_stall_timeout),
            message: millis(self.message_timeout),
            stall: millis(self.stall_threshold),
        }
    }

    /// Whether a browser page from `origin` may open a connection (or, for a
    /// handler that applies the same rule to its HTTP endpoints, read one): any
    /// origin when `allowed_origins` is empty, and any request without `Origin`
    /// (not a browser page).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            _ if self.allowed_origins.is_empty() => true,
            None => true,
            Some(origin) => self
                .allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin)),
        }
    }
}

/// A [`Config`] value that makes no sense: which field, and why (see
/// [`Config::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: String) -> ConfigError {
        ConfigError { field, reason }
    }

    /// The name of the `Config` field at fault, e.g. `"read_buffer_size"`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why its value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// The timeouts in loop clock units; `None` is off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub handshake: Option<Millis>,
    pub close: Option<Millis>,
    pub idle: Option<Millis>,
    pub pong: Option<Millis>,
    pub send_stall: Option<Millis>,
    pub message: Option<Millis>,
    /// Not a timeout: how long a callback or turn may hold the loop before it counts
    /// as a stall.
    pub stall: Option<Millis>,
}

/// The soft limit on open files (`RLIMIT_NOFILE`), or 1024 if it cannot be read.
pub fn open_file_limit() -> usize {
    crate::sys::open_file_limit().unwrap_or(1024)
}

/// Raises the soft limit on open files to the hard limit, returning the new soft limit.
///
/// The default soft limit (often 1024) caps a server at about a thousand connections
/// though the hard limit allows far more; servers conventionally raise it at start-up.
pub fn raise_open_file_limit() -> std::io::Result<usize> {
    crate::sys::raise_open_file_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_allow_list() {
        let mut config = Config::default();
        assert!(config.origin_allowed(Some("https://evil.example")));
        config.allowed_origins = vec!["https://Good.example".into()];
        assert!(config.origin_allowed(Some("https://good.example")));
        assert!(!config.origin_allowed(Some("https://evil.example")));
        assert!(config.origin_allowed(None));
    }

    #[test]
    fn defaults_leave_room_to_echo_a_largest_message() {
        let config = Config::default();
        assert!(config.max_send_queue > config.max_message_size + config.write_high_water + 14);
        assert!(config.max_connections >= 16);
    }

    /// `config` with one change, validated: the error's field and reason.
    fn refused(change: impl FnOnce(&mut Config)) -> (String, String) {
        let mut config = Config::default();
        change(&mut config);
        let error = config.validate().expect_err("should be refused");
        assert!(error.to_string().starts_with(error.field()), "{error}");
        (error.field().to_owned(), error.reason().to_owned())
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert!(Config::default().largest_message_fits_send_queue());
    }

    #[test]
    fn zero_sizes_and_counts_are_refused() {
        type Change = fn(&mut Config);
        let cases: [(&str, Change); 9] = [
            ("read_buffer_size", |c| c.read_buffer_size = 0),
            ("max_message_size", |c| c.max_message_size = 0),
            ("max_header_bytes", |c| c.max_header_bytes = 0),
            ("max_connections", |c| c.max_connections = 0),
            ("max_handshakes", |c| c.max_handshakes = 0),
            ("handle_queue_capacity", |c| c.handle_queue_capacity = 0),
            ("incoming_budget", |c| c.incoming_budget = 0),
            ("outgoing_budget", |c| c.outgoing_budget = 0),
            ("max_accepts_per_turn", |c| c.max_accepts_per_turn = 0),
        ];
        for (field, change) in cases {
            let (got, reason) = refused(change);
            assert_eq!(got, field);
            assert!(reason.starts_with("must not be 0: "), "{reason}");
        }
        // One is enough.
        let ok = Config {
            read_buffer_size: 1,
            max_message_size: 1,
            max_header_bytes: 1,
            max_connections: 1,
            max_handshakes: 1,
            handle_queue_capacity: 1,
            ..Config::default()
        };
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn a_send_queue_too_small_for_a_pong_is_refused() {
        let (field, reason) = refused(|c| {
            c.max_send_queue = 126;
            c.write_high_water = 0;
        });
        assert_eq!(field, "max_send_queue");
        assert!(
            reason.contains("126") && reason.contains("pong"),
            "{reason}"
        );
        let smallest = Config {
            max_send_queue: 127,
            write_high_water: 127,
            ..Config::default()
        };
        assert_eq!(smallest.validate(), Ok(()));
    }

    #[test]
    fn a_high_water_mark_above_the_send_queue_is_refused() {
        let (field, reason) = refused(|c| c.write_high_water = c.max_send_queue + 1);
        assert_eq!(field, "write_high_water");
        assert!(reason.contains("above max_send_queue"), "{reason}");
        let equal = Config {
            write_high_water: 20 << 20,
            ..Config::default()
        };
        assert_eq!(equal.validate(), Ok(()));
        let zero = Config {
            write_high_water: 0,
            ..Config::default()
        };
        assert_eq!(zero.validate(), Ok(()));
    }

    #[test]
    fn deflate_settings_out_of_range_are_refused_even_with_deflate_off() {
        for bits in [0, 8, 16, 255] {
            let (field, reason) = refused(|c| c.deflate_window_bits = bits);
            assert_eq!(field, "deflate_window_bits");
            assert!(reason.starts_with(&format!("{bits} is outside 9-15")));
        }
        for level in [10, u32::MAX] {
            assert_eq!(refused(|c| c.deflate_level = level).0, "deflate_level");
        }
        for (bits, level) in [(9, 0), (15, 9)] {
            let config = Config {
                deflate: true,
                deflate_window_bits: bits,
                deflate_level: level,
                ..Config::default()
            };
            assert_eq!(config.validate(), Ok(()));
        }
    }

    #[test]
    fn every_duration_is_valid() {
        for timeout in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            let config = Config {
                send_stall_timeout: timeout,
                handshake_timeout: timeout,
                close_timeout: timeout,
                idle_timeout: timeout,
                pong_timeout: timeout,
                ..Config::default()
            };
            assert_eq!(config.validate(), Ok(()), "{timeout:?}");
        }
    }

    #[test]
    fn a_send_queue_smaller_than_a_largest_message_is_allowed_but_noted() {
        let config = Config {
            max_send_queue: 256 << 10,
            write_high_water: 128 << 10,
            ..Config::default()
        };
        assert_eq!(config.validate(), Ok(()));
        assert!(!config.largest_message_fits_send_queue());
        let exact = Config {
            max_message_size: 1000,
            max_send_queue: 1014,
            write_high_water: 1000,
            ..Config::default()
        };
        assert!(exact.largest_message_fits_send_queue());
        assert!(!Config {
            max_send_queue: 1013,
            ..exact
        }
        .largest_message_fits_send_queue());
    }

    #[test]
    fn the_error_as_io_error_is_invalid_input_and_keeps_the_message() {
        let config = Config {
            read_buffer_size: 0,
            ..Config::default()
        };
        let error = config.check().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
        assert!(
            error
                .to_string()
                .starts_with("read_buffer_size: must not be 0"),
            "{error}"
        );
    }
}
