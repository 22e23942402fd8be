//! What a client makes the loop hold comes back once the client has gone, however it
//! went: hundreds of clients doing legal and illegal things at random, then a hundred
//! thousand short connections through reused slots. Both read the loop's own gauges
//! after every turn (`spawn_watched`) instead of trusting any one cleanup path.

mod common;

use common::*;
use flate2::Compression;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use wsreactor::{
    CloseCode, CloseReason, Config, ConnId, Ctx, Decision, Handler, HttpResponse, Message, Request,
};

/// These tests lean on short timeouts and on the machine's two cores: run them one at a
/// time, so that none sees another's load as a stalled peer.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// The server side: echo, topics, broadcast, and a few commands that misbehave on purpose
// ---------------------------------------------------------------------------------------

/// Every message the handler fans out starts with this, so that a client can tell a
/// publication or broadcast from the echo it waits for.
const FANOUT: &str = "\u{1}fan ";

/// What the handler saw, for the test thread.
#[derive(Debug, Default)]
struct Counts {
    opened: AtomicUsize,
    closed: AtomicUsize,
    subscribed: AtomicUsize,
    floods: AtomicUsize,
}

/// Echoes every message; text commands: `sub:T` and `unsub:T` (topic T), `pub:T:x`
/// (publish to T), `all:x` (broadcast), `sleep:ms` (block the loop), each echoed after
/// it is done; `close` (close with 1000); `flood` (send 64 KiB messages until the queue
/// cap refuses one).
struct Chat {
    counts: Arc<Counts>,
}

impl Handler for Chat {
    type Session = ();

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<()> {
        match request.path() {
            "/chat" => Decision::accept(),
            "/plain" => Decision::accept().without_compression(),
            _ => Decision::Reject(HttpResponse::not_found()),
        }
    }

    fn on_http(&mut self, request: &Request<'_>) -> HttpResponse {
        match request.path() {
            "/" => HttpResponse::html(PAGE),
            _ => HttpResponse::not_found(),
        }
    }

    fn on_open(&mut self, _cx: &mut Ctx<'_>) {
        self.counts.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        if let Message::Text(text) = message {
            if text == "close" {
                return cx.close(CloseCode::NORMAL, "as asked").unwrap();
            }
            if text == "flood" {
                self.counts.floods.fetch_add(1, Ordering::SeqCst);
                let chunk = pattern(7, 64 * 1024);
                for _ in 0..64 {
                    if cx.send_binary(&chunk) == wsreactor::SendStatus::Refused {
                        break;
                    }
                }
                return;
            }
            if let Some(ms) = text.strip_prefix("sleep:").and_then(|ms| ms.parse().ok()) {
                // Keeps the loop busy, so that what clients do meanwhile is seen in one
                // batch of events, in the order it happened.
                std::thread::sleep(Duration::from_millis(ms).min(Duration::from_secs(1)));
            } else if let Some(topic) = text.strip_prefix("sub:") {
                if cx.subscribe(topic) {
                    self.counts.subscribed.fetch_add(1, Ordering::SeqCst);
                }
            } else if let Some(topic) = text.strip_prefix("unsub:") {
                cx.unsubscribe(topic);
            } else if let Some((topic, body)) = text
                .strip_prefix("pub:")
                .and_then(|rest| rest.split_once(':'))
            {
                let publication = format!("{FANOUT}{topic} {body}");
                let _ = cx.publish(topic, Message::Text(&publication));
            } else if let Some(body) = text.strip_prefix("all:") {
                let _ = cx.broadcast(Message::Text(&format!("{FANOUT}all {body}")));
            }
        }
        let _ = cx.send(message);
    }

    fn on_close(&mut self, _id: ConnId, _session: (), _reason: &CloseReason) {
        self.counts.closed.fetch_add(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// Randomness and sockets
// ---------------------------------------------------------------------------------------

/// xorshift64*: enough randomness to pick scripts, and the same scripts from the same
/// seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.between(lo as usize, hi as usize) as u64)
    }
}

/// What a client socket is given before it connects.
#[derive(Debug, Clone, Copy, Default)]
struct Setup {
    /// SO_RCVBUF, set before `connect` so that the window the client advertises stays
    /// small: a client that does not read then makes the server queue quickly.
    recv_buffer: Option<libc::c_int>,
}

fn set_int_option(
    stream: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a local that outlives the
    // call, on a descriptor the stream owns.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes closing the socket send a reset instead of a FIN: the abrupt way to go, and
/// the one that leaves no TIME_WAIT behind on this side. (`TcpStream::set_linger` is not
/// stable yet.)
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: as in `set_int_option`, with a `linger` struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

fn sockaddr_in(addr: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            // Network byte order is the order of the octets.
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// A blocking TCP connection to `addr` (IPv4) with `setup` applied before connecting,
/// timeouts both ways and Nagle off.
fn connect(addr: SocketAddr, setup: Setup) -> io::Result<TcpStream> {
    let SocketAddr::V4(v4) = addr else {
        panic!("the test server listens on IPv4");
    };
    // SAFETY: socket() makes a new descriptor, which the TcpStream owns from the next
    // line on (and closes on every path).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, open socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if let Some(size) = setup.recv_buffer {
        set_int_option(&stream, libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
    }
    let to = sockaddr_in(v4);
    // SAFETY: connect reads a sockaddr_in of the size we pass, from our stack.
    let rc = unsafe {
        libc::connect(
            fd,
            (&to as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

/// A frame from the server, inflated if it was compressed.
#[derive(Debug)]
struct Reply {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A raw WebSocket client whose every read and write returns an error instead of
/// panicking, so that one misbehaving client reports what it did and the rest go on.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// permessage-deflate was agreed.
    deflate: bool,
}

impl Client {
    fn new(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            deflate: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("write of {} bytes: {e}", bytes.len()))
    }

    /// Reads more; `false` at the end of the stream. A reset counts as the end: the
    /// server may close a socket with our unread input in it.
    fn fill(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 32 * 1024];
        loop {
            return match self.stream.read(&mut chunk) {
                Ok(0) => Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    Ok(false)
                }
                Err(e) => Err(format!("read: {e}")),
            };
        }
    }

    fn need(&mut self, n: usize, what: &str) -> Result<(), String> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(format!(
                    "EOF inside {what} ({} of {n} bytes)",
                    self.buf.len()
                ));
            }
        }
        Ok(())
    }

    /// An HTTP response head (and its body, if it has a length): the status and the
    /// header lines.
    fn read_head(&mut self) -> Result<(u16, Vec<(String, String)>), String> {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > 64 * 1024 || !self.fill()? {
                return Err(format!(
                    "no response head: {:?}",
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                ));
            }
        };
        let head: Vec<u8> = self.buf.drain(..end).collect();
        let head = String::from_utf8(head).map_err(|_| "response head is not UTF-8")?;
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        if let Some((_, len)) = headers.iter().find(|(name, _)| name == "content-length") {
            let len: usize = len.parse().map_err(|_| "bad Content-Length")?;
            self.need(len, "the response body")?;
            self.buf.drain(..len);
        }
        Ok((status, headers))
    }

