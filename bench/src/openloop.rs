//! `loadgen --rate R`: the open-loop mode. Every connection sends R messages per second
//! on a fixed timetable, whatever the server does; replies are matched to sends in
//! order, and latency is measured from the time a message was *scheduled* to go, not
//! the time it went. A server (or a generator) that falls behind therefore shows its
//! lag in the latency of every message that waited behind it: coordinated omission
//! corrected, as wrk2 and tcpkali do it.
//!
//! Timetable: connection i sends at `start + (i / conns + k) / R` for k = 0, 1, …: the
//! connections are spread evenly over one period, so the whole generator sends at an
//! even `conns × R` per second rather than in bursts. Sends are woken by a `timerfd`
//! (nanosecond deadline, timer slack set to 1 µs), not `epoll_wait`'s millisecond
//! timeout. Several messages may be in flight on a connection; each is a whole masked
//! frame written at once (one `write` per message, as a client library would).
//!
//! What it reports (`Report::json_fields`): messages scheduled, sent, echoed,
//! `unanswered` (sent in the window, no echo by the end of the drain) and `skipped`
//! (not sent because the connection already had `max_in_flight` outstanding: the server
//! had stopped answering); latency p50 … p99.99 and max from an HDR-style histogram
//! (bounded memory, ≤ 0.4% relative error; the max exact); and the generator's own
//! lag (actual send time − scheduled time), so a run whose generator did not keep up
//! says so instead of blaming the server.
//!
//! Payloads are the binary pattern of the closed loop (an 8-byte stamp: connection id
//! and sequence number, then a fixed per-connection pattern); each echo is checked
//! against the stamp of the oldest message in flight and the pattern (or, with
//! `raw`, the masked frame exactly as sent). An echo may come as one frame or as
//! fragments.

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A log-linear histogram of nanosecond values (HDR-style): exact below 512, then 256
/// sub-buckets per power of two, so any recorded value is reported within 0.4% (the
/// bucket's upper edge), in constant memory (~12,000 counters up to 2^52 ns).
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

const SUB_BITS: u32 = 9;
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; Self::index(1 << 52) + 1],
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb + 1 - SUB_BITS; // ≥ 1: keeps the top SUB_BITS bits
        let top = v >> shift; // in [HALF, SUB)
        (SUB + (shift as u64 - 1) * HALF + (top - HALF)) as usize
    }

    /// The largest value that lands in bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = (i - SUB) / HALF + 1;
        let top = (i - SUB) % HALF + HALF;
        ((top + 1) << shift) - 1
    }

    /// Records one value (clamped to 2^52 ns, ~52 days).
    pub fn record(&mut self, ns: u64) {
        let v = ns.min(1 << 52);
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(ns);
        self.sum += u128::from(ns);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded, exact.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean, exact.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (nearest rank), as its bucket's upper edge (never above
    /// the exact max).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }

    /// `{"p50":…,"p90":…,"p99":…,"p999":…,"p9999":…,"max":…,"mean":…}` in microseconds.
    pub fn json_us(&self) -> String {
        let us = |ns: u64| ns as f64 / 1000.0;
        format!(
            "{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"p9999\":{:.1},\
             \"max\":{:.1},\"mean\":{:.1},\"count\":{}}}",
            us(self.quantile(0.5)),
            us(self.quantile(0.9)),
            us(self.quantile(0.99)),
            us(self.quantile(0.999)),
            us(self.quantile(0.9999)),
            us(self.max),
            self.mean() / 1000.0,
            self.total
        )
    }
}

/// One open connection handed over by the closed-loop set-up.
pub struct OpenConn {
    /// The connected, upgraded socket (already registered with the poll under `token`).
    pub stream: TcpStream,
    /// Its token in the poll.
    pub token: usize,
    /// The id stamped into its messages.
    pub id: u64,
    /// The whole masked frame of its message (the stamp bytes are rewritten per send).
    pub frame: Vec<u8>,
    /// Where the payload starts in `frame`.
    pub payload_at: usize,
    /// The mask key `frame` was masked with.
    pub mask: [u8; 4],
    /// The unmasked payload (the pattern; the stamp bytes are rewritten per send).
    pub payload: Vec<u8>,
}

