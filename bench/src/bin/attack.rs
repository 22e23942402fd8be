//! `attack`: what a hostile client can make a WebSocket server hold, and how
//! well-behaved clients fare meanwhile. One thread, `mio`, hand-written client side
//! (the helpers of `wsreactor_bench`). Every mode is bounded in time and count, talks to
//! a 127.0.0.0/8 address only, and prints ONE JSON line of results on stdout (progress
//! in plain words on stderr).
//!
//! Modes (`attack MODE --help` is this text):
//!
//! * `hold`: N connections each send the FIRST, non-final fragment of a binary message
//!   (FIN=0) and then stay quiet, answering pings, for `--seconds`. Plain: `--size`
//!   bytes of payload (default 8 MiB). `--deflate`: permessage-deflate must be agreed,
//!   and the fragment (RSV1) is raw DEFLATE at level 9 of `--size` zero bytes (default
//!   15 MiB, ~15 KiB on the wire), sync-flushed with the `00 00 ff ff` tail cut and no
//!   final block: a decompression bomb that never completes.
//! * `good`: well-behaved clients, closed loop, one message of `--size` bytes at a time,
//!   every echo verified; success, failures by cause, round-trip percentiles.
//! * `fanout`: against a server that broadcasts every message to every connection: N
//!   connections that never read (small `SO_RCVBUF`), M readers that count deliveries
//!   and lag, one publisher sending as fast as the server takes it.
//! * `flood`: M echoers measure RTT for a baseline period, then again while N bare
//!   connects arrive at R/s, each sending an upgrade request and reading the answer.
//! * `storm`: open loop, R new connections per second, each a whole life cycle
//!   (upgrade, one echo, close handshake).
//! * `churn`: M connections held, then N whole life cycles a few at a time; RSS per
//!   connection that came and went.
//!
//! Server memory: with `--server-pid`, VmRSS and VmHWM from /proc/PID/status before
//! and after, and VmRSS sampled every 100 ms in between (the peak); `--rss-limit`
//! stops a run early (reported as `aborted`) when the server grows past it.

use flate2::{Compress, Compression, FlushCompress};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wsreactor_bench::pmd::{self, ClientDeflate};
use wsreactor_bench::{
    check_upgrade_response, client_header, client_key, head_end, header_values, json, json_string,
    procfs, push_client_frame, push_header, set_linger_zero, upgrade_request_with_extensions, Args,
    FrameHeader, Opcode, Rng,
};

const USAGE: &str = "\
attack: hostile-client measurements of a WebSocket server (prints one JSON line)

usage: attack MODE [FLAGS]

MODES
  hold    --conns N [--deflate] [--size BYTES]     first fragments that never finish
  good    [--conns 1] [--size BYTES] [--deflate] [--payload random|json]
                                                  closed-loop verified echoes
  fanout  --subscribers N --readers M --size BYTES broadcast to non-readers and readers
  flood   --connects N --rate R --echoers M        upgrade flood vs established echoers
  storm   --rate R                                 open-loop connection life cycles
  churn   --total N --hold M [--parallel P]        life cycles next to held connections

COMMON FLAGS
  --addr HOST:PORT      server, a 127.0.0.0/8 address       [127.0.0.1:9998]
  --path PATH           request path                        [/echo]
  --seconds S           how long the mode runs (see below)  [10]
  --server-pid PID      read the server's memory and CPU time from /proc
  --rss-limit BYTES     stop early if the server's VmRSS passes this (0: never) [0]
  --deflate             offer permessage-deflate and require it in the 101
  --deflate-offer V     the offer       [permessage-deflate; client_max_window_bits]
  --deflate-level N     our zlib level for normal messages  [6]
  --src-ips K           connect from 127.0.0.2 .. 127.0.0.(K+1), round robin
                        (0: let the kernel pick) [flood/storm/churn: 249, else 0]
  --timeout S           per-message / per-cycle / per-probe timeout [good 10, else 5]
  --ramp N              handshakes in flight at most while connecting [200]
  --setup-timeout S     time allowed to open the connections [60]
BYTES take K, M, G (binary) suffixes: 8M, 15M, 60K.

hold:   --seconds counts from when every fragment is written (or --setup-timeout);
        --settle S (1): wait after disconnecting, then read VmRSS again
good:   --seconds of closed loop; --payload random (incompressible, binary frames,
        default) or json (text frames of JSON-like text)
fanout: --seconds of publishing; --rcvbuf BYTES (4096) for the non-readers;
        --rate R caps the publisher at R msgs/s (0: as fast as the server takes them);
        --binary sends binary frames (default text, which the chat example needs);
        --drain-seconds S (3): at the end non-readers read what is queued, to see
        close codes
flood:  the flood lasts N/R s (capped by --seconds if given); the baseline as long,
        after a 1 s warm-up; --echo-size BYTES (32)
storm:  --seconds of arrivals; --max-inflight N (16000) cycles at once at most
churn:  --parallel P (4) cycles at once; --seconds (600) caps the run
";

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let Some(mode) = argv.next() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    if mode == "--help" || mode == "-h" {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let rest: Vec<String> = argv.collect();
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = Common::parse(&mode, rest).and_then(|(args, common)| match mode.as_str() {
        "hold" => hold(&args, &common),
        "good" => good(&args, &common),
        "fanout" => fanout(&args, &common),
        "flood" => flood(&args, &common),
        "storm" => storm(&args, &common),
        "churn" => churn(&args, &common),
        _ => Err(format!("unknown mode {mode:?}")),
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("attack {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------
// Flags

const COMMON_FLAGS: &[&str] = &[
    "--addr",
    "--path",
    "--seconds",
    "--server-pid",
    "--rss-limit",
    "--deflate",
    "--deflate-offer",
    "--deflate-level",
    "--src-ips",
    "--timeout",
    "--ramp",
    "--setup-timeout",
];

fn mode_flags(mode: &str) -> &'static [&'static str] {
    match mode {
        "hold" => &["--conns", "--size", "--settle"],
        "good" => &["--conns", "--size", "--payload"],
        "fanout" => &[
            "--subscribers",
            "--readers",
            "--size",
            "--rcvbuf",
            "--rate",
            "--binary",
            "--drain-seconds",
        ],
        "flood" => &["--connects", "--rate", "--echoers", "--echo-size"],
        "storm" => &["--rate", "--max-inflight"],
        "churn" => &["--total", "--hold", "--parallel"],
        _ => &[],
    }
}

/// Flags every mode shares.
struct Common {
    addr: SocketAddrV4,
    host: String,
    path: String,
    seconds: Option<Duration>,
    server_pid: Option<u32>,
    rss_limit: u64,
    offer: Option<String>,
    deflate_level: u32,
    src_ips: usize,
    timeout: Option<Duration>,
    ramp: usize,
    setup_timeout: Duration,
}

impl Common {
    fn parse(mode: &str, rest: Vec<String>) -> Result<(Args, Common), String> {
        let args = Args::parse_from(rest, &["--deflate", "--binary"])?;
        let mut known = COMMON_FLAGS.to_vec();
        known.extend_from_slice(mode_flags(mode));
        args.only(&known)?;
        let addr: SocketAddr = args.get("--addr", "127.0.0.1:9998".parse().expect("valid"))?;
        let addr = match addr {
            SocketAddr::V4(v4) if v4.ip().is_loopback() => v4,
            _ => {
                return Err(format!(
                    "--addr {addr}: only 127.0.0.0/8 addresses are allowed"
                ))
            }
        };
        let pid: u32 = args.get("--server-pid", 0)?;
        let many = matches!(mode, "flood" | "storm" | "churn");
        let offer = args
            .has("--deflate")
            .then(|| args.get("--deflate-offer", pmd::DEFAULT_OFFER.to_owned()))
            .transpose()?;
        let common = Common {
            addr,
            host: addr.to_string(),
            path: args.get("--path", "/echo".to_owned())?,
            seconds: match args.get::<f64>("--seconds", -1.0)? {
                s if s < 0.0 => None,
                s => Some(Duration::from_secs_f64(s)),
            },
            server_pid: (pid != 0).then_some(pid),
            rss_limit: bytes_arg(&args, "--rss-limit", 0)?,
            offer,
            deflate_level: args.get("--deflate-level", 6)?,
            src_ips: args.get("--src-ips", if many { 249 } else { 0 })?,
            timeout: match args.get::<f64>("--timeout", -1.0)? {
                s if s <= 0.0 => None,
                s => Some(Duration::from_secs_f64(s)),
            },
            ramp: args.get("--ramp", 200usize)?.max(1),
            setup_timeout: args.seconds("--setup-timeout", 60.0)?,
        };
        if common.src_ips > 249 {
            return Err("--src-ips: at most 249 (127.0.0.2 .. 127.0.0.250)".into());
        }
        Ok((args, common))
    }

    fn seconds_or(&self, default: f64) -> Duration {
        self.seconds.unwrap_or(Duration::from_secs_f64(default))
    }

    fn timeout_or(&self, default: f64) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs_f64(default))
    }
}

/// A byte count with an optional K/M/G (binary) suffix.
fn parse_bytes(text: &str) -> Option<u64> {
    let t = text
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches(['i', 'I']);
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let value: f64 = num.trim().parse().ok()?;
    (value >= 0.0).then_some((value * mult as f64) as u64)
}

fn bytes_arg(args: &Args, flag: &str, default: u64) -> Result<u64, String> {
    let text: String = args.get(flag, String::new())?;
    if text.is_empty() {
        return Ok(default);
    }
    parse_bytes(&text).ok_or_else(|| format!("{flag}: not a byte count: {text:?}"))
}

// ---------------------------------------------------------------------------------
// JSON output (no serde in this crate)

trait JsonValue {
    fn json(&self) -> String;
}

/// Numbers and booleans: JSON is their `Display`.
macro_rules! json_as_display {
    ($($t:ty),*) => {
        $(impl JsonValue for $t {
            fn json(&self) -> String {
                self.to_string()
            }
        })*
    };
}
json_as_display!(u64, usize, i64, bool);

impl JsonValue for f64 {
    fn json(&self) -> String {
        if !self.is_finite() {
            "null".into()
        } else if *self == self.trunc() && self.abs() < 1e15 {
            format!("{self:.0}")
        } else if self.abs() >= 1.0 {
            format!("{self:.3}")
        } else {
            format!("{self:.6}")
        }
    }
}
impl JsonValue for &str {
    fn json(&self) -> String {
        json_string(self)
    }
}
impl JsonValue for String {
    fn json(&self) -> String {
        self.as_str().json()
    }
}
impl<T: JsonValue> JsonValue for Option<T> {
    fn json(&self) -> String {
        match self {
            Some(v) => v.json(),
            None => "null".into(),
        }
    }
}
/// Already JSON.
struct Raw(String);
impl JsonValue for Raw {
    fn json(&self) -> String {
        self.0.clone()
    }
}
impl JsonValue for Obj {
    fn json(&self) -> String {
        format!("{{{}}}", self.0)
    }
}

#[derive(Default)]
struct Obj(String);

impl Obj {
    fn new() -> Obj {
        Obj(String::new())
    }
    fn set(mut self, key: &str, value: impl JsonValue) -> Obj {
        self.add(key, value);
        self
    }
    fn add(&mut self, key: &str, value: impl JsonValue) {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(&key.json());
        self.0.push(':');
        self.0.push_str(&value.json());
    }
    fn done(self) -> String {
        self.json()
    }
}

/// `{"key": count, ...}` of a tally.
fn tally_json(tally: &BTreeMap<String, u64>) -> Obj {
    let mut o = Obj::new();
    for (k, v) in tally {
        o.add(k, *v);
    }
    o
}

/// Percentiles (nearest rank) of samples in microseconds, reported in milliseconds.
fn latency_json(samples: &mut [u64]) -> Obj {
    samples.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        if samples.is_empty() {
            return None;
        }
        let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        Some(samples[rank - 1] as f64 / 1000.0)
    };
    Obj::new()
        .set("n", samples.len())
        .set("p50", pct(0.50))
        .set("p90", pct(0.90))
        .set("p99", pct(0.99))
        .set("max", samples.last().map(|&v| v as f64 / 1000.0))
}

fn median_f64(values: &mut [f64]) -> Option<f64> {
    values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (!values.is_empty()).then(|| values[values.len() / 2])
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

// ---------------------------------------------------------------------------------
// The server, seen from /proc

/// VmRSS every 100 ms on a thread of its own: the peak, a timeline, and a flag when
/// the server passes `--rss-limit`.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    over: Arc<AtomicBool>,
    join: Option<JoinHandle<Vec<(f64, u64)>>>,
}

