//! The loop-wide memory budgets and the message-progress timeout, tried as an attacker
//! would: clients that hold half-received messages (plain, or compressed bombs), readers
//! that stop reading while a publisher floods them, and the well-behaved clients that
//! must keep working meanwhile.

mod common;

use common::*;
use flate2::{Compress, Compression, FlushCompress};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsreactor::{CloseReason, Config, Ctx, Decision, Handler, Message, Part, Request};

/// DEFLATE of `len` zero bytes at level 9, sync-flushed, no final block: the start of a
/// message that inflates to `len` bytes and never ends.
///
/// flate2 directly, never the crate's `proto::deflate`, on purpose: a bomb built by the
/// server's own compressor would test the server's codec against itself.
fn bomb(len: usize) -> Vec<u8> {
    let mut compress = Compress::new(Compression::best(), false);
    let zeros = vec![0u8; len];
    let mut out = Vec::with_capacity(len / 500 + 1024);
    while (compress.total_in() as usize) < len {
        let done = compress.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(64 * 1024);
        }
        compress
            .compress_vec(&zeros[done..], &mut out, FlushCompress::None)
            .unwrap();
    }
    loop {
        out.reserve(64 * 1024);
        let before = out.len();
        compress
            .compress_vec(&[], &mut out, FlushCompress::Sync)
            .unwrap();
        if out.len() == before || out.ends_with(&[0, 0, 0xff, 0xff]) {
            break;
        }
    }
    out
}

/// Opens `/echo` offering permessage-deflate and checks it was agreed.
fn open_deflate(addr: std::net::SocketAddr) -> Raw {
    let mut raw = Raw::connect(addr);
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    raw.write(upgrade_request("/echo", RFC_KEY, offer).as_bytes());
    let head = raw.read_http();
    assert_eq!(head.status, 101);
    assert!(head
        .header("Sec-WebSocket-Extensions")
        .is_some_and(|e| e.starts_with("permessage-deflate")));
    raw
}

/// An echo server whose counters the test watches.
fn watched_echo(config: Config) -> Watched {
    spawn_watched(
        config,
        Echo {
            seen: Arc::default(),
        },
    )
}

/// Sends the first `len` bytes of a binary message (FIN clear) and nothing more.
fn hold_fragment(addr: std::net::SocketAddr, len: usize) -> Raw {
    let mut raw = Raw::open(addr);
    raw.send(false, BINARY, &pattern(len as u64, len));
    raw
}

#[test]
fn stalled_half_messages_make_room_for_a_client_that_is_sending() {
    let config = Config {
        incoming_budget: 1 << 20,
        max_message_size: 4 << 20,
        message_timeout: Duration::ZERO,
        ..Config::default()
    };
    let watched = watched_echo(config);
    let addr = watched.addr;
    let mut first = hold_fragment(addr, 300_000);
    let second = hold_fragment(addr, 300_000);
    watched.wait_for("two held fragments", IO_TIMEOUT, |s| {
        s.now.incoming_bytes >= 600_000
    });
    // Both attackers go quiet for longer than the grace a sender gets.
    std::thread::sleep(Duration::from_millis(1300));
    let mut good = Raw::open(addr);
    for round in 0..3u64 {
        let message = pattern(round, 700_000);
        good.send(true, BINARY, &message);
        good.expect_echo(BINARY, &message);
    }
    // The longest stalled holder was closed to make room, with "try again later".
    assert_eq!(
        first.expect_close(1013),
        "server busy: no memory for this message"
    );
    let stats = watched.wait_for("the budget closes counted", IO_TIMEOUT, |s| {
        s.now.incoming_budget_closes >= 1
    });
    assert!(
        stats.max_incoming_bytes <= 1 << 20,
        "the budget was exceeded: {stats:#?}"
    );
    // The other attacker is either closed too or still holding: never both open and
    // holding more than the budget.
    drop(second.stream.shutdown(std::net::Shutdown::Both));
}

#[test]
fn a_compressed_bomb_cannot_inflate_past_the_budget() {
    let config = Config {
        deflate: true,
        incoming_budget: 4 << 20,
        max_message_size: 16 << 20,
        ..Config::default()
    };
    let watched = watched_echo(config);
    let addr = watched.addr;
    let mut attacker = open_deflate(addr);
    // ~15 KiB on the wire that would inflate to 15 MiB: refused at the 4 MiB budget,
    // with 1013 (a 1009 would blame the message size, which is within the limit).
    attacker.write(&compressed_frame(false, BINARY, &bomb(15 << 20)));
    attacker.expect_close(1013);
    let stats = watched.wait_for("the attacker's memory returned", IO_TIMEOUT, |s| {
        s.now.incoming_bytes == 0 && s.connections == 0
    });
    assert!(stats.max_incoming_bytes <= 4 << 20, "{stats:#?}");
    assert_eq!(stats.now.incoming_budget_closes, 1);
    assert_eq!(stats.now.inflaters_lent, 0);
}

