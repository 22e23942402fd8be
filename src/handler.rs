//! The application's side: the [`Handler`] trait and the [`Ctx`] it acts through.

use crate::proto::handshake::Request;
use crate::proto::http::HttpResponse;
use crate::proto::{CloseCode, Message, Part, ProtocolError};
use crate::stats::Stats;
use std::net::SocketAddr;

pub use crate::server::Ctx;

/// Identifies one connection for as long as it lives.
///
/// Slots in the connection table are reused; the generation (the count of connections
/// accepted before this one, 64 bits: it never wraps) makes an id of a closed
/// connection stay dead instead of silently naming its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) slot: u32,
    pub(crate) generation: u64,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}.{}", self.slot, self.generation)
    }
}

/// What to do with an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<S> {
    /// Open the WebSocket with this per-connection state, optionally naming the
    /// subprotocol chosen from the client's offer (it must be one the client offered,
    /// or the upgrade fails with 500). `compress: false` vetoes permessage-deflate for
    /// this connection even when [`Config::deflate`](crate::Config::deflate) is on.
    Accept {
        /// The subprotocol to answer with, if any.
        protocol: Option<String>,
        /// The connection's state, lent to every callback.
        session: S,
        /// Whether permessage-deflate may be negotiated for this connection.
        compress: bool,
    },
    /// Answer with this HTTP response (e.g. 403 for a foreign Origin) and close.
    Reject(HttpResponse),
}

impl<S: Default> Decision<S> {
    /// Accept with a default session and no subprotocol.
    pub fn accept() -> Decision<S> {
        Decision::accept_with(S::default())
    }
}

impl<S> Decision<S> {
    /// Accept with `session` as the connection's state (built from the request: its
    /// path, a header, an authenticated user...).
    pub fn accept_with(session: S) -> Decision<S> {
        Decision::Accept {
            protocol: None,
            session,
            compress: true,
        }
    }

    /// Names the subprotocol of an `Accept` (no effect on a `Reject`).
    pub fn with_protocol(self, chosen: &str) -> Decision<S> {
        match self {
            Decision::Accept {
                session, compress, ..
            } => Decision::Accept {
                protocol: Some(chosen.to_owned()),
                session,
                compress,
            },
            reject => reject,
        }
    }

    /// Refuses permessage-deflate for this connection (e.g. for payloads that are
    /// already compressed, or to save its memory); no effect on a `Reject`.
    pub fn without_compression(self) -> Decision<S> {
        match self {
            Decision::Accept {
                protocol, session, ..
            } => Decision::Accept {
                protocol,
                session,
                compress: false,
            },
            reject => reject,
        }
    }
}

/// What the outcome of a send was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a refused send means the message was dropped"]
pub enum SendStatus {
    /// Sent, with no backlog: the frame went to the socket, or (a frame of up to
    /// 16 KiB) joins the one write the loop makes for this connection at the end of
    /// the current event, so the replies to many frames leave together.
    Written,
    /// The socket is not keeping up: this many bytes now wait in the connection's
    /// queue and go out as the peer reads.
    Queued(usize),
    /// Nothing was sent: the connection is closing or its queue is over
    /// [`Config::max_send_queue`](crate::Config::max_send_queue).
    Refused,
    /// Nothing was sent: a message sent in parts ([`Ctx::send_part`]) is open on the
    /// connection, and no other message may start until its last part is sent
    /// (interleaving them would corrupt the stream). Pings and closes are not
    /// affected.
    Busy,
}

/// Why a WebSocket connection ended, as reported to [`Handler::on_close`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer started the close handshake; `code` is 1005 if its frame had none.
    Peer {
        /// The peer's code (1005 if its close frame had none).
        code: CloseCode,
        /// The peer's reason, possibly empty.
        reason: String,
    },
    /// This side started it (the handler called [`Ctx::close`]) with this code.
    Local {
        /// The code we sent.
        code: CloseCode,
    },
    /// The peer broke the protocol; the connection was failed with the error's code.
    Protocol(ProtocolError),
    /// The handler panicked while handling this connection; it was closed with 1011.
    HandlerPanic,
    /// The peer did not answer a keepalive ping in time; closed with 1011.
    KeepaliveTimeout,
    /// The peer left its send queue full past the stall timeout; closed with 1008.
    SendStalled,
    /// The server shut down; closed with 1001.
    Shutdown,
    /// A half-received message got none of its bytes for `Config::message_timeout`;
    /// closed with 1008.
    MessageTimeout,
    /// Dropped without a close handshake because its send queue was among the largest
    /// when the loop's outgoing budget ran out (a reader that stopped reading);
    /// reported as 1008.
    OutgoingBudget,
    /// The TCP connection ended without a close handshake (reported as 1006).
    Abnormal,
}

