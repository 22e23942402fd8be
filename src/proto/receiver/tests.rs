//! The receiver's tests: RFC examples, every violation and its error, permessage-deflate,
//! the memory grant, and property tests that split valid streams at random points.

use super::*;
use crate::proto::close::CloseCode;
use crate::proto::message::OwnedEvent;
use proptest::prelude::*;

/// A client frame: masked with a key derived from the payload length.
///
/// The header is written from RFC 6455 §5.2 rather than with `FrameHeader::encode`, so
/// that a mistake shared by the encoder and the decoder cannot cancel out here (the
/// fuzz crate's `client_frame` is independent for the same reason).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, (payload.len() % 251) as u8, 0x78];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    mask::apply(&mut out[start..], key, 0);
    out
}

/// Feeds `stream` in pieces cut at `cuts`, collecting events until the first error.
fn feed(
    rx: &mut Receiver,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<OwnedEvent>, Option<ProtocolError>) {
    let mut bytes = stream.to_vec();
    let mut events = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
    bounds.sort_unstable();
    bounds.push(bytes.len());
    let mut start = 0;
    for end in bounds {
        let mut piece = &mut bytes[start..end.max(start)];
        start = end.max(start);
        while !piece.is_empty() {
            match rx.read(piece) {
                Ok(Progress { consumed, event }) => {
                    if let Some(event) = event {
                        events.push(OwnedEvent::from(event));
                    } else {
                        assert_eq!(consumed, piece.len(), "no event means all consumed");
                    }
                    piece = &mut piece[consumed..];
                }
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

fn feed_whole(stream: &[u8]) -> (Vec<OwnedEvent>, Option<ProtocolError>) {
    feed(&mut Receiver::new(1 << 20), stream, &[])
}

#[test]
fn single_frames_of_every_kind() {
    let stream = [
        frame(true, 0x1, b"Hello"),
        frame(true, 0x2, &[0, 1, 2]),
        frame(true, 0x9, b"ping"),
        frame(true, 0xA, b""),
        frame(true, 0x8, b"\x03\xe8done"),
    ]
    .concat();
    let (events, error) = feed_whole(&stream);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            OwnedEvent::Text("Hello".into()),
            OwnedEvent::Binary(vec![0, 1, 2]),
            OwnedEvent::Ping(b"ping".to_vec()),
            OwnedEvent::Pong(vec![]),
            OwnedEvent::Close(Some((CloseCode::NORMAL, "done".into()))),
        ]
    );
}

#[test]
fn rfc_5_7_masked_hello_is_delivered_in_place() {
    let mut bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let base = bytes.as_ptr() as usize;
    let mut rx = Receiver::new(1024);
    let progress = rx.read(&mut bytes).unwrap();
    assert_eq!(progress.consumed, 11);
    let Some(Event::Message(Message::Text(text))) = progress.event else {
        panic!("expected text")
    };
    assert_eq!(text, "Hello");
    // Zero copy: the message is the unmasked bytes of the input buffer itself.
    assert_eq!(text.as_ptr() as usize, base + 6);
}

#[test]
fn fragments_with_interleaved_control_frames() {
    let stream = [
        frame(false, 0x1, "Hel".as_bytes()),
        frame(true, 0x9, b"p"),
        frame(false, 0x0, "lo ".as_bytes()),
        frame(true, 0x0, "wörld".as_bytes()),
    ]
    .concat();
    let (events, error) = feed_whole(&stream);
    assert_eq!(error, None);
    assert_eq!(
        events,
        [
            OwnedEvent::Ping(b"p".to_vec()),
            OwnedEvent::Text("Hello wörld".into())
        ]
    );
}

#[test]
fn code_point_split_across_fragments_is_valid() {
    let euro = "€".as_bytes();
    let stream = [
        frame(false, 0x1, &euro[..1]),
        frame(false, 0x0, &euro[1..2]),
        frame(true, 0x0, &euro[2..]),
    ]
    .concat();
    assert_eq!(
        feed_whole(&stream),
        (vec![OwnedEvent::Text("€".into())], None)
    );
}

#[test]
fn violations_and_their_errors() {
    let unmasked = [0x81, 0x02, b'h', b'i'];
    let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
        (unmasked.to_vec(), ProtocolError::UnmaskedFrame),
        (
            {
                let mut f = frame(true, 0x1, b"x");
                f[0] |= 0x40;
                f
            },
            ProtocolError::ReservedBits,
        ),
        (
            {
                let mut f = frame(true, 0x1, b"x");
                f[0] |= 0x10;
                f
            },
            ProtocolError::ReservedBits,
        ),
        (frame(true, 0x3, b""), ProtocolError::ReservedOpcode(3)),
        (frame(true, 0xB, b""), ProtocolError::ReservedOpcode(0xB)),
        (
            frame(true, 0x9, &[0; 126]),
            ProtocolError::ControlFrameTooLong,
        ),
        (
            frame(false, 0x9, b""),
            ProtocolError::FragmentedControlFrame,
        ),
        (
            frame(true, 0x0, b"x"),
            ProtocolError::UnexpectedContinuation,
        ),
        (
            [frame(false, 0x1, b"a"), frame(true, 0x1, b"b")].concat(),
            ProtocolError::ExpectedContinuation,
        ),
        (frame(true, 0x1, &[0xC3, 0x28]), ProtocolError::InvalidUtf8),
        (frame(true, 0x8, b"\x03"), ProtocolError::CloseFrameTooShort),
        (
            frame(true, 0x8, b"\x03\xed"),
            ProtocolError::InvalidCloseCode(1005),
        ),
        (
            frame(true, 0x8, b"\x03\xe8\xff"),
            ProtocolError::InvalidUtf8,
        ),
    ];
    for (stream, expected) in cases {
        assert_eq!(feed_whole(&stream).1, Some(expected), "{stream:x?}");
    }
}

#[test]
fn length_with_top_bit_set_is_rejected() {
    let header = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    assert_eq!(feed_whole(&header).1, Some(ProtocolError::LengthOverflow));
}

#[test]
fn oversized_message_is_refused_from_the_header_alone() {
    let mut rx = Receiver::new(1000);
    // Header only: 1001 bytes declared, none sent. No allocation, immediate error.
    let header = &frame(true, 0x2, &[0; 1001])[..8];
    assert_eq!(
        feed(&mut rx, header, &[]).1,
        Some(ProtocolError::MessageTooBig)
    );
    // Fragments count together.
    let mut rx = Receiver::new(1000);
    let stream = [frame(false, 0x2, &[0; 600]), frame(true, 0x0, &[0; 401])].concat();
    assert_eq!(
        feed(&mut rx, &stream, &[]).1,
        Some(ProtocolError::MessageTooBig)
    );
    let mut rx = Receiver::new(1000);
    let stream = [frame(false, 0x2, &[0; 600]), frame(true, 0x0, &[0; 400])].concat();
    assert_eq!(feed(&mut rx, &stream, &[]).1, None);
}

#[test]
fn invalid_utf8_fails_fast_inside_one_frame() {
    // Autobahn 6.4.3: one text frame whose second chunk holds F4 90; the error must
    // come when that chunk arrives, long before the frame is complete.
    let mut payload = "κόσμε".as_bytes().to_vec();
    payload.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]);
    payload.extend_from_slice(&[b'x'; 100]);
    let stream = frame(true, 0x1, &payload);
    let mut rx = Receiver::new(1 << 20);
    let bad_at = 2 + 4 + "κόσμε".len() + 2;
    assert_eq!(feed(&mut rx, &stream[..bad_at - 1], &[]), (vec![], None));
    assert_eq!(
        feed(&mut rx, &stream[bad_at - 1..bad_at], &[]).1,
        Some(ProtocolError::InvalidUtf8)
    );
}