/// The open-loop settings.
pub struct Settings {
    /// Messages per second per connection.
    pub rate: f64,
    /// The server echoes raw bytes (rawecho): expect each masked frame back verbatim.
    pub raw: bool,
    /// Give up sending on a connection with this many messages outstanding (counted as
    /// skipped), which bounds the memory a stalled server can make us hold.
    pub max_in_flight: usize,
    /// Wake for sends at most once per `tick` (zero: at each send's own time): the
    /// sends due in a tick go out together at its end, up to `tick` late (the lag is in
    /// their latency), for a fraction of the wake-ups (and of the generator's CPU).
    pub tick: Duration,
}

struct Conn {
    c: OpenConn,
    /// (sequence number, scheduled time, actual send time, in the measured window) of
    /// every message sent and not yet echoed, oldest first.
    in_flight: VecDeque<(u64, Instant, Instant, bool)>,
    seq: u64,
    /// The next scheduled send.
    next_at: Instant,
    /// Bytes not yet written (a partial write), and how far into them.
    out: Vec<u8>,
    out_at: usize,
    writable_interest: bool,
    /// Echo bytes not yet parsed (at most one frame's worth beyond what is parsed).
    rx: Vec<u8>,
    /// Payload bytes of the current echo message matched so far.
    echo_at: usize,
    /// Frames of the current echo message so far.
    echo_frames: u64,
    dead: bool,
}

/// What a run counted.
#[derive(Default)]
pub struct Counts {
    /// Send times that fell in the measured window.
    pub scheduled: u64,
    /// Of those, messages written (or queued for writing).
    pub sent: u64,
    /// Of those, echoes received and verified.
    pub received: u64,
    /// Of those, not sent: the connection had `max_in_flight` outstanding.
    pub skipped: u64,
    /// Sends made more than 1 ms after their scheduled time (the generator fell behind).
    pub late_1ms: u64,
}

/// The open-loop generator over a set of open connections.
pub struct OpenLoop {
    conns: Vec<Conn>,
    /// Poll token → index in `conns` (`usize::MAX`: none).
    slots: Vec<usize>,
    settings: Settings,
    period: Duration,
    /// The first send's time (ticks count from it).
    start: Instant,
    /// (Reverse(next send), slot): the connections by their next send.
    timetable: BinaryHeap<std::cmp::Reverse<(Instant, usize)>>,
    timer: OwnedFd,
    timer_armed_for: Option<Instant>,
    buf: Vec<u8>,
    /// Messages scheduled before this are not measured; after `window_end` none are sent.
    window_start: Option<Instant>,
    window_end: Option<Instant>,
    /// Latency of measured messages, from scheduled send to whole echo.
    pub latency: Histogram,
    /// The generator's own lag: actual send time − scheduled time (measured sends).
    pub lag: Histogram,
    /// Round trips from the actual send (not corrected: the generator's lag left out),
    /// which tells the server's share of `latency` from the generator's.
    pub rtt: Histogram,
    /// Counters over the measured window.
    pub counts: Counts,
    /// Errors (a bad echo, a closed connection), the first few described.
    pub errors: u64,
    /// The first few errors.
    pub error_samples: Vec<String>,
}

const TIMER: Token = Token(usize::MAX - 1);

