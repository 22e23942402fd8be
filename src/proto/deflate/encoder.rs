//! A DEFLATE encoder (RFC 1951) for whole messages compressed without context
//! takeover: each message is a stream of its own, so nothing is kept between messages.
//!
//! Why not zlib for these: a zlib compressor is built for long streams, and resetting
//! one per message costs more than compressing a small message (zlib-rs zeroes its
//! 128 KiB hash table on every reset), and its Huffman tree construction is tuned for
//! 16 K-symbol blocks, not the few hundred symbols of a 1 KiB JSON text. This encoder
//! keeps no history, so it needs no reset:
//!
//! - the hash table's entries are tagged with a running position (`base + pos`), so an
//!   entry left by an earlier message is recognised as stale and never cleared (the
//!   table is zeroed only when the running position nears `u32::MAX`, once per 4 GiB);
//! - the hash chains (`prev`) are written before they are read within each message;
//! - code lengths come from Moffat and Katajainen's in-place minimum-redundancy
//!   algorithm over the symbols actually used, limited to DEFLATE's maximum lengths by
//!   moving leaves down the tree (Kraft sum kept at one).
//!
//! Each block is sent as whichever of dynamic Huffman, fixed Huffman or stored is
//! shortest, and the message ends as a sync flush does (an empty stored block) with
//! that block's `00 00 ff ff` left off (RFC 7692 §7.2.1). Every buffer has a fixed size:
//! a long message is compressed in segments of [`SEGMENT`] bytes whose matches stay
//! inside the segment, and output grows by at most the input's size plus a few bytes
//! per block.

mod block;

use block::*;

/// Longest input compressed as one unit; matches do not reach across segments.
pub const SEGMENT: usize = 32 * 1024;

/// Tokens buffered before a block is written (a block's symbol statistics).
const BLOCK_TOKENS: usize = 16 * 1024;

const HASH_BITS: u32 = 13;
const HASH_SIZE: usize = 1 << HASH_BITS;

/// Matches shorter than this are not worth their codes (and our hash covers 4 bytes).
const MIN_MATCH: usize = 4;
const MAX_MATCH: usize = 258;

/// A held match this long cuts the search at the next position to a quarter.
const GOOD_MATCH: usize = 8;

/// How hard to look for matches, by zlib level. Level 6's figures were chosen on
/// JSON-like text: at 16 KiB, with the [`GOOD_MATCH`] rule, they give zlib level 6's
/// size within 3% with a quarter of the chain length that would gain another 5%, for
/// about a third fewer instructions; at 1 KiB the search hardly matters (the block's
/// Huffman code costs as much).
#[derive(Debug, Clone, Copy)]
struct Effort {
    /// Chain links followed per position.
    chain: u32,
    /// A match this long is taken at once (no lazy look at the next position).
    lazy_limit: usize,
    /// A match this long ends the search.
    nice: usize,
}

fn effort(level: u32) -> Effort {
    match level {
        0..=1 => Effort {
            chain: 4,
            lazy_limit: 0,
            nice: 32,
        },
        2..=3 => Effort {
            chain: 4,
            lazy_limit: 8,
            nice: 32,
        },
        4..=6 => Effort {
            chain: 8,
            lazy_limit: 16,
            nice: 64,
        },
        _ => Effort {
            chain: 256,
            lazy_limit: MAX_MATCH,
            nice: MAX_MATCH,
        },
    }
}

/// Compresses messages one at a time, each a standalone raw DEFLATE stream ending in a
/// sync flush with its tail removed. About 160 KiB (hash heads 32 KiB, chains 64 KiB, tokens 64 KiB), allocated once.
pub struct MessageEncoder {
    effort: Effort,
    /// Most recent position (as `base + pos`) with each hash.
    head: Box<[u32; HASH_SIZE]>,
    /// Distance from each position back to the previous one with its hash, 0 for none.
    prev: Box<[u16; SEGMENT]>,
    /// `head` entries below this belong to earlier segments.
    base: u32,
    /// The hash's shift for this segment: a short one uses only the start of `head`,
    /// so its lookups stay in the cache lines it touched.
    shift: u32,
    /// The current block: its tokens, and the counts of the symbols they send.
    block: Block,
}