#[test]
fn messages_before_a_bad_frame_are_delivered() {
    let stream = [
        frame(true, 0x1, b"one"),
        frame(true, 0x1, b"two"),
        frame(true, 0x3, b""),
    ]
    .concat();
    let (events, error) = feed_whole(&stream);
    assert_eq!(
        events,
        [
            OwnedEvent::Text("one".into()),
            OwnedEvent::Text("two".into())
        ]
    );
    assert_eq!(error, Some(ProtocolError::ReservedOpcode(3)));
}

#[test]
fn large_buffer_is_released_after_delivery() {
    let mut rx = Receiver::new(1 << 20);
    let big = frame(true, 0x2, &[7; 200_000]);
    let (events, _) = feed(&mut rx, &big, &[1000]);
    assert_eq!(events.len(), 1);
    assert!(rx.assembled.capacity() >= 200_000);
    let small = frame(true, 0x2, b"x");
    feed(&mut rx, &small, &[]);
    assert_eq!(rx.assembled.capacity(), 0);
    assert!(!rx.is_mid_message());
}

fn compressed(message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    crate::proto::deflate::Deflater::new(6, 15).compress(message, &mut wire, true);
    wire
}

fn deflate_receiver(max: u64) -> Receiver {
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

#[test]
fn shedding_frees_buffers_but_never_a_half_received_message() {
    let mut rx = Receiver::new(1 << 20);
    let stream = [frame(false, 0x2, &[1; 5000]), frame(true, 0x0, &[2; 5000])].concat();
    feed(&mut rx, &stream, &[]);
    assert!(rx.assembled.capacity() >= 10_000);
    rx.shed_buffers();
    assert_eq!(rx.assembled.capacity(), 0);
    // Half a fragmented message stays put.
    feed(&mut rx, &frame(false, 0x2, &[3; 5000]), &[]);
    rx.shed_buffers();
    assert_eq!(rx.assembled.len(), 5000);
    let (events, error) = feed(&mut rx, &frame(true, 0x0, &[4; 10]), &[]);
    assert_eq!(error, None);
    assert_eq!(events.len(), 1);
}

/// One message of a generated stream: how it is fragmented and what is interleaved.
#[derive(Debug, Clone)]
struct Script {
    text: bool,
    fragments: Vec<Vec<u8>>,
    pings_after: Vec<bool>,
}

fn script() -> impl Strategy<Value = Script> {
    (
        any::<bool>(),
        "\\PC{0,40}",
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(0usize..300, 0..4),
        proptest::collection::vec(any::<bool>(), 4),
    )
        .prop_map(|(text, string, bytes, mut cuts, pings_after)| {
            let payload = if text { string.into_bytes() } else { bytes };
            cuts.iter_mut().for_each(|c| *c = (*c).min(payload.len()));
            cuts.sort_unstable();
            let mut fragments = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([payload.len()]) {
                fragments.push(payload[start..cut].to_vec());
                start = cut;
            }
            Script {
                text,
                fragments,
                pings_after,
            }
        })
}

fn render(scripts: &[Script]) -> (Vec<u8>, Vec<OwnedEvent>) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for (n, s) in scripts.iter().enumerate() {
        let last = s.fragments.len() - 1;
        for (i, fragment) in s.fragments.iter().enumerate() {
            let opcode = match (i, s.text) {
                (0, true) => 0x1,
                (0, false) => 0x2,
                _ => 0x0,
            };
            stream.extend(frame(i == last, opcode, fragment));
            if i < last && s.pings_after[i % 4] {
                let ping = format!("ping {n}.{i}").into_bytes();
                stream.extend(frame(true, 0x9, &ping));
                expected.push(OwnedEvent::Ping(ping));
            }
        }
        let payload = s.fragments.concat();
        expected.push(if s.text {
            OwnedEvent::Text(String::from_utf8(payload).unwrap())
        } else {
            OwnedEvent::Binary(payload)
        });
    }
    stream.extend(frame(true, 0x8, b"\x03\xe8"));
    expected.push(OwnedEvent::Close(Some((CloseCode::NORMAL, String::new()))));
    (stream, expected)
}

