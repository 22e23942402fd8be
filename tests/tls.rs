//! wss:// end to end (feature `tls`): tungstenite over a rustls client that trusts a test
//! CA made here (rcgen), the demo page over https, permessage-deflate inside TLS, the
//! certificate reload, and the bad input a TLS port meets: plain HTTP, a garbage
//! ClientHello, a client that stops mid-handshake, files that do not load. Each bad
//! client is answered (an alert, a close) and counted without disturbing a client that
//! is already talking.
#![cfg(feature = "tls")]

mod common;

use common::{compress, compressed_frame, inflate, tcp, upgrade_request, Echo, Observed, PAGE};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};
use wsreactor::tls::TlsConfig;
use wsreactor::{Config, Handle, Server, Stats};

/// A test CA and the files of leaf certificates it signs for `localhost`/127.0.0.1.
struct Pki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsreactor-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wsreactor test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        Pki { dir, ca }
    }

    /// Writes `NAME.pem` and `NAME.key` for a new leaf; returns their paths and the DER
    /// of the certificate.
    fn leaf(&self, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = self.dir.join(format!("{name}.pem"));
        let key_path = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path, cert.der().clone())
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A completed TLS handshake with the server.
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Tls {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp(addr));
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .unwrap_or_else(|e| panic!("TLS handshake failed: {e}"));
    }
    stream
}

fn wss(addr: SocketAddr, config: &Arc<ClientConfig>) -> WebSocket<Tls> {
    let ws_config = WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..WebSocketConfig::default()
    };
    let url = format!("wss://localhost:{}/echo", addr.port());
    tungstenite::client::client_with_config(url, tls_connect(addr, config), Some(ws_config))
        .unwrap_or_else(|e| panic!("upgrade failed: {e}"))
        .0
}

fn echo(ws: &mut WebSocket<Tls>, message: Message) {
    ws.send(message.clone()).unwrap();
    assert_eq!(ws.read().unwrap(), message);
}

/// The certificate the server presented on this connection.
fn presented(ws: &WebSocket<Tls>) -> CertificateDer<'static> {
    ws.get_ref().conn.peer_certificates().unwrap()[0].clone()
}

/// An echo server on wss:// in a thread of its own (leaked at test end).
fn start(config: Config, tls: TlsConfig) -> (SocketAddr, Handle, Arc<Observed>) {
    let seen = Arc::new(Observed::default());
    let handler = Echo { seen: seen.clone() };
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config, handler)
        .unwrap()
        .with_tls(tls);
    let (addr, handle) = (server.local_addr(), server.handle());
    std::thread::spawn(move || {
        let mut server = server;
        server.run().unwrap()
    });
    (addr, handle, seen)
}

fn stats(handle: &Handle) -> Stats {
    let (tx, rx) = mpsc::channel();
    handle
        .defer::<Echo>(move |_, lp| {
            let _ = tx.send(lp.stats().clone());
        })
        .unwrap();
    rx.recv_timeout(common::IO_TIMEOUT).unwrap()
}

fn wait_for_failures(handle: &Handle, n: u64) -> Stats {
    let mut last = stats(handle);
    common::wait_until(&format!("{n} TLS handshake failures"), || {
        last = stats(handle);
        last.tls_handshake_failures >= n
    });
    last
}

/// Reads until EOF (or a reset); returns what came.
fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("expected the server to close, got {e}"),
        }
    }
}

fn server_with_pki(config: Config) -> (Pki, SocketAddr, Handle, Arc<ClientConfig>) {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("server");
    let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();
    let (addr, handle, _) = start(config, tls);
    let client = pki.client_config();
    (pki, addr, handle, client)
}

