//! Loop timing: every callback and turn lands in `Stats`' histograms; a handler that
//! blocks the loop is counted as a stall (and logged), and the loop goes on serving the
//! others once it returns.

mod common;

use common::*;
use std::time::Duration;
use wsreactor::{Config, Ctx, Handler, Message};

/// Echoes, and sleeps for the number of milliseconds in a `sleep:N` message first.
struct Sleepy;

impl Handler for Sleepy {
    type Session = ();

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        if let Message::Text(text) = message {
            if let Some(ms) = text.strip_prefix("sleep:") {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            }
        }
        let _ = cx.send(message);
    }
}

const TEXT: u8 = 0x1;

#[test]
fn a_handler_that_blocks_the_loop_is_one_stall_and_the_others_are_served_after() {
    let watched = spawn_watched(
        Config {
            stall_threshold: Duration::from_millis(200),
            ..Config::default()
        },
        Sleepy,
    );
    let mut quick = Raw::open(watched.addr);
    let mut slow = Raw::open(watched.addr);
    quick.send(true, TEXT, b"before");
    quick.expect_echo(TEXT, b"before");
    assert_eq!(watched.stats().now.loop_stalls, 0);
    slow.send(true, TEXT, b"sleep:400");
    slow.expect_echo(TEXT, b"sleep:400");
    let stats = watched.wait_for("the stall counted", IO_TIMEOUT, |s| s.now.loop_stalls >= 1);
    // The callback is blamed once; its turn is not counted again.
    assert_eq!(stats.now.loop_stalls, 1, "{stats:#?}");
    for round in 0..20 {
        let text = format!("after {round}");
        quick.send(true, TEXT, text.as_bytes());
        quick.expect_echo(TEXT, text.as_bytes());
    }
    // Quick callbacks are not stalls.
    assert_eq!(watched.stats().now.loop_stalls, 1);
    // The 400 ms callback is in the histogram's (262 ms, 524 ms] bucket, the quick
    // ones far below; its turn took as long.
    let stats = watched.stats().now;
    let callbacks = &stats.callback_micros;
    assert_eq!(callbacks.counts()[19], 1, "{callbacks:?}");
    assert_eq!(
        callbacks.counts()[20..].iter().sum::<u64>(),
        0,
        "{callbacks:?}"
    );
    assert!(
        callbacks.count() >= 22,
        "every on_message timed: {callbacks:?}"
    );
    assert!(callbacks.sum() >= 400_000, "{callbacks:?}");
    assert!(
        callbacks.quantile_bound(0.5).unwrap() <= 1 << 14,
        "{callbacks:?}"
    );
    let turns = &stats.turn_micros;
    assert!(turns.counts()[19..].iter().sum::<u64>() >= 1, "{turns:?}");
    // The echoes were flushed with the reply corked in each (a text frame header of 2
    // bytes and the payload: 8 to 16 bytes).
    let flushes = &stats.flush_bytes;
    assert!(
        flushes.counts()[3..=4].iter().sum::<u64>() >= 20,
        "{flushes:?}"
    );
    assert_eq!(
        flushes.counts()[0],
        0,
        "no flush of an empty queue: {flushes:?}"
    );
}

#[test]
fn a_zero_threshold_turns_stall_checks_off() {
    let watched = spawn_watched(
        Config {
            stall_threshold: Duration::ZERO,
            ..Config::default()
        },
        Sleepy,
    );
    let mut slow = Raw::open(watched.addr);
    slow.send(true, TEXT, b"sleep:120");
    slow.expect_echo(TEXT, b"sleep:120");
    slow.send(true, TEXT, b"done");
    slow.expect_echo(TEXT, b"done");
    assert_eq!(watched.stats().now.loop_stalls, 0);
}