/// A memory grant that allows `room` bytes in all and records what was asked.
struct Allowance {
    room: usize,
    used: usize,
    asked_with: Vec<usize>,
}

impl MemoryGrant for Allowance {
    fn grant(&mut self, held: usize, bytes: usize) -> bool {
        self.asked_with.push(held);
        if self.used + bytes > self.room {
            return false;
        }
        self.used += bytes;
        true
    }
}

/// Feeds `stream` in `piece`-byte reads within `memory`; the events, or the error.
fn feed_within(
    rx: &mut Receiver,
    stream: &[u8],
    piece: usize,
    memory: &mut Allowance,
) -> Result<Vec<OwnedEvent>, ProtocolError> {
    let mut events = Vec::new();
    for chunk in stream.chunks(piece) {
        let mut chunk = chunk.to_vec();
        let mut pos = 0;
        while pos < chunk.len() {
            let progress = rx.read_within(&mut chunk[pos..], memory)?;
            pos += progress.consumed;
            events.extend(progress.event.map(OwnedEvent::from));
            assert!(
                rx.held() <= memory.used,
                "{} held, {} granted",
                rx.held(),
                memory.used
            );
        }
    }
    Ok(events)
}

#[test]
fn a_fragmented_message_is_assembled_within_what_is_granted() {
    let message = vec![7u8; 100_000];
    let mut stream = frame(false, 0x2, &message[..60_000]);
    stream.extend(frame(true, 0x0, &message[60_000..]));
    let mut memory = Allowance {
        room: 200_000,
        used: 0,
        asked_with: Vec::new(),
    };
    let events = feed_within(&mut Receiver::new(1 << 20), &stream, 4096, &mut memory);
    assert_eq!(events, Ok(vec![OwnedEvent::Binary(message.clone())]));
    // Each request says what the receiver held then: never less than before.
    assert!(memory.asked_with.windows(2).all(|w| w[0] <= w[1]));

    let mut tight = Allowance {
        room: 80_000,
        used: 0,
        asked_with: Vec::new(),
    };
    let result = feed_within(&mut Receiver::new(1 << 20), &stream, 4096, &mut tight);
    assert_eq!(result, Err(ProtocolError::OverBudget));
    assert!(tight.used <= 80_000);
}

