//! The incoming half of a connection: turns a stream of client frame bytes into
//! [`Event`]s, without I/O.
//!
//! The receiver is *streaming*: it takes whatever bytes arrived, however they are split,
//! and keeps only what it must between calls — at most 13 bytes of an unfinished header,
//! the position inside the current frame, and the payload of a message that is not
//! complete yet. It never buffers raw frame bytes, so a peer's declared length costs
//! nothing until the bytes actually arrive, and invalid UTF-8 is caught as soon as it
//! arrives (Autobahn 6.4.x "fail fast"), even in the middle of one frame.
//!
//! Zero copy: payloads are unmasked in place in the caller's buffer. A message that is
//! a single frame wholly inside that buffer is handed out as a slice of it; only
//! fragmented messages, and frames that straddle reads, are copied, into the
//! per-connection assembly buffer.

use super::close::parse_close_payload;
use super::deflate::{InflateError, Inflater};
use super::error::ProtocolError;
use super::frame::{FrameHeader, Opcode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::mask;
use super::message::{Event, Message};
use super::utf8::Utf8Validator;

/// Assembly buffers larger than this are released after their message is delivered,
/// so that one large message does not pin memory on a connection that goes quiet
/// (unless [`Receiver::keep_buffers`] says the caller will shed them itself).
const RETAINED_BUFFER_CAPACITY: usize = 64 * 1024;

/// What an inflater costs while a receiver holds one (zlib state with its 32 KiB
/// window, and our 16 KiB output chunk), counted in [`Receiver::held`].
pub const INFLATER_BYTES: usize = 56 * 1024;

/// Asked before a receiver holds more of a peer's bytes, so that the caller can bound
/// the memory of every connection together (the reactor's incoming budget). `grant`
/// returns whether `bytes` more may be held by a receiver that holds `held` bytes now;
/// a refusal fails the read with [`ProtocolError::OverBudget`].
pub trait MemoryGrant {
    /// May the receiver, holding `held` bytes, hold `bytes` more?
    fn grant(&mut self, held: usize, bytes: usize) -> bool;
}

/// Grants everything: for a receiver used on its own, bounded only by its message
/// size limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl MemoryGrant for Unlimited {
    fn grant(&mut self, _held: usize, _bytes: usize) -> bool {
        true
    }
}

impl<F: FnMut(usize, usize) -> bool> MemoryGrant for F {
    fn grant(&mut self, held: usize, bytes: usize) -> bool {
        self(held, bytes)
    }
}

/// The kind of data message being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// The frame whose payload is being received.
#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    opcode: Opcode,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes not received yet.
    remaining: u64,
    /// Some of the payload was received already (so it cannot be handed out whole).
    started: bool,
    /// Payload bytes received so far, modulo 4: the mask phase for the next byte.
    mask_phase: u8,
}

/// Streaming frame decoder and message assembler for a server-side connection.
#[derive(Debug, Default)]
pub struct Receiver {
    /// 32 bits (4 GiB) is plenty for one WebSocket message, and keeps every
    /// connection 8 bytes smaller.
    max_message_size: u32,
    /// The start of a header that has not fully arrived.
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    frame: Option<FrameInProgress>,
    /// The data message in progress (between its first frame and its FIN frame).
    message: Option<DataKind>,
    /// Payload of the message in progress, unmasked.
    assembled: Vec<u8>,
    /// Payload of a control frame that straddles reads (at most 125 bytes).
    /// (Boxed: rare, and every connection would pay 24 bytes for an inline `Vec`.)
    #[allow(clippy::box_collection)]
    control: Option<Box<Vec<u8>>>,
    utf8: Utf8Validator,
    /// The last event borrowed `assembled` or `control`; clear them on the next call.
    delivered_from_buffers: bool,
    /// permessage-deflate was negotiated (RSV1 marks compressed messages).
    deflate: Option<InflateMode>,
    /// The message in progress is compressed: its payload is inflated into `assembled`.
    compressed: bool,
    /// Inflates compressed messages; lent by the reactor, or made on first use.
    inflater: Option<Box<Inflater>>,
    /// Payload bytes of data frames received, wrapping: lets the caller see whether
    /// a half-received message is still growing.
    data_received: u32,
    /// Keep the assembly buffer, whatever its size, for the next message.
    keep_buffers: bool,
}

/// How inflating works on this connection.
#[derive(Debug, Clone, Copy)]
struct InflateMode {
    /// The client resets its compressor after each message (`client_no_context_takeover`),
    /// so the inflater can be reset and lent to another connection between messages.
    reset_each_message: bool,
}

/// What one call to [`Receiver::read`] did.
#[derive(Debug)]
pub struct Progress<'a> {
    /// Bytes of the input the receiver is done with. When `event` is `None` this is the
    /// whole input: everything that arrived is absorbed into the receiver's state.
    pub consumed: usize,
    /// An event completed by those bytes, if any.
    pub event: Option<Event<'a>>,
}

impl Receiver {
    /// A receiver that rejects messages longer than `max_message_size` bytes (at most
    /// 4 GiB − 1; larger limits are capped there).
    pub fn new(max_message_size: u64) -> Receiver {
        Receiver {
            max_message_size: u32::try_from(max_message_size).unwrap_or(u32::MAX),
            ..Receiver::default()
        }
    }

    /// Keeps the assembly buffer for the next message whatever its size, instead of
    /// releasing one over 64 KiB: for a caller that counts what receivers hold and
    /// sheds their buffers itself when memory is short or the connection goes quiet
    /// ([`shed_buffers`](Self::shed_buffers)). A stream of large messages then needs
    /// no allocation, and no copying to grow the buffer, per message.
    pub fn keep_buffers(&mut self, keep: bool) {
        self.keep_buffers = keep;
    }

