//! Shared helpers for the end-to-end tests: an echo [`Handler`], a server started on an
//! ephemeral loopback port in its own thread, and a raw TCP WebSocket client that does
//! the handshake by hand and writes its own frames: well-formed ones through the
//! crate's `FrameHeader::encode` and `mask::apply`, deliberately broken ones byte by
//! byte.
//!
//! Every test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wsreactor::proto::frame::{FrameHeader, Opcode};
use wsreactor::proto::mask;
use wsreactor::{
    CloseReason, Config, Ctx, Decision, Handle, Handler, HttpResponse, Message, Request,
    SendStatus, Server,
};

/// Upper bound for any single network wait. Only reached when something is wrong; it is
/// generous because `cargo test` runs many tests at once on small CI machines.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The body the echo handler serves on `GET /`.
pub const PAGE: &str = "<!doctype html><title>wsreactor test</title><p>hello</p>\n";

/// The RFC 6455 §1.3 example key and the accept value it must produce.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// What the echo handler observed, shared with the test thread.
#[derive(Debug, Default)]
pub struct Observed {
    /// The largest `cx.queued_bytes()` seen right after any send.
    pub max_queued: AtomicUsize,
    /// Sends that came back [`SendStatus::Refused`].
    pub refused: AtomicUsize,
    /// Sends whose status disagreed with `cx.queued_bytes()` right after: `Written`
    /// ("the whole frame went to the socket") with bytes queued, or `Queued(n)` with
    /// another number of bytes queued.
    pub status_mismatches: Mutex<Vec<String>>,
    /// Messages handed to `on_message`.
    pub messages: AtomicUsize,
    /// The subprotocol each opened connection saw through `Ctx::protocol()`.
    pub protocols: Mutex<Vec<Option<String>>>,
    /// Every `on_close` reason, in order.
    pub closes: Mutex<Vec<CloseReason>>,
}

impl Observed {
    /// Waits until `on_close` has been called `n` times and returns the reasons.
    pub fn wait_for_closes(&self, n: usize) -> Vec<CloseReason> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let closes = self.closes.lock().unwrap().clone();
            if closes.len() >= n {
                return closes;
            }
            assert!(
                Instant::now() < deadline,
                "on_close called {} times, expected {n}: {closes:?}",
                closes.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Echoes every message on `/echo` (choosing subprotocol `chat` when offered), serves
/// [`PAGE`] on `/` and 404 elsewhere.
pub struct Echo {
    pub seen: Arc<Observed>,
}

impl Handler for Echo {
    type Session = ();

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<()> {
        if request.path() != "/echo" {
            return Decision::Reject(HttpResponse::not_found());
        }
        match request.protocols().find(|p| *p == "chat") {
            Some(chat) => Decision::accept().with_protocol(chat),
            None => Decision::accept(),
        }
    }

    fn on_http(&mut self, request: &Request<'_>) -> HttpResponse {
        match request.path() {
            "/" => HttpResponse::html(PAGE),
            _ => HttpResponse::not_found(),
        }
    }

    fn on_open(&mut self, cx: &mut Ctx<'_>) {
        let protocol = cx.protocol().map(str::to_owned);
        self.seen.protocols.lock().unwrap().push(protocol);
    }

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        self.seen.messages.fetch_add(1, Ordering::SeqCst);
        let len = message.len();
        let status = cx.send(message);
        let queued = cx.queued_bytes();
        let mismatch = match status {
            SendStatus::Refused => {
                self.seen.refused.fetch_add(1, Ordering::SeqCst);
                None
            }
            SendStatus::Written if queued != 0 => Some(format!(
                "echo of {len} bytes: Written, but queued_bytes() = {queued}"
            )),
            SendStatus::Queued(n) if n != queued => Some(format!(
                "echo of {len} bytes: Queued({n}), but queued_bytes() = {queued}"
            )),
            _ => None,
        };
        if let Some(mismatch) = mismatch {
            self.seen.status_mismatches.lock().unwrap().push(mismatch);
        }
        self.seen.max_queued.fetch_max(queued, Ordering::SeqCst);
    }

    fn on_close(&mut self, _id: wsreactor::ConnId, _session: (), reason: &CloseReason) {
        self.seen.closes.lock().unwrap().push(reason.clone());
    }
}

/// Starts an echo server with `config` on `127.0.0.1:0` in a thread of its own (leaked
/// when the test ends) and returns its address and the handler's observations.
pub fn start(config: Config) -> (SocketAddr, Arc<Observed>) {
    let seen = Arc::new(Observed::default());
    let handler = Echo { seen: seen.clone() };
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("wsreactor-server".into())
        .spawn(move || {
            let mut server = match Server::bind("127.0.0.1:0".parse().unwrap(), config, handler) {
                Ok(server) => server,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(server.local_addr()));
            server.run().expect("event loop failed");
        })
        .expect("spawn server thread");
    let addr = rx
        .recv_timeout(IO_TIMEOUT)
        .expect("server thread did not report")
        .expect("bind 127.0.0.1:0");
    (addr, seen)
}

/// An echo server with [`Config::default`].
pub fn start_default() -> (SocketAddr, Arc<Observed>) {
    start(Config::default())
}

/// A server running `handler` in a thread of its own: its address, a [`Handle`] to it,
/// and the thread, which returns what [`Server::run`] returned.
pub struct Running {
    pub addr: SocketAddr,
    pub handle: Handle,
    pub thread: JoinHandle<io::Result<()>>,
}

impl Running {
    /// Waits (up to [`IO_TIMEOUT`]) for `run` to return, and returns its result.
    pub fn join(self) -> io::Result<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while !self.thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the server's run() did not return within {IO_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.thread.join().expect("the server thread panicked")
    }
}