#[test]
fn a_compressed_bomb_stops_at_the_grant_not_at_the_size_limit() {
    let bomb = compressed(&vec![0u8; 8 << 20]);
    let mut stream = frame(true, 0x2, &bomb);
    stream[0] |= 0x40;
    let mut rx = deflate_receiver(16 << 20);
    let mut memory = Allowance {
        room: 1 << 20,
        used: 0,
        asked_with: Vec::new(),
    };
    assert_eq!(
        feed_within(&mut rx, &stream, 1000, &mut memory),
        Err(ProtocolError::OverBudget)
    );
    assert!(memory.used <= 1 << 20);
    // With room for it, the same message is fine.
    let mut rx = deflate_receiver(16 << 20);
    let mut memory = Allowance {
        room: 32 << 20,
        used: 0,
        asked_with: Vec::new(),
    };
    let events = feed_within(&mut rx, &stream, 1000, &mut memory).unwrap();
    assert_eq!(events, vec![OwnedEvent::Binary(vec![0u8; 8 << 20])]);
}

#[test]
fn a_refused_grant_is_reported_as_try_again_later() {
    assert_eq!(
        ProtocolError::OverBudget.close_code(),
        CloseCode::TRY_AGAIN_LATER
    );
    let mut rx = Receiver::new(1 << 20);
    let mut stream = frame(true, 0x2, &[1; 10_000]);
    let mut nothing = Allowance {
        room: 0,
        used: 0,
        asked_with: Vec::new(),
    };
    // A frame wholly in one read is handed out in place: it needs no grant.
    assert!(feed_within(&mut rx, &stream, stream.len(), &mut nothing).is_ok());
    stream = frame(true, 0x2, &[1; 10_000]);
    assert_eq!(
        feed_within(&mut Receiver::new(1 << 20), &stream, 1000, &mut nothing),
        Err(ProtocolError::OverBudget)
    );
}

proptest! {
    #[test]
    fn any_split_yields_the_same_events(
        scripts in proptest::collection::vec(script(), 1..6),
        cuts in proptest::collection::vec(0usize..4000, 0..20),
    ) {
        let (stream, expected) = render(&scripts);
        prop_assert_eq!(feed(&mut Receiver::new(1 << 20), &stream, &[]), (expected.clone(), None));
        prop_assert_eq!(feed(&mut Receiver::new(1 << 20), &stream, &cuts), (expected, None));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                cuts in proptest::collection::vec(0usize..512, 0..8)) {
        let _ = feed(&mut Receiver::new(4096), &bytes, &cuts);
    }
}
