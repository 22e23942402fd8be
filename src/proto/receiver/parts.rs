//! Parts mode: a data message handed to the handler as parts while its frames arrive,
//! instead of assembled whole — slices of the read buffer unmasked in place, text cut
//! at code-point boundaries, compressed input inflated a chunk at a time.

use super::*;

/// Parts mode, compressed message: [`Receiver::inflating`] values.
pub(super) const INFLATE_IDLE: u8 = 0;
/// The inflater's last step filled its output chunk: more output may wait for no
/// more input.
const INFLATE_PENDING: u8 = 1;
/// Ending the message: feeding the sync-flush tail, `INFLATE_FINISHING + n` once `n`
/// of its bytes are fed.
const INFLATE_FINISHING: u8 = 2;

/// Parts mode: compressed input is unmasked and fed to the inflater this much at a
/// time; what one step leaves unread is masked again (XOR is its own inverse), so
/// this bounds that rework per step.
const PART_INFLATE_INPUT: usize = 16 * 1024;

/// Where a part found by `read_part` lies, to be borrowed once the loop is left.
#[derive(Debug, Clone, Copy)]
enum PartAt {
    /// `input[start..end]`, relative to where the read began.
    Input(usize, usize),
    /// The code point the UTF-8 validator just completed, this many bytes.
    CodePoint(usize),
    /// The inflater's output chunk, this many bytes.
    Inflated(usize),
    /// Text not validated yet, in `input[start..end]`: validated where the part is
    /// made, once (an unfinished code point at its end is held back then). Only for
    /// 4 bytes or more, whose valid prefix cannot be empty.
    InputText(usize, usize),
    /// Text not validated yet, the first this many bytes of the inflater's output.
    InflatedText(usize),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct FoundPart {
    at: PartAt,
    kind: DataKind,
    first: bool,
    last: bool,
}

impl Receiver {
    /// Parts mode: whether `read_part` has something to do, with `available` bytes
    /// of input left: a data frame in progress, inflated output that may be
    /// waiting, or a compressed message to end.
    pub(super) fn parts_due(&self, available: usize) -> bool {
        match self.inflating {
            INFLATE_IDLE => self.frame.is_some_and(|f| !f.opcode.is_control()),
            INFLATE_PENDING => available == 0 || self.frame.is_none_or(|f| !f.opcode.is_control()),
            _ => true,
        }
    }

