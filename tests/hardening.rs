//! Abuse and faults, from outside, with real sockets: timeouts, keepalive, limits,
//! send-queue caps and handler panics (the binary's EMFILE and SIGTERM handling are in
//! binary.rs).

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wsreactor::{CloseCode, CloseReason, Config, ConnId, Ctx, Handler, Message, SendStatus};

/// Echoes, but some text messages are commands that misbehave on purpose.
#[derive(Default)]
struct Scripted {
    log: Arc<Mutex<Vec<String>>>,
    closes: Arc<Mutex<Vec<CloseReason>>>,
}

impl Handler for Scripted {
    type Session = ();

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        match message {
            Message::Text("panic") => panic!("a handler bug, on purpose"),
            Message::Text("close-me") => cx.close(CloseCode::NORMAL, "as asked").unwrap(),
            Message::Text(code) if code.starts_with("close-with:") => {
                // Report the outcome in a text message: the connection must stay open
                // when the code may not be sent.
                let code = CloseCode(code["close-with:".len()..].parse().unwrap());
                let outcome = format!("{:?}", cx.close(code, "asked"));
                let _ = cx.send_text(&outcome);
            }
            Message::Text("flood") => {
                // Send 256 KiB messages until the queue cap refuses one.
                let chunk = vec![7u8; 256 * 1024];
                let mut sent = 0;
                let status = loop {
                    match cx.send_binary(&chunk) {
                        SendStatus::Refused => break SendStatus::Refused,
                        _ if sent > 1000 => break SendStatus::Written,
                        _ => sent += 1,
                    }
                };
                let line = format!("sent {sent} then {status:?}, queued {}", cx.queued_bytes());
                self.log.lock().unwrap().push(line);
            }
            other => {
                let _ = cx.send(other);
            }
        }
    }

    fn on_close(&mut self, _id: ConnId, _session: (), reason: &CloseReason) {
        self.closes.lock().unwrap().push(reason.clone());
    }
}

#[test]
fn slowloris_is_dropped_by_the_handshake_timeout() {
    let config = Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (addr, _) = start(config);
    let mut raw = Raw::connect(addr);
    raw.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n");
    let started = Instant::now();
    raw.expect_eof();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    // The server is still serving.
    Raw::open(addr).close_cleanly();
}

#[test]
fn silent_peer_is_pinged_and_then_closed_by_keepalive() {
    let config = Config {
        idle_timeout: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let (addr, seen) = start(config);
    let mut raw = Raw::open(addr);
    let started = Instant::now();
    let ping = raw.read_frame();
    assert_eq!(ping.opcode, PING, "{ping:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "pinged too early"
    );
    // Play dead: no pong. The server gives up with 1011 and drops the connection.
    raw.expect_close(1011);
    raw.expect_eof();
    assert_eq!(seen.wait_for_closes(1), [CloseReason::KeepaliveTimeout]);
}

#[test]
fn peer_that_answers_pings_stays_connected() {
    let config = Config {
        idle_timeout: Duration::from_millis(100),
        pong_timeout: Duration::from_millis(100),
        ..Config::default()
    };
    let (addr, _) = start(config);
    let mut raw = Raw::open(addr);
    for _ in 0..4 {
        let ping = raw.read_frame();
        assert_eq!(ping.opcode, PING);
        raw.send(true, PONG, &ping.payload);
    }
    // Well past idle + pong timeouts, and still open.
    raw.send(true, TEXT, b"still here");
    raw.expect_echo(TEXT, b"still here");
    raw.close_cleanly();
}

/// Remembers the id of every connection it opens, for closing them through a `Handle`.
#[derive(Default)]
struct RememberIds {
    ids: Arc<Mutex<Vec<ConnId>>>,
}

impl Handler for RememberIds {
    type Session = ();

    fn on_open(&mut self, cx: &mut Ctx<'_>) {
        self.ids.lock().unwrap().push(cx.id());
    }

    fn on_message(&mut self, _cx: &mut Ctx<'_>, _message: Message<'_>) {}
}

/// A connection keeps one timestamp for its keepalive ping and its close: a close that
/// begins while a ping is unanswered still gets the whole close timeout, counted from
/// the close rather than from the ping.
#[test]
fn a_close_begun_while_a_ping_is_unanswered_gets_the_whole_close_timeout() {
    let config = Config {
        idle_timeout: Duration::from_millis(100),
        pong_timeout: Duration::from_secs(30),
        close_timeout: Duration::from_millis(1000),
        ..Config::default()
    };
    let handler = RememberIds::default();
    let ids = handler.ids.clone();
    let server = spawn_server(config, handler);
    let mut raw = Raw::open(server.addr);
    assert_eq!(raw.read_frame().opcode, PING);
    // Leave the ping unanswered for most of a close timeout, then close from outside.
    std::thread::sleep(Duration::from_millis(800));
    let id = ids.lock().unwrap()[0];
    server.handle.close(id, CloseCode::NORMAL, "bye").unwrap();
    raw.expect_close(1000);
    let started = Instant::now();
    raw.expect_eof();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "dropped {took:?} after the close (about 200 ms if timed from the ping)"
    );
}