#[test]
fn wss_echoes_small_and_large_messages_with_alpn_http11() {
    let (_pki, addr, handle, client) = server_with_pki(Config::default());
    let mut ws = wss(addr, &client);
    assert_eq!(ws.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    echo(&mut ws, Message::text("hello over TLS"));
    echo(&mut ws, Message::binary(common::pattern(1, 1 << 20)));
    echo(&mut ws, Message::text(common::text_of_len(5 << 20)));
    // Many small messages in one burst: several frames per TLS record and several
    // records per read, all answered.
    for i in 0..500 {
        ws.write(Message::text(format!("burst {i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..500 {
        assert_eq!(ws.read().unwrap(), Message::text(format!("burst {i}")));
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => continue,
            Ok(other) => panic!("expected the close, got {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("unclean end: {e}"),
        }
    }
    assert_eq!(stats(&handle).tls_handshake_failures, 0);
}

/// A client that rolls its keys (TLS 1.3 KeyUpdate, asking for ours to roll too) between
/// messages: the KeyUpdate and the message after it, under the new keys, usually come
/// in one read; the server must decrypt the message with the new keys, and whatever it
/// owes (its own KeyUpdate) must go out ahead of the echo's record, not after it.
#[test]
fn key_updates_from_the_client_are_answered_before_the_next_echo() {
    let (_pki, addr, _handle, client) = server_with_pki(Config::default());
    let mut ws = wss(addr, &client);
    echo(&mut ws, Message::text("before"));
    for round in 0..3 {
        ws.get_mut().conn.refresh_traffic_keys().unwrap();
        echo(&mut ws, Message::text(format!("after key update {round}")));
        echo(&mut ws, Message::binary(common::pattern(round, 100_000)));
    }
}

#[test]
fn the_page_is_served_over_https() {
    let (_pki, addr, _handle, client) = server_with_pki(Config::default());
    let mut stream = tls_connect(addr, &client);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // The server half-closes after its answer without waiting for our close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading the page: {e}"),
    }
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(PAGE), "{response}");
}

#[test]
fn permessage_deflate_works_inside_tls() {
    let config = Config {
        deflate: true,
        deflate_threshold: 0,
        ..Config::default()
    };
    let (_pki, addr, _handle, client) = server_with_pki(config);
    let mut stream = tls_connect(addr, &client);
    let request = upgrade_request(
        "/echo",
        "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("permessage-deflate"), "{head}");
    let message = "compressible ".repeat(1000);
    let payload = compress(message.as_bytes(), flate2::Compression::default());
    stream
        .write_all(&compressed_frame(true, 1, &payload))
        .unwrap();
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(header[0], 0xC1, "FIN, RSV1 and text");
    let len = match header[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).unwrap();
            u16::from_be_bytes(ext) as usize
        }
        127 => panic!("an echo that large was not expected"),
        n => n as usize,
    };
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    assert!(len < message.len() / 10, "compressed: {len} bytes");
    assert_eq!(inflate(&body).unwrap(), message.as_bytes());
}

#[test]
fn plain_http_and_websocket_bytes_on_the_tls_port_get_an_alert_and_a_close() {
    let (_pki, addr, handle, client) = server_with_pki(Config::default());
    let mut talking = wss(addr, &client);
    echo(&mut talking, Message::text("before"));

    let mut http = tcp(addr);
    http.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let answer = read_to_end(&mut http);
    // A TLS alert record (content type 21), never a plaintext HTTP answer.
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");

    let mut upgrade = tcp(addr);
    let request = upgrade_request("/echo", "dGhlIHNhbXBsZSBub25jZQ==", "");
    upgrade.write_all(request.as_bytes()).unwrap();
    let answer = read_to_end(&mut upgrade);
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");

    let stats = wait_for_failures(&handle, 2);
    assert_eq!(stats.tls_handshake_failures, 2);
    assert_eq!(stats.handshakes, 1, "only the real client upgraded");
    echo(&mut talking, Message::text("after"));
}

#[test]
fn a_garbage_client_hello_gets_an_alert_and_a_close() {
    let (_pki, addr, handle, client) = server_with_pki(Config::default());
    let mut talking = wss(addr, &client);
    // A handshake record whose body is not a ClientHello.
    let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    garbage.extend((0..0x40u8).map(|i| i.wrapping_mul(37)));
    let mut stream = tcp(addr);
    stream.write_all(&garbage).unwrap();
    let answer = read_to_end(&mut stream);
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
    // A record longer than TLS allows.
    let mut stream = tcp(addr);
    stream.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff]).unwrap();
    let _ = read_to_end(&mut stream);
    assert_eq!(wait_for_failures(&handle, 2).tls_handshake_failures, 2);
    echo(&mut talking, Message::text("still here"));
}

#[test]
fn a_client_that_stops_mid_handshake_is_dropped_at_the_handshake_timeout() {
    let config = Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (_pki, addr, handle, client) = server_with_pki(config);
    // Half a ClientHello: the record header promises more than ever comes.
    let mut stalled = tcp(addr);
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
        .unwrap();
    // And one that says nothing at all.
    let mut silent = tcp(addr);
    let mut talking = wss(addr, &client);
    let _ = read_to_end(&mut stalled);
    let _ = read_to_end(&mut silent);
    assert_eq!(wait_for_failures(&handle, 2).tls_handshake_failures, 2);
    // A client that finished its handshake (TLS and upgrade) is not affected.
    echo(&mut talking, Message::text("still here"));
}

#[test]
fn files_that_do_not_load_are_errors_naming_the_file() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("server");
    let missing = pki.dir.join("missing.pem");
    let err = TlsConfig::from_pem_files(&missing, &key).unwrap_err();
    assert_eq!(err.path(), Some(missing.as_path()));
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let err = TlsConfig::from_pem_files(&garbage, &key).unwrap_err();
    assert_eq!(err.path(), Some(garbage.as_path()), "{err}");

    // A certificate where the key should be.
    let err = TlsConfig::from_pem_files(&cert, &cert).unwrap_err();
    assert_eq!(err.path(), Some(cert.as_path()), "{err}");

    // A key that is not the certificate's.
    let (_, other_key, _) = pki.leaf("other");
    let err = TlsConfig::from_pem_files(&cert, &other_key).unwrap_err();
    assert_eq!(err.path(), Some(other_key.as_path()), "{err}");
    assert!(
        err.to_string().contains("server.pem"),
        "names the pair: {err}"
    );
}

