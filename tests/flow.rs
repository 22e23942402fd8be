//! Flow for embedders, end to end over real sockets: `on_drain` after a client that
//! stopped reading resumes, `on_pong` and the keepalive round trip (and a forged pong
//! that must not set it), drops counted and reported (`on_dropped`, in-loop and via
//! the `Handle`), and the three queue policies as a slow client sees them.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wsreactor::{
    CloseReason, Config, ConnId, Ctx, Decision, Handler, Message, QueuePolicy, Request, SendStatus,
    Stats,
};

/// Size of each message the tests push: above the 16 KiB cork limit, so each one is
/// written through until the kernel's buffers are full, and only then queued.
const SIZE: usize = 64 * 1024;

/// The `i`-th message of a stream: its number, then bytes that depend on it, so a
/// message that is cut, merged or corrupted shows.
fn msg(i: u32, size: usize) -> Vec<u8> {
    let mut bytes = i.to_be_bytes().to_vec();
    bytes.extend((4..size).map(|j| (i as usize * 7 + j) as u8));
    bytes
}

/// Checks that `payload` is a whole, intact message of the stream; its number.
fn check(payload: &[u8]) -> u32 {
    assert_eq!(payload.len(), SIZE, "a message of the wrong size");
    let i = u32::from_be_bytes(payload[..4].try_into().unwrap());
    assert!(payload == msg(i, SIZE), "message {i} is corrupt");
    i
}

/// A server with small queues, so that a client that stops reading soon fills its own.
fn config(policy: QueuePolicy) -> Config {
    Config {
        max_send_queue: 256 << 10,
        write_high_water: 128 << 10,
        queue_policy: policy,
        ..Config::default()
    }
}

#[derive(Debug, Default)]
struct Log {
    /// Connections in the order they opened.
    opened: Vec<ConnId>,
    drains: Vec<ConnId>,
    pongs: Vec<(ConnId, Vec<u8>)>,
    /// `on_dropped` calls: the connection, the count, `messages_dropped` then.
    dropped: Vec<(ConnId, u64, u64)>,
    /// Per `fill`: the statuses seen (written, queued, refused).
    fills: Vec<(usize, usize, usize)>,
    /// Per `publish`: receivers that refused, summed over its messages.
    publish_refused: Vec<usize>,
    closes: Vec<(ConnId, CloseReason)>,
    stats: Option<Stats>,
}

/// Subscribes to `feed` unless on `/producer`; `/drop` and `/close` choose those queue
/// policies, anything else takes the server's. Text commands:
/// `fill N` / `fill-until N` (send N messages to itself, all of them or until one is
/// refused; a ping `mid` halfway), `publish N` (N messages to `feed`), `rtt`, `ping X`,
/// `stats`.
#[derive(Clone)]
struct Flow {
    log: Arc<Mutex<Log>>,
}

impl Handler for Flow {
    type Session = bool;

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<bool> {
        let subscriber = request.path() != "/producer";
        let decision = Decision::accept_with(subscriber);
        match request.path() {
            "/drop" => decision.with_queue_policy(QueuePolicy::DropOldest),
            "/close" => decision.with_queue_policy(QueuePolicy::Close),
            "/refuse" => decision.with_queue_policy(QueuePolicy::Refuse),
            _ => decision,
        }
    }

    fn on_open(&mut self, cx: &mut Ctx<'_, bool>) {
        if *cx.session() {
            cx.subscribe("feed");
        }
        self.log.lock().unwrap().opened.push(cx.id());
    }

    fn on_message(&mut self, cx: &mut Ctx<'_, bool>, message: Message<'_>) {
        let Message::Text(text) = message else {
            return;
        };
        let (command, argument) = text.split_once(' ').unwrap_or((text, ""));
        let n: u32 = argument.parse().unwrap_or(0);
        match command {
            "fill" | "fill-until" | "fill-noise" | "fill-chain" => {
                let (mut written, mut queued, mut refused) = (0, 0, 0);
                for i in 0..n {
                    if i == n / 2 {
                        let _ = cx.ping(b"mid");
                    }
                    let message = match command {
                        "fill-noise" => noise(i),
                        "fill-chain" => chain(i),
                        _ => msg(i, SIZE),
                    };
                    match cx.send_binary(&message) {
                        SendStatus::Written => written += 1,
                        SendStatus::Queued(_) => queued += 1,
                        SendStatus::Refused => refused += 1,
                        SendStatus::Busy => panic!("no message in parts is open here"),
                    }
                    if refused > 0 && command == "fill-until" {
                        break;
                    }
                }
                let fill = (written, queued, refused);
                self.log.lock().unwrap().fills.push(fill);
            }
            "publish" => {
                let mut refused = 0;
                for i in 0..n {
                    refused += cx.publish("feed", Message::Binary(&msg(i, SIZE))).refused;
                }
                self.log.lock().unwrap().publish_refused.push(refused);
            }
            "rtt" => {
                let rtt = cx.ping_rtt().map(|rtt| rtt.as_micros().to_string());
                let _ = cx.send_text(&rtt.unwrap_or_else(|| "none".into()));
            }
            "ping" => {
                let _ = cx.ping(argument.as_bytes());
            }
            "stats" => {
                self.log.lock().unwrap().stats = Some(cx.stats().clone());
                let _ = cx.send_text("stats");
            }
            _ => {}
        }
    }

