//! The application's side: the [`Handler`] trait and the [`Ctx`] it acts through.

use crate::conn::QueuePolicy;
use crate::proto::handshake::Request;
use crate::proto::http::{HttpResponse, StatusCode};
use crate::proto::{CloseCode, Message, Part, ProtocolError};
use crate::stats::Stats;
use std::net::SocketAddr;

pub use crate::server::{Ctx, Loop};

/// Identifies one connection for as long as it lives.
///
/// Slots in the connection table are reused; the generation (the count of connections
/// accepted before this one, 64 bits: it never wraps) makes an id of a closed
/// connection stay dead instead of silently naming its successor. With several loops
/// ([`Reactor`](crate::Reactor)) it also names its loop, so that an id from one loop
/// never addresses a connection on another: a [`Handle`](crate::Handle) call routes by
/// it, and each loop checks it. It displays as `#slot.generation` on loop 0 (the one
/// loop of a [`Server`](crate::Server)) and `#loop:slot.generation` on the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The loop's index: fits in what was padding, so the id stays 16 bytes.
    pub(crate) loop_index: u16,
    pub(crate) slot: u32,
    pub(crate) generation: u64,
}

impl ConnId {
    /// The index of the loop that owns the connection (0 for a single-loop
    /// [`Server`](crate::Server)).
    pub fn loop_index(&self) -> usize {
        usize::from(self.loop_index)
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.loop_index {
            0 => write!(f, "#{}.{}", self.slot, self.generation),
            n => write!(f, "#{n}:{}.{}", self.slot, self.generation),
        }
    }
}

/// What a [`Handler::Session`] must be: any type, with a say in what the default
/// [`Handler::on_request`] does.
///
/// Every `Default` type is one already, and the default `on_request` accepts with
/// `Default::default()`. A type without a sensible default needs no dummy value: it
/// declares itself with one line, and the handler builds each session in `on_request`
/// with [`Decision::accept_with`] (a handler that does not would refuse every upgrade
/// with 500):
///
/// ```
/// use std::net::SocketAddr;
/// use wsreactor::{Ctx, Decision, Handler, Message, Request};
///
/// struct Player {
///     name: String, // from the request: there is no "default player"
/// }
/// impl wsreactor::Session for Player {}
///
/// struct Game;
/// impl Handler for Game {
///     type Session = Player;
///     fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<Player> {
///         let name = request.query().unwrap_or("anonymous").to_owned();
///         Decision::accept_with(Player { name })
///     }
///     fn on_message(&mut self, cx: &mut Ctx<'_, Player>, _message: Message<'_>) {
///         let greeting = format!("hello, {}", cx.session().name);
///         let _ = cx.send_text(&greeting);
///     }
/// }
/// ```
///
/// (Why a trait and not just "no bound": Rust has no way for the default `on_request`
/// to use `Default` only where there is one; this trait is that way, and it is
/// implemented for every `Default` type by a blanket impl, so a type with a default
/// needs nothing.) The connection keeps the session as an `Option`, which costs
/// nothing for `()` or for a type with a niche (`Box`, `String`, `Vec`, an enum).
pub trait Session: Sized {
    /// The session the default [`Handler::on_request`] accepts with; `None` (the
    /// default) makes it refuse with 500 and log why.
    fn default_session() -> Option<Self> {
        None
    }
}

impl<T: Default> Session for T {
    fn default_session() -> Option<T> {
        Some(T::default())
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
        /// What happens when a send would take this connection's queue past its cap;
        /// `None`: [`Config::queue_policy`](crate::Config::queue_policy).
        queue_policy: Option<QueuePolicy>,
    },
    /// Answer with this HTTP response (e.g. 403 for a foreign Origin) and close.
    Reject(HttpResponse),
}

