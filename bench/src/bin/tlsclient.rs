//! A small wss:// (or ws://, with `--plain`) client for the TLS figures: rustls (ring).
//!
//! ```text
//! tlsclient --addr 127.0.0.1:9443 --idle 10000 --server-pid PID
//!     open N wss connections (TLS handshake + upgrade), hold them, report the server's
//!     VmRSS delta / N, then check every one still echoes
//! tlsclient --addr 127.0.0.1:9443 --conns 100 --size 20 --seconds 5 --server-pid PID
//!     each connection sends a binary message and waits for its echo, over and over;
//!     reports echoes/s and the server's CPU time per echo (from /proc/PID/stat)
//! ```
//!
//! Echo mode runs every connection on one thread over mio (closed loop, one message in
//! flight per connection, each echo compared byte for byte), as `loadgen` does for
//! ws://: a client with a blocking thread per connection saturates its own core with
//! context switches long before a server does, and then every server waits for it once
//! per message, which measures the client. `--threaded` keeps that older client.
//! Connections are set up (TCP, TLS handshake, upgrade) one at a time, blocking, before
//! the load starts.
//!
//! The server certificate is not verified (a load generator against a throwaway
//! self-signed certificate on loopback); ALPN offers http/1.1.

use mio::{Events, Interest, Poll, Token};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsreactor_bench::procfs;

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn connect(addr: SocketAddr, path: &str, tls: Option<&Arc<ClientConfig>>) -> io::Result<Stream> {
    let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut stream = match tls {
        Some(config) => {
            let name = ServerName::try_from("localhost").unwrap();
            let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
            let mut s = StreamOwned::new(conn, socket);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
            Stream::Tls(Box::new(s))
        }
        None => Stream::Plain(socket),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
        if head.len() > 4096 {
            return Err(io::Error::other("response head too long"));
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(stream)
}

/// A masked binary frame (mask 0: the payload goes out as is, which servers must accept).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x82];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Reads one unmasked server message (its frames up to FIN: the echo binary streams
/// large messages in parts) into `buf`.
fn read_frame(stream: &mut Stream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    loop {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head)?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                stream.read_exact(&mut ext)?;
                u16::from_be_bytes(ext) as usize
            }
            127 => {
                let mut ext = [0u8; 8];
                stream.read_exact(&mut ext)?;
                u64::from_be_bytes(ext) as usize
            }
            n => n as usize,
        };
        let start = buf.len();
        buf.resize(start + len, 0);
        stream.read_exact(&mut buf[start..])?;
        if head[0] & 0x80 != 0 {
            return Ok(());
        }
    }
}

fn echo_once(stream: &mut Stream, out: &[u8], buf: &mut Vec<u8>, size: usize) -> io::Result<()> {
    stream.write_all(out)?;
    stream.flush()?;
    read_frame(stream, buf)?;
    if buf.len() != size {
        return Err(io::Error::other(format!(
            "echo of {} bytes, sent {size}",
            buf.len()
        )));
    }
    Ok(())
}

/// One connection of the event-driven echo mode.
struct Echoer {
    sock: mio::net::TcpStream,
    /// `None` for `--plain`.
    tls: Option<ClientConnection>,
    /// Plaintext of the frame still to be written (`--plain`: what the socket refused).
    written: usize,
    /// Plaintext bytes of the echo received so far (frames and headers parsed off).
    inbox: Vec<u8>,
    /// Payload bytes of the current echo compared so far.
    echoed: usize,
    want_write: bool,
}

impl Echoer {
    fn new(stream: Stream, poll: &Poll, token: Token) -> io::Result<Echoer> {
        let (sock, tls) = match stream {
            Stream::Plain(sock) => (sock, None),
            Stream::Tls(owned) => {
                let StreamOwned { mut conn, sock } = *owned;
                // The whole frame is queued at once (its size is the client's own).
                conn.set_buffer_limit(None);
                (sock, Some(conn))
            }
        };
        sock.set_nonblocking(true)?;
        let mut sock = mio::net::TcpStream::from_std(sock);
        poll.registry()
            .register(&mut sock, token, Interest::READABLE)?;
        Ok(Echoer {
            sock,
            tls,
            written: 0,
            inbox: Vec::new(),
            echoed: 0,
            want_write: false,
        })
    }