    fn on_drain(&mut self, cx: &mut Ctx<'_, bool>) {
        self.log.lock().unwrap().drains.push(cx.id());
        // The producer resumes: this must reach the client after what was queued.
        let _ = cx.send_text("resumed");
    }

    fn on_pong(&mut self, cx: &mut Ctx<'_, bool>, payload: &[u8]) {
        let pong = (cx.id(), payload.to_vec());
        self.log.lock().unwrap().pongs.push(pong);
    }

    fn on_dropped(&mut self, cx: &mut Ctx<'_, bool>, dropped: u64) {
        let total = cx.stats().messages_dropped;
        self.log
            .lock()
            .unwrap()
            .dropped
            .push((cx.id(), dropped, total));
    }

    fn on_close(&mut self, id: ConnId, _session: bool, reason: &CloseReason) {
        self.log.lock().unwrap().closes.push((id, reason.clone()));
    }
}

fn start_flow(config: Config) -> (Running, Arc<Mutex<Log>>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let server = spawn_server(config, Flow { log: log.clone() });
    (server, log)
}

/// Opens a WebSocket on `path`, and waits until the handler has seen it open.
fn open(addr: SocketAddr, path: &str, log: &Mutex<Log>) -> (Raw, ConnId) {
    let (raw, id, _) = open_with(addr, path, "", log);
    (raw, id)
}

/// [`open`] with `extra` header lines in the request; the 101's head too.
fn open_with(
    addr: SocketAddr,
    path: &str,
    extra: &str,
    log: &Mutex<Log>,
) -> (Raw, ConnId, HttpHead) {
    let before = log.lock().unwrap().opened.len();
    let mut raw = Raw::connect(addr);
    raw.write(upgrade_request(path, RFC_KEY, extra).as_bytes());
    let head = raw.read_http();
    assert_eq!(head.status, 101, "upgrade refused: {head:?}");
    wait_until("on_open", || log.lock().unwrap().opened.len() > before);
    let id = log.lock().unwrap().opened[before];
    (raw, id, head)
}

/// The `i`-th message of an incompressible stream: its number, then noise.
fn noise(i: u32) -> Vec<u8> {
    let mut bytes = i.to_be_bytes().to_vec();
    bytes.extend(pattern(i as u64 + 1, SIZE - 4));
    bytes
}

/// The `i`-th message of a stream whose messages a compressor with context takeover
/// chains: its number, the last 16 KiB of the previous message again (a
/// back-reference across the message boundary, well inside a 32 KiB window), then
/// noise of its own, ending with the 16 KiB the next one repeats.
fn chain(i: u32) -> Vec<u8> {
    let tail = 16 << 10;
    let mut bytes = i.to_be_bytes().to_vec();
    bytes.extend(pattern(i as u64, tail));
    bytes.extend(pattern(u64::MAX - i as u64, SIZE - 4 - 2 * tail));
    bytes.extend(pattern(i as u64 + 1, tail));
    bytes
}

/// The server's stats as of now, asked for through `control` (a producer that reads):
/// the handler takes a snapshot in a later turn than anything `control` did before.
fn stats(control: &mut Raw, log: &Mutex<Log>) -> Stats {
    control.send(true, TEXT, b"stats");
    control.expect_echo(TEXT, b"stats");
    log.lock().unwrap().stats.clone().expect("a stats snapshot")
}

