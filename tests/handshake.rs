//! The opening handshake over raw TCP: the accept key, the headers of the 101, requests
//! that arrive in pieces or with frames behind them, and every HTTP refusal (each of
//! which must end the connection).

mod common;

use common::{
    expected_accept, serve, start, start_default, upgrade_request, HttpHead, Raw, BINARY, PAGE,
    RFC_ACCEPT, RFC_KEY, TEXT,
};
use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;
use wsreactor::{Config, Ctx, Decision, Handler, HttpResponse, Message, Request, StatusCode};

/// Sends `request` on a fresh connection and returns the response; the server must then
/// end the connection (every non-101 answer is `Connection: close`).
fn refused(addr: SocketAddr, request: &[u8]) -> HttpHead {
    let mut raw = Raw::connect(addr);
    raw.write(request);
    let head = raw.read_http();
    assert_ne!(head.status, 101, "request was accepted: {head:?}");
    assert_eq!(head.header("Connection"), Some("close"), "{head:?}");
    assert_eq!(head.header("Server"), Some("wsreactor"), "{head:?}");
    raw.expect_eof();
    head
}

#[test]
fn rfc_example_key_gets_the_rfc_accept_value() {
    let (addr, _) = start_default();
    let mut raw = Raw::connect(addr);
    raw.write(upgrade_request("/echo", RFC_KEY, "").as_bytes());
    let head = raw.read_http();
    assert_eq!(head.status, 101, "{head:?}");
    assert!(
        head.status_line.starts_with("HTTP/1.1 101 "),
        "{}",
        head.status_line
    );
    assert_eq!(head.header("Sec-WebSocket-Accept"), Some(RFC_ACCEPT));
    assert!(head
        .header("Upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(head
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    assert_eq!(head.header("Server"), Some("wsreactor"));
    assert_eq!(head.header("Sec-WebSocket-Protocol"), None);
    // And it really is open.
    raw.send(true, TEXT, b"open?");
    raw.expect_echo(TEXT, b"open?");
    raw.close_cleanly();
}

#[test]
fn random_keys_get_the_sha1_base64_accept_value() {
    use base64::Engine;
    let (addr, _) = start_default();
    for i in 0..16u64 {
        let nonce = common::pattern(i + 100, 16);
        let key = base64::engine::general_purpose::STANDARD.encode(&nonce);
        let mut raw = Raw::connect(addr);
        raw.write(upgrade_request("/echo", &key, "").as_bytes());
        let head = raw.read_http();
        assert_eq!(head.status, 101, "key {key}: {head:?}");
        assert_eq!(
            head.header("Sec-WebSocket-Accept"),
            Some(expected_accept(&key).as_str()),
            "key {key}"
        );
    }
}

#[test]
fn subprotocol_is_named_in_the_101_when_offered() {
    let (addr, _) = start_default();
    let mut raw = Raw::connect(addr);
    let request = upgrade_request(
        "/echo",
        RFC_KEY,
        "Sec-WebSocket-Protocol: superchat, chat\r\n",
    );
    raw.write(request.as_bytes());
    let head = raw.read_http();
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("Sec-WebSocket-Protocol"), Some("chat"));

    let mut raw = Raw::connect(addr);
    let request = upgrade_request("/echo", RFC_KEY, "Sec-WebSocket-Protocol: superchat\r\n");
    raw.write(request.as_bytes());
    let head = raw.read_http();
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("Sec-WebSocket-Protocol"), None);
}

