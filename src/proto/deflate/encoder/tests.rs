use super::*;
use flate2::{Decompress, FlushDecompress, Status};
use proptest::prelude::*;

/// Inflates `wire` (tail restored) with zlib limited to a `window_bits` window, which
/// rejects any distance reaching further back.
fn zlib_inflate(wire: &[u8], window_bits: u8, expected_len: usize) -> Vec<u8> {
    let mut input = wire.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut z = Decompress::new_with_window_bits(false, window_bits);
    let mut out = Vec::with_capacity(expected_len + 64);
    let status = z
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("zlib inflates it");
    assert_eq!(status, Status::Ok, "no final block: the stream goes on");
    assert_eq!(z.total_in() as usize, input.len(), "all input taken");
    out
}

fn round_trip(encoder: &mut MessageEncoder, message: &[u8], window_bits: u8) -> Vec<u8> {
    let mut wire = Vec::new();
    encoder.compress(message, window_bits, &mut wire);
    assert!(!wire.ends_with(&[0x00, 0x00, 0xff, 0xff]));
    assert!(
        wire.len() <= message.len() + 5 * (message.len() / BLOCK_TOKENS + 1) + 1,
        "{} bytes for {}",
        wire.len(),
        message.len()
    );
    let inflated = zlib_inflate(&wire, window_bits, message.len());
    assert_eq!(inflated, message);
    // And through our own inflater, fed in small pieces.
    let mut inflater = crate::proto::deflate::Inflater::new();
    let mut out = Vec::new();
    for piece in wire.chunks(5) {
        inflater.inflate(piece, &mut out, usize::MAX).unwrap();
    }
    inflater.finish(&mut out, usize::MAX, true).unwrap();
    assert_eq!(out, message);
    wire
}

/// JSON-like text: objects with repeated keys and varied values.
fn json_like(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let names = ["Widget", "Kettle", "Lamp", "Drill", "Camera", "Tent"];
    let mut out = b"[".to_vec();
    let mut id = seed % 1000;
    while out.len() < size {
        let r = next();
        out.extend_from_slice(
            format!(
                "{{\"id\":{id},\"name\":\"{} {}\",\"price\":{}.{:02},\"qty\":{},\"tags\":[\"sale\",\"new\"]}},",
                names[(r % 6) as usize],
                100 + (r >> 8) % 900,
                r >> 20 & 0xfff,
                r >> 40 & 63,
                r >> 50 & 511
            )
            .as_bytes(),
        );
        id += 1;
    }
    out.truncate(size);
    out
}

#[test]
fn empty_message_is_one_zero_byte() {
    let mut wire = Vec::new();
    MessageEncoder::new(6).compress(b"", 15, &mut wire);
    assert_eq!(wire, [0x00]);
}

#[test]
fn hello_inflates() {
    let mut encoder = MessageEncoder::new(6);
    round_trip(&mut encoder, b"Hello", 15);
    round_trip(&mut encoder, b"a", 15);
}

#[test]
fn json_compresses_about_as_well_as_zlib_level_6() {
    let mut encoder = MessageEncoder::new(6);
    let mut zlib = crate::proto::deflate::Deflater::new(6, 15);
    let (mut ours, mut theirs) = (0, 0);
    for seed in 0..50 {
        let message = json_like(seed, 1024);
        ours += round_trip(&mut encoder, &message, 15).len();
        let mut wire = Vec::new();
        zlib.compress(&message, &mut wire, true);
        theirs += wire.len();
    }
    assert!(ours * 10 <= theirs * 11, "ours {ours}, zlib's {theirs}");
}

#[test]
fn incompressible_data_is_stored() {
    let mut state = 99u64;
    let message: Vec<u8> = (0..100_000)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 56) as u8
        })
        .collect();
    let wire = round_trip(&mut MessageEncoder::new(6), &message, 15);
    // Stored blocks: 5 bytes of header per block, plus the flush.
    assert!(wire.len() <= message.len() + 5 * 7 + 1, "{}", wire.len());
}

#[test]
fn long_runs_and_window_limits() {
    let mut encoder = MessageEncoder::new(9);
    for bits in 9..=15 {
        // A pattern repeating just beyond the window, and one just within it.
        for period in [(1usize << bits) - 1, 1 << bits, (1 << bits) + 1] {
            let unit = json_like(bits as u64, period);
            let message = unit.repeat(3);
            round_trip(&mut encoder, &message, bits);
        }
        round_trip(&mut encoder, &vec![b'x'; 100_000], bits);
    }
}

#[test]
fn stale_hash_entries_from_earlier_messages_are_ignored() {
    // Same text again: a match into the previous message would be a distance that
    // reaches before the start of this one, which zlib rejects.
    let mut encoder = MessageEncoder::new(6);
    let message = json_like(5, 3000);
    for _ in 0..5 {
        round_trip(&mut encoder, &message, 15);
        round_trip(&mut encoder, &message[..100], 15);
    }
}

