//! Payload masking (RFC 6455 §5.3).
//!
//! Every client-to-server frame is XORed with a 4-byte key the client picks, so that a
//! hostile page cannot make a browser emit bytes that a transparent proxy would mistake
//! for HTTP (the cache-poisoning attack of §10.3). Unmasking is the one pass the server
//! must make over every payload byte, so it runs in place, a machine word at a time.

/// XORs `payload` in place with `key`, as if `payload` started `offset` bytes into the
/// frame's payload.
///
/// The offset matters when a frame arrives in several reads: the key's phase carries over
/// from where the previous chunk stopped. Applying the function twice restores the input.
pub fn apply(payload: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    // Eight key bytes in a word: XOR a word at a time. A word is a multiple of the key
    // length, so the key phase is the same at the start of every chunk and of the tail.
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_bytewise(payload: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn rfc_5_7_masked_hello() {
        // §5.7: "Hello" masked with 37 fa 21 3d is 7f 9f 4d 51 58.
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn word_path_matches_bytewise_for_every_length_and_offset() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        for len in 0..70 {
            for offset in 0..8 {
                let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = original.clone();
                let mut slow = original.clone();
                apply(&mut fast, key, offset);
                apply_bytewise(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn chunked_unmasking_equals_whole() {
        let key = [1, 2, 3, 4];
        let original: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut whole = original.clone();
        apply(&mut whole, key, 0);
        let mut pieces = original.clone();
        let mut offset = 0;
        for size in [1, 3, 7, 13, 64, 5, 907] {
            let end = (offset + size).min(pieces.len());
            apply(&mut pieces[offset..end], key, offset);
            offset = end;
        }
        assert_eq!(whole, pieces);
    }
}
