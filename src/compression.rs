//! The loop's permessage-deflate resources, shared by its connections.
//!
//! Without context takeover (the default), a compressor holds nothing between
//! messages, so one per window size serves every connection, and inflaters are lent
//! to a connection for the reads that need one and taken back after. Memory for
//! compression then follows the messages in flight, not the connections open: an idle
//! connection holds none. With context takeover, each connection keeps its own.
//!
//! Messages of up to [`SMALL_MESSAGE`] bytes sent without context takeover go through
//! our own [`MessageEncoder`] rather than zlib: it needs no reset between messages
//! (zlib-rs zeroes a 128 KiB hash table on every reset, and builds its Huffman trees
//! for long streams), which made a 1 KiB JSON message about half as costly to compress
//! for the same size on the wire. Longer messages, and every message with context
//! takeover, stay with zlib.

use crate::conn::ConnDeflate;
use crate::proto::deflate::{Deflater, Inflater, MessageEncoder};
use crate::proto::frame::{FrameHeader, Opcode};
use crate::proto::Receiver;

/// Spare inflaters kept for lending; more are dropped when returned.
const MAX_SPARE_INFLATERS: usize = 16;

/// Messages up to this size, compressed without context takeover, use the
/// [`MessageEncoder`]: one segment of it, so its matches reach as far as zlib's. Above
/// it the encoder would lose the matches across its segments (5% more bytes on 64 KiB
/// of JSON) for little gain: zlib's reset is small next to such a message.
const SMALL_MESSAGE: usize = crate::proto::deflate::encoder::SEGMENT;

/// The compressed-output buffer is released when a message made it larger than this.
const RETAINED_OUTPUT_CAPACITY: usize = 256 * 1024;

pub(crate) struct Compression {
    level: u32,
    /// Shared compressors, by window bits 9..=15, reset after every message.
    shared: [Option<Box<Deflater>>; 7],
    /// The encoder for small messages without context takeover, any window size;
    /// made on first use (about 160 KiB, where a zlib compressor holds 256 KiB).
    small: Option<Box<MessageEncoder>>,
    /// Boxed: receivers hold them as `Option<Box<Inflater>>` (small when empty), and
    /// lending moves the box, not the inflater.
    #[allow(clippy::vec_box)]
    spare_inflaters: Vec<Box<Inflater>>,
    /// The last compressed message.
    out: Vec<u8>,
    /// Inflaters held by receivers now (lent from the pool or made for them).
    lent: usize,
}

impl Compression {
    pub fn new(level: u32) -> Compression {
        Compression {
            level,
            shared: Default::default(),
            small: None,
            spare_inflaters: Vec::new(),
            out: Vec::new(),
            lent: 0,
        }
    }

    /// Compresses one message for a connection; the result is valid until the next call.
    pub fn compress(&mut self, conn: &mut ConnDeflate, message: &[u8]) -> &[u8] {
        let bits = conn.params.server_max_window_bits.clamp(9, 15);
        let reset = conn.params.server_no_context_takeover;
        if reset && self.small_suits(message) {
            return self.compress_small(bits, message);
        }
        let deflater = if reset {
            shared_deflater(&mut self.shared, self.level, bits)
        } else {
            let level = self.level;
            conn.deflater
                .get_or_insert_with(|| Box::new(Deflater::new(level, bits)))
        };
        compress_into(deflater, message, reset, &mut self.out)
    }

    /// A whole compressed frame (RSV1 set) for sending to many connections that all
    /// negotiated no server context takeover and a `bits` window.
    pub fn encode_shared(&mut self, bits: u8, opcode: Opcode, message: &[u8]) -> Vec<u8> {
        let bits = bits.clamp(9, 15);
        let payload = if self.small_suits(message) {
            self.compress_small(bits, message)
        } else {
            let deflater = shared_deflater(&mut self.shared, self.level, bits);
            compress_into(deflater, message, true, &mut self.out)
        };
        FrameHeader::server_compressed(opcode, payload.len()).frame_with(payload)
    }

    /// Whether a message without context takeover goes to the [`MessageEncoder`]:
    /// small enough, and a level that compresses at all (0 asks zlib to store).
    fn small_suits(&self, message: &[u8]) -> bool {
        message.len() <= SMALL_MESSAGE && self.level > 0
    }

    fn compress_small(&mut self, bits: u8, message: &[u8]) -> &[u8] {
        let level = self.level;
        let encoder = self
            .small
            .get_or_insert_with(|| Box::new(MessageEncoder::new(level)));
        if self.out.capacity() > RETAINED_OUTPUT_CAPACITY {
            self.out = Vec::new();
        }
        encoder.compress(message, bits, &mut self.out);
        &self.out
    }

    /// Inflaters held by receivers now.
    pub fn lent(&self) -> usize {
        self.lent
    }

    /// Lends a spare inflater to a receiver that may need one for this read.
    pub fn lend_inflater(&mut self, rx: &mut Receiver) {
        if rx.wants_inflater() {
            if let Some(inflater) = self.spare_inflaters.pop() {
                rx.lend_inflater(inflater);
            }
        }
    }

    /// Takes back an inflater the receiver will not need before its next message, and
    /// keeps the count of held inflaters: `had` says whether the receiver held one
    /// before the reads this follows (it may have made one meanwhile).
    pub fn reclaim_inflater(&mut self, rx: &mut Receiver, had: bool) {
        if let Some(inflater) = rx.reclaim_inflater() {
            self.give_back(inflater);
        }
        self.recount(had, rx.holds_inflater());
    }

    /// Takes everything back from a receiver whose connection is failed or gone.
    pub fn release(&mut self, rx: &mut Receiver) {
        let had = rx.holds_inflater();
        if let Some(inflater) = rx.release() {
            self.give_back(inflater);
        }
        self.recount(had, false);
    }

    fn recount(&mut self, had: bool, has: bool) {
        match (had, has) {
            (false, true) => self.lent += 1,
            (true, false) => self.lent -= 1,
            _ => {}
        }
    }

    fn give_back(&mut self, inflater: Box<Inflater>) {
        if self.spare_inflaters.len() < MAX_SPARE_INFLATERS {
            self.spare_inflaters.push(inflater);
        }
    }
}

/// The loop's compressor for a `bits` window (9..=15), made on first use.
fn shared_deflater(shared: &mut [Option<Box<Deflater>>; 7], level: u32, bits: u8) -> &mut Deflater {
    shared[usize::from(bits - 9)].get_or_insert_with(|| Box::new(Deflater::new(level, bits)))
}

/// Compresses into the loop's output buffer, first releasing it if the last message
/// made it large.
fn compress_into<'a>(
    deflater: &mut Deflater,
    message: &[u8],
    reset: bool,
    out: &'a mut Vec<u8>,
) -> &'a [u8] {
    if out.capacity() > RETAINED_OUTPUT_CAPACITY {
        *out = Vec::new();
    }
    deflater.compress(message, out, reset);
    out
}
