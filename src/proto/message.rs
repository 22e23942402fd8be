//! Messages and control events as the application sees them.

use super::close::CloseFrame;

/// A complete data message, borrowed from the reactor's buffers.
///
/// A message that arrived as one unfragmented frame in one read points straight into
/// the read buffer where it was unmasked; only fragmented or partially received messages
/// are assembled in a per-connection buffer first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message: already validated as UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes, whatever the kind.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
        }
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Something the peer said, in the order it said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text or binary message.
    Message(Message<'a>),
    /// A ping; RFC 6455 §5.5.2 wants a pong with the same payload.
    Ping(&'a [u8]),
    /// A pong (unsolicited ones are allowed and ignored, §5.5.3).
    Pong(&'a [u8]),
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame<'a>>),
}