/// Runs `handler` with `config` on an ephemeral loopback port in a thread of its own.
pub fn spawn_server<H>(config: Config, handler: H) -> Running
where
    H: Handler + Send + 'static,
    H::Session: Send,
{
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config, handler).expect("bind");
    let addr = server.local_addr();
    let handle = server.handle();
    let thread = std::thread::Builder::new()
        .name("wsreactor-server".into())
        .spawn(move || {
            let mut server = server;
            server.run()
        })
        .expect("spawn server thread");
    Running {
        addr,
        handle,
        thread,
    }
}

/// Runs `handler` on an ephemeral port in a thread of its own (leaked at test end).
pub fn serve<H>(config: Config, handler: H) -> SocketAddr
where
    H: Handler + Send + 'static,
    H::Session: Send,
{
    spawn_server(config, handler).addr
}

/// Polls `done` every 5 ms until it holds; panics after [`IO_TIMEOUT`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A TCP connection to `addr` with timeouts on both directions and Nagle off.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// A mask key that differs from frame to frame (any key is fine; zero bytes are not
/// special, but a varying key catches a server that ignores it).
pub fn next_key() -> [u8; 4] {
    static COUNTER: AtomicUsize = AtomicUsize::new(0x3d21_fa37);
    let n = COUNTER.fetch_add(0x9e37_79b9, Ordering::Relaxed) as u32;
    n.to_be_bytes()
}

/// RSV1: the message is compressed (permessage-deflate, RFC 7692 §6).
pub const RSV1: u8 = 0b100;

/// A masked client frame: the header from [`FrameHeader::encode`], the payload masked
/// with [`mask::apply`]. `rsv` holds RSV1-3 as the low three bits. The opcode must be
/// one RFC 6455 defines; a reserved one, like any other deliberately broken header, is
/// built with [`raw_frame`].
pub fn client_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = next_key();
    let header = FrameHeader {
        fin,
        rsv,
        opcode: Opcode::try_from(opcode)
            .unwrap_or_else(|_| panic!("reserved opcode {opcode:#x}: use raw_frame")),
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let mut out = header.frame_with(payload);
    let start = out.len() - payload.len();
    mask::apply(&mut out[start..], key, 0);
    out
}

/// A well-formed masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, 0, opcode, payload)
}