impl std::fmt::Debug for MessageEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageEncoder").finish_non_exhaustive()
    }
}

impl MessageEncoder {
    /// An encoder searching about as hard as zlib at `level` (1–9; 0 is taken as 1).
    pub fn new(level: u32) -> MessageEncoder {
        MessageEncoder {
            effort: effort(level),
            head: vec![0; HASH_SIZE]
                .into_boxed_slice()
                .try_into()
                .unwrap_or_else(|_| unreachable!()),
            prev: vec![0; SEGMENT]
                .into_boxed_slice()
                .try_into()
                .unwrap_or_else(|_| unreachable!()),
            base: 1,
            shift: 32 - HASH_BITS,
            block: Block {
                tokens: Vec::with_capacity(BLOCK_TOKENS),
                lit_freq: [0; LIT_CODES],
                dist_freq: [0; DIST_CODES],
                extra_bits: 0,
            },
        }
    }

    /// Replaces `out` with `message` compressed for a peer whose window is
    /// `window_bits` (9–15): raw DEFLATE, non-final blocks, ending with the 3 header
    /// bits of an empty stored block and padding to a byte, as a sync flush does with
    /// its `00 00 ff ff` removed. An empty message gives the single `0x00` of §7.2.3.6.
    pub fn compress(&mut self, message: &[u8], window_bits: u8, out: &mut Vec<u8>) {
        out.clear();
        let max_dist = 1usize << window_bits.clamp(9, 15);
        let mut bits = BitWriter::new(out);
        for segment in message.chunks(SEGMENT) {
            self.compress_segment(segment, max_dist, &mut bits);
        }
        // The sync flush: an empty stored block, BFINAL clear; its LEN/NLEN
        // (00 00 ff ff) are what RFC 7692 leaves off.
        bits.put(0, 3);
        bits.flush_to_byte();
    }

    fn compress_segment(&mut self, data: &[u8], max_dist: usize, bits: &mut BitWriter<'_>) {
        if self.base > u32::MAX - 2 * SEGMENT as u32 {
            self.head.fill(0);
            self.base = 1;
        }
        let n = data.len();
        // Two to four slots per byte, 512 to HASH_SIZE. Fewer (a quarter of this, to
        // touch fewer cache lines) cost a 1 KiB message 1.7 µs more in the server in
        // collisions; this many saved about 0.5 µs over one slot per byte.
        self.shift = 32 - (usize::BITS - n.leading_zeros() + 1).clamp(9, HASH_BITS);
        let mut block_start = 0;
        // Bytes of `data` that tokens (written or buffered) cover.
        let mut covered = 0;
        // A match found at `p - 1`, held while `p` is tried (lazy matching).
        let mut held: Option<(usize, usize)> = None;
        let mut p = 0;
        self.block.clear();
        while p < n {
            let (len, dist) = if p + MIN_MATCH <= n {
                // With a good match held, only a short look for a better one (zlib's
                // `good_length` rule): most of the search's time on text is spent
                // walking chains of common 4-byte strings.
                let chain = match held {
                    Some((held_len, _)) if held_len >= GOOD_MATCH => self.effort.chain.div_ceil(4),
                    _ => self.effort.chain,
                };
                self.insert_and_find(data, p, max_dist, chain)
            } else {
                (0, 0)
            };
            match held {
                Some((held_len, held_dist)) if len <= held_len => {
                    self.block.matched(held_len, held_dist);
                    let end = p - 1 + held_len;
                    for q in p + 1..end.min(n.saturating_sub(MIN_MATCH - 1)) {
                        self.insert(data, q);
                    }
                    p = end;
                    covered = end;
                    held = None;
                }
                Some(_) => {
                    self.block.literal(data[p - 1]);
                    covered = p;
                    held = Some((len, dist));
                    p += 1;
                }
                None if len >= MIN_MATCH && len >= self.effort.lazy_limit => {
                    self.block.matched(len, dist);
                    let end = p + len;
                    for q in p + 1..end.min(n.saturating_sub(MIN_MATCH - 1)) {
                        self.insert(data, q);
                    }
                    p = end;
                    covered = end;
                }
                None if len >= MIN_MATCH => {
                    held = Some((len, dist));
                    p += 1;
                }
                None => {
                    self.block.literal(data[p]);
                    p += 1;
                    covered = p;
                }
            }
            // A held match starts at `covered`, so it goes to the next block.
            if self.block.tokens.len() >= BLOCK_TOKENS {
                write_block(&mut self.block, &data[block_start..covered], bits);
                block_start = covered;
            }
        }
        // A match held at `n - 1` would be shorter than MIN_MATCH: none is left.
        debug_assert!(held.is_none());
        if block_start < n {
            write_block(&mut self.block, &data[block_start..n], bits);
        }
        self.base += n as u32 + 1;
    }

