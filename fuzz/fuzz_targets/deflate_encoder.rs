//! `MessageEncoder` round trip: whatever the bytes, the encoder must not panic, and its
//! output, with the `00 00 ff ff` tail restored, must inflate (zlib, with the window
//! the peer agreed to, so a distance reaching too far back fails) to the message.
//!
//! Input: 1 byte of window bits (`9 + b % 7`), 1 byte of level (`b % 10`), 1 byte of
//! repeats (the message is the rest of the input `1 + b % 64` times over, so the long
//! messages that cross blocks and segments are reached from short inputs), the message
//! bytes. Each input is compressed three times with one encoder (the second and third
//! after a shorter message), so entries left by earlier messages are exercised.
#![no_main]

use flate2::{Decompress, FlushDecompress, Status};
use libfuzzer_sys::fuzz_target;
use wsreactor::proto::deflate::MessageEncoder;

fn check(encoder: &mut MessageEncoder, message: &[u8], bits: u8) {
    let mut wire = Vec::new();
    encoder.compress(message, bits, &mut wire);
    assert!(!wire.is_empty());
    // Bounded: at worst stored blocks, 5 bytes each per 16 Ki input bytes.
    assert!(wire.len() <= message.len() + 5 * (message.len() / 16384 + 1) + 1);
    wire.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut z = Decompress::new_with_window_bits(false, bits);
    let mut out = Vec::with_capacity(message.len() + 1);
    let status = z
        .decompress_vec(&wire, &mut out, FlushDecompress::Sync)
        .expect("a valid DEFLATE stream within the window");
    assert_eq!(status, Status::Ok);
    assert_eq!(z.total_in() as usize, wire.len());
    assert_eq!(out, message);
}

fuzz_target!(|data: &[u8]| {
    let [bits, level, repeats, message @ ..] = data else {
        return;
    };
    let bits = 9 + bits % 7;
    let message = message.repeat(1 + usize::from(repeats % 64));
    let mut encoder = MessageEncoder::new(u32::from(level % 10));
    check(&mut encoder, &message, bits);
    check(&mut encoder, &message[..message.len() / 3], bits);
    check(&mut encoder, &message, bits);
});
