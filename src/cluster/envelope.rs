//! The envelope every message travels in between nodes: a 16-byte header (who sent it,
//! text or binary) and the payload, as the module docs of [`cluster`](super) lay out.
//! Pure functions over bytes, like the protocol core: whatever arrives on a channel is
//! parsed here first, and anything that is not an envelope of ours is dropped.

#![forbid(unsafe_code)]

use crate::proto::frame::Opcode;

/// The envelope's header length.
pub const ENVELOPE_HEADER: usize = 16;
const MAGIC: &[u8; 3] = b"WSR";
const VERSION: u8 = 1;

/// Encodes the envelope for `payload` from `origin`.
pub(crate) fn encode(origin: u64, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(match opcode {
        Opcode::Binary => 2,
        _ => 1,
    });
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A parsed envelope: who sent it, and what.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub origin: u64,
    pub opcode: Opcode,
    pub payload: &'a [u8],
}

/// Parses an envelope; `None` for anything that is not one of ours (a foreign
/// publisher, another version, an unknown kind).
pub(crate) fn decode(bytes: &[u8]) -> Option<Envelope<'_>> {
    let header = bytes.get(..ENVELOPE_HEADER)?;
    if &header[..3] != MAGIC || header[3] != VERSION || header[5..8] != [0; 3] {
        return None;
    }
    let opcode = match header[4] {
        1 => Opcode::Text,
        2 => Opcode::Binary,
        _ => return None,
    };
    let origin = u64::from_be_bytes(header[8..16].try_into().ok()?);
    Some(Envelope {
        origin,
        opcode,
        payload: &bytes[ENVELOPE_HEADER..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_foreign_bytes_are_refused() {
        let bytes = encode(0x0102_0304_0506_0708, Opcode::Binary, b"hello");
        assert_eq!(bytes.len(), ENVELOPE_HEADER + 5);
        assert_eq!(&bytes[..8], b"WSR\x01\x02\0\0\0");
        assert_eq!(&bytes[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            decode(&bytes),
            Some(Envelope {
                origin: 0x0102_0304_0506_0708,
                opcode: Opcode::Binary,
                payload: b"hello",
            })
        );
        let text = encode(7, Opcode::Text, b"");
        assert_eq!(decode(&text).map(|e| e.opcode), Some(Opcode::Text));
        assert_eq!(decode(&text).map(|e| e.payload.len()), Some(0));
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(&bytes[..15]), None);
        for at in [0, 3, 4, 5] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert_eq!(decode(&bad), None, "byte {at}");
        }
    }
}
