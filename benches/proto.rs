//! Criterion micro benches of the sans-I/O core, through the public `wsreactor::proto`
//! API: frame header decode, unmasking (against `copy_from_slice` of the same size,
//! i.e. memcpy, as the bandwidth baseline), incremental UTF-8 validation, the opening
//! handshake, the streaming receiver on a buffer of many small frames, and
//! permessage-deflate without context takeover: compressing one JSON-like message with
//! zlib (level 1 to 6, reset after it, as the server did for every message) against
//! `MessageEncoder`, which the server now uses up to 32 KiB, and inflating one.
//!
//! `cargo bench --bench proto` (or `make bench`, which runs these with short times).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wsreactor::proto::deflate::{Deflater, Inflater, MessageEncoder};
use wsreactor::proto::frame::MAX_HEADER_LEN;
use wsreactor::proto::handshake::{accept_response, HeadReader, Request};
use wsreactor::proto::mask;
use wsreactor::proto::utf8::Utf8Validator;
use wsreactor::proto::{Event, FrameHeader, Opcode, Receiver};

/// The header of a masked client frame (FIN set, minimal length encoding).
fn masked_header(opcode: Opcode, len: usize, key: [u8; 4]) -> FrameHeader {
    FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: Some(key),
        payload_len: len as u64,
    }
}

/// A masked client frame (FIN set) with a minimal length encoding.
fn client_frame(opcode: Opcode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut frame = masked_header(opcode, payload.len(), key).frame_with(payload);
    let start = frame.len() - payload.len();
    mask::apply(&mut frame[start..], key, 0);
    frame
}

fn frame_header_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header_decode");
    let key = [0x37, 0xfa, 0x21, 0x3d];
    for (name, len) in [
        ("7bit_20B", 20usize),
        ("16bit_512B", 512),
        ("64bit_16MiB", 16 << 20),
    ] {
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len = masked_header(Opcode::Binary, len, key).encode(&mut header);
        let header = &header[..header_len];
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| FrameHeader::decode(black_box(header)).unwrap().unwrap())
        });
    }
    group.finish();
}

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for (label, size) in [
        ("16B", 16usize),
        ("1KiB", 1024),
        ("64KiB", 64 * 1024),
        ("1MiB", 1024 * 1024),
    ] {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let key = [0x37, 0xfa, 0x21, 0x3d];
        group.bench_with_input(BenchmarkId::new("mask_apply", label), &size, |b, _| {
            b.iter(|| mask::apply(black_box(&mut buf), black_box(key), 0))
        });
        let src: Vec<u8> = (0..size).map(|i| (i * 13) as u8).collect();
        let mut dst = vec![0u8; size];
        group.bench_with_input(BenchmarkId::new("memcpy", label), &size, |b, _| {
            b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src)))
        });
        // The same unmask starting at an odd payload offset (a frame split across reads).
        if size == 64 * 1024 {
            group.bench_with_input(
                BenchmarkId::new("mask_apply_offset3", label),
                &size,
                |b, _| b.iter(|| mask::apply(black_box(&mut buf[3..]), black_box(key), 3)),
            );
        }
    }
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8_validate");
    let size = 64 * 1024;
    let ascii: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let mixed: Vec<u8> = "héllo wörld — ünïcödé ✓ 日本語のテキスト 🎉 "
        .repeat(size / 40)
        .into_bytes()[..size]
        .to_vec();
    // Cut `mixed` back to a valid boundary.
    let mut mixed = mixed;
    while std::str::from_utf8(&mixed).is_err() {
        mixed.pop();
    }
    // A 1 KiB message of JSON-like text (as `loadgen --payload json` sends).
    let object = r#"{"id":1000000042,"name":"Wireless Kettle 417","category":"kitchen","price":123.45,"qty":17,"in_stock":true,"updated_at":1767225600000,"tags":["sale","gift"]}"#;
    let mut json = format!("[{}", object).into_bytes();
    while json.len() + object.len() + 2 <= 1024 {
        json.push(b',');
        json.extend_from_slice(object.as_bytes());
    }
    json.push(b']');
    json.resize(1024, b' ');
    for (name, text) in [
        ("ascii_64KiB", &ascii),
        ("mixed_64KiB", &mixed),
        ("json_1KiB", &json),
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(BenchmarkId::new("std_from_utf8_whole", name), |b| {
            b.iter(|| std::str::from_utf8(black_box(text)).is_ok())
        });
        // What the receiver uses: SIMD validation, std's only to describe a failure.
        group.bench_function(BenchmarkId::new("from_utf8_whole", name), |b| {
            b.iter(|| wsreactor::proto::utf8::from_utf8(black_box(text)).is_ok())
        });
        group.bench_function(BenchmarkId::new("validator_whole", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::default();
                v.feed(black_box(text)).unwrap();
                v.finish().unwrap();
            })
        });
        // Odd-sized pieces, so code points straddle the cuts.
        group.bench_function(BenchmarkId::new("validator_1001B_pieces", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::default();
                for piece in black_box(text).chunks(1001) {
                    v.feed(piece).unwrap();
                }
                v.finish().unwrap();
            })
        });
    }
    group.finish();
}

const REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\n\
    Host: 127.0.0.1:9998\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
    Accept: */*\r\n\
    Accept-Language: en-US,en;q=0.5\r\n\
    Accept-Encoding: gzip, deflate, br\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Origin: http://127.0.0.1:9998\r\n\
    Sec-WebSocket-Extensions: permessage-deflate\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Connection: keep-alive, Upgrade\r\n\
    Pragma: no-cache\r\n\
    Cache-Control: no-cache\r\n\
    Upgrade: websocket\r\n\r\n";

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    // What the reactor does with a complete browser request: find the head's end,
    // parse, validate, build the 101.
    group.bench_function("head_parse_validate_accept", |b| {
        b.iter(|| {
            let head = black_box(REQUEST);
            let end = HeadReader::new(16 * 1024).poll(head).unwrap().unwrap();
            let request = Request::parse(&head[..end]).unwrap();
            let key = request.validate_upgrade().unwrap();
            accept_response(key, None)
        })
    });
    // ... and serialized to the bytes that go on the wire.
    group.bench_function("head_parse_validate_accept_to_bytes", |b| {
        b.iter(|| {
            let head = black_box(REQUEST);
            let end = HeadReader::new(16 * 1024).poll(head).unwrap().unwrap();
            let request = Request::parse(&head[..end]).unwrap();
            let key = request.validate_upgrade().unwrap();
            accept_response(key, None).to_bytes()
        })
    });
    // The same request arriving in 64-byte reads (HeadReader scans each byte once).
    group.bench_function("head_reader_64B_reads", |b| {
        b.iter(|| {
            let mut reader = HeadReader::new(16 * 1024);
            let mut end = None;
            for len in (64..REQUEST.len() + 64).step_by(64) {
                end = reader
                    .poll(black_box(&REQUEST[..len.min(REQUEST.len())]))
                    .unwrap();
                if end.is_some() {
                    break;
                }
            }
            end.unwrap()
        })
    });
    group.finish();
}

/// Feeds the whole buffer through the receiver; returns the number of messages.
fn drain(rx: &mut Receiver, buf: &mut [u8]) -> usize {
    let mut pos = 0;
    let mut messages = 0;
    while pos < buf.len() {
        let progress = rx.read(&mut buf[pos..]).unwrap();
        pos += progress.consumed;
        if let Some(event) = progress.event {
            if let Event::Message(m) = event {
                black_box(m.as_bytes());
            }
            messages += 1;
        }
    }
    messages
}

fn receiver(c: &mut Criterion) {
    let mut group = c.benchmark_group("receiver");
    let frames = 1000;
    for (name, opcode, size) in [
        ("binary_20B", Opcode::Binary, 20usize),
        ("binary_512B", Opcode::Binary, 512),
        ("text_20B", Opcode::Text, 20),
    ] {
        let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let stream: Vec<u8> = (0..frames)
            .flat_map(|i| client_frame(opcode, &payload, [1, 2, 3, (i % 251) as u8 + 1]))
            .collect();
        group.throughput(Throughput::Elements(frames as u64));
        group.bench_function(BenchmarkId::new("1000_frames_in_one_buffer", name), |b| {
            let mut rx = Receiver::new(16 << 20);
            if opcode == Opcode::Binary {
                // Unmasking is its own inverse: each pass leaves the buffer masked or
                // unmasked, and the receiver does the same work either way (binary
                // payloads are not inspected), so no per-iteration copy is needed.
                let mut buf = stream.clone();
                b.iter(|| assert_eq!(drain(&mut rx, &mut buf), frames))
            } else {
                // Text is validated, so each pass needs the masked original back.
                b.iter_batched_ref(
                    || stream.clone(),
                    |buf| assert_eq!(drain(&mut rx, buf), frames),
                    BatchSize::SmallInput,
                )
            }
        });
    }
    // A large frame arriving in 64 KiB reads: the copy into the assembly buffer.
    let big = vec![7u8; 1 << 20];
    let stream = client_frame(Opcode::Binary, &big, [9, 8, 7, 6]);
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("1MiB_frame_in_64KiB_reads", |b| {
        let mut rx = Receiver::new(16 << 20);
        let mut buf = stream.clone();
        b.iter(|| {
            let mut messages = 0;
            for chunk in buf.chunks_mut(64 * 1024) {
                messages += drain(&mut rx, chunk);
            }
            assert_eq!(messages, 1);
        })
    });
    group.finish();
}

/// JSON-like text of `size` bytes: product-like objects with repeated keys and varied
/// values (as the bench crate's `--payload json`).
fn json_like(size: usize) -> Vec<u8> {
    let (names, tags) = (
        [
            "Blue Widget",
            "Smart Kettle",
            "Eco Lamp",
            "Pro Drill",
            "Mini Camera",
        ],
        ["sale", "new", "bestseller", "gift", "clearance"],
    );
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = b"[".to_vec();
    let mut id = 1000;
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let r = state;
        out.extend_from_slice(
            format!(
                "{{\"id\":{id},\"name\":\"{} {}\",\"price\":{}.{:02},\"qty\":{},\
                 \"updated_at\":{},\"tags\":[\"{}\",\"{}\"]}},",
                names[(r % 5) as usize],
                100 + (r >> 8) % 900,
                (r >> 20) % 1000,
                (r >> 30) % 100,
                (r >> 40) % 500,
                1_767_225_600_000 - (r >> 12) % 86_400_000,
                tags[(r >> 50) as usize % 5],
                tags[(r >> 55) as usize % 5],
            )
            .as_bytes(),
        );
        id += 1;
    }
    out.truncate(size);
    out
}

fn deflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_no_takeover");
    for size in [1024usize, 16 * 1024] {
        let message = json_like(size);
        group.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::new();
        for level in [1u32, 6] {
            let mut zlib = Deflater::new(level, 15);
            group.bench_function(BenchmarkId::new(format!("zlib_level{level}"), size), |b| {
                b.iter(|| zlib.compress(black_box(&message), &mut out, true))
            });
            let mut ours = MessageEncoder::new(level);
            group.bench_function(
                BenchmarkId::new(format!("message_encoder_level{level}"), size),
                |b| b.iter(|| ours.compress(black_box(&message), 15, &mut out)),
            );
        }
        let mut wire = Vec::new();
        Deflater::new(6, 15).compress(&message, &mut wire, true);
        let mut inflater = Inflater::new();
        let mut plain = Vec::with_capacity(size);
        group.bench_function(BenchmarkId::new("inflate", size), |b| {
            b.iter(|| {
                plain.clear();
                inflater
                    .inflate(black_box(&wire), &mut plain, size)
                    .unwrap();
                inflater.finish(&mut plain, size, true).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    deflate,
    frame_header_decode,
    unmask,
    utf8,
    handshake,
    receiver
);
criterion_main!(benches);
