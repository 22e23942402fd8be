//! Arbitrary bytes from a client, after the handshake, through the streaming `Receiver`.
//!
//! Input: one mode byte, one parameter byte, a read schedule (see `Schedule::take`),
//! then the byte stream. The mode byte's low nibble picks `max_message_size` (16 MiB,
//! 0, 1, 125, 126, 65535, 65536, `u64::MAX`, or `param << 2k`); bit 4 turns
//! permessage-deflate on (RSV1 = compressed), bit 5 makes it keep context between
//! messages (off: `client_no_context_takeover`, the server's default policy), bit 6
//! holds the split feed to a memory budget of `param` KiB (and asserts the receiver
//! never holds more than it was granted).
//!
//! The stream is fed in the scheduled pieces exactly as the reactor feeds its read
//! buffer, inflaters lent from and reclaimed into a shared pool around each read
//! (`wsreactor_fuzz::feed` asserts the invariants of `Receiver::read` on every call:
//! `consumed` ≤ input, the whole input when there is no event, progress on non-empty
//! input, messages within `max_message_size`, control payloads ≤ 125 bytes, sendable
//! close codes). Then the same stream is fed in one piece to a fresh receiver: how the
//! bytes were split must not change the events, the first error, or the state left at
//! the end. Finally every inflater that went back to the pool must inflate the next
//! connection's valid message correctly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsreactor::proto::{ProtocolError, Receiver};
use wsreactor_fuzz::{check_pool_is_clean, feed, feed_within, InflaterPool, Schedule};

fn max_message_size(selector: u8, param: u8) -> u64 {
    match selector & 0x0F {
        0 => 16 << 20, // Config::default()
        1 => 0,
        2 => 1,
        3 => 125,
        4 => 126,
        5 => 65_535,
        6 => 65_536,
        7 => u64::MAX,
        n => u64::from(param) << ((n - 8) * 2),
    }
}

fn receiver(max: u64, mode: u8) -> Receiver {
    let mut rx = Receiver::new(max);
    if mode & 0x10 != 0 {
        rx.enable_deflate(mode & 0x20 == 0);
    }
    rx
}

/// Errors that a compressed message can hit at a point that depends on how its bytes
/// were cut (inflating in a different number of steps): which one is reported first
/// may differ, but that there is one may not.
fn inflate_dependent(error: Option<ProtocolError>) -> bool {
    matches!(
        error,
        Some(
            ProtocolError::MessageTooBig
                | ProtocolError::BadCompressedData
                | ProtocolError::InvalidUtf8
        )
    )
}

fuzz_target!(|data: &[u8]| {
    let [mode, param, ref rest @ ..] = *data else {
        return;
    };
    let max = max_message_size(mode, param);
    let Some((schedule, stream)) = Schedule::take(rest, false) else {
        return;
    };

    // Bit 6: the split feed is held to a memory budget of `param` KiB, as the
    // reactor's incoming budget would hold it.
    let room = if mode & 0x40 != 0 {
        usize::from(param) << 10
    } else {
        usize::MAX
    };
    let mut split_pool = InflaterPool::new();
    let split = feed_within(
        &mut receiver(max, mode),
        schedule.pieces(stream),
        max,
        &mut split_pool,
        room,
    );
    let mut whole_pool = InflaterPool::new();
    let whole = feed(
        &mut receiver(max, mode),
        Schedule::whole().pieces(stream),
        max,
        &mut whole_pool,
    );
    let deflate = mode & 0x10 != 0;
    if split.error == Some(ProtocolError::OverBudget) {
        // Out of memory: the events until then are the same, the rest never came.
        assert!(room != usize::MAX, "a budget error without a budget");
        assert!(
            whole.events.starts_with(&split.events),
            "events depend on the split"
        );
        check_pool_is_clean(&mut split_pool);
        return;
    }
    assert_eq!(split.events, whole.events, "events depend on the split");
    if !(deflate && inflate_dependent(split.error) && inflate_dependent(whole.error)) {
        assert_eq!(split.error, whole.error, "first error depends on the split");
    }
    if whole.error.is_none() {
        assert_eq!(
            split.mid_message, whole.mid_message,
            "final state depends on the split"
        );
    }
    check_pool_is_clean(&mut split_pool);
    check_pool_is_clean(&mut whole_pool);
});
