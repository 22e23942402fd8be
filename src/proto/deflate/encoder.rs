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

/// A token with this bit is a match (see [`Block`]); otherwise a literal.
const MATCH_FLAG: u32 = 1 << 31;

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

/// A block's tokens and statistics, gathered as the tokens are chosen.
struct Block {
    /// A literal byte, or [`MATCH_FLAG`] with the length and distance codes and their
    /// extra bits' values, so writing needs no table lookups.
    tokens: Vec<u32>,
    lit_freq: [u32; LIT_CODES],
    dist_freq: [u32; DIST_CODES],
    /// Extra bits the matches send.
    extra_bits: u64,
}

impl Block {
    #[inline]
    fn literal(&mut self, byte: u8) {
        self.tokens.push(u32::from(byte));
        self.lit_freq[usize::from(byte)] += 1;
    }

    #[inline]
    fn matched(&mut self, len: usize, dist: usize) {
        let lc = usize::from(LEN_CODE[len - 3]);
        let dc = dist_code(dist - 1);
        self.lit_freq[257 + lc] += 1;
        self.dist_freq[dc] += 1;
        self.extra_bits += u64::from(LEN_EXTRA[lc]) + u64::from(DIST_EXTRA[dc]);
        let len_extra = (len - usize::from(LEN_BASE[lc])) as u32;
        let dist_extra = (dist - usize::from(DIST_BASE[dc])) as u32;
        self.tokens.push(
            MATCH_FLAG | (lc as u32) << 23 | len_extra << 18 | (dc as u32) << 13 | dist_extra,
        );
    }

    fn clear(&mut self) {
        self.tokens.clear();
        self.lit_freq = [0; LIT_CODES];
        self.dist_freq = [0; DIST_CODES];
        self.extra_bits = 0;
    }
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

// ---- Huffman coding ----

/// Literal/length symbols, with the two the fixed code defines but no block may use
/// (they take part in the fixed code's canonical numbering).
const LIT_CODES: usize = 288;
const DIST_CODES: usize = 30;
const CL_CODES: usize = 19;
const END_OF_BLOCK: usize = 256;

/// The order code-length code lengths are sent in (RFC 1951 §3.2.7).
const CL_ORDER: [usize; CL_CODES] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Length code index (0..29, add 257 for the symbol) for `len - 3`.
const LEN_CODE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut code = 0;
    while code < 29 {
        let start = LEN_BASE[code] as usize - 3;
        let end = if code == 28 {
            256
        } else {
            LEN_BASE[code + 1] as usize - 3
        };
        let mut i = start;
        while i < end {
            table[i] = code as u8;
            i += 1;
        }
        code += 1;
    }
    // 258 has a code of its own (285); 257 - 3 = 254 stays with code 27.
    table[255] = 28;
    table
};

/// Distance code for `dist - 1`: below 256 directly, else `256 + ((dist - 1) >> 7)`.
const DIST_CODE: [u8; 512] = {
    let mut table = [0u8; 512];
    let mut code = 0;
    while code < 30 {
        let start = DIST_BASE[code] as usize - 1;
        let end = if code == 29 {
            32768
        } else {
            DIST_BASE[code + 1] as usize - 1
        };
        let mut d = start;
        while d < end {
            if d < 256 {
                table[d] = code as u8;
            } else {
                table[256 + (d >> 7)] = code as u8;
            }
            d += 1;
        }
        code += 1;
    }
    table
};

#[inline]
fn dist_code(dist_minus_one: usize) -> usize {
    if dist_minus_one < 256 {
        usize::from(DIST_CODE[dist_minus_one])
    } else {
        usize::from(DIST_CODE[256 + (dist_minus_one >> 7)])
    }
}

/// A prefix code: lengths and (bit-reversed, ready to send LSB first) codes.
struct Code<const N: usize> {
    len: [u8; N],
    code: [u16; N],
}

impl<const N: usize> Code<N> {
    fn from_freqs(freqs: &[u32; N], limit: u8) -> Code<N> {
        let mut len = [0u8; N];
        let count = code_lengths(freqs, limit, &mut len);
        Code::canonical(len, &count)
    }

    /// Canonical codes for `len` (RFC 1951 §3.2.2).
    const fn from_lengths(len: [u8; N]) -> Code<N> {
        let mut count = [0u16; 16];
        let mut sym = 0;
        while sym < N {
            count[len[sym] as usize] += 1;
            sym += 1;
        }
        Code::canonical(len, &count)
    }

