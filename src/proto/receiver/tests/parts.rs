//! Parts mode: messages handed out as they arrive, never assembled — at any split
//! point, with code points cut anywhere, compressed, with control frames between
//! fragments, and within the streamed-size limit.

use super::deflate::{compressed, deflate_receiver};
use super::*;

/// What a peer said, with messages put back together from their parts (checking the
/// parts' flags on the way), and how many parts each message came in.
#[derive(Debug, Default)]
struct Heard {
    events: Vec<OwnedEvent>,
    parts: Vec<usize>,
    error: Option<ProtocolError>,
}

/// Feeds `stream` cut at `cuts` to a receiver in parts mode, asking again while it
/// has output waiting, as the reactor does.
fn feed_parts(rx: &mut Receiver, stream: &[u8], cuts: &[usize]) -> Heard {
    assert!(rx.in_parts());
    let mut bytes = stream.to_vec();
    let mut heard = Heard::default();
    let mut message: Option<(bool, Vec<u8>, usize)> = None;
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
    bounds.sort_unstable();
    bounds.push(bytes.len());
    let mut start = 0;
    for end in bounds {
        let mut piece = &mut bytes[start..end.max(start)];
        start = end.max(start);
        while !piece.is_empty() || rx.has_pending() {
            let Progress { consumed, event } = match rx.read(piece) {
                Ok(progress) => progress,
                Err(e) => {
                    heard.error = Some(e);
                    return heard;
                }
            };
            match event {
                Some(Event::Part(part)) => {
                    assert_eq!(part.first, message.is_none(), "first flag: {part:?}");
                    assert!(
                        part.last || !part.is_empty(),
                        "an empty part that is not last"
                    );
                    let (text, bytes, count) =
                        message.get_or_insert((part.is_text(), Vec::new(), 0));
                    assert_eq!(*text, part.is_text(), "kind changed inside a message");
                    bytes.extend_from_slice(part.as_bytes());
                    *count += 1;
                    if part.last {
                        let (text, bytes, count) = message.take().unwrap();
                        heard.events.push(if text {
                            OwnedEvent::Text(String::from_utf8(bytes).unwrap())
                        } else {
                            OwnedEvent::Binary(bytes)
                        });
                        heard.parts.push(count);
                    }
                }
                Some(Event::Message(m)) => panic!("a whole message in parts mode: {m:?}"),
                Some(other) => heard.events.push(OwnedEvent::from(other)),
                None => assert_eq!(consumed, piece.len(), "no event means all consumed"),
            }
            piece = &mut piece[consumed..];
        }
    }
    assert!(message.is_none() || !rx.is_mid_message() || rx.is_mid_message());
    heard
}

fn parts_receiver(max: u64) -> Receiver {
    let mut rx = Receiver::new(16);
    rx.receive_in_parts(max);
    rx
}

fn deflate_parts_receiver(max: u64) -> Receiver {
    let mut rx = deflate_receiver(16);
    rx.receive_in_parts(max);
    rx
}

#[test]
fn a_frame_is_handed_out_as_it_arrives_in_place() {
    let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let mut bytes = frame(true, 0x2, &payload);
    let mut rx = parts_receiver(1 << 20);
    let (head, body) = bytes.split_at_mut(8 + 300);
    let range = head.as_ptr_range();
    let progress = rx.read(head).unwrap();
    assert_eq!(progress.consumed, 308);
    let Some(Event::Part(part)) = progress.event else {
        panic!("{:?}", progress.event)
    };
    // Zero copy: the part is the caller's buffer, unmasked where it lay.
    assert!(range.contains(&part.as_bytes().as_ptr()));
    assert_eq!(
        (part.first, part.last, part.as_bytes()),
        (true, false, &payload[..300])
    );
    let progress = rx.read(body).unwrap();
    let Some(Event::Part(part)) = progress.event else {
        panic!()
    };
    assert_eq!(
        (part.first, part.last, part.as_bytes()),
        (false, true, &payload[300..])
    );
    assert!(!rx.is_mid_message());
    // Nothing was assembled: the receiver holds no buffer at all.
    assert_eq!(rx.held(), 0);
}

