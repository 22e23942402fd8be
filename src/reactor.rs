//! The event loop: a thin I/O shell over `mio::Poll` around the sans-I/O core.
//!
//! One thread, one `Poll`, a `Slab` of connections indexed by `Token`. The listener is
//! accepted until `WouldBlock`, sockets are read until `WouldBlock` (or a per-turn cap,
//! for fairness), and every read goes into one loop-wide buffer, where frames are
//! unmasked in place and handed to the [`Handler`] as slices. WRITABLE interest is
//! registered only while a connection has queued output.

use crate::config::Config;
use crate::conn::{Conn, Phase};
use crate::handler::{CloseReason, ConnId, Decision, Handler, SendStatus};
use crate::proto::frame::{Opcode, MAX_CONTROL_PAYLOAD};
use crate::proto::handshake::{accept_response, HandshakeError, Request};
use crate::proto::http::{HttpResponse, StatusCode};
use crate::proto::receiver::Progress;
use crate::proto::{CloseCode, Event, Message, ProtocolError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::Duration;

const LISTENER: Token = Token(usize::MAX);

/// Reads per connection per loop turn before the others get their turn; a connection
/// with more input waiting is picked up again on the next turn.
const MAX_READS_PER_TURN: usize = 16;

/// A WebSocket server: a listener, its connections, and the [`Handler`] they serve.
///
/// ```no_run
/// use wsreactor::{Config, Ctx, Handler, Message, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
///         let _ = cx.send(message);
///     }
/// }
///
/// let mut server = Server::bind("127.0.0.1:9998".parse()?, Config::default(), Echo)?;
/// server.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server<H> {
    poll: Poll,
    events: Events,
    listener: TcpListener,
    conns: Slab<Conn>,
    handler: H,
    config: Config,
    /// The one read buffer the whole loop shares.
    read_buf: Vec<u8>,
    /// Connections that may have unread input left when their turn ended.
    backlog: Vec<usize>,
    next_generation: u32,
}

impl<H: Handler> Server<H> {
    /// Binds a listener on `addr` (port 0 picks a free port; see [`local_addr`]).
    ///
    /// [`local_addr`]: Server::local_addr
    pub fn bind(addr: SocketAddr, config: Config, handler: H) -> io::Result<Server<H>> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            listener,
            conns: Slab::new(),
            handler,
            read_buf: vec![0; config.read_buffer_size.max(MAX_CONTROL_PAYLOAD + 14)],
            config,
            backlog: Vec::new(),
            next_generation: 0,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The handler, e.g. to inspect its state between turns.
    pub fn handler(&mut self) -> &mut H {
        &mut self.handler
    }