    /// Canonical codes for `len`, given how many codes have each length (`count[0]`
    /// is ignored).
    const fn canonical(len: [u8; N], count: &[u16; 16]) -> Code<N> {
        let mut next = [0u16; 16];
        let mut code = 0u16;
        let mut bits = 1;
        while bits < 16 {
            code = (code + if bits > 1 { count[bits - 1] } else { 0 }) << 1;
            next[bits] = code;
            bits += 1;
        }
        let mut codes = [0u16; N];
        let mut sym = 0;
        while sym < N {
            let l = len[sym] as usize;
            if l != 0 {
                codes[sym] = next[l].reverse_bits() >> (16 - l);
                next[l] += 1;
            }
            sym += 1;
        }
        Code { len, code: codes }
    }

    fn cost(&self, freqs: &[u32; N]) -> u64 {
        freqs
            .iter()
            .zip(&self.len)
            .map(|(&f, &l)| u64::from(f * u32::from(l)))
            .sum()
    }
}

/// The fixed literal/length code (RFC 1951 §3.2.6).
const FIXED_LIT: Code<LIT_CODES> = {
    let mut len = [8u8; LIT_CODES];
    let mut sym = 144;
    while sym < 256 {
        len[sym] = 9;
        sym += 1;
    }
    while sym < 280 {
        len[sym] = 7;
        sym += 1;
    }
    Code::from_lengths(len)
};

/// The fixed distance code: five bits each.
const FIXED_DIST: Code<DIST_CODES> = Code::from_lengths([5; DIST_CODES]);

/// Optimal code lengths for `freqs`, none longer than `limit`, into `len`. At least two
/// symbols get a code (an unused one is added if needed), so every code is complete,
/// which every inflater accepts. Returns how many codes have each length.
fn code_lengths<const N: usize>(freqs: &[u32; N], limit: u8, len: &mut [u8; N]) -> [u16; 16] {
    // The used symbols as `frequency << 16 | symbol`, to sort by frequency. A block's
    // counts stay below 2^16 (BLOCK_TOKENS); a larger one would only cost optimality.
    let mut keys = [0u32; N];
    let mut used = 0;
    for (sym, &f) in freqs.iter().enumerate() {
        // Branch-free: which symbols are used is anyone's guess.
        keys[used] = f.min(0xffff) << 16 | sym as u32;
        used += usize::from(f != 0);
    }
    let mut sym = 0;
    while used < 2 {
        // Pad with the first unused symbols, at the lowest frequency.
        if freqs[sym] == 0 {
            keys[used] = sym as u32;
            used += 1;
        }
        sym += 1;
    }
    let keys = &mut keys[..used];
    keys.sort_unstable();
    let mut depths = [0u32; N];
    let depths = &mut depths[..used];
    for (d, &k) in depths.iter_mut().zip(keys.iter()) {
        *d = k >> 16;
    }
    minimum_redundancy(depths);

    // Count leaves by depth, folding anything deeper than `limit` into `limit`, then
    // restore the Kraft sum: each step takes a leaf from the deepest level and splits
    // the deepest shallower leaf into two, which lowers the sum by exactly one unit.
    let limit = usize::from(limit);
    let mut count = [0u32; 32];
    for &d in depths.iter() {
        count[(d as usize).min(limit)] += 1;
    }
    let mut kraft: u64 = (1..=limit)
        .map(|l| u64::from(count[l]) << (limit - l))
        .sum();
    while kraft > 1 << limit {
        // Never empty here: the excess is below the number of leaves folded in.
        count[limit] = count[limit].saturating_sub(1);
        if let Some(l) = (1..limit).rev().find(|&l| count[l] != 0) {
            count[l] -= 1;
            count[l + 1] += 2;
        }
        kraft -= 1;
    }
    // The least frequent symbols (first in `keys`) get the longest codes.
    let mut next = keys.iter();
    let mut counts = [0u16; 16];
    for l in (1..=limit).rev() {
        for _ in 0..count[l] {
            if let Some(&k) = next.next() {
                len[(k & 0xffff) as usize] = l as u8;
                counts[l] += 1;
            }
        }
    }
    counts
}

