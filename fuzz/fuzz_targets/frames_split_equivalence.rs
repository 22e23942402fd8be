//! A VALID client frame stream, built from the fuzz input, must give the same events
//! whether it arrives whole, in fuzzer-chosen pieces, or one byte at a time, and never
//! an error.
//!
//! The input is decoded with `arbitrary` into messages (text or binary, cut into
//! fragments at chosen points — which may split a code point, as RFC 6455 allows),
//! pings and pongs interleaved between fragments and between messages, an optional close
//! frame, a masking key per frame, and the cut points of the stream; optionally
//! permessage-deflate, with or without context takeover, compressing the messages the
//! input picks (RSV1 on the first fragment, the compressed bytes fragmented). The
//! expected events come from that model, not from the receiver. Inflaters are lent from
//! and reclaimed into a pool around each read, as the reactor does, and every inflater
//! left in the pool must still inflate a fresh connection's message correctly.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wsreactor::proto::deflate::Deflater;
use wsreactor::proto::{CloseCode, OwnedEvent, Receiver};
use wsreactor_fuzz::{
    check_pool_is_clean, client_frame, cut_at, feed, truncate_str, InflaterPool,
    MAX_CONTROL_PAYLOAD, RSV1,
};

#[derive(Arbitrary, Debug)]
enum Payload {
    Text(String),
    Binary(Vec<u8>),
    /// The string `1 + times % 4096` times over: long messages (16- and 64-bit
    /// lengths) from short inputs.
    RepeatedText(String, u16),
    RepeatedBinary(Vec<u8>, u16),
}

