//! Close codes and the close frame's payload (RFC 6455 §5.5.1, §7.4).

use super::error::ProtocolError;
use super::frame::MAX_CONTROL_PAYLOAD;
use std::fmt;

/// The longest close reason that fits a close frame: the 125-byte control payload
/// (§5.5) minus the 2-byte code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// A close status code, as carried in the first two bytes of a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the server is going down or the browser navigated away.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol (unmasked frame, reserved opcode, ...).
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: "no code was present"; never sent on the wire, only reported locally.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: "closed without a close frame"; never sent, only reported locally.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a text message or close reason was not valid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message violated the endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message was larger than the endpoint will process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: (client only) the server did not negotiate a required extension.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server hit an unexpected condition (for us: a handler panicked).
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (e.g. overloaded).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether a peer may put this code in a close frame.
    ///
    /// §7.4.1 defines 1000–1011 minus the reserved 1004 and the local-only 1005/1006
    /// (1012–1014 were registered with IANA later); 3000–4999 belong to libraries and
    /// applications. Everything else — 0–999, the unassigned rest of 1000–2999, and
    /// 5000 and up — must be answered with a protocol error.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// This code, if it may be put in a close frame; the error otherwise.
    ///
    /// The check applies to our own closes exactly as to the peer's: a peer that
    /// follows §7.4 answers an unsendable code by failing the connection (1002), so
    /// sending one would turn an orderly close into a protocol error on the far side.
    pub fn sendable(self) -> Result<CloseCode, InvalidCloseCode> {
        if self.is_sendable() {
            Ok(self)
        } else {
            Err(InvalidCloseCode(self))
        }
    }
}

/// A close code the application asked to send that may not appear on the wire
/// (see [`CloseCode::is_sendable`]): 1005, 1006 and 1015 are for local reporting only,
/// and 0–999, 1004, the unassigned rest of 1000–2999 and 5000 and up are not codes at
/// all. Nothing is sent and the connection stays as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InvalidCloseCode(pub CloseCode);

impl fmt::Display for InvalidCloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "close code {} may not be sent (RFC 6455 §7.4: use 1000-1003, 1007-1014 or 3000-4999)",
            self.0
        )
    }
}

impl std::error::Error for InvalidCloseCode {}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A parsed close frame payload: a code and a UTF-8 reason, both optional on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The status code.
    pub code: CloseCode,
    /// The reason, validated UTF-8, possibly empty.
    pub reason: &'a str,
}