/// Moffat and Katajainen's in-place computation of minimum-redundancy code lengths:
/// `a` holds the weights in ascending order (at least two) and ends up holding each
/// one's code length.
fn minimum_redundancy(a: &mut [u32]) {
    let n = a.len();
    // Phase 1: build the tree; internal nodes reuse the array, each holding its
    // weight and then its parent's index.
    a[0] += a[1];
    let (mut root, mut leaf) = (0, 2);
    for next in 1..n - 1 {
        if leaf >= n || a[root] < a[leaf] {
            a[next] = a[root];
            a[root] = next as u32;
            root += 1;
        } else {
            a[next] = a[leaf];
            leaf += 1;
        }
        if leaf >= n || (root < next && a[root] < a[leaf]) {
            a[next] += a[root];
            a[root] = next as u32;
            root += 1;
        } else {
            a[next] += a[leaf];
            leaf += 1;
        }
    }
    // Phase 2: internal node depths from parent indices.
    a[n - 2] = 0;
    for next in (0..n - 2).rev() {
        a[next] = a[a[next] as usize] + 1;
    }
    // Phase 3: leaf depths, shallowest to the heaviest leaves (the end of the array).
    let (mut avail, mut used, mut depth) = (1usize, 0usize, 0u32);
    let mut root = n as isize - 2;
    let mut next = n as isize - 1;
    while avail > 0 {
        while root >= 0 && a[root as usize] == depth {
            used += 1;
            root -= 1;
        }
        while avail > used {
            a[next as usize] = depth;
            next -= 1;
            avail -= 1;
        }
        avail = 2 * used;
        depth += 1;
        used = 0;
    }
}

/// Writes one block (BFINAL clear) for the block's tokens, which encode `raw`:
/// dynamic, fixed or stored, whichever is shortest; then empties the block.
fn write_block(block: &mut Block, raw: &[u8], bits: &mut BitWriter<'_>) {
    block.lit_freq[END_OF_BLOCK] = 1;
    let (lit_freq, dist_freq) = (&block.lit_freq, &block.dist_freq);

    let lit = Code::from_freqs(lit_freq, 15);
    let dist = Code::from_freqs(dist_freq, 15);
    let header = TreeHeader::new(&lit.len, &dist.len);
    let dynamic = header.bits() + lit.cost(lit_freq) + dist.cost(dist_freq) + block.extra_bits;

    // The fixed code: 8 bits, but 9 for literals 144..=255 and 7 for 256..=279.
    let sum = |range: std::ops::Range<usize>| -> u64 {
        lit_freq[range].iter().map(|&f| u64::from(f)).sum()
    };
    let fixed = 8 * sum(0..LIT_CODES) + sum(144..256) - sum(256..280)
        + 5 * dist_freq.iter().map(|&f| u64::from(f)).sum::<u64>()
        + block.extra_bits;

    // Header, padding to a byte (at most 7 bits), LEN and NLEN, the bytes.
    let stored = 3 + 7 + 32 + 8 * raw.len() as u64;

    if stored <= dynamic.min(fixed) && raw.len() <= usize::from(u16::MAX) {
        bits.put(0b000, 3);
        bits.flush_to_byte();
        let len = raw.len() as u16;
        bits.bytes(&len.to_le_bytes());
        bits.bytes(&(!len).to_le_bytes());
        bits.bytes(raw);
    } else if fixed <= dynamic {
        bits.put(0b010, 3);
        write_tokens(&block.tokens, &FIXED_LIT, &FIXED_DIST, bits);
    } else {
        bits.put(0b100, 3);
        header.write(bits);
        write_tokens(&block.tokens, &lit, &dist, bits);
    }
    block.clear();
}

fn write_tokens(
    tokens: &[u32],
    lit: &Code<LIT_CODES>,
    dist: &Code<DIST_CODES>,
    bits: &mut BitWriter<'_>,
) {
    for &t in tokens {
        if t & MATCH_FLAG == 0 {
            let sym = t as usize;
            bits.put(u64::from(lit.code[sym]), u32::from(lit.len[sym]));
        } else {
            let lc = (t >> 23 & 31) as usize;
            let sym = 257 + lc;
            let extra = u64::from(t >> 18 & 31);
            bits.put(
                u64::from(lit.code[sym]) | extra << lit.len[sym],
                u32::from(lit.len[sym]) + u32::from(LEN_EXTRA[lc]),
            );
            let dc = (t >> 13 & 31) as usize;
            let extra = u64::from(t & 0x1fff);
            bits.put(
                u64::from(dist.code[dc]) | extra << dist.len[dc],
                u32::from(dist.len[dc]) + u32::from(DIST_EXTRA[dc]),
            );
        }
    }
    bits.put(
        u64::from(lit.code[END_OF_BLOCK]),
        u32::from(lit.len[END_OF_BLOCK]),
    );
}

