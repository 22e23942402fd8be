//! A small wss:// (or ws://, with `--plain`) client for the TLS figures: rustls (ring)
//! over blocking sockets, one thread per connection in echo mode.
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
//! The server certificate is not verified (a load generator against a throwaway
//! self-signed certificate on loopback); ALPN offers http/1.1.

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
    let echoes = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let payload: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
    let out = Arc::new(frame(&payload));
    // Every connection first, then the load: threads already echoing would starve the
    // handshakes of the later ones on a client pinned to one core.
    let streams: Vec<Stream> = (0..conns)
        .map(|i| connect(addr, &path, tls).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
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
    println!(
        "{{\"mode\":\"echo\",\"tls\":{},\"conns\":{conns},\"size\":{size},\"echoes\":{n},\
         \"msgs_per_sec\":{:.0},\"server_cpu_secs\":{cpu_secs:.3},\"cpu_us_per_msg\":{:.2}}}",
        !plain,
        n as f64 / elapsed,
        cpu_secs * 1e6 / n.max(1) as f64
    );
}
