#![warn(missing_docs)]
// The few calls into libc live in `sys` (each with its SAFETY note); nothing else
// may use `unsafe`.
#![deny(unsafe_code)]
//! A single-threaded WebSocket (RFC 6455) server and embeddable reactor on `mio`.
//!
//! One thread runs a hand-rolled event loop over `mio::Poll` that keeps every
//! connection in a `Slab`. Each connection walks handshake → open → closing → closed;
//! client payloads are unmasked in place in a loop-wide read buffer and handed to your
//! [`Handler`] as borrowed slices, never copied on the way in. All of RFC 6455 is
//! implemented — fragmentation, control frames between fragments, the close handshake,
//! fail-fast UTF-8 validation — and every violation closes only the offending
//! connection with the code the RFC asks for.
//!
//! The crate is split the way it thinks:
//!
//! - [`proto`]: the sans-I/O protocol core — pure functions and state machines over
//!   byte slices (handshake, frame header, masking, UTF-8, close codes, the streaming
//!   receiver). Unit-, property- and fuzz-tested without a network.
//! - [`Server`]: the reactor, a thin I/O shell that drives `proto` with the bytes
//!   sockets produce.
//! - [`Reactor`]: N such loops on one address, one per core (`Config::threads`), with
//!   ids, sends, broadcasts and publishes that cross loops through their inboxes.
//! - [`Handler`] and [`Ctx`]: your code, and what it acts through ([`Loop`] where no
//!   connection is in question: server-level timers, [`Handle::defer`]).
//! - [`Config`]: every limit, with its default and the reason for it.
//! - `cluster` (feature `cluster`): topics and broadcast across server processes
//!   through Redis pub/sub, with `Server::attach_cluster`.
//!
//! # Embedding
//!
//! A complete server that upper-cases text messages on `/shout`, and a client
//! (`tungstenite`) talking to it:
//!
//! ```
//! use std::net::SocketAddr;
//! use wsreactor::{Config, Ctx, Decision, Handler, HttpResponse, Message, Request, Server};
//!
//! struct Shout;
//!
//! impl Handler for Shout {
//!     // Per-connection state; this example keeps none.
//!     type Session = ();
//!
//!     // Accept or refuse the upgrade by path, Origin, subprotocol or any header.
//!     fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<()> {
//!         match request.path() {
//!             "/shout" => Decision::accept(),
//!             _ => Decision::Reject(HttpResponse::not_found()),
//!         }
//!     }
//!
//!     // `message` borrows the read buffer it was unmasked in: no copy on the way in.
//!     fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
//!         if let Message::Text(text) = message {
//!             let _ = cx.send_text(&text.to_uppercase());
//!         }
//!     }
//! }
//!
//! let mut server = Server::bind("127.0.0.1:0".parse()?, Config::default(), Shout)?;
//! let addr = server.local_addr();
//! let handle = server.handle(); // for other threads: send, broadcast, shutdown
//! let loop_thread = std::thread::spawn(move || server.run());
//!
//! let (mut client, _) = tungstenite::connect(format!("ws://{addr}/shout"))?;
//! client.send(tungstenite::Message::text("hello"))?;
//! assert_eq!(client.read()?, tungstenite::Message::text("HELLO"));
//!
//! // Graceful shutdown: every client gets a 1001 close, then `run` returns.
//! handle.shutdown()?;
//! assert!(matches!(client.read()?, tungstenite::Message::Close(Some(frame)) if frame.code == 1001.into()));
//! drop(client);
//! loop_thread.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "cluster")]
pub mod cluster;
mod compression;
pub mod config;
mod conn;
mod handle;
pub mod handler;
mod histogram;
mod loops;
mod outbox;
pub mod proto;
mod server;
#[cfg(feature = "signals")]
pub mod signals;
mod stats;
#[allow(unsafe_code)]
mod sys;
mod timer;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

pub use config::{Config, ConfigError};
pub use conn::QueuePolicy;
pub use handle::{Handle, HandleError};
pub use handler::{CloseReason, ConnId, Ctx, Decision, Handler, SendStatus, Session};
pub use histogram::Histogram;
pub use loops::Reactor;
pub use proto::handshake::Request;
pub use proto::http::{HttpResponse, InvalidResponse, StatusCode};
pub use proto::{CloseCode, InvalidCloseCode, Message, Part};
pub use server::{serve, Fanout, Loop, PartError, Server, TimerError, TimerId};
pub use stats::{HistogramMetric, Metric, MetricKind, Stats};
