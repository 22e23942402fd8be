//! The frame header (RFC 6455 §5.2): decode from and encode into byte slices.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! Decoding checks only what the header alone can tell (reserved opcodes, control frame
//! rules, the 64-bit length's top bit). Rules that depend on the role or on the
//! negotiated extensions (masking, RSV bits) are the receiver's business.

use super::error::ProtocolError;

/// The longest header: 2 bytes + 8 bytes of length + 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode (§5.2; 0x3–0x7 and 0xB–0xF are reserved and rejected on decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// A later fragment of a text or binary message.
    Continuation = 0x0,
    /// The first (or only) frame of a UTF-8 text message.
    Text = 0x1,
    /// The first (or only) frame of a binary message.
    Binary = 0x2,
    /// Starts or answers the close handshake.
    Close = 0x8,
    /// Asks for a pong with the same payload.
    Ping = 0x9,
    /// Answers a ping (or is a unidirectional heartbeat).
    Pong = 0xA,
}

/// The opcode in the low four bits of a frame's first byte; the reserved ones are an
/// error (§5.2: "MUST _Fail the WebSocket Connection_").
impl TryFrom<u8> for Opcode {
    type Error = ProtocolError;

    fn try_from(bits: u8) -> Result<Opcode, ProtocolError> {
        Ok(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }
}

impl Opcode {
    /// Close, ping and pong: never fragmented, at most 125 bytes, allowed between the
    /// fragments of a data message.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// One decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final fragment of its message.
    pub fin: bool,
    /// RSV1, RSV2, RSV3 as the low three bits (RSV1 = 0b100), as on the wire.
    pub rsv: u8,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The masking key; clients must send one, servers must not.
    pub mask: Option<[u8; 4]>,
    /// Payload length as declared (never allocated up front).
    pub payload_len: u64,
}

impl FrameHeader {
    /// Decodes a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a header (the caller waits for
    /// more bytes), or the header and how many bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let (first, second) = match buf {
            [a, b, ..] => (*a, *b),
            _ => return Ok(None),
        };
        let fin = first & 0x80 != 0;
        let rsv = (first >> 4) & 0x7;
        let opcode = Opcode::try_from(first & 0x0F)?;
        let masked = second & 0x80 != 0;
        let short_len = second & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if short_len > MAX_CONTROL_PAYLOAD as u8 {
                return Err(ProtocolError::ControlFrameTooLong);
            }
        }
        let length_bytes = match short_len {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        // Check the length as soon as it is here, before the mask key arrives.
        if buf.len() < 2 + length_bytes {
            return Ok(None);
        }
        let payload_len = match length_bytes {
            2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
            8 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(bytes);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                len
            }
            _ => u64::from(short_len),
        };
        let header_len = 2 + length_bytes + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(None);
        }
        let mask = if masked {
            let at = 2 + length_bytes;
            Some([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
        } else {
            None
        };
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, header_len)))
    }

    /// Encodes the header into `out`, returning how many bytes it used.
    ///
    /// Uses the shortest length encoding, as §5.2 requires ("the minimal number of bytes
    /// MUST be used to encode the length").
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0x7) << 4) | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut at = if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
            2
        } else if self.payload_len <= u64::from(u16::MAX) {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            4
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            10
        };
        if let Some(key) = self.mask {
            out[at..at + 4].copy_from_slice(&key);
            at += 4;
        }
        at
    }

    /// The header of an unmasked, unfragmented server frame carrying a message
    /// compressed by permessage-deflate (RSV1 set, RFC 7692 §6).
    pub fn server_compressed(opcode: Opcode, payload_len: usize) -> FrameHeader {
        FrameHeader {
            rsv: 0b100,
            ..FrameHeader::server(opcode, payload_len)
        }
    }

    /// This header followed by `payload`: a whole frame in one buffer, for sending the
    /// same frame to many connections.
    pub fn frame_with(&self, payload: &[u8]) -> Vec<u8> {
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len = self.encode(&mut header);
        let mut frame = Vec::with_capacity(header_len + payload.len());
        frame.extend_from_slice(&header[..header_len]);
        frame.extend_from_slice(payload);
        frame
    }

    /// The header of an unmasked, unfragmented server frame.
    pub fn server(opcode: Opcode, payload_len: usize) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: payload_len as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(buf: &[u8]) -> (FrameHeader, usize) {
        FrameHeader::decode(buf).unwrap().unwrap()
    }

    #[test]
    fn rfc_5_7_unmasked_text() {
        let (h, n) = decode_all(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(n, 2);
        assert!(h.fin);
        assert_eq!(h.opcode, Opcode::Text);
        assert_eq!(h.mask, None);
        assert_eq!(h.payload_len, 5);
    }

    #[test]
    fn rfc_5_7_masked_text() {
        let (h, n) = decode_all(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f]);
        assert_eq!(n, 6);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(h.payload_len, 5);
    }

    #[test]
    fn rfc_5_7_fragmented_text() {
        let (first, _) = decode_all(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
        assert!(!first.fin);
        assert_eq!(first.opcode, Opcode::Text);
        let (last, _) = decode_all(&[0x80, 0x02, 0x6c, 0x6f]);
        assert!(last.fin);
        assert_eq!(last.opcode, Opcode::Continuation);
    }

    #[test]
    fn rfc_5_7_ping_and_pong() {
        let (ping, _) = decode_all(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(ping.opcode, Opcode::Ping);
        let (pong, n) = decode_all(&[0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(pong.opcode, Opcode::Pong);
        assert_eq!(n, 6);
    }

    #[test]
    fn rfc_5_7_sixteen_and_sixty_four_bit_lengths() {
        // 256 bytes binary: 82 7E 0100; 64 KiB binary: 82 7F 0000000000010000.
        let (h, n) = decode_all(&[0x82, 0x7E, 0x01, 0x00]);
        assert_eq!((h.payload_len, n), (256, 4));
        let (h, n) = decode_all(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn partial_headers_ask_for_more() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for len in 0..full.len() {
            assert_eq!(FrameHeader::decode(&full[..len]), Ok(None), "len {len}");
        }
        assert_eq!(decode_all(&full).1, 14);
    }

    #[test]
    fn rejects_what_the_header_alone_shows_wrong() {
        assert_eq!(
            FrameHeader::decode(&[0x83, 0x80]),
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            FrameHeader::decode(&[0x8B, 0x80]),
            Err(ProtocolError::ReservedOpcode(0xB))
        );
        assert_eq!(
            FrameHeader::decode(&[0x09, 0x80]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            FrameHeader::decode(&[0x89, 0xFE]),
            Err(ProtocolError::ControlFrameTooLong)
        );
        assert_eq!(
            FrameHeader::decode(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::LengthOverflow)
        );
    }

    #[test]
    fn opcodes_from_bits_and_back() {
        for opcode in [
            Opcode::Continuation,
            Opcode::Text,
            Opcode::Binary,
            Opcode::Close,
            Opcode::Ping,
            Opcode::Pong,
        ] {
            assert_eq!(Opcode::try_from(opcode as u8), Ok(opcode));
        }
        for reserved in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(
                Opcode::try_from(reserved),
                Err(ProtocolError::ReservedOpcode(reserved))
            );
        }
    }

    #[test]
    fn encode_uses_minimal_lengths_and_round_trips() {
        for (len, header_len) in [(0u64, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let header = FrameHeader {
                    fin: len % 2 == 0,
                    rsv: 0,
                    opcode: Opcode::Binary,
                    mask,
                    payload_len: len,
                };
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = header.encode(&mut out);
                let expected = header_len + if mask.is_some() { 4 } else { 0 };
                assert_eq!(n, expected);
                assert_eq!(decode_all(&out[..n]), (header, n));
            }
        }
    }
}