#[test]
fn request_sent_one_byte_at_a_time_is_accepted() {
    let (addr, _) = start_default();
    let mut raw = Raw::connect(addr);
    for (i, byte) in upgrade_request("/echo", RFC_KEY, "").bytes().enumerate() {
        raw.write(&[byte]);
        if i % 4 == 0 {
            // Give the server a chance to read each piece on its own.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let head = raw.read_http();
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("Sec-WebSocket-Accept"), Some(RFC_ACCEPT));
    // A frame sent one byte at a time is reassembled too.
    for byte in common::frame(true, TEXT, b"byte by byte") {
        raw.write(&[byte]);
    }
    raw.expect_echo(TEXT, b"byte by byte");
    raw.close_cleanly();
}

#[test]
fn frames_in_the_same_write_as_the_request_are_echoed() {
    let (addr, _) = start_default();
    let mut raw = Raw::connect(addr);
    let mut bytes = upgrade_request("/echo", RFC_KEY, "").into_bytes();
    bytes.extend(common::frame(true, TEXT, b"right behind the request"));
    bytes.extend(common::frame(true, BINARY, &[1, 2, 3]));
    // The start of a third frame, completed by a later write.
    let third = common::frame(true, TEXT, b"split frame");
    bytes.extend_from_slice(&third[..5]);
    raw.write(&bytes);
    let head = raw.read_http();
    assert_eq!(head.status, 101, "{head:?}");
    raw.expect_echo(TEXT, b"right behind the request");
    raw.expect_echo(BINARY, &[1, 2, 3]);
    raw.write(&third[5..]);
    raw.expect_echo(TEXT, b"split frame");
    raw.close_cleanly();
}

#[test]
fn version_8_gets_426_naming_version_13() {
    let (addr, _) = start_default();
    let request = upgrade_request("/echo", RFC_KEY, "").replace(
        "Sec-WebSocket-Version: 13\r\n",
        "Sec-WebSocket-Version: 8\r\n",
    );
    let head = refused(addr, request.as_bytes());
    assert_eq!(head.status, 426, "{head:?}");
    assert_eq!(head.header("Sec-WebSocket-Version"), Some("13"));
}

#[test]
fn key_that_is_not_16_bytes_of_base64_gets_400() {
    let (addr, _) = start_default();
    // 10 bytes, 17 bytes, not base64 at all, and missing padding.
    for key in [
        "dGhlIHNhbXBsZQ==",
        "dGhlIHNhbXBsZSBub25jZXg=",
        "not base64 !!!!!!!!!!!!!",
        "dGhlIHNhbXBsZSBub25jZQ",
    ] {
        let head = refused(addr, upgrade_request("/echo", key, "").as_bytes());
        assert_eq!(head.status, 400, "key {key:?}: {head:?}");
    }
}

#[test]
fn missing_key_gets_400() {
    let (addr, _) = start_default();
    let request = upgrade_request("/echo", RFC_KEY, "")
        .replace(&format!("Sec-WebSocket-Key: {RFC_KEY}\r\n"), "");
    let head = refused(addr, request.as_bytes());
    assert_eq!(head.status, 400, "{head:?}");
}

#[test]
fn missing_connection_upgrade_gets_400() {
    let (addr, _) = start_default();
    let without = upgrade_request("/echo", RFC_KEY, "").replace("Connection: Upgrade\r\n", "");
    assert_eq!(refused(addr, without.as_bytes()).status, 400);
    let keep_alive_only = upgrade_request("/echo", RFC_KEY, "")
        .replace("Connection: Upgrade\r\n", "Connection: keep-alive\r\n");
    assert_eq!(refused(addr, keep_alive_only.as_bytes()).status, 400);
}

#[test]
fn missing_host_gets_400() {
    let (addr, _) = start_default();
    let request = upgrade_request("/echo", RFC_KEY, "").replace("Host: 127.0.0.1\r\n", "");
    assert_eq!(refused(addr, request.as_bytes()).status, 400);
}

#[test]
fn connection_keep_alive_comma_upgrade_is_accepted() {
    let (addr, _) = start_default();
    let mut raw = Raw::connect(addr);
    let request = upgrade_request("/echo", RFC_KEY, "").replace(
        "Connection: Upgrade\r\n",
        "Connection: keep-alive, Upgrade\r\n",
    );
    raw.write(request.as_bytes());
    let head = raw.read_http();
    assert_eq!(head.status, 101, "{head:?}");
    raw.send(true, TEXT, b"ok");
    raw.expect_echo(TEXT, b"ok");
    raw.close_cleanly();
}

#[test]
fn post_gets_405() {
    let (addr, _) = start_default();
    let upgrade = upgrade_request("/echo", RFC_KEY, "").replacen("GET", "POST", 1);
    let head = refused(addr, upgrade.as_bytes());
    assert_eq!(head.status, 405, "{head:?}");
    assert_eq!(head.header("Allow"), Some("GET"));
    let plain = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(refused(addr, plain).status, 405);
}

#[test]
fn plain_get_of_root_gets_200_and_the_page() {
    let (addr, _) = start_default();
    let mut raw = Raw::connect(addr);
    raw.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let head = raw.read_http();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.body, PAGE.as_bytes());
    assert!(head
        .header("Content-Type")
        .is_some_and(|v| v.starts_with("text/html")));
    assert_eq!(head.header("Connection"), Some("close"));
    raw.expect_eof();
}

