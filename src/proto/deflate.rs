//! permessage-deflate (RFC 7692): negotiating it, and compressing and inflating
//! message payloads.
//!
//! The DEFLATE itself is `flate2` on the `zlib-rs` backend (a maintained, memory-safe
//! zlib port as fast as C zlib); this module only speaks the extension's rules: raw
//! DEFLATE, each message ending in a sync flush whose `00 00 ff ff` tail is not sent
//! (§7.2.1), and context takeover or not between messages (§7.1.1).
//!
//! Memory is the cost to watch: a compressor with a 32 KiB window holds about
//! 256 KiB of zlib state, an inflater about 40 KiB. Without context takeover neither
//! needs to live between messages, so the reactor shares them across connections.

pub mod encoder;

pub use encoder::MessageEncoder;

use super::extension::Offer;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::fmt;

/// The extension's registered name.
pub const NAME: &str = "permessage-deflate";

/// The tail a sync flush ends with, removed by the sender and restored by the
/// receiver (RFC 7692 §7.2.1, §7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server is willing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflatePolicy {
    /// Allow context takeover (better ratio, state kept per connection) when the client
    /// does not forbid it; otherwise ask for none in both directions.
    pub context_takeover: bool,
    /// The largest LZ77 window our compressor uses, 9 to 15.
    pub max_window_bits: u8,
}

/// The parameters agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// We reset our compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message, so we reset our inflater.
    pub client_no_context_takeover: bool,
    /// Our compressor's window, as agreed.
    pub server_max_window_bits: u8,
    /// Echoed in the response when the client offered the parameter without a value.
    client_max_window_bits_offered: bool,
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response_header(&self) -> String {
        let mut value = NAME.to_owned();
        if self.server_no_context_takeover {
            value.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            value.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        let _ = self.client_max_window_bits_offered;
        value
    }
}

/// Parses a window-bits value: 8 to 15, decimal, no leading zero (§7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    match value.parse::<u8>() {
        Ok(bits @ 8..=15) if !value.starts_with('0') => Some(bits),
        _ => None,
    }
}

/// Accepts the first permessage-deflate offer that is valid and that we can honour,
/// or none. Offers that break §7.1 (unknown or repeated parameters, bad values) are
/// declined, as the RFC asks, and the next offer is considered.
pub fn negotiate(offers: &[Offer], policy: DeflatePolicy) -> Option<DeflateParams> {
    offers
        .iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(NAME))
        .find_map(|offer| accept(offer, policy))
}

fn accept(offer: &Offer, policy: DeflatePolicy) -> Option<DeflateParams> {
    let mut server_no_takeover = false;
    let mut client_no_takeover = false;
    let mut server_bits: Option<u8> = None;
    let mut client_bits_offered = false;
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &offer.params {
        if seen.contains(&name.as_str()) {
            return None;
        }
        seen.push(name);
        match (name.as_str(), value.as_deref()) {
            ("server_no_context_takeover", None) => server_no_takeover = true,
            ("client_no_context_takeover", None) => client_no_takeover = true,
            ("server_max_window_bits", Some(value)) => server_bits = Some(window_bits(value)?),
            ("client_max_window_bits", None) => client_bits_offered = true,
            ("client_max_window_bits", Some(value)) => {
                window_bits(value)?;
                client_bits_offered = true;
            }
            _ => return None,
        }
    }
    let ours = policy.max_window_bits.clamp(9, 15);
    let server_max_window_bits = match server_bits {
        // zlib cannot produce raw DEFLATE with a 256-byte window (it silently uses
        // 512), so a client that insists on 8 gets a decline rather than a stream it
        // could not inflate.
        Some(8) => return None,
        Some(asked) => asked.min(ours),
        None => ours,
    };
    Some(DeflateParams {
        server_no_context_takeover: server_no_takeover || !policy.context_takeover,
        client_no_context_takeover: client_no_takeover || !policy.context_takeover,
        server_max_window_bits,
        client_max_window_bits_offered: client_bits_offered,
    })
}

/// Compresses whole messages.
pub struct Deflater {
    compress: Compress,
}