/// Reads the data messages of the stream until `done` says so; their numbers, each
/// checked whole and intact. Pings with `mid` are noted in `pings`.
fn read_stream(
    raw: &mut Raw,
    pings: &mut Vec<Vec<u8>>,
    mut done: impl FnMut(&[u32]) -> bool,
) -> Vec<u32> {
    let mut got = Vec::new();
    while !done(&got) {
        let frame = raw.read_frame();
        assert!(
            frame.fin && frame.rsv == 0,
            "a fragment or a flagged frame: {:?}",
            frame.opcode
        );
        match frame.opcode {
            BINARY => got.push(check(&frame.payload)),
            PING => pings.push(frame.payload),
            other => panic!(
                "unexpected frame {other:#x}: {:?}",
                String::from_utf8_lossy(&frame.payload)
            ),
        }
    }
    got
}

#[test]
fn a_client_that_stops_reading_then_resumes_gets_one_on_drain() {
    let (server, log) = start_flow(config(QueuePolicy::Refuse));
    let (mut raw, id) = open(server.addr, "/refuse", &log);
    // The client does not read while the server fills its queue, in one callback,
    // until a send is refused: the kernel's buffers, then the queue, are full.
    raw.send(true, TEXT, b"fill-until 100000");
    wait_until("the fill", || !log.lock().unwrap().fills.is_empty());
    let (written, queued, refused) = log.lock().unwrap().fills[0];
    assert_eq!(refused, 1, "the fill stops at the first refusal");
    assert!(queued > 0, "the queue was used ({written} written)");
    // Nothing drained while nobody read.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        log.lock().unwrap().drains.is_empty(),
        "on_drain before the client read"
    );

    // The client resumes: every accepted message arrives whole and in order, then the
    // "resumed" the handler sent from on_drain.
    let accepted = (written + queued) as u32;
    let mut pings = Vec::new();
    let got = read_stream(&mut raw, &mut pings, |got| got.len() == accepted as usize);
    assert_eq!(got, (0..accepted).collect::<Vec<_>>());
    raw.expect_echo(TEXT, b"resumed");
    assert_eq!(log.lock().unwrap().drains, [id], "exactly one on_drain");
    // A drain is paid once: more traffic on an empty queue calls nothing.
    raw.send(true, TEXT, b"rtt");
    raw.expect_echo(TEXT, b"none");
    assert_eq!(log.lock().unwrap().drains.len(), 1);
    raw.close_cleanly();
}

#[test]
fn on_pong_gets_every_pong_with_its_payload() {
    let (server, log) = start_flow(Config::default());
    let (mut raw, id) = open(server.addr, "/producer", &log);
    // Unsolicited: a heartbeat from the client.
    raw.send(true, PONG, b"heartbeat");
    // Solicited: the answer to the handler's own ping.
    raw.send(true, TEXT, b"ping abc");
    let frame = raw.read_frame();
    assert_eq!(
        (frame.opcode, frame.payload.as_slice()),
        (PING, &b"abc"[..])
    );
    raw.send(true, PONG, b"abc");
    // An empty one.
    raw.send(true, PONG, b"");
    wait_until("three pongs", || log.lock().unwrap().pongs.len() == 3);
    let pongs = log.lock().unwrap().pongs.clone();
    assert_eq!(
        pongs,
        [
            (id, b"heartbeat".to_vec()),
            (id, b"abc".to_vec()),
            (id, Vec::new())
        ]
    );
    // None of them was an echo of a keepalive ping: no round trip.
    raw.send(true, TEXT, b"rtt");
    raw.expect_echo(TEXT, b"none");
    raw.close_cleanly();
}