/// `Duration::MAX` is how Rust code says "no timeout": every timeout set to it must
/// neither overflow the deadline arithmetic (a panic in this debug build) nor fire.
#[test]
fn duration_max_timeouts_never_fire_and_never_overflow() {
    let config = Config {
        handshake_timeout: Duration::MAX,
        close_timeout: Duration::MAX,
        idle_timeout: Duration::MAX,
        pong_timeout: Duration::MAX,
        send_stall_timeout: Duration::MAX,
        ..Config::default()
    };
    let (addr, seen) = start(config);
    let mut half = Raw::connect(addr);
    half.write(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    let mut open = Raw::open(addr);
    open.send(true, TEXT, b"hello");
    open.expect_echo(TEXT, b"hello");
    // No handshake timeout drops the half-sent request, no keepalive pings the open one.
    half.expect_silence(Duration::from_millis(300));
    open.expect_silence(Duration::from_millis(10));
    // Both are still served: the rest of the request upgrades, the echo still echoes.
    half.write(
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(half.read_http().status, 101);
    half.send(true, TEXT, b"late");
    half.expect_echo(TEXT, b"late");
    open.close_cleanly();
    half.close_cleanly();
    assert_eq!(seen.wait_for_closes(2).len(), 2);
}

/// A zero close timeout means "wait for the peer", in a graceful shutdown too: it
/// must not drop every connection at once.
#[test]
fn zero_close_timeout_makes_shutdown_wait_for_every_peer() {
    let config = Config {
        close_timeout: Duration::ZERO,
        ..Config::default()
    };
    let server = spawn_server(config, RememberIds::default());
    let mut first = Raw::open(server.addr);
    let mut second = Raw::open(server.addr);
    server.handle.shutdown().unwrap();
    assert_eq!(first.expect_close(1001), "server shutting down");
    assert_eq!(second.expect_close(1001), "server shutting down");
    // Nobody answers yet: the server waits, connections and all.
    first.expect_silence(Duration::from_millis(300));
    second.expect_silence(Duration::from_millis(10));
    assert!(
        !server.thread.is_finished(),
        "run() returned before the peers closed"
    );
    // The close handshake ends with the peer's EOF (the server drains until then).
    first.send(true, CLOSE, &close_payload(1001, b""));
    first.expect_eof();
    drop(first);
    second.expect_silence(Duration::from_millis(100));
    assert!(
        !server.thread.is_finished(),
        "run() returned with a peer still open"
    );
    second.send(true, CLOSE, &close_payload(1001, b""));
    second.expect_eof();
    drop(second);
    server.join().expect("run() after shutdown");
}

#[test]
fn peer_that_never_answers_our_close_is_dropped_after_the_close_timeout() {
    let config = Config {
        close_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let handler = Scripted::default();
    let closes = handler.closes.clone();
    let addr = serve(config, handler);
    let mut raw = Raw::open(addr);
    raw.send(true, TEXT, b"close-me");
    raw.expect_close(1000);
    let started = Instant::now();
    // We never answer; the server waits out the close timeout, then drops TCP.
    raw.expect_eof();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "dropped after {took:?}"
    );
    wait_until("on_close", || !closes.lock().unwrap().is_empty());
    assert_eq!(
        closes.lock().unwrap()[0],
        CloseReason::Local {
            code: CloseCode::NORMAL
        }
    );
}

/// A handler asking to close with a code that may not appear on the wire gets an error
/// value, and the peer sees nothing: no close frame, the connection still open.
#[test]
fn a_handler_close_with_an_unsendable_code_is_an_error_and_sends_nothing() {
    let handler = Scripted::default();
    let closes = handler.closes.clone();
    let addr = serve(Config::default(), handler);
    let mut raw = Raw::open(addr);
    for code in [1005u16, 1006, 1015, 0, 1004, 2999, 5000] {
        raw.send(true, TEXT, format!("close-with:{code}").as_bytes());
        let frame = raw.read_frame();
        assert_eq!(frame.opcode, TEXT, "code {code}: {frame:?}");
        assert_eq!(
            String::from_utf8(frame.payload).unwrap(),
            format!("Err(InvalidCloseCode(CloseCode({code})))")
        );
    }
    raw.send(true, TEXT, b"still open?");
    raw.expect_echo(TEXT, b"still open?");
    // A sendable code still closes.
    raw.send(true, TEXT, b"close-with:4000");
    assert_eq!(raw.expect_close(4000), "asked");
    raw.send(true, CLOSE, &close_payload(4000, b""));
    raw.expect_eof();
    wait_until("on_close", || !closes.lock().unwrap().is_empty());
    assert_eq!(
        closes.lock().unwrap()[..],
        [CloseReason::Local {
            code: CloseCode(4000)
        }]
    );
}

#[test]
fn send_to_a_full_queue_is_refused_and_a_stalled_peer_is_closed() {
    let config = Config {
        max_send_queue: 4 << 20,
        send_stall_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let handler = Scripted::default();
    let (log, closes) = (handler.log.clone(), handler.closes.clone());
    let addr = serve(config, handler);
    let mut raw = Raw::open(addr);
    raw.send(true, TEXT, b"flood");
    wait_until("the flood to stop", || !log.lock().unwrap().is_empty());
    let line = log.lock().unwrap()[0].clone();
    assert!(line.contains("then Refused"), "{line}");
    let queued: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(queued <= 4 << 20, "queue over its cap: {line}");
    // We read nothing: past the stall timeout the server gives up on us with 1008,
    // queued behind what it could not send.
    std::thread::sleep(Duration::from_millis(600));
    loop {
        let frame = raw.read_frame();
        if frame.opcode == CLOSE {
            assert_eq!(&frame.payload[..2], &1008u16.to_be_bytes());
            break;
        }
        assert_eq!(frame.opcode, BINARY);
    }
    raw.send(true, CLOSE, &close_payload(1008, b""));
    raw.expect_eof();
    wait_until("on_close", || !closes.lock().unwrap().is_empty());
    assert_eq!(closes.lock().unwrap()[0], CloseReason::SendStalled);
}

#[test]
fn connections_over_max_connections_get_503() {
    let config = Config {
        max_connections: 2,
        ..Config::default()
    };
    let (addr, _) = start(config);
    let mut first = Raw::open(addr);
    let mut second = Raw::open(addr);
    let mut third = Raw::connect(addr);
    let head = third.read_http();
    assert_eq!(head.status, 503, "{head:?}");
    assert_eq!(head.header("Server"), Some("wsreactor"));
    // The two admitted connections are untouched, and a slot that frees up is reusable.
    first.send(true, TEXT, b"one");
    first.expect_echo(TEXT, b"one");
    second.close_cleanly();
    drop(second);
    let mut fourth = None;
    wait_until("a freed slot", || {
        let mut raw = Raw::connect(addr);
        raw.write(upgrade_request("/echo", RFC_KEY, "").as_bytes());
        let ok = raw.read_http().status == 101;
        if ok {
            fourth = Some(raw);
        }
        ok
    });
    let mut fourth = fourth.unwrap();
    fourth.send(true, TEXT, b"four");
    fourth.expect_echo(TEXT, b"four");
}

#[test]
fn handshakes_in_progress_are_capped_with_503() {
    let config = Config {
        max_handshakes: 2,
        ..Config::default()
    };
    let (addr, _) = start(config);
    // Two clients that connect and say nothing hold the two handshake places.
    let _idle = [Raw::connect(addr), Raw::connect(addr)];
    std::thread::sleep(Duration::from_millis(50));
    let mut third = Raw::connect(addr);
    assert_eq!(third.read_http().status, 503);
}

#[test]
fn foreign_origin_gets_403_and_allowed_or_absent_origin_opens() {
    let config = Config {
        allowed_origins: vec!["https://good.example".into()],
        ..Config::default()
    };
    let (addr, _) = start(config);
    for (origin, status) in [
        ("Origin: https://evil.example\r\n", 403),
        ("Origin: https://GOOD.example\r\n", 101),
        ("", 101),
    ] {
        let mut raw = Raw::connect(addr);
        raw.write(upgrade_request("/echo", RFC_KEY, origin).as_bytes());
        assert_eq!(raw.read_http().status, status, "{origin:?}");
    }
}

#[test]
fn a_panicking_handler_closes_only_its_own_connection() {
    let handler = Scripted::default();
    let closes = handler.closes.clone();
    let addr = serve(Config::default(), handler);
    let mut bystander = Raw::open(addr);
    let mut victim = Raw::open(addr);
    victim.send(true, TEXT, b"panic");
    victim.expect_close(1011);
    wait_until("on_close", || !closes.lock().unwrap().is_empty());
    assert_eq!(closes.lock().unwrap()[0], CloseReason::HandlerPanic);
    for i in 0..3 {
        let text = format!("still echoing {i}");
        bystander.send(true, TEXT, text.as_bytes());
        bystander.expect_echo(TEXT, text.as_bytes());
    }
    // And new connections are served.
    Raw::open(addr).close_cleanly();
}