impl OpenLoop {
    /// Takes over `conns` (registered with `poll` under their tokens, READABLE), and
    /// schedules the first sends from `start`.
    pub fn new(
        poll: &Poll,
        conns: Vec<OpenConn>,
        settings: Settings,
        start: Instant,
    ) -> Result<OpenLoop, String> {
        if !(settings.rate > 0.0 && settings.rate.is_finite()) {
            return Err("--rate must be positive".into());
        }
        // Wake-ups as precise as the kernel gives them: the default 50 µs of timer
        // slack would be added to every scheduled send, and so to every latency.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
        // SAFETY: timerfd_create returns a new descriptor or -1.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!("timerfd_create: {}", io::Error::last_os_error()));
        }
        // SAFETY: fd is a descriptor we just created and own.
        let timer = unsafe { OwnedFd::from_raw_fd(fd) };
        poll.registry()
            .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)
            .map_err(|e| format!("register timerfd: {e}"))?;
        let period = Duration::from_secs_f64(1.0 / settings.rate);
        let n = conns.len().max(1);
        let mut timetable = BinaryHeap::with_capacity(n);
        let conns: Vec<Conn> = conns
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let next_at = start + period.mul_f64(i as f64 / n as f64);
                timetable.push(std::cmp::Reverse((next_at, i)));
                Conn {
                    c,
                    in_flight: VecDeque::new(),
                    seq: 0,
                    next_at,
                    out: Vec::new(),
                    out_at: 0,
                    writable_interest: false,
                    rx: Vec::new(),
                    echo_at: 0,
                    echo_frames: 0,
                    dead: false,
                }
            })
            .collect();
        let mut slots = vec![usize::MAX; conns.iter().map(|c| c.c.token + 1).max().unwrap_or(0)];
        for (i, c) in conns.iter().enumerate() {
            slots[c.c.token] = i;
        }
        Ok(OpenLoop {
            conns,
            slots,
            settings,
            period,
            start,
            timetable,
            timer,
            timer_armed_for: None,
            buf: vec![0; 256 * 1024],
            window_start: None,
            window_end: None,
            latency: Histogram::new(),
            lag: Histogram::new(),
            rtt: Histogram::new(),
            counts: Counts::default(),
            errors: 0,
            error_samples: Vec::new(),
        })
    }

    /// Sends scheduled from `start` on are measured, until `end`, after which nothing
    /// more is sent.
    pub fn set_window(&mut self, start: Instant, end: Instant) {
        self.window_start = Some(start);
        self.window_end = Some(end);
    }

    /// Messages sent in the window and not yet echoed.
    pub fn outstanding_measured(&self) -> u64 {
        self.conns
            .iter()
            .filter(|c| !c.dead)
            .map(|c| c.in_flight.iter().filter(|m| m.3).count() as u64)
            .sum()
    }

    /// Connections still open.
    pub fn live(&self) -> usize {
        self.conns.iter().filter(|c| !c.dead).count()
    }

    /// The streams, for the caller's teardown (RST).
    pub fn streams(&self) -> impl Iterator<Item = &TcpStream> {
        self.conns.iter().map(|c| &c.c.stream)
    }

    fn error(&mut self, slot: usize, why: String) {
        let conn = &mut self.conns[slot];
        if conn.dead {
            return;
        }
        conn.dead = true;
        let _ = conn.c.stream.shutdown(std::net::Shutdown::Both);
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples
                .push(format!("conn {}: {why}", conn.c.id));
        }
    }

    /// Runs until `until` (sends and echoes); with `drain`, returns early once no
    /// measured message is outstanding.
    pub fn run_until(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        until: Instant,
        drain: bool,
    ) -> Result<(), String> {
        loop {
            let now = Instant::now();
            self.send_due(poll, now);
            if now >= until || (drain && self.outstanding_measured() == 0) {
                return Ok(());
            }
            let next = self
                .timetable
                .peek()
                .map(|r| r.0 .0)
                .filter(|&t| self.window_end.is_none_or(|end| t < end));
            if self.settings.tick.is_zero() {
                let wake = next.map_or(until, |t| t.min(until));
                self.arm(wake, now)?;
            } else if self.timer_armed_for.is_none() {
                // A periodic timer, armed once: re-arming it per wake-up cost the
                // generator ~15% of its CPU (hrtimer reprogramming is a VM exit here).
                self.arm_periodic(now)?;
            }
            match poll.poll(events, Some(Duration::from_millis(100))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            for event in events.iter() {
                let token = event.token();
                if token == TIMER {
                    let mut expirations = [0u8; 8];
                    // SAFETY: reads 8 bytes into our buffer from our timerfd.
                    unsafe {
                        libc::read(self.timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8)
                    };
                    if self.settings.tick.is_zero() {
                        self.timer_armed_for = None;
                    }
                    continue;
                }
                let Some(&slot) = self.slots.get(token.0).filter(|&&s| s != usize::MAX) else {
                    continue;
                };
                if event.is_writable() {
                    if let Err(why) = self.flush(poll, slot) {
                        self.error(slot, why);
                        continue;
                    }
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    if let Err(why) = self.read(slot) {
                        self.error(slot, why);
                    }
                }
                // Sends that came due while echoes were read go now, not after the
                // whole batch of events: a burst of echoes (after a server's stall)
                // would otherwise delay them by the time it takes to read them all,
                // and that lag is the generator's, not the server's.
                self.send_due(poll, Instant::now());
            }
        }
    }

    /// Arms the timer to fire every tick, from the first send's time on.
    fn arm_periodic(&mut self, now: Instant) -> Result<(), String> {
        let ts = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let first = self
            .start
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: ts(self.settings.tick),
            it_value: ts(first),
        };
        // SAFETY: arms our timerfd with a struct we own.
        let rc = unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!("timerfd_settime: {}", io::Error::last_os_error()));
        }
        self.timer_armed_for = Some(self.start);
        Ok(())
    }

    /// Arms the timer for `at` (at once if it is past).
    fn arm(&mut self, at: Instant, now: Instant) -> Result<(), String> {
        if self.timer_armed_for == Some(at) {
            return Ok(());
        }
        let d = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: arms our timerfd with a struct we own.
        let rc = unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!("timerfd_settime: {}", io::Error::last_os_error()));
        }
        self.timer_armed_for = Some(at);
        Ok(())
    }

    /// Makes every send whose time has come (several per connection if we are behind).
    fn send_due(&mut self, poll: &Poll, now: Instant) {
        while let Some(&std::cmp::Reverse((at, slot))) = self.timetable.peek() {
            if at > now || self.window_end.is_some_and(|end| at >= end) {
                return;
            }
            self.timetable.pop();
            let next = at + self.period;
            self.conns[slot].next_at = next;
            if self.conns[slot].dead {
                continue;
            }
            self.timetable.push(std::cmp::Reverse((next, slot)));
            let measured = self.window_start.is_some_and(|start| at >= start);
            if measured {
                self.counts.scheduled += 1;
            }
            if self.conns[slot].in_flight.len() >= self.settings.max_in_flight {
                if measured {
                    self.counts.skipped += 1;
                }
                continue;
            }
            if let Err(why) = self.send(poll, slot, at, measured) {
                self.error(slot, why);
                continue;
            }
            if measured {
                let sent_at = Instant::now();
                let lag = sent_at.saturating_duration_since(at);
                self.lag.record(lag.as_nanos() as u64);
                if lag > Duration::from_millis(1) {
                    self.counts.late_1ms += 1;
                }
                self.counts.sent += 1;
            }
        }
    }

    fn stamp(id: u64, seq: u64) -> [u8; 8] {
        ((id << 40) | (seq & ((1 << 40) - 1))).to_le_bytes()
    }

    fn send(
        &mut self,
        poll: &Poll,
        slot: usize,
        at: Instant,
        measured: bool,
    ) -> Result<(), String> {
        let conn = &mut self.conns[slot];
        conn.seq += 1;
        let stamp = Self::stamp(conn.c.id, conn.seq);
        let size = conn.c.frame.len() - conn.c.payload_at;
        for (i, &b) in stamp.iter().enumerate().take(size) {
            conn.c.frame[conn.c.payload_at + i] = b ^ conn.c.mask[i % 4];
        }
        conn.in_flight
            .push_back((conn.seq, at, Instant::now(), measured));
        if conn.out_at < conn.out.len() {
            // Still writing an earlier one: queue behind it.
            conn.out.extend_from_slice(&conn.c.frame);
            return Ok(());
        }
        let mut written = 0;
        while written < conn.c.frame.len() {
            match (&conn.c.stream).write(&conn.c.frame[written..]) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if written < conn.c.frame.len() {
            conn.out.clear();
            conn.out.extend_from_slice(&conn.c.frame[written..]);
            conn.out_at = 0;
            if !conn.writable_interest {
                poll.registry()
                    .reregister(
                        &mut conn.c.stream,
                        Token(conn.c.token),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| format!("reregister: {e}"))?;
                conn.writable_interest = true;
            }
        }
        Ok(())
    }

    fn flush(&mut self, poll: &Poll, slot: usize) -> Result<(), String> {
        let conn = &mut self.conns[slot];
        while conn.out_at < conn.out.len() {
            match (&conn.c.stream).write(&conn.out[conn.out_at..]) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(n) => conn.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        conn.out.clear();
        conn.out_at = 0;
        if conn.writable_interest {
            poll.registry()
                .reregister(&mut conn.c.stream, Token(conn.c.token), Interest::READABLE)
                .map_err(|e| format!("reregister: {e}"))?;
            conn.writable_interest = false;
        }
        Ok(())
    }

    /// Reads echo bytes until the socket is empty, matching whole echoes to the oldest
    /// message in flight.
    fn read(&mut self, slot: usize) -> Result<(), String> {
        loop {
            let n = match (&self.conns[slot].c.stream).read(&mut self.buf) {
                Ok(0) => return Err("server closed the connection".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let now = Instant::now();
            self.conns[slot].rx.extend_from_slice(&self.buf[..n]);
            self.parse(slot, now)?;
            if n < self.buf.len() {
                // A short read emptied the socket (edge-triggered: the next arrival is
                // a new event).
                return Ok(());
            }
        }
    }

    /// Consumes every whole frame in the connection's `rx`.
    fn parse(&mut self, slot: usize, now: Instant) -> Result<(), String> {
        let raw = self.settings.raw;
        let conn = &mut self.conns[slot];
        let mut at = 0;
        loop {
            let rest = &conn.rx[at..];
            let Some(total) = frame_len(rest) else { break };
            if total > (conn.c.frame.len() + 14) as u64 {
                return Err(format!("echo frame of {total} bytes"));
            }
            let total = total as usize;
            if rest.len() < total {
                break;
            }
            let Some(&(seq, scheduled, sent_at, measured)) = conn.in_flight.front() else {
                return Err(format!("{total} bytes with no message in flight"));
            };
            let stamp = Self::stamp(conn.c.id, seq);
            let frame = &rest[..total];
            let done = if raw {
                // The masked frame verbatim.
                let want = &conn.c.frame;
                let same = frame.len() == want.len()
                    && frame[..conn.c.payload_at] == want[..conn.c.payload_at]
                    && frame[conn.c.payload_at..]
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| {
                            let plain = if i < 8 { stamp[i] } else { conn.c.payload[i] };
                            b == plain ^ conn.c.mask[i % 4]
                        });
                if !same {
                    return Err(format!("raw echo of message {seq} differs"));
                }
                true
            } else {
                let (b0, b1) = (frame[0], frame[1]);
                if b1 & 0x80 != 0 {
                    return Err("the server masked its frame".into());
                }
                let opcode = if conn.echo_frames == 0 { 2 } else { 0 };
                if b0 & 0x70 != 0 || b0 & 0x0f != opcode {
                    return Err(format!(
                        "echo frame {} starts {b0:#04x} (want opcode {opcode:#x})",
                        conn.echo_frames
                    ));
                }
                let header = 2 + match b1 & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let payload = &frame[header..];
                let want = &conn.c.payload;
                if conn.echo_at + payload.len() > want.len() {
                    return Err(format!("echo longer than the {} bytes sent", want.len()));
                }
                for (k, &b) in payload.iter().enumerate() {
                    let i = conn.echo_at + k;
                    let plain = if i < 8 { stamp[i] } else { want[i] };
                    if b != plain {
                        return Err(format!("echo of message {seq} differs at payload byte {i}"));
                    }
                }
                conn.echo_at += payload.len();
                conn.echo_frames += 1;
                if b0 & 0x80 != 0 {
                    if conn.echo_at != want.len() {
                        return Err(format!(
                            "echo of {} bytes, sent {}",
                            conn.echo_at,
                            want.len()
                        ));
                    }
                    conn.echo_at = 0;
                    conn.echo_frames = 0;
                    true
                } else {
                    false
                }
            };
            at += total;
            if done {
                conn.in_flight.pop_front();
                if measured {
                    self.counts.received += 1;
                    self.latency
                        .record(now.saturating_duration_since(scheduled).as_nanos() as u64);
                    self.rtt
                        .record(now.saturating_duration_since(sent_at).as_nanos() as u64);
                }
            }
        }
        conn.rx.drain(..at);
        Ok(())
    }

    /// The open-loop fields of the result line (a leading comma): the rate, the counts,
    /// latency from the scheduled send, and the generator's own lag.
    pub fn json_fields(&self, seconds: f64) -> String {
        let c = &self.counts;
        let unanswered = c.sent - c.received.min(c.sent);
        let kept_up = c.late_1ms == 0 && c.skipped == 0;
        format!(
            ",\"rate_per_conn\":{:.1},\"target_msgs_per_sec\":{:.1},\"scheduled\":{},\
             \"sent\":{},\"received\":{},\"unanswered\":{unanswered},\"skipped\":{},\
             \"missed\":{},\"latency_us\":{},\"rtt_from_actual_send_us\":{},\"gen_lag_us\":{},\
             \"gen_late_1ms\":{},\
             \"gen_kept_up\":{kept_up},\"seconds_window\":{seconds:.3}",
            self.settings.rate,
            self.settings.rate * self.conns.len() as f64,
            c.scheduled,
            c.sent,
            c.received,
            c.skipped,
            unanswered + c.skipped,
            self.latency.json_us(),
            self.rtt.json_us(),
            self.lag.json_us(),
            c.late_1ms,
        )
    }
}

/// The length of the frame at the front of `buf` (header and mask key included), once
/// its header is in.
pub fn frame_len(buf: &[u8]) -> Option<u64> {
    let b1 = *buf.get(1)?;
    let (ext, len) = match b1 & 0x7f {
        126 => (
            2,
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        ),
        127 => (8, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (0, u64::from(n)),
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    Some(2 + ext + mask + len)
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn histogram_buckets_round_trip_within_half_a_percent() {
        for v in [
            0u64,
            1,
            511,
            512,
            513,
            1000,
            65_535,
            1_000_000,
            123_456_789,
            1 << 40,
        ] {
            let i = Histogram::index(v);
            let upper = Histogram::upper(i);
            assert!(upper >= v, "{v}: upper {upper}");
            assert!(
                (upper - v) as f64 <= v as f64 * 0.004 + 1.0,
                "{v}: upper {upper}"
            );
            assert_eq!(Histogram::index(upper), i, "{v}");
        }
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.005, "{p50}");
        let p9999 = h.quantile(0.9999) as f64;
        assert!((p9999 - 9_999_000.0).abs() / 9_999_000.0 < 0.005, "{p9999}");
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.quantile(1.0), 10_000_000);
    }
}