#[test]
fn compressed_bombs_held_by_many_give_way_to_a_client_that_is_sending() {
    let config = Config {
        deflate: true,
        incoming_budget: 3 << 20,
        max_message_size: 1 << 20,
        message_timeout: Duration::ZERO,
        ..Config::default()
    };
    let watched = watched_echo(config);
    let addr = watched.addr;
    // Each holds ~900 KiB inflated from ~1 KiB sent; three of them fill the budget.
    let wire = bomb(900 << 10);
    let mut attackers: Vec<Raw> = (0..3)
        .map(|_| {
            let mut raw = open_deflate(addr);
            raw.write(&compressed_frame(false, BINARY, &wire));
            raw
        })
        .collect();
    watched.wait_for("bombs held", IO_TIMEOUT, |s| {
        s.now.incoming_bytes >= 2 << 20
    });
    std::thread::sleep(Duration::from_millis(1300));
    let mut good = open_deflate(addr);
    let message = pattern(7, 800 << 10);
    let mut compress = Compress::new(Compression::default(), false);
    let mut payload = Vec::with_capacity(message.len() + 1024);
    compress
        .compress_vec(&message, &mut payload, FlushCompress::Sync)
        .unwrap();
    assert!(payload.ends_with(&[0, 0, 0xff, 0xff]));
    payload.truncate(payload.len() - 4);
    good.write(&compressed_frame(true, BINARY, &payload));
    // The echo comes back (compressed or not; only its arrival matters here).
    let echo = good.read_frame();
    assert_eq!(echo.opcode, BINARY, "{echo:?}");
    let stats = watched.stats();
    assert!(stats.now.incoming_budget_closes >= 1, "{stats:#?}");
    assert!(stats.max_incoming_bytes <= 3 << 20, "{stats:#?}");
    // At least one attacker was told to try again later.
    let closed = attackers
        .iter_mut()
        .filter(|raw: &&mut Raw| {
            raw.stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut byte = [0u8; 4];
            matches!(std::io::Read::read(&mut &raw.stream, &mut byte), Ok(4) if byte[2..4] == 1013u16.to_be_bytes())
        })
        .count();
    assert!(closed >= 1, "no attacker got 1013");
}

