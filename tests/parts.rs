//! Messages in parts, end to end over real sockets: received as they arrive (plain,
//! compressed, with control frames between fragments, within the streamed limit, per
//! server or per connection), sent as several frames (with pings between, the
//! connection's other messages refused meanwhile, misuse reported), from a `Handle`
//! too, and the echo binary streaming a large message.

mod common;

use common::*;
use std::net::SocketAddr;
#[cfg(feature = "cli")]
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wsreactor::{
    Config, ConnId, Ctx, Decision, Handler, Message, Part, PartError, Request, SendStatus,
};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A part as the handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenPart {
    text: bool,
    bytes: Vec<u8>,
    first: bool,
    last: bool,
}

#[derive(Default)]
struct Seen {
    parts: Mutex<Vec<SeenPart>>,
    messages: Mutex<Vec<Vec<u8>>>,
    /// What `receive_in_parts` returned when called outside `on_open`.
    late_switch: Mutex<Vec<bool>>,
    ids: Mutex<Vec<ConnId>>,
}

/// Records parts (and whole messages); at the last part, answers with the message put
/// back together and how many parts it came in: `"<parts> <bytes...>"`. On a
/// connection to `/parts` it chooses parts mode in `on_open`.
struct Recorder {
    seen: Arc<Seen>,
}

#[derive(Default)]
struct Session {
    wants_parts: bool,
    assembled: Vec<u8>,
    parts: usize,
}

impl Handler for Recorder {
    type Session = Session;

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<Session> {
        Decision::accept_with(Session {
            wants_parts: request.path() == "/parts",
            ..Session::default()
        })
    }

    fn on_open(&mut self, cx: &mut Ctx<'_, Session>) {
        self.seen.ids.lock().unwrap().push(cx.id());
        if cx.session().wants_parts {
            assert!(cx.receive_in_parts(true));
        }
    }

    fn on_part(&mut self, cx: &mut Ctx<'_, Session>, part: Part<'_>) {
        self.seen.parts.lock().unwrap().push(SeenPart {
            text: part.is_text(),
            bytes: part.as_bytes().to_vec(),
            first: part.first,
            last: part.last,
        });
        let switched = cx.receive_in_parts(false);
        self.seen.late_switch.lock().unwrap().push(switched);
        let session = cx.session();
        session.assembled.extend_from_slice(part.as_bytes());
        session.parts += 1;
        if part.last {
            let mut answer = format!("{} ", session.parts).into_bytes();
            answer.append(&mut session.assembled);
            session.parts = 0;
            let _ = cx.send_binary(&answer);
        }
    }

    fn on_message(&mut self, cx: &mut Ctx<'_, Session>, message: Message<'_>) {
        self.seen
            .messages
            .lock()
            .unwrap()
            .push(message.as_bytes().to_vec());
        let _ = cx.send(message);
    }
}

fn recorder(config: Config) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let addr = serve(
        config,
        Recorder {
            seen: Arc::clone(&seen),
        },
    );
    (addr, seen)
}

fn parts_config() -> Config {
    Config {
        message_parts: true,
        ..Config::default()
    }
}

fn open_path(addr: SocketAddr, path: &str, extra: &str) -> Raw {
    let mut raw = Raw::connect(addr);
    raw.write(upgrade_request(path, RFC_KEY, extra).as_bytes());
    let head = raw.read_http();
    assert_eq!(head.status, 101);
    raw
}

/// Reads the recorder's answer: the part count and the message.
fn answer(raw: &mut Raw) -> (usize, Vec<u8>) {
    let mut frame = raw.read_frame();
    assert_eq!((frame.opcode, frame.fin), (BINARY, true));
    if frame.rsv & 0b100 != 0 {
        frame.payload = inflate(&frame.payload).unwrap();
    }
    let space = frame.payload.iter().position(|&b| b == b' ').unwrap();
    let count = std::str::from_utf8(&frame.payload[..space])
        .unwrap()
        .parse()
        .unwrap();
    (count, frame.payload[space + 1..].to_vec())
}