    /// Records position `p` (with at least 4 bytes from it) in the hash chains.
    #[inline]
    fn insert(&mut self, data: &[u8], p: usize) -> u32 {
        let h = hash(data, p, self.shift);
        let stamp = self.base + p as u32;
        // The masks cost nothing and spare the bounds checks (`h` and `p` are in range).
        let old = std::mem::replace(&mut self.head[h & (HASH_SIZE - 1)], stamp);
        self.prev[p & (SEGMENT - 1)] = if old >= self.base {
            (stamp - old) as u16
        } else {
            0
        };
        old
    }

    /// Records `p` and returns the longest earlier match for it, `(len, dist)`, or a
    /// length below [`MIN_MATCH`].
    #[inline]
    fn insert_and_find(
        &mut self,
        data: &[u8],
        p: usize,
        max_dist: usize,
        mut chain: u32,
    ) -> (usize, usize) {
        let old = self.insert(data, p);
        if old < self.base {
            return (0, 0);
        }
        let max_len = (data.len() - p).min(MAX_MATCH);
        let mut cand = (old - self.base) as usize;
        let mut best_len = MIN_MATCH - 1;
        let mut best_dist = 0;
        loop {
            let dist = p - cand;
            if dist > max_dist {
                break;
            }
            if data[cand + best_len] == data[p + best_len] {
                let len = match_len(data, cand, p, max_len);
                if len > best_len {
                    best_len = len;
                    best_dist = dist;
                    if len >= self.effort.nice || len == max_len {
                        break;
                    }
                }
            }
            chain -= 1;
            let step = usize::from(self.prev[cand & (SEGMENT - 1)]);
            if chain == 0 || step == 0 {
                break;
            }
            cand -= step;
        }
        (best_len, best_dist)
    }
}

#[inline]
fn hash(data: &[u8], p: usize, shift: u32) -> usize {
    let word = u32::from_le_bytes(data[p..p + 4].try_into().unwrap_or([0; 4]));
    (word.wrapping_mul(0x9E37_79B1) >> shift) as usize
}

/// How many bytes from `a` equal those from `b` (`a < b`), up to `max`.
#[inline]
fn match_len(data: &[u8], a: usize, b: usize, max: usize) -> usize {
    let (x, y) = (&data[a..a + max], &data[b..b + max]);
    let mut len = 0;
    for (cx, cy) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
        let diff = u64::from_le_bytes(cx.try_into().unwrap_or([0; 8]))
            ^ u64::from_le_bytes(cy.try_into().unwrap_or([0; 8]));
        if diff != 0 {
            return len + (diff.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    len + x[len..]
        .iter()
        .zip(&y[len..])
        .take_while(|(cx, cy)| cx == cy)
        .count()
}

#[cfg(test)]
mod tests;