impl Sampler {
    fn start(pid: Option<u32>, limit: u64) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let over = Arc::new(AtomicBool::new(false));
        let join = pid.map(|pid| {
            let (stop, peak, over) = (stop.clone(), peak.clone(), over.clone());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut timeline = Vec::new();
                let mut next_kept = 0.0;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = procfs::vm_rss_bytes(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                        if limit > 0 && rss > limit {
                            over.store(true, Ordering::Relaxed);
                        }
                        let t = t0.elapsed().as_secs_f64();
                        if t >= next_kept {
                            timeline.push((t, rss));
                            next_kept = t + 1.0;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                timeline
            })
        });
        Sampler {
            stop,
            peak,
            over,
            join,
        }
    }

    fn over_limit(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// Stops sampling; the peak and a one-per-second timeline `[[t, MiB], ...]`.
    fn finish(mut self) -> (Option<u64>, Raw) {
        self.stop.store(true, Ordering::Relaxed);
        let timeline = self
            .join
            .take()
            .and_then(|j| j.join().ok())
            .unwrap_or_default();
        let peak = self.peak.load(Ordering::Relaxed);
        let points: Vec<String> = timeline
            .iter()
            .map(|(t, rss)| format!("[{t:.1},{:.1}]", mb(*rss)))
            .collect();
        (
            (peak > 0).then_some(peak),
            Raw(format!("[{}]", points.join(","))),
        )
    }
}

/// The server's counters at one moment.
#[derive(Clone, Copy, Default)]
struct Snap {
    rss: Option<u64>,
    hwm: Option<u64>,
    /// utime + stime (clock ticks, usually 10 ms).
    cpu_us: Option<u64>,
    /// Time on CPU from the scheduler (ns): a finer cross-check.
    sched_ns: Option<u64>,
    /// Time runnable but waiting for a CPU (ns): other work on its core.
    run_delay_ns: Option<u64>,
}

impl Snap {
    fn take(pid: Option<u32>) -> Snap {
        match pid {
            Some(pid) => Snap {
                rss: procfs::vm_rss_bytes(pid),
                hwm: procfs::vm_hwm_bytes(pid),
                cpu_us: procfs::cpu_us(pid),
                sched_ns: procfs::sched_cpu_ns(pid),
                run_delay_ns: procfs::run_delay_ns(pid),
            },
            None => Snap::default(),
        }
    }
}

fn diff(a: Option<u64>, b: Option<u64>) -> Option<i64> {
    Some(b? as i64 - a? as i64)
}

/// The `server` object: memory before / peak / after, and CPU time between.
fn server_json(
    pid: Option<u32>,
    before: Snap,
    after: Snap,
    peak: Option<u64>,
    timeline: Raw,
) -> Obj {
    let alive = pid.map(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
    Obj::new()
        .set("pid", pid.map(u64::from))
        .set("alive", alive)
        .set("rss_before", before.rss)
        .set(
            "rss_peak",
            peak.max(after.rss).filter(|_| before.rss.is_some()),
        )
        .set("rss_after", after.rss)
        .set("hwm_before", before.hwm)
        .set("hwm_after", after.hwm)
        .set("cpu_us", diff(before.cpu_us, after.cpu_us))
        .set(
            "sched_cpu_us",
            diff(before.sched_ns, after.sched_ns).map(|ns| ns / 1000),
        )
        .set(
            "run_wait_ms",
            diff(before.run_delay_ns, after.run_delay_ns).map(|ns| ns / 1_000_000),
        )
        .set("rss_mib_timeline", timeline)
}

/// This process's CPU time and CPU wait since it was made.
struct ClientClock {
    t0: Instant,
    cpu_us: u64,
    run_delay_ns: Option<u64>,
}

impl ClientClock {
    fn start() -> ClientClock {
        ClientClock {
            t0: Instant::now(),
            cpu_us: procfs::self_cpu_us(),
            run_delay_ns: procfs::run_delay_ns(0),
        }
    }

    /// `{"cpu_util": cores, "run_wait_ms": ...}`: a client near 1.0, or waiting long
    /// for its CPU, may be what limits a run.
    fn json(&self) -> Obj {
        let secs = self.t0.elapsed().as_secs_f64();
        Obj::new()
            .set(
                "cpu_util",
                (procfs::self_cpu_us() - self.cpu_us) as f64 / 1e6 / secs,
            )
            .set(
                "run_wait_ms",
                diff(self.run_delay_ns, procfs::run_delay_ns(0)).map(|ns| ns / 1_000_000),
            )
    }
}

/// System-wide TCP socket counts and kernel socket memory (`/proc/net/sockstat`):
/// kernel buffers are not in any process's RSS.
fn sockstat() -> Obj {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let mut o = Obj::new();
    if let Some(line) = text.lines().find(|l| l.starts_with("TCP:")) {
        let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
        for pair in fields.chunks(2) {
            if let [k, v] = pair {
                if let Ok(n) = v.parse::<u64>() {
                    match *k {
                        "mem" => o.add("mem_bytes", n * 4096),
                        k => o.add(k, n),
                    }
                }
            }
        }
    }
    o
}

/// Growth of `after` over `before` per byte sent.
fn per_byte(before: Option<u64>, after: Option<u64>, sent: u64) -> Option<f64> {
    let growth = diff(before, after)?;
    (sent > 0).then(|| growth as f64 / sent as f64)
}

// ---------------------------------------------------------------------------------
// Sockets

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt on a socket we own, with an int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A non-blocking connect, optionally from a chosen loopback source address (port
/// picked at connect time: `IP_BIND_ADDRESS_NO_PORT`) and with a small receive buffer.
fn open_socket(
    addr: SocketAddrV4,
    src: Option<Ipv4Addr>,
    rcvbuf: Option<usize>,
) -> io::Result<TcpStream> {
    // SAFETY: a plain socket(2); the descriptor is owned by the std stream at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    if let Some(bytes) = rcvbuf {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes as i32)?;
    }
    if let Some(ip) = src {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        let sa = sockaddr_in(SocketAddrV4::new(ip, 0));
        // SAFETY: bind with a sockaddr_in of the right size.
        let rc = unsafe {
            libc::bind(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sa = sockaddr_in(addr);
    // SAFETY: connect with a sockaddr_in of the right size.
    let rc = unsafe {
        libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let stream = TcpStream::from_std(std_stream);
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The header of a masked client frame for `len` payload bytes whose first byte is `b0`
/// (FIN, RSV and opcode as on the wire, as this client reads frames back).
fn client_header_for(b0: u8, len: usize, key: [u8; 4]) -> FrameHeader {
    let opcode = Opcode::try_from(b0 & 0x0f).expect("attack sends only defined opcodes");
    client_header(b0 & 0x80 != 0, (b0 >> 4) & 0b111, opcode, len, key)
}

/// Appends a masked client frame: first byte `b0` (FIN, RSV, opcode as given).
fn client_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], key: [u8; 4]) {
    push_client_frame(out, &client_header_for(b0, payload.len(), key), payload);
}

/// Raw DEFLATE (level 9, `bits` window) of `size` zero bytes, sync-flushed with the
/// `00 00 ff ff` tail cut and no final block: a stream an inflater can never finish.
fn deflate_bomb(size: usize, bits: u8) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::new(9), false, bits.clamp(9, 15));
    let zeros = vec![0u8; 1 << 16];
    let mut out = Vec::with_capacity(size / 1000 + 4096);
    let mut fed = 0usize;
    while fed < size {
        if out.capacity() - out.len() < 1024 {
            out.reserve(1 << 16);
        }
        let chunk = (size - fed).min(zeros.len());
        let before = c.total_in();
        let _ = c.compress_vec(&zeros[..chunk], &mut out, FlushCompress::None);
        fed += (c.total_in() - before) as usize;
    }
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(1 << 16);
        }
        let _ = c.compress_vec(&[], &mut out, FlushCompress::Sync);
        if out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&pmd::SYNC_TAIL) {
        out.truncate(out.len() - pmd::SYNC_TAIL.len());
    }
    out
}

// ---------------------------------------------------------------------------------
// The client connection engine

/// A connection: its slot in the table and the caller's tag (unique per run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Id {
    slot: usize,
    tag: u64,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// The server answered the upgrade with this status (not 101).
    Http(u16),
    /// A close frame arrived (code, if any). `by_server`: we had not sent ours.
    Close {
        code: Option<u16>,
        by_server: bool,
    },
    /// FIN without a close frame.
    Eof,
    /// RST (ECONNRESET / EPIPE).
    Reset,
    /// Our own deadline for it passed (in which phase).
    Timeout(&'static str),
    Error(String),
}

impl End {
    /// A short key for tallies: `close 1009`, `http 503`, `eof`, `reset`, ...
    fn key(&self) -> String {
        match self {
            End::Http(s) => format!("http {s}"),
            End::Close { code: Some(c), .. } => format!("close {c}"),
            End::Close { code: None, .. } => "close (no code)".into(),
            End::Eof => "eof".into(),
            End::Reset => "reset".into(),
            End::Timeout(phase) => format!("timeout ({phase})"),
            End::Error(e) => {
                // Keep tallies short: the error's kind, not its details.
                let short: String = e.chars().take(60).collect();
                format!("error: {short}")
            }
        }
    }

    /// Whether the server ended it (rather than our timeout or a client-side error).
    fn by_server(&self) -> bool {
        matches!(
            self,
            End::Http(_)
                | End::Close {
                    by_server: true,
                    ..
                }
                | End::Eof
                | End::Reset
        )
    }
}

fn io_end(e: &io::Error) -> End {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => End::Reset,
        Some(libc::ECONNREFUSED) => End::Error("connection refused".into()),
        _ => End::Error(e.to_string()),
    }
}

enum Ev {
    /// The 101 arrived and checked out.
    Open(Id),
    /// A data frame: its first byte, payload length, and the first `keep` bytes of
    /// its payload (unmasked, as the server sent it).
    Frame {
        id: Id,
        b0: u8,
        len: u64,
        payload: Vec<u8>,
    },
    /// Everything queued with `notify` was written to the socket.
    Sent(Id),
    /// A connection that does not read saw the peer's FIN.
    Hup(Id),
    /// The connection is gone (and forgotten by the engine).
    Done { id: Id, end: End, opened: bool },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Upgrading,
    Open,
}

struct RxFrame {
    b0: u8,
    len: u64,
    remaining: u64,
    payload: Vec<u8>,
}

