//! permessage-deflate in the receiver: compressed messages whole and fragmented, RSV1
//! rules, bombs, UTF-8 after inflating, and the inflaters lent between connections.

use super::*;

pub(super) fn compressed(message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    crate::proto::deflate::Deflater::new(6, 15).compress(message, &mut wire, true);
    wire
}

pub(super) fn deflate_receiver(max: u64) -> Receiver {
    let mut rx = Receiver::new(max);
    rx.enable_deflate(true);
    rx
}

#[test]
fn compressed_messages_single_and_fragmented_with_a_ping_between() {
    let text = "hello hello hello compressed world ".repeat(20);
    let wire = compressed(text.as_bytes());
    let (a, b) = wire.split_at(wire.len() / 2);
    let stream = [
        frame(true, 0x1 | 0x40, &wire),
        frame(false, 0x2 | 0x40, a),
        frame(true, 0x9, b"p"),
        frame(true, 0x0, b),
        frame(true, 0x1, b"plain after"),
    ]
    .concat();
    for cuts in [vec![], vec![3, 50, 51, 200], (0..stream.len()).collect()] {
        let (events, error) = feed(&mut deflate_receiver(1 << 20), &stream, &cuts);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                OwnedEvent::Text(text.clone()),
                OwnedEvent::Ping(b"p".to_vec()),
                OwnedEvent::Binary(text.clone().into_bytes()),
                OwnedEvent::Text("plain after".into()),
            ]
        );
    }
}

#[test]
fn rsv1_is_only_for_the_first_data_frame_of_a_negotiated_connection() {
    let wire = compressed(b"abc");
    // Not negotiated.
    assert_eq!(
        feed_whole(&frame(true, 0x1 | 0x40, &wire)).1,
        Some(ProtocolError::ReservedBits)
    );
    let cases = [
        [frame(false, 0x1 | 0x40, &wire), frame(true, 0x40, b"")].concat(),
        frame(true, 0x9 | 0x40, b""),
        frame(true, 0x1 | 0x20, b"x"),
    ];
    for stream in cases {
        let (_, error) = feed(&mut deflate_receiver(1 << 20), &stream, &[]);
        assert_eq!(error, Some(ProtocolError::ReservedBits), "{stream:x?}");
    }
}

#[test]
fn a_compressed_bomb_is_refused_while_inflating() {
    let wire = compressed(&vec![b'a'; 5_000_000]);
    assert!(wire.len() < 10_000);
    let mut rx = deflate_receiver(100_000);
    let (events, error) = feed(&mut rx, &frame(true, 0x1 | 0x40, &wire), &[]);
    assert!(events.is_empty());
    assert_eq!(error, Some(ProtocolError::MessageTooBig));
    // Memory stayed near the limit, not near the 5 MB the bomb expands to.
    assert!(
        rx.assembled.capacity() < 300_000,
        "{}",
        rx.assembled.capacity()
    );
}

#[test]
fn invalid_utf8_inside_compressed_text_fails() {
    let wire = compressed(&[b'a', 0xC3, 0x28, b'b']);
    let (_, error) = feed(
        &mut deflate_receiver(1 << 20),
        &frame(true, 0x1 | 0x40, &wire),
        &[],
    );
    assert_eq!(error, Some(ProtocolError::InvalidUtf8));
    let (_, error) = feed(
        &mut deflate_receiver(1 << 20),
        &frame(true, 0x2 | 0x40, &[0xff; 8]),
        &[],
    );
    assert_eq!(error, Some(ProtocolError::BadCompressedData));
}

#[test]
fn inflater_is_lent_and_reclaimed_between_messages_only() {
    let mut rx = deflate_receiver(1 << 20);
    assert!(rx.wants_inflater());
    rx.lend_inflater(Box::default());
    assert!(!rx.wants_inflater());
    let wire = compressed(b"some message");
    let stream = frame(false, 0x2 | 0x40, &wire);
    feed(&mut rx, &stream, &[]);
    assert!(rx.reclaim_inflater().is_none(), "mid-message");
    feed(&mut rx, &frame(true, 0x0, b""), &[]);
    assert!(rx.reclaim_inflater().is_some());
}

#[test]
fn an_inflater_never_goes_back_dirty_after_a_failed_message() {
    // Found by fuzzing: RFC 7692's "Hello" with one byte corrupted fails in the
    // final tail; the inflater used to be reclaimed for the pool in that state and
    // break the next connection's valid message.
    let mut rx = deflate_receiver(1 << 20);
    rx.lend_inflater(Box::default());
    let bad = frame(
        true,
        0x1 | 0x40,
        &[0xf3, 0x48, 0xcd, 0x1c, 0xc9, 0x07, 0x00],
    );
    assert_eq!(
        feed(&mut rx, &bad, &[]).1,
        Some(ProtocolError::BadCompressedData)
    );
    assert!(
        rx.reclaim_inflater().is_none(),
        "a failed message's inflater was reclaimed"
    );
    // And what the pool does get back is reset, whatever state it was in.
    let mut rx = deflate_receiver(1 << 20);
    rx.lend_inflater(Box::default());
    let half = &compressed(b"half a message, never finished")[..10];
    feed(&mut rx, &frame(false, 0x2 | 0x40, half), &[]);
    feed(&mut rx, &frame(true, 0x9, b""), &[]);
    rx.compressed = false; // as if the message had been abandoned
    let inflater = rx.reclaim_inflater().expect("reclaimed");
    let mut next = deflate_receiver(1 << 20);
    next.lend_inflater(inflater);
    let good = frame(true, 0x1 | 0x40, &compressed(b"canary"));
    assert_eq!(
        feed(&mut next, &good, &[]),
        (vec![OwnedEvent::Text("canary".into())], None)
    );
}

#[test]
fn data_after_a_final_deflate_block_fails_however_it_is_split() {
    // Found by fuzzing: "33 00" is a final block holding "0"; what follows it in the
    // same message used to be accepted or not depending on the read boundaries.
    for payload in [
        &[0x33, 0x00, 0x00, 0x00][..],
        &[0x33, 0x00, 0x00, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
    ] {
        let stream = frame(true, 0x1 | 0x40, payload);
        let whole = feed(&mut deflate_receiver(1 << 20), &stream, &[]);
        let cuts: Vec<usize> = (0..stream.len()).collect();
        let bytewise = feed(&mut deflate_receiver(1 << 20), &stream, &cuts);
        assert_eq!(whole, bytewise, "{payload:x?}");
        assert_eq!(whole.1, Some(ProtocolError::BadCompressedData));
    }
    // A message that is exactly one final block is fine.
    let stream = frame(true, 0x1 | 0x40, &[0x33, 0x00]);
    assert_eq!(
        feed_whole_deflate(&stream),
        (vec![OwnedEvent::Text("0".into())], None)
    );
}

fn feed_whole_deflate(stream: &[u8]) -> (Vec<OwnedEvent>, Option<ProtocolError>) {
    feed(&mut deflate_receiver(1 << 20), stream, &[])
}