#[test]
fn parts_arrive_before_the_message_ends_with_code_points_whole_and_a_ping_between() {
    let (addr, seen) = recorder(parts_config());
    let mut raw = Raw::open(addr);
    let text = "κόσμε 𝄞 streamed".as_bytes();
    // Cut inside "ό" (2 bytes) and inside "𝄞" (4 bytes).
    let (a, rest) = text.split_at(3);
    let (b, c) = rest.split_at(rest.len() - 12);
    raw.send(false, TEXT, a);
    // The first part is handed on before the message is complete.
    wait_until("the first part", || !seen.parts.lock().unwrap().is_empty());
    raw.send(true, PING, b"between");
    let pong = raw.read_frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"between"[..])
    );
    raw.send(false, CONTINUATION, b);
    raw.send(true, CONTINUATION, c);
    let (count, message) = answer(&mut raw);
    assert_eq!(message, text);
    let parts = seen.parts.lock().unwrap().clone();
    assert_eq!(parts.len(), count);
    assert!(parts.len() >= 3, "{parts:?}");
    for (i, part) in parts.iter().enumerate() {
        assert!(part.text);
        assert!(
            std::str::from_utf8(&part.bytes).is_ok(),
            "part {i} is not UTF-8 alone"
        );
        assert_eq!((part.first, part.last), (i == 0, i == parts.len() - 1));
    }
    // Too late to switch modes once the connection has received data.
    assert!(seen.late_switch.lock().unwrap().iter().all(|&s| !s));
    // Empty messages are a first-and-last part each.
    raw.send(true, BINARY, b"");
    assert_eq!(answer(&mut raw), (1, Vec::new()));
    raw.close_cleanly();
}

#[test]
fn the_streamed_limit_replaces_the_message_limit_and_is_1009() {
    let (addr, _) = recorder(Config {
        max_message_size: 100,
        max_streamed_message_size: 1000,
        ..parts_config()
    });
    let mut raw = Raw::open(addr);
    // Over max_message_size, within the streamed limit.
    raw.send(false, BINARY, &[1; 500]);
    raw.send(true, CONTINUATION, &[2; 500]);
    let (_, message) = answer(&mut raw);
    assert_eq!(message.len(), 1000);
    // One byte more: refused from the header of the fragment that passes it.
    raw.send(false, BINARY, &[1; 600]);
    raw.send(true, CONTINUATION, &[2; 401]);
    raw.expect_close(1009);
}

#[test]
fn a_connection_chooses_parts_in_on_open_and_others_stay_whole() {
    let (addr, seen) = recorder(Config::default());
    let mut parts = open_path(addr, "/parts", "");
    let mut whole = open_path(addr, "/whole", "");
    parts.send(false, BINARY, b"ab");
    parts.send(true, CONTINUATION, b"cd");
    assert_eq!(answer(&mut parts), (2, b"abcd".to_vec()));
    whole.send(false, BINARY, b"ab");
    whole.send(true, CONTINUATION, b"cd");
    whole.expect_echo(BINARY, b"abcd");
    assert_eq!(*seen.messages.lock().unwrap(), [b"abcd".to_vec()]);
    parts.close_cleanly();
    whole.close_cleanly();
}

#[test]
fn compressed_messages_are_inflated_part_by_part() {
    let (addr, seen) = recorder(Config {
        deflate: true,
        ..parts_config()
    });
    let mut raw = open_path(
        addr,
        "/",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    let text = text_of_len(300_000);
    let wire = compress(text.as_bytes(), flate2::Compression::default());
    let (a, b) = wire.split_at(wire.len() / 2);
    raw.write(&compressed_frame(false, TEXT, a));
    raw.send(true, PING, b"p");
    raw.send(true, CONTINUATION, b);
    let pong = raw.read_frame();
    assert_eq!(pong.opcode, PONG);
    let (count, message) = answer(&mut raw);
    assert!(message == text.as_bytes());
    // At most 16 KiB of inflated output per part.
    assert!(count >= text.len() / (16 << 10), "{count} parts");
    let parts = seen.parts.lock().unwrap();
    assert!(parts.iter().all(|p| std::str::from_utf8(&p.bytes).is_ok()));
    drop(parts);
    raw.close_cleanly();
}

/// Sends a message in three parts with a ping between, tries everything that must be
/// refused meanwhile, and reports what it got in a text message after.
struct Streamer;

impl Handler for Streamer {
    type Session = ();

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        match message {
            Message::Text("stream") => {}
            Message::Text("begin") => {
                let _ = cx.send_part(Part::binary(b"first-", true, false));
                return;
            }
            Message::Text("end") => {
                let _ = cx.send_part(Part::binary(b"-last", false, true));
                return;
            }
            _ => return,
        }
        let mut report = Vec::new();
        let mut note = |what: &str, outcome: String| report.push(format!("{what}={outcome}"));
        let s = cx.send_part(Part::text("abc", true, false));
        note("begin", format!("{s:?}"));
        note("ping", format!("{:?}", cx.ping(b"mid")));
        let s = cx.send_part(Part::text("def", false, false));
        note("continue", format!("{s:?}"));
        note("send", format!("{:?}", cx.send_text("intruder")));
        let fanout = cx.broadcast(Message::Text("intruder"));
        note("broadcast", format!("{}/{}", fanout.sent, fanout.refused));
        let s = cx.send_part(Part::binary(b"x", false, false));
        note("kind", format!("{s:?}"));
        let s = cx.send_part(Part::text("x", true, false));
        note("again", format!("{s:?}"));
        let s = cx.send_part(Part::text("ghi", false, true));
        note("finish", format!("{s:?}"));
        let s = cx.send_part(Part::text("x", false, true));
        note("after", format!("{s:?}"));
        let status = cx.send_text(&report.join(" "));
        assert_eq!(status, SendStatus::Written);
    }
}