struct Conn {
    stream: TcpStream,
    tag: u64,
    phase: Phase,
    key: String,
    /// The offer made (we fail a 101 that does not accept it when `require_deflate`).
    offered: bool,
    require_deflate: bool,
    agreed: Option<pmd::Agreed>,
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes of filler still to write after `out` (a large fragment's payload).
    bulk_left: u64,
    bulk_pos: usize,
    notify: bool,
    head: Vec<u8>,
    rx_hdr: [u8; 10],
    rx_hdr_len: usize,
    rx: Option<RxFrame>,
    /// Data frame payload bytes handed to the caller per frame (the rest is skipped).
    keep: usize,
    reading: bool,
    close_sent: bool,
    hup: bool,
    deadline: Option<Instant>,
    local: Option<SocketAddrV4>,
    write_error: Option<io::Error>,
}

/// Options of one new connection.
#[derive(Clone, Copy)]
struct ConnOpts {
    keep: usize,
    rcvbuf: Option<usize>,
    deadline: Option<Instant>,
    from_pool: bool,
}

impl ConnOpts {
    fn keep(keep: usize) -> ConnOpts {
        ConnOpts {
            keep,
            rcvbuf: None,
            deadline: None,
            from_pool: false,
        }
    }
}

struct Net {
    poll: Poll,
    events: Events,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    buf: Vec<u8>,
    /// Random bytes written as the (already masked) payload of bulk fragments.
    filler: Vec<u8>,
    pending: Vec<Ev>,
    addr: SocketAddrV4,
    host: String,
    path: String,
    offer: Option<String>,
    src_ips: usize,
    next_src: usize,
    rng: Rng,
    bytes_sent: u64,
    bytes_received: u64,
    pongs: u64,
    next_expiry_scan: Instant,
    /// The slot whose bytes are being handled (a write error then waits for the read
    /// loop instead of reading from inside it).
    in_read: Option<usize>,
}

impl Net {
    fn new(common: &Common) -> Result<Net, String> {
        let mut rng = Rng::from_time(0xA77AC);
        let mut filler = vec![0u8; 256 << 10];
        for chunk in filler.chunks_mut(8) {
            let r = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        Ok(Net {
            poll: Poll::new().map_err(|e| format!("poll: {e}"))?,
            events: Events::with_capacity(4096),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            buf: vec![0; 256 << 10],
            filler,
            pending: Vec::new(),
            addr: common.addr,
            host: common.host.clone(),
            path: common.path.clone(),
            offer: common.offer.clone(),
            src_ips: common.src_ips,
            next_src: 0,
            rng,
            bytes_sent: 0,
            bytes_received: 0,
            pongs: 0,
            next_expiry_scan: Instant::now(),
            in_read: None,
        })
    }

    fn len(&self) -> usize {
        self.live
    }

    fn get(&mut self, id: Id) -> Option<&mut Conn> {
        self.slots
            .get_mut(id.slot)?
            .as_mut()
            .filter(|c| c.tag == id.tag)
    }

    /// Starts a connection; its upgrade request goes out as soon as it connects.
    fn connect(&mut self, tag: u64, opts: ConnOpts) -> Result<Id, String> {
        let src = (self.src_ips > 0).then(|| {
            let i = self.next_src % self.src_ips;
            self.next_src += 1;
            Ipv4Addr::new(127, 0, 0, 2 + i as u8)
        });
        let src = if opts.from_pool { src } else { None };
        let mut stream =
            open_socket(self.addr, src, opts.rcvbuf).map_err(|e| format!("connect: {e}"))?;
        let local = match stream.local_addr() {
            Ok(SocketAddr::V4(a)) => Some(a),
            _ => None,
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(slot);
            return Err(format!("register: {e}"));
        }
        let key = client_key(&mut self.rng);
        let request =
            upgrade_request_with_extensions(&self.host, &self.path, &key, self.offer.as_deref());
        self.slots[slot] = Some(Conn {
            stream,
            tag,
            phase: Phase::Upgrading,
            key,
            offered: self.offer.is_some(),
            require_deflate: self.offer.is_some(),
            agreed: None,
            out: request,
            out_pos: 0,
            bulk_left: 0,
            bulk_pos: 0,
            notify: false,
            head: Vec::new(),
            rx_hdr: [0; 10],
            rx_hdr_len: 0,
            rx: None,
            keep: opts.keep,
            reading: true,
            close_sent: false,
            hup: false,
            deadline: opts.deadline,
            local,
            write_error: None,
        });
        self.live += 1;
        let id = Id { slot, tag };
        self.flush(id);
        Ok(id)
    }

    /// Queues bytes (already framed and masked) and writes what the socket takes.
    /// `notify`: an `Ev::Sent` once everything queued so far is written.
    fn send(&mut self, id: Id, bytes: &[u8], notify: bool) {
        let Some(conn) = self.get(id) else { return };
        conn.out.extend_from_slice(bytes);
        conn.notify |= notify;
        self.flush(id);
    }

    /// Sends one masked frame built from `payload`.
    fn send_frame(&mut self, id: Id, b0: u8, payload: &[u8], notify: bool) {
        let key = self.rng.mask_key();
        let mut frame = Vec::with_capacity(payload.len() + 14);
        client_frame(&mut frame, b0, payload, key);
        self.send(id, &frame, notify);
    }

    /// Sends a frame header announcing `len` payload bytes, then `len` bytes of filler
    /// (random on the wire; what it unmasks to does not matter to the server).
    fn send_bulk(&mut self, id: Id, b0: u8, len: u64) {
        let key = self.rng.mask_key();
        let mut header = Vec::with_capacity(14);
        push_header(&mut header, &client_header_for(b0, len as usize, key));
        let Some(conn) = self.get(id) else { return };
        conn.out.extend_from_slice(&header);
        conn.bulk_left += len;
        conn.notify = true;
        self.flush(id);
    }

    /// Starts the close handshake (code 1000 unless told).
    fn close(&mut self, id: Id, code: u16) {
        let Some(conn) = self.get(id) else { return };
        if conn.close_sent {
            return;
        }
        conn.close_sent = true;
        self.send_frame(id, 0x88, &code.to_be_bytes(), false);
    }

    /// Forgets a connection, closing it with RST; no event follows.
    fn drop_conn(&mut self, id: Id) {
        if self.get(id).is_none() {
            return;
        }
        let mut conn = self.slots[id.slot].take().expect("checked");
        set_linger_zero(&conn.stream);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.free.push(id.slot);
        self.live -= 1;
    }

    fn drop_all(&mut self) {
        let ids: Vec<Id> = self.ids();
        for id in ids {
            self.drop_conn(id);
        }
    }

    fn ids(&self) -> Vec<Id> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| c.as_ref().map(|c| Id { slot, tag: c.tag }))
            .collect()
    }

    fn set_deadline(&mut self, id: Id, deadline: Option<Instant>) {
        if let Some(conn) = self.get(id) {
            conn.deadline = deadline;
        }
    }

    /// Stops (or resumes) reading: a connection that does not read lets the server's
    /// queue and its socket buffers fill. Resuming reads what is waiting at once.
    fn set_reading(&mut self, id: Id, reading: bool, keep: usize) {
        let Some(conn) = self.get(id) else { return };
        conn.reading = reading;
        conn.keep = keep;
        if reading {
            self.on_readable(id.slot);
        }
    }

    fn local_addr(&mut self, id: Id) -> Option<SocketAddrV4> {
        self.get(id).and_then(|c| c.local)
    }

    fn agreed(&mut self, id: Id) -> Option<pmd::Agreed> {
        self.get(id).and_then(|c| c.agreed.clone())
    }

    /// Ends the connection in `slot` with `end`, reporting it.
    fn finish(&mut self, slot: usize, end: End) {
        let Some(mut conn) = self.slots[slot].take() else {
            return;
        };
        set_linger_zero(&conn.stream);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.free.push(slot);
        self.live -= 1;
        self.pending.push(Ev::Done {
            id: Id {
                slot,
                tag: conn.tag,
            },
            end,
            opened: conn.phase == Phase::Open,
        });
    }

    /// Writes what is queued; ends the connection on a write error (after reading
    /// whatever the server said last, e.g. a close frame).
    fn flush(&mut self, id: Id) {
        let filler_len = self.filler.len();
        let Some(conn) = self.slots.get_mut(id.slot).and_then(|c| c.as_mut()) else {
            return;
        };
        let mut error = None;
        'write: {
            while conn.out_pos < conn.out.len() {
                match (&conn.stream).write(&conn.out[conn.out_pos..]) {
                    Ok(n) => {
                        conn.out_pos += n;
                        self.bytes_sent += n as u64;
                    }
                    Err(e) if would_block(&e) => break 'write,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        error = Some(e);
                        break 'write;
                    }
                }
            }
            conn.out.clear();
            conn.out_pos = 0;
            while conn.bulk_left > 0 {
                let n = (conn.bulk_left as usize).min(filler_len - conn.bulk_pos);
                match (&conn.stream).write(&self.filler[conn.bulk_pos..conn.bulk_pos + n]) {
                    Ok(w) => {
                        conn.bulk_left -= w as u64;
                        conn.bulk_pos = (conn.bulk_pos + w) % filler_len;
                        self.bytes_sent += w as u64;
                    }
                    Err(e) if would_block(&e) => break 'write,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        error = Some(e);
                        break 'write;
                    }
                }
            }
            if conn.notify {
                conn.notify = false;
                self.pending.push(Ev::Sent(id));
            }
        }
        if let Some(e) = error {
            if self.in_read == Some(id.slot) {
                // Replying to a frame: the read loop ends the connection.
                conn.write_error = Some(e);
                return;
            }
            // The server may have said why before it went: read that first.
            let reading = conn.reading;
            conn.reading = true;
            self.on_readable(id.slot);
            if let Some(Some(conn)) = self.slots.get_mut(id.slot) {
                if conn.tag == id.tag {
                    conn.reading = reading;
                    self.finish(id.slot, io_end(&e));
                }
            }
        }
    }

    /// Reads until the socket is drained (if this connection reads).
    fn on_readable(&mut self, slot: usize) {
        loop {
            let Some(Some(conn)) = self.slots.get_mut(slot) else {
                return;
            };
            if !conn.reading {
                return;
            }
            let n = match (&conn.stream).read(&mut self.buf) {
                Ok(0) => {
                    let end = match conn.phase {
                        Phase::Upgrading if !conn.head.is_empty() => {
                            End::Error("EOF inside the response head".into())
                        }
                        _ => End::Eof,
                    };
                    return self.finish(slot, end);
                }
                Ok(n) => n,
                Err(e) if would_block(&e) => {
                    // A write failed while we were reading: nothing more to read.
                    if let Some(e) = conn.write_error.take() {
                        self.finish(slot, io_end(&e));
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.finish(slot, io_end(&e)),
            };
            self.bytes_received += n as u64;
            let buf = std::mem::take(&mut self.buf);
            self.in_read = Some(slot);
            let result = self.on_bytes(slot, &buf[..n]);
            self.in_read = None;
            self.buf = buf;
            if let Err(end) = result {
                return self.finish(slot, end);
            }
        }
    }

    /// Handles bytes from the server: the response head, then frames.
    fn on_bytes(&mut self, slot: usize, mut data: &[u8]) -> Result<(), End> {
        let Some(conn) = self.slots[slot].as_mut() else {
            return Ok(());
        };
        let id = Id {
            slot,
            tag: conn.tag,
        };
        if conn.phase == Phase::Upgrading {
            let had = conn.head.len();
            conn.head.extend_from_slice(data);
            let Some(end) = head_end(&conn.head) else {
                if conn.head.len() > 64 << 10 {
                    return Err(End::Error("response head over 64 KiB".into()));
                }
                return Ok(());
            };
            let head = &conn.head[..end];
            let status = std::str::from_utf8(head)
                .ok()
                .and_then(|t| t.split(' ').nth(1))
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| End::Error("unreadable status line".into()))?;
            if status != 101 {
                return Err(End::Http(status));
            }
            check_upgrade_response(head, &conn.key).map_err(End::Error)?;
            if conn.offered {
                let values = header_values(head, "sec-websocket-extensions");
                conn.agreed = pmd::parse_response(&values).map_err(End::Error)?;
                if conn.require_deflate && conn.agreed.is_none() {
                    return Err(End::Error(
                        "the 101 did not accept permessage-deflate".into(),
                    ));
                }
            }
            conn.phase = Phase::Open;
            data = &data[end - had..];
            conn.head = Vec::new();
            self.pending.push(Ev::Open(id));
        }
        while !data.is_empty() {
            let Some(conn) = self.slots[slot].as_mut() else {
                return Ok(());
            };
            if conn.rx.is_none() {
                // Gather the header: 2 bytes, then its length field.
                let need = |hdr: &[u8], have: usize| -> usize {
                    if have < 2 {
                        2
                    } else {
                        2 + match hdr[1] & 0x7f {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        }
                    }
                };
                loop {
                    let want = need(&conn.rx_hdr, conn.rx_hdr_len);
                    if conn.rx_hdr_len >= want {
                        break;
                    }
                    if data.is_empty() {
                        return Ok(());
                    }
                    let take = (want - conn.rx_hdr_len).min(data.len());
                    conn.rx_hdr[conn.rx_hdr_len..conn.rx_hdr_len + take]
                        .copy_from_slice(&data[..take]);
                    conn.rx_hdr_len += take;
                    data = &data[take..];
                }
                let h = conn.rx_hdr;
                if h[1] & 0x80 != 0 {
                    return Err(End::Error("the server masked a frame".into()));
                }
                let len = match h[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                    127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
                    n => u64::from(n),
                };
                conn.rx_hdr_len = 0;
                let keep = if h[0] & 0x08 != 0 { 125 } else { conn.keep };
                conn.rx = Some(RxFrame {
                    b0: h[0],
                    len,
                    remaining: len,
                    payload: Vec::with_capacity((len as usize).min(keep).min(1 << 20)),
                });
            }
            let rx = conn.rx.as_mut().expect("set above");
            let take = (rx.remaining as usize).min(data.len());
            let room = conn.keep.max(if rx.b0 & 0x08 != 0 { 125 } else { 0 });
            let copy = take.min(room.saturating_sub(rx.payload.len()));
            rx.payload.extend_from_slice(&data[..copy]);
            rx.remaining -= take as u64;
            data = &data[take..];
            if rx.remaining == 0 {
                let rx = conn.rx.take().expect("set above");
                self.on_frame(id, rx)?;
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, id: Id, rx: RxFrame) -> Result<(), End> {
        match rx.b0 & 0x0f {
            0x9 => {
                // Ping: answer with a masked pong carrying its payload.
                self.pongs += 1;
                self.send_frame(id, 0x8A, &rx.payload, false);
                Ok(())
            }
            0xA => Ok(()),
            0x8 => {
                let code = (rx.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([rx.payload[0], rx.payload[1]]));
                let by_server = !self.get(id).is_some_and(|c| c.close_sent);
                if by_server {
                    // Answer it (echo the code), best effort, before the RST.
                    self.close(id, code.unwrap_or(1000));
                }
                Err(End::Close { code, by_server })
            }
            _ => {
                self.pending.push(Ev::Frame {
                    id,
                    b0: rx.b0,
                    len: rx.len,
                    payload: rx.payload,
                });
                Ok(())
            }
        }
    }

    /// Ends connections whose deadline passed (scans at most every 20 ms).
    fn expire(&mut self, now: Instant) {
        if now < self.next_expiry_scan {
            return;
        }
        self.next_expiry_scan = now + Duration::from_millis(20);
        let due: Vec<(usize, &'static str)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                let c = c.as_ref()?;
                let d = c.deadline?;
                (d <= now).then_some((
                    slot,
                    match (c.phase, c.close_sent) {
                        (Phase::Upgrading, _) => "upgrade",
                        (Phase::Open, false) => "open",
                        (Phase::Open, true) => "closing",
                    },
                ))
            })
            .collect();
        for (slot, phase) in due {
            self.finish(slot, End::Timeout(phase));
        }
    }

    /// Waits up to `timeout` for I/O; the events that happened.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<Ev>, String> {
        let timeout = if self.pending.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready: Vec<(usize, bool, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable() || e.is_write_closed(),
                    e.is_error() || e.is_read_closed(),
                )
            })
            .collect();
        for (slot, readable, writable, trouble) in ready {
            let Some(Some(conn)) = self.slots.get_mut(slot) else {
                continue;
            };
            let id = Id {
                slot,
                tag: conn.tag,
            };
            if !conn.reading && trouble {
                // It does not read, so learn what we can without reading.
                match conn.stream.take_error() {
                    Ok(Some(e)) | Err(e) => {
                        self.finish(slot, io_end(&e));
                        continue;
                    }
                    Ok(None) if !conn.hup => {
                        conn.hup = true;
                        self.pending.push(Ev::Hup(id));
                    }
                    Ok(None) => {}
                }
            }
            if writable {
                self.flush(id);
            }
            if readable {
                self.on_readable(slot);
            }
        }
        Ok(std::mem::take(&mut self.pending))
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOTCONN)
}

