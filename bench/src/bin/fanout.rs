//! `fanout`: the load generator of workload (f) of `make bench` (single thread, `mio`):
//! one publisher and N subscribers on one topic of a publish/subscribe server, and one
//! line of JSON with deliveries per second, the server's CPU per delivery, the
//! publish→deliver latency and how many messages the subscribers missed.
//!
//! Every connection (N subscribers first, then the publisher) upgrades to `--path`
//! (`/topic/bench`; the hand-written handshake of `loadgen`, the 101 and
//! `Sec-WebSocket-Accept` checked). The publisher sends masked binary messages of
//! `--size` bytes (100): a sequence number (8 bytes, little-endian, from 1) and the send
//! time (8 bytes, nanoseconds since this process's start: publisher and subscribers
//! share the clock), then filler. A subscriber checks each frame (FIN, binary,
//! unmasked, the size sent) and its sequence number: a jump forward is a gap (messages
//! it missed: a lagging tokio broadcast receiver skips, a full wsreactor queue drops),
//! a step back or repeat is an error. The publisher is subscribed too (the endpoint
//! sends a publisher its own messages); it reads and checks its copies, which are
//! reported apart and not counted as deliveries.
//!
//! Flow control, so that no queue grows without bound: a closed loop with a window.
//! The publisher keeps at most `--window` messages (16) not yet delivered to every
//! live subscriber (delivered, or skipped by a gap: a subscriber that got seq 9 after
//! seq 7 is done with 8); when the oldest completes, the next goes out. A fixed rate
//! can be asked for as well (`--rate`, messages per second, still within the window).
//! So the server is never asked to buffer more than `window` messages per subscriber,
//! the broadcast channels of the peers (1024) never overflow, and what is measured is
//! the delivery rate the server sustains, and what each delivery costs it. The window
//! lets several messages be pending per subscriber at once, so a server that writes
//! them in one write per subscriber can; latency is then about `window` messages'
//! worth of fan-out (Little's law), i.e. it measures the closed loop, not an idle
//! server's best case. If the oldest message does not complete within `--stall` (10 s),
//! it is counted as an error and given up on (the window moves on).
//!
//! After `--warmup` it measures for `--seconds`: deliveries (summed over subscribers)
//! that arrived in the window, their latencies, and with `--server-pid` the server's
//! CPU time (utime + stime from `/proc/PID/stat`) at the window's two edges. Then it
//! stops publishing, waits up to `--drain` (1 s) for the last messages, counts what
//! never arrived, and closes every connection with RST. Every phase is bounded in time.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wsreactor_bench::{
    check_upgrade_response, client_header, client_key, head_end, json_string, procfs,
    push_client_frame, set_linger_zero, upgrade_request, Args, Opcode, Rng,
};

const USAGE: &str = "\
fanout: publish/subscribe fan-out load generator (prints one JSON line)

  --addr HOST:PORT        server address (127.0.0.0/8 only)   [127.0.0.1:9998]
  --path PATH             request path of every connection    [/topic/bench]
  --subscribers N         subscriber connections              [1000]
  --size BYTES            payload bytes per message (>= 16)   [100]
  --window N              messages not yet delivered to every subscriber, at most [16]
  --rate R                publish at most R messages/s (0: as the window allows) [0]
  --seconds S             measured time                       [5]
  --warmup S              publishing before measuring         [1]
  --drain S               after publishing: wait for the last deliveries [1]
  --stall S               give up on a message not delivered everywhere after S [10]
  --server-pid PID        read the server's CPU time from /proc
  --ramp N                at most N handshakes in flight       [100]
  --connect-timeout S     give up connecting after S           [60]
";

const READ_BUF: usize = 64 * 1024;
/// Latency samples kept at most (4 bytes each).
const MAX_SAMPLES: usize = 50_000_000;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Phase {
    Connecting,
    Handshake,
    Open,
    Dead,
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    key: String,
    request: Vec<u8>,
    request_written: usize,
    head: Vec<u8>,
    /// The start of a frame a read cut short.
    carry: Vec<u8>,
    /// The last sequence number received (0: none yet).
    last_seq: u64,
    delivered: u64,
    missed: u64,
}