#[test]
fn empty_messages_and_frames_still_give_a_first_and_last_part() {
    let stream = [
        frame(true, 0x1, b""),
        frame(false, 0x2, b""),
        frame(false, 0x0, b"ab"),
        frame(false, 0x0, b""),
        frame(true, 0x0, b""),
    ]
    .concat();
    let heard = feed_parts(&mut parts_receiver(100), &stream, &[]);
    assert_eq!(heard.error, None);
    assert_eq!(
        heard.events,
        [
            OwnedEvent::Text(String::new()),
            OwnedEvent::Binary(b"ab".to_vec())
        ]
    );
    assert_eq!(heard.parts, [1, 2]);
}

#[test]
fn a_code_point_split_anywhere_is_held_back_and_handed_out_whole() {
    let text = "κόσμε 𝄞 € ok";
    let bytes = text.as_bytes();
    for split in 0..=bytes.len() {
        // Split into two fragments at `split`, and each read cut at every position.
        let stream = [
            frame(false, 0x1, &bytes[..split]),
            frame(true, 0x0, &bytes[split..]),
        ]
        .concat();
        for cut in 0..stream.len() {
            let heard = feed_parts(&mut parts_receiver(100), &stream, &[cut]);
            assert_eq!(heard.error, None, "split {split} cut {cut}");
            assert_eq!(
                heard.events,
                [OwnedEvent::Text(text.into())],
                "split {split} cut {cut}"
            );
        }
    }
    let stream = frame(true, 0x1, bytes);
    let every: Vec<usize> = (0..stream.len()).collect();
    let heard = feed_parts(&mut parts_receiver(100), &stream, &every);
    assert_eq!(heard.events, [OwnedEvent::Text(text.into())]);
}

#[test]
fn invalid_utf8_still_fails_fast() {
    // "κόσμε" then F4 90: the error comes with the byte, the message never ends.
    let mut stream = frame(false, 0x1, "κόσμε".as_bytes());
    stream.extend(frame(false, 0x0, &[0xF4]));
    stream.extend(frame(false, 0x0, &[0x90, 0x80]));
    let heard = feed_parts(&mut parts_receiver(100), &stream, &[]);
    assert_eq!(heard.error, Some(ProtocolError::InvalidUtf8));
    // An unfinished code point at the end of the message.
    let stream = frame(true, 0x1, &[b'a', 0xE2, 0x82]);
    let heard = feed_parts(&mut parts_receiver(100), &stream, &[]);
    assert_eq!(heard.error, Some(ProtocolError::InvalidUtf8));
}

#[test]
fn the_streamed_limit_is_1009_from_the_header_and_while_inflating() {
    let heard = feed_parts(
        &mut parts_receiver(1000),
        &frame(true, 0x2, &[1; 1001]),
        &[],
    );
    assert_eq!(heard.error, Some(ProtocolError::MessageTooBig));
    let stream = [frame(false, 0x2, &[1; 600]), frame(true, 0x0, &[1; 600])].concat();
    let heard = feed_parts(&mut parts_receiver(1000), &stream, &[]);
    // The first fragment was handed on; the second's header is refused.
    assert_eq!(heard.error, Some(ProtocolError::MessageTooBig));
    assert_eq!(heard.events, []);
    // Exactly at the limit is fine, and the count starts again with each message.
    let stream = [frame(false, 0x2, &[1; 500]), frame(true, 0x0, &[1; 500])].concat();
    let twice = [stream.clone(), stream].concat();
    let heard = feed_parts(&mut parts_receiver(1000), &twice, &[]);
    assert_eq!((heard.events.len(), heard.error), (2, None));
    // Compressed: 100 KiB of zeros inflate past a 64 KiB limit.
    let bomb = compressed(&[0; 100 << 10]);
    let heard = feed_parts(
        &mut deflate_parts_receiver(64 << 10),
        &frame(true, 0x42, &bomb),
        &[],
    );
    assert_eq!(heard.error, Some(ProtocolError::MessageTooBig));
    // The whole-message limit (16 bytes here) does not apply in parts mode.
    let heard = feed_parts(
        &mut parts_receiver(1 << 20),
        &frame(true, 0x2, &[1; 5000]),
        &[],
    );
    assert_eq!((heard.events.len(), heard.error), (1, None));
}

