//! Abuse and faults, from outside, with real sockets: timeouts, keepalive, limits,
//! send-queue caps, handler panics, EMFILE and graceful shutdown.

mod common;

use common::*;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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

/// The release binary, started as a child with `args`; prints its address on stderr.
fn spawn_binary(args: &[&str], nofile: Option<u64>) -> (Child, SocketAddr) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_wsreactor"));
    command
        .args(["--listen", &listen])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(limit) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
        unsafe {
            command.pre_exec(move || {
                let rl = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = command.spawn().expect("spawn wsreactor");
    let addr: SocketAddr = listen.parse().unwrap();
    wait_until("the child to listen", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    (child, addr)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from the state field (3).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn running_out_of_file_descriptors_is_survived_without_spinning() {
    let (mut child, addr) = spawn_binary(&["--max-connections", "100000"], Some(48));
    // Far more connections than descriptors: the rest wait in the listen backlog.
    let mut open = Vec::new();
    let mut waiting = Vec::new();
    let clients: Vec<Raw> = (0..60)
        .map(|_| {
            let mut raw = Raw::connect(addr);
            raw.write(upgrade_request("/echo", RFC_KEY, "").as_bytes());
            raw
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for raw in clients {
        // Answered (101) or still waiting in the backlog?
        raw.stream.set_nonblocking(true).unwrap();
        let answered = raw.stream.peek(&mut [0u8; 1]).is_ok();
        raw.stream.set_nonblocking(false).unwrap();
        if answered {
            open.push(raw);
        } else {
            waiting.push(raw);
        }
    }
    assert!(
        !waiting.is_empty(),
        "the descriptor limit was never reached"
    );
    // While it cannot accept, the loop must not spin.
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_millis(1000));
    let spent = cpu_ticks(child.id()) - before;
    assert!(
        spent < 30,
        "{spent} ticks of CPU in one second while out of descriptors"
    );
    // Free descriptors: the waiting clients are served.
    drop(open);
    for raw in &mut waiting {
        raw.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert_eq!(raw.read_http().status, 101);
        raw.send(true, TEXT, b"back");
        raw.expect_echo(TEXT, b"back");
    }
    child.kill().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    child.wait().unwrap();
    // Logged once per burst, not on each of the ~13 retries (every 100 ms) made while
    // out of descriptors; a burst ends when an accept succeeds (as when the probe
    // connection of `spawn_binary` frees its descriptor).
    let logged = stderr.matches("accept paused").count();
    assert!((1..=3).contains(&logged), "logged {logged} times: {stderr}");
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_cleanly() {
    let (mut child, addr) = spawn_binary(&[], None);
    let mut clients: Vec<Raw> = (0..3).map(|_| Raw::open(addr)).collect();
    clients[0].send(true, TEXT, b"hi");
    clients[0].expect_echo(TEXT, b"hi");
    // SAFETY: kill only signals the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    for mut raw in clients.drain(..) {
        raw.expect_close(1001);
        raw.send(true, CLOSE, &close_payload(1001, b""));
        raw.expect_eof();
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx.recv_timeout(IO_TIMEOUT).expect("exit").unwrap();
    assert!(status.success(), "{status:?}");
}

/// The binary checks its configuration before it listens: out-of-range flags are a
/// usage error (exit 2) with a message naming the field and the flag.
#[test]
fn the_binary_refuses_an_invalid_configuration_with_exit_code_2() {
    for (args, expected) in [
        (
            &["--read-buffer-size", "0"][..],
            "wsreactor: invalid configuration: read_buffer_size: must not be 0",
        ),
        (
            &["--deflate-level", "10"],
            "wsreactor: invalid configuration: deflate_level: 10 is above 9",
        ),
        (
            &["--pong-timeout", "NaN"],
            "wsreactor: --pong-timeout: not a number",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_wsreactor"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .output()
            .expect("run wsreactor");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
    }
}