/// The publisher's side of the window, and everything counted.
struct Gen {
    poll: Poll,
    conns: Vec<Conn>,
    /// Index of the publisher in `conns` (the last).
    publisher: usize,
    buf: Vec<u8>,
    epoch: Instant,
    size: usize,
    mask: [u8; 4],
    filler: Vec<u8>,
    /// Masked frames not yet written to the publisher's socket.
    out: Vec<u8>,
    out_written: usize,
    out_writable_interest: bool,
    win: Window,
    /// When the window's frontier last moved (for `--stall`).
    frontier_moved: Instant,
    /// Subscribers open and not failed.
    live: u32,
    opened: usize,
    in_handshake: usize,
    stopping: bool,
    measuring: bool,
    // Counts over the measured window.
    m_deliveries: u64,
    m_published: u64,
    samples_us: Vec<u32>,
    // Counts over the whole run.
    publisher_copies: u64,
    given_up: u64,
    errors: u64,
    error_samples: Vec<String>,
}

impl Gen {
    fn error(&mut self, why: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(why);
        }
    }

    fn connect(
        &mut self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        rng: &mut Rng,
    ) -> io::Result<()> {
        let slot = self.conns.len();
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let key = client_key(rng);
        self.conns.push(Conn {
            stream,
            phase: Phase::Connecting,
            request: upgrade_request(host, path, &key),
            key,
            request_written: 0,
            head: Vec::new(),
            carry: Vec::new(),
            last_seq: 0,
            delivered: 0,
            missed: 0,
        });
        self.in_handshake += 1;
        Ok(())
    }

    fn fail(&mut self, slot: usize, why: String) {
        let conn = &mut self.conns[slot];
        let was = conn.phase;
        if was == Phase::Dead {
            return;
        }
        conn.phase = Phase::Dead;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        match was {
            Phase::Connecting | Phase::Handshake => self.in_handshake -= 1,
            Phase::Open if slot != self.publisher => {
                self.live -= 1;
                if self.win.left(self.conns[slot].last_seq) {
                    self.frontier_moved = Instant::now();
                }
            }
            _ => {}
        }
        if !self.stopping {
            let role = if slot == self.publisher {
                "publisher"
            } else {
                "subscriber"
            };
            self.error(format!("{role} {slot}: {why}"));
        }
    }

    fn event(&mut self, slot: usize, readable: bool, writable: bool) {
        if let Err(why) = self.event_inner(slot, readable, writable) {
            self.fail(slot, why);
        }
    }

    fn event_inner(&mut self, slot: usize, readable: bool, writable: bool) -> Result<(), String> {
        match self.conns[slot].phase {
            Phase::Dead => Ok(()),
            Phase::Connecting => {
                let conn = &mut self.conns[slot];
                if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
                    return Err(format!("connect: {e}"));
                }
                match conn.stream.peer_addr() {
                    Ok(_) => {
                        conn.phase = Phase::Handshake;
                        self.event_inner(slot, true, true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                    Err(e) => Err(format!("connect: {e}")),
                }
            }
            Phase::Handshake => self.handshake(slot),
            Phase::Open => {
                if writable && slot == self.publisher {
                    self.flush_out()?;
                }
                if readable {
                    self.readable(slot)?;
                }
                Ok(())
            }
        }
    }

    fn handshake(&mut self, slot: usize) -> Result<(), String> {
        let conn = &mut self.conns[slot];
        while conn.request_written < conn.request.len() {
            match (&conn.stream).write(&conn.request[conn.request_written..]) {
                Ok(n) => conn.request_written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("writing the upgrade request: {e}")),
            }
        }
        loop {
            match (&conn.stream).read(&mut self.buf) {
                Ok(0) => return Err("EOF during the handshake".into()),
                Ok(n) => conn.head.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading the 101: {e}")),
            }
            if conn.head.len() > 64 * 1024 {
                return Err("response head over 64 KiB".into());
            }
        }
        let Some(end) = head_end(&conn.head) else {
            return Ok(());
        };
        check_upgrade_response(&conn.head[..end], &conn.key)?;
        // Anything after the head is already a message: keep it.
        conn.carry = conn.head[end..].to_vec();
        conn.head = Vec::new();
        conn.request = Vec::new();
        conn.key = String::new();
        conn.phase = Phase::Open;
        self.poll
            .registry()
            .reregister(&mut conn.stream, Token(slot), Interest::READABLE)
            .map_err(|e| format!("reregister: {e}"))?;
        self.opened += 1;
        self.in_handshake -= 1;
        if slot != self.publisher {
            self.live += 1;
        }
        if !self.conns[slot].carry.is_empty() {
            let mut carry = std::mem::take(&mut self.conns[slot].carry);
            let used = self.frames(slot, &carry, Instant::now())?;
            carry.drain(..used);
            self.conns[slot].carry = carry;
        }
        Ok(())
    }

    /// Reads what arrived and handles every whole frame in it.
    fn readable(&mut self, slot: usize) -> Result<(), String> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| loop {
            let n = match (&self.conns[slot].stream).read(&mut buf) {
                Ok(0) if self.stopping => return Ok(()),
                Ok(0) => return Err("the server closed the connection".to_owned()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if self.stopping => return Ok(()),
                Err(e) => return Err(format!("read: {e}")),
            };
            let now = Instant::now();
            let mut carry = std::mem::take(&mut self.conns[slot].carry);
            if carry.is_empty() {
                let used = self.frames(slot, &buf[..n], now)?;
                carry.extend_from_slice(&buf[used..n]);
            } else {
                carry.extend_from_slice(&buf[..n]);
                let used = self.frames(slot, &carry, now)?;
                carry.drain(..used);
            }
            self.conns[slot].carry = carry;
            // A read that did not fill the buffer emptied the socket: Linux signals the
            // next arrival as a new edge, so the read that would only say WouldBlock is
            // skipped (as loadgen does).
            if n < buf.len() {
                return Ok(());
            }
        })();
        self.buf = buf;
        result
    }

    /// Handles the whole frames at the front of `data`; returns the bytes they took.
    fn frames(&mut self, slot: usize, data: &[u8], now: Instant) -> Result<usize, String> {
        let now_ns = now.duration_since(self.epoch).as_nanos() as u64;
        let mut at = 0;
        while data.len() - at >= 2 {
            let (b0, b1) = (data[at], data[at + 1]);
            let (ext, len) = match b1 & 0x7f {
                126 if data.len() - at >= 4 => {
                    (2, u16::from_be_bytes([data[at + 2], data[at + 3]]) as u64)
                }
                127 if data.len() - at >= 10 => (
                    8,
                    u64::from_be_bytes(data[at + 2..at + 10].try_into().expect("8 bytes")),
                ),
                126 | 127 => break,
                n => (0, u64::from(n)),
            };
            if b1 & 0x80 != 0 {
                return Err("the server masked a frame".into());
            }
            if len > 1 << 20 {
                return Err(format!("a frame of {len} bytes"));
            }
            let total = 2 + ext + len as usize;
            if data.len() - at < total {
                break;
            }
            let payload = &data[at + 2 + ext..at + total];
            match b0 {
                0x82 => self.message(slot, payload, now_ns)?,
                0x88 => {
                    let code = payload
                        .get(..2)
                        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(format!("the server closed with code {code}"));
                }
                0x89 | 0x8a => {} // ping, pong: not expected, not answered
                other => return Err(format!("a frame with first byte {other:#04x}")),
            }
            at += total;
        }
        Ok(at)
    }

    /// One message delivered to `slot`.
    fn message(&mut self, slot: usize, payload: &[u8], now_ns: u64) -> Result<(), String> {
        if payload.len() != self.size {
            return Err(format!(
                "a message of {} bytes, {} sent",
                payload.len(),
                self.size
            ));
        }
        let seq = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
        let sent_ns = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
        if seq == 0 || seq > self.win.published {
            return Err(format!(
                "sequence number {seq}, {} sent",
                self.win.published
            ));
        }
        let conn = &mut self.conns[slot];
        let last = conn.last_seq;
        if seq <= last {
            return Err(format!("seq {seq} after {last}"));
        }
        if last != 0 && seq > last + 1 {
            conn.missed += seq - last - 1;
        }
        conn.last_seq = seq;
        conn.delivered += 1;
        if slot == self.publisher {
            self.publisher_copies += 1;
            return Ok(());
        }
        if self.measuring {
            self.m_deliveries += 1;
            if self.samples_us.len() < MAX_SAMPLES {
                let us = now_ns.saturating_sub(sent_ns) / 1000;
                self.samples_us.push(us.min(u64::from(u32::MAX)) as u32);
            }
        }
        if self.win.delivered(last, seq) {
            self.frontier_moved = Instant::now();
        }
        Ok(())
    }

    /// Gives up on the oldest message if it has waited longer than `stall`.
    fn check_stall(&mut self, stall: Duration) {
        if self.win.outstanding() > 0 && self.frontier_moved.elapsed() > stall {
            let (seq, seen, need) = self.win.give_up();
            self.given_up += 1;
            self.error(format!(
                "message {seq} reached {seen} of {need} subscribers within {stall:?}; given up"
            ));
            self.frontier_moved = Instant::now();
        }
    }

    /// Publishes as many messages as the window (and `due`, the rate's allowance)
    /// allows, in one write.
    fn publish(&mut self, due: &mut u64) -> Result<(), String> {
        if self.stopping || self.conns[self.publisher].phase != Phase::Open {
            return Ok(());
        }
        let before = self.win.published;
        while self.win.has_room() && *due > 0 {
            *due -= 1;
            let seq = self.win.publish(self.live);
            let sent_ns = self.epoch.elapsed().as_nanos() as u64;
            let mut payload = std::mem::take(&mut self.filler);
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            payload[8..16].copy_from_slice(&sent_ns.to_le_bytes());
            let header = client_header(true, 0, Opcode::Binary, payload.len(), self.mask);
            push_client_frame(&mut self.out, &header, &payload);
            self.filler = payload;
            if self.measuring {
                self.m_published += 1;
            }
        }
        if self.win.published != before {
            self.flush_out()?;
        }
        Ok(())
    }

    fn flush_out(&mut self) -> Result<(), String> {
        let slot = self.publisher;
        let conn = &mut self.conns[slot];
        while self.out_written < self.out.len() {
            match (&conn.stream).write(&self.out[self.out_written..]) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(n) => self.out_written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.out_writable_interest {
                        self.poll
                            .registry()
                            .reregister(
                                &mut conn.stream,
                                Token(slot),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .map_err(|e| format!("reregister: {e}"))?;
                        self.out_writable_interest = true;
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        self.out.clear();
        self.out_written = 0;
        if self.out_writable_interest {
            self.poll
                .registry()
                .reregister(&mut conn.stream, Token(slot), Interest::READABLE)
                .map_err(|e| format!("reregister: {e}"))?;
            self.out_writable_interest = false;
        }
        Ok(())
    }
}

/// The publisher's window: which messages every subscriber is done with (delivered,
/// or skipped by a gap), so that at most `size` are outstanding.
struct Window {
    size: u64,
    /// Messages published (the last sequence number sent).
    published: u64,
    /// Every sequence number up to this one was delivered to (or skipped by) every
    /// subscriber that was live when it was sent.
    frontier: u64,
    /// Per sequence number past the frontier (`seq % ring`): subscribers done with it,
    /// and how many must be. A subscriber's next message is never more than `size`
    /// past the frontier (nothing past `published` exists), so a ring over `size`
    /// never wraps onto a live slot.
    seen: Vec<u32>,
    need: Vec<u32>,
}

impl Window {
    fn new(size: u64) -> Window {
        let ring = (size as usize + 1).next_power_of_two() * 2;
        Window {
            size,
            published: 0,
            frontier: 0,
            seen: vec![0; ring],
            need: vec![0; ring],
        }
    }

    fn slot(&self, seq: u64) -> usize {
        (seq % self.seen.len() as u64) as usize
    }

    fn outstanding(&self) -> u64 {
        self.published - self.frontier
    }

    fn has_room(&self) -> bool {
        self.outstanding() < self.size
    }

    /// Takes the next sequence number, to be done by `live` subscribers.
    fn publish(&mut self, live: u32) -> u64 {
        debug_assert!(self.has_room());
        self.published += 1;
        let at = self.slot(self.published);
        self.seen[at] = 0;
        self.need[at] = live;
        self.published
    }

    /// A subscriber whose last message was `last` (0: none) got `seq`: it is done with
    /// everything up to `seq`. Whether the frontier moved.
    fn delivered(&mut self, last: u64, seq: u64) -> bool {
        for s in last.max(self.frontier) + 1..=seq.min(self.published) {
            let at = self.slot(s);
            self.seen[at] += 1;
        }
        self.advance()
    }

    /// A subscriber whose last message was `last` is gone: no message it had not got
    /// waits for it (later ones were never counted on it: `live` drops).
    fn left(&mut self, last: u64) -> bool {
        self.delivered(last, self.published)
    }

    /// Treats the oldest outstanding message as done; returns it, and how many of how
    /// many subscribers had it.
    fn give_up(&mut self) -> (u64, u32, u32) {
        let seq = self.frontier + 1;
        let at = self.slot(seq);
        let got = (seq, self.seen[at], self.need[at]);
        self.seen[at] = 0;
        self.frontier = seq;
        self.advance();
        got
    }

    fn advance(&mut self) -> bool {
        let before = self.frontier;
        while self.frontier < self.published {
            let at = self.slot(self.frontier + 1);
            if self.seen[at] < self.need[at] {
                break;
            }
            self.seen[at] = 0;
            self.frontier += 1;
        }
        self.frontier != before
    }
}

struct Options {
    addr: SocketAddr,
    host: String,
    path: String,
    subscribers: usize,
    size: usize,
    window: u64,
    rate: f64,
    seconds: Duration,
    warmup: Duration,
    drain: Duration,
    stall: Duration,
    server_pid: Option<u32>,
    ramp: usize,
    connect_timeout: Duration,
}

fn options() -> Result<Options, String> {
    let args = Args::parse(&["--help"])?;
    if args.has("--help") {
        print!("{USAGE}");
        std::process::exit(0);
    }
    args.only(&[
        "--addr",
        "--path",
        "--subscribers",
        "--size",
        "--window",
        "--rate",
        "--seconds",
        "--warmup",
        "--drain",
        "--stall",
        "--server-pid",
        "--ramp",
        "--connect-timeout",
    ])?;
    let host: String = args.get("--addr", "127.0.0.1:9998".to_owned())?;
    let addr: SocketAddr = host
        .parse()
        .map_err(|_| format!("--addr: not an address: {host}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("--addr: {addr} is not a loopback address"));
    }
    let pid: u32 = args.get("--server-pid", 0)?;
    let options = Options {
        addr,
        host,
        path: args.get("--path", "/topic/bench".to_owned())?,
        subscribers: args.get("--subscribers", 1000)?,
        size: args.get("--size", 100)?,
        window: args.get("--window", 16)?,
        rate: args.get("--rate", 0.0)?,
        seconds: args.seconds("--seconds", 5.0)?,
        warmup: args.seconds("--warmup", 1.0)?,
        drain: args.seconds("--drain", 1.0)?,
        stall: args.seconds("--stall", 10.0)?,
        server_pid: (pid != 0).then_some(pid),
        ramp: args.get("--ramp", 100)?,
        connect_timeout: args.seconds("--connect-timeout", 60.0)?,
    };
    if options.subscribers == 0 || options.ramp == 0 {
        return Err("--subscribers and --ramp must be positive".into());
    }
    if !(16..=1 << 20).contains(&options.size) {
        return Err("--size must be 16..=1 MiB (sequence number and time stamp)".into());
    }
    if !(1..=1 << 16).contains(&options.window) {
        return Err("--window must be 1..=65536".into());
    }
    if !(options.rate >= 0.0 && options.rate.is_finite()) {
        return Err("--rate must be a number >= 0".into());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("fanout: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(3),
        Err(e) => {
            eprintln!("fanout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn poll_once(gen: &mut Gen, events: &mut Events, timeout: Duration) -> Result<(), String> {
    match gen.poll.poll(events, Some(timeout)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
        Err(e) => return Err(format!("poll: {e}")),
    }
    for event in events.iter() {
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed();
        gen.event(event.token().0, readable, writable);
    }
    Ok(())
}

/// Opens the subscribers (at most `ramp` handshakes at a time), then the publisher.
fn connect_all(gen: &mut Gen, options: &Options, events: &mut Events) -> Result<(), String> {
    let mut rng = Rng::from_time(options.subscribers as u64);
    let deadline = Instant::now() + options.connect_timeout;
    let total = options.subscribers + 1;
    loop {
        // The publisher only once every subscriber is open (or dead).
        let subs_settled = gen.conns.len() >= options.subscribers && gen.in_handshake == 0;
        while gen.conns.len() < total
            && gen.in_handshake < options.ramp
            && (gen.conns.len() < options.subscribers || subs_settled)
        {
            gen.connect(options.addr, &options.host, &options.path, &mut rng)
                .map_err(|e| format!("connect to {}: {e}", options.addr))?;
        }
        if gen.conns.len() == total && gen.in_handshake == 0 {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let why = format!(
                "only {} of {total} connections opened within {:?}",
                gen.opened, options.connect_timeout
            );
            gen.error(why);
            return Ok(());
        }
        poll_once(gen, events, (deadline - now).min(Duration::from_millis(50)))?;
    }
}

/// Publishes and delivers until `until` (or, with `drain`, until everything sent has
/// arrived).
fn run_until(
    gen: &mut Gen,
    events: &mut Events,
    options: &Options,
    pace: &mut Pace,
    until: Instant,
    drain: bool,
) -> Result<(), String> {
    loop {
        let now = Instant::now();
        if now >= until || (drain && gen.win.outstanding() == 0) {
            return Ok(());
        }
        let mut due = pace.due(now);
        gen.publish(&mut due)?;
        pace.unused(due);
        gen.check_stall(options.stall);
        let wait = pace
            .wait(now)
            .min(until - now)
            .min(Duration::from_millis(50));
        poll_once(gen, events, wait)?;
    }
}

/// The publishing rate's allowance (`--rate`; unlimited when 0).
struct Pace {
    rate: f64,
    start: Instant,
    /// Messages allowed so far.
    allowed: u64,
    stopped: bool,
}

impl Pace {
    fn due(&mut self, now: Instant) -> u64 {
        if self.stopped {
            return 0;
        }
        if self.rate == 0.0 {
            return u64::MAX;
        }
        let total = (now.duration_since(self.start).as_secs_f64() * self.rate) as u64;
        let due = total.saturating_sub(self.allowed);
        self.allowed = total;
        // At most a window's worth is carried over (no burst after a stall).
        due.min(1 << 16)
    }

    /// What `due` allowed but the window did not take: kept for the next turn, up
    /// to a bound (the window's own).
    fn unused(&mut self, due: u64) {
        if self.rate != 0.0 && !self.stopped {
            self.allowed -= due.min(64);
        }
    }

    fn wait(&self, now: Instant) -> Duration {
        if self.rate == 0.0 || self.stopped {
            return Duration::from_millis(50);
        }
        let next = self.start + Duration::from_secs_f64((self.allowed + 1) as f64 / self.rate);
        next.saturating_duration_since(now)
    }
}

fn diff(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    Some(b?.checked_sub(a?)? as f64)
}

fn opt(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "null".into(),
    }
}

fn percentile(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(f64::from(sorted[rank.clamp(1, sorted.len()) - 1]))
}

fn run(options: &Options) -> Result<u64, String> {
    let limit = procfs::raise_nofile_limit();
    if (options.subscribers as u64) + 40 > limit {
        return Err(format!(
            "{} subscribers need more file descriptors than RLIMIT_NOFILE allows ({limit})",
            options.subscribers
        ));
    }
    let mut rng = Rng::from_time(7);
    let mut gen = Gen {
        poll: Poll::new().map_err(|e| format!("poll: {e}"))?,
        conns: Vec::with_capacity(options.subscribers + 1),
        publisher: options.subscribers,
        buf: vec![0; READ_BUF],
        epoch: Instant::now(),
        size: options.size,
        mask: rng.mask_key(),
        filler: (0..options.size).map(|i| b'a' + (i % 26) as u8).collect(),
        out: Vec::new(),
        out_written: 0,
        out_writable_interest: false,
        win: Window::new(options.window),
        frontier_moved: Instant::now(),
        live: 0,
        opened: 0,
        in_handshake: 0,
        stopping: false,
        measuring: false,
        m_deliveries: 0,
        m_published: 0,
        samples_us: Vec::new(),
        publisher_copies: 0,
        given_up: 0,
        errors: 0,
        error_samples: Vec::new(),
    };
    let mut events = Events::with_capacity(4096);
    let connect_start = Instant::now();
    connect_all(&mut gen, options, &mut events)?;
    let open_secs = connect_start.elapsed().as_secs_f64();
    let subs_open = gen.live;
    let mut pace = Pace {
        rate: options.rate,
        start: Instant::now(),
        allowed: 0,
        stopped: false,
    };
    if gen.conns[gen.publisher].phase == Phase::Open && subs_open > 0 {
        // Let the server finish whatever it does after the last 101.
        let settle = Instant::now() + Duration::from_millis(100);
        while Instant::now() < settle {
            poll_once(&mut gen, &mut events, Duration::from_millis(20))?;
        }
        gen.frontier_moved = Instant::now();
        pace.start = Instant::now();
        let t = Instant::now() + options.warmup;
        run_until(&mut gen, &mut events, options, &mut pace, t, false)?;
    } else if gen.errors == 0 {
        gen.error("nothing to measure: the publisher or every subscriber failed".into());
    }
    let expected = (options.subscribers as f64 * options.seconds.as_secs_f64() * 2000.0) as usize;
    gen.samples_us.reserve(expected.min(MAX_SAMPLES / 4));
    let server0 = options.server_pid.and_then(procfs::cpu_us);
    let server_delay0 = options.server_pid.and_then(procfs::run_delay_ns);
    let client0 = procfs::self_cpu_us();
    let client_delay0 = procfs::run_delay_ns(0);
    let t0 = Instant::now();
    gen.measuring = true;
    if gen.conns[gen.publisher].phase == Phase::Open && subs_open > 0 {
        run_until(
            &mut gen,
            &mut events,
            options,
            &mut pace,
            t0 + options.seconds,
            false,
        )?;
    }
    gen.measuring = false;
    let elapsed = t0.elapsed().as_secs_f64();
    let server1 = options.server_pid.and_then(procfs::cpu_us);
    let server_delay1 = options.server_pid.and_then(procfs::run_delay_ns);
    let client1 = procfs::self_cpu_us();
    let client_delay1 = procfs::run_delay_ns(0);
    // Stop publishing; let the last messages arrive.
    pace.stopped = true;
    let drain_until = Instant::now() + options.drain;
    run_until(&mut gen, &mut events, options, &mut pace, drain_until, true)?;
    gen.stopping = true;

    let subs = &gen.conns[..gen.publisher];
    let missed: u64 = subs.iter().map(|c| c.missed).sum();
    let subs_with_gaps = subs.iter().filter(|c| c.missed > 0).count();
    let open_subs: Vec<&Conn> = subs.iter().filter(|c| c.phase == Phase::Open).collect();
    let silent = open_subs.iter().filter(|c| c.delivered == 0).count();
    let undelivered: u64 = open_subs
        .iter()
        .filter(|c| c.last_seq > 0)
        .map(|c| gen.win.published - c.last_seq)
        .sum();
    let dead_subs = subs.iter().filter(|c| c.phase == Phase::Dead).count();
    let publisher_missed = gen.conns[gen.publisher].missed;

    gen.samples_us.sort_unstable();
    let samples = &gen.samples_us;
    let deliveries = gen.m_deliveries as f64;
    let server_cpu_us = diff(server0, server1);
    let per_delivery = server_cpu_us
        .filter(|_| deliveries > 0.0)
        .map(|us| us / deliveries);
    let per_cpu_sec = server_cpu_us
        .filter(|&us| us > 0.0)
        .map(|us| deliveries / (us / 1e6));
    let server_wait = diff(server_delay0, server_delay1).map(|ns| ns / 1e9 / elapsed);
    let client_wait = diff(client_delay0, client_delay1).map(|ns| ns / 1e9 / elapsed);
    let mean = (!samples.is_empty())
        .then(|| samples.iter().map(|&v| u64::from(v)).sum::<u64>() as f64 / samples.len() as f64);
    let samples_json: Vec<String> = gen.error_samples.iter().map(|s| json_string(s)).collect();
    // `msgs_per_sec`, `rtt_us` and `server_cpu_us_per_msg` repeat deliveries/s, the
    // latency and CPU per delivery under the names bench/run.py summarizes.
    let latency = format!(
        "{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{},\"mean\":{}}}",
        opt(percentile(samples, 0.50)),
        opt(percentile(samples, 0.90)),
        opt(percentile(samples, 0.99)),
        opt(percentile(samples, 0.999)),
        opt(samples.last().map(|&v| f64::from(v))),
        opt(mean),
    );
    let line = format!(
        "{{\"mode\":\"fanout\",\"path\":{},\"subscribers\":{},\"subscribers_open\":{subs_open},\
         \"size\":{},\"window\":{},\"rate\":{},\"open_secs\":{open_secs:.3},\"seconds\":{elapsed:.3},\
         \"published\":{},\"publish_per_sec\":{:.1},\"deliveries\":{},\"deliveries_per_sec\":{:.1},\
         \"msgs_per_sec\":{:.1},\"latency_us\":{latency},\"rtt_us\":{latency},\
         \"server_cpu_us\":{},\"server_cpu_us_per_delivery\":{},\"server_cpu_us_per_msg\":{},\
         \"deliveries_per_server_cpu_sec\":{},\"msgs_per_server_cpu_sec\":{},\
         \"server_cpu_util\":{},\"client_cpu_util\":{:.3},\"server_run_wait\":{},\"client_run_wait\":{},\
         \"published_total\":{},\"missed\":{missed},\"subscribers_with_gaps\":{subs_with_gaps},\
         \"undelivered_at_end\":{undelivered},\"silent_subscribers\":{silent},\
         \"subscribers_lost\":{dead_subs},\"publisher_copies\":{},\"publisher_missed\":{publisher_missed},\
         \"given_up\":{},\"errors\":{},\"error_samples\":[{}]}}",
        json_string(&options.path),
        options.subscribers,
        options.size,
        options.window,
        options.rate,
        gen.m_published,
        gen.m_published as f64 / elapsed,
        gen.m_deliveries,
        deliveries / elapsed,
        deliveries / elapsed,
        opt(server_cpu_us),
        opt(per_delivery),
        opt(per_delivery),
        opt(per_cpu_sec),
        opt(per_cpu_sec),
        opt(server_cpu_us.map(|us| us / 1e6 / elapsed)),
        (client1 - client0) as f64 / 1e6 / elapsed,
        opt(server_wait),
        opt(client_wait),
        gen.win.published,
        gen.publisher_copies,
        gen.given_up,
        gen.errors,
        samples_json.join(","),
    );
    // Tear down with RST (SO_LINGER 0): no TIME_WAIT pile-up over many runs.
    for conn in &gen.conns {
        set_linger_zero(&conn.stream);
    }
    let errors = gen.errors;
    drop(gen);
    println!("{line}");
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::Window;

    #[test]
    fn the_window_opens_when_every_subscriber_is_done() {
        let mut w = Window::new(2);
        assert_eq!(w.publish(2), 1);
        assert_eq!(w.publish(2), 2);
        assert!(!w.has_room());
        // Subscriber A gets 1 and 2; B gets 1: only 1 is done.
        assert!(!w.delivered(0, 1));
        assert!(!w.delivered(1, 2));
        assert!(w.delivered(0, 1));
        assert_eq!((w.frontier, w.outstanding()), (1, 1));
        assert!(w.has_room());
        assert!(w.delivered(1, 2));
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn a_gap_counts_as_done_and_a_subscriber_that_leaves_is_not_waited_for() {
        let mut w = Window::new(4);
        for _ in 0..3 {
            w.publish(2);
        }
        // A skips 1 and 2 (a lagging receiver): done with all three.
        assert!(!w.delivered(0, 3));
        // B got 1, then leaves: 2 and 3 no longer wait for it.
        assert!(w.delivered(0, 1));
        assert_eq!(w.frontier, 1);
        assert!(w.left(1));
        assert_eq!(w.outstanding(), 0);
        // Messages sent after it left count one subscriber.
        let seq = w.publish(1);
        assert!(w.delivered(3, seq));
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn giving_up_moves_past_the_oldest_and_the_ring_is_reused() {
        let mut w = Window::new(3);
        for _ in 0..3 {
            w.publish(2);
        }
        // A has all three; B nothing: 1 is given up on, 2 and 3 still wait for B.
        assert!(!w.delivered(0, 3));
        assert_eq!(w.give_up(), (1, 1, 2));
        assert_eq!((w.frontier, w.outstanding()), (1, 2));
        // B's first message is 3: done with 2 and 3 (1 is not counted twice).
        assert!(w.delivered(0, 3));
        assert_eq!(w.outstanding(), 0);
        // Many turns of the ring stay consistent.
        let mut last = 3;
        for _ in 0..100 {
            while w.has_room() {
                w.publish(1);
            }
            assert!(w.delivered(last, w.published));
            last = w.published;
            assert_eq!(w.outstanding(), 0);
        }
    }
}