#[test]
fn the_running_position_wraps_around() {
    let mut encoder = MessageEncoder::new(6);
    encoder.base = u32::MAX - 3 * SEGMENT as u32;
    let message = json_like(3, 3 * SEGMENT + 17);
    for _ in 0..4 {
        round_trip(&mut encoder, &message, 15);
    }
    // It wrapped: 16 segments since.
    assert!(encoder.base < 20 * SEGMENT as u32);
}

#[test]
fn many_tokens_make_several_blocks() {
    // Mostly literals with a few short matches: more tokens than one block holds.
    let mut state = 7u64;
    let message: Vec<u8> = (0..SEGMENT)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            b"abcdefgh"[(state >> 61) as usize]
        })
        .collect();
    let mut encoder = MessageEncoder::new(1);
    round_trip(&mut encoder, &message, 15);
    round_trip(&mut MessageEncoder::new(6), &message, 15);
}

/// Kraft's sum of `len` over its used symbols, in units of 2^-15.
fn kraft(len: &[u8]) -> u64 {
    len.iter()
        .filter(|&&l| l != 0)
        .map(|&l| 1u64 << (15 - l))
        .sum()
}

/// The cost of an unlimited Huffman code, by the textbook merge of the two lightest.
fn huffman_cost(freqs: &[u32]) -> u64 {
    let mut w: Vec<u64> = freqs
        .iter()
        .filter(|&&f| f != 0)
        .map(|&f| f.into())
        .collect();
    let mut cost = 0;
    while w.len() > 1 {
        w.sort_unstable_by(|a, b| b.cmp(a));
        let merged = w.pop().unwrap() + w.pop().unwrap();
        cost += merged;
        w.push(merged);
    }
    cost
}

#[test]
fn code_lengths_are_optimal_when_the_limit_allows() {
    let mut freqs = [0u32; LIT_CODES];
    for (i, f) in freqs.iter_mut().enumerate().step_by(3) {
        *f = (i as u32 * 7919) % 97 + 1;
    }
    let mut len = [0u8; LIT_CODES];
    code_lengths(&freqs, 15, &mut len);
    assert_eq!(kraft(&len), 1 << 15);
    let ours: u64 = freqs
        .iter()
        .zip(&len)
        .map(|(&f, &l)| u64::from(f) * u64::from(l))
        .sum();
    assert_eq!(ours, huffman_cost(&freqs));
}

#[test]
fn code_lengths_respect_the_limit() {
    // Fibonacci frequencies make the deepest unlimited tree.
    let mut freqs = [0u32; LIT_CODES];
    let (mut a, mut b) = (1u32, 1u32);
    for f in freqs.iter_mut().take(30) {
        *f = a;
        (a, b) = (b, a + b);
    }
    for limit in [7u8, 9, 15] {
        let mut len = [0u8; LIT_CODES];
        code_lengths(&freqs, limit, &mut len);
        assert!(len.iter().all(|&l| l <= limit));
        assert_eq!(kraft(&len), 1 << 15, "limit {limit}");
        assert!(len.iter().take(30).all(|&l| l != 0));
    }
}

#[test]
fn one_used_symbol_still_gets_a_complete_code() {
    let mut freqs = [0u32; CL_CODES];
    freqs[18] = 5;
    let mut len = [0u8; CL_CODES];
    code_lengths(&freqs, 7, &mut len);
    assert_eq!(len[18], 1);
    assert_eq!(kraft(&len), 1 << 15);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_bytes_round_trip(message in proptest::collection::vec(any::<u8>(), 0..3000), bits in 9u8..=15, level in 0u32..=9) {
        round_trip(&mut MessageEncoder::new(level), &message, bits);
    }

    #[test]
    fn small_alphabets_round_trip(
        message in proptest::collection::vec(0u8..4, 0..5000),
        bits in 9u8..=15,
        level in 0u32..=9,
    ) {
        round_trip(&mut MessageEncoder::new(level), &message, bits);
    }

    #[test]
    fn json_like_round_trips(seed in any::<u64>(), size in 0usize..20_000, bits in 9u8..=15, level in 0u32..=9) {
        round_trip(&mut MessageEncoder::new(level), &json_like(seed, size), bits);
    }

    #[test]
    fn repeats_round_trip(
        unit in proptest::collection::vec(any::<u8>(), 1..300),
        times in 1usize..400,
        tail in proptest::collection::vec(any::<u8>(), 0..10),
    ) {
        let mut message = unit.repeat(times);
        message.extend_from_slice(&tail);
        round_trip(&mut MessageEncoder::new(6), &message, 15);
    }

    #[test]
    fn sizes_around_segment_boundaries(extra in 0usize..20, below in any::<bool>(), seed in any::<u64>()) {
        let size = if below { SEGMENT - extra } else { SEGMENT + extra };
        round_trip(&mut MessageEncoder::new(6), &json_like(seed, size), 15);
        round_trip(&mut MessageEncoder::new(6), &json_like(seed, 2 * size), 15);
    }
}