impl fmt::Debug for Deflater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    /// A compressor at `level` (0–9) with a `window_bits` window (9–15).
    pub fn new(level: u32, window_bits: u8) -> Deflater {
        Deflater {
            compress: Compress::new_with_window_bits(
                Compression::new(level.min(9)),
                false,
                window_bits.clamp(9, 15),
            ),
        }
    }

    /// Replaces `out` with the compressed form of `message`, ready to send with RSV1
    /// set. With `reset`, the next message starts from an empty window (no context
    /// takeover).
    pub fn compress(&mut self, message: &[u8], out: &mut Vec<u8>, reset: bool) {
        out.clear();
        let start_in = self.compress.total_in();
        loop {
            let consumed = (self.compress.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(message.len() / 2 + 64);
            }
            // Compressing into a Vec cannot fail: errors are only for misuse of the
            // stream, which this loop never does.
            let _ = self
                .compress
                .compress_vec(&message[consumed..], out, FlushCompress::Sync);
            // As with zlib's Z_SYNC_FLUSH: the flush is complete once all input is
            // taken and the call returned with output space to spare.
            let all_in = (self.compress.total_in() - start_in) as usize == message.len();
            if all_in && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        if out.is_empty() {
            // Nothing to flush (an empty message with the context kept): §7.2.3.6 asks
            // for a single 0x00, which with the receiver's tail is an empty stored block.
            out.push(0x00);
        }
        if reset {
            self.compress.reset();
        }
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Inflated, the message exceeds the size limit (a decompression bomb, or just big).
    TooBig,
    /// Not a valid DEFLATE stream.
    Corrupt,
    /// The output could not be stored: the memory it needs was refused.
    NoMemory,
}

/// Inflates messages as their compressed bytes arrive.
pub struct Inflater {
    decompress: Decompress,
    /// A final block (BFINAL) ended the DEFLATE stream inside the current message:
    /// any further payload is an error, wherever the reads split it.
    stream_ended: bool,
    /// Inflated bytes go here first, so no more than this much is produced past a
    /// size limit before the limit is noticed.
    chunk: Box<[u8; INFLATE_CHUNK]>,
}

const INFLATE_CHUNK: usize = 16 * 1024;

impl fmt::Debug for Inflater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Inflater {
        Inflater::new()
    }
}

impl Inflater {
    /// An inflater with the largest window, which reads streams of any window size.
    pub fn new() -> Inflater {
        Inflater {
            decompress: Decompress::new_with_window_bits(false, 15),
            stream_ended: false,
            chunk: Box::new([0; INFLATE_CHUNK]),
        }
    }