    /// Hands a new message to the connection and writes what the socket takes.
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => tls.writer().write_all(frame)?,
            None => self.written = 0,
        }
        self.flush(frame)
    }

    /// Writes pending bytes until done or the socket is full.
    fn flush(&mut self, frame: &[u8]) -> io::Result<()> {
        let blocked = match &mut self.tls {
            Some(tls) => loop {
                if !tls.wants_write() {
                    break false;
                }
                match tls.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
            None => loop {
                if self.written == frame.len() {
                    break false;
                }
                match self.sock.write(&frame[self.written..]) {
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
        };
        self.want_write = blocked;
        Ok(())
    }

    /// Reads what has arrived (edge-triggered: until the socket would block); true once
    /// the whole echo of `payload` is in and matched it.
    fn receive(&mut self, buf: &mut [u8], payload: &[u8]) -> io::Result<bool> {
        loop {
            let n = match &mut self.tls {
                Some(tls) => match tls.read_tls(&mut self.sock) {
                    Ok(0) => return Err(io::Error::other("EOF")),
                    Ok(_) => {
                        tls.process_new_packets().map_err(io::Error::other)?;
                        loop {
                            match tls.reader().read(buf) {
                                Ok(0) => return Err(io::Error::other("TLS close")),
                                Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) => return Err(e),
                            }
                        }
                        1
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
                None => match self.sock.read(buf) {
                    Ok(0) => return Err(io::Error::other("EOF")),
                    Ok(n) => {
                        self.inbox.extend_from_slice(&buf[..n]);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
            };
            if n == 0 {
                break;
            }
        }
        self.parse(payload)
    }

    /// Takes whole frames off the front of the inbox, comparing their payloads.
    fn parse(&mut self, payload: &[u8]) -> io::Result<bool> {
        let mut at = 0;
        let done = loop {
            let rest = &self.inbox[at..];
            if rest.len() < 2 {
                break false;
            }
            let (ext, len) = match rest[1] & 0x7f {
                126 if rest.len() >= 4 => (2, u16::from_be_bytes([rest[2], rest[3]]) as usize),
                127 if rest.len() >= 10 => (
                    8,
                    u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                ),
                126 | 127 => break false,
                n => (0, n as usize),
            };
            // A masked frame is our own sent back verbatim (`rawecho`, the ceiling): its
            // key is 0, so past the key the payload reads as sent.
            let ext = ext + if rest[1] & 0x80 != 0 { 4 } else { 0 };
            if rest.len() < 2 + ext + len {
                break false;
            }
            let data = &rest[2 + ext..2 + ext + len];
            if payload.get(self.echoed..self.echoed + len) != Some(data) {
                return Err(io::Error::other("the echo differs from the message sent"));
            }
            self.echoed += len;
            at += 2 + ext + len;
            if rest[0] & 0x80 != 0 {
                if self.echoed != payload.len() || at != self.inbox.len() {
                    return Err(io::Error::other("echo of the wrong length"));
                }
                self.echoed = 0;
                break true;
            }
        };
        self.inbox.drain(..at);
        Ok(done)
    }
}

/// Echo mode on one thread: every connection keeps one message in flight.
fn run_events(
    streams: Vec<Stream>,
    size: usize,
    warmup: f64,
    seconds: f64,
    pid: u32,
) -> (u64, f64, f64) {
    let mut poll = Poll::new().expect("poll");
    let payload: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
    let out = frame(&payload);
    let mut conns: Vec<Echoer> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| Echoer::new(s, &poll, Token(i)).expect("register"))
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.send(&out)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        if c.want_write {
            poll.registry()
                .reregister(
                    &mut c.sock,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .expect("reregister");
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 << 10];
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut cpu_before = None;
    let mut echoes = 0u64;
    loop {
        let now = Instant::now();
        if cpu_before.is_none() && now >= measure_from {
            cpu_before = Some((procfs::cpu_us(pid).expect("server CPU"), now));
        }
        if now >= end {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(10)))
            .expect("poll");
        for event in events.iter() {
            let i = event.token().0;
            let c = &mut conns[i];
            let was_blocked = c.want_write;
            let step = (|| {
                if event.is_writable() && c.want_write {
                    c.flush(&out)?;
                }
                let mut sent = false;
                if event.is_readable() && c.receive(&mut buf, &payload)? {
                    c.send(&out)?;
                    sent = true;
                }
                Ok::<bool, io::Error>(sent)
            })();
            match step {
                Ok(true) if cpu_before.is_some() => echoes += 1,
                Ok(_) => {}
                Err(e) => panic!("connection {i}: {e}"),
            }
            if c.want_write != was_blocked {
                let interest = if c.want_write {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                poll.registry()
                    .reregister(&mut c.sock, Token(i), interest)
                    .expect("reregister");
            }
        }
    }
    let (cpu_before, measured_at) = cpu_before.expect("measured");
    let cpu_after = procfs::cpu_us(pid).expect("server CPU");
    (
        echoes,
        measured_at.elapsed().as_secs_f64(),
        (cpu_after - cpu_before) as f64 / 1e6,
    )
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: bad value")),
        None => default.unwrap_or_else(|| panic!("{name} is required")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    procfs::raise_nofile_limit();
    let addr: SocketAddr = arg(&args, "--addr", None);
    let path: String = arg(&args, "--path", Some("/echo".to_owned()));
    let pid: u32 = arg(&args, "--server-pid", None);
    let plain = args.iter().any(|a| a == "--plain");
    let config = client_config();
    let tls = (!plain).then_some(&config);
    if args.iter().any(|a| a == "--idle") {
        let n: usize = arg(&args, "--idle", None);
        let before = procfs::vm_rss_bytes(pid).expect("server VmRSS");
        let started = Instant::now();
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            match connect(addr, &path, tls) {
                Ok(stream) => conns.push(stream),
                Err(e) => panic!("connection {i}: {e}"),
            }
        }
        let open_secs = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(1));
        let after = procfs::vm_rss_bytes(pid).expect("server VmRSS");
        let mut buf = Vec::new();
        let out = frame(b"still there?");
        for (i, stream) in conns.iter_mut().enumerate() {
            echo_once(stream, &out, &mut buf, 12)
                .unwrap_or_else(|e| panic!("idle connection {i} did not echo: {e}"));
        }
        let per_conn = (after as f64 - before as f64) / n as f64;
        println!(
            "{{\"mode\":\"idle\",\"tls\":{},\"conns\":{n},\"open_secs\":{open_secs:.2},\
             \"rss_before\":{before},\"rss_after\":{after},\"rss_per_conn\":{per_conn:.0},\
             \"verified\":{n}}}",
            !plain
        );
        return;
    }
    let conns: usize = arg(&args, "--conns", None);
    let size: usize = arg(&args, "--size", None);
    let seconds: f64 = arg(&args, "--seconds", Some(5.0));
    let warmup: f64 = arg(&args, "--warmup", Some(1.0));
    // Every connection first, then the load: threads already echoing would starve the
    // handshakes of the later ones on a client pinned to one core.
    let streams: Vec<Stream> = (0..conns)
        .map(|i| connect(addr, &path, tls).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let (n, elapsed, cpu_secs) = if args.iter().any(|a| a == "--threaded") {
        run_threads(streams, size, warmup, seconds, pid)
    } else {
        run_events(streams, size, warmup, seconds, pid)
    };
    println!(
        "{{\"mode\":\"echo\",\"tls\":{},\"conns\":{conns},\"size\":{size},\"echoes\":{n},\
         \"msgs_per_sec\":{:.0},\"server_cpu_secs\":{cpu_secs:.3},\"cpu_us_per_msg\":{:.2}}}",
        !plain,
        n as f64 / elapsed,
        cpu_secs * 1e6 / n.max(1) as f64
    );
}

/// The older echo mode (`--threaded`): a blocking thread per connection.
fn run_threads(
    streams: Vec<Stream>,
    size: usize,
    warmup: f64,
    seconds: f64,
    pid: u32,
) -> (u64, f64, f64) {
    let echoes = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let payload: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
    let out = Arc::new(frame(&payload));
    let threads: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let (echoes, measuring, stop, out) =
                (echoes.clone(), measuring.clone(), stop.clone(), out.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let mut buf = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        echo_once(&mut stream, &out, &mut buf, size).expect("echo");
                        if measuring.load(Ordering::Relaxed) {
                            echoes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let cpu_before = procfs::cpu_us(pid).expect("server CPU");
    let started = Instant::now();
    measuring.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs_f64(seconds));
    measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = procfs::cpu_us(pid).expect("server CPU");
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let n = echoes.load(Ordering::SeqCst);
    let cpu_secs = (cpu_after - cpu_before) as f64 / 1e6;
    (n, elapsed, cpu_secs)
}