impl Payload {
    fn render(&self) -> (bool, Vec<u8>) {
        let times = |n: u16| 1 + usize::from(n) % 4096;
        match self {
            Payload::Text(s) => (true, s.as_bytes().to_vec()),
            Payload::Binary(b) => (false, b.clone()),
            Payload::RepeatedText(s, n) => (true, s.repeat(times(*n)).into_bytes()),
            Payload::RepeatedBinary(b, n) => (false, b.repeat(times(*n))),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Control {
    /// After which fragment (modulo the fragment count) this control frame is sent.
    after: u8,
    pong: bool,
    payload: Vec<u8>,
    key: [u8; 4],
}

#[derive(Arbitrary, Debug)]
struct Msg {
    payload: Payload,
    /// Fragment boundaries, modulo the payload length + 1 (so empty fragments happen).
    cuts: Vec<u32>,
    /// Masking keys of the fragments, in turn.
    keys: Vec<[u8; 4]>,
    controls: Vec<Control>,
    /// Sent compressed, if permessage-deflate is on.
    compress: bool,
}

#[derive(Arbitrary, Debug)]
struct Deflate {
    /// The client keeps its compressor's context between messages (no
    /// `client_no_context_takeover`), so the server must keep its inflater's.
    keep_context: bool,
    level: u8,
    window_bits: u8,
}

#[derive(Arbitrary, Debug)]
enum Close {
    None,
    Empty,
    WithCode { code: u16, reason: String },
}

#[derive(Arbitrary, Debug)]
struct Input {
    messages: Vec<Msg>,
    deflate: Option<Deflate>,
    close: Close,
    close_key: [u8; 4],
    /// max_message_size is the longest message plus this: 0 tests the exact limit.
    slack: u8,
    /// Where the stream is cut into reads.
    stream_cuts: Vec<u32>,
    /// Also feed it one byte at a time (for streams up to 16 KiB).
    bytewise: bool,
}

/// Close codes a client may send (§7.4.1, IANA 1012–1014, 3000–4999).
fn close_code(selector: u16) -> u16 {
    const DEFINED: [u16; 12] = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
    ];
    if selector.is_multiple_of(2) {
        DEFINED[usize::from(selector / 2) % DEFINED.len()]
    } else {
        3000 + (selector / 2) % 2000
    }
}

fn render(input: &Input) -> (Vec<u8>, Vec<OwnedEvent>, u64) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut longest = 0;
    let mut deflater = input
        .deflate
        .as_ref()
        .map(|d| Deflater::new(u32::from(d.level % 10), 9 + d.window_bits % 7));
    let reset = input.deflate.as_ref().is_some_and(|d| !d.keep_context);
    for msg in &input.messages {
        let (text, message) = msg.payload.render();
        longest = longest.max(message.len());
        // What goes on the wire: the message, or its compressed form.
        let mut compressed = Vec::new();
        let rsv = match &mut deflater {
            Some(deflater) if msg.compress => {
                deflater.compress(&message, &mut compressed, reset);
                // RFC 7692 §7.2.1: the compressed data ends with an empty stored block,
                // whose 00 00 ff ff is then removed, so the payload is never empty (an
                // empty message is a single 0x00, with or without context takeover).
                assert!(
                    !compressed.is_empty(),
                    "Deflater::compress gave an empty payload for a {}-byte message \
                     (context kept: {}); RFC 7692 §7.2.1 wants at least 0x00",
                    message.len(),
                    !reset
                );
                RSV1
            }
            _ => 0,
        };
        let payload = if rsv == RSV1 {
            &compressed[..]
        } else {
            &message[..]
        };
        let mut bounds: Vec<usize> = msg
            .cuts
            .iter()
            .map(|&c| c as usize % (payload.len() + 1))
            .collect();
        bounds.sort_unstable();
        bounds.push(payload.len());
        let fragments: Vec<&[u8]> = {
            let mut start = 0;
            bounds
                .iter()
                .map(|&end| {
                    let f = &payload[start..end];
                    start = end;
                    f
                })
                .collect()
        };
        let last = fragments.len() - 1;
        for (i, fragment) in fragments.iter().enumerate() {
            let opcode = match (i, text) {
                (0, true) => 0x1,
                (0, false) => 0x2,
                _ => 0x0,
            };
            let key = if msg.keys.is_empty() {
                [0; 4]
            } else {
                msg.keys[i % msg.keys.len()]
            };
            let rsv = if i == 0 { rsv } else { 0 };
            client_frame(&mut stream, i == last, rsv, opcode, fragment, key);
            if i == last {
                expected.push(if text {
                    OwnedEvent::Text(String::from_utf8(message.clone()).unwrap())
                } else {
                    OwnedEvent::Binary(message.clone())
                });
            }
            for control in &msg.controls {
                if usize::from(control.after) % fragments.len() != i {
                    continue;
                }
                let body = &control.payload[..control.payload.len().min(MAX_CONTROL_PAYLOAD)];
                let opcode = if control.pong { 0xA } else { 0x9 };
                client_frame(&mut stream, true, 0, opcode, body, control.key);
                expected.push(if control.pong {
                    OwnedEvent::Pong(body.to_vec())
                } else {
                    OwnedEvent::Ping(body.to_vec())
                });
            }
        }
    }
    match &input.close {
        Close::None => {}
        Close::Empty => {
            client_frame(&mut stream, true, 0, 0x8, b"", input.close_key);
            expected.push(OwnedEvent::Close(None));
        }
        Close::WithCode { code, reason } => {
            let code = close_code(*code);
            let reason = truncate_str(reason, MAX_CONTROL_PAYLOAD - 2);
            let mut body = code.to_be_bytes().to_vec();
            body.extend_from_slice(reason.as_bytes());
            client_frame(&mut stream, true, 0, 0x8, &body, input.close_key);
            expected.push(OwnedEvent::Close(Some((
                CloseCode(code),
                reason.to_owned(),
            ))));
        }
    }
    let max = longest as u64 + u64::from(input.slack);
    (stream, expected, max)
}

fn receiver(input: &Input, max: u64) -> Receiver {
    let mut rx = Receiver::new(max);
    if let Some(deflate) = &input.deflate {
        rx.enable_deflate(!deflate.keep_context);
    }
    rx
}

fuzz_target!(|input: Input| {
    let (stream, expected, max) = render(&input);
    let mut pool = InflaterPool::new();

    let whole = feed(&mut receiver(&input, max), [&stream[..]], max, &mut pool);
    assert_eq!(whole.error, None, "valid stream rejected (whole)");
    assert_eq!(whole.events, expected, "whole stream");
    assert!(!whole.mid_message, "mid-message after a complete stream");

    let pieces = cut_at(&stream, &input.stream_cuts);
    let split = feed(
        &mut receiver(&input, max),
        pieces.iter().map(Vec::as_slice),
        max,
        &mut pool,
    );
    assert_eq!(split.error, None, "valid stream rejected (split)");
    assert_eq!(split.events, expected, "split stream");
    assert!(!split.mid_message);

    if input.bytewise && stream.len() <= 16 << 10 {
        let bytes = feed(&mut receiver(&input, max), stream.chunks(1), max, &mut pool);
        assert_eq!(bytes.error, None, "valid stream rejected (bytewise)");
        assert_eq!(bytes.events, expected, "one byte at a time");
        assert!(!bytes.mid_message);
    }
    check_pool_is_clean(&mut pool);
});