    /// Accepts compressed messages (RSV1) as negotiated by permessage-deflate.
    pub fn enable_deflate(&mut self, client_no_context_takeover: bool) {
        self.deflate = Some(InflateMode {
            reset_each_message: client_no_context_takeover,
        });
    }

    /// Whether an inflater lent now would be used (deflate on, none held).
    pub fn wants_inflater(&self) -> bool {
        self.deflate.is_some() && self.inflater.is_none()
    }

    /// Lends an inflater (reset, with no context) for the messages to come.
    pub fn lend_inflater(&mut self, inflater: Box<Inflater>) {
        if self.wants_inflater() {
            self.inflater = Some(inflater);
        }
    }

    /// Gives the inflater back if nothing needs it until the next message: no
    /// compressed message is half received and the client keeps no context.
    pub fn reclaim_inflater(&mut self) -> Option<Box<Inflater>> {
        match self.deflate {
            Some(InflateMode {
                reset_each_message: true,
            }) if !self.compressed => {
                // Whatever happened to it (a message that failed half inflated), it
                // goes back clean: the next connection must not inherit its state.
                let mut inflater = self.inflater.take()?;
                inflater.reset();
                Some(inflater)
            }
            _ => None,
        }
    }

    /// Releases the buffers kept from earlier messages (to be reused by the next ones),
    /// unless a message is half received: for a connection that has gone quiet.
    pub fn shed_buffers(&mut self) {
        if !self.is_mid_message() {
            self.assembled = Vec::new();
            self.control = None;
            self.delivered_from_buffers = false;
        }
    }

    /// Bytes of memory this receiver holds: its assembly and control buffers and the
    /// inflater it keeps, if any (counted as [`INFLATER_BYTES`]).
    pub fn held(&self) -> usize {
        self.assembled.capacity()
            + self.control.as_ref().map_or(0, |c| c.capacity())
            + if self.inflater.is_some() {
                INFLATER_BYTES
            } else {
                0
            }
    }

    /// Whether an inflater is held (lent, or made).
    pub fn holds_inflater(&self) -> bool {
        self.inflater.is_some()
    }

    /// Payload bytes of data frames received so far, wrapping at 2^32: a value that
    /// did not change between two reads means the message in progress did not grow.
    pub fn data_received(&self) -> u32 {
        self.data_received
    }

    /// Gives up everything held, in the middle of a message or not: the connection
    /// is being failed and will parse nothing more. Returns the inflater, reset, for
    /// another connection to use.
    pub fn release(&mut self) -> Option<Box<Inflater>> {
        self.assembled = Vec::new();
        self.control = None;
        self.message = None;
        self.frame = None;
        self.compressed = false;
        self.delivered_from_buffers = false;
        let mut inflater = self.inflater.take()?;
        inflater.reset();
        Some(inflater)
    }

    /// Whether a message, frame or header is partly received: at a clean boundary the
    /// receiver holds no peer data at all.
    pub fn is_mid_message(&self) -> bool {
        self.header_len > 0 || self.frame.is_some() || self.message.is_some()
    }

    /// Reads frames from `input`, unmasking payloads in place, until one event completes
    /// or the input runs out.
    ///
    /// Call it again with `&mut input[consumed..]` until the input is used up. After an
    /// error the stream cannot be trusted: the caller must fail the connection.
    pub fn read<'a>(&'a mut self, input: &'a mut [u8]) -> Result<Progress<'a>, ProtocolError> {
        self.read_within(input, &mut Unlimited)
    }

