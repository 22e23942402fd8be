//! Blocks: the tokens the matcher chose (literals and length/distance pairs, with
//! their symbol counts) and how they become bits — code lengths over the symbols used,
//! canonical codes, and whichever of a dynamic, fixed or stored block is shortest.

/// A token with this bit is a match (see [`Block`]); otherwise a literal.
const MATCH_FLAG: u32 = 1 << 31;

/// A block's tokens and statistics, gathered as the tokens are chosen.
pub(super) struct Block {
    /// A literal byte, or [`MATCH_FLAG`] with the length and distance codes and their
    /// extra bits' values, so writing needs no table lookups.
    pub(super) tokens: Vec<u32>,
    pub(super) lit_freq: [u32; LIT_CODES],
    pub(super) dist_freq: [u32; DIST_CODES],
    /// Extra bits the matches send.
    pub(super) extra_bits: u64,
}

impl Block {
    #[inline]
    pub(super) fn literal(&mut self, byte: u8) {
        self.tokens.push(u32::from(byte));
        self.lit_freq[usize::from(byte)] += 1;
    }

    #[inline]
    pub(super) fn matched(&mut self, len: usize, dist: usize) {
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

    pub(super) fn clear(&mut self) {
        self.tokens.clear();
        self.lit_freq = [0; LIT_CODES];
        self.dist_freq = [0; DIST_CODES];
        self.extra_bits = 0;
    }
}

/// Literal/length symbols, with the two the fixed code defines but no block may use
/// (they take part in the fixed code's canonical numbering).
pub(super) const LIT_CODES: usize = 288;
pub(super) const DIST_CODES: usize = 30;
pub(super) const CL_CODES: usize = 19;
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
pub(super) fn code_lengths<const N: usize>(
    freqs: &[u32; N],
    limit: u8,
    len: &mut [u8; N],
) -> [u16; 16] {
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
pub(super) fn write_block(block: &mut Block, raw: &[u8], bits: &mut BitWriter<'_>) {
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
pub(super) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    n: u32,
}

impl<'a> BitWriter<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>) -> BitWriter<'a> {
        BitWriter { out, acc: 0, n: 0 }
    }

    /// Appends the low `len` bits of `value` (`len` at most 32).
    #[inline]
    pub(super) fn put(&mut self, value: u64, len: u32) {
        self.acc |= value << self.n;
        self.n += len;
        if self.n >= 32 {
            self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.n -= 32;
        }
    }

    /// Writes out the pending bits, padding the last byte with zeros.
    pub(super) fn flush_to_byte(&mut self) {
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