/// A masked client frame with RSV1 set: the first (or only) frame of a compressed
/// message.
pub fn compressed_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, RSV1, opcode, payload)
}

/// A frame header written byte by byte from RFC 6455 §5.2 for the frames a test breaks
/// on purpose, which [`FrameHeader`] cannot express or its encoder would not write:
/// `first` is the whole first byte (any FIN, RSV1-3 and opcode, reserved ones
/// included), `mask` may be left out (an unmasked client frame), and `len` may be any
/// 64-bit number (the top bit set); the length is encoded minimally.
pub fn header(first: u8, mask: Option<[u8; 4]>, len: u64) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out
}

/// A complete frame behind a [`header`]: masked when `mask` is given.
pub fn raw_frame(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = header(first, mask, payload.len() as u64);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        mask::apply(&mut out[start..], key, 0);
    }
    out
}

/// A close frame payload: the code, big-endian, then the reason bytes.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

// ---------------------------------------------------------------------------------------
// permessage-deflate on the client side
// ---------------------------------------------------------------------------------------
//
// flate2 used directly, never the crate's `proto::deflate`: these end-to-end tests check
// the server's codec, and must not trust that codec to do it.

/// Raw DEFLATE of `message` at `level` with a sync flush, the `00 00 ff ff` tail removed
/// (RFC 7692 §7.2.1).
pub fn compress(message: &[u8], level: Compression) -> Vec<u8> {
    let mut compress = Compress::new(level, false);
    let mut out = Vec::with_capacity(message.len() + 64);
    for _ in 0..64 {
        let consumed = compress.total_in() as usize;
        compress
            .compress_vec(&message[consumed..], &mut out, FlushCompress::Sync)
            .expect("compress");
        if compress.total_in() as usize == message.len() && out.len() < out.capacity() {
            assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
            out.truncate(out.len() - 4);
            return out;
        }
        out.reserve(message.len() + 64);
    }
    panic!("compressing {} bytes did not finish", message.len());
}