    /// Reads the answer to an upgrade request: a 101 with the right accept key, and
    /// permessage-deflate agreed exactly when it should be.
    fn check_upgrade(&mut self, key: &str, deflate_expected: bool) -> Result<(), String> {
        let (status, headers) = self.read_head()?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if status != 101 {
            return Err(format!("upgrade answered {status}"));
        }
        if header("sec-websocket-accept") != Some(expected_accept(key).as_str()) {
            return Err(format!("bad accept key in {headers:?}"));
        }
        self.deflate = header("sec-websocket-extensions")
            .is_some_and(|value| value.starts_with("permessage-deflate"));
        if self.deflate != deflate_expected {
            return Err(format!(
                "permessage-deflate agreed: {}, expected {deflate_expected}",
                self.deflate
            ));
        }
        Ok(())
    }

    /// One frame, or `None` at the end of the stream between frames.
    fn read_frame(&mut self) -> Result<Option<Reply>, String> {
        if self.buf.is_empty() && !self.fill()? {
            return Ok(None);
        }
        self.need(2, "a frame header")?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        if b1 & 0x80 != 0 {
            return Err("the server sent a masked frame".into());
        }
        let (len, header_len) = match b1 & 0x7F {
            126 => {
                self.need(4, "a 16-bit length")?;
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                self.need(10, "a 64-bit length")?;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.buf[2..10]);
                let len = u64::from_be_bytes(bytes);
                if len > 64 << 20 {
                    return Err(format!("the server announced a {len}-byte frame"));
                }
                (len as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        self.need(header_len + len, "a frame payload")?;
        let frame: Vec<u8> = self.buf.drain(..header_len + len).collect();
        let (fin, rsv, opcode) = (b0 & 0x80 != 0, (b0 >> 4) & 0x7, b0 & 0x0F);
        let mut payload = frame[header_len..].to_vec();
        match rsv {
            0 => {}
            0b100 if self.deflate && matches!(opcode, TEXT | BINARY) => {
                payload = inflate(&payload)?;
            }
            _ => return Err(format!("frame with RSV bits {rsv:#05b}, opcode {opcode}")),
        }
        Ok(Some(Reply {
            fin,
            opcode,
            payload,
        }))
    }

    /// The next frame that is not a keepalive ping (answered) or a publication or
    /// broadcast (dropped): what this client's own actions caused.
    fn next(&mut self) -> Result<Option<Reply>, String> {
        for _ in 0..100_000 {
            let Some(reply) = self.read_frame()? else {
                return Ok(None);
            };
            match reply.opcode {
                PING => {
                    // A live client answers; the server may have closed already.
                    let _ = self.stream.write_all(&frame(true, PONG, &reply.payload));
                }
                TEXT if reply.payload.starts_with(FANOUT.as_bytes()) => {}
                _ => return Ok(Some(reply)),
            }
        }
        Err("flooded with fanout".into())
    }

    fn expect_echo(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        match self.next()? {
            Some(reply) if reply.fin && reply.opcode == opcode && reply.payload == payload => {
                Ok(())
            }
            Some(reply) => Err(format!(
                "expected the echo of {} bytes (opcode {opcode}), got fin {} opcode {} with {} bytes{}",
                payload.len(),
                reply.fin,
                reply.opcode,
                reply.payload.len(),
                close_code_of(&reply)
                    .map(|code| format!(" (close {code})"))
                    .unwrap_or_default(),
            )),
            None => Err(format!("EOF instead of the echo of {} bytes", payload.len())),
        }
    }

    fn expect_pong(&mut self, payload: &[u8]) -> Result<(), String> {
        match self.next()? {
            Some(reply) if reply.opcode == PONG && reply.payload == payload => Ok(()),
            other => Err(format!("expected a pong, got {other:?}")),
        }
    }

    /// Reads up to the server's close frame (skipping data sent before it) and checks
    /// its code; `None`: a close frame without a code.
    fn expect_close(&mut self, code: Option<u16>) -> Result<(), String> {
        for _ in 0..100_000 {
            let Some(reply) = self.next()? else {
                return Err(format!("EOF instead of a close frame with {code:?}"));
            };
            if reply.opcode != CLOSE {
                continue;
            }
            let got = close_code_of(&reply);
            return if got == code {
                Ok(())
            } else {
                Err(format!(
                    "expected close {code:?}, got {got:?} ({:?})",
                    String::from_utf8_lossy(reply.payload.get(2..).unwrap_or_default())
                ))
            };
        }
        Err("no close frame in 100,000 frames".into())
    }

    /// Checks that the server ends the stream with nothing more to say.
    fn expect_eof(&mut self) -> Result<(), String> {
        if !self.buf.is_empty() || self.fill()? {
            return Err(format!(
                "expected EOF, got {} more bytes: {:?}",
                self.buf.len(),
                &self.buf[..self.buf.len().min(32)]
            ));
        }
        Ok(())
    }

    /// Goes: with a FIN, or with a reset.
    fn leave(self, reset: bool) {
        if reset {
            reset_on_close(&self.stream);
        }
    }
}

fn close_code_of(reply: &Reply) -> Option<u16> {
    (reply.opcode == CLOSE && reply.payload.len() >= 2)
        .then(|| u16::from_be_bytes([reply.payload[0], reply.payload[1]]))
}

/// A fresh 16-byte key, base64.
fn random_key(rng: &mut Rng) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..16).map(|_| rng.next() as u8).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Connects and upgrades on `path`, offering `extensions` if given; checks the 101.
fn open(
    addr: SocketAddr,
    setup: Setup,
    path: &str,
    extensions: Option<&str>,
    key: &str,
) -> Result<Client, String> {
    let stream = connect(addr, setup).map_err(|e| format!("connect: {e}"))?;
    let mut client = Client::new(stream);
    let offer = extensions
        .map(|offer| format!("Sec-WebSocket-Extensions: {offer}\r\n"))
        .unwrap_or_default();
    client.send(upgrade_request(path, key, &offer).as_bytes())?;
    client.check_upgrade(key, extensions.is_some() && path == "/chat")?;
    Ok(client)
}

// ---------------------------------------------------------------------------------------
// Test 1: every kind of client, then every count back at zero
// ---------------------------------------------------------------------------------------

const CLIENT_THREADS: usize = 6;
const CLIENTS_PER_THREAD: usize = 34;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
const CLOSE_TIMEOUT: Duration = Duration::from_millis(300);
const MESSAGE_TIMEOUT: Duration = Duration::from_millis(400);
/// Added to a server timeout before a parked client checks that it fired.
const MARGIN: Duration = Duration::from_millis(100);

/// Short timeouts, so that the clients that stall are dealt with while the test runs;
/// small queues, so that a client that does not read soon makes the server queue,
/// stall and give up.
fn chaos_config() -> Config {
    Config {
        handshake_timeout: HANDSHAKE_TIMEOUT,
        close_timeout: CLOSE_TIMEOUT,
        message_timeout: MESSAGE_TIMEOUT,
        idle_timeout: Duration::from_secs(1),
        pong_timeout: Duration::from_millis(500),
        send_stall_timeout: Duration::from_millis(500),
        max_message_size: 1 << 20,
        max_send_queue: 1 << 20,
        write_high_water: 256 << 10,
        max_header_bytes: 4096,
        deflate: true,
        ..Config::default()
    }
}

/// How a client's WebSocket ends (chosen first: a client that will not read gets a
/// small receive buffer before it connects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Close handshake begun by the client.
    CleanClose,
    /// The client asks the server to close, and answers its close.
    ServerClose,
    /// The client asks the server to close, and never answers.
    ServerCloseUnanswered,
    /// TCP goes, with no close handshake.
    Abrupt,
    /// The start of a message (a fragment, or part of a frame), then a stall or a
    /// disconnect.
    MidMessage,
    /// The start of a fragmented message, then a close frame (legal).
    CloseInMessage,
    /// A close frame, then a disconnect before the server's answer.
    MidClose,
    /// Something RFC 6455 forbids.
    Violation,
    /// Asks for a flood and reads none of it, then goes.
    NotReading,
}

