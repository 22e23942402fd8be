//! How a receiver asks before it holds more of a peer's bytes: the [`MemoryGrant`] the
//! caller passes in (the reactor's incoming budget), and the two ways a buffer grows
//! under it — assembling frames, and appending inflated output.

use crate::proto::deflate::InflateError;
use crate::proto::error::ProtocolError;

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

/// Makes room in `buffer` for `extra` more bytes, asking `memory` for what the buffer
/// grows by (the receiver holds `others` bytes besides the buffer). Growth doubles
/// (capped at `max`, the most the buffer may ever need) so that a message arriving in
/// many pieces is not copied once per piece; if the doubling is refused, exactly what
/// is needed is asked for.
pub(super) fn grow(
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
pub(super) fn append(
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
