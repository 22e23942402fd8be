//! Backpressure: a client that sends without reading must not grow the server's memory.
//!
//! The server stops reading a connection while its send queue holds more than
//! `write_high_water` bytes. So the queue can only grow past that mark by what one read
//! delivers: at most `read_buffer_size` bytes of input, whose echoes are never longer
//! than the frames that carried them (a server header is 4 bytes shorter than a masked
//! client header), plus the part of one message that was buffered before that read
//! began (less than one message). That gives the bound checked here:
//!
//! ```text
//! queued_bytes <= write_high_water + read_buffer_size + (largest message + 10-byte header)
//! ```
//!
//! Once the queue is over the mark, the client's writes must stall (TCP backpressure),
//! and once the client reads again every echo must arrive intact and in order.

mod common;

use common::{frame, pattern, start, Raw, BINARY, IO_TIMEOUT, TEXT};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsreactor::Config;

/// The most the writer sends in total; it must stall long before this.
const TOTAL_CAP: usize = 64 << 20;
/// Message sizes run from 1 byte to this.
const LARGEST_MESSAGE: usize = 40 * 1024;
/// The longest server frame header (64-bit length).
const MAX_SERVER_HEADER: usize = 10;
/// How long the writer must make no progress to count as blocked.
const STALL: Duration = Duration::from_millis(400);
/// How long the whole test may wait for the stall.
const STALL_DEADLINE: Duration = Duration::from_secs(8);

/// Sets the flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The payload of message `i`: varied sizes, every byte depending on `i`.
fn message(i: usize) -> Vec<u8> {
    let size = 1 + (i * 7919) % LARGEST_MESSAGE;
    let mut payload = pattern(i as u64, size);
    payload[..size.min(8)].copy_from_slice(&(i as u64).to_be_bytes()[..size.min(8)]);
    payload
}

#[test]
fn send_queue_stays_bounded_while_a_client_does_not_read_and_every_echo_arrives_in_order() {
    let config = Config {
        write_high_water: 256 * 1024,
        read_buffer_size: 64 * 1024,
        ..Config::default()
    };
    let bound =
        config.write_high_water + config.read_buffer_size + LARGEST_MESSAGE + MAX_SERVER_HEADER;
    let high_water = config.write_high_water;
    let (addr, seen) = start(config);
    let mut raw = Raw::open(addr);

    // The writer: masked binary frames until told to stop (or the cap), never reading.
    let written = Arc::new(AtomicUsize::new(0));
    let frames_sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut stream = raw.stream.try_clone().unwrap();
        let (written, frames_sent, stop, done) = (
            written.clone(),
            frames_sent.clone(),
            stop.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            // `done` is set however the thread ends, so a failed write is reported
            // through `join` instead of leaving the reader waiting.
            let _done = SetOnDrop(done);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && written.load(Ordering::SeqCst) < TOTAL_CAP {
                let bytes = frame(true, BINARY, &message(i));
                stream.write_all(&bytes).expect("writer: write");
                written.fetch_add(bytes.len(), Ordering::SeqCst);
                i += 1;
                frames_sent.store(i, Ordering::SeqCst);
            }
        })
    };

    // Wait for the writer to block: no progress for STALL while the server reports a
    // queue over the high-water mark (so the stall is backpressure, not a slow thread).
    let started = Instant::now();
    let mut last = (written.load(Ordering::SeqCst), Instant::now());
    let stalled_at = loop {
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !done.load(Ordering::SeqCst),
            "the writer ended without ever blocking after {} bytes (cap {TOTAL_CAP}; max queued {})",
            written.load(Ordering::SeqCst),
            seen.max_queued.load(Ordering::SeqCst)
        );
        let now = written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= STALL && seen.max_queued.load(Ordering::SeqCst) > high_water {
            break now;
        }
        assert!(
            started.elapsed() < STALL_DEADLINE,
            "the writer never stalled: {now} bytes written, max queued {}",
            seen.max_queued.load(Ordering::SeqCst)
        );
    };
    assert!(stalled_at < TOTAL_CAP);

    // While this client is stalled, the loop keeps serving everyone else.
    let mut other = Raw::open(addr);
    other.send(true, TEXT, b"still serving");
    other.expect_echo(TEXT, b"still serving");
    other.close_cleanly();

    // Now read: the writer finishes the frame it is blocked in, then stops.
    stop.store(true, Ordering::SeqCst);
    let mut read = 0;
    let deadline = Instant::now() + IO_TIMEOUT * 2;
    loop {
        if read == frames_sent.load(Ordering::SeqCst) {
            if done.load(Ordering::SeqCst) && read == frames_sent.load(Ordering::SeqCst) {
                break;
            }
            assert!(Instant::now() < deadline, "writer did not finish");
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let echo = raw.read_frame();
        let expected = message(read);
        assert_eq!(
            (echo.fin, echo.opcode, echo.payload.len()),
            (true, BINARY, expected.len()),
            "echo {read}: header"
        );
        assert!(echo.payload == expected, "echo {read}: payload differs");
        read += 1;
    }
    writer.join().expect("writer thread");
    eprintln!(
        "stalled after {stalled_at} bytes; {read} messages echoed; max queued {} (bound {bound})",
        seen.max_queued.load(Ordering::SeqCst)
    );

    let max_queued = seen.max_queued.load(Ordering::SeqCst);
    assert!(
        max_queued <= bound,
        "send queue reached {max_queued} bytes, over the bound {bound}"
    );
    assert!(max_queued > high_water, "backpressure never engaged");
    assert_eq!(seen.refused.load(Ordering::SeqCst), 0, "sends were refused");
    // Every message of the writer, and the other connection's one.
    assert_eq!(seen.messages.load(Ordering::SeqCst), read + 1);

    // The connection is healthy afterwards: the close handshake completes.
    raw.send(true, TEXT, b"last");
    raw.expect_echo(TEXT, b"last");
    raw.close_cleanly();
}

#[test]
fn send_status_agrees_with_queued_bytes() {
    // `SendStatus::Written` is documented as "the whole frame went to the socket" and
    // `Queued(n)` as "this many bytes now wait in the connection's queue": on an idle
    // connection whose peer reads, each echo's status must match `queued_bytes()`.
    let (addr, seen) = start(Config::default());
    let mut raw = Raw::open(addr);
    for size in [0, 1, 125, 4096, 16 * 1024, 40_000] {
        let payload = pattern(size as u64, size);
        raw.send(true, BINARY, &payload);
        raw.expect_echo(BINARY, &payload);
    }
    raw.close_cleanly();
    let mismatches = seen.status_mismatches.lock().unwrap().clone();
    assert!(
        mismatches.is_empty(),
        "send statuses disagree with the queue: {mismatches:#?}"
    );
}