fn pick_ending(rng: &mut Rng) -> Ending {
    match rng.below(100) {
        0..=17 => Ending::CleanClose,
        18..=25 => Ending::ServerClose,
        26..=30 => Ending::ServerCloseUnanswered,
        31..=40 => Ending::Abrupt,
        41..=53 => Ending::MidMessage,
        54..=57 => Ending::CloseInMessage,
        58..=63 => Ending::MidClose,
        64..=92 => Ending::Violation,
        _ => Ending::NotReading,
    }
}

/// What becomes of a connection a script left open, once its moment comes.
#[derive(Debug)]
enum Then {
    /// Go, abruptly (before the server's timeout, or instead of it).
    Leave { reset: bool },
    /// The server must have ended the connection by now, with nothing more to say.
    Eof,
    /// The server must have sent a close frame with this code and ended the connection.
    Close(u16),
}

struct Parked {
    client: Client,
    at: Instant,
    then: Then,
    /// Index of the client's trace in the thread's report.
    script: usize,
}

#[derive(Default)]
struct ThreadReport {
    failures: Vec<String>,
    traces: Vec<String>,
    compressed_sent: usize,
    echoes: usize,
    violations: usize,
}

/// One thread's clients, one after another, while the connections some of them left
/// stalled wait for their moment.
fn client_thread(addr: SocketAddr, seed: u64, thread: usize) -> ThreadReport {
    let mut rng = Rng::new(seed ^ (thread as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut report = ThreadReport::default();
    let mut parked: Vec<Parked> = Vec::new();
    for i in 0..CLIENTS_PER_THREAD {
        let mut trace = format!("client {thread}.{i}:");
        let script = report.traces.len();
        let result = run_client(addr, &mut rng, &mut trace, &mut parked, script, &mut report);
        if let Err(e) = result {
            report.failures.push(format!("{trace} -> {e}"));
        }
        report.traces.push(trace);
        let now = Instant::now();
        let (due, later): (Vec<Parked>, Vec<Parked>) =
            parked.into_iter().partition(|p| p.at <= now);
        parked = later;
        for p in due {
            settle_parked(p, &mut report);
        }
    }
    parked.sort_by_key(|p| p.at);
    for p in parked {
        std::thread::sleep(p.at.saturating_duration_since(Instant::now()));
        settle_parked(p, &mut report);
    }
    report
}

fn settle_parked(parked: Parked, report: &mut ThreadReport) {
    let Parked {
        mut client, then, ..
    } = parked;
    let result = match then {
        Then::Leave { reset } => {
            client.leave(reset);
            Ok(())
        }
        Then::Eof => client.expect_eof(),
        Then::Close(code) => client
            .expect_close(Some(code))
            .and_then(|()| client.expect_eof()),
    };
    if let Err(e) = result {
        let trace = &report.traces[parked.script];
        report.failures.push(format!("{trace} -> later: {e}"));
    }
}

/// Adds a word to a client's trace.
fn note(trace: &mut String, what: impl std::fmt::Display) {
    trace.push(' ');
    trace.push_str(&what.to_string());
}

fn run_client(
    addr: SocketAddr,
    rng: &mut Rng,
    trace: &mut String,
    parked: &mut Vec<Parked>,
    script: usize,
    report: &mut ThreadReport,
) -> Result<(), String> {
    let ending = pick_ending(rng);
    if rng.chance(22) {
        return handshake_trouble(addr, rng, trace, parked, script);
    }
    let not_reading = ending == Ending::NotReading;
    let setup = Setup {
        recv_buffer: not_reading.then_some(4096),
    };
    let path = if rng.chance(15) { "/plain" } else { "/chat" };
    let offer = (!not_reading && rng.chance(55)).then(|| {
        if rng.chance(50) {
            "permessage-deflate"
        } else {
            "permessage-deflate; client_max_window_bits"
        }
    });
    let key = random_key(rng);
    let stream = connect(addr, setup).map_err(|e| format!("connect: {e}"))?;
    let mut client = Client::new(stream);
    let extensions = offer
        .map(|offer| format!("Sec-WebSocket-Extensions: {offer}\r\n"))
        .unwrap_or_default();
    let mut request = upgrade_request(path, &key, &extensions).into_bytes();
    const BEHIND: &[u8] = b"right behind the request";
    let behind = rng.chance(15);
    if behind {
        request.extend_from_slice(&frame(true, TEXT, BEHIND));
    }
    note(trace, format_args!("upgrade {path} offer={offer:?}"));
    if rng.chance(20) {
        let mut cuts: Vec<usize> = (0..rng.between(1, 3))
            .map(|_| rng.below(request.len()))
            .collect();
        cuts.sort_unstable();
        cuts.push(request.len());
        note(trace, format_args!("in pieces {cuts:?}"));
        let mut from = 0;
        for to in cuts {
            client.send(&request[from..to])?;
            from = to;
        }
    } else {
        client.send(&request)?;
    }
    client.check_upgrade(&key, offer.is_some() && path == "/chat")?;
    if behind {
        note(trace, "frame-behind-request");
        client.expect_echo(TEXT, BEHIND)?;
        report.echoes += 1;
    }
    for _ in 0..rng.below(6) {
        operation(&mut client, rng, trace, report)?;
    }
    note(trace, format_args!("then {ending:?}"));
    end(client, ending, rng, trace, parked, script, report)
}

/// Clients that never get as far as a WebSocket: half a request, none, or one the
/// server answers with a page or an error.
fn handshake_trouble(
    addr: SocketAddr,
    rng: &mut Rng,
    trace: &mut String,
    parked: &mut Vec<Parked>,
    script: usize,
) -> Result<(), String> {
    let stream = connect(addr, Setup::default()).map_err(|e| format!("connect: {e}"))?;
    let mut client = Client::new(stream);
    let key = random_key(rng);
    let request = upgrade_request("/chat", &key, "").into_bytes();
    let roll = rng.below(100);
    if roll < 65 {
        // Half a request (or nothing), then gone or stalled.
        let sent = if roll < 45 {
            rng.between(1, request.len() - 1)
        } else {
            0
        };
        client.send(&request[..sent])?;
        note(
            trace,
            format_args!("sent {sent} of {} request bytes", request.len()),
        );
        if rng.chance(50) {
            let reset = rng.chance(50);
            note(trace, format_args!("then gone (reset {reset})"));
            client.leave(reset);
        } else if rng.chance(50) {
            note(trace, "then stalls until the handshake timeout");
            parked.push(Parked {
                client,
                at: Instant::now() + HANDSHAKE_TIMEOUT + MARGIN,
                then: Then::Eof,
                script,
            });
        } else {
            let reset = rng.chance(50);
            let after = rng.millis(0, 400);
            note(
                trace,
                format_args!("then stalls {after:?} and goes (reset {reset})"),
            );
            parked.push(Parked {
                client,
                at: Instant::now() + after,
                then: Then::Leave { reset },
                script,
            });
        }
        return Ok(());
    }
    let wrong_version = upgrade_request("/chat", &key, "").replace("Version: 13", "Version: 8");
    let no_key = "GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_owned();
    let padded = upgrade_request("/chat", &key, &format!("X-Pad: {}\r\n", "p".repeat(5000)));
    let (what, request, status) = match rng.below(7) {
        0 => (
            "page",
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned(),
            200,
        ),
        1 => ("unknown path", upgrade_request("/nope", &key, ""), 404),
        2 => ("no key", no_key, 400),
        3 => ("version 8", wrong_version, 426),
        4 => (
            "POST",
            "POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".to_owned(),
            405,
        ),
        5 => ("garbage", "\u{7}garbage\r\n\r\n".to_owned(), 400),
        _ => ("head too large", padded, 431),
    };
    note(trace, format_args!("HTTP {what}"));
    // The server may answer (431) before it has all of it: a failed write is fine.
    let _ = client.stream.write_all(request.as_bytes());
    match rng.below(5) {
        0 => {
            note(trace, "gone before the answer");
            client.leave(rng.chance(50));
            return Ok(());
        }
        1 => {
            note(trace, "reads the answer, then gone");
            check_status(&mut client, status)?;
            client.leave(rng.chance(50));
        }
        _ => {
            note(trace, "reads the answer and EOF");
            check_status(&mut client, status)?;
            client.expect_eof()?;
        }
    }
    Ok(())
}

fn check_status(client: &mut Client, expected: u16) -> Result<(), String> {
    let (status, _) = client.read_head()?;
    if status == expected {
        Ok(())
    } else {
        Err(format!("HTTP {status}, expected {expected}"))
    }
}

/// A message as frames: `pieces` fragments of `wire` (compressed when `compressed`),
/// with pings or pongs between fragments now and then. Returns the bytes and the
/// payloads of the pings, whose pongs come before the echo.
fn fragments(
    rng: &mut Rng,
    opcode: u8,
    wire: &[u8],
    pieces: usize,
    compressed: bool,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut cuts: Vec<usize> = (1..pieces).map(|_| rng.below(wire.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(wire.len());
    let mut out = Vec::with_capacity(wire.len() + 64);
    let mut pings = Vec::new();
    let mut from = 0;
    for (i, &to) in cuts.iter().enumerate() {
        let last = i + 1 == cuts.len();
        let (rsv, opcode) = match i {
            0 if compressed => (RSV1, opcode),
            0 => (0, opcode),
            _ => (0, CONTINUATION),
        };
        out.extend_from_slice(&client_frame(last, rsv, opcode, &wire[from..to]));
        from = to;
        if !last && rng.chance(30) {
            let payload = pattern(rng.next(), rng.below(126));
            if rng.chance(60) {
                out.extend_from_slice(&frame(true, PING, &payload));
                pings.push(payload);
            } else {
                out.extend_from_slice(&frame(true, PONG, &payload));
            }
        }
    }
    (out, pings)
}

/// A random message: text or binary, 0 to 200,000 bytes, sometimes fragmented, with
/// control frames between fragments, compressed when agreed (and the dice say so).
fn random_message(rng: &mut Rng, deflate: bool) -> (u8, Vec<u8>, Vec<u8>, Vec<Vec<u8>>, bool) {
    let len = match rng.below(100) {
        0..=39 => rng.between(0, 125),
        40..=74 => rng.between(126, 4000),
        75..=94 => rng.between(4001, 65_535),
        _ => rng.between(65_536, 200_000),
    };
    let text = rng.chance(50);
    let (opcode, payload) = if text {
        (TEXT, text_of_len(len).into_bytes())
    } else {
        (BINARY, pattern(rng.next(), len))
    };
    let compressed = deflate && rng.chance(60);
    let wire = if compressed {
        compress(&payload, Compression::fast())
    } else {
        payload.clone()
    };
    let pieces = if rng.chance(30) { rng.between(2, 4) } else { 1 };
    let (bytes, pings) = fragments(rng, opcode, &wire, pieces, compressed);
    (opcode, payload, bytes, pings, compressed)
}

/// A text message as one frame, compressed now and then when agreed.
fn text_frame(client: &Client, rng: &mut Rng, text: &str) -> Vec<u8> {
    if client.deflate && rng.chance(50) {
        compressed_frame(true, TEXT, &compress(text.as_bytes(), Compression::fast()))
    } else {
        frame(true, TEXT, text.as_bytes())
    }
}

/// One legal thing an open client does, checking the server's answer.
fn operation(
    client: &mut Client,
    rng: &mut Rng,
    trace: &mut String,
    report: &mut ThreadReport,
) -> Result<(), String> {
    let topic = format!("t{}", rng.below(3));
    let command = match rng.below(100) {
        0..=54 => {
            let (opcode, payload, bytes, pings, compressed) = random_message(rng, client.deflate);
            note(
                trace,
                format_args!(
                    "msg(op {opcode}, {} B, {} B on the wire, z {compressed}, {} pings)",
                    payload.len(),
                    bytes.len(),
                    pings.len()
                ),
            );
            report.compressed_sent += usize::from(compressed);
            // One write: the fragments arrive together, however busy the machine is,
            // so the message timeout never sees a legal message as stalled.
            client.send(&bytes)?;
            for ping in pings {
                client.expect_pong(&ping)?;
            }
            client.expect_echo(opcode, &payload)?;
            report.echoes += 1;
            return Ok(());
        }
        55..=64 => {
            let payload = pattern(rng.next(), rng.below(126));
            note(trace, format_args!("ping({} B)", payload.len()));
            client.send(&frame(true, PING, &payload))?;
            return client.expect_pong(&payload);
        }
        65..=74 => format!("sub:{topic}"),
        75..=79 => format!("unsub:{topic}"),
        80..=93 => format!("pub:{topic}:{}", "x".repeat(rng.below(300))),
        _ => format!("all:{}", "y".repeat(rng.below(300))),
    };
    note(trace, &command[..command.len().min(10)]);
    let bytes = text_frame(client, rng, &command);
    client.send(&bytes)?;
    client.expect_echo(TEXT, command.as_bytes())?;
    report.echoes += 1;
    Ok(())
}

/// Something RFC 6455 forbids, and the close code it must get. `mid_message`: a
/// fragmented message is open (some violations only mean something outside one).
fn violation(rng: &mut Rng, deflate: bool, mid_message: bool) -> (&'static str, Vec<u8>, u16) {
    let key = Some(next_key());
    let choices = if mid_message { 8 } else { 16 };
    match rng.below(choices) {
        0 => ("unmasked frame", raw_frame(0x81, None, b"hi"), 1002),
        1 => {
            let opcode = if rng.chance(50) { 0x3 } else { 0xB };
            ("reserved opcode", raw_frame(0x80 | opcode, key, b""), 1002)
        }
        2 => ("RSV2", raw_frame(0x80 | 0x20 | BINARY, key, b"x"), 1002),
        3 => ("fragmented ping", frame(false, PING, b""), 1002),
        4 => ("ping over 125 bytes", frame(true, PING, &[0; 126]), 1002),
        5 => ("one-byte close", frame(true, CLOSE, &[3]), 1002),
        6 => {
            let code = [999, 1005, 1006, 1015, 2999, 5000][rng.below(6)];
            (
                "reserved close code",
                frame(true, CLOSE, &close_payload(code, b"")),
                1002,
            )
        }
        7 => (
            "close reason not UTF-8",
            frame(true, CLOSE, &close_payload(1000, b"\xff")),
            1007,
        ),
        8 => ("lone continuation", frame(true, CONTINUATION, b"x"), 1002),
        9 => {
            let mut bytes = frame(false, TEXT, b"ab");
            bytes.extend_from_slice(&frame(true, BINARY, b"c"));
            ("new message inside a fragmented one", bytes, 1002)
        }
        10 => ("invalid UTF-8", frame(true, TEXT, b"ok \xff\xfe"), 1007),
        11 => {
            // "é" is C3 A9: the second fragment breaks the character the first began.
            let mut bytes = frame(false, TEXT, b"\xc3");
            bytes.extend_from_slice(&frame(true, CONTINUATION, b"A"));
            ("invalid UTF-8 across fragments", bytes, 1007)
        }
        12 => {
            let mut bytes = header(0x82, key, 2 << 20);
            bytes.extend_from_slice(&[0; 100]);
            ("message over max_message_size", bytes, 1009)
        }
        13 => {
            let mut bytes = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
            bytes.extend_from_slice(&next_key());
            ("64-bit length with the top bit", bytes, 1002)
        }
        _ if deflate && rng.chance(50) => (
            "compressed invalid UTF-8",
            raw_frame(
                0x80 | 0x40 | TEXT,
                key,
                &compress(b"bad \xff\xfe\xfd", Compression::fast()),
            ),
            1007,
        ),
        _ if deflate => (
            "corrupt DEFLATE data",
            raw_frame(0x80 | 0x40 | BINARY, key, &[0xff; 32]),
            1007,
        ),
        _ => (
            "RSV1 without permessage-deflate",
            raw_frame(0x80 | 0x40 | TEXT, key, b"hello"),
            1002,
        ),
    }
}

/// The start of a message that does not finish: a first fragment, or a frame (or
/// frame header) cut short.
fn unfinished_message(rng: &mut Rng, deflate: bool) -> (&'static str, Vec<u8>) {
    let body = pattern(rng.next(), rng.between(1, 20_000));
    match rng.below(3) {
        0 if deflate => (
            "compressed first fragment",
            compressed_frame(false, BINARY, &compress(&body, Compression::fast())),
        ),
        0 | 1 => ("first fragment", frame(false, BINARY, &body)),
        _ => {
            let mut bytes = frame(true, BINARY, &body);
            let cut = rng.between(1, bytes.len() - 1);
            bytes.truncate(cut);
            ("frame cut short", bytes)
        }
    }
}

fn end(
    mut client: Client,
    ending: Ending,
    rng: &mut Rng,
    trace: &mut String,
    parked: &mut Vec<Parked>,
    script: usize,
    report: &mut ThreadReport,
) -> Result<(), String> {
    let reset = rng.chance(50);
    match ending {
        Ending::CleanClose => {
            let (payload, code) = match rng.below(4) {
                0 => (close_payload(1000, b""), Some(1000)),
                1 => (close_payload(1001, b"bye"), Some(1001)),
                2 => (close_payload(4000, "é".as_bytes()), Some(4000)),
                _ => (Vec::new(), None),
            };
            client.send(&frame(true, CLOSE, &payload))?;
            client.expect_close(code)?;
            client.expect_eof()?;
            client.leave(reset);
        }
        Ending::ServerClose | Ending::ServerCloseUnanswered => {
            let bytes = text_frame(&client, rng, "close");
            client.send(&bytes)?;
            client.expect_close(Some(1000))?;
            if ending == Ending::ServerClose {
                client.send(&frame(true, CLOSE, &close_payload(1000, b"")))?;
                client.expect_eof()?;
                client.leave(reset);
            } else if rng.chance(50) {
                note(trace, "waits out the close timeout");
                parked.push(Parked {
                    client,
                    at: Instant::now() + CLOSE_TIMEOUT + MARGIN,
                    then: Then::Eof,
                    script,
                });
            } else {
                note(trace, format_args!("gone (reset {reset})"));
                client.leave(reset);
            }
        }
        Ending::Abrupt => {
            if rng.chance(40) {
                // With an echo on its way that nobody will read.
                let (_, _, bytes, _, _) = random_message(rng, client.deflate);
                client.send(&bytes)?;
            }
            note(trace, format_args!("reset {reset}"));
            client.leave(reset);
        }
        Ending::MidMessage => {
            let (what, mut bytes) = unfinished_message(rng, client.deflate);
            if rng.chance(30) && what != "frame cut short" {
                // Pings are not progress: the message still times out.
                bytes.extend_from_slice(&frame(true, PING, b"still here"));
            }
            note(trace, what);
            client.send(&bytes)?;
            if rng.chance(40) {
                note(trace, format_args!("then gone (reset {reset})"));
                client.leave(reset);
            } else {
                note(trace, "then stalls until the message timeout");
                parked.push(Parked {
                    client,
                    at: Instant::now() + MESSAGE_TIMEOUT + MARGIN,
                    then: Then::Close(1008),
                    script,
                });
            }
        }
        Ending::CloseInMessage => {
            let mut bytes = frame(false, TEXT, text_of_len(rng.between(1, 5000)).as_bytes());
            bytes.extend_from_slice(&frame(true, CLOSE, &close_payload(1000, b"")));
            client.send(&bytes)?;
            client.expect_close(Some(1000))?;
            client.expect_eof()?;
            client.leave(reset);
        }
        Ending::MidClose => {
            client.send(&frame(true, CLOSE, &close_payload(1000, b"")))?;
            note(
                trace,
                format_args!("gone before the answer (reset {reset})"),
            );
            client.leave(reset);
        }
        Ending::Violation => {
            let mid_message = rng.chance(30);
            let mut bytes = Vec::new();
            if mid_message {
                bytes = frame(false, BINARY, &pattern(rng.next(), rng.between(1, 3000)));
            }
            let (what, violation, code) = violation(rng, client.deflate, mid_message);
            bytes.extend_from_slice(&violation);
            note(trace, format_args!("{what} (mid-message {mid_message})"));
            report.violations += 1;
            client.send(&bytes)?;
            match rng.below(10) {
                0..=2 => {
                    note(
                        trace,
                        format_args!("gone before the answer (reset {reset})"),
                    );
                    client.leave(reset);
                }
                3..=5 => {
                    client.expect_close(Some(code))?;
                    let _ = client
                        .stream
                        .write_all(&frame(true, CLOSE, &close_payload(code, b"")));
                    client.expect_eof()?;
                }
                _ => {
                    client.expect_close(Some(code))?;
                    client.expect_eof()?;
                    client.leave(reset);
                }
            }
        }
        Ending::NotReading => {
            client.send(&frame(true, TEXT, b"flood"))?;
            for _ in 0..rng.below(3) {
                client.send(&frame(true, BINARY, &pattern(rng.next(), 100)))?;
            }
            let after = rng.millis(0, 1500);
            note(trace, format_args!("reads nothing, gone after {after:?}"));
            parked.push(Parked {
                client,
                at: Instant::now() + after,
                then: Then::Leave { reset },
                script,
            });
        }
    }
    Ok(())
}

/// The seed of this run: `WSREACTOR_LEAK_SEED`, or one from the clock.
fn seed() -> u64 {
    std::env::var("WSREACTOR_LEAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// The gauges that must all be back at zero once every client has gone, with their
/// values now.
fn held(stats: &WatchedStats) -> [(&'static str, u64); 8] {
    let now = &stats.now;
    [
        ("open_connections", now.open_connections),
        ("connections", stats.connections as u64),
        ("handshakes_in_progress", now.handshakes_in_progress),
        ("deadline_entries", now.deadline_entries),
        ("incoming_bytes", now.incoming_bytes),
        ("outgoing_bytes", now.outgoing_bytes),
        ("topic_memberships", now.topic_memberships),
        ("inflaters_lent", now.inflaters_lent),
    ]
}

fn still_held(stats: &WatchedStats) -> Vec<(&'static str, u64)> {
    held(stats)
        .into_iter()
        .filter(|&(_, value)| value != 0)
        .collect()
}

/// The highest value each gauge reached while the clients ran (sampled every few
/// milliseconds, so a peak shorter than that may be missed): printed, to show what the
/// clients made the server hold.
#[derive(Debug)]
struct Peaks([(&'static str, u64); 8]);

impl Peaks {
    fn new() -> Peaks {
        Peaks(held(&WatchedStats::default()))
    }

    fn note(&mut self, stats: &WatchedStats) {
        for (peak, (_, value)) in self.0.iter_mut().zip(held(stats)) {
            peak.1 = peak.1.max(value);
        }
    }
}

fn closes_with(stats: &wsreactor::Stats, code: u16) -> u64 {
    stats
        .closes
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(0, |(_, n)| *n)
}

#[test]
fn after_every_kind_of_client_has_gone_every_held_resource_is_back_to_zero() {
    let _alone = one_at_a_time();
    let counts = Arc::new(Counts::default());
    let server = spawn_watched(
        chaos_config(),
        Chat {
            counts: counts.clone(),
        },
    );
    let seed = seed();
    eprintln!("seed {seed} (WSREACTOR_LEAK_SEED={seed} repeats these scripts)");
    let started = Instant::now();
    let addr = server.addr;
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|thread| {
            std::thread::Builder::new()
                .name(format!("leak-clients-{thread}"))
                .spawn(move || client_thread(addr, seed, thread))
                .expect("spawn a client thread")
        })
        .collect();
    let mut peaks = Peaks::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !threads.iter().all(|t| t.is_finished()) {
        assert!(Instant::now() < deadline, "clients still busy after 120 s");
        peaks.note(&server.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
    let reports: Vec<ThreadReport> = threads
        .into_iter()
        .map(|t| t.join().expect("a client thread panicked"))
        .collect();
    let clients_took = started.elapsed();
    let failures: Vec<&String> = reports.iter().flat_map(|r| &r.failures).collect();

    // Every client has gone. What the server still holds must go too, within its
    // timeouts (the longest is 500 ms) and a generous margin for a busy machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = server.stats();
        if still_held(&stats).is_empty() {
            break stats;
        }
        if Instant::now() > deadline {
            let traces: Vec<&String> = reports.iter().flat_map(|r| &r.traces).collect();
            panic!(
                "seed {seed}: 10 s after the last client went, the server still holds {:?}\n\
                 stats: {stats:#?}\npeaks while clients ran: {peaks:?}\n\
                 client failures: {failures:#?}\nscripts: {traces:#?}",
                still_held(&stats)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let all_gone = started.elapsed();
    assert!(
        failures.is_empty(),
        "seed {seed}: {} clients saw the server misbehave: {failures:#?}",
        failures.len()
    );
    let now = &stats.now;
    eprintln!(
        "{} clients in {clients_took:?}, all held resources back at zero after {all_gone:?}\n\
         {now}\npeaks: {peaks:?}, max incoming/outgoing bytes {}/{}, max deadline entries {}",
        CLIENT_THREADS * CLIENTS_PER_THREAD,
        stats.max_incoming_bytes,
        stats.max_outgoing_bytes,
        stats.max_deadline_entries,
    );

    // It cannot pass for want of trying: the clients did what they were meant to. (Each
    // count below stays at zero in fewer than one run in 10,000, by the odds the
    // scripts are picked with; 1007 is left out for that reason.)
    let opened = counts.opened.load(Ordering::SeqCst) as u64;
    let closed = counts.closed.load(Ordering::SeqCst) as u64;
    assert_eq!(
        (opened, closed),
        (now.handshakes, now.handshakes),
        "on_open / on_close calls"
    );
    assert!(now.handshakes > 100, "{now}");
    assert!(now.http_responses > 0, "{now}");
    assert!(now.messages_in > 100 && now.messages_out > 100, "{now}");
    assert!(now.message_timeouts > 0, "{now}");
    for code in [1000, 1002, 1006, 1008] {
        assert!(closes_with(now, code) > 0, "no close with {code}: {now}");
    }
    assert!(now.fanout_deliveries > 0, "{now}");
    assert!(counts.subscribed.load(Ordering::SeqCst) > 0);
    assert!(counts.floods.load(Ordering::SeqCst) > 0);
    assert!(stats.max_outgoing_bytes > 0 && stats.max_incoming_bytes > 0);
    let sent: usize = reports.iter().map(|r| r.compressed_sent).sum();
    let echoes: usize = reports.iter().map(|r| r.echoes).sum();
    let violations: usize = reports.iter().map(|r| r.violations).sum();
    assert!(
        sent > 0 && echoes > 100 && violations > 20,
        "{sent} {echoes} {violations}"
    );
}

// ---------------------------------------------------------------------------------------
// Test 2: connection churn through reused slots, and the deadline heap
// ---------------------------------------------------------------------------------------

/// Upgraded connections that stay open (and idle) through the churn.
const HELD: usize = 50;
/// Short connections at once: few, so that they go through the same few slots.
const CHURN_THREADS: usize = 6;

/// How many short connections go through: `WSREACTOR_CHURN` if set, else 100,000.
fn churn_cycles() -> usize {
    std::env::var("WSREACTOR_CHURN")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// What the short connections send, each in one write, and what they must read back
/// after the 101 (server frames: `81 01 'e'` is the echo of "e", `88 02 03 e8` a close
/// with 1000).
struct ChurnBytes {
    head: Vec<u8>,
    request: Vec<u8>,
    with_echo: Vec<u8>,
    with_close: Vec<u8>,
    with_echo_and_close: Vec<u8>,
    with_half_a_frame: Vec<u8>,
}

impl ChurnBytes {
    /// `head`: the server's 101 to a request with [`RFC_KEY`], as learned once.
    fn new(head: Vec<u8>) -> ChurnBytes {
        let request = upgrade_request("/chat", RFC_KEY, "").into_bytes();
        let echo = frame(true, TEXT, b"e");
        let close = frame(true, CLOSE, &close_payload(1000, b""));
        let half = &frame(true, TEXT, b"0123456789")[..9];
        let join = |parts: &[&[u8]]| parts.concat();
        ChurnBytes {
            head,
            with_echo: join(&[&request, &echo]),
            with_close: join(&[&request, &close]),
            with_echo_and_close: join(&[&request, &echo, &close]),
            with_half_a_frame: join(&[&request, half]),
            request,
        }
    }
}

/// Short connections one after another: upgrade (the request and any frames in one
/// write), read the answer, and go — after a close handshake or abruptly (mostly with a
/// reset: that leaves no TIME_WAIT on either side, so a hundred thousand connections
/// do not run this side out of ephemeral ports).
fn churn(addr: SocketAddr, thread: usize, cycles: usize, bytes: &ChurnBytes) -> Result<(), String> {
    const ECHO: &[u8] = &[0x81, 1, b'e'];
    const CLOSE_1000: &[u8] = &[0x88, 2, 0x03, 0xE8];
    const ECHO_AND_CLOSE: &[u8] = &[0x81, 1, b'e', 0x88, 2, 0x03, 0xE8];
    let mut got = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    for cycle in 0..cycles {
        let kind = (cycle + thread) % 8;
        // (bytes to send, what follows the 101, whether the server then ends the stream)
        let (send, tail, server_closes): (&[u8], &[u8], bool) = match kind {
            0 | 1 => (&bytes.with_echo_and_close, ECHO_AND_CLOSE, true),
            2 | 3 => (&bytes.with_close, CLOSE_1000, true),
            4 | 5 => (&bytes.request, &[], false),
            6 => (&bytes.with_half_a_frame, &[], false),
            _ => (&bytes.with_echo, ECHO, false),
        };
        let fail = |what: String| format!("thread {thread}, cycle {cycle} (kind {kind}): {what}");
        let mut stream = TcpStream::connect(addr).map_err(|e| fail(format!("connect: {e}")))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| fail(format!("{e}")))?;
        stream
            .write_all(send)
            .map_err(|e| fail(format!("write: {e}")))?;
        let expected = bytes.head.len() + tail.len();
        got.clear();
        loop {
            if !server_closes && got.len() >= expected {
                break;
            }
            match stream.read(&mut chunk) {
                Ok(0) if server_closes => break,
                Ok(0) => return Err(fail(format!("EOF after {} bytes", got.len()))),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(format!("read after {} bytes: {e}", got.len()))),
            }
            if got.len() > 4096 {
                return Err(fail("more than 4 KiB in answer".into()));
            }
        }
        if got.len() != expected
            || got[..bytes.head.len()] != bytes.head[..]
            || !got.ends_with(tail)
        {
            return Err(fail(format!("answer {:?}", String::from_utf8_lossy(&got))));
        }
        // One in eight goes with a FIN after the close handshake (the server, which
        // closed first, keeps the TIME_WAIT); the rest with a reset.
        if kind != 0 {
            reset_on_close(&stream);
        }
    }
    Ok(())
}

/// The server's exact answer to an upgrade with [`RFC_KEY`] on `/chat`.
fn learn_upgrade_head(addr: SocketAddr) -> Vec<u8> {
    let mut client = Client::new(connect(addr, Setup::default()).expect("connect"));
    client
        .send(upgrade_request("/chat", RFC_KEY, "").as_bytes())
        .unwrap();
    while !client.buf.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(client.fill().unwrap(), "EOF before the 101");
    }
    let head = std::mem::take(&mut client.buf);
    let text = String::from_utf8_lossy(&head);
    assert!(
        text.starts_with("HTTP/1.1 101 ")
            && text.contains(RFC_ACCEPT)
            && text.ends_with("\r\n\r\n"),
        "{text:?}"
    );
    client
        .send(&frame(true, CLOSE, &close_payload(1000, b"")))
        .unwrap();
    client.expect_close(Some(1000)).unwrap();
    client.expect_eof().unwrap();
    head
}

#[test]
fn a_hundred_thousand_short_connections_through_reused_slots_keep_the_deadline_heap_bounded() {
    let _alone = one_at_a_time();
    let cycles = churn_cycles();
    let config = Config {
        // Every held connection keeps one deadline (its keepalive), and no keepalive
        // ping falls inside the test.
        idle_timeout: Duration::from_secs(120),
        ..Config::default()
    };
    let counts = Arc::new(Counts::default());
    let server = spawn_watched(config, Chat { counts });
    let addr = server.addr;
    let bytes = Arc::new(ChurnBytes::new(learn_upgrade_head(addr)));
    let mut rng = Rng::new(1);
    let mut held: Vec<Client> = (0..HELD)
        .map(|_| {
            let key = random_key(&mut rng);
            open(addr, Setup::default(), "/chat", None, &key).expect("a held connection")
        })
        .collect();
    server.wait_for("the held connections", IO_TIMEOUT, |s| {
        s.connections == HELD && s.now.deadline_entries == HELD as u64
    });

    let started = Instant::now();
    let threads: Vec<_> = (0..CHURN_THREADS)
        .map(|thread| {
            let bytes = bytes.clone();
            let share = cycles / CHURN_THREADS + usize::from(thread < cycles % CHURN_THREADS);
            std::thread::Builder::new()
                .name(format!("churn-{thread}"))
                .spawn(move || churn(addr, thread, share, &bytes))
                .expect("spawn a churn thread")
        })
        .collect();
    let results: Vec<Result<(), String>> = threads
        .into_iter()
        .map(|t| t.join().expect("a churn thread panicked"))
        .collect();
    let took = started.elapsed();
    eprintln!(
        "{cycles} short connections in {took:.2?} ({:.0} a second), {HELD} held",
        cycles as f64 / took.as_secs_f64()
    );
    for result in results {
        result.unwrap();
    }

    let after = server.wait_for("the short connections to be gone", IO_TIMEOUT, |s| {
        s.connections == HELD && s.now.open_connections == HELD as u64
    });
    let now = &after.now;
    eprintln!(
        "{now}\nmax deadline entries {}, max (entries - 2 x live) {}",
        after.max_deadline_entries, after.max_entries_over_twice_live
    );
    assert!(
        after.max_entries_over_twice_live <= 8,
        "after some turn the deadline heap held more than twice the live connections + 8: {after:#?}"
    );
    assert!(
        now.deadline_entries <= 2 * HELD as u64 + 8,
        "{} deadline entries for {HELD} connections",
        now.deadline_entries
    );
    assert!(now.handshakes >= (cycles + HELD) as u64, "{now}");
    assert!(
        closes_with(now, 1000) >= cycles as u64 * 3 / 8
            && closes_with(now, 1006) >= cycles as u64 * 3 / 8,
        "{now}"
    );
    assert_eq!(
        (
            now.handshakes_in_progress,
            now.incoming_bytes,
            now.outgoing_bytes
        ),
        (0, 0, 0),
        "{now}"
    );

    // The held connections went through it all untouched; then they go too, half with
    // a close handshake and half abruptly, and the loop holds nothing at all.
    for (i, mut client) in held.drain(..).enumerate() {
        let text = format!("held {i}");
        client.send(&frame(true, TEXT, text.as_bytes())).unwrap();
        client.expect_echo(TEXT, text.as_bytes()).unwrap();
        if i % 2 == 0 {
            client
                .send(&frame(true, CLOSE, &close_payload(1000, b"")))
                .unwrap();
            client.expect_close(Some(1000)).unwrap();
            client.expect_eof().unwrap();
        }
        client.leave(true);
    }
    let end = server.wait_for("every held resource back at zero", IO_TIMEOUT, |s| {
        still_held(s).is_empty()
    });
    assert!(end.max_entries_over_twice_live <= 8, "{end:#?}");
}

// ---------------------------------------------------------------------------------------
// What the randomized test found, pinned down
// ---------------------------------------------------------------------------------------

/// A publication (or broadcast) to a subscriber is corked, and written when the loop
/// settles that subscriber. If the subscriber has reset its connection by then, and the
/// loop has not seen the reset yet, the write fails, and the connection must still be
/// reported closed (1006) and leave its topics: otherwise `on_close` never comes, the
/// `open_connections` gauge stays up, and the topic keeps the freed slot, so that the
/// next connection in that slot gets the topic's messages without subscribing.
#[test]
fn a_subscriber_that_resets_while_a_publication_is_on_its_way_is_closed_and_leaves_its_topic() {
    let _alone = one_at_a_time();
    let counts = Arc::new(Counts::default());
    let server = spawn_watched(
        Config::default(),
        Chat {
            counts: counts.clone(),
        },
    );
    let mut rng = Rng::new(7);
    let open = |rng: &mut Rng| {
        let key = random_key(rng);
        open(server.addr, Setup::default(), "/chat", None, &key).unwrap()
    };
    let (mut sleeper, mut publisher, mut subscriber) =
        (open(&mut rng), open(&mut rng), open(&mut rng));
    subscriber.send(&frame(true, TEXT, b"sub:news")).unwrap();
    subscriber.expect_echo(TEXT, b"sub:news").unwrap();
    // While the loop sleeps, the publication arrives, then the subscriber's reset: the
    // next turn sees them in that order.
    sleeper.send(&frame(true, TEXT, b"sleep:300")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    publisher
        .send(&frame(true, TEXT, b"pub:news:hello"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    subscriber.leave(true);
    publisher.expect_echo(TEXT, b"pub:news:hello").unwrap();
    sleeper.expect_echo(TEXT, b"sleep:300").unwrap();

    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let stats = server.stats();
        let now = &stats.now;
        let closed = counts.closed.load(Ordering::SeqCst);
        if stats.connections == 2
            && now.open_connections == 2
            && now.topic_memberships == 0
            && closed == 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the subscriber's reset: {} connections in the table, {} counted open, {} \
             topic memberships, {closed} on_close calls (expected 2, 2, 0, 1): {now}",
            stats.connections,
            now.open_connections,
            now.topic_memberships,
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The next connection takes the freed slot; it never subscribed, so the next
    // publication is not for it.
    let mut newcomer = open(&mut rng);
    publisher
        .send(&frame(true, TEXT, b"pub:news:again"))
        .unwrap();
    publisher.expect_echo(TEXT, b"pub:news:again").unwrap();
    newcomer.send(&frame(true, TEXT, b"mine")).unwrap();
    let first = newcomer.read_frame().unwrap().expect("a frame");
    assert_eq!(
        String::from_utf8_lossy(&first.payload),
        "mine",
        "a connection that never subscribed got a publication"
    );
}