/// Closing tallies: how many connections the server ended, how, and when (seconds
/// since `t0`).
#[derive(Default)]
struct Closes {
    tally: BTreeMap<String, u64>,
    times: Vec<f64>,
}

impl Closes {
    fn note(&mut self, key: String, t: f64) {
        *self.tally.entry(key).or_default() += 1;
        self.times.push(t);
    }

    fn json(&mut self) -> Obj {
        let mut times = self.times.clone();
        times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        Obj::new()
            .set("count", times.len())
            .set("how", tally_json(&self.tally))
            .set("first_secs", times.first().copied())
            .set(
                "median_secs",
                (!times.is_empty()).then(|| times[times.len() / 2]),
            )
            .set("last_secs", times.last().copied())
    }
}

fn tally(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_default() += 1;
}

// ---------------------------------------------------------------------------------
// hold

fn hold(args: &Args, c: &Common) -> Result<String, String> {
    let conns: usize = args.get("--conns", 20)?;
    let deflate = c.offer.is_some();
    let size = bytes_arg(args, "--size", if deflate { 15 << 20 } else { 8 << 20 })?;
    let settle = args.seconds("--settle", 1.0)?;
    let hold_for = c.seconds_or(10.0);
    if conns == 0 || size == 0 {
        return Err("--conns and --size must be positive".into());
    }
    if deflate && size > (1 << 30) {
        return Err("--size: at most 1 GiB with --deflate".into());
    }
    let mut net = Net::new(c)?;
    let sampler = Sampler::start(c.server_pid, c.rss_limit);
    let clock = ClientClock::start();
    let before = Snap::take(c.server_pid);
    let sock_before = sockstat();
    let t0 = Instant::now();
    let setup_deadline = t0 + c.setup_timeout;

    #[derive(Default, Clone)]
    struct St {
        opened: bool,
        sent: Option<f64>,
        ended: bool,
    }
    let mut st = vec![St::default(); conns];
    let mut bombs: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut bomb_bytes = 0usize;
    let (mut started, mut in_handshake) = (0usize, 0usize);
    let mut closes = Closes::default();
    let mut client_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut unexpected_frames = 0u64;
    let mut fragment_payload_sent = 0u64;
    let mut aborted: Option<String> = None;
    let mut hold_start: Option<Instant> = None;

    loop {
        let now = Instant::now();
        if sampler.over_limit() {
            aborted = Some(format!("server VmRSS passed --rss-limit {}", c.rss_limit));
            break;
        }
        if hold_start.is_none() {
            while started < conns && in_handshake < c.ramp {
                let tag = started as u64;
                started += 1;
                match net.connect(tag, ConnOpts::keep(0)) {
                    Ok(_) => in_handshake += 1,
                    Err(e) => {
                        st[tag as usize].ended = true;
                        tally(&mut client_errors, e);
                    }
                }
            }
            let settled = st.iter().all(|s| s.ended || s.sent.is_some());
            if (started == conns && settled) || now >= setup_deadline {
                hold_start = Some(now);
                let sent = st.iter().filter(|s| s.sent.is_some()).count();
                eprintln!(
                    "hold: {sent} of {conns} fragments written ({:.1} MiB on the wire) in {:.1} s; \
                     holding {:.0} s",
                    mb(net.bytes_sent),
                    now.duration_since(t0).as_secs_f64(),
                    hold_for.as_secs_f64()
                );
            }
        }
        if let Some(h) = hold_start {
            if now >= h + hold_for {
                break;
            }
        }
        for ev in net.poll(Duration::from_millis(50))? {
            let t = t0.elapsed().as_secs_f64();
            match ev {
                Ev::Open(id) => {
                    let s = &mut st[id.tag as usize];
                    s.opened = true;
                    in_handshake -= 1;
                    if deflate {
                        let bits = net.agreed(id).map_or(15, |a| a.client_max_window_bits);
                        let bomb = bombs
                            .entry(bits)
                            .or_insert_with(|| deflate_bomb(size as usize, bits));
                        bomb_bytes = bomb.len();
                        fragment_payload_sent += bomb.len() as u64;
                        // FIN=0, RSV1, binary: the first fragment of a compressed message.
                        let bomb = bomb.clone();
                        net.send_frame(id, 0x42, &bomb, true);
                    } else {
                        fragment_payload_sent += size;
                        net.send_bulk(id, 0x02, size);
                    }
                }
                Ev::Sent(id) => st[id.tag as usize].sent = Some(t),
                Ev::Frame { .. } => unexpected_frames += 1,
                Ev::Hup(_) => {}
                Ev::Done { id, end, opened } => {
                    let s = &mut st[id.tag as usize];
                    s.ended = true;
                    if !opened {
                        in_handshake -= 1;
                    }
                    if end.by_server() {
                        closes.note(end.key(), t);
                    } else {
                        tally(&mut client_errors, end.key());
                    }
                }
            }
        }
    }
    let hold_secs = hold_start.map_or(0.0, |h| h.elapsed().as_secs_f64());
    let after = Snap::take(c.server_pid);
    let sock_after = sockstat();
    let still_open = net.len();
    net.drop_all();
    std::thread::sleep(settle);
    let released = Snap::take(c.server_pid);
    let (peak, timeline) = sampler.finish();
    let opened = st.iter().filter(|s| s.opened).count();
    let fragments = st.iter().filter(|s| s.sent.is_some()).count();
    let last_sent = st
        .iter()
        .filter_map(|s| s.sent)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let sent = net.bytes_sent;
    eprintln!(
        "hold: server RSS {:.1} -> peak {:.1} -> {:.1} MiB ({:.1} after disconnecting) \
         for {:.2} MiB sent; {} closed by the server, {} still open",
        mb(before.rss.unwrap_or(0)),
        mb(peak.unwrap_or(0)),
        mb(after.rss.unwrap_or(0)),
        mb(released.rss.unwrap_or(0)),
        mb(sent),
        closes.times.len(),
        still_open
    );
    Ok(Obj::new()
        .set("mode", "hold")
        .set("conns", conns)
        .set("deflate", deflate)
        .set("size", size)
        .set(
            "fragment_wire_payload",
            if deflate { bomb_bytes as u64 } else { size },
        )
        .set("opened", opened)
        .set("fragments_written", fragments)
        .set("last_fragment_written_secs", last_sent)
        .set("hold_secs", hold_secs)
        .set("still_open_at_end", still_open)
        .set("bytes_sent", sent)
        .set("fragment_payload_bytes_sent", fragment_payload_sent)
        .set("bytes_received", net.bytes_received)
        .set("pongs_sent", net.pongs)
        .set("rss_growth", diff(before.rss, after.rss))
        .set(
            "rss_growth_per_byte_sent",
            per_byte(before.rss, after.rss, sent),
        )
        .set(
            "peak_growth_per_byte_sent",
            per_byte(before.rss, peak, sent),
        )
        .set("rss_after_disconnect", released.rss)
        .set(
            "server",
            server_json(c.server_pid, before, after, peak, timeline),
        )
        .set("closed_by_server", closes.json())
        .set("client_errors", tally_json(&client_errors))
        .set("unexpected_frames", unexpected_frames)
        .set("sockstat_before", sock_before)
        .set("sockstat_after", sock_after)
        .set("client", clock.json())
        .set("aborted", aborted)
        .done())
}

// ---------------------------------------------------------------------------------
// good

/// A message to echo: the plain bytes, and the frame sent.
struct Outgoing {
    opcode: u8,
    plain: Vec<u8>,
    sent_at: Instant,
}

fn fill_random(rng: &mut Rng, out: &mut Vec<u8>, size: usize) {
    out.clear();
    out.reserve(size);
    while out.len() < size {
        let r = rng.next_u64().to_le_bytes();
        let n = (size - out.len()).min(8);
        out.extend_from_slice(&r[..n]);
    }
}

/// Checks an echo frame against the message; Err says what was wrong.
fn check_echo(
    b0: u8,
    payload: &[u8],
    msg: &Outgoing,
    deflate: Option<&mut ClientDeflate>,
    shared: &mut pmd::Shared,
    scratch: &mut Vec<u8>,
) -> Result<usize, String> {
    if b0 & 0x80 == 0 {
        return Err("echo fragmented".into());
    }
    if b0 & 0x0f != msg.opcode {
        return Err(format!("echo opcode {:#x}", b0 & 0x0f));
    }
    let got: &[u8] = if b0 & 0x40 != 0 {
        let d = deflate.ok_or("RSV1 without permessage-deflate")?;
        d.inflate(shared, payload, scratch, msg.plain.len())?;
        scratch
    } else {
        payload
    };
    if got != &msg.plain[..] {
        return Err(format!(
            "echo differs ({} bytes back, {} sent)",
            got.len(),
            msg.plain.len()
        ));
    }
    Ok(payload.len())
}

/// The echo so far of a message the server sends in fragments: the first frame's
/// first byte, the payloads joined, and how many frames.
type Partial = Option<(u8, Vec<u8>, usize)>;

/// Takes one data frame of an echo: `None` while a fragmented message goes on, else the
/// whole message as one frame would carry it (FIN set, the first frame's opcode and
/// RSV bits) and how many frames it came in. What is not a fragment sequence (a
/// continuation with nothing begun, a new message inside one) comes back as it came,
/// for `check_echo` to reject.
fn join_fragments(partial: &mut Partial, b0: u8, payload: Vec<u8>) -> Option<(u8, Vec<u8>, usize)> {
    let fin = b0 & 0x80 != 0;
    match (b0 & 0x0f, partial.take()) {
        (0, Some((first, mut joined, pieces))) => {
            joined.extend_from_slice(&payload);
            if fin {
                Some((0x80 | first, joined, pieces + 1))
            } else {
                *partial = Some((first, joined, pieces + 1));
                None
            }
        }
        (op, None) if op != 0 && !fin => {
            *partial = Some((b0, payload, 1));
            None
        }
        _ => Some((b0, payload, 1)),
    }
}