    /// Inflates `input` (the next compressed bytes of a message) onto `out`, failing
    /// as soon as `out` would grow past `limit` bytes.
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        self.inflate_into(input, &mut capped(out, limit))
    }

    /// Inflates `input`, handing the output to `emit` piece by piece (at most 16 KiB
    /// each), so the caller decides where it goes and how much it may grow: an error
    /// from `emit` stops inflating at once.
    pub fn inflate_into(
        &mut self,
        input: &[u8],
        emit: &mut dyn FnMut(&[u8]) -> Result<(), InflateError>,
    ) -> Result<(), InflateError> {
        self.inflate_part(input, emit, false)
    }

    /// `tail`: the input is our own sync-flush tail, which may run past the end of a
    /// stream the message closed with a final block.
    fn inflate_part(
        &mut self,
        mut input: &[u8],
        emit: &mut dyn FnMut(&[u8]) -> Result<(), InflateError>,
        tail: bool,
    ) -> Result<(), InflateError> {
        if self.stream_ended {
            return if input.is_empty() {
                Ok(())
            } else {
                Err(InflateError::Corrupt)
            };
        }
        loop {
            let (in_before, out_before) = (self.decompress.total_in(), self.decompress.total_out());
            let status = self
                .decompress
                .decompress(input, &mut self.chunk[..], FlushDecompress::None)
                .map_err(|_| InflateError::Corrupt)?;
            let consumed = (self.decompress.total_in() - in_before) as usize;
            let produced = (self.decompress.total_out() - out_before) as usize;
            if produced > 0 {
                emit(&self.chunk[..produced])?;
            }
            input = &input[consumed..];
            if status == Status::StreamEnd {
                // A final block (BFINAL) ends the DEFLATE stream; the message must end
                // with it, and the next one starts a new stream (see `finish`).
                self.stream_ended = true;
                if !input.is_empty() && !tail {
                    return Err(InflateError::Corrupt);
                }
                return Ok(());
            }
            // Done when the input is used up and the output did not fill the chunk
            // (a full chunk may mean more output is waiting).
            if input.is_empty() && produced < INFLATE_CHUNK {
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                return Err(InflateError::Corrupt);
            }
        }
    }

    /// Ends a message: restores the sync-flush tail, and resets for the next message
    /// when the sender does not keep its context.
    pub fn finish(
        &mut self,
        out: &mut Vec<u8>,
        limit: usize,
        reset: bool,
    ) -> Result<(), InflateError> {
        self.finish_into(&mut capped(out, limit), reset)
    }

    /// [`finish`](Self::finish), with the output handed to `emit`.
    pub fn finish_into(
        &mut self,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), InflateError>,
        reset: bool,
    ) -> Result<(), InflateError> {
        if self.stream_ended {
            // The stream already ended with a final block: there is no context to
            // keep and no tail to restore.
            self.reset();
            return Ok(());
        }
        self.inflate_part(&SYNC_TAIL, emit, true)?;
        if reset || self.stream_ended {
            self.reset();
        }
        Ok(())
    }

    /// Parts mode: one step of inflating, producing at most one chunk of output, so
    /// that a message can be handed on piece by piece with no buffer of its own.
    ///
    /// `prefix` (at most 4 bytes: the unfinished code point of a text message) is put
    /// before the output, which is then [`output`](Self::output)`(prefix.len() +
    /// produced)`. With `tail`, `input` is our own sync-flush tail (see
    /// [`step_tail`](Self::step_tail)).
    pub fn step(
        &mut self,
        input: &[u8],
        prefix: &[u8],
        tail: bool,
    ) -> Result<InflateStep, InflateError> {
        if self.stream_ended {
            return if input.is_empty() || tail {
                Ok(InflateStep {
                    consumed: input.len(),
                    produced: 0,
                    full: false,
                })
            } else {
                Err(InflateError::Corrupt)
            };
        }
        self.chunk[..prefix.len()].copy_from_slice(prefix);
        let room = &mut self.chunk[prefix.len()..];
        let space = room.len();
        let (in_before, out_before) = (self.decompress.total_in(), self.decompress.total_out());
        let status = self
            .decompress
            .decompress(input, room, FlushDecompress::None)
            .map_err(|_| InflateError::Corrupt)?;
        let mut consumed = (self.decompress.total_in() - in_before) as usize;
        let produced = (self.decompress.total_out() - out_before) as usize;
        if status == Status::StreamEnd {
            self.stream_ended = true;
            if consumed < input.len() {
                if !tail {
                    return Err(InflateError::Corrupt);
                }
                consumed = input.len();
            }
        } else if consumed == 0 && produced == 0 && !input.is_empty() {
            return Err(InflateError::Corrupt);
        }
        Ok(InflateStep {
            consumed,
            produced,
            full: produced == space,
        })
    }

    /// Parts mode: one step of ending a message, `fed` bytes of the sync-flush tail
    /// fed so far. Done when the whole tail is fed and the step's output was not full;
    /// then call [`end_message`](Self::end_message).
    pub fn step_tail(&mut self, fed: usize, prefix: &[u8]) -> Result<InflateStep, InflateError> {
        self.step(&SYNC_TAIL[fed.min(SYNC_TAIL.len())..], prefix, true)
    }

    /// The length of the sync-flush tail that [`step_tail`](Self::step_tail) feeds.
    pub const TAIL_LEN: usize = SYNC_TAIL.len();

    /// Parts mode: the message has ended; resets for the next one when the sender
    /// does not keep its context (or its stream ended with a final block).
    pub fn end_message(&mut self, reset: bool) {
        if reset || self.stream_ended {
            self.reset();
        }
    }

    /// The first `len` bytes of the output chunk, as the last [`step`](Self::step)
    /// left it.
    pub fn output(&self, len: usize) -> &[u8] {
        &self.chunk[..len]
    }

    /// Forgets any context, e.g. before lending the inflater to another connection.
    pub fn reset(&mut self) {
        self.stream_ended = false;
        self.decompress.reset(false);
    }
}

/// What one [`Inflater::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflateStep {
    /// Input bytes taken.
    pub consumed: usize,
    /// Bytes of output produced (after the prefix).
    pub produced: usize,
    /// The output chunk is full: more output may be waiting, even with no more input.
    pub full: bool,
}

