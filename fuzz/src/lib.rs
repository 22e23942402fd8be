//! Helpers shared by the fuzz targets: how a fuzz input is cut into reads, the reactor's
//! read loop around [`Receiver::read`] with its documented invariants asserted (events
//! come out as the crate's [`OwnedEvent`]s), and an independent client frame encoder.
//!
//! Nothing here is used by the library itself; it only builds inside `fuzz/`.

use std::sync::OnceLock;
use wsreactor::proto::deflate::{Deflater, Inflater};
use wsreactor::proto::receiver::Progress;
use wsreactor::proto::receiver::{MemoryGrant, INFLATER_BYTES};
use wsreactor::proto::{Event, Message, OwnedEvent, ProtocolError, Receiver};

/// The largest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Read sizes, taken from the front of a fuzz input, that cut the rest into pieces.
///
/// Wire format: one byte `n`; `k = n % 16` size bytes follow. `k == 0` means "one piece,
/// the whole rest". Otherwise the sizes are used in turn, cycling, until the rest is used
/// up. A size byte `s` means `s + 1` bytes for `s < 0xF0` and `(s - 0xEF) * 256` bytes
/// above that (so pieces of 1..=240 bytes or 256..=4096 bytes). With `allow_empty`
/// the size is `s` instead of `s + 1` in the low range, so empty pieces are possible
/// (when all sizes are empty the rest goes in one piece).
#[derive(Debug, Clone)]
pub struct Schedule {
    sizes: Vec<usize>,
}

impl Schedule {
    /// Splits `data` into the schedule and the bytes it cuts; `None` if `data` is too
    /// short to hold the schedule.
    pub fn take(data: &[u8], allow_empty: bool) -> Option<(Schedule, &[u8])> {
        let (&n, rest) = data.split_first()?;
        let k = usize::from(n % 16);
        if rest.len() < k {
            return None;
        }
        let (size_bytes, rest) = rest.split_at(k);
        let mut sizes: Vec<usize> = size_bytes
            .iter()
            .map(|&s| match s {
                0..=0xEF if allow_empty => usize::from(s),
                0..=0xEF => usize::from(s) + 1,
                _ => usize::from(s - 0xEF) * 256,
            })
            .collect();
        if sizes.iter().all(|&s| s == 0) {
            sizes.clear();
        }
        Some((Schedule { sizes }, rest))
    }

    /// One piece: the whole input.
    pub fn whole() -> Schedule {
        Schedule { sizes: Vec::new() }
    }

    /// The pieces of `data`, in order; they concatenate to `data`.
    pub fn pieces<'d>(&self, data: &'d [u8]) -> Vec<&'d [u8]> {
        if self.sizes.is_empty() {
            return if data.is_empty() { vec![] } else { vec![data] };
        }
        let mut out = Vec::new();
        let mut rest = data;
        let mut sizes = self.sizes.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().expect("non-empty cycle")).min(rest.len());
            let (piece, tail) = rest.split_at(size);
            out.push(piece);
            rest = tail;
        }
        out
    }
}

/// Cuts `data` at the given offsets (taken modulo `len + 1`, sorted, deduplicated).
pub fn cut_at(data: &[u8], cuts: &[u32]) -> Vec<Vec<u8>> {
    let mut bounds: Vec<usize> = cuts
        .iter()
        .map(|&c| c as usize % (data.len() + 1))
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds.push(data.len());
    let mut out = Vec::new();
    let mut start = 0;
    for end in bounds {
        if end > start {
            out.push(data[start..end].to_vec());
            start = end;
        }
    }
    out
}

/// What a stream of reads produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fed {
    /// Every event, in order, up to the first error.
    pub events: Vec<OwnedEvent>,
    /// The first error; the connection would be failed there.
    pub error: Option<ProtocolError>,
    /// `Receiver::is_mid_message` after the last read (meaningless after an error).
    pub mid_message: bool,
}

/// Checks what the receiver promises about one event.
pub fn check_event(event: &Event<'_>, max_message_size: u64) {
    match event {
        Event::Message(message) => {
            assert!(
                message.len() as u64 <= max_message_size,
                "message of {} bytes over max_message_size {max_message_size}",
                message.len()
            );
            if let Message::Text(text) = message {
                assert!(std::str::from_utf8(text.as_bytes()).is_ok());
            }
        }
        Event::Part(part) => {
            assert!(
                part.len() as u64 <= max_message_size,
                "part of {} bytes over the limit {max_message_size}",
                part.len()
            );
            assert!(part.last || !part.is_empty(), "an empty part that is not last");
        }
        Event::Ping(payload) | Event::Pong(payload) => {
            assert!(
                payload.len() <= MAX_CONTROL_PAYLOAD,
                "control payload of {} bytes",
                payload.len()
            );
        }
        Event::Close(None) => {}
        Event::Close(Some(frame)) => {
            assert!(
                frame.code.is_sendable(),
                "close code {} delivered",
                frame.code.0
            );
            assert!(
                frame.reason.len() <= MAX_CONTROL_PAYLOAD - 2,
                "close reason of {} bytes",
                frame.reason.len()
            );
        }
    }
}

/// The reactor's spare inflaters (`Compression::spare_inflaters`): lent to a receiver
/// for each read that may need one, taken back after it, shared by all connections.
pub type InflaterPool = Vec<Box<Inflater>>;

/// `MAX_SPARE_INFLATERS` in src/compression.rs.
const MAX_SPARE_INFLATERS: usize = 16;