fn good(args: &Args, c: &Common) -> Result<String, String> {
    let conns: usize = args.get("--conns", 1)?;
    let size = bytes_arg(args, "--size", 1 << 20)? as usize;
    let payload_kind: String = args.get("--payload", "random".to_owned())?;
    let json_payload = match payload_kind.as_str() {
        "random" => false,
        "json" => true,
        other => return Err(format!("--payload {other}: random or json")),
    };
    let seconds = c.seconds_or(10.0);
    let timeout = c.timeout_or(10.0);
    let mut net = Net::new(c)?;
    let mut shared = pmd::Shared::new(c.deflate_level);
    let mut rng = Rng::from_time(7);
    let mut scratch = Vec::new();
    let mut wire = Vec::new();

    struct G {
        id: Id,
        deflate: Option<ClientDeflate>,
        msg: Option<Outgoing>,
        next_json_id: u64,
        /// The echo so far when the server sends it in fragments (RFC 6455 §5.4 lets
        /// it; the wsreactor binary streams an uncompressed echo part by part).
        partial: Partial,
    }
    let mut live: HashMap<u64, G> = HashMap::new();
    let mut next_tag = 0u64;
    let mut connect = |net: &mut Net, live: &mut HashMap<u64, G>, now: Instant| {
        let tag = next_tag;
        next_tag += 1;
        let id = net.connect(
            tag,
            ConnOpts {
                deadline: Some(now + timeout),
                ..ConnOpts::keep(usize::MAX)
            },
        )?;
        live.insert(
            tag,
            G {
                id,
                deflate: None,
                msg: None,
                next_json_id: (tag + 1) * 1_000_000_000,
                partial: None,
            },
        );
        Ok::<(), String>(())
    };

    let sampler = Sampler::start(c.server_pid, c.rss_limit);
    let clock = ClientClock::start();
    let before = Snap::take(c.server_pid);
    let t0 = Instant::now();
    let end = t0 + seconds;
    let mut rtts: Vec<u64> = Vec::new();
    let (mut ok, mut connects, mut fragmented) = (0u64, 0u64, 0u64);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut fail_times: Vec<f64> = Vec::new();
    let (mut wire_sent, mut plain_sent) = (0u64, 0u64);
    let mut aborted = None;
    let mut retry_at: Option<Instant> = None;

    // Build and send the next message on `g`.
    let mut send_next = |net: &mut Net, g: &mut G, rng: &mut Rng, shared: &mut pmd::Shared| {
        let mut plain = Vec::new();
        let opcode = if json_payload {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            json::payload(rng, size, &mut g.next_json_id, ts, &mut plain);
            0x1
        } else {
            fill_random(rng, &mut plain, size);
            0x2
        };
        let b0 = match &mut g.deflate {
            Some(d) => {
                d.compress(shared, &plain, &mut wire);
                0x80 | 0x40 | opcode
            }
            None => {
                wire.clear();
                wire.extend_from_slice(&plain);
                0x80 | opcode
            }
        };
        let now = Instant::now();
        net.send_frame(g.id, b0, &wire, false);
        net.set_deadline(g.id, Some(now + timeout));
        g.msg = Some(Outgoing {
            opcode,
            plain,
            sent_at: now,
        });
        (wire.len() as u64, size as u64)
    };

    while Instant::now() < end {
        if sampler.over_limit() {
            aborted = Some(format!("server VmRSS passed --rss-limit {}", c.rss_limit));
            break;
        }
        let now = Instant::now();
        if live.len() < conns && retry_at.is_none_or(|r| now >= r) {
            connects += 1;
            if let Err(e) = connect(&mut net, &mut live, now) {
                tally(&mut failures, e);
                fail_times.push(t0.elapsed().as_secs_f64());
                retry_at = Some(now + Duration::from_millis(100));
            }
        }
        net.expire(now);
        for ev in net.poll(Duration::from_millis(20))? {
            match ev {
                Ev::Open(id) => {
                    let agreed = net.agreed(id);
                    if let Some(g) = live.get_mut(&id.tag) {
                        g.deflate = agreed.map(|a| ClientDeflate::new(a, c.deflate_level));
                        let (w, p) = send_next(&mut net, g, &mut rng, &mut shared);
                        wire_sent += w;
                        plain_sent += p;
                    }
                }
                Ev::Frame {
                    id, b0, payload, ..
                } => {
                    let Some(g) = live.get_mut(&id.tag) else {
                        continue;
                    };
                    // A fragmented echo is joined before it is checked: fragments are
                    // a legal way to send it, not a failure.
                    let Some((b0, payload, pieces)) = join_fragments(&mut g.partial, b0, payload)
                    else {
                        continue;
                    };
                    if pieces > 1 {
                        fragmented += 1;
                    }
                    let Some(msg) = g.msg.take() else {
                        tally(&mut failures, "frame with no message in flight".into());
                        continue;
                    };
                    match check_echo(
                        b0,
                        &payload,
                        &msg,
                        g.deflate.as_mut(),
                        &mut shared,
                        &mut scratch,
                    ) {
                        Ok(_) => {
                            ok += 1;
                            rtts.push(msg.sent_at.elapsed().as_micros() as u64);
                            if Instant::now() < end {
                                let (w, p) = send_next(&mut net, g, &mut rng, &mut shared);
                                wire_sent += w;
                                plain_sent += p;
                            }
                        }
                        Err(e) => {
                            tally(&mut failures, format!("bad echo: {e}"));
                            fail_times.push(t0.elapsed().as_secs_f64());
                            net.drop_conn(id);
                            live.remove(&id.tag);
                            retry_at = Some(Instant::now() + Duration::from_millis(100));
                        }
                    }
                }
                Ev::Done { id, end: how, .. } => {
                    if live.remove(&id.tag).is_some() {
                        let key = if how.by_server() {
                            format!("closed by server: {}", how.key())
                        } else {
                            how.key()
                        };
                        tally(&mut failures, key);
                        fail_times.push(t0.elapsed().as_secs_f64());
                        // Reconnect, but not in a tight loop against a refusing server.
                        retry_at = Some(Instant::now() + Duration::from_millis(100));
                    }
                }
                Ev::Sent(_) | Ev::Hup(_) => {}
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // Messages still in flight at the end are neither successes nor failures.
    let in_flight = live.values().filter(|g| g.msg.is_some()).count();
    let after = Snap::take(c.server_pid);
    net.drop_all();
    let (peak, timeline) = sampler.finish();
    let failed: u64 = failures.values().sum();
    let mut lat = latency_json(&mut rtts);
    lat.add(
        "mean",
        (!rtts.is_empty()).then(|| rtts.iter().sum::<u64>() as f64 / rtts.len() as f64 / 1000.0),
    );
    eprintln!(
        "good: {ok} verified echoes of {size} B in {elapsed:.1} s, {failed} failures {:?}",
        failures
    );
    Ok(Obj::new()
        .set("mode", "good")
        .set("conns", conns)
        .set("size", size)
        .set("payload", if json_payload { "json" } else { "random" })
        .set("deflate", net.offer.is_some())
        .set("seconds", elapsed)
        .set("ok", ok)
        .set("fragmented_echoes", fragmented)
        .set("msgs_per_sec", ok as f64 / elapsed)
        .set("failed", failed)
        .set("failures", tally_json(&failures))
        .set("first_failure_secs", fail_times.first().copied())
        .set("connects", connects)
        .set("in_flight_at_end", in_flight)
        .set("rtt_ms", lat)
        .set(
            "wire_bytes_per_msg",
            (plain_sent > 0).then(|| wire_sent as f64 * size as f64 / plain_sent as f64),
        )
        .set(
            "server",
            server_json(c.server_pid, before, after, peak, timeline),
        )
        .set("client", clock.json())
        .set("aborted", aborted)
        .done())
}

// ---------------------------------------------------------------------------------
// fanout

const STAMP: &[u8] = b"ATK1 ";

/// `ATK1 <seq hex16> <ns hex16> ` then filler letters, `size` bytes in all (ASCII).
fn stamped_message(seq: u64, ns: u64, size: usize, filler: &[u8]) -> Vec<u8> {
    let mut m = format!("ATK1 {seq:016x} {ns:016x} ").into_bytes();
    while m.len() < size {
        let n = (size - m.len()).min(filler.len());
        m.extend_from_slice(&filler[..n]);
    }
    m.truncate(size.max(1));
    m
}

/// The (seq, ns) stamp in the first bytes of a payload (after any prefix the server
/// adds, such as the chat example's `name: `).
fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let head = &payload[..payload.len().min(96)];
    let at = head.windows(STAMP.len()).position(|w| w == STAMP)? + STAMP.len();
    let rest = payload.get(at..at + 33)?;
    let text = std::str::from_utf8(rest).ok()?;
    let seq = u64::from_str_radix(&text[..16], 16).ok()?;
    let ns = u64::from_str_radix(&text[17..33], 16).ok()?;
    Some((seq, ns))
}

/// Server-side TCP states by client address, from /proc/net/tcp: for sockets whose
/// local end is `server` ("01" is ESTABLISHED). Only IPv4.
fn server_socket_states(server: SocketAddrV4) -> HashMap<SocketAddrV4, u8> {
    let key = |a: SocketAddrV4| {
        format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        )
    };
    let want = key(server);
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
        return out;
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().take(4).collect();
        if f.len() < 4 || f[1] != want {
            continue;
        }
        let Some((ip, port)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(ip), Ok(port), Ok(st)) = (
            u32::from_str_radix(ip, 16),
            u16::from_str_radix(port, 16),
            u8::from_str_radix(f[3], 16),
        ) else {
            continue;
        };
        out.insert(
            SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port),
            st,
        );
    }
    out
}

