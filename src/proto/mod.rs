//! The sans-I/O protocol core: pure functions and state machines over byte slices.
//!
//! Nothing in here touches a socket, a clock or the reactor, so every rule of RFC 6455
//! is tested (and fuzzed) by feeding bytes in and looking at what comes out.
//!
//! It is also where every byte a peer sends is parsed, so it holds no `unsafe`, and the
//! compiler keeps it that way: the few calls into libc live in `sys`, outside.
#![forbid(unsafe_code)]

pub mod close;
pub mod closing;
pub mod deflate;
pub mod error;
pub mod extension;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod keepalive;
pub mod mask;
pub mod message;
pub mod query;
pub mod receiver;
pub mod utf8;

pub use close::{CloseCode, CloseFrame, InvalidCloseCode};
pub use closing::{CloseHandshake, CloseState};
pub use error::ProtocolError;
pub use frame::{FrameHeader, Opcode};
pub use keepalive::{Keepalive, KeepaliveDue};
pub use message::{Event, Message, OwnedEvent, Part};
pub use receiver::Receiver;