/// Parses a close frame's (already unmasked) payload.
///
/// An empty payload means "no status" and yields `None`. One byte cannot hold a code
/// (§5.5.1), an unassigned code is a protocol error, and the reason must be UTF-8.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseFrameTooShort),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_sendable() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Encodes a close frame's payload into `out` and returns its length.
///
/// No code means an empty payload: §5.5.1 allows a reason only after a code, so the
/// reason is dropped. Otherwise the code (big-endian) is followed by the reason cut to
/// [`MAX_CLOSE_REASON`] bytes at a UTF-8 character boundary, because a control frame
/// holds at most 125 bytes (§5.5) and a reason cut inside a character is invalid UTF-8
/// that the peer must answer with 1007 (§8.1). The code is written as given: callers
/// that take codes from outside check them with [`CloseCode::sendable`] first.
pub fn encode_close_payload(
    code: Option<CloseCode>,
    reason: &str,
    out: &mut [u8; MAX_CONTROL_PAYLOAD],
) -> usize {
    let Some(code) = code else {
        return 0;
    };
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let (code_bytes, rest) = out.split_at_mut(2);
    code_bytes.copy_from_slice(&code.0.to_be_bytes());
    rest[..cut].copy_from_slice(&reason.as_bytes()[..cut]);
    2 + cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_autobahn_calls_valid_are_sendable() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(code).is_sendable(), "{code}");
        }
    }

    #[test]
    fn reserved_and_unassigned_codes_are_not() {
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_sendable(), "{code}");
        }
    }

    #[test]
    fn parses_code_and_reason() {
        let frame = parse_close_payload(b"\x03\xe8bye").unwrap().unwrap();
        assert_eq!(frame.code, CloseCode::NORMAL);
        assert_eq!(frame.reason, "bye");
        assert_eq!(parse_close_payload(b""), Ok(None));
    }

    #[test]
    fn rejects_short_bad_code_and_bad_reason() {
        assert_eq!(
            parse_close_payload(b"\x03"),
            Err(ProtocolError::CloseFrameTooShort)
        );
        assert_eq!(
            parse_close_payload(b"\x03\xed"),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff"),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn sendable_passes_valid_codes_and_names_the_invalid_one() {
        assert_eq!(CloseCode::NORMAL.sendable(), Ok(CloseCode::NORMAL));
        assert_eq!(CloseCode(4999).sendable(), Ok(CloseCode(4999)));
        for code in [0, 1004, 1005, 1006, 1015, 5000] {
            assert_eq!(
                CloseCode(code).sendable(),
                Err(InvalidCloseCode(CloseCode(code)))
            );
        }
        let shown = InvalidCloseCode(CloseCode::NO_STATUS).to_string();
        assert!(shown.contains("1005"), "{shown}");
    }

    fn encode(code: Option<CloseCode>, reason: &str) -> Vec<u8> {
        let mut out = [0xAA; MAX_CONTROL_PAYLOAD];
        let len = encode_close_payload(code, reason, &mut out);
        out[..len].to_vec()
    }

    #[test]
    fn encodes_code_then_reason() {
        assert_eq!(encode(Some(CloseCode::NORMAL), "bye"), b"\x03\xe8bye");
        assert_eq!(encode(Some(CloseCode(4000)), ""), b"\x0f\xa0");
        // Round trip through our own parser.
        let payload = encode(Some(CloseCode::GOING_AWAY), "server shutting down");
        let frame = parse_close_payload(&payload).unwrap().unwrap();
        assert_eq!(
            (frame.code, frame.reason),
            (CloseCode::GOING_AWAY, "server shutting down")
        );
    }

    #[test]
    fn no_code_means_an_empty_payload_even_with_a_reason() {
        assert_eq!(encode(None, "ignored"), b"");
    }

    #[test]
    fn a_long_ascii_reason_is_cut_to_123_bytes() {
        let reason = "r".repeat(200);
        let payload = encode(Some(CloseCode::NORMAL), &reason);
        assert_eq!(payload.len(), MAX_CONTROL_PAYLOAD);
        assert_eq!(&payload[2..], &reason.as_bytes()[..MAX_CLOSE_REASON]);
        // Exactly 123 bytes fit whole.
        let exact = "x".repeat(MAX_CLOSE_REASON);
        assert_eq!(
            &encode(Some(CloseCode::NORMAL), &exact)[2..],
            exact.as_bytes()
        );
    }

    #[test]
    fn a_character_straddling_byte_123_is_left_out_whole() {
        // 121 ASCII bytes, then "€" (3 bytes: 122..=124), then more: the cut at 123
        // would split the euro sign, so the reason ends before it.
        let reason = format!("{}€tail", "a".repeat(121));
        let payload = encode(Some(CloseCode::NORMAL), &reason);
        assert_eq!(payload.len(), 2 + 121);
        assert_eq!(
            parse_close_payload(&payload).unwrap().unwrap().reason,
            &reason[..121]
        );
        // A 4-byte character ending exactly at 123 is kept.
        let reason = format!("{}𝄞x", "a".repeat(119));
        let payload = encode(Some(CloseCode::NORMAL), &reason);
        assert_eq!(payload.len(), 2 + 123);
        assert!(std::str::from_utf8(&payload[2..]).unwrap().ends_with('𝄞'));
    }

    #[test]
    fn every_cut_of_a_multibyte_reason_stays_utf8() {
        let reason = "é€𝄞".repeat(20);
        for len in 0..=reason.len() {
            let Some(prefix) = reason.get(..len) else {
                continue;
            };
            let payload = encode(Some(CloseCode::NORMAL), prefix);
            assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
            let parsed = parse_close_payload(&payload).unwrap().unwrap();
            assert!(prefix.starts_with(parsed.reason));
            // Cut only as far as the character boundary below 123 bytes asks.
            let room = prefix.len().min(MAX_CLOSE_REASON);
            assert!(
                room - parsed.reason.len() < 4,
                "{len}: {}",
                parsed.reason.len()
            );
        }
    }
}