fn fanout(args: &Args, c: &Common) -> Result<String, String> {
    let subscribers: usize = args.get("--subscribers", 100)?;
    let readers: usize = args.get("--readers", 10)?;
    let size = (bytes_arg(args, "--size", 60_000)? as usize).max(40);
    let rcvbuf = bytes_arg(args, "--rcvbuf", 4096)? as usize;
    let rate: f64 = args.get("--rate", 0.0)?;
    let drain_secs = args.seconds("--drain-seconds", 3.0)?;
    let opcode: u8 = if args.has("--binary") { 0x2 } else { 0x1 };
    let seconds = c.seconds_or(10.0);
    let deflate = c.offer.is_some();
    let mut net = Net::new(c)?;
    let mut shared = pmd::Shared::new(c.deflate_level);
    let mut rng = Rng::from_time(3);
    let filler: Vec<u8> = (0..4096)
        .map(|_| {
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                [(rng.next_u64() % 62) as usize]
        })
        .collect();

    let sampler = Sampler::start(c.server_pid, c.rss_limit);
    let clock = ClientClock::start();
    let start_snap = Snap::take(c.server_pid);
    let t0 = Instant::now();
    let base = t0;
    // Tags: 0..subscribers non-readers, then readers, then the publisher.
    let total = subscribers + readers + 1;
    let publisher_tag = (subscribers + readers) as u64;
    let is_reader = |tag: u64| tag as usize >= subscribers;

    #[derive(Default)]
    struct R {
        id: Option<Id>,
        opened: bool,
        ended: Option<(f64, End)>,
        delivered: u64,
        delivered_bytes: u64,
        last_seq: Option<u64>,
        missed: u64,
        /// Non-readers: when the server was first seen to have closed it, and how.
        closed_at: Option<(f64, &'static str)>,
        deflate: Option<ClientDeflate>,
    }
    let mut rs: Vec<R> = (0..total).map(|_| R::default()).collect();
    let mut client_errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut started, mut in_handshake) = (0usize, 0usize);
    let setup_deadline = t0 + c.setup_timeout;
    let mut scratch = Vec::new();
    let mut lags: Vec<u64> = Vec::new();
    let mut publisher_lags: Vec<u64> = Vec::new();
    let mut aborted = None;

    // One place handles every event, in each phase.
    struct Ctx<'a> {
        rs: &'a mut Vec<R>,
        in_handshake: &'a mut usize,
        client_errors: &'a mut BTreeMap<String, u64>,
        lags: &'a mut Vec<u64>,
        publisher_lags: &'a mut Vec<u64>,
        scratch: &'a mut Vec<u8>,
        shared: &'a mut pmd::Shared,
        level: u32,
        publisher_ready: bool,
    }
    fn handle(
        net: &mut Net,
        cx: &mut Ctx,
        ev: Ev,
        t: f64,
        base: Instant,
        subscribers: usize,
        publisher_tag: u64,
    ) {
        match ev {
            Ev::Open(id) => {
                *cx.in_handshake -= 1;
                let agreed = net.agreed(id);
                let r = &mut cx.rs[id.tag as usize];
                r.opened = true;
                r.deflate = agreed.map(|a| ClientDeflate::new(a, cx.level));
                if (id.tag as usize) < subscribers {
                    net.set_reading(id, false, 0);
                }
                if id.tag == publisher_tag {
                    cx.publisher_ready = true;
                }
            }
            Ev::Frame {
                id,
                b0,
                len,
                payload,
            } => {
                let r = &mut cx.rs[id.tag as usize];
                r.delivered_bytes += len;
                let plain: &[u8] = if b0 & 0x40 != 0 {
                    let Some(d) = r.deflate.as_mut() else { return };
                    if d.inflate(cx.shared, &payload, cx.scratch, usize::MAX >> 1)
                        .is_err()
                    {
                        tally(cx.client_errors, "inflate failed".into());
                        return;
                    }
                    cx.scratch
                } else {
                    &payload
                };
                let Some((seq, ns)) = read_stamp(plain) else {
                    return;
                };
                let lag = base.elapsed().as_nanos() as u64;
                let lag_us = lag.saturating_sub(ns) / 1000;
                r.delivered += 1;
                if let Some(last) = r.last_seq {
                    if seq > last + 1 {
                        r.missed += seq - last - 1;
                    }
                }
                r.last_seq = Some(seq);
                if id.tag == publisher_tag {
                    cx.publisher_lags.push(lag_us);
                } else {
                    cx.lags.push(lag_us);
                }
            }
            Ev::Hup(id) => {
                let r = &mut cx.rs[id.tag as usize];
                r.closed_at.get_or_insert((t, "fin"));
            }
            Ev::Done { id, end, opened } => {
                if !opened {
                    *cx.in_handshake -= 1;
                }
                let r = &mut cx.rs[id.tag as usize];
                r.id = None;
                if !end.by_server() {
                    tally(cx.client_errors, end.key());
                }
                if (id.tag as usize) < subscribers && opened {
                    r.closed_at.get_or_insert((t, "reset/close"));
                }
                r.ended = Some((t, end));
            }
            Ev::Sent(_) => {}
        }
    }
    let mut cx = Ctx {
        rs: &mut rs,
        in_handshake: &mut in_handshake,
        client_errors: &mut client_errors,
        lags: &mut lags,
        publisher_lags: &mut publisher_lags,
        scratch: &mut scratch,
        shared: &mut shared,
        level: c.deflate_level,
        publisher_ready: false,
    };

    // Set-up: every connection opened (non-readers first, the publisher last).
    loop {
        while started < total && *cx.in_handshake < c.ramp {
            let tag = started as u64;
            started += 1;
            let opts = ConnOpts {
                rcvbuf: (!is_reader(tag)).then_some(rcvbuf),
                ..ConnOpts::keep(if deflate { usize::MAX } else { 128 })
            };
            match net.connect(tag, opts) {
                Ok(id) => {
                    cx.rs[tag as usize].id = Some(id);
                    *cx.in_handshake += 1;
                }
                Err(e) => {
                    cx.rs[tag as usize].ended = Some((0.0, End::Error(e.clone())));
                    tally(cx.client_errors, e);
                }
            }
        }
        if started == total && *cx.in_handshake == 0 || Instant::now() >= setup_deadline {
            break;
        }
        for ev in net.poll(Duration::from_millis(50))? {
            handle(
                &mut net,
                &mut cx,
                ev,
                t0.elapsed().as_secs_f64(),
                base,
                subscribers,
                publisher_tag,
            );
        }
    }
    let opened_subs = cx.rs[..subscribers].iter().filter(|r| r.opened).count();
    let opened_readers = cx.rs[subscribers..total - 1]
        .iter()
        .filter(|r| r.opened)
        .count();
    eprintln!(
        "fanout: {opened_subs} non-readers and {opened_readers} readers open in {:.1} s; \
         publishing {size} B messages for {:.0} s",
        t0.elapsed().as_secs_f64(),
        seconds.as_secs_f64()
    );
    if !cx.publisher_ready {
        return Err("the publisher did not open".into());
    }
    let publisher = cx.rs[publisher_tag as usize].id.expect("open");
    // Track non-readers' sockets on the server side.
    let mut watch: HashMap<SocketAddrV4, u64> = HashMap::new();
    for tag in 0..subscribers as u64 {
        if let Some(id) = cx.rs[tag as usize].id {
            if let Some(local) = net.local_addr(id) {
                watch.insert(local, tag);
            }
        }
    }
    let before = Snap::take(c.server_pid);
    let sock_before = sockstat();
    let run_start = Instant::now();
    let run_t0 = run_start.duration_since(t0).as_secs_f64();
    let run_end = run_start + seconds;
    let mut seq = 0u64;
    let (mut published, mut published_bytes) = (0u64, 0u64);
    let mut publisher_busy = false;
    let mut next_due = run_start;
    let mut next_scan = run_start;
    let mut wire = Vec::new();
    let mut publisher_deflate = cx.rs[publisher_tag as usize].deflate.take();
    let mut publisher_gone = false;
    while Instant::now() < run_end {
        if sampler.over_limit() {
            aborted = Some(format!("server VmRSS passed --rss-limit {}", c.rss_limit));
            break;
        }
        let now = Instant::now();
        if !publisher_busy && !publisher_gone && (rate <= 0.0 || now >= next_due) {
            let ns = base.elapsed().as_nanos() as u64;
            let msg = stamped_message(seq, ns, size, &filler);
            let b0 = match publisher_deflate.as_mut() {
                Some(d) => {
                    d.compress(cx.shared, &msg, &mut wire);
                    0xC0 | opcode
                }
                None => {
                    wire.clear();
                    wire.extend_from_slice(&msg);
                    0x80 | opcode
                }
            };
            net.send_frame(publisher, b0, &wire, true);
            publisher_busy = true;
            seq += 1;
            published += 1;
            published_bytes += size as u64;
            if rate > 0.0 {
                next_due += Duration::from_secs_f64(1.0 / rate);
            }
        }
        if now >= next_scan {
            next_scan = now + Duration::from_millis(500);
            let states = server_socket_states(c.addr);
            let t = t0.elapsed().as_secs_f64();
            for (local, &tag) in &watch {
                let r = &mut cx.rs[tag as usize];
                if r.closed_at.is_none() && states.get(local) != Some(&1) {
                    r.closed_at = Some((t, "server socket closed"));
                }
            }
        }
        let wait = if rate > 0.0 {
            next_due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(5))
        } else {
            Duration::from_millis(5)
        };
        // The publisher's copies come back to it too: restore its compression state for
        // the event handler, then take it back.
        cx.rs[publisher_tag as usize].deflate = publisher_deflate.take();
        for ev in net.poll(wait)? {
            if let Ev::Sent(id) = &ev {
                if *id == publisher {
                    publisher_busy = false;
                }
            }
            if let Ev::Done { id, .. } = &ev {
                if *id == publisher {
                    publisher_gone = true;
                }
            }
            handle(
                &mut net,
                &mut cx,
                ev,
                t0.elapsed().as_secs_f64(),
                base,
                subscribers,
                publisher_tag,
            );
        }
        publisher_deflate = cx.rs[publisher_tag as usize].deflate.take();
        if publisher_gone {
            break;
        }
    }
    let run_secs = run_start.elapsed().as_secs_f64();
    // Let deliveries in flight arrive (1 s), then read the server's memory.
    cx.rs[publisher_tag as usize].deflate = publisher_deflate.take();
    let tail_end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < tail_end {
        for ev in net.poll(Duration::from_millis(20))? {
            handle(
                &mut net,
                &mut cx,
                ev,
                t0.elapsed().as_secs_f64(),
                base,
                subscribers,
                publisher_tag,
            );
        }
    }
    let after = Snap::take(c.server_pid);
    let sock_after = sockstat();
    // Non-readers the server closed now read what is queued for them, to find its
    // close frame (code) or EOF. Those still open stay unread.
    let mut drained_codes: BTreeMap<String, u64> = BTreeMap::new();
    for tag in 0..subscribers {
        if let (Some(id), Some(_)) = (cx.rs[tag].id, cx.rs[tag].closed_at) {
            net.set_reading(id, true, 0);
        }
    }
    let drain_end = Instant::now() + drain_secs;
    while Instant::now() < drain_end
        && cx.rs[..subscribers]
            .iter()
            .any(|r| r.id.is_some() && r.closed_at.is_some() && r.ended.is_none())
    {
        for ev in net.poll(Duration::from_millis(20))? {
            handle(
                &mut net,
                &mut cx,
                ev,
                t0.elapsed().as_secs_f64(),
                base,
                subscribers,
                publisher_tag,
            );
        }
    }
    // Deliveries counted during the drain are not part of the readers' figures (non-
    // readers' counts are not reported).
    let mut closed = Closes::default();
    let mut closed_how: BTreeMap<String, u64> = BTreeMap::new();
    for r in cx.rs[..subscribers].iter() {
        if let Some((t, how)) = r.closed_at {
            closed.times.push(t - run_t0);
            tally(&mut closed_how, how.to_owned());
            let code = match &r.ended {
                Some((_, e)) => e.key(),
                None => "no close frame seen".into(),
            };
            tally(&mut drained_codes, code);
        }
    }
    closed.tally = drained_codes;
    net.drop_all();
    let (peak, timeline) = sampler.finish();

    let mut counts: Vec<f64> = cx.rs[subscribers..total - 1]
        .iter()
        .filter(|r| r.opened)
        .map(|r| r.delivered as f64)
        .collect();
    let delivered_bytes: u64 = cx.rs[subscribers..total - 1]
        .iter()
        .map(|r| r.delivered_bytes)
        .sum();
    let missed: u64 = cx.rs[subscribers..total - 1].iter().map(|r| r.missed).sum();
    let readers_closed = cx.rs[subscribers..total - 1]
        .iter()
        .filter(|r| r.ended.as_ref().is_some_and(|(_, e)| e.by_server()))
        .count();
    let min = counts
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
    let median = median_f64(&mut counts);
    let publisher_received = cx.rs[publisher_tag as usize].delivered;
    eprintln!(
        "fanout: published {published} ({:.1} MiB, {:.0}/s); readers got min {:?} median {:?}; \
         {} non-readers closed by the server; server RSS {:.1} -> peak {:.1} -> {:.1} MiB",
        mb(published_bytes),
        published as f64 / run_secs,
        min,
        median,
        closed.times.len(),
        mb(before.rss.unwrap_or(0)),
        mb(peak.unwrap_or(0)),
        mb(after.rss.unwrap_or(0)),
    );
    let mut subs = closed.json();
    subs.add("conns", subscribers);
    subs.add("opened", opened_subs);
    subs.add("first_seen_by", tally_json(&closed_how));
    Ok(Obj::new()
        .set("mode", "fanout")
        .set("size", size)
        .set("opcode", if opcode == 1 { "text" } else { "binary" })
        .set("deflate", deflate)
        .set("seconds", run_secs)
        .set("published_msgs", published)
        .set("published_bytes", published_bytes)
        .set("publish_rate", published as f64 / run_secs)
        .set("publisher_received", publisher_received)
        .set("publisher_lag_ms", latency_json(&mut publisher_lags))
        .set(
            "readers",
            Obj::new()
                .set("conns", readers)
                .set("opened", opened_readers)
                .set("delivered_min", min)
                .set("delivered_median", median)
                .set("rate_min", min.map(|v| v / run_secs))
                .set("rate_median", median.map(|v| v / run_secs))
                .set("missed_total", missed)
                .set("delivered_wire_bytes_total", delivered_bytes)
                .set("closed_by_server", readers_closed)
                .set("lag_ms", latency_json(&mut lags)),
        )
        .set("non_readers", subs)
        .set("rss_at_start", start_snap.rss)
        .set("rss_growth", diff(before.rss, after.rss))
        .set(
            "rss_growth_per_byte_published",
            per_byte(before.rss, after.rss, published_bytes),
        )
        .set(
            "server",
            server_json(c.server_pid, before, after, peak, timeline),
        )
        .set("client_errors", tally_json(&client_errors))
        .set("sockstat_before", sock_before)
        .set("sockstat_after", sock_after)
        .set("client", clock.json())
        .set("aborted", aborted)
        .done())
}

// ---------------------------------------------------------------------------------
// flood