    /// How many connections are in the table (in any phase).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Runs the loop until an unrecoverable error of the poller itself.
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            self.turn(None)?;
        }
    }

    /// Waits up to `timeout` for readiness and handles what is ready: one turn of the
    /// loop, for callers that interleave the server with their own work.
    pub fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if self.backlog.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for slot in std::mem::take(&mut self.backlog) {
            self.read(slot);
        }
        // Move the events out so handling them can borrow `self` mutably.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(),
                Token(slot) => {
                    if event.is_writable() {
                        self.writable(slot);
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read(slot);
                    }
                    self.reap(slot);
                }
            }
        }
        self.events = events;
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            let (mut socket, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog for later.
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            // Small frames go out at once; we batch on our side where it matters.
            let _ = socket.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let slot = entry.key();
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut socket, Token(slot), Interest::READABLE)
            {
                log::warn!("{peer}: cannot register: {e}");
                continue;
            }
            self.next_generation = self.next_generation.wrapping_add(1);
            log::debug!("{peer}: connected");
            entry.insert(Conn::new(
                socket,
                peer,
                self.next_generation,
                self.config.max_header_bytes,
                self.config.max_message_size,
            ));
        }
    }

    fn writable(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.flush(self.poll.registry(), Token(slot));
        if conn.read_paused && conn.out.pending() <= self.config.write_high_water / 2 {
            conn.read_paused = false;
            // Edge-triggered: input that waited meanwhile raises no new event.
            self.backlog.push(slot);
        }
    }

    /// Reads until `WouldBlock`, the per-turn cap, or backpressure.
    fn read(&mut self, slot: usize) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            if conn.read_paused || matches!(conn.phase, Phase::Closed) {
                return;
            }
            let n = match (&conn.socket).read(&mut self.read_buf) {
                Ok(0) => return self.eof(slot),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return conn.fail_io(e),
            };
            match conn.phase {
                Phase::Handshake { .. } => self.handshake(slot, n),
                Phase::Open | Phase::CloseSent => {
                    let Server {
                        conns,
                        handler,
                        config,
                        poll,
                        read_buf,
                        ..
                    } = self;
                    frames(
                        conns,
                        poll.registry(),
                        config,
                        handler,
                        slot,
                        &mut read_buf[..n],
                    );
                }
                // Discarding: the stream is over as far as we are concerned.
                Phase::Finishing | Phase::Draining | Phase::Closed => {}
            }
            self.report_close(slot);
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            if conn.out.pending() > self.config.write_high_water {
                conn.read_paused = true;
                return;
            }
        }
        self.backlog.push(slot);
    }

    fn eof(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        match conn.phase {
            Phase::Open | Phase::CloseSent => {
                log::debug!("{}: peer closed TCP without a close handshake", conn.peer);
                if conn.close_reason.is_none() {
                    conn.close_reason = Some(CloseReason::Abnormal);
                }
                conn.phase = Phase::Closed;
            }
            // Nothing worth keeping the socket for once the peer has gone.
            _ => conn.phase = Phase::Closed,
        }
    }

    /// Feeds bytes to the HTTP head reader; once the head is complete, answers it.
    fn handshake(&mut self, slot: usize, n: usize) {
        let registry = self.poll.registry();
        let conn = &mut self.conns[slot];
        let Phase::Handshake { head, reader } = &mut conn.phase else {
            return;
        };
        head.extend_from_slice(&self.read_buf[..n]);
        let end = match reader.poll(head) {
            Ok(None) => return,
            Ok(Some(end)) => end,
            Err(e) => {
                log::debug!("{}: {e}", conn.peer);
                let _ = conn.send_bytes(registry, Token(slot), &e.response().to_bytes());
                return conn.finish(registry, Token(slot));
            }
        };
        let mut head = std::mem::take(head);
        let (response, protocol) = answer(&mut self.handler, &head[..end], conn.peer);
        let _ = conn.send_bytes(registry, Token(slot), &response.to_bytes());
        if !response.is_upgrade() {
            log::debug!("{}: answered HTTP {}", conn.peer, response.status.0);
            return conn.finish(registry, Token(slot));
        }
        conn.phase = Phase::Open;
        conn.protocol = protocol.map(String::into_boxed_str);
        conn.opened = true;
        log::debug!("{}: WebSocket open as {}", conn.peer, id_of(conn, slot));
        let Server {
            conns,
            handler,
            config,
            read_buf: _,
            ..
        } = self;
        handler.on_open(&mut Ctx {
            conns,
            registry,
            config,
            slot,
        });
        // A client may send its first frames right behind the request.
        if end < head.len() {
            frames(conns, registry, config, handler, slot, &mut head[end..]);
        }
    }

    /// Calls `on_close` once the WebSocket is over, and removes a finished connection.
    fn reap(&mut self, slot: usize) {
        self.report_close(slot);
        if matches!(self.conns.get(slot), Some(conn) if matches!(conn.phase, Phase::Closed)) {
            let mut conn = self.conns.remove(slot);
            let _ = self.poll.registry().deregister(&mut conn.socket);
            log::debug!("{}: disconnected", conn.peer);
        }
    }

    fn report_close(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.opened || matches!(conn.phase, Phase::Open | Phase::CloseSent) {
            return;
        }
        conn.opened = false;
        let reason = conn.close_reason.clone().unwrap_or(CloseReason::Abnormal);
        let id = id_of(conn, slot);
        log::debug!(
            "{}: WebSocket {id} closed: {reason:?} (code {})",
            conn.peer,
            reason.code()
        );
        self.handler.on_close(id, &reason);
    }
}

fn id_of(conn: &Conn, slot: usize) -> ConnId {
    ConnId {
        slot: slot as u32,
        generation: conn.generation,
    }
}

/// Decides the HTTP answer to a complete request head: a 101 (with the subprotocol
/// chosen), a refusal, or whatever the handler serves for a plain GET.
fn answer<H: Handler>(
    handler: &mut H,
    head: &[u8],
    peer: SocketAddr,
) -> (HttpResponse, Option<String>) {
    let request = match Request::parse(head) {
        Ok(request) => request,
        Err(e) => return (e.response(), None),
    };
    if request.method() != "GET" {
        return (HandshakeError::MethodNotAllowed.response(), None);
    }
    if !request.wants_websocket() {
        let response = handler.on_http(&request);
        if response.is_upgrade() {
            return (internal_error("on_http returned 101"), None);
        }
        return (response, None);
    }
    let key = match request.validate_upgrade() {
        Ok(key) => key,
        Err(e) => return (e.response(), None),
    };
    match handler.on_request(&request, peer) {
        Decision::Accept {
            protocol: Some(chosen),
        } if !request.protocols().any(|p| p == chosen) => (
            internal_error("handler chose a subprotocol the client did not offer"),
            None,
        ),
        Decision::Accept { protocol } => (accept_response(key, protocol.as_deref()), protocol),
        Decision::Reject(response) if response.is_upgrade() => {
            (internal_error("on_request rejected with 101"), None)
        }
        Decision::Reject(response) => (response, None),
    }
}

fn internal_error(why: &str) -> HttpResponse {
    log::error!("handler error: {why}");
    HttpResponse::text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
}