#[test]
fn a_message_sent_in_three_parts_reaches_a_real_client_with_a_ping_between() {
    let addr = serve(Config::default(), Streamer);
    let request =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/"))
            .unwrap();
    let (mut ws, _) = tungstenite::client::client(request, tcp(addr)).unwrap();
    ws.send(tungstenite::Message::text("stream")).unwrap();
    assert_eq!(
        ws.read().unwrap(),
        tungstenite::Message::Ping(b"mid".to_vec())
    );
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("abcdefghi"));
    let report = ws.read().unwrap().into_text().unwrap().to_string();
    let ok = format!("{:?}", Ok::<_, PartError>(SendStatus::Written));
    let expected = [
        format!("begin={ok}"),
        "ping=Written".to_owned(),
        format!("continue={ok}"),
        "send=Busy".to_owned(),
        "broadcast=0/1".to_owned(),
        format!("kind={:?}", Err::<SendStatus, _>(PartError::KindMismatch)),
        format!(
            "again={:?}",
            Err::<SendStatus, _>(PartError::AlreadyStarted)
        ),
        format!("finish={ok}"),
        format!("after={:?}", Err::<SendStatus, _>(PartError::NotStarted)),
    ]
    .join(" ");
    assert_eq!(report, expected);
    ws.close(None).unwrap();
}

#[test]
fn frames_of_a_message_in_parts_with_our_pong_between() {
    let addr = serve(Config::default(), Streamer);
    let mut raw = Raw::open(addr);
    raw.send(true, TEXT, b"begin");
    let first = raw.read_frame();
    assert_eq!(
        (first.fin, first.opcode, first.payload.as_slice()),
        (false, BINARY, &b"first-"[..])
    );
    // The peer pings mid-message: the pong goes out between the fragments.
    raw.send(true, PING, b"are you there");
    let pong = raw.read_frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"are you there"[..])
    );
    raw.send(true, TEXT, b"end");
    let last = raw.read_frame();
    assert_eq!(
        (last.fin, last.opcode, last.payload.as_slice()),
        (true, CONTINUATION, &b"-last"[..])
    );
    raw.close_cleanly();
}

#[test]
fn a_handle_sends_parts_and_a_broken_sequence_closes_with_1011() {
    let seen = Arc::new(Seen::default());
    let running = spawn_server(
        Config::default(),
        Recorder {
            seen: Arc::clone(&seen),
        },
    );
    let mut raw = Raw::open(running.addr);
    wait_until("the connection to open", || {
        !seen.ids.lock().unwrap().is_empty()
    });
    let id = seen.ids.lock().unwrap()[0];
    let handle = &running.handle;
    handle
        .send_part_binary(id, b"one ".to_vec(), true, false)
        .unwrap();
    // Refused on the loop (Busy): it would land inside the open message.
    handle.send_text(id, "intruder").unwrap();
    handle
        .send_part_binary(id, b"two ".to_vec(), false, false)
        .unwrap();
    handle
        .send_part_binary(id, b"three".to_vec(), false, true)
        .unwrap();
    let frames: Vec<_> = (0..3).map(|_| raw.read_frame()).collect();
    let shape: Vec<_> = frames.iter().map(|f| (f.fin, f.opcode)).collect();
    assert_eq!(
        shape,
        [(false, BINARY), (false, CONTINUATION), (true, CONTINUATION)]
    );
    let joined: Vec<u8> = frames.into_iter().flat_map(|f| f.payload).collect();
    assert_eq!(joined, b"one two three");
    // A continuation with nothing begun cannot be sent right: the connection ends.
    handle.send_part_text(id, "orphan", false, true).unwrap();
    raw.expect_close(1011);
}