impl CloseReason {
    /// The close code that describes this ending.
    pub fn code(&self) -> CloseCode {
        match self {
            CloseReason::Peer { code, .. } | CloseReason::Local { code } => *code,
            CloseReason::Protocol(error) => error.close_code(),
            CloseReason::HandlerPanic | CloseReason::KeepaliveTimeout => CloseCode::INTERNAL_ERROR,
            CloseReason::SendStalled
            | CloseReason::MessageTimeout
            | CloseReason::OutgoingBudget => CloseCode::POLICY_VIOLATION,
            CloseReason::Shutdown => CloseCode::GOING_AWAY,
            CloseReason::Abnormal => CloseCode::ABNORMAL,
        }
    }
}

/// The application: decides on upgrades and reacts to each connection's events.
///
/// All methods run on the reactor's thread, one at a time; a slow method delays every
/// connection, so hand long work to another thread (and come back through a
/// [`Handle`](crate::Handle)). A panic in a method closes only the connection it was
/// handling (1011), and the loop goes on.
pub trait Handler {
    /// Per-connection state, kept by the reactor beside the connection and lent to
    /// every callback through [`Ctx::session`]: no lookup per message. Use `()` for none.
    type Session: Default;

    /// Accept or reject an upgrade request (path, Origin, subprotocols, any header),
    /// building the connection's session from it. The default accepts every request.
    /// `peer` is the client's address (for IPv6 without flow info and scope id, which
    /// connections do not keep).
    fn on_request(&mut self, request: &Request<'_>, peer: SocketAddr) -> Decision<Self::Session> {
        let _ = (request, peer);
        Decision::accept()
    }

    /// Answer a plain HTTP GET that is not an upgrade (e.g. serve a page). Default: 404.
    fn on_http(&mut self, request: &Request<'_>) -> HttpResponse {
        let _ = request;
        HttpResponse::not_found()
    }

    /// What the loop calls for a plain HTTP GET: [`on_http`](Handler::on_http) with
    /// the server's [`Stats`] at hand, for a handler that serves them (e.g. a
    /// `/metrics` endpoint, with [`Stats::write_prometheus`]). Counters are current;
    /// gauges are as of the end of the previous loop turn. The default calls
    /// `on_http`, so a handler implements one or the other.
    fn on_http_with(&mut self, request: &Request<'_>, stats: &Stats) -> HttpResponse {
        let _ = stats;
        self.on_http(request)
    }

    /// The connection is open: the 101 response has been sent.
    fn on_open(&mut self, cx: &mut Ctx<'_, Self::Session>) {
        let _ = cx;
    }

    /// A complete message arrived. It borrows the reactor's buffers: copy what must
    /// outlive the call.
    fn on_message(&mut self, cx: &mut Ctx<'_, Self::Session>, message: Message<'_>);

    /// A part of a message arrived, on a connection that receives messages in parts
    /// ([`Config::message_parts`](crate::Config::message_parts), or
    /// [`Ctx::receive_in_parts`] in `on_open`) instead of whole through
    /// [`on_message`](Handler::on_message).
    ///
    /// Parts are handed on as they arrive, borrowed from the read buffer (or, for a
    /// compressed message, from the inflater's output), so the server holds no copy
    /// of the message whatever its size: limited by
    /// [`Config::max_streamed_message_size`](crate::Config::max_streamed_message_size)
    /// instead of `max_message_size`. Every message gives at least one part, the
    /// first with [`Part::first`] set and the last with [`Part::last`] (one part may
    /// be both); only a last part may be empty. A text part is valid UTF-8 on its own.
    /// The default drops the part.
    fn on_part(&mut self, cx: &mut Ctx<'_, Self::Session>, part: Part<'_>) {
        let _ = (cx, part);
    }

    /// The WebSocket is closed (called once for every connection that was opened),
    /// with its session handed back.
    fn on_close(&mut self, id: ConnId, session: Self::Session, reason: &CloseReason) {
        let _ = (id, session, reason);
    }
}