#[test]
fn a_reload_serves_new_connections_the_new_certificate_and_keeps_open_ones() {
    let pki = Pki::new();
    let (cert_a, key_a, der_a) = pki.leaf("first");
    let (cert_b, key_b, der_b) = pki.leaf("second");
    let tls = TlsConfig::from_pem_files(&cert_a, &key_a).unwrap();
    let (addr, _handle, _) = start(Config::default(), tls.clone());
    let client = pki.client_config();

    let mut old = wss(addr, &client);
    assert_eq!(presented(&old), der_a);
    tls.reload_pem_files(&cert_b, &key_b).unwrap();
    let mut new = wss(addr, &client);
    assert_eq!(presented(&new), der_b);
    echo(&mut old, Message::text("the old session goes on"));
    echo(&mut new, Message::text("the new one too"));

    // A reload that fails keeps what is served.
    let err = tls
        .reload_pem_files(Path::new("/nonexistent/cert.pem"), &key_a)
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    let mut after = wss(addr, &client);
    assert_eq!(presented(&after), der_b);
    echo(&mut after, Message::text("served"));
}

#[test]
fn a_small_read_buffer_gets_every_record_in_turn() {
    // Records (16 KiB of plaintext each) larger than the loop's read buffer: each one's
    // plaintext is handed out a buffer at a time (kept by the connection meanwhile)
    // while the records after it wait undecrypted.
    let config = Config {
        read_buffer_size: 1024,
        ..Config::default()
    };
    let (_pki, addr, _handle, client) = server_with_pki(config);
    let mut ws = wss(addr, &client);
    echo(&mut ws, Message::binary(common::pattern(7, 1 << 20)));
    echo(&mut ws, Message::text("and a small one after"));
}

#[test]
fn a_client_handshake_flight_too_large_to_hold_is_refused() {
    let config = Config {
        handshake_timeout: Duration::from_secs(60),
        ..Config::default()
    };
    let (_pki, addr, handle, client) = server_with_pki(config);
    let mut talking = wss(addr, &client);
    // A ClientHello announced at 60 KiB, sent in full records: rustls would wait for all
    // of it; the server stops holding it past 16 KiB, long before the handshake timeout.
    let mut stream = tcp(addr);
    let mut first = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xf0, 0x00];
    first.resize(5 + 0x4000, 0x41);
    stream.write_all(&first).unwrap();
    let mut second = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    second.resize(5 + 0x4000, 0x42);
    let _ = stream.write_all(&second);
    let _ = read_to_end(&mut stream);
    assert_eq!(wait_for_failures(&handle, 1).tls_handshake_failures, 1);
    echo(&mut talking, Message::text("still here"));
}

#[test]
fn what_came_before_the_peers_eof_is_all_read() {
    // A small read buffer keeps records waiting behind each read; the client's FIN (no
    // close_notify) arrives with them. Every message before it is still echoed, and
    // its close frame answered.
    let config = Config {
        read_buffer_size: 1024,
        ..Config::default()
    };
    let (_pki, addr, _handle, client) = server_with_pki(config);
    let mut ws = wss(addr, &client);
    let messages: Vec<Vec<u8>> = (0..3).map(|i| common::pattern(i, 100_000)).collect();
    for message in &messages {
        ws.write(Message::binary(message.clone())).unwrap();
    }
    ws.close(None).unwrap();
    ws.flush().unwrap();
    ws.get_ref()
        .sock
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    for message in &messages {
        assert_eq!(ws.read().unwrap(), Message::binary(message.clone()));
    }
    match ws.read() {
        Ok(Message::Close(_)) => {}
        other => panic!("expected the server's close, got {other:?}"),
    }
}

/// Several loops share one `TlsConfig`: connections land on both loops, each gets
/// its echo over wss://.
#[test]
fn several_loops_serve_wss_with_one_shared_config() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("server");
    let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();
    let config = Config {
        threads: 2,
        ..Config::default()
    };
    let mut reactor = wsreactor::Reactor::bind("127.0.0.1:0".parse().unwrap(), config, |_| Echo {
        seen: Arc::default(),
    })
    .unwrap()
    .with_tls(tls);
    let (addr, handle) = (reactor.local_addr(), reactor.handle());
    let runner = std::thread::spawn(move || reactor.run());
    let client = pki.client_config();
    let mut clients: Vec<_> = (0..40).map(|_| wss(addr, &client)).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        echo(ws, Message::text(format!("hello {i}")));
    }
    // Each loop shares its stats every 100 ms or so.
    let mut per_loop = handle.loop_stats();
    common::wait_until("both loops' stats", || {
        per_loop = handle.loop_stats();
        per_loop.iter().map(|s| s.handshakes).sum::<u64>() == 40
    });
    assert_eq!(per_loop.len(), 2);
    let handshakes: Vec<u64> = per_loop.iter().map(|s| s.handshakes).collect();
    assert!(
        handshakes.iter().all(|&n| n > 0),
        "every loop served some of 40 clients: {handshakes:?}"
    );
    assert_eq!(handshakes.iter().sum::<u64>(), 40);
    drop(clients);
    handle.shutdown().unwrap();
    runner.join().unwrap().unwrap();
}