/// The message a server frame with RSV1 carries.
pub fn inflate(payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut decompress = Decompress::new(false);
    let mut out = Vec::with_capacity(4 * payload.len() + 1024);
    while out.len() < 8 << 20 {
        let consumed = decompress.total_in() as usize;
        decompress
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| format!("the server's compressed frame does not inflate: {e}"))?;
        if decompress.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity().max(1024));
    }
    Err("a compressed frame from the server inflates past 8 MiB".into())
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// A parsed HTTP response head (and body, for non-101 responses).
#[derive(Debug, Clone)]
pub struct HttpHead {
    pub status: u16,
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpHead {
    /// The first value of the named header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An upgrade request for `path` with `key` and any extra header lines (each ending in
/// `\r\n`).
pub fn upgrade_request(path: &str, key: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         {extra}\r\n"
    )
}

/// `base64(sha1(key + GUID))`, computed independently of the server's code.
pub fn expected_accept(key: &str) -> String {
    use base64::Engine;
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

// ---------------------------------------------------------------------------------------
// The raw client
// ---------------------------------------------------------------------------------------

/// A WebSocket client over a bare `TcpStream`: bytes read but not yet consumed stay in
/// `buf`, so a response head and the frames right behind it are both seen.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects without handshaking.
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: tcp(addr),
            buf: Vec::new(),
        }
    }

    /// Wraps a connected stream (no handshake yet).
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects, upgrades on `/echo` and checks the 101.
    pub fn open(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        let key = RFC_KEY;
        raw.write(upgrade_request("/echo", key, "").as_bytes());
        let head = raw.read_http();
        assert_eq!(head.status, 101, "upgrade refused: {head:?}");
        assert_eq!(head.header("Sec-WebSocket-Accept"), Some(RFC_ACCEPT));
        raw
    }

    /// Writes all of `bytes` (panics on error or timeout).
    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
        self.stream.flush().unwrap();
    }

    /// Writes one well-formed masked frame.
    pub fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.write(&frame(fin, opcode, payload));
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Makes sure at least `n` bytes are buffered.
    fn need(&mut self, n: usize, what: &str) {
        while self.buf.len() < n {
            match self.fill() {
                Ok(0) => panic!(
                    "EOF while waiting for {what}: have {} of {n} bytes: {:?}",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "error while waiting for {what} ({} of {n} bytes buffered): {e}",
                    self.buf.len()
                ),
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// Reads an HTTP response head and, if it has a `Content-Length`, its body.
    pub fn read_http(&mut self) -> HttpHead {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let have = self.buf.len();
            self.need(have + 1, "an HTTP response head");
        };
        let head = String::from_utf8(self.take(end)).expect("response head is UTF-8");
        let mut lines = head.trim_end_matches("\r\n").split("\r\n");
        let status_line = lines.next().unwrap().to_owned();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {line:?}"));
                (name.to_owned(), value.trim().to_owned())
            })
            .collect();
        let mut head = HttpHead {
            status,
            status_line,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = head.header("Content-Length") {
            let len: usize = len.parse().expect("Content-Length is a number");
            self.need(len, "the response body");
            head.body = self.take(len);
        }
        head
    }

    /// Reads one frame from the server. Server frames must never be masked.
    pub fn read_frame(&mut self) -> Frame {
        self.need(2, "a frame header");
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "server sent a masked frame");
        let (len, header_len) = match b1 & 0x7F {
            126 => {
                self.need(4, "a 16-bit length");
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                self.need(10, "a 64-bit length");
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(bytes), 10)
            }
            n => (u64::from(n), 2),
        };
        let total = header_len + usize::try_from(len).unwrap();
        self.need(total, "a frame payload");
        let bytes = self.take(total);
        Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0F,
            payload: bytes[header_len..].to_vec(),
        }
    }

    /// Reads one frame and checks that it is the unfragmented echo of a message.
    pub fn expect_echo(&mut self, opcode: u8, payload: &[u8]) {
        let frame = self.read_frame();
        assert_eq!(
            (frame.fin, frame.rsv, frame.opcode, frame.payload.len()),
            (true, 0, opcode, payload.len()),
            "echo header (fin, rsv, opcode, len)"
        );
        assert!(frame.payload == payload, "echo payload differs");
    }

    /// Reads the server's close frame and checks its exact code; returns the reason.
    pub fn expect_close(&mut self, code: u16) -> String {
        let frame = self.read_frame();
        assert_eq!(
            frame.opcode, CLOSE,
            "expected a close frame with {code}, got {frame:?}"
        );
        assert!(frame.fin && frame.rsv == 0, "bad close frame {frame:?}");
        assert!(
            frame.payload.len() >= 2,
            "close frame without a code, expected {code}: {frame:?}"
        );
        let got = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
        let reason = String::from_utf8(frame.payload[2..].to_vec()).expect("reason is UTF-8");
        assert_eq!(got, code, "close code (reason {reason:?})");
        reason
    }

    /// Checks that the server ends the TCP connection: EOF (or a reset) before
    /// [`IO_TIMEOUT`], and no bytes after what was already read.
    pub fn expect_eof(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes after the last expected one: {:?}",
            self.buf
        );
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the server to close TCP, got {n} more bytes: {:?}",
                &chunk[..n]
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => panic!("expected the server to close TCP, got {e} instead"),
        }
    }

    /// Checks that nothing arrives for `quiet` (the connection stays open and silent).
    pub fn expect_silence(&mut self, quiet: Duration) {
        assert!(self.buf.is_empty(), "unexpected bytes {:?}", self.buf);
        self.stream.set_read_timeout(Some(quiet)).unwrap();
        let mut chunk = [0u8; 1024];
        let result = self.stream.read(&mut chunk);
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match result {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Ok(0) => panic!("server closed the connection early"),
            Ok(n) => panic!("server sent {n} bytes early: {:?}", &chunk[..n]),
            Err(e) => panic!("connection failed early: {e}"),
        }
    }

    /// Sends a normal close and checks the server's answer and the end of TCP.
    pub fn close_cleanly(&mut self) {
        self.send(true, CLOSE, &close_payload(1000, b""));
        self.expect_close(1000);
        self.expect_eof();
    }
}