/// The echo binary as a child process, for messages of up to 64 MiB (built only with
/// the `cli` feature, as `make test` builds it).
#[cfg(feature = "cli")]
fn spawn_echo_binary() -> (std::process::Child, SocketAddr) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_wsreactor"))
        .args(["--listen", &listen, "--max-message-size", "67108864"])
        .args(["--max-send-queue", "134217728"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wsreactor");
    let addr: SocketAddr = listen.parse().unwrap();
    wait_until("the child to listen", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    (child, addr)
}

/// Most clients (tungstenite's blocking API, the Autobahn suite) write a whole
/// message before they read: the streaming echo, paused for the echo it queued,
/// must read on rather than wait for a reader that waits for it.
#[test]
#[cfg(feature = "cli")]
fn the_echo_binary_serves_a_client_that_writes_the_whole_message_before_reading() {
    let (mut child, addr) = spawn_echo_binary();
    let mut raw = Raw::open(addr);
    // Small client buffers, so that the kernel's (autotuned up to 32 MiB on each
    // side of loopback) cannot absorb the whole exchange and hide a deadlock.
    shrink_socket_buffers(&raw.stream, 64 * 1024);
    // Bounded: without the fix the write blocks for good on a full TCP window.
    raw.stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Larger than what the kernel's socket buffers on both sides hold (loopback
    // autotunes them up to a few tens of MiB).
    let message = pattern(3, 64 << 20);
    raw.write(&frame(true, BINARY, &message));
    let mut echoed = Vec::new();
    loop {
        let frame = raw.read_frame();
        echoed.extend_from_slice(&frame.payload);
        if frame.fin {
            break;
        }
    }
    assert!(echoed == message, "the echo differs");
    raw.close_cleanly();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
#[cfg(feature = "cli")]
fn the_echo_binary_streams_a_large_message_with_flat_memory() {
    let (mut child, addr) = spawn_echo_binary();
    let pid = child.id();
    let mut raw = Raw::open(addr);
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // Warm up (the loop's read buffer, the connection's queue) before the baseline.
    raw.send(true, BINARY, &pattern(1, 256 << 10));
    let mut warm = 0;
    while warm < 256 << 10 {
        warm += raw.read_frame().payload.len();
    }
    let before = status_kib(pid, "VmHWM:");
    // One 64 MiB frame: its header and first MiB, then the echo must begin before
    // the rest is sent.
    let size = 64 << 20;
    let message = pattern(2, size);
    let bytes = frame(true, BINARY, &message);
    let head = 14 + (1 << 20);
    raw.write(&bytes[..head]);
    let first = raw.read_frame();
    assert_eq!((first.fin, first.opcode), (false, BINARY));
    assert!(!first.payload.is_empty());
    // The rest, written from another thread while this one reads the echo, as a
    // client that streams both ways does.
    let mut writer = raw.stream.try_clone().unwrap();
    let rest = bytes[head..].to_vec();
    drop(bytes);
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&rest).unwrap();
    });
    let mut echoed = first.payload;
    loop {
        let frame = raw.read_frame();
        assert_eq!(frame.opcode, CONTINUATION);
        echoed.extend_from_slice(&frame.payload);
        if frame.fin {
            break;
        }
    }
    sender.join().unwrap();
    assert!(echoed == message, "the echo differs");
    let after = status_kib(pid, "VmHWM:");
    let growth = after.saturating_sub(before);
    eprintln!("echo binary VmHWM {before} -> {after} KiB (+{growth})");
    // Held whole, the message alone would be 64 MiB (twice over at times).
    assert!(growth < 8 * 1024, "the echo binary grew by {growth} KiB");
    raw.close_cleanly();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn close_reasons_are_unchanged_by_parts_mode() {
    // A protocol error in parts mode still fails the connection with its code.
    let (addr, _) = recorder(parts_config());
    let mut raw = Raw::open(addr);
    raw.send(false, TEXT, "κόσμε".as_bytes());
    raw.send(true, CONTINUATION, &[0xF4, 0x90, 0x80, 0x80]);
    raw.expect_close(1007);
}

#[test]
fn a_keepalive_ping_goes_out_between_the_parts_of_an_open_message() {
    let addr = serve(
        Config {
            idle_timeout: Duration::from_millis(200),
            ..Config::default()
        },
        Streamer,
    );
    let mut raw = Raw::open(addr);
    raw.send(true, TEXT, b"begin");
    let first = raw.read_frame();
    assert_eq!((first.fin, first.opcode), (false, BINARY));
    // Silent past the idle timeout with the message open: the keepalive ping still
    // goes out, between the fragments.
    let ping = raw.read_frame();
    assert_eq!(ping.opcode, PING);
    raw.send(true, PONG, &ping.payload);
    raw.send(true, TEXT, b"end");
    let last = raw.read_frame();
    assert_eq!(
        (last.fin, last.opcode, last.payload.as_slice()),
        (true, CONTINUATION, &b"-last"[..])
    );
    raw.close_cleanly();
}