/// A dynamic block's code-length header (RFC 1951 §3.2.7): the two codes' lengths,
/// run-length coded, and the code for that coding.
struct TreeHeader {
    hlit: usize,
    hdist: usize,
    /// Run-length symbols (0..=18) with their extra bits' value.
    runs: [(u8, u8); LIT_CODES + DIST_CODES],
    n_runs: usize,
    cl: Code<CL_CODES>,
    cl_freq: [u32; CL_CODES],
    hclen: usize,
}

impl TreeHeader {
    fn new(lit_len: &[u8; LIT_CODES], dist_len: &[u8; DIST_CODES]) -> TreeHeader {
        let hlit = 257.max(LIT_CODES - lit_len.iter().rev().take_while(|&&l| l == 0).count());
        let hdist = 1.max(DIST_CODES - dist_len.iter().rev().take_while(|&&l| l == 0).count());
        let mut all = [0u8; LIT_CODES + DIST_CODES];
        all[..hlit].copy_from_slice(&lit_len[..hlit]);
        all[hlit..hlit + hdist].copy_from_slice(&dist_len[..hdist]);
        let all = &all[..hlit + hdist];

        let mut runs = [(0u8, 0u8); LIT_CODES + DIST_CODES];
        let mut n_runs = 0;
        let mut cl_freq = [0u32; CL_CODES];
        let mut push = |sym: u8, extra: u8| {
            runs[n_runs] = (sym, extra);
            n_runs += 1;
            cl_freq[usize::from(sym)] += 1;
        };
        let mut i = 0;
        while i < all.len() {
            let l = all[i];
            let run = all[i..].iter().take_while(|&&x| x == l).count();
            if l == 0 && run >= 3 {
                let take = run.min(138);
                if take <= 10 {
                    push(17, (take - 3) as u8);
                } else {
                    push(18, (take - 11) as u8);
                }
                i += take;
            } else if l != 0 && run >= 4 {
                push(l, 0);
                let take = (run - 1).min(6);
                push(16, (take - 3) as u8);
                i += 1 + take;
            } else {
                push(l, 0);
                i += 1;
            }
        }
        let cl = Code::from_freqs(&cl_freq, 7);
        let hclen = 4.max(
            CL_CODES
                - CL_ORDER
                    .iter()
                    .rev()
                    .take_while(|&&s| cl.len[s] == 0)
                    .count(),
        );
        TreeHeader {
            hlit,
            hdist,
            runs,
            n_runs,
            cl,
            cl_freq,
            hclen,
        }
    }

    fn bits(&self) -> u64 {
        let extra = 2 * u64::from(self.cl_freq[16])
            + 3 * u64::from(self.cl_freq[17])
            + 7 * u64::from(self.cl_freq[18]);
        14 + 3 * self.hclen as u64 + self.cl.cost(&self.cl_freq) + extra
    }

    fn write(&self, bits: &mut BitWriter<'_>) {
        bits.put((self.hlit - 257) as u64, 5);
        bits.put((self.hdist - 1) as u64, 5);
        bits.put((self.hclen - 4) as u64, 4);
        for &sym in &CL_ORDER[..self.hclen] {
            bits.put(u64::from(self.cl.len[sym]), 3);
        }
        for &(sym, extra) in &self.runs[..self.n_runs] {
            let s = usize::from(sym);
            bits.put(u64::from(self.cl.code[s]), u32::from(self.cl.len[s]));
            match sym {
                16 => bits.put(u64::from(extra), 2),
                17 => bits.put(u64::from(extra), 3),
                18 => bits.put(u64::from(extra), 7),
                _ => {}
            }
        }
    }
}

/// Bits onto a byte vector, least significant first (RFC 1951 §3.1.1).
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    n: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> BitWriter<'a> {
        BitWriter { out, acc: 0, n: 0 }
    }

    /// Appends the low `len` bits of `value` (`len` at most 32).
    #[inline]
    fn put(&mut self, value: u64, len: u32) {
        self.acc |= value << self.n;
        self.n += len;
        if self.n >= 32 {
            self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.n -= 32;
        }
    }

    /// Writes out the pending bits, padding the last byte with zeros.
    fn flush_to_byte(&mut self) {
        let bytes = self.n.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_le_bytes()[..bytes]);
        self.acc = 0;
        self.n = 0;
    }

    /// Whole bytes; only after [`flush_to_byte`](Self::flush_to_byte).
    fn bytes(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.n, 0);
        self.out.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests;