#[test]
fn compressed_messages_come_out_in_pieces_of_the_inflater_chunk() {
    // Compressible text with multi-byte code points, large enough for many chunks.
    let text = "κόσμε 𝄞 compressed parts € ".repeat(6000);
    let wire = compressed(text.as_bytes());
    let (a, b) = wire.split_at(wire.len() / 3);
    let stream = [
        frame(true, 0x41, &wire),
        frame(false, 0x42, a),
        frame(true, 0x9, b"between"),
        frame(true, 0x0, b),
        frame(true, 0x1, b"plain after"),
    ]
    .concat();
    for cuts in [
        vec![],
        vec![7, 100, 101, 5000],
        (0..stream.len()).step_by(997).collect(),
    ] {
        let mut rx = deflate_parts_receiver(1 << 30);
        let heard = feed_parts(&mut rx, &stream, &cuts);
        assert_eq!(heard.error, None, "{cuts:?}");
        assert_eq!(
            heard.events,
            [
                OwnedEvent::Text(text.clone()),
                OwnedEvent::Ping(b"between".to_vec()),
                OwnedEvent::Binary(text.clone().into_bytes()),
                OwnedEvent::Text("plain after".into()),
            ]
        );
        // 16 KiB of output at most per part.
        assert!(
            heard.parts[0] >= text.len() / (16 << 10),
            "{:?}",
            heard.parts
        );
        // Nothing but the inflater is held, and it goes back between messages.
        assert_eq!(rx.held(), INFLATER_BYTES);
        assert!(rx.reclaim_inflater().is_some());
    }
}

#[test]
fn memory_is_asked_for_the_inflater_only() {
    let wire = compressed(&[7; 100_000]);
    let stream = frame(true, 0x42, &wire);
    let mut rx = deflate_parts_receiver(1 << 30);
    let mut asked = Vec::new();
    let mut bytes = stream.clone();
    let mut pos = 0;
    let mut total = 0;
    while pos < bytes.len() || rx.has_pending() {
        let progress = rx
            .read_within(&mut bytes[pos..], &mut |held: usize, more: usize| {
                asked.push((held, more));
                true
            })
            .unwrap();
        if let Some(Event::Part(part)) = progress.event {
            total += part.len();
        }
        pos += progress.consumed;
    }
    assert_eq!(total, 100_000);
    assert_eq!(asked, [(0, INFLATER_BYTES)]);
    // Refused: the read fails as the budget says, and nothing is held.
    let mut rx = deflate_parts_receiver(1 << 30);
    let mut bytes = stream;
    let refused = rx.read_within(&mut bytes, &mut |_: usize, _: usize| false);
    assert_eq!(refused.unwrap_err(), ProtocolError::OverBudget);
}

#[derive(Debug, Clone)]
struct Streamed {
    text: bool,
    payload: Vec<u8>,
    /// Fragment lengths (what is left over goes in a last fragment).
    fragments: Vec<usize>,
    compress: bool,
    ping_between: bool,
}

fn streamed() -> impl Strategy<Value = Streamed> {
    (
        any::<bool>(),
        prop_oneof![
            "\\PC{0,300}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..3000),
        ],
        proptest::collection::vec(0usize..700, 0..5),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(text, payload, fragments, compress, ping_between)| {
            let text = text && std::str::from_utf8(&payload).is_ok();
            Streamed {
                text,
                payload,
                fragments,
                compress,
                ping_between,
            }
        })
}

fn render_streamed(messages: &[Streamed]) -> (Vec<u8>, Vec<OwnedEvent>) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for m in messages {
        let wire = if m.compress {
            compressed(&m.payload)
        } else {
            m.payload.clone()
        };
        let mut rest = &wire[..];
        let mut opcode = if m.text { 0x1 } else { 0x2 } | if m.compress { 0x40 } else { 0 };
        for &len in &m.fragments {
            let (head, tail) = rest.split_at(len.min(rest.len()));
            stream.extend(frame(false, opcode, head));
            if m.ping_between {
                stream.extend(frame(true, 0x9, b"p"));
                expected.push(OwnedEvent::Ping(b"p".to_vec()));
            }
            opcode = 0x0;
            rest = tail;
        }
        stream.extend(frame(true, opcode, rest));
        expected.push(if m.text {
            OwnedEvent::Text(String::from_utf8(m.payload.clone()).unwrap())
        } else {
            OwnedEvent::Binary(m.payload.clone())
        });
    }
    (stream, expected)
}

proptest! {
    #[test]
    fn parts_add_up_to_the_messages_at_any_split(
        messages in proptest::collection::vec(streamed(), 1..5),
        cuts in proptest::collection::vec(0usize..20_000, 0..12),
    ) {
        let (stream, expected) = render_streamed(&messages);
        let heard = feed_parts(&mut deflate_parts_receiver(1 << 20), &stream, &cuts);
        prop_assert_eq!(heard.error, None);
        prop_assert_eq!(heard.events, expected);
    }
}