/// Runs `input` through the connection's receiver and acts on each event in order.
///
/// The receiver is moved out of the table for the duration, so the events it lends
/// (which borrow it and `input`) can be handled with the whole table available to the
/// handler's [`Ctx`].
fn frames<H: Handler>(
    conns: &mut Slab<Conn>,
    registry: &Registry,
    config: &Config,
    handler: &mut H,
    slot: usize,
    input: &mut [u8],
) {
    let mut rx = std::mem::take(&mut conns[slot].rx);
    let mut pos = 0;
    while pos < input.len() && matches!(conns[slot].phase, Phase::Open | Phase::CloseSent) {
        match rx.read(&mut input[pos..]) {
            Ok(Progress { consumed, event }) => {
                pos += consumed;
                if let Some(event) = event {
                    on_event(conns, registry, config, handler, slot, event);
                }
            }
            Err(error) => fail(&mut conns[slot], registry, slot, error),
        }
    }
    conns[slot].rx = rx;
}

fn on_event<H: Handler>(
    conns: &mut Slab<Conn>,
    registry: &Registry,
    config: &Config,
    handler: &mut H,
    slot: usize,
    event: Event<'_>,
) {
    let conn = &mut conns[slot];
    let open = conn.is_open();
    match event {
        Event::Message(message) if open => {
            handler.on_message(
                &mut Ctx {
                    conns,
                    registry,
                    config,
                    slot,
                },
                message,
            );
        }
        // After our close, data is read and dropped until the peer's close arrives.
        Event::Message(_) => {}
        Event::Ping(payload) if open => {
            let _ = conn.send_frame(
                registry,
                Token(slot),
                Opcode::Pong,
                payload,
                config.max_send_queue,
            );
        }
        Event::Ping(_) | Event::Pong(_) => {}
        Event::Close(frame) => {
            if open {
                // §5.5.1: answer with a close, echoing the peer's code.
                let code = frame.map(|f| f.code);
                conn.send_close(registry, Token(slot), code, "");
                conn.close_reason = Some(CloseReason::Peer {
                    code: code.unwrap_or(CloseCode::NO_STATUS),
                    reason: frame.map(|f| f.reason.to_owned()).unwrap_or_default(),
                });
                log::debug!("{}: peer sent close {:?}", conn.peer, code);
            }
            // Either way the close handshake is complete: the server closes TCP first.
            conn.finish(registry, Token(slot));
        }
    }
}

/// Fails the connection (§7.1.7): a close frame with the error's code, then shut down.
fn fail(conn: &mut Conn, registry: &Registry, slot: usize, error: ProtocolError) {
    log::debug!("{}: protocol error: {error}", conn.peer);
    if conn.is_open() {
        conn.send_close(
            registry,
            Token(slot),
            Some(error.close_code()),
            &error.to_string(),
        );
        conn.close_reason = Some(CloseReason::Protocol(error));
    }
    conn.finish(registry, Token(slot));
}

/// What a handler acts through: the current connection, and (through the reactor) the
/// rest of the loop.
pub struct Ctx<'a> {
    conns: &'a mut Slab<Conn>,
    registry: &'a Registry,
    config: &'a Config,
    slot: usize,
}

impl Ctx<'_> {
    fn conn(&self) -> &Conn {
        &self.conns[self.slot]
    }

    /// This connection's id.
    pub fn id(&self) -> ConnId {
        id_of(self.conn(), self.slot)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn().peer
    }

    /// The subprotocol agreed at the upgrade, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.conn().protocol.as_deref()
    }

    /// Bytes waiting in this connection's send queue.
    pub fn queued_bytes(&self) -> usize {
        self.conn().out.pending()
    }

    /// Sends a message as one frame: written through to the socket if it takes it,
    /// queued otherwise, refused if the connection is closing or its queue is full.
    pub fn send(&mut self, message: Message<'_>) -> SendStatus {
        let opcode = match message {
            Message::Text(_) => Opcode::Text,
            Message::Binary(_) => Opcode::Binary,
        };
        self.send_frame(opcode, message.as_bytes())
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.send_frame(Opcode::Text, text.as_bytes())
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, bytes: &[u8]) -> SendStatus {
        self.send_frame(Opcode::Binary, bytes)
    }

    /// Sends a ping (at most 125 bytes of payload, else refused).
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return SendStatus::Refused;
        }
        self.send_frame(Opcode::Ping, payload)
    }

    /// Starts the close handshake with `code` and `reason` (cut to fit 123 bytes).
    /// Messages that arrive until the peer's close are dropped.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        let (registry, slot) = (self.registry, self.slot);
        let conn = &mut self.conns[slot];
        if !conn.is_open() {
            return;
        }
        conn.send_close(registry, Token(slot), Some(code), reason);
        conn.close_reason = Some(CloseReason::Local { code });
        if conn.is_open() {
            conn.phase = Phase::CloseSent;
        }
    }

    fn send_frame(&mut self, opcode: Opcode, payload: &[u8]) -> SendStatus {
        let conn = &mut self.conns[self.slot];
        if !conn.is_open() {
            return SendStatus::Refused;
        }
        conn.send_frame(
            self.registry,
            Token(self.slot),
            opcode,
            payload,
            self.config.max_send_queue,
        )
    }
}

/// Accepts connections on `addr` and serves them with `handler`, forever.
pub fn serve<H: Handler>(addr: SocketAddr, config: Config, handler: H) -> io::Result<()> {
    Server::bind(addr, config, handler)?.run()
}