/// A deterministic pseudo-random byte stream (xorshift), so payloads are not all one
/// byte and a reordering or corruption shows.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A valid UTF-8 string of exactly `len` bytes with multi-byte characters mixed in.
pub fn text_of_len(len: usize) -> String {
    let pieces = ["a", "é", "€", "𝄞", "z"];
    let mut out = String::with_capacity(len);
    let mut i = 0;
    loop {
        let piece = pieces[i % pieces.len()];
        if out.len() + piece.len() > len {
            break;
        }
        out.push_str(piece);
        i += 1;
    }
    while out.len() < len {
        out.push('.');
    }
    assert_eq!(out.len(), len);
    out
}

/// A server whose counters the test can read while it runs: the loop turns in a thread
/// of its own and copies [`Stats`](wsreactor::Stats) after every turn, keeping the
/// highest `deadline_entries` (and its excess over twice the live connections) and the
/// highest bytes held each way that it has seen.
pub struct Watched {
    pub addr: SocketAddr,
    pub handle: Handle,
    pub stats: Arc<Mutex<WatchedStats>>,
}

/// What [`Watched`] copies out of the loop.
#[derive(Debug, Clone, Default)]
pub struct WatchedStats {
    pub now: wsreactor::Stats,
    pub connections: usize,
    pub max_deadline_entries: u64,
    /// The highest value of `deadline_entries - 2 * connections` seen after any turn.
    pub max_entries_over_twice_live: i64,
    pub max_incoming_bytes: u64,
    pub max_outgoing_bytes: u64,
}

impl Watched {
    pub fn stats(&self) -> WatchedStats {
        self.stats.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the stats; panics after `within`.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        mut done: impl FnMut(&WatchedStats) -> bool,
    ) -> WatchedStats {
        let deadline = Instant::now() + within;
        loop {
            let stats = self.stats();
            if done(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stats:#?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Runs `handler` with `config` like [`spawn_server`], turning the loop by hand so the
/// test can watch its counters.
pub fn spawn_watched<H>(config: Config, handler: H) -> Watched
where
    H: Handler + Send + 'static,
    H::Session: Send,
{
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), config, handler).expect("bind");
    let addr = server.local_addr();
    let handle = server.handle();
    let stats = Arc::new(Mutex::new(WatchedStats::default()));
    let shared = stats.clone();
    std::thread::Builder::new()
        .name("wsreactor-watched".into())
        .spawn(move || {
            while !server.is_finished() {
                server
                    .turn(Some(Duration::from_millis(5)))
                    .expect("event loop failed");
                let now = server.stats().clone();
                let connections = server.connection_count();
                let mut watched = shared.lock().unwrap();
                watched.max_deadline_entries =
                    watched.max_deadline_entries.max(now.deadline_entries);
                watched.max_entries_over_twice_live = watched
                    .max_entries_over_twice_live
                    .max(now.deadline_entries as i64 - 2 * connections as i64);
                watched.max_incoming_bytes = watched.max_incoming_bytes.max(now.incoming_bytes);
                watched.max_outgoing_bytes = watched.max_outgoing_bytes.max(now.outgoing_bytes);
                watched.connections = connections;
                watched.now = now;
            }
        })
        .expect("spawn server thread");
    Watched {
        addr,
        handle,
        stats,
    }
}

/// A field of /proc/PID/status (`"VmHWM:"`, `"VmRSS:"`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// Caps a client socket's kernel buffers (both ways) at about `bytes`, so that the
/// kernel's own (autotuned up to tens of MiB on loopback) cannot absorb an exchange
/// and hide what the server does when the client does not read.
pub fn shrink_socket_buffers(stream: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(bytes).expect("a buffer size that fits a c_int");
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads `size` (a c_int that outlives the call) for the
        // descriptor of a socket the caller owns.
        let set = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "setsockopt");
    }
}