    /// [`read`](Self::read), asking `memory` before holding more of the peer's bytes
    /// (growing the assembly or control buffer, or inflating into it).
    pub fn read_within<'a>(
        &'a mut self,
        input: &'a mut [u8],
        memory: &mut dyn MemoryGrant,
    ) -> Result<Progress<'a>, ProtocolError> {
        if self.delivered_from_buffers {
            self.delivered_from_buffers = false;
            self.control = None;
            if self.message.is_none() {
                self.release_assembled();
            }
        }
        let mut pos = 0;
        loop {
            let frame = match self.frame {
                Some(frame) => frame,
                None => match self.read_header(&input[pos..])? {
                    (used, Some(frame)) => {
                        pos += used;
                        self.frame = Some(frame);
                        frame
                    }
                    (used, None) => {
                        return Ok(Progress {
                            consumed: pos + used,
                            event: None,
                        })
                    }
                },
            };
            let available = input.len() - pos;
            // Zero copy: the whole frame is here and nothing of it was buffered before.
            let whole_frame_here = !frame.started && frame.remaining <= available as u64;
            let single_frame_message = match frame.opcode {
                Opcode::Continuation => false,
                Opcode::Text | Opcode::Binary => !self.compressed,
                Opcode::Close | Opcode::Ping | Opcode::Pong => true,
            };
            if whole_frame_here && frame.fin && single_frame_message {
                let end = pos + frame.remaining as usize;
                self.frame = None;
                if !frame.opcode.is_control() {
                    // The message is this one frame: nothing to assemble.
                    self.message = None;
                }
                let payload = &mut input[pos..end];
                mask::apply(payload, frame.mask, 0);
                let event = Self::event(frame.opcode, payload)?;
                return Ok(Progress {
                    consumed: end,
                    event: Some(event),
                });
            }
            // Otherwise take what is here and keep it.
            let take = frame.remaining.min(available as u64) as usize;
            let chunk = &mut input[pos..pos + take];
            let others = self.held() - self.assembled.capacity();
            if frame.opcode.is_control() {
                let others = self.held() - self.control.as_ref().map_or(0, |c| c.capacity());
                let control = self.control.get_or_insert_with(Box::default);
                grow(control, take, MAX_CONTROL_PAYLOAD, others, memory)?;
                mask::apply(chunk, frame.mask, usize::from(frame.mask_phase));
                control.extend_from_slice(chunk);
            } else if self.compressed {
                mask::apply(chunk, frame.mask, usize::from(frame.mask_phase));
                let before = self.assembled.len();
                let max = self.max_message_size as usize;
                if self.inflater.is_none() && !memory.grant(self.held(), INFLATER_BYTES) {
                    return Err(ProtocolError::OverBudget);
                }
                let others = others + usize::from(self.inflater.is_none()) * INFLATER_BYTES;
                let assembled = &mut self.assembled;
                self.inflater
                    .get_or_insert_with(Box::default)
                    .inflate_into(chunk, &mut |piece| {
                        append(assembled, piece, max, others, memory)
                    })
                    .map_err(inflate_error)?;
                if self.message == Some(DataKind::Text) {
                    self.utf8
                        .feed(&self.assembled[before..])
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
            } else {
                // Asked before anything changes, so a refusal leaves the stream as it
                // was.
                let max = self.max_message_size as usize;
                grow(&mut self.assembled, take, max, others, memory)?;
                mask::apply(chunk, frame.mask, usize::from(frame.mask_phase));
                if self.message == Some(DataKind::Text) {
                    self.utf8
                        .feed(chunk)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                self.assembled.extend_from_slice(chunk);
            }
            pos += take;
            if !frame.opcode.is_control() {
                self.data_received = self.data_received.wrapping_add(take as u32);
            }
            let frame = FrameInProgress {
                remaining: frame.remaining - take as u64,
                started: true,
                mask_phase: ((usize::from(frame.mask_phase) + take) % 4) as u8,
                ..frame
            };
            if frame.remaining > 0 {
                self.frame = Some(frame);
                return Ok(Progress {
                    consumed: pos,
                    event: None,
                });
            }
            self.frame = None;
            if frame.opcode.is_control() {
                self.delivered_from_buffers = true;
                let payload = self.control.as_deref().map_or(&[][..], Vec::as_slice);
                let event = Self::event(frame.opcode, payload)?;
                return Ok(Progress {
                    consumed: pos,
                    event: Some(event),
                });
            }
            if frame.fin {
                if self.compressed {
                    self.finish_inflating(memory)?;
                }
                let kind = self.message.take();
                self.delivered_from_buffers = true;
                let message = match kind {
                    Some(DataKind::Text) => {
                        self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                        // Validated piece by piece above; re-checking the whole is cheap
                        // next to the copy that assembled it, and keeps this code free
                        // of `unsafe`.
                        let text = std::str::from_utf8(&self.assembled)
                            .map_err(|_| ProtocolError::InvalidUtf8)?;
                        Message::Text(text)
                    }
                    _ => Message::Binary(&self.assembled),
                };
                return Ok(Progress {
                    consumed: pos,
                    event: Some(Event::Message(message)),
                });
            }
        }
    }

    /// Decodes the next header from the stashed bytes plus `input`, validates it against
    /// the connection's state, and returns the bytes of `input` it used.
    fn read_header(
        &mut self,
        input: &[u8],
    ) -> Result<(usize, Option<FrameInProgress>), ProtocolError> {
        let stashed = usize::from(self.header_len);
        let decoded = if stashed == 0 {
            FrameHeader::decode(input)?
        } else {
            let take = (MAX_HEADER_LEN - stashed).min(input.len());
            self.header[stashed..stashed + take].copy_from_slice(&input[..take]);
            FrameHeader::decode(&self.header[..stashed + take])?
        };
        let Some((header, header_len)) = decoded else {
            // Incomplete: keep what we have (fewer than MAX_HEADER_LEN bytes).
            let total = (stashed + input.len()).min(MAX_HEADER_LEN);
            if stashed == 0 {
                self.header[..input.len()].copy_from_slice(input);
            }
            self.header_len = total as u8;
            return Ok((input.len(), None));
        };
        self.header_len = 0;
        let used = header_len - stashed;
        Ok((used, Some(self.start_frame(header)?)))
    }

    /// Applies the rules that depend on the connection: masking, RSV bits, the order of
    /// fragments, and the message size limit.
    fn start_frame(&mut self, header: FrameHeader) -> Result<FrameInProgress, ProtocolError> {
        let mask = header.mask.ok_or(ProtocolError::UnmaskedFrame)?;
        // RSV1 means "compressed" once permessage-deflate is negotiated, and only on
        // the first frame of a data message (RFC 7692 §6.1); RSV2 and RSV3 mean
        // nothing to us.
        let rsv1 = header.rsv & 0b100 != 0;
        let first_data_frame = matches!(header.opcode, Opcode::Text | Opcode::Binary);
        if header.rsv & 0b011 != 0 || (rsv1 && (self.deflate.is_none() || !first_data_frame)) {
            return Err(ProtocolError::ReservedBits);
        }
        match header.opcode {
            Opcode::Continuation if self.message.is_none() => {
                return Err(ProtocolError::UnexpectedContinuation)
            }
            Opcode::Text | Opcode::Binary if self.message.is_some() => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            _ => {}
        }
        // A compressed message is never buffered compressed: its limit applies to the
        // inflated bytes, while they are produced.
        let compressed = if first_data_frame {
            rsv1
        } else {
            self.compressed
        };
        if !header.opcode.is_control() && !compressed {
            let total = self.assembled.len() as u64 + header.payload_len;
            if total > u64::from(self.max_message_size) {
                return Err(ProtocolError::MessageTooBig);
            }
        }
        match header.opcode {
            Opcode::Text | Opcode::Binary => {
                self.utf8.reset();
                let kind = if header.opcode == Opcode::Text {
                    DataKind::Text
                } else {
                    DataKind::Binary
                };
                // Cleared again in `read` if the frame turns out to be a whole message
                // that can be delivered without assembly.
                self.message = Some(kind);
                self.compressed = rsv1;
            }
            Opcode::Close | Opcode::Ping | Opcode::Pong => self.control = None,
            Opcode::Continuation => {}
        }
        Ok(FrameInProgress {
            opcode: header.opcode,
            fin: header.fin,
            mask,
            remaining: header.payload_len,
            started: false,
            mask_phase: 0,
        })
    }

    /// Inflates the sync-flush tail the sender left out, ending a compressed message.
    fn finish_inflating(&mut self, memory: &mut dyn MemoryGrant) -> Result<(), ProtocolError> {
        let before = self.assembled.len();
        let reset = self.deflate.is_some_and(|mode| mode.reset_each_message);
        let max = self.max_message_size as usize;
        if self.inflater.is_none() && !memory.grant(self.held(), INFLATER_BYTES) {
            return Err(ProtocolError::OverBudget);
        }
        let others = self.held() - self.assembled.capacity()
            + usize::from(self.inflater.is_none()) * INFLATER_BYTES;
        let assembled = &mut self.assembled;
        self.inflater
            .get_or_insert_with(Box::default)
            .finish_into(
                &mut |piece| append(assembled, piece, max, others, memory),
                reset,
            )
            .map_err(inflate_error)?;
        self.compressed = false;
        if self.message == Some(DataKind::Text) {
            self.utf8
                .feed(&self.assembled[before..])
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }

    fn release_assembled(&mut self) {
        if self.assembled.capacity() > RETAINED_BUFFER_CAPACITY && !self.keep_buffers {
            self.assembled = Vec::new();
        } else {
            self.assembled.clear();
        }
    }

    /// Builds the event for a complete single frame's unmasked payload.
    fn event(opcode: Opcode, payload: &[u8]) -> Result<Event<'_>, ProtocolError> {
        Ok(match opcode {
            Opcode::Text => Event::Message(Message::Text(
                std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?,
            )),
            Opcode::Binary | Opcode::Continuation => Event::Message(Message::Binary(payload)),
            Opcode::Ping => Event::Ping(payload),
            Opcode::Pong => Event::Pong(payload),
            Opcode::Close => Event::Close(parse_close_payload(payload)?),
        })
    }
}