    /// Parts mode: takes what it can of the data frame in progress (or of the
    /// inflater's waiting output) and says where the part it makes lies, if any.
    /// Returns the input bytes used.
    pub(super) fn read_part(
        &mut self,
        input: &mut [u8],
        memory: &mut dyn MemoryGrant,
    ) -> Result<(usize, Option<FoundPart>), ProtocolError> {
        let kind = self.message.unwrap_or(DataKind::Binary);
        if self.compressed {
            return self.inflate_part(kind, input, memory);
        }
        let Some(frame) = self.frame else {
            return Ok((0, None));
        };
        let text = kind == DataKind::Text;
        let mut take = frame.remaining.min(input.len() as u64) as usize;
        if text && self.utf8.holds() {
            // Just what finishes the held code point: it becomes a part of its own,
            // and the rest of the input stays where it is.
            take = take.min(self.utf8.needs());
        }
        let chunk = &mut input[..take];
        mask::apply(chunk, frame.mask, usize::from(frame.mask_phase));
        self.data_received = self.data_received.wrapping_add(take as u32);
        let remaining = frame.remaining - take as u64;
        let last = remaining == 0 && frame.fin;
        self.frame = (remaining > 0).then_some(FrameInProgress {
            remaining,
            started: true,
            mask_phase: ((usize::from(frame.mask_phase) + take) % 4) as u8,
            ..frame
        });
        let at = if !text {
            (take > 0 || last).then_some(PartAt::Input(0, take))
        } else if self.utf8.holds() {
            let (_, done) = self
                .utf8
                .complete(chunk)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
            done.map(|code_point| PartAt::CodePoint(code_point.len()))
        } else if take >= 4 {
            Some(PartAt::InputText(0, take))
        } else {
            let valid = self
                .utf8
                .split(chunk)
                .map_err(|_| ProtocolError::InvalidUtf8)?
                .len();
            (valid > 0 || last).then_some(PartAt::Input(0, valid))
        };
        if last && self.utf8.holds() {
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok((take, at.map(|at| self.found(at, kind, last))))
    }

    /// Parts mode, compressed message: one inflater step, on the frame in progress,
    /// on no input (output waiting), or on the sync-flush tail (ending the message).
    fn inflate_part(
        &mut self,
        kind: DataKind,
        input: &mut [u8],
        memory: &mut dyn MemoryGrant,
    ) -> Result<(usize, Option<FoundPart>), ProtocolError> {
        if self.inflater.is_none() && !memory.grant(self.held(), INFLATER_BYTES) {
            return Err(ProtocolError::OverBudget);
        }
        let text = kind == DataKind::Text;
        // A code point split by the inflater's chunk goes before the next output, so
        // that every text part is whole code points with nothing copied but it.
        let mut prefix = [0u8; 4];
        let prefix_len = if text {
            let held = self.utf8.held();
            prefix[..held.len()].copy_from_slice(held);
            held.len()
        } else {
            0
        };
        self.utf8.reset();
        let prefix = &prefix[..prefix_len];
        let inflater = self.inflater.get_or_insert_with(Box::default);
        let finishing = self.inflating >= INFLATE_FINISHING;
        let (used, step): (usize, InflateStep) = if finishing {
            let fed = usize::from(self.inflating - INFLATE_FINISHING);
            let step = inflater.step_tail(fed, prefix).map_err(inflate_error)?;
            self.inflating =
                INFLATE_FINISHING + (fed + step.consumed).min(Inflater::TAIL_LEN) as u8;
            (0, step)
        } else if let Some(frame) = self.frame.filter(|f| !f.opcode.is_control()) {
            let take = frame
                .remaining
                .min(input.len() as u64)
                .min(PART_INFLATE_INPUT as u64) as usize;
            let chunk = &mut input[..take];
            let phase = usize::from(frame.mask_phase);
            mask::apply(chunk, frame.mask, phase);
            let step = inflater.step(chunk, prefix, false).map_err(inflate_error)?;
            let used = step.consumed;
            // What the inflater did not take is read again next time: mask it back.
            mask::apply(&mut chunk[used..], frame.mask, (phase + used) % 4);
            self.data_received = self.data_received.wrapping_add(used as u32);
            let remaining = frame.remaining - used as u64;
            self.frame = (remaining > 0).then_some(FrameInProgress {
                remaining,
                started: true,
                mask_phase: ((phase + used) % 4) as u8,
                ..frame
            });
            self.inflating = if remaining == 0 && frame.fin {
                INFLATE_FINISHING
            } else if step.full {
                INFLATE_PENDING
            } else {
                INFLATE_IDLE
            };
            (used, step)
        } else {
            // Between frames, with output waiting.
            let step = inflater.step(&[], prefix, false).map_err(inflate_error)?;
            self.inflating = if step.full {
                INFLATE_PENDING
            } else {
                INFLATE_IDLE
            };
            (0, step)
        };
        let streamed = u64::from(self.streamed) + step.produced as u64;
        if streamed > u64::from(self.max_message_size) {
            return Err(ProtocolError::MessageTooBig);
        }
        self.streamed = streamed as u32;
        let done = finishing
            && usize::from(self.inflating - INFLATE_FINISHING) == Inflater::TAIL_LEN
            && !step.full;
        if done {
            let reset = self.deflate.is_some_and(|mode| mode.reset_each_message);
            inflater.end_message(reset);
            self.inflating = INFLATE_IDLE;
            self.compressed = false;
        }
        let output = inflater.output(prefix_len + step.produced);
        let valid = if text && output.len() >= 4 {
            let at = PartAt::InflatedText(output.len());
            return Ok((used, Some(self.found(at, kind, done))));
        } else if text {
            self.utf8
                .split(output)
                .map_err(|_| ProtocolError::InvalidUtf8)?
                .len()
        } else {
            output.len()
        };
        if done && self.utf8.holds() {
            return Err(ProtocolError::InvalidUtf8);
        }
        let at = (valid > 0 || done).then_some(PartAt::Inflated(valid));
        Ok((used, at.map(|at| self.found(at, kind, done))))
    }

    /// Parts mode: a part is handed out; the message ends with its last.
    fn found(&mut self, at: PartAt, kind: DataKind, last: bool) -> FoundPart {
        let first = std::mem::replace(&mut self.part_first, false);
        if last {
            self.message = None;
            self.streamed = 0;
        }
        FoundPart {
            at,
            kind,
            first,
            last,
        }
    }

    /// Parts mode: the event for a part `read_part` found, borrowed from `input`
    /// (where that read began), the validator's code point or the inflater's output.
    pub(super) fn part_event<'a>(
        &'a mut self,
        found: FoundPart,
        input: &'a [u8],
    ) -> Result<Event<'a>, ProtocolError> {
        let unvalidated: Option<&'a [u8]> = match found.at {
            PartAt::InputText(start, end) => Some(&input[start..end]),
            PartAt::InflatedText(len) => {
                Some(self.inflater.as_deref().map_or(&[][..], |i| i.output(len)))
            }
            _ => None,
        };
        if let Some(bytes) = unvalidated {
            // The one validation of these bytes; an unfinished code point at the end
            // is held for the next part.
            let text = self
                .utf8
                .split(bytes)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
            if found.last && self.utf8.holds() {
                return Err(ProtocolError::InvalidUtf8);
            }
            return Ok(Event::Part(Part {
                data: Message::Text(text),
                first: found.first,
                last: found.last,
            }));
        }
        let bytes: &'a [u8] = match found.at {
            PartAt::Input(start, end) | PartAt::InputText(start, end) => &input[start..end],
            PartAt::CodePoint(len) => self.utf8.completed(len),
            PartAt::Inflated(len) | PartAt::InflatedText(len) => {
                self.inflater.as_deref().map_or(&[][..], |i| i.output(len))
            }
        };
        let data = match found.kind {
            // Short pieces and code points validated in `read_part`; checked again
            // (at most a few bytes) to stay free of `unsafe`.
            DataKind::Text => Message::Text(
                crate::proto::utf8::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8)?,
            ),
            DataKind::Binary => Message::Binary(bytes),
        };
        Ok(Event::Part(Part {
            data,
            first: found.first,
            last: found.last,
        }))
    }
}
