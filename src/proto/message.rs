//! Messages and control events as the application sees them.

use super::close::{CloseCode, CloseFrame};

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

/// A piece of a data message, for a receiver in parts mode: handed on as it arrives
/// instead of assembled whole (see [`Receiver::receive_in_parts`](super::Receiver::receive_in_parts)).
///
/// Parts are borrowed as messages are: from the read buffer where the frame was
/// unmasked, or from the inflater's output chunk for a compressed message. A text
/// part is always valid UTF-8 on its own: a code point split between frames or reads
/// is held back (at most 3 bytes) and handed on complete. Every message yields at
/// least one part (an empty message one empty part with both flags set); a part may
/// be empty only when it is the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'a> {
    /// The message's kind and this part's bytes.
    pub data: Message<'a>,
    /// The first part of its message.
    pub first: bool,
    /// The last part of its message: the message is complete.
    pub last: bool,
}

impl<'a> Part<'a> {
    /// A part of a text message.
    pub fn text(text: &'a str, first: bool, last: bool) -> Part<'a> {
        Part {
            data: Message::Text(text),
            first,
            last,
        }
    }

    /// A part of a binary message.
    pub fn binary(bytes: &'a [u8], first: bool, last: bool) -> Part<'a> {
        Part {
            data: Message::Binary(bytes),
            first,
            last,
        }
    }

    /// Whether the message is text.
    pub fn is_text(&self) -> bool {
        matches!(self.data, Message::Text(_))
    }

    /// This part's bytes, whatever the kind.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.data.as_bytes()
    }

    /// This part's length in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether this part carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Something the peer said, in the order it said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text or binary message.
    Message(Message<'a>),
    /// A piece of a data message, in parts mode.
    Part(Part<'a>),
    /// A ping; RFC 6455 §5.5.2 wants a pong with the same payload.
    Ping(&'a [u8]),
    /// A pong (unsolicited ones are allowed and ignored, §5.5.3).
    Pong(&'a [u8]),
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame<'a>>),
}

/// An [`Event`] with its payload copied out of the buffer it was borrowed from.
///
/// Events borrow the read buffer they were unmasked in, which the next read reuses;
/// an event that must outlive that read (kept for later, handed to another thread,
/// collected to compare two runs in a test) is copied into one of these. The copy
/// costs an allocation per payload, so the reactor itself never makes one.
///
/// ```
/// use wsreactor::proto::{OwnedEvent, Receiver};
///
/// // RFC 6455 §5.7: a masked "Hello".
/// let mut bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
/// let mut receiver = Receiver::new(1024);
/// let event = receiver.read(&mut bytes).expect("a valid frame").event;
/// let kept = event.map(OwnedEvent::from);
/// bytes.fill(0); // the next read would overwrite the buffer
/// assert_eq!(kept, Some(OwnedEvent::Text("Hello".to_owned())));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedEvent {
    /// A complete text message.
    Text(String),
    /// A complete binary message.
    Binary(Vec<u8>),
    /// A part of a message (parts mode): whether the message is text, the part's
    /// bytes, and its first and last flags.
    Part {
        /// The message is text (and `bytes` valid UTF-8).
        text: bool,
        /// The part's bytes.
        bytes: Vec<u8>,
        /// The first part of its message.
        first: bool,
        /// The last part of its message.
        last: bool,
    },
    /// A ping's payload.
    Ping(Vec<u8>),
    /// A pong's payload.
    Pong(Vec<u8>),
    /// A close frame's code and reason; `None` when it carried no status code.
    Close(Option<(CloseCode, String)>),
}

impl From<Event<'_>> for OwnedEvent {
    fn from(event: Event<'_>) -> OwnedEvent {
        match event {
            Event::Message(Message::Text(text)) => OwnedEvent::Text(text.to_owned()),
            Event::Message(Message::Binary(bytes)) => OwnedEvent::Binary(bytes.to_vec()),
            Event::Part(part) => OwnedEvent::Part {
                text: part.is_text(),
                bytes: part.as_bytes().to_vec(),
                first: part.first,
                last: part.last,
            },
            Event::Ping(payload) => OwnedEvent::Ping(payload.to_vec()),
            Event::Pong(payload) => OwnedEvent::Pong(payload.to_vec()),
            Event::Close(frame) => OwnedEvent::Close(
                frame.map(|CloseFrame { code, reason }| (code, reason.to_owned())),
            ),
        }
    }
}