/// Makes room in `buffer` for `extra` more bytes, asking `memory` for what the buffer
/// grows by (the receiver holds `others` bytes besides the buffer). Growth doubles
/// (capped at `max`, the most the buffer may ever need) so that a message arriving in
/// many pieces is not copied once per piece; if the doubling is refused, exactly what
/// is needed is asked for.
fn grow(
    buffer: &mut Vec<u8>,
    extra: usize,
    max: usize,
    others: usize,
    memory: &mut dyn MemoryGrant,
) -> Result<(), ProtocolError> {
    let needed = buffer.len() + extra;
    let capacity = buffer.capacity();
    if needed <= capacity {
        return Ok(());
    }
    let held = others + capacity;
    let doubled = capacity.saturating_mul(2).max(4096).min(max).max(needed);
    if memory.grant(held, doubled - capacity) {
        buffer.reserve_exact(doubled - buffer.len());
        return Ok(());
    }
    if doubled > needed && memory.grant(held, needed - capacity) {
        buffer.reserve_exact(extra);
        return Ok(());
    }
    Err(ProtocolError::OverBudget)
}

/// Appends inflated output, within the message size limit and the memory granted.
fn append(
    buffer: &mut Vec<u8>,
    piece: &[u8],
    max: usize,
    others: usize,
    memory: &mut dyn MemoryGrant,
) -> Result<(), InflateError> {
    if buffer.len() + piece.len() > max {
        return Err(InflateError::TooBig);
    }
    grow(buffer, piece.len(), max, others, memory).map_err(|_| InflateError::NoMemory)?;
    buffer.extend_from_slice(piece);
    Ok(())
}