/// Feeds `pieces` to `rx` the way the reactor does: each piece lands in a read buffer,
/// an inflater is lent from `pool` if the receiver wants one, `read` is called on
/// `&mut buf[pos..]` until the piece is used up (advancing by `consumed`, stopping at
/// the first error), and the inflater is reclaimed into the pool. Asserts the
/// invariants of [`Receiver::read`] on every call.
pub fn feed<'d>(
    rx: &mut Receiver,
    pieces: impl IntoIterator<Item = &'d [u8]>,
    max_message_size: u64,
    pool: &mut InflaterPool,
) -> Fed {
    feed_within(rx, pieces, max_message_size, pool, usize::MAX)
}

/// Grants up to `room` bytes in all, as the reactor's incoming budget would.
struct Allowance {
    room: usize,
    granted: usize,
}

impl MemoryGrant for Allowance {
    fn grant(&mut self, _held: usize, bytes: usize) -> bool {
        if bytes > self.room - self.granted {
            return false;
        }
        self.granted += bytes;
        true
    }
}

/// [`feed`] with the receiver held to `room` bytes of memory in all (asked through
/// [`MemoryGrant`]); also asserts it never holds more than it was granted, besides a
/// lent inflater.
pub fn feed_within<'d>(
    rx: &mut Receiver,
    pieces: impl IntoIterator<Item = &'d [u8]>,
    max_message_size: u64,
    pool: &mut InflaterPool,
    room: usize,
) -> Fed {
    let mut memory = Allowance { room, granted: 0 };
    let memory_check = |rx: &Receiver, granted: usize| {
        let lent = if rx.holds_inflater() {
            INFLATER_BYTES
        } else {
            0
        };
        assert!(
            rx.held() <= granted + lent,
            "holds {} bytes, granted {granted}",
            rx.held()
        );
    };
    // Receiver::new caps the limit at 4 GiB - 1.
    let max_message_size = max_message_size.min(u64::from(u32::MAX));
    let mut events = Vec::new();
    let mut error = None;
    let mut read_buf = Vec::new();
    for piece in pieces {
        read_buf.clear();
        read_buf.extend_from_slice(piece);
        if rx.wants_inflater() {
            if let Some(inflater) = pool.pop() {
                rx.lend_inflater(inflater);
            }
        }
        let input = &mut read_buf[..];
        let mut pos = 0;
        while pos < input.len() {
            let len = input.len() - pos;
            let result = rx.read_within(&mut input[pos..], &mut memory);
            match result {
                Ok(Progress { consumed, event }) => {
                    assert!(consumed <= len, "consumed {consumed} of {len} bytes");
                    // The reactor loops `while pos < input.len()`: no progress would hang it.
                    assert!(consumed > 0, "no progress on {len} bytes (event {event:?})");
                    match event {
                        None => assert_eq!(consumed, len, "no event, yet not all input consumed"),
                        Some(event) => {
                            check_event(&event, max_message_size);
                            events.push(OwnedEvent::from(event));
                        }
                    }
                    pos += consumed;
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            memory_check(rx, memory.granted);
        }
        // As in the reactor, also after an error (the connection is failed, the
        // inflater goes back to the pool if the receiver lets it go).
        if let Some(inflater) = rx.reclaim_inflater() {
            if pool.len() < MAX_SPARE_INFLATERS {
                pool.push(inflater);
            }
        }
        if error.is_some() {
            break;
        }
    }
    Fed {
        events,
        error,
        mid_message: rx.is_mid_message(),
    }
}

const CANARY_TEXT: &str = "canary, canary, canary: a well-formed compressed message";

/// A compressed text frame as a browser sends it (no context takeover).
fn canary_frame() -> &'static [u8] {
    static FRAME: OnceLock<Vec<u8>> = OnceLock::new();
    FRAME.get_or_init(|| {
        let mut wire = Vec::new();
        Deflater::new(6, 15).compress(CANARY_TEXT.as_bytes(), &mut wire, true);
        let mut frame = Vec::new();
        client_frame(&mut frame, true, RSV1, 0x1, &wire, [0xA5, 0x5A, 0x0F, 0xF0]);
        frame
    })
}

/// Every inflater in the pool is lent to a new connection that sends one valid
/// compressed message: it must come out intact. An inflater handed back with state
/// from its last connection would break (or, worse, inject into) another client's
/// messages.
pub fn check_pool_is_clean(pool: &mut InflaterPool) {
    for inflater in pool.drain(..) {
        let mut rx = Receiver::new(1 << 20);
        rx.enable_deflate(true);
        rx.lend_inflater(inflater);
        let fed = feed(&mut rx, [canary_frame()], 1 << 20, &mut Vec::new());
        assert_eq!(
            (fed.events, fed.error),
            (vec![OwnedEvent::Text(CANARY_TEXT.to_owned())], None),
            "an inflater returned to the pool was not clean: \
             the next connection's valid compressed message failed"
        );
    }
}

/// RSV1: "compressed" under permessage-deflate (RFC 7692 §6).
pub const RSV1: u8 = 0b100;

/// Encodes one masked client frame (RFC 6455 §5.2) with the minimal length encoding;
/// `rsv` holds RSV1..RSV3 as the low three bits.
///
/// Written from the RFC rather than with `FrameHeader::encode`/`mask::apply`, so that a
/// bug there cannot hide one in the receiver.
pub fn client_frame(
    out: &mut Vec<u8>,
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    key: [u8; 4],
) {
    out.push((u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode & 0x0F));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
