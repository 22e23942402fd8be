//! What can go wrong on an open connection, and the close code each answer gets.

use super::close::CloseCode;
use std::fmt;

/// A violation of RFC 6455 by the peer, or of one of our limits.
///
/// Every way the frame stream can be bad is one variant here, and [`close_code`]
/// is the one place that decides which close code the peer is told.
///
/// [`close_code`]: ProtocolError::close_code
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client frame without the MASK bit (§5.1: the server must fail the connection).
    UnmaskedFrame,
    /// RSV1–3 set though no extension that defines them was negotiated (§5.2).
    ReservedBits,
    /// Opcodes 0x3–0x7 and 0xB–0xF are reserved (§5.2).
    ReservedOpcode(u8),
    /// A control frame with more than 125 bytes of payload (§5.5).
    ControlFrameTooLong,
    /// A control frame with FIN clear: control frames cannot be fragmented (§5.5).
    FragmentedControlFrame,
    /// A continuation frame with no fragmented message to continue (§5.4).
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message is still open (§5.4).
    ExpectedContinuation,
    /// A 64-bit payload length with the most significant bit set (§5.2).
    LengthOverflow,
    /// A close payload of one byte (§5.5.1).
    CloseFrameTooShort,
    /// A close code that is reserved or unassigned (§7.4).
    InvalidCloseCode(u16),
    /// A text message or close reason that is not UTF-8 (§8.1).
    InvalidUtf8,
    /// A message longer than `max_message_size`; decided from the frame header, or for
    /// a compressed message while it is inflated.
    MessageTooBig,
    /// A compressed message that is not a valid DEFLATE stream (RFC 7692).
    BadCompressedData,
    /// Holding more of this incomplete message would take the loop past its budget
    /// for incomplete messages (`Config::incoming_budget`): not the peer's fault as
    /// such, so it is told to try again later.
    OverBudget,
}

impl ProtocolError {
    /// The close code to send for this error (§7.4.1).
    pub fn close_code(self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::BadCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::MessageTooBig => CloseCode::MESSAGE_TOO_BIG,
            ProtocolError::OverBudget => CloseCode::TRY_AGAIN_LATER,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnmaskedFrame => f.write_str("client frame is not masked"),
            ProtocolError::ReservedBits => f.write_str("reserved bits set without an extension"),
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::ControlFrameTooLong => f.write_str("control frame over 125 bytes"),
            ProtocolError::FragmentedControlFrame => f.write_str("fragmented control frame"),
            ProtocolError::UnexpectedContinuation => {
                f.write_str("continuation frame without a message to continue")
            }
            ProtocolError::ExpectedContinuation => {
                f.write_str("new data frame inside a fragmented message")
            }
            ProtocolError::LengthOverflow => f.write_str("64-bit length with the top bit set"),
            ProtocolError::CloseFrameTooShort => f.write_str("close payload of one byte"),
            ProtocolError::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8"),
            ProtocolError::MessageTooBig => f.write_str("message over the size limit"),
            ProtocolError::BadCompressedData => f.write_str("invalid compressed data"),
            ProtocolError::OverBudget => f.write_str("server busy: no memory for this message"),
        }
    }
}

impl std::error::Error for ProtocolError {}