fn flood(args: &Args, c: &Common) -> Result<String, String> {
    let mut connects: u64 = args.get("--connects", 20_000)?;
    let rate: f64 = args.get("--rate", 5_000.0)?;
    let echoers: usize = args.get("--echoers", 100)?;
    let echo_size = bytes_arg(args, "--echo-size", 32)? as usize;
    let timeout = c.timeout_or(5.0);
    if rate <= 0.0 || connects == 0 {
        return Err("--rate and --connects must be positive".into());
    }
    let mut period = connects as f64 / rate;
    if let Some(s) = c.seconds {
        if s.as_secs_f64() < period {
            period = s.as_secs_f64();
            connects = (rate * period) as u64;
        }
    }
    let period = Duration::from_secs_f64(period);
    let max_inflight =
        16_000.min((procfs::raise_nofile_limit() as usize).saturating_sub(echoers + 64));
    let mut net = Net::new(c)?;
    let mut rng = Rng::from_time(5);
    let probe_base = echoers as u64;

    // Echoers: connect them all (from the pool of source addresses too).
    struct E {
        id: Id,
        msg: Option<Outgoing>,
    }
    let mut es: HashMap<u64, E> = HashMap::new();
    for tag in 0..echoers as u64 {
        let id = net.connect(
            tag,
            ConnOpts {
                from_pool: true,
                ..ConnOpts::keep(usize::MAX)
            },
        )?;
        es.insert(tag, E { id, msg: None });
    }
    #[derive(PartialEq, Clone, Copy)]
    enum Win {
        Warmup,
        Baseline,
        Flood,
        Drain,
    }
    let mut win = Win::Warmup;
    let (mut base_rtt, mut flood_rtt) = (Vec::new(), Vec::new());
    let mut echo_failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut probe_out: BTreeMap<String, u64> = BTreeMap::new();
    let mut probe_lat: Vec<u64> = Vec::new();
    let mut probe_start: HashMap<u64, Instant> = HashMap::new();
    let mut open_echoers = 0usize;
    let send_echo = |net: &mut Net, e: &mut E, rng: &mut Rng| {
        let mut plain = Vec::new();
        fill_random(rng, &mut plain, echo_size);
        net.send_frame(e.id, 0x82, &plain, false);
        e.msg = Some(Outgoing {
            opcode: 2,
            plain,
            sent_at: Instant::now(),
        });
    };
    let mut shared = pmd::Shared::new(6);
    let mut scratch = Vec::new();
    let sampler = Sampler::start(c.server_pid, c.rss_limit);
    let clock = ClientClock::start();
    let t0 = Instant::now();
    let connect_deadline = t0 + c.setup_timeout;
    let mut phase_start = t0;
    let mut snaps: Vec<Snap> = Vec::new();
    let sock_before = sockstat();
    let mut issued = 0u64;
    let mut skipped = 0u64;
    let mut aborted = None;
    let mut handle = |net: &mut Net,
                      evs: Vec<Ev>,
                      win: Win,
                      rng: &mut Rng,
                      es: &mut HashMap<u64, E>,
                      open_echoers: &mut usize,
                      probe_out: &mut BTreeMap<String, u64>,
                      probe_start: &mut HashMap<u64, Instant>| {
        for ev in evs {
            match ev {
                Ev::Open(id) if id.tag < probe_base => {
                    *open_echoers += 1;
                    if let Some(e) = es.get_mut(&id.tag) {
                        send_echo(net, e, rng);
                    }
                }
                Ev::Open(id) => {
                    tally(probe_out, "101".into());
                    if let Some(s) = probe_start.remove(&id.tag) {
                        probe_lat.push(s.elapsed().as_micros() as u64);
                    }
                    net.drop_conn(id);
                }
                Ev::Frame {
                    id, b0, payload, ..
                } if id.tag < probe_base => {
                    let Some(e) = es.get_mut(&id.tag) else {
                        continue;
                    };
                    let Some(msg) = e.msg.take() else { continue };
                    match check_echo(b0, &payload, &msg, None, &mut shared, &mut scratch) {
                        Ok(_) => {
                            let us = msg.sent_at.elapsed().as_micros() as u64;
                            match win {
                                Win::Baseline => base_rtt.push(us),
                                Win::Flood => flood_rtt.push(us),
                                _ => {}
                            }
                            if win != Win::Drain {
                                send_echo(net, e, rng);
                            }
                        }
                        Err(err) => {
                            tally(&mut echo_failures, format!("bad echo: {err}"));
                            net.drop_conn(id);
                            es.remove(&id.tag);
                        }
                    }
                }
                Ev::Frame { .. } | Ev::Sent(_) | Ev::Hup(_) => {}
                Ev::Done { id, end, .. } if id.tag < probe_base => {
                    es.remove(&id.tag);
                    tally(&mut echo_failures, end.key());
                }
                Ev::Done { id, end, .. } => {
                    let key = match end {
                        End::Http(503) => "503".into(),
                        e => e.key(),
                    };
                    if let Some(s) = probe_start.remove(&id.tag) {
                        if key == "503" {
                            probe_lat.push(s.elapsed().as_micros() as u64);
                        }
                    }
                    tally(probe_out, key);
                }
            }
        }
    };
    loop {
        let now = Instant::now();
        if sampler.over_limit() {
            aborted = Some(format!("server VmRSS passed --rss-limit {}", c.rss_limit));
            break;
        }
        match win {
            Win::Warmup => {
                if open_echoers == echoers && now >= phase_start + Duration::from_secs(1) {
                    eprintln!(
                        "flood: {echoers} echoers open; baseline {:.1} s",
                        period.as_secs_f64()
                    );
                    win = Win::Baseline;
                    phase_start = now;
                    snaps.push(Snap::take(c.server_pid));
                } else if now >= connect_deadline {
                    return Err(format!("only {open_echoers} of {echoers} echoers opened"));
                }
            }
            Win::Baseline if now >= phase_start + period => {
                eprintln!("flood: {connects} connects at {rate}/s");
                win = Win::Flood;
                phase_start = now;
                snaps.push(Snap::take(c.server_pid));
            }
            Win::Flood => {
                let due = ((now - phase_start).as_secs_f64() * rate).ceil() as u64;
                while issued < due.min(connects) {
                    let tag = probe_base + issued;
                    issued += 1;
                    if net.len() >= max_inflight {
                        skipped += 1;
                        continue;
                    }
                    let opts = ConnOpts {
                        deadline: Some(now + timeout),
                        from_pool: true,
                        ..ConnOpts::keep(0)
                    };
                    match net.connect(tag, opts) {
                        Ok(_) => {
                            probe_start.insert(tag, now);
                        }
                        Err(e) => tally(&mut probe_out, e),
                    }
                }
                if now >= phase_start + period && issued >= connects {
                    win = Win::Drain;
                    snaps.push(Snap::take(c.server_pid));
                    phase_start = now;
                }
            }
            Win::Drain
                if probe_start.is_empty()
                    || now >= phase_start + timeout + Duration::from_secs(1) =>
            {
                break;
            }
            _ => {}
        }
        net.expire(now);
        let evs = net.poll(Duration::from_millis(1))?;
        handle(
            &mut net,
            evs,
            win,
            &mut rng,
            &mut es,
            &mut open_echoers,
            &mut probe_out,
            &mut probe_start,
        );
    }
    let end_snap = Snap::take(c.server_pid);
    let sock_after = sockstat();
    net.drop_all();
    let (peak, timeline) = sampler.finish();
    let before = snaps.first().copied().unwrap_or(end_snap);
    let flood_snaps = (snaps.get(1).copied(), snaps.get(2).copied());
    let (a101, a503) = (
        probe_out.get("101").copied().unwrap_or(0),
        probe_out.get("503").copied().unwrap_or(0),
    );
    let mut b = latency_json(&mut base_rtt);
    let mut f = latency_json(&mut flood_rtt);
    b.add("msgs_per_sec", base_rtt.len() as f64 / period.as_secs_f64());
    f.add(
        "msgs_per_sec",
        flood_rtt.len() as f64 / period.as_secs_f64(),
    );
    eprintln!(
        "flood: {issued} connects: {a101} upgraded, {a503} refused (503), others {:?}; \
         echo p99 {:?} -> {:?}",
        probe_out,
        pct99(&base_rtt),
        pct99(&flood_rtt)
    );
    let flood_cpu = match flood_snaps {
        (Some(a), Some(b)) => diff(a.cpu_us, b.cpu_us),
        _ => None,
    };
    Ok(Obj::new()
        .set("mode", "flood")
        .set("connects", connects)
        .set("rate", rate)
        .set("period_secs", period.as_secs_f64())
        .set("issued", issued)
        .set("skipped_client_inflight_cap", skipped)
        .set("probes", tally_json(&probe_out))
        .set("upgraded_101", a101)
        .set("refused_503", a503)
        .set("probe_answer_ms", latency_json(&mut probe_lat))
        .set("echoers", echoers)
        .set("echo_size", echo_size)
        .set("echo_baseline_ms", b)
        .set("echo_flood_ms", f)
        .set("echo_failures", tally_json(&echo_failures))
        .set("server_cpu_us_flood", flood_cpu)
        .set(
            "server",
            server_json(c.server_pid, before, end_snap, peak, timeline),
        )
        .set("sockstat_before", sock_before)
        .set("sockstat_after", sock_after)
        .set("client", clock.json())
        .set("aborted", aborted)
        .done())
}