fn inflate_error(error: InflateError) -> ProtocolError {
    match error {
        InflateError::NoMemory => ProtocolError::OverBudget,
        InflateError::TooBig => ProtocolError::MessageTooBig,
        InflateError::Corrupt => ProtocolError::BadCompressedData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::close::{CloseCode, CloseFrame};
    use proptest::prelude::*;

    /// An event with its payload copied out, to compare across feeds.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    impl From<Event<'_>> for Owned {
        fn from(event: Event<'_>) -> Owned {
            match event {
                Event::Message(Message::Text(t)) => Owned::Text(t.to_owned()),
                Event::Message(Message::Binary(b)) => Owned::Binary(b.to_vec()),
                Event::Ping(p) => Owned::Ping(p.to_vec()),
                Event::Pong(p) => Owned::Pong(p.to_vec()),
                Event::Close(c) => {
                    Owned::Close(c.map(|CloseFrame { code, reason }| (code.0, reason.to_owned())))
                }
            }
        }
    }

    /// A client frame: masked with a key derived from the payload length.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x12, 0x34, (payload.len() % 251) as u8, 0x78];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        let start = out.len();
        out.extend_from_slice(payload);
        mask::apply(&mut out[start..], key, 0);
        out
    }

    /// Feeds `stream` in pieces cut at `cuts`, collecting events until the first error.
    fn feed(
        rx: &mut Receiver,
        stream: &[u8],
        cuts: &[usize],
    ) -> (Vec<Owned>, Option<ProtocolError>) {
        let mut bytes = stream.to_vec();
        let mut events = Vec::new();
        let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
        bounds.sort_unstable();
        bounds.push(bytes.len());
        let mut start = 0;
        for end in bounds {
            let mut piece = &mut bytes[start..end.max(start)];
            start = end.max(start);
            while !piece.is_empty() {
                match rx.read(piece) {
                    Ok(Progress { consumed, event }) => {
                        if let Some(event) = event {
                            events.push(Owned::from(event));
                        } else {
                            assert_eq!(consumed, piece.len(), "no event means all consumed");
                        }
                        piece = &mut piece[consumed..];
                    }
                    Err(e) => return (events, Some(e)),
                }
            }
        }
        (events, None)
    }

    fn feed_whole(stream: &[u8]) -> (Vec<Owned>, Option<ProtocolError>) {
        feed(&mut Receiver::new(1 << 20), stream, &[])
    }

    #[test]
    fn single_frames_of_every_kind() {
        let stream = [
            frame(true, 0x1, b"Hello"),
            frame(true, 0x2, &[0, 1, 2]),
            frame(true, 0x9, b"ping"),
            frame(true, 0xA, b""),
            frame(true, 0x8, b"\x03\xe8done"),
        ]
        .concat();
        let (events, error) = feed_whole(&stream);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                Owned::Text("Hello".into()),
                Owned::Binary(vec![0, 1, 2]),
                Owned::Ping(b"ping".to_vec()),
                Owned::Pong(vec![]),
                Owned::Close(Some((1000, "done".into()))),
            ]
        );
    }

    #[test]
    fn rfc_5_7_masked_hello_is_delivered_in_place() {
        let mut bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let base = bytes.as_ptr() as usize;
        let mut rx = Receiver::new(1024);
        let progress = rx.read(&mut bytes).unwrap();
        assert_eq!(progress.consumed, 11);
        let Some(Event::Message(Message::Text(text))) = progress.event else {
            panic!("expected text")
        };
        assert_eq!(text, "Hello");
        // Zero copy: the message is the unmasked bytes of the input buffer itself.
        assert_eq!(text.as_ptr() as usize, base + 6);
    }

    #[test]
    fn fragments_with_interleaved_control_frames() {
        let stream = [
            frame(false, 0x1, "Hel".as_bytes()),
            frame(true, 0x9, b"p"),
            frame(false, 0x0, "lo ".as_bytes()),
            frame(true, 0x0, "wörld".as_bytes()),
        ]
        .concat();
        let (events, error) = feed_whole(&stream);
        assert_eq!(error, None);
        assert_eq!(
            events,
            [
                Owned::Ping(b"p".to_vec()),
                Owned::Text("Hello wörld".into())
            ]
        );
    }

    #[test]
    fn code_point_split_across_fragments_is_valid() {
        let euro = "€".as_bytes();
        let stream = [
            frame(false, 0x1, &euro[..1]),
            frame(false, 0x0, &euro[1..2]),
            frame(true, 0x0, &euro[2..]),
        ]
        .concat();
        assert_eq!(feed_whole(&stream), (vec![Owned::Text("€".into())], None));
    }

    #[test]
    fn violations_and_their_errors() {
        let unmasked = [0x81, 0x02, b'h', b'i'];
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (unmasked.to_vec(), ProtocolError::UnmaskedFrame),
            (
                {
                    let mut f = frame(true, 0x1, b"x");
                    f[0] |= 0x40;
                    f
                },
                ProtocolError::ReservedBits,
            ),
            (
                {
                    let mut f = frame(true, 0x1, b"x");
                    f[0] |= 0x10;
                    f
                },
                ProtocolError::ReservedBits,
            ),
            (frame(true, 0x3, b""), ProtocolError::ReservedOpcode(3)),
            (frame(true, 0xB, b""), ProtocolError::ReservedOpcode(0xB)),
            (
                frame(true, 0x9, &[0; 126]),
                ProtocolError::ControlFrameTooLong,
            ),
            (
                frame(false, 0x9, b""),
                ProtocolError::FragmentedControlFrame,
            ),
            (
                frame(true, 0x0, b"x"),
                ProtocolError::UnexpectedContinuation,
            ),
            (
                [frame(false, 0x1, b"a"), frame(true, 0x1, b"b")].concat(),
                ProtocolError::ExpectedContinuation,
            ),
            (frame(true, 0x1, &[0xC3, 0x28]), ProtocolError::InvalidUtf8),
            (frame(true, 0x8, b"\x03"), ProtocolError::CloseFrameTooShort),
            (
                frame(true, 0x8, b"\x03\xed"),
                ProtocolError::InvalidCloseCode(1005),
            ),
            (
                frame(true, 0x8, b"\x03\xe8\xff"),
                ProtocolError::InvalidUtf8,
            ),
        ];
        for (stream, expected) in cases {
            assert_eq!(feed_whole(&stream).1, Some(expected), "{stream:x?}");
        }
    }

    #[test]
    fn length_with_top_bit_set_is_rejected() {
        let header = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(feed_whole(&header).1, Some(ProtocolError::LengthOverflow));
    }

    #[test]
    fn oversized_message_is_refused_from_the_header_alone() {
        let mut rx = Receiver::new(1000);
        // Header only: 1001 bytes declared, none sent. No allocation, immediate error.
        let header = &frame(true, 0x2, &[0; 1001])[..8];
        assert_eq!(
            feed(&mut rx, header, &[]).1,
            Some(ProtocolError::MessageTooBig)
        );
        // Fragments count together.
        let mut rx = Receiver::new(1000);
        let stream = [frame(false, 0x2, &[0; 600]), frame(true, 0x0, &[0; 401])].concat();
        assert_eq!(
            feed(&mut rx, &stream, &[]).1,
            Some(ProtocolError::MessageTooBig)
        );
        let mut rx = Receiver::new(1000);
        let stream = [frame(false, 0x2, &[0; 600]), frame(true, 0x0, &[0; 400])].concat();
        assert_eq!(feed(&mut rx, &stream, &[]).1, None);
    }

    #[test]
    fn invalid_utf8_fails_fast_inside_one_frame() {
        // Autobahn 6.4.3: one text frame whose second chunk holds F4 90; the error must
        // come when that chunk arrives, long before the frame is complete.
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]);
        payload.extend_from_slice(&[b'x'; 100]);
        let stream = frame(true, 0x1, &payload);
        let mut rx = Receiver::new(1 << 20);
        let bad_at = 2 + 4 + "κόσμε".len() + 2;
        assert_eq!(feed(&mut rx, &stream[..bad_at - 1], &[]), (vec![], None));
        assert_eq!(
            feed(&mut rx, &stream[bad_at - 1..bad_at], &[]).1,
            Some(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn messages_before_a_bad_frame_are_delivered() {
        let stream = [
            frame(true, 0x1, b"one"),
            frame(true, 0x1, b"two"),
            frame(true, 0x3, b""),
        ]
        .concat();
        let (events, error) = feed_whole(&stream);
        assert_eq!(
            events,
            [Owned::Text("one".into()), Owned::Text("two".into())]
        );
        assert_eq!(error, Some(ProtocolError::ReservedOpcode(3)));
    }

    #[test]
    fn large_buffer_is_released_after_delivery() {
        let mut rx = Receiver::new(1 << 20);
        let big = frame(true, 0x2, &[7; 200_000]);
        let (events, _) = feed(&mut rx, &big, &[1000]);
        assert_eq!(events.len(), 1);
        assert!(rx.assembled.capacity() >= 200_000);
        let small = frame(true, 0x2, b"x");
        feed(&mut rx, &small, &[]);
        assert_eq!(rx.assembled.capacity(), 0);
        assert!(!rx.is_mid_message());
    }

    fn compressed(message: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        crate::proto::deflate::Deflater::new(6, 15).compress(message, &mut wire, true);
        wire
    }

    fn deflate_receiver(max: u64) -> Receiver {
        let mut rx = Receiver::new(max);
        rx.enable_deflate(true);
        rx
    }

    #[test]
    fn compressed_messages_single_and_fragmented_with_a_ping_between() {
        let text = "hello hello hello compressed world ".repeat(20);
        let wire = compressed(text.as_bytes());
        let (a, b) = wire.split_at(wire.len() / 2);
        let stream = [
            frame(true, 0x1 | 0x40, &wire),
            frame(false, 0x2 | 0x40, a),
            frame(true, 0x9, b"p"),
            frame(true, 0x0, b),
            frame(true, 0x1, b"plain after"),
        ]
        .concat();
        for cuts in [vec![], vec![3, 50, 51, 200], (0..stream.len()).collect()] {
            let (events, error) = feed(&mut deflate_receiver(1 << 20), &stream, &cuts);
            assert_eq!(error, None);
            assert_eq!(
                events,
                [
                    Owned::Text(text.clone()),
                    Owned::Ping(b"p".to_vec()),
                    Owned::Binary(text.clone().into_bytes()),
                    Owned::Text("plain after".into()),
                ]
            );
        }
    }

    #[test]
    fn rsv1_is_only_for_the_first_data_frame_of_a_negotiated_connection() {
        let wire = compressed(b"abc");
        // Not negotiated.
        assert_eq!(
            feed_whole(&frame(true, 0x1 | 0x40, &wire)).1,
            Some(ProtocolError::ReservedBits)
        );
        let cases = [
            [frame(false, 0x1 | 0x40, &wire), frame(true, 0x40, b"")].concat(),
            frame(true, 0x9 | 0x40, b""),
            frame(true, 0x1 | 0x20, b"x"),
        ];
        for stream in cases {
            let (_, error) = feed(&mut deflate_receiver(1 << 20), &stream, &[]);
            assert_eq!(error, Some(ProtocolError::ReservedBits), "{stream:x?}");
        }
    }

    #[test]
    fn a_compressed_bomb_is_refused_while_inflating() {
        let wire = compressed(&vec![b'a'; 5_000_000]);
        assert!(wire.len() < 10_000);
        let mut rx = deflate_receiver(100_000);
        let (events, error) = feed(&mut rx, &frame(true, 0x1 | 0x40, &wire), &[]);
        assert!(events.is_empty());
        assert_eq!(error, Some(ProtocolError::MessageTooBig));
        // Memory stayed near the limit, not near the 5 MB the bomb expands to.
        assert!(
            rx.assembled.capacity() < 300_000,
            "{}",
            rx.assembled.capacity()
        );
    }

    #[test]
    fn invalid_utf8_inside_compressed_text_fails() {
        let wire = compressed(&[b'a', 0xC3, 0x28, b'b']);
        let (_, error) = feed(
            &mut deflate_receiver(1 << 20),
            &frame(true, 0x1 | 0x40, &wire),
            &[],
        );
        assert_eq!(error, Some(ProtocolError::InvalidUtf8));
        let (_, error) = feed(
            &mut deflate_receiver(1 << 20),
            &frame(true, 0x2 | 0x40, &[0xff; 8]),
            &[],
        );
        assert_eq!(error, Some(ProtocolError::BadCompressedData));
    }

    #[test]
    fn inflater_is_lent_and_reclaimed_between_messages_only() {
        let mut rx = deflate_receiver(1 << 20);
        assert!(rx.wants_inflater());
        rx.lend_inflater(Box::default());
        assert!(!rx.wants_inflater());
        let wire = compressed(b"some message");
        let stream = frame(false, 0x2 | 0x40, &wire);
        feed(&mut rx, &stream, &[]);
        assert!(rx.reclaim_inflater().is_none(), "mid-message");
        feed(&mut rx, &frame(true, 0x0, b""), &[]);
        assert!(rx.reclaim_inflater().is_some());
    }

    #[test]
    fn an_inflater_never_goes_back_dirty_after_a_failed_message() {
        // Found by fuzzing: RFC 7692's "Hello" with one byte corrupted fails in the
        // final tail; the inflater used to be reclaimed for the pool in that state and
        // break the next connection's valid message.
        let mut rx = deflate_receiver(1 << 20);
        rx.lend_inflater(Box::default());
        let bad = frame(
            true,
            0x1 | 0x40,
            &[0xf3, 0x48, 0xcd, 0x1c, 0xc9, 0x07, 0x00],
        );
        assert_eq!(
            feed(&mut rx, &bad, &[]).1,
            Some(ProtocolError::BadCompressedData)
        );
        assert!(
            rx.reclaim_inflater().is_none(),
            "a failed message's inflater was reclaimed"
        );
        // And what the pool does get back is reset, whatever state it was in.
        let mut rx = deflate_receiver(1 << 20);
        rx.lend_inflater(Box::default());
        let half = &compressed(b"half a message, never finished")[..10];
        feed(&mut rx, &frame(false, 0x2 | 0x40, half), &[]);
        feed(&mut rx, &frame(true, 0x9, b""), &[]);
        rx.compressed = false; // as if the message had been abandoned
        let inflater = rx.reclaim_inflater().expect("reclaimed");
        let mut next = deflate_receiver(1 << 20);
        next.lend_inflater(inflater);
        let good = frame(true, 0x1 | 0x40, &compressed(b"canary"));
        assert_eq!(
            feed(&mut next, &good, &[]),
            (vec![Owned::Text("canary".into())], None)
        );
    }

    #[test]
    fn data_after_a_final_deflate_block_fails_however_it_is_split() {
        // Found by fuzzing: "33 00" is a final block holding "0"; what follows it in the
        // same message used to be accepted or not depending on the read boundaries.
        for payload in [
            &[0x33, 0x00, 0x00, 0x00][..],
            &[0x33, 0x00, 0x00, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        ] {
            let stream = frame(true, 0x1 | 0x40, payload);
            let whole = feed(&mut deflate_receiver(1 << 20), &stream, &[]);
            let cuts: Vec<usize> = (0..stream.len()).collect();
            let bytewise = feed(&mut deflate_receiver(1 << 20), &stream, &cuts);
            assert_eq!(whole, bytewise, "{payload:x?}");
            assert_eq!(whole.1, Some(ProtocolError::BadCompressedData));
        }
        // A message that is exactly one final block is fine.
        let stream = frame(true, 0x1 | 0x40, &[0x33, 0x00]);
        assert_eq!(
            feed_whole_deflate(&stream),
            (vec![Owned::Text("0".into())], None)
        );
    }

    fn feed_whole_deflate(stream: &[u8]) -> (Vec<Owned>, Option<ProtocolError>) {
        feed(&mut deflate_receiver(1 << 20), stream, &[])
    }

    #[test]
    fn shedding_frees_buffers_but_never_a_half_received_message() {
        let mut rx = Receiver::new(1 << 20);
        let stream = [frame(false, 0x2, &[1; 5000]), frame(true, 0x0, &[2; 5000])].concat();
        feed(&mut rx, &stream, &[]);
        assert!(rx.assembled.capacity() >= 10_000);
        rx.shed_buffers();
        assert_eq!(rx.assembled.capacity(), 0);
        // Half a fragmented message stays put.
        feed(&mut rx, &frame(false, 0x2, &[3; 5000]), &[]);
        rx.shed_buffers();
        assert_eq!(rx.assembled.len(), 5000);
        let (events, error) = feed(&mut rx, &frame(true, 0x0, &[4; 10]), &[]);
        assert_eq!(error, None);
        assert_eq!(events.len(), 1);
    }

    /// One message of a generated stream: how it is fragmented and what is interleaved.
    #[derive(Debug, Clone)]
    struct Script {
        text: bool,
        fragments: Vec<Vec<u8>>,
        pings_after: Vec<bool>,
    }

    fn script() -> impl Strategy<Value = Script> {
        (
            any::<bool>(),
            "\\PC{0,40}",
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(0usize..300, 0..4),
            proptest::collection::vec(any::<bool>(), 4),
        )
            .prop_map(|(text, string, bytes, mut cuts, pings_after)| {
                let payload = if text { string.into_bytes() } else { bytes };
                cuts.iter_mut().for_each(|c| *c = (*c).min(payload.len()));
                cuts.sort_unstable();
                let mut fragments = Vec::new();
                let mut start = 0;
                for cut in cuts.into_iter().chain([payload.len()]) {
                    fragments.push(payload[start..cut].to_vec());
                    start = cut;
                }
                Script {
                    text,
                    fragments,
                    pings_after,
                }
            })
    }

    fn render(scripts: &[Script]) -> (Vec<u8>, Vec<Owned>) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (n, s) in scripts.iter().enumerate() {
            let last = s.fragments.len() - 1;
            for (i, fragment) in s.fragments.iter().enumerate() {
                let opcode = match (i, s.text) {
                    (0, true) => 0x1,
                    (0, false) => 0x2,
                    _ => 0x0,
                };
                stream.extend(frame(i == last, opcode, fragment));
                if i < last && s.pings_after[i % 4] {
                    let ping = format!("ping {n}.{i}").into_bytes();
                    stream.extend(frame(true, 0x9, &ping));
                    expected.push(Owned::Ping(ping));
                }
            }
            let payload = s.fragments.concat();
            expected.push(if s.text {
                Owned::Text(String::from_utf8(payload).unwrap())
            } else {
                Owned::Binary(payload)
            });
        }
        stream.extend(frame(true, 0x8, b"\x03\xe8"));
        expected.push(Owned::Close(Some((CloseCode::NORMAL.0, String::new()))));
        (stream, expected)
    }

    /// A memory grant that allows `room` bytes in all and records what was asked.
    struct Allowance {
        room: usize,
        used: usize,
        asked_with: Vec<usize>,
    }

    impl MemoryGrant for Allowance {
        fn grant(&mut self, held: usize, bytes: usize) -> bool {
            self.asked_with.push(held);
            if self.used + bytes > self.room {
                return false;
            }
            self.used += bytes;
            true
        }
    }

    /// Feeds `stream` in `piece`-byte reads within `memory`; the events, or the error.
    fn feed_within(
        rx: &mut Receiver,
        stream: &[u8],
        piece: usize,
        memory: &mut Allowance,
    ) -> Result<Vec<Owned>, ProtocolError> {
        let mut events = Vec::new();
        for chunk in stream.chunks(piece) {
            let mut chunk = chunk.to_vec();
            let mut pos = 0;
            while pos < chunk.len() {
                let progress = rx.read_within(&mut chunk[pos..], memory)?;
                pos += progress.consumed;
                events.extend(progress.event.map(Owned::from));
                assert!(
                    rx.held() <= memory.used,
                    "{} held, {} granted",
                    rx.held(),
                    memory.used
                );
            }
        }
        Ok(events)
    }

    #[test]
    fn a_fragmented_message_is_assembled_within_what_is_granted() {
        let message = vec![7u8; 100_000];
        let mut stream = frame(false, 0x2, &message[..60_000]);
        stream.extend(frame(true, 0x0, &message[60_000..]));
        let mut memory = Allowance {
            room: 200_000,
            used: 0,
            asked_with: Vec::new(),
        };
        let events = feed_within(&mut Receiver::new(1 << 20), &stream, 4096, &mut memory);
        assert_eq!(events, Ok(vec![Owned::Binary(message.clone())]));
        // Each request says what the receiver held then: never less than before.
        assert!(memory.asked_with.windows(2).all(|w| w[0] <= w[1]));

        let mut tight = Allowance {
            room: 80_000,
            used: 0,
            asked_with: Vec::new(),
        };
        let result = feed_within(&mut Receiver::new(1 << 20), &stream, 4096, &mut tight);
        assert_eq!(result, Err(ProtocolError::OverBudget));
        assert!(tight.used <= 80_000);
    }

    #[test]
    fn a_compressed_bomb_stops_at_the_grant_not_at_the_size_limit() {
        let bomb = compressed(&vec![0u8; 8 << 20]);
        let mut stream = frame(true, 0x2, &bomb);
        stream[0] |= 0x40;
        let mut rx = deflate_receiver(16 << 20);
        let mut memory = Allowance {
            room: 1 << 20,
            used: 0,
            asked_with: Vec::new(),
        };
        assert_eq!(
            feed_within(&mut rx, &stream, 1000, &mut memory),
            Err(ProtocolError::OverBudget)
        );
        assert!(memory.used <= 1 << 20);
        // With room for it, the same message is fine.
        let mut rx = deflate_receiver(16 << 20);
        let mut memory = Allowance {
            room: 32 << 20,
            used: 0,
            asked_with: Vec::new(),
        };
        let events = feed_within(&mut rx, &stream, 1000, &mut memory).unwrap();
        assert_eq!(events, vec![Owned::Binary(vec![0u8; 8 << 20])]);
    }

    #[test]
    fn a_refused_grant_is_reported_as_try_again_later() {
        assert_eq!(
            ProtocolError::OverBudget.close_code(),
            CloseCode::TRY_AGAIN_LATER
        );
        let mut rx = Receiver::new(1 << 20);
        let mut stream = frame(true, 0x2, &[1; 10_000]);
        let mut nothing = Allowance {
            room: 0,
            used: 0,
            asked_with: Vec::new(),
        };
        // A frame wholly in one read is handed out in place: it needs no grant.
        assert!(feed_within(&mut rx, &stream, stream.len(), &mut nothing).is_ok());
        stream = frame(true, 0x2, &[1; 10_000]);
        assert_eq!(
            feed_within(&mut Receiver::new(1 << 20), &stream, 1000, &mut nothing),
            Err(ProtocolError::OverBudget)
        );
    }

    proptest! {
        #[test]
        fn any_split_yields_the_same_events(
            scripts in proptest::collection::vec(script(), 1..6),
            cuts in proptest::collection::vec(0usize..4000, 0..20),
        ) {
            let (stream, expected) = render(&scripts);
            prop_assert_eq!(feed(&mut Receiver::new(1 << 20), &stream, &[]), (expected.clone(), None));
            prop_assert_eq!(feed(&mut Receiver::new(1 << 20), &stream, &cuts), (expected, None));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                    cuts in proptest::collection::vec(0usize..512, 0..8)) {
            let _ = feed(&mut Receiver::new(4096), &bytes, &cuts);
        }
    }
}
