//! A client that sends without reading must not grow the server's memory: its own
//! test binary, so that the process's resident size is this test's alone.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use wsreactor::Config;

/// This process's resident set size, from /proc/self/status.
fn vm_rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_client_pushing_256_mib_without_reading_keeps_server_memory_bounded() {
    let (addr, seen) = start(Config::default());
    let mut raw = Raw::open(addr);
    // Let the server thread and its 64 KiB read buffer settle before the baseline.
    raw.send(true, BINARY, b"warm-up");
    raw.expect_echo(BINARY, b"warm-up");
    let before = vm_rss_bytes();

    // One pre-masked 64 KiB frame, written again and again: 4,096 of them is 256 MiB.
    let frame = frame(true, BINARY, &pattern(7, 64 * 1024));
    raw.stream
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut written = 0usize;
    let mut blocked_since: Option<Instant> = None;
    while written < 256 << 20 && Instant::now() < deadline {
        match raw.stream.write(&frame[written % frame.len()..]) {
            Ok(n) => {
                written += n;
                blocked_since = None;
            }
            Err(_) => {
                // The server stopped reading us: TCP backpressure. A second of it is
                // proof enough; there is no need to wait out the deadline.
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
        }
    }
    let after = vm_rss_bytes();
    let growth = after.saturating_sub(before);
    eprintln!(
        "slow reader: pushed {:.1} MiB of 256 MiB before the server stopped reading; \
         server max queue {} KiB; process RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB)",
        written as f64 / (1 << 20) as f64,
        seen.max_queued.load(std::sync::atomic::Ordering::SeqCst) / 1024,
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        growth as f64 / (1 << 20) as f64,
    );
    assert!(
        written < 256 << 20,
        "the server read all 256 MiB without a reader"
    );
    // The send queue stops at the 1 MiB high-water mark (plus one read's echoes); the
    // rest sits in kernel socket buffers, which are not our memory.
    assert!(growth < 16 << 20, "RSS grew by {growth} bytes");
}