fn pct99(samples: &[u64]) -> Option<f64> {
    let mut v = samples.to_vec();
    v.sort_unstable();
    (!v.is_empty())
        .then(|| v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------
// storm and churn: whole connection life cycles

/// One life cycle: connect, upgrade, one small echo, close handshake (ours first),
/// close with RST.
struct Cycles {
    timeout: Duration,
    size: usize,
    start: HashMap<u64, (Instant, Option<Outgoing>)>,
    completed: u64,
    refused: u64,
    failed: BTreeMap<String, u64>,
    latency: Vec<u64>,
    shared: pmd::Shared,
    scratch: Vec<u8>,
}

impl Cycles {
    fn new(timeout: Duration, size: usize) -> Cycles {
        Cycles {
            timeout,
            size,
            start: HashMap::new(),
            completed: 0,
            refused: 0,
            failed: BTreeMap::new(),
            latency: Vec::new(),
            shared: pmd::Shared::new(6),
            scratch: Vec::new(),
        }
    }

    fn begin(&mut self, net: &mut Net, tag: u64, scheduled: Instant) {
        let opts = ConnOpts {
            deadline: Some(Instant::now() + self.timeout),
            from_pool: true,
            ..ConnOpts::keep(4096)
        };
        match net.connect(tag, opts) {
            Ok(_) => {
                self.start.insert(tag, (scheduled, None));
            }
            Err(e) => tally(&mut self.failed, e),
        }
    }

    fn in_flight(&self) -> usize {
        self.start.len()
    }

    /// Handles an event of a cycle connection; false if it is not one.
    fn on_event(&mut self, net: &mut Net, ev: &Ev, rng: &mut Rng) -> bool {
        match ev {
            Ev::Open(id) => {
                let Some((_, msg)) = self.start.get_mut(&id.tag) else {
                    return false;
                };
                let mut plain = Vec::new();
                fill_random(rng, &mut plain, self.size);
                net.send_frame(*id, 0x82, &plain, false);
                *msg = Some(Outgoing {
                    opcode: 2,
                    plain,
                    sent_at: Instant::now(),
                });
            }
            Ev::Frame {
                id, b0, payload, ..
            } => {
                let Some((_, msg)) = self.start.get_mut(&id.tag) else {
                    return false;
                };
                let Some(m) = msg.take() else {
                    tally(&mut self.failed, "unexpected frame".into());
                    return true;
                };
                match check_echo(*b0, payload, &m, None, &mut self.shared, &mut self.scratch) {
                    Ok(_) => net.close(*id, 1000),
                    Err(e) => {
                        tally(&mut self.failed, format!("bad echo: {e}"));
                        self.start.remove(&id.tag);
                        net.drop_conn(*id);
                    }
                }
            }
            Ev::Done { id, end, .. } => {
                let Some((t, _)) = self.start.remove(&id.tag) else {
                    return false;
                };
                match end {
                    End::Close {
                        by_server: false, ..
                    } => {
                        self.completed += 1;
                        self.latency.push(t.elapsed().as_micros() as u64);
                    }
                    End::Http(503) => self.refused += 1,
                    End::Close {
                        code,
                        by_server: true,
                    } => tally(
                        &mut self.failed,
                        format!(
                            "server closed first ({})",
                            code.map_or("no code".into(), |c| c.to_string())
                        ),
                    ),
                    e => tally(&mut self.failed, e.key()),
                }
            }
            Ev::Sent(_) | Ev::Hup(_) => return false,
        }
        true
    }

    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

fn storm(args: &Args, c: &Common) -> Result<String, String> {
    let rate: f64 = args.get("--rate", 1_000.0)?;
    let max_inflight: usize = args.get("--max-inflight", 16_000)?;
    let seconds = c.seconds_or(5.0);
    let timeout = c.timeout_or(5.0);
    if rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    let limit = procfs::raise_nofile_limit() as usize;
    let max_inflight = max_inflight.min(limit.saturating_sub(64));
    let total = (rate * seconds.as_secs_f64()).round() as u64;
    let mut net = Net::new(c)?;
    let mut rng = Rng::from_time(9);
    let mut cycles = Cycles::new(timeout, 16);
    let sampler = Sampler::start(c.server_pid, c.rss_limit);
    let clock = ClientClock::start();
    let sock_before = sockstat();
    let before = Snap::take(c.server_pid);
    let t0 = Instant::now();
    let (mut attempted, mut skipped) = (0u64, 0u64);
    let mut lateness: Vec<u64> = Vec::new();
    let mut peak_inflight = 0usize;
    let mut aborted = None;
    eprintln!(
        "storm: {total} cycles at {rate}/s over {:.1} s",
        seconds.as_secs_f64()
    );
    loop {
        let now = Instant::now();
        if sampler.over_limit() {
            aborted = Some(format!("server VmRSS passed --rss-limit {}", c.rss_limit));
            break;
        }
        while attempted + skipped < total {
            let i = attempted + skipped;
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            if due > now {
                break;
            }
            if cycles.in_flight() >= max_inflight {
                skipped += 1;
                continue;
            }
            attempted += 1;
            lateness.push(now.duration_since(due).as_micros() as u64);
            cycles.begin(&mut net, i, due);
        }
        peak_inflight = peak_inflight.max(cycles.in_flight());
        let arrivals_done = attempted + skipped >= total;
        if arrivals_done && cycles.in_flight() == 0 {
            break;
        }
        if arrivals_done && now >= t0 + seconds + timeout + Duration::from_secs(1) {
            break;
        }
        net.expire(now);
        for ev in net.poll(Duration::from_millis(1))? {
            cycles.on_event(&mut net, &ev, &mut rng);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let after = Snap::take(c.server_pid);
    let sock_after = sockstat();
    let left = cycles.in_flight();
    net.drop_all();
    let (peak, timeline) = sampler.finish();
    let cpu = diff(before.cpu_us, after.cpu_us);
    let per_cycle = cpu
        .filter(|_| cycles.completed > 0)
        .map(|us| us as f64 / cycles.completed as f64);
    let failed = cycles.failed_total();
    eprintln!(
        "storm: {attempted} attempted, {} completed, {} refused (503), {failed} failed {:?}; \
         server CPU {:?} µs per completed cycle",
        cycles.completed, cycles.refused, cycles.failed, per_cycle
    );
    Ok(Obj::new()
        .set("mode", "storm")
        .set("rate", rate)
        .set("seconds", seconds.as_secs_f64())
        .set("elapsed_secs", elapsed)
        .set("scheduled", total)
        .set("attempted", attempted)
        .set("skipped_client_inflight_cap", skipped)
        .set("completed", cycles.completed)
        .set("refused_503", cycles.refused)
        .set("failed", failed)
        .set("failures", tally_json(&cycles.failed))
        .set("unfinished", left)
        .set(
            "completed_per_sec",
            cycles.completed as f64 / seconds.as_secs_f64(),
        )
        .set("peak_in_flight", peak_inflight)
        .set("cycle_ms", latency_json(&mut cycles.latency))
        .set("start_lateness_ms", latency_json(&mut lateness))
        .set("server_cpu_us_per_cycle", per_cycle)
        .set("server_cpu_util", cpu.map(|us| us as f64 / 1e6 / elapsed))
        .set(
            "server",
            server_json(c.server_pid, before, after, peak, timeline),
        )
        .set("sockstat_before", sock_before)
        .set("sockstat_after", sock_after)
        .set("client", clock.json())
        .set("aborted", aborted)
        .done())
}

fn churn(args: &Args, c: &Common) -> Result<String, String> {
    let total: u64 = args.get("--total", 10_000)?;
    let hold_n: usize = args.get("--hold", 50)?;
    let parallel: usize = args.get("--parallel", 4usize)?.max(1);
    let seconds = c.seconds_or(600.0);
    let timeout = c.timeout_or(5.0);
    let mut net = Net::new(c)?;
    let mut rng = Rng::from_time(11);
    let sampler = Sampler::start(c.server_pid, c.rss_limit);
    let clock = ClientClock::start();
    let start_snap = Snap::take(c.server_pid);
    let t0 = Instant::now();
    // The held connections: plain, idle.
    let held_base = total;
    let mut held: HashMap<u64, Id> = HashMap::new();
    let mut held_lost: BTreeMap<String, u64> = BTreeMap::new();
    let mut opened = 0usize;
    for i in 0..hold_n as u64 {
        let id = net.connect(held_base + i, ConnOpts::keep(usize::MAX))?;
        held.insert(held_base + i, id);
    }
    while opened < hold_n && Instant::now() < t0 + c.setup_timeout {
        for ev in net.poll(Duration::from_millis(20))? {
            match ev {
                Ev::Open(_) => opened += 1,
                Ev::Done { id, end, .. } => {
                    held.remove(&id.tag);
                    tally(&mut held_lost, end.key());
                }
                _ => {}
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = Snap::take(c.server_pid);
    let sock_before = sockstat();
    eprintln!("churn: {opened} held; {total} cycles, {parallel} at a time");
    let mut cycles = Cycles::new(timeout, 16);
    let run_start = Instant::now();
    let run_end = run_start + seconds;
    let mut started = 0u64;
    let mut aborted = None;
    let mut next_report = run_start + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        if sampler.over_limit() {
            aborted = Some(format!("server VmRSS passed --rss-limit {}", c.rss_limit));
            break;
        }
        if now >= run_end {
            aborted = Some("--seconds passed before --total cycles".into());
            break;
        }
        while started < total && cycles.in_flight() < parallel {
            cycles.begin(&mut net, started, Instant::now());
            started += 1;
        }
        if started >= total && cycles.in_flight() == 0 {
            break;
        }
        if now >= next_report {
            next_report = now + Duration::from_secs(5);
            eprintln!(
                "churn: {} of {total} cycles done ({:.0}/s), server RSS {:.1} MiB",
                cycles.completed,
                cycles.completed as f64 / now.duration_since(run_start).as_secs_f64(),
                mb(c.server_pid.and_then(procfs::vm_rss_bytes).unwrap_or(0))
            );
        }
        net.expire(now);
        for ev in net.poll(Duration::from_millis(5))? {
            if !cycles.on_event(&mut net, &ev, &mut rng) {
                if let Ev::Done { id, end, .. } = ev {
                    held.remove(&id.tag);
                    tally(&mut held_lost, end.key());
                }
            }
        }
    }
    let run_secs = run_start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let after = Snap::take(c.server_pid);
    let sock_after = sockstat();
    // Are the held connections still there? One echo each.
    let mut verified = 0usize;
    let mut pending: HashMap<u64, Vec<u8>> = HashMap::new();
    for (&tag, &id) in &held {
        let mut plain = Vec::new();
        fill_random(&mut rng, &mut plain, 16);
        net.send_frame(id, 0x82, &plain, false);
        pending.insert(tag, plain);
    }
    let verify_end = Instant::now() + Duration::from_secs(5);
    while !pending.is_empty() && Instant::now() < verify_end {
        for ev in net.poll(Duration::from_millis(20))? {
            match ev {
                Ev::Frame { id, payload, .. }
                    if pending.get(&id.tag).is_some_and(|p| *p == payload) =>
                {
                    pending.remove(&id.tag);
                    verified += 1;
                }
                Ev::Done { id, end, .. } if pending.remove(&id.tag).is_some() => {
                    tally(&mut held_lost, end.key());
                }
                _ => {}
            }
        }
    }
    net.drop_all();
    let (peak, timeline) = sampler.finish();
    let growth = diff(before.rss, after.rss);
    let per_conn = growth
        .filter(|_| cycles.completed > 0)
        .map(|g| g as f64 / cycles.completed as f64);
    let cpu = diff(before.cpu_us, after.cpu_us);
    eprintln!(
        "churn: {} completed, {} refused, {} failed {:?} in {run_secs:.1} s; server RSS {:.1} -> {:.1} MiB \
         ({:?} B per cycle); {verified}/{} held still answer",
        cycles.completed,
        cycles.refused,
        cycles.failed_total(),
        cycles.failed,
        mb(before.rss.unwrap_or(0)),
        mb(after.rss.unwrap_or(0)),
        per_conn,
        held.len()
    );
    Ok(Obj::new()
        .set("mode", "churn")
        .set("total", total)
        .set("hold", hold_n)
        .set("held_opened", opened)
        .set("parallel", parallel)
        .set("seconds", run_secs)
        .set("started", started)
        .set("completed", cycles.completed)
        .set("refused_503", cycles.refused)
        .set("failed", cycles.failed_total())
        .set("failures", tally_json(&cycles.failed))
        .set("cycles_per_sec", cycles.completed as f64 / run_secs)
        .set("cycle_ms", latency_json(&mut cycles.latency))
        .set("held_verified", verified)
        .set("held_lost", tally_json(&held_lost))
        .set("rss_at_start", start_snap.rss)
        .set("rss_growth", growth)
        .set("rss_growth_per_cycle", per_conn)
        .set(
            "server_cpu_us_per_cycle",
            cpu.filter(|_| cycles.completed > 0)
                .map(|us| us as f64 / cycles.completed as f64),
        )
        .set(
            "server",
            server_json(c.server_pid, before, after, peak, timeline),
        )
        .set("sockstat_before", sock_before)
        .set("sockstat_after", sock_after)
        .set("client", clock.json())
        .set("aborted", aborted)
        .done())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    #[test]
    fn the_bomb_inflates_to_zeros_and_never_ends() {
        let size = 15 << 20;
        let bomb = deflate_bomb(size, 15);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert!(!bomb.ends_with(&pmd::SYNC_TAIL));
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(size + 1024);
        let status = d
            .decompress_vec(&bomb, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_ne!(status, flate2::Status::StreamEnd);
        assert_eq!(out.len(), size);
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_fragmented_echo_is_joined_before_it_is_checked() {
        let mut partial = None;
        // Binary, compressed (RSV1) first fragment, then two continuations.
        assert_eq!(join_fragments(&mut partial, 0x42, b"ab".to_vec()), None);
        assert_eq!(join_fragments(&mut partial, 0x00, b"cd".to_vec()), None);
        let whole = join_fragments(&mut partial, 0x80, b"e".to_vec());
        assert_eq!(whole, Some((0xc2, b"abcde".to_vec(), 3)));
        assert!(partial.is_none());
        // A whole frame passes as it is.
        let whole = join_fragments(&mut partial, 0x81, b"hi".to_vec());
        assert_eq!(whole, Some((0x81, b"hi".to_vec(), 1)));
        // A continuation with nothing begun comes back for check_echo to refuse.
        let stray = join_fragments(&mut partial, 0x80, b"x".to_vec());
        assert_eq!(stray, Some((0x80, b"x".to_vec(), 1)));
        let msg = Outgoing {
            opcode: 2,
            plain: b"x".to_vec(),
            sent_at: Instant::now(),
        };
        let mut shared = pmd::Shared::new(6);
        let checked = check_echo(0x80, b"x", &msg, None, &mut shared, &mut Vec::new());
        assert!(checked.is_err());
        // A new message inside a fragmented one: as it came (FIN clear), refused too.
        assert_eq!(join_fragments(&mut partial, 0x02, b"a".to_vec()), None);
        let nested = join_fragments(&mut partial, 0x02, b"b".to_vec());
        assert_eq!(nested, Some((0x02, b"b".to_vec(), 1)));
        let checked = check_echo(0x02, b"b", &msg, None, &mut shared, &mut Vec::new());
        assert!(checked.is_err());
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("8M"), Some(8 << 20));
        assert_eq!(parse_bytes("15MiB"), Some(15 << 20));
        assert_eq!(parse_bytes("60K"), Some(60 << 10));
        assert_eq!(parse_bytes("60000"), Some(60_000));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("x"), None);
    }

    #[test]
    fn stamps_round_trip_behind_a_prefix() {
        let m = stamped_message(42, 123_456_789, 200, b"xyz");
        assert_eq!(m.len(), 200);
        assert_eq!(read_stamp(&m), Some((42, 123_456_789)));
        let mut chat = b"guest-7: ".to_vec();
        chat.extend_from_slice(&m);
        assert_eq!(read_stamp(&chat), Some((42, 123_456_789)));
        assert_eq!(read_stamp(b"* guest-1 joined"), None);
    }

    #[test]
    fn frames_are_masked() {
        let mut out = Vec::new();
        client_frame(&mut out, 0x82, b"hello", [1, 2, 3, 4]);
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1], 0x80 | 5);
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        let mut p = out[6..].to_vec();
        wsreactor_bench::mask::apply(&mut p, [1, 2, 3, 4], 0);
        assert_eq!(p, b"hello");
    }
}
