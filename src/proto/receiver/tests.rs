//! The receiver's tests: RFC examples, every violation and its error, and property tests
//! that split valid streams at random points. permessage-deflate (`deflate`) and the
//! memory grant (`memory`) have rooms of their own beside this file.

use super::*;
use crate::proto::close::CloseCode;
use crate::proto::message::OwnedEvent;
use proptest::prelude::*;

mod deflate;
mod memory;
mod parts;

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