#[test]
fn the_keepalive_round_trip_is_measured_and_a_forged_pong_does_not_set_it() {
    let config = Config {
        idle_timeout: Duration::from_millis(200),
        pong_timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let (server, log) = start_flow(config);
    let opened = Instant::now();
    let (mut raw, _) = open(server.addr, "/producer", &log);
    // A pong before any ping, with a plausible 8-byte time: not an echo.
    raw.send(true, PONG, &1u64.to_be_bytes());
    // The keepalive ping comes after 200 ms of silence, stamped with 8 bytes.
    let ping = raw.read_frame();
    assert_eq!(ping.opcode, PING);
    assert_eq!(ping.payload.len(), 8, "a stamped keepalive ping");
    let received = Instant::now();
    // Forged answers: the stamp shifted by one µs either way, and a truncated one.
    let stamp = u64::from_be_bytes(ping.payload[..].try_into().unwrap());
    raw.send(true, PONG, &(stamp - 1).to_be_bytes());
    raw.send(true, PONG, &(stamp + 1).to_be_bytes());
    raw.send(true, PONG, &ping.payload[..7]);
    raw.send(true, TEXT, b"rtt");
    raw.expect_echo(TEXT, b"none");
    // The true echo, held back for 50 ms: the round trip includes the wait.
    std::thread::sleep(Duration::from_millis(50));
    raw.send(true, PONG, &ping.payload);
    raw.send(true, TEXT, b"rtt");
    let frame = raw.read_frame();
    assert_eq!(frame.opcode, TEXT);
    let rtt: u64 = String::from_utf8(frame.payload)
        .unwrap()
        .parse()
        .expect("a round trip");
    let held = received.elapsed();
    assert!(
        rtt >= 50_000,
        "round trip {rtt} µs, but the pong was held 50 ms"
    );
    assert!(
        rtt <= opened.elapsed().as_micros() as u64,
        "round trip {rtt} µs is longer than the connection's life"
    );
    eprintln!("keepalive round trip: {rtt} µs (pong held {held:?})");
    // The same pong again (a replay) changes nothing.
    raw.send(true, PONG, &ping.payload);
    raw.send(true, TEXT, b"rtt");
    raw.expect_echo(TEXT, rtt.to_string().as_bytes());
    // Every pong went to on_pong, forged ones too: 1 + 3 + 1 + 1.
    wait_until("six pongs", || log.lock().unwrap().pongs.len() == 6);
    // The one true round trip is in the histogram, in its power-of-two bucket.
    raw.send(true, TEXT, b"stats");
    raw.expect_echo(TEXT, b"stats");
    let stats = log.lock().unwrap().stats.clone().unwrap();
    let rtts = &stats.ping_rtt_micros;
    assert_eq!(rtts.count(), 1, "{rtts:?}");
    assert_eq!(rtts.sum(), rtt);
    let bucket = (64 - (rtt - 1).leading_zeros()) as usize;
    assert_eq!(rtts.counts()[bucket], 1, "{rtt} µs: {rtts:?}");
    drop(server);
}

#[test]
fn an_in_loop_publish_to_a_slow_subscriber_counts_its_drops_and_tells_it_once() {
    let (server, log) = start_flow(config(QueuePolicy::Refuse));
    let (mut slow, slow_id) = open(server.addr, "/refuse", &log);
    let (mut producer, _) = open(server.addr, "/producer", &log);
    producer.send(true, TEXT, b"publish 1000");
    wait_until("the publish", || {
        !log.lock().unwrap().publish_refused.is_empty()
    });
    let refused = log.lock().unwrap().publish_refused[0] as u64;
    assert!(refused > 0, "the slow subscriber refused nothing");
    wait_until("on_dropped", || !log.lock().unwrap().dropped.is_empty());
    // One call for the whole publish loop, with every refusal, counted in Stats.
    assert_eq!(log.lock().unwrap().dropped, [(slow_id, refused, refused)]);
    let stats = stats(&mut producer, &log);
    assert_eq!(stats.messages_dropped, refused);
    assert!(stats.sends_refused >= refused);
    // The subscriber resumes reading: the messages before the gap, whole, in order;
    // with Refuse nothing already queued is lost.
    let mut pings = Vec::new();
    let delivered = 1000 - refused as usize;
    let got = read_stream(&mut slow, &mut pings, |got| got.len() == delivered);
    assert_eq!(got, (0..delivered as u32).collect::<Vec<_>>());
    // Its queue drained: the refusals owed it a drain.
    slow.expect_echo(TEXT, b"resumed");
    slow.expect_silence(Duration::from_millis(100));
}

#[test]
fn publishes_through_the_handle_count_their_drops_too() {
    let (server, log) = start_flow(config(QueuePolicy::Refuse));
    let (mut slow, slow_id) = open(server.addr, "/refuse", &log);
    let (mut producer, producer_id) = open(server.addr, "/producer", &log);
    const N: u32 = 1000;
    for i in 0..N {
        server.handle.publish_binary("feed", msg(i, SIZE)).unwrap();
    }
    // Commands are carried out in order: once this arrives, every publish has been,
    // and the stats asked for next come from a later turn, after the drops' report.
    server.handle.send_text(producer_id, "done").unwrap();
    producer.expect_echo(TEXT, b"done");
    let stats = stats(&mut producer, &log);
    let dropped: u64 = log.lock().unwrap().dropped.iter().map(|d| d.1).sum();
    assert_eq!(stats.messages_dropped, dropped);
    assert!(dropped > 0);
    assert!(log.lock().unwrap().dropped.iter().all(|d| d.0 == slow_id));
    // Every delivered message arrives; with the drops they make up the stream.
    let mut pings = Vec::new();
    let got = read_stream(&mut slow, &mut pings, |got| {
        got.len() as u64 + dropped == N as u64
    });
    assert_eq!(got, (0..got.len() as u32).collect::<Vec<_>>());
    slow.expect_echo(TEXT, b"resumed");
    slow.expect_silence(Duration::from_millis(100));
}

#[test]
fn drop_oldest_keeps_the_newest_whole_messages_and_every_control_frame() {
    let (server, log) = start_flow(config(QueuePolicy::Refuse));
    let (mut raw, id) = open(server.addr, "/drop", &log);
    const N: u32 = 1000;
    raw.send(true, TEXT, format!("fill {N}").as_bytes());
    wait_until("the fill", || !log.lock().unwrap().fills.is_empty());
    let (_, _, refused) = log.lock().unwrap().fills[0];
    assert_eq!(refused, 0, "DropOldest made room for every new message");
    wait_until("on_dropped", || !log.lock().unwrap().dropped.is_empty());
    let dropped = log.lock().unwrap().dropped[0].1;
    assert_eq!(log.lock().unwrap().dropped, [(id, dropped, dropped)]);
    assert!(dropped > 0);
    // The client resumes: the newest message is there, older ones are missing, and
    // what arrives is whole and in order; the ping queued halfway is not dropped.
    let mut pings = Vec::new();
    let got = read_stream(&mut raw, &mut pings, |got| got.last() == Some(&(N - 1)));
    assert_eq!(got.len() as u64 + dropped, N as u64, "received + dropped");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    assert!(got.windows(2).any(|w| w[1] > w[0] + 1), "no gap");
    assert_eq!(pings, [b"mid".to_vec()]);
    raw.expect_echo(TEXT, b"resumed");
    raw.expect_silence(Duration::from_millis(100));
    raw.close_cleanly();
}

#[test]
fn drop_oldest_conflates_a_fan_out_too() {
    // Server-wide default this time, not chosen at the upgrade.
    let (server, log) = start_flow(config(QueuePolicy::DropOldest));
    let (mut slow, slow_id) = open(server.addr, "/feed", &log);
    let (mut producer, _) = open(server.addr, "/producer", &log);
    producer.send(true, TEXT, b"publish 1000");
    wait_until("the publish", || {
        !log.lock().unwrap().publish_refused.is_empty()
    });
    assert_eq!(log.lock().unwrap().publish_refused, [0]);
    wait_until("on_dropped", || !log.lock().unwrap().dropped.is_empty());
    let (who, dropped, _) = log.lock().unwrap().dropped[0];
    assert_eq!(who, slow_id);
    let mut pings = Vec::new();
    let got = read_stream(&mut slow, &mut pings, |got| got.last() == Some(&999));
    assert_eq!(got.len() as u64 + dropped, 1000);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert!(dropped > 0 && got.windows(2).any(|w| w[1] > w[0] + 1));
    let stats = stats(&mut producer, &log);
    assert_eq!(stats.messages_dropped, dropped);
    assert_eq!(stats.sends_refused, 0);
}

#[test]
fn the_close_policy_closes_a_slow_client_with_1008_after_whole_messages() {
    let (server, log) = start_flow(config(QueuePolicy::Refuse));
    let (mut slow, slow_id) = open(server.addr, "/close", &log);
    let (mut producer, _) = open(server.addr, "/producer", &log);
    producer.send(true, TEXT, b"publish 1000");
    wait_until("the publish", || {
        !log.lock().unwrap().publish_refused.is_empty()
    });
    // The client reads: the messages before the close arrive whole and in order (the
    // ones still waiting in the queue were discarded), then the close.
    let mut got = Vec::new();
    let reason = loop {
        let frame = slow.read_frame();
        match frame.opcode {
            BINARY => got.push(check(&frame.payload)),
            CLOSE => {
                let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                assert_eq!(code, 1008);
                break String::from_utf8(frame.payload[2..].to_vec()).unwrap();
            }
            other => panic!("unexpected frame {other:#x}"),
        }
    };
    assert_eq!(reason, "send queue full");
    assert_eq!(got, (0..got.len() as u32).collect::<Vec<_>>());
    assert!(got.len() < 1000);
    slow.send(true, CLOSE, &close_payload(1008, b""));
    slow.expect_eof();
    wait_until("on_close", || !log.lock().unwrap().closes.is_empty());
    assert_eq!(
        log.lock().unwrap().closes,
        [(slow_id, CloseReason::QueueFull)]
    );
    let stats = stats(&mut producer, &log);
    assert_eq!(stats.queue_full_closes, 1);
    assert!(
        stats.messages_dropped > 0,
        "the waiting messages were discarded"
    );
    assert_eq!(stats.closes, [(1008, 1)]);
    // No on_dropped for a connection that is closing.
    assert!(log.lock().unwrap().dropped.is_empty());
}

/// Checks that `message` is a whole, intact message of the `chained` or noise stream;
/// its number.
fn check_noise(message: &[u8], chained: bool) -> u32 {
    assert_eq!(message.len(), SIZE, "a message of the wrong size");
    let i = u32::from_be_bytes(message[..4].try_into().unwrap());
    let expected = if chained { chain(i) } else { noise(i) };
    assert!(message == expected, "message {i} is corrupt");
    i
}

/// Fills a compressed connection's queue under `DropOldest` and reads it all back,
/// inflating with one context for the whole stream when `takeover` (as the peer of a
/// server that keeps its context must), or one per message; the numbers received.
fn compressed_fill(takeover: bool) -> (Vec<u32>, (usize, usize, usize)) {
    let config = Config {
        deflate: true,
        deflate_context_takeover: takeover,
        ..config(QueuePolicy::DropOldest)
    };
    let (server, log) = start_flow(config);
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let (mut raw, _, head) = open_with(server.addr, "/feed", offer, &log);
    let agreed = head.header("Sec-WebSocket-Extensions").unwrap().to_owned();
    assert_eq!(
        agreed.contains("server_no_context_takeover"),
        !takeover,
        "{agreed}"
    );
    // With takeover, messages that refer back to the one before (half of each
    // compresses away), so that a dropped one would break the next.
    let (n, fill) = if takeover {
        (600, "fill-chain")
    } else {
        (300, "fill-noise")
    };
    raw.send(true, TEXT, format!("{fill} {n}").as_bytes());
    // Compressing 20 MB in a debug build on a busy machine takes a while.
    let deadline = Instant::now() + Duration::from_secs(120);
    while log.lock().unwrap().fills.is_empty() {
        assert!(Instant::now() < deadline, "timed out waiting for the fill");
        std::thread::sleep(Duration::from_millis(10));
    }
    let fill = log.lock().unwrap().fills[0];
    let mut context = flate2::Decompress::new(false);
    let mut got = Vec::new();
    while got.last() != Some(&(n - 1)) {
        let frame = raw.read_frame();
        match frame.opcode {
            PING => continue,
            BINARY => {}
            other => panic!("unexpected frame {other:#x}"),
        }
        assert_eq!(frame.rsv, 4, "a compressed frame (RSV1)");
        let message = if takeover {
            inflate_with(&mut context, &frame.payload)
        } else {
            inflate(&frame.payload).unwrap()
        };
        got.push(check_noise(&message, takeover));
        if fill.2 > 0 && got.len() == fill.0 + fill.1 {
            break; // refusals: the newest never came
        }
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    (got, fill)
}

/// Inflates one message of a stream compressed with context takeover.
fn inflate_with(context: &mut flate2::Decompress, payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(2 * SIZE);
    let start = context.total_in();
    loop {
        let consumed = (context.total_in() - start) as usize;
        context
            .decompress_vec(&input[consumed..], &mut out, flate2::FlushDecompress::Sync)
            .expect("the stream inflates: no message was dropped from it");
        if (context.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(SIZE);
    }
}

#[test]
fn drop_oldest_conflates_compressed_messages_without_context_takeover() {
    let (got, (_, _, refused)) = compressed_fill(false);
    assert_eq!(refused, 0);
    assert!(
        got.windows(2).any(|w| w[1] > w[0] + 1),
        "no gap: nothing dropped"
    );
}

#[test]
fn drop_oldest_never_breaks_a_stream_compressed_with_context_takeover() {
    // No message of a chained stream can be dropped: new ones are refused instead,
    // and every one that arrives inflates in order.
    let (got, (written, queued, refused)) = compressed_fill(true);
    assert!(refused > 0, "the queue never filled");
    assert_eq!(got, (0..(written + queued) as u32).collect::<Vec<_>>());
}