#[test]
fn plain_get_of_unknown_path_gets_404() {
    let (addr, _) = start_default();
    let head = refused(addr, b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(head.status, 404, "{head:?}");
}

#[test]
fn upgrade_to_unknown_path_gets_404() {
    let (addr, seen) = start_default();
    let head = refused(addr, upgrade_request("/other", RFC_KEY, "").as_bytes());
    assert_eq!(head.status, 404, "{head:?}");
    assert!(seen.protocols.lock().unwrap().is_empty(), "on_open ran");
}

#[test]
fn garbage_gets_400_and_the_connection_closes() {
    let (addr, _) = start_default();
    let head = refused(addr, b"\x00\x01 hello\r\n\r\n");
    assert_eq!(head.status, 400, "{head:?}");
    let head = refused(addr, b"\xff\xfe\xfd\r\n\r\n");
    assert_eq!(head.status, 400, "{head:?}");
}

#[test]
fn header_block_over_16_kib_gets_431_and_the_connection_closes() {
    let (addr, _) = start_default();
    let padding = format!("X-Padding: {}\r\n", "a".repeat(17 * 1024));
    let head = refused(addr, upgrade_request("/echo", RFC_KEY, &padding).as_bytes());
    assert_eq!(head.status, 431, "{head:?}");
}

#[test]
fn endless_header_block_gets_431_without_waiting_for_its_end() {
    let (addr, _) = start_default();
    let mut raw = Raw::connect(addr);
    // 16 KiB of one header line that never ends: the server must give up by itself.
    let mut bytes = b"GET /echo HTTP/1.1\r\nX-Endless: ".to_vec();
    bytes.resize(16 * 1024 + 100, b'a');
    raw.write(&bytes);
    let head = raw.read_http();
    assert_eq!(head.status, 431, "{head:?}");
    raw.expect_eof();
}

/// A request head of exactly `len` bytes, padded with one header line.
fn request_of_len(len: usize) -> Vec<u8> {
    let base = upgrade_request("/echo", RFC_KEY, "X-Pad: \r\n");
    let pad = len - base.len();
    upgrade_request("/echo", RFC_KEY, &format!("X-Pad: {}\r\n", "p".repeat(pad))).into_bytes()
}

#[test]
fn header_block_of_exactly_max_header_bytes_is_accepted_and_one_more_is_not() {
    let config = Config {
        max_header_bytes: 4096,
        ..Config::default()
    };
    let (addr, _) = start(config);
    let request = request_of_len(4096);
    assert_eq!(request.len(), 4096);
    let mut raw = Raw::connect(addr);
    raw.write(&request);
    assert_eq!(raw.read_http().status, 101);
    raw.close_cleanly();

    let request = request_of_len(4097);
    assert_eq!(request.len(), 4097);
    assert_eq!(refused(addr, &request).status, 431);
}

/// Tries a full upgrade on `/echo` until it gets a 101 or `within` has passed, and
/// returns the last status: the server may take a moment to notice a client left.
fn upgrade_status_within(addr: SocketAddr, within: Duration) -> u16 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut raw = Raw::connect(addr);
        raw.write(upgrade_request("/echo", RFC_KEY, "").as_bytes());
        let status = raw.read_http().status;
        if status == 101 || std::time::Instant::now() >= deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn connections_over_max_connections_get_503_until_a_slot_frees() {
    let config = Config {
        max_connections: 2,
        ..Config::default()
    };
    let (addr, _) = start(config);
    let mut first = Raw::open(addr);
    let second = Raw::open(addr);
    let mut raw = Raw::connect(addr);
    raw.write(upgrade_request("/echo", RFC_KEY, "").as_bytes());
    let head = raw.read_http();
    assert_eq!(head.status, 503, "{head:?}");
    assert!(head.header("Retry-After").is_some(), "{head:?}");
    raw.expect_eof();
    // The open connections are unaffected, and closing one makes room.
    first.send(true, TEXT, b"still here");
    first.expect_echo(TEXT, b"still here");
    first.close_cleanly();
    drop(first);
    assert_eq!(upgrade_status_within(addr, Duration::from_secs(5)), 101);
    drop(second);
}

#[test]
fn clients_that_leave_during_the_handshake_do_not_use_up_max_handshakes() {
    let config = Config {
        max_handshakes: 4,
        ..Config::default()
    };
    let (addr, _) = start(config);
    // Ten clients, one after another, each leaving before finishing its request: some
    // send nothing (a port probe), some half a request. At most one is ever pending.
    for i in 0..10 {
        let mut raw = Raw::connect(addr);
        if i % 2 == 1 {
            raw.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        }
        drop(raw);
        std::thread::sleep(Duration::from_millis(5));
    }
    // None of them is in the handshake any more, so a real client must get in.
    let status = upgrade_status_within(addr, Duration::from_secs(3));
    assert_eq!(
        status, 101,
        "clients that left mid-handshake still count against max_handshakes"
    );
}

#[test]
fn half_sent_request_is_dropped_after_the_handshake_timeout() {
    let config = Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (addr, _) = start(config);
    let mut raw = Raw::connect(addr);
    let started = std::time::Instant::now();
    raw.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    raw.expect_silence(Duration::from_millis(100));
    raw.expect_eof();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "dropped after {:?}, before the timeout",
        started.elapsed()
    );
}