/// An output sink that appends to `out` and fails once it would pass `limit` bytes.
fn capped(out: &mut Vec<u8>, limit: usize) -> impl FnMut(&[u8]) -> Result<(), InflateError> + '_ {
    move |piece| {
        if out.len() + piece.len() > limit {
            return Err(InflateError::TooBig);
        }
        out.extend_from_slice(piece);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::extension::parse_offers;

    const NO_TAKEOVER: DeflatePolicy = DeflatePolicy {
        context_takeover: false,
        max_window_bits: 15,
    };
    const TAKEOVER: DeflatePolicy = DeflatePolicy {
        context_takeover: true,
        max_window_bits: 15,
    };

    fn negotiate_header(header: &str, policy: DeflatePolicy) -> Option<String> {
        negotiate(&parse_offers([header]).unwrap(), policy).map(|p| p.response_header())
    }

    #[test]
    fn browser_offer_without_takeover_policy() {
        assert_eq!(
            negotiate_header("permessage-deflate; client_max_window_bits", NO_TAKEOVER).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert_eq!(
            negotiate_header("permessage-deflate; client_max_window_bits", TAKEOVER).as_deref(),
            Some("permessage-deflate")
        );
    }

    #[test]
    fn client_requests_are_honoured() {
        assert_eq!(
            negotiate_header(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=9",
                TAKEOVER
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
        );
        let small = DeflatePolicy {
            context_takeover: true,
            max_window_bits: 10,
        };
        assert_eq!(
            negotiate_header("permessage-deflate; server_max_window_bits=12", small).as_deref(),
            Some("permessage-deflate; server_max_window_bits=10")
        );
    }

    #[test]
    fn invalid_offers_are_declined_and_the_next_is_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=8",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(negotiate_header(bad, TAKEOVER), None, "{bad}");
            let with_fallback = format!("{bad}, permessage-deflate");
            assert_eq!(
                negotiate_header(&with_fallback, TAKEOVER).as_deref(),
                Some("permessage-deflate"),
                "{with_fallback}"
            );
        }
    }

    #[test]
    fn rfc_7692_7_2_3_1_hello_compressed() {
        // §7.2.3.1: "Hello" compressed, tail removed, is f2 48 cd c9 c9 07 00.
        let mut inflater = Inflater::new();
        let mut out = Vec::new();
        inflater
            .inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out, 100)
            .unwrap();
        inflater.finish(&mut out, 100, true).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn round_trip_with_and_without_takeover() {
        for reset in [true, false] {
            let mut deflater = Deflater::new(6, 15);
            let mut inflater = Inflater::new();
            let mut wire = Vec::new();
            for n in 0..5 {
                let message = format!("{{\"seq\": {n}, \"payload\": \"{}\"}}", "abc".repeat(100));
                deflater.compress(message.as_bytes(), &mut wire, reset);
                assert!(!wire.ends_with(&SYNC_TAIL));
                assert!(
                    wire.len() < message.len() / 4,
                    "{} of {}",
                    wire.len(),
                    message.len()
                );
                let mut out = Vec::new();
                // Fed in small pieces, as frames and reads may split it.
                for piece in wire.chunks(7) {
                    inflater.inflate(piece, &mut out, 1 << 20).unwrap();
                }
                inflater.finish(&mut out, 1 << 20, reset).unwrap();
                assert_eq!(out, message.as_bytes());
            }
        }
    }

    #[test]
    fn an_empty_message_is_one_zero_byte_even_with_context_kept() {
        // Found by fuzzing: with context takeover zlib has nothing to flush for an
        // empty message, and an empty payload desynchronises the peer (§7.2.3.6).
        for reset in [false, true] {
            let mut deflater = Deflater::new(6, 15);
            let mut inflater = Inflater::new();
            for message in [&b""[..], b"", b"after two empty ones"] {
                let mut wire = Vec::new();
                deflater.compress(message, &mut wire, reset);
                assert!(!wire.is_empty());
                let mut out = Vec::new();
                inflater.inflate(&wire, &mut out, 1 << 20).unwrap();
                inflater.finish(&mut out, 1 << 20, reset).unwrap();
                assert_eq!(out, message);
            }
        }
    }

    #[test]
    fn large_incompressible_message_round_trips() {
        let mut state = 1u64;
        let message: Vec<u8> = (0..300_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        let mut wire = Vec::new();
        Deflater::new(6, 15).compress(&message, &mut wire, true);
        let mut out = Vec::new();
        let mut inflater = Inflater::new();
        inflater.inflate(&wire, &mut out, 1 << 20).unwrap();
        inflater.finish(&mut out, 1 << 20, true).unwrap();
        assert_eq!(out, message);
    }

    #[test]
    fn a_bomb_is_stopped_at_the_limit() {
        // 10 MB of zeros compress to about 10 KB.
        let mut wire = Vec::new();
        Deflater::new(9, 15).compress(&vec![0u8; 10_000_000], &mut wire, true);
        assert!(wire.len() < 20_000);
        let mut out = Vec::new();
        let result = Inflater::new().inflate(&wire, &mut out, 1_000_000);
        assert_eq!(result, Err(InflateError::TooBig));
        assert!(out.len() <= 1_000_000);
        assert!(out.capacity() < 2_100_000, "grew to {}", out.capacity());
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut out = Vec::new();
        let result = Inflater::new().inflate(&[0xff; 64], &mut out, 1 << 20);
        assert_eq!(result, Err(InflateError::Corrupt));
    }
}
