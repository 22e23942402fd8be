//! The application's side: the [`Handler`] trait and the [`Ctx`] it acts through.

use crate::proto::handshake::Request;
use crate::proto::http::HttpResponse;
use crate::proto::{CloseCode, Message, ProtocolError};
use std::net::SocketAddr;

pub use crate::reactor::Ctx;

/// Identifies one connection for as long as it lives.
///
/// Slots in the connection table are reused; the generation makes an id of a closed
/// connection stay dead instead of silently naming its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}.{}", self.slot, self.generation)
    }
}

/// What to do with an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Open the WebSocket, optionally naming the subprotocol chosen from the client's
    /// offer (it must be one the client offered, or the upgrade fails with 500).
    Accept { protocol: Option<String> },
    /// Answer with this HTTP response (e.g. 403 for a foreign Origin) and close.
    Reject(HttpResponse),
}

impl Decision {
    /// Accept without a subprotocol.
    pub fn accept() -> Decision {
        Decision::Accept { protocol: None }
    }
}

/// What the outcome of a send was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a refused send means the message was dropped"]
pub enum SendStatus {
    /// The whole frame went to the socket.
    Written,
    /// The socket took part or none of it; this many bytes now wait in the connection's
    /// queue and go out as the peer reads.
    Queued(usize),
    /// Nothing was sent: the connection is closing or its queue is over
    /// [`Config::max_send_queue`](crate::Config::max_send_queue).
    Refused,
}

/// Why a WebSocket connection ended, as reported to [`Handler::on_close`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer started the close handshake; `code` is 1005 if its frame had none.
    Peer { code: CloseCode, reason: String },
    /// This side started it (the handler called [`Ctx::close`]) with this code.
    Local { code: CloseCode },
    /// The peer broke the protocol; the connection was failed with the error's code.
    Protocol(ProtocolError),
    /// The TCP connection ended without a close handshake (reported as 1006).
    Abnormal,
}

impl CloseReason {
    /// The close code that describes this ending.
    pub fn code(&self) -> CloseCode {
        match self {
            CloseReason::Peer { code, .. } | CloseReason::Local { code } => *code,
            CloseReason::Protocol(error) => error.close_code(),
            CloseReason::Abnormal => CloseCode::ABNORMAL,
        }
    }
}

/// The application: decides on upgrades and reacts to each connection's events.
///
/// All methods run on the reactor's thread, one at a time; a slow method delays every
/// connection, so hand long work to another thread.
pub trait Handler {
    /// Accept or reject an upgrade request (path, Origin, subprotocols, any header).
    /// The default accepts every request without a subprotocol.
    fn on_request(&mut self, request: &Request<'_>, peer: SocketAddr) -> Decision {
        let _ = (request, peer);
        Decision::accept()
    }

    /// Answer a plain HTTP GET that is not an upgrade (e.g. serve a page). Default: 404.
    fn on_http(&mut self, request: &Request<'_>) -> HttpResponse {
        let _ = request;
        HttpResponse::not_found()
    }

    /// The connection is open: the 101 response has been sent.
    fn on_open(&mut self, cx: &mut Ctx<'_>) {
        let _ = cx;
    }

    /// A complete message arrived. It borrows the reactor's buffers: copy what must
    /// outlive the call.
    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>);

    /// The connection is closed (called once for every connection that was opened).
    fn on_close(&mut self, id: ConnId, reason: &CloseReason) {
        let _ = (id, reason);
    }
}