#[test]
fn clients_that_time_out_in_the_handshake_do_not_use_up_max_handshakes() {
    let config = Config {
        max_handshakes: 2,
        handshake_timeout: Duration::from_millis(100),
        ..Config::default()
    };
    let (addr, _) = start(config);
    let mut slow: Vec<Raw> = (0..2).map(|_| Raw::connect(addr)).collect();
    for raw in &mut slow {
        raw.write(b"GET /echo HTTP/1.1\r\n");
    }
    // The server drops both once their time is up...
    for raw in &mut slow {
        raw.expect_eof();
    }
    // ...so they no longer hold handshake places.
    let status = upgrade_status_within(addr, Duration::from_secs(3));
    assert_eq!(
        status, 101,
        "clients dropped by the handshake timeout still count against max_handshakes"
    );
}

// ---------------------------------------------------------------------------------------
// Responses built from request data
// ---------------------------------------------------------------------------------------

/// A handler that copies request data into response headers, as a redirector or a
/// debugging endpoint might: the `to` query parameter (percent-decoded) into
/// `Location` for a plain GET, and into `X-Why` of the refusal of an upgrade.
struct Copier;

/// The percent-decoded value of `key` in the request's query.
fn query_param(request: &Request<'_>, key: &str) -> String {
    let raw = request
        .query()
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: String = bytes.by_ref().take(2).map(char::from).collect();
            out.push(u8::from_str_radix(&hex, 16).expect("two hex digits"));
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).expect("UTF-8 query")
}

impl Handler for Copier {
    type Session = ();

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<()> {
        let why = query_param(request, "to");
        Decision::Reject(
            HttpResponse::text(StatusCode::FORBIDDEN, "no\n").with_header("X-Why", &why),
        )
    }

    fn on_http(&mut self, request: &Request<'_>) -> HttpResponse {
        let to = query_param(request, "to");
        HttpResponse::new(StatusCode(302, "Found")).with_header("Location", &to)
    }

    fn on_message(&mut self, _cx: &mut Ctx<'_>, _message: Message<'_>) {}
}

/// Sends `request` and returns every byte the server sent until it closed.
fn raw_answer(addr: SocketAddr, request: &[u8]) -> String {
    let mut raw = Raw::connect(addr);
    raw.write(request);
    let mut bytes = Vec::new();
    raw.stream
        .read_to_end(&mut bytes)
        .expect("read the whole answer");
    String::from_utf8(bytes).expect("the answer is UTF-8")
}

#[test]
fn a_handler_header_carrying_a_line_break_gets_500_and_injects_nothing() {
    let addr = serve(Config::default(), Copier);
    // The handler's response is fine when the data is.
    let fine = raw_answer(addr, b"GET /go?to=/home HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(fine.starts_with("HTTP/1.1 302 Found\r\n"), "{fine:?}");
    assert!(fine.contains("\r\nLocation: /home\r\n"), "{fine:?}");

    // From on_http: a plain GET whose query smuggles a header line.
    let answer = raw_answer(
        addr,
        b"GET /go?to=/home%0D%0ASet-Cookie:%20x HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 500 "), "{answer:?}");
    assert!(
        !answer.to_ascii_lowercase().contains("set-cookie"),
        "{answer:?}"
    );
    assert!(!answer.contains("Location"), "{answer:?}");

    // From on_request: the refusal of an upgrade.
    let request = upgrade_request("/ws?to=x%0D%0ASet-Cookie:%20x", RFC_KEY, "");
    let answer = raw_answer(addr, request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 500 "), "{answer:?}");
    assert!(
        !answer.to_ascii_lowercase().contains("set-cookie"),
        "{answer:?}"
    );
    assert!(!answer.contains("X-Why"), "{answer:?}");

    // A NUL and a lone LF are refused the same way.
    for smuggled in ["%00", "%0A"] {
        let request = format!("GET /go?to=a{smuggled}b HTTP/1.1\r\nHost: x\r\n\r\n");
        let answer = raw_answer(addr, request.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 500 "),
            "{smuggled}: {answer:?}"
        );
    }
}
