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
//!
//! Parts mode ([`Receiver::receive_in_parts`]) does without that buffer altogether:
//! each data frame's payload is handed out as [`Event::Part`]s as it arrives — slices
//! of the caller's buffer, or of the inflater's output chunk for a compressed message
//! — so a message of any size costs the receiver nothing but the few bytes of a code
//! point split between reads.
//!
//! The rooms: framing and whole-message assembly here, parts mode in `parts.rs`, and
//! how the receiver asks before it holds more (the [`MemoryGrant`], buffer growth) in
//! `memory.rs`.

use super::close::parse_close_payload;
use super::deflate::{InflateError, InflateStep, Inflater};
use super::error::ProtocolError;
use super::frame::{FrameHeader, Opcode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::mask;
use super::message::{Event, Message, Part};
use super::utf8::Utf8Validator;
use memory::{append, grow};
pub use memory::{MemoryGrant, Unlimited};
use parts::*;

mod memory;
mod parts;

/// Assembly buffers larger than this are released after their message is delivered,
/// so that one large message does not pin memory on a connection that goes quiet
/// (unless [`Receiver::keep_buffers`] says the caller will shed them itself).
const RETAINED_BUFFER_CAPACITY: usize = 64 * 1024;

/// What an inflater costs while a receiver holds one (zlib state with its 32 KiB
/// window, and our 16 KiB output chunk), counted in [`Receiver::held`].
pub const INFLATER_BYTES: usize = 56 * 1024;

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
    /// Parts mode: data messages are handed out as parts, never assembled, and
    /// `max_message_size` is the limit of a streamed message.
    parts: bool,
    /// Parts mode: no part of the message in progress was handed out yet.
    part_first: bool,
    /// Parts mode, compressed message: `INFLATE_*`.
    inflating: u8,
    /// Parts mode: bytes of the message in progress so far (the declared lengths of
    /// its frames, or what was inflated), against the limit.
    streamed: u32,
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

    /// Parts mode: from now on data messages are handed out as [`Event::Part`]s as
    /// they arrive, never assembled, and `max_streamed_message_size` (capped at
    /// 4 GiB − 1) replaces the message size limit. Call it before the first frame
    /// (the connection's mode is chosen when it opens).
    ///
    /// In parts mode, after a call that returns an event, call [`read`](Self::read)
    /// again while [`has_pending`](Self::has_pending) says so, even with no input:
    /// a compressed message may have more inflated output waiting.
    pub fn receive_in_parts(&mut self, max_streamed_message_size: u64) {
        self.parts = true;
        self.max_message_size = u32::try_from(max_streamed_message_size).unwrap_or(u32::MAX);
    }

    /// Switches between parts mode (`parts`, see
    /// [`receive_in_parts`](Self::receive_in_parts)) and whole messages, with the
    /// limit that goes with the mode. Call it before the first frame.
    pub fn set_mode(&mut self, parts: bool, max_size: u64) {
        self.parts = parts;
        self.max_message_size = u32::try_from(max_size).unwrap_or(u32::MAX);
    }

    /// Whether data messages are handed out in parts.
    pub fn in_parts(&self) -> bool {
        self.parts
    }

    /// Parts mode: inflated output may be waiting, so [`read`](Self::read) has more
    /// to hand out even with no more input (and a message may end with no more input).
    pub fn has_pending(&self) -> bool {
        self.inflating != INFLATE_IDLE
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
        self.inflating = INFLATE_IDLE;
        self.streamed = 0;
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
            if self.parts && self.parts_due(input.len() - pos) {
                let (used, found) = self.read_part(&mut input[pos..], memory)?;
                pos += used;
                if let Some(found) = found {
                    return Ok(Progress {
                        consumed: pos,
                        event: Some(self.part_event(found, &input[pos - used..])?),
                    });
                }
                if pos == input.len() && !self.has_pending() {
                    return Ok(Progress {
                        consumed: pos,
                        event: None,
                    });
                }
                continue;
            }
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
            if self.parts && !frame.opcode.is_control() {
                // A data frame in parts mode: `read_part` takes it from here.
                continue;
            }
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
                        let text = super::utf8::from_utf8(&self.assembled)
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
            let so_far = if self.parts {
                u64::from(self.streamed)
            } else {
                self.assembled.len() as u64
            };
            let total = so_far + header.payload_len;
            if total > u64::from(self.max_message_size) {
                return Err(ProtocolError::MessageTooBig);
            }
            if self.parts {
                // Within the u32 limit, just checked.
                self.streamed = total as u32;
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
                self.part_first = true;
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
                super::utf8::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?,
            )),
            Opcode::Binary | Opcode::Continuation => Event::Message(Message::Binary(payload)),
            Opcode::Ping => Event::Ping(payload),
            Opcode::Pong => Event::Pong(payload),
            Opcode::Close => Event::Close(parse_close_payload(payload)?),
        })
    }
}

fn inflate_error(error: InflateError) -> ProtocolError {
    match error {
        InflateError::NoMemory => ProtocolError::OverBudget,
        InflateError::TooBig => ProtocolError::MessageTooBig,
        InflateError::Corrupt => ProtocolError::BadCompressedData,
    }
}

#[cfg(test)]
mod tests;