#[test]
fn a_half_received_message_that_stops_growing_is_closed_even_if_pings_flow() {
    let config = Config {
        message_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (addr, seen) = start(config);
    let mut raw = hold_fragment(addr, 1000);
    let started = Instant::now();
    // Pings between the fragments are legal, and are not progress.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(100));
        raw.send(true, PING, b"still here");
    }
    loop {
        let frame = raw.read_frame();
        if frame.opcode == 0xA {
            continue; // the pongs
        }
        assert_eq!(frame.opcode, 0x8, "{frame:?}");
        assert_eq!(&frame.payload[..2], &1008u16.to_be_bytes());
        assert_eq!(&frame.payload[2..], b"message timeout");
        break;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(seen.wait_for_closes(1), [CloseReason::MessageTimeout]);
}

#[test]
fn a_message_that_keeps_growing_is_not_timed_out() {
    let config = Config {
        message_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (addr, _) = start(config);
    let mut raw = hold_fragment(addr, 100);
    let mut message = pattern(100, 100);
    for piece in 0..8u64 {
        std::thread::sleep(Duration::from_millis(100));
        let part = pattern(piece, 100);
        raw.send(false, CONTINUATION, &part);
        message.extend_from_slice(&part);
    }
    let last = pattern(99, 10);
    raw.send(true, CONTINUATION, &last);
    message.extend_from_slice(&last);
    raw.expect_echo(BINARY, &message);
}

/// Subscribers on `/sub` get every message sent on `/pub`.
struct Feed {
    delivered: Arc<AtomicUsize>,
}

impl Handler for Feed {
    type Session = bool;

    fn on_request(&mut self, request: &Request<'_>, _: std::net::SocketAddr) -> Decision<bool> {
        Decision::accept_with(request.path() == "/pub")
    }

    fn on_open(&mut self, cx: &mut Ctx<'_, bool>) {
        if !*cx.session() {
            cx.subscribe("feed");
        }
    }

    fn on_message(&mut self, cx: &mut Ctx<'_, bool>, message: Message<'_>) {
        let fanout = cx.publish("feed", message);
        self.delivered.fetch_add(fanout.sent, Ordering::Relaxed);
    }
}

fn open_path(addr: std::net::SocketAddr, path: &str) -> Raw {
    let mut raw = Raw::connect(addr);
    raw.write(upgrade_request(path, RFC_KEY, "").as_bytes());
    assert_eq!(raw.read_http().status, 101);
    raw
}

#[test]
fn readers_that_stop_reading_are_dropped_and_a_reader_keeps_up() {
    const MESSAGES: usize = 300;
    const SIZE: usize = 60_000;
    // The budget is below one queue's cap: only the loop-wide bound can act here.
    let config = Config {
        outgoing_budget: 1 << 20,
        max_send_queue: 2 << 20,
        max_message_size: 64 << 10,
        send_stall_timeout: Duration::from_secs(60),
        ..Config::default()
    };
    let watched = spawn_watched(
        config,
        Feed {
            delivered: Arc::default(),
        },
    );
    let addr = watched.addr;
    let idle: Vec<Raw> = (0..6).map(|_| open_path(addr, "/sub")).collect();
    let mut reader = open_path(addr, "/sub");
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let reading = std::thread::spawn(move || {
        for n in 0..MESSAGES {
            let frame = reader.read_frame();
            assert_eq!(frame.payload, pattern(n as u64, SIZE), "message {n}");
            counter.store(n + 1, Ordering::SeqCst);
        }
    });
    watched.wait_for("seven subscribers", IO_TIMEOUT, |s| {
        s.now.topic_memberships == 7
    });
    let mut publisher = open_path(addr, "/pub");
    for n in 0..MESSAGES {
        publisher.send(true, BINARY, &pattern(n as u64, SIZE));
        // The reader keeps up: the next message goes once it has this one.
        wait_until("the reader to get the message", || {
            received.load(Ordering::SeqCst) > n || reading.is_finished()
        });
    }
    reading
        .join()
        .expect("the reader got every message in order");
    let stats = watched.wait_for("non-readers dropped", IO_TIMEOUT, |s| {
        s.now.outgoing_budget_closes >= 1
    });
    // The budget held, give or take what one turn may queue before it is enforced.
    assert!(
        stats.max_outgoing_bytes <= (1 << 20) + 8 * SIZE as u64,
        "{stats:#?}"
    );
    // Dropped readers find the connection gone when they finally read.
    let mut gone = 0;
    for mut raw in idle {
        raw.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut quiet = 0;
        // Drain what reached this socket; a dropped one ends (EOF or reset), a live one
        // goes quiet once it has read all it was sent.
        while quiet < 10 {
            match std::io::Read::read(&mut raw.stream, &mut sink) {
                Ok(0) => {
                    gone += 1;
                    break;
                }
                Ok(_) => quiet = 0,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => quiet += 1,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => quiet += 1,
                Err(_) => {
                    gone += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(gone as u64, stats.now.outgoing_budget_closes, "{stats:#?}");
}

#[test]
fn a_connect_burst_is_accepted_a_few_per_turn_without_losing_any() {
    let config = Config {
        max_accepts_per_turn: 1,
        ..Config::default()
    };
    let (addr, _) = start(config);
    // Connect all first (they wait in the backlog), then upgrade each: the listener
    // raised one edge for all of them, so the loop must come back for the rest itself.
    let streams: Vec<_> = (0..64).map(|_| tcp(addr)).collect();
    for stream in streams {
        let mut raw = Raw::from_stream(stream);
        raw.write(upgrade_request("/echo", RFC_KEY, "").as_bytes());
        assert_eq!(raw.read_http().status, 101);
    }
}

/// Relays every message back in parts as it arrives (the echo binary's pattern).
struct Relay;

impl Handler for Relay {
    type Session = ();

    fn on_message(&mut self, _cx: &mut Ctx<'_>, _message: Message<'_>) {}

    fn on_part(&mut self, cx: &mut Ctx<'_>, part: Part<'_>) {
        let _ = cx.send_part(part);
    }
}

/// A relay reads on for a peer that reads none of its output (most clients write a
/// whole message before they read): hostile clients that never read then make it
/// queue their echoes, and the loop-wide outgoing budget is what bounds that — the
/// stalest are dropped, and the queues never hold much more than the budget.
#[test]
fn relays_to_clients_that_never_read_are_held_to_the_outgoing_budget() {
    const CLIENTS: usize = 4;
    const MESSAGE: usize = 16 << 20;
    const BUDGET: usize = 4 << 20;
    let config = Config {
        message_parts: true,
        max_streamed_message_size: 64 << 20,
        max_send_queue: 32 << 20,
        write_high_water: 64 << 10,
        outgoing_budget: BUDGET,
        send_stall_timeout: Duration::from_secs(60),
        message_timeout: Duration::from_secs(60),
        ..Config::default()
    };
    let watched = spawn_watched(config, Relay);
    let frame = Arc::new(frame(true, BINARY, &pattern(9, MESSAGE)));
    let writers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut raw = Raw::open(watched.addr);
            shrink_socket_buffers(&raw.stream, 64 * 1024);
            raw.stream
                .set_write_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let frame = frame.clone();
            // Writes the whole message, reads nothing; a write that fails is a
            // connection the server dropped.
            std::thread::spawn(move || {
                let _ = std::io::Write::write_all(&mut raw.stream, &frame);
                raw
            })
        })
        .collect();
    let stats = watched.wait_for("a relay dropped for the budget", IO_TIMEOUT, |s| {
        s.now.outgoing_budget_closes >= 1
    });
    // Unbounded, the queues would reach CLIENTS × MESSAGE (64 MiB); the budget holds
    // them to it, give or take what one turn reads before it is enforced (16 reads
    // of 128 KiB per connection).
    let slack = CLIENTS * 16 * (128 << 10);
    assert!(
        stats.max_outgoing_bytes <= (BUDGET + slack) as u64,
        "{stats:#?}"
    );
    for writer in writers {
        drop(writer.join().expect("the writer thread"));
    }
}