impl<S> Decision<S> {
    /// Accept with a default session and no subprotocol.
    pub fn accept() -> Decision<S>
    where
        S: Default,
    {
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
            queue_policy: None,
        }
    }

    /// Names the subprotocol of an `Accept` (no effect on a `Reject`).
    pub fn with_protocol(mut self, chosen: &str) -> Decision<S> {
        if let Decision::Accept { protocol, .. } = &mut self {
            *protocol = Some(chosen.to_owned());
        }
        self
    }

    /// Refuses permessage-deflate for this connection (e.g. for payloads that are
    /// already compressed, or to save its memory); no effect on a `Reject`.
    pub fn without_compression(mut self) -> Decision<S> {
        if let Decision::Accept { compress, .. } = &mut self {
            *compress = false;
        }
        self
    }

    /// Sets what happens when a send would take this connection's queue past
    /// [`Config::max_send_queue`](crate::Config::max_send_queue), instead of
    /// [`Config::queue_policy`](crate::Config::queue_policy) (e.g. `DropOldest` for a
    /// live price feed, `Refuse` for its order channel); no effect on a `Reject`.
    pub fn with_queue_policy(mut self, policy: QueuePolicy) -> Decision<S> {
        if let Decision::Accept { queue_policy, .. } = &mut self {
            *queue_policy = Some(policy);
        }
        self
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
    /// A send would have taken its queue past `max_send_queue` under
    /// [`QueuePolicy::Close`]: the waiting messages were discarded and the connection
    /// closed with 1008.
    QueueFull,
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
            | CloseReason::QueueFull
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
///
/// A handler is `'static` (it owns its state, or shares it through `Arc`s): the
/// server keeps it for as long as it runs, and [`Handle::defer`](crate::Handle::defer)
/// checks a closure's handler type at run time, which Rust allows for `'static`
/// types only.
pub trait Handler: 'static {
    /// Per-connection state, kept by the reactor beside the connection and lent to
    /// every callback through [`Ctx::session`]: no lookup per message. Use `()` for none.
    /// It needs no `Default`: see [`Session`] for a type without one.
    type Session: Session;

    /// Accept or reject an upgrade request (path, Origin, subprotocols, any header),
    /// building the connection's session from it. The default accepts every request
    /// with the session's default ([`Session::default_session`]); a session type
    /// without one must be built here, else the default refuses with 500.
    /// `peer` is the client's address (for IPv6 without flow info and scope id, which
    /// connections do not keep).
    fn on_request(&mut self, request: &Request<'_>, peer: SocketAddr) -> Decision<Self::Session> {
        let _ = (request, peer);
        match Self::Session::default_session() {
            Some(session) => Decision::accept_with(session),
            None => {
                log::error!(
                    "{}: no session to accept with: a Handler whose Session has no default \
                     builds it in on_request (Decision::accept_with)",
                    std::any::type_name::<Self>()
                );
                Decision::Reject(HttpResponse::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal server error\n",
                ))
            }
        }
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

    /// A timer this connection set with [`Ctx::set_timer`] is due; `token` is what
    /// it was set with. Not called once the connection is closing. A panic closes
    /// the connection (1011), as in any callback with a `Ctx`.
    fn on_timer(&mut self, cx: &mut Ctx<'_, Self::Session>, token: u64) {
        let _ = (cx, token);
    }

    /// A server-level timer set with [`Loop::set_loop_timer`] is due; `token` is
    /// what it was set with. A panic is logged (and counted in
    /// `Stats::handler_panics`) and the loop goes on.
    fn on_loop_timer(&mut self, lp: &mut Loop<Self::Session>, token: u64) {
        let _ = (lp, token);
    }

    /// A connection whose send returned [`SendStatus::Queued`] or
    /// [`SendStatus::Refused`] has written its queue down to the low-water mark (half
    /// of [`Config::write_high_water`](crate::Config::write_high_water), 512 KiB by
    /// default): a producer that stopped can resume. Called once per such episode
    /// (however many sends were queued or refused), after a write the socket took,
    /// and only while the connection is open. Sends through a [`Handle`](crate::Handle)
    /// or a fan-out to this connection count too.
    fn on_drain(&mut self, cx: &mut Ctx<'_, Self::Session>) {
        let _ = cx;
    }

    /// The peer sent a pong (every one: the answer to a keepalive ping or to
    /// [`Ctx::ping`], or an unsolicited heartbeat), with its payload. Keepalive
    /// pings carry 8 bytes, their send time; their round trip is
    /// [`Ctx::ping_rtt`], updated before this is called.
    fn on_pong(&mut self, cx: &mut Ctx<'_, Self::Session>, payload: &[u8]) {
        let _ = (cx, payload);
    }

    /// This connection missed `dropped` messages since the last call while open:
    /// sends refused for its queue cap or the loop's outgoing budget (in-loop, fan-out
    /// or through a [`Handle`](crate::Handle), including refusals the handler saw as
    /// [`SendStatus::Refused`]), and whole messages dropped from its queue by
    /// [`QueuePolicy::DropOldest`]. Called once per connection at the end of the loop
    /// turn in which the drops happened, not once per message, so a publish to
    /// thousands of slow subscribers costs no callback inside its loop. Drops caused
    /// in this callback itself are reported after the next turn. A typical answer:
    /// tell the client to resynchronize, or close it. Also counted in
    /// [`Stats::messages_dropped`].
    fn on_dropped(&mut self, cx: &mut Ctx<'_, Self::Session>, dropped: u64) {
        let _ = (cx, dropped);
    }

    /// The WebSocket is closed (called once for every connection that was opened),
    /// with its session handed back.
    fn on_close(&mut self, id: ConnId, session: Self::Session, reason: &CloseReason) {
        let _ = (id, session, reason);
    }
}
