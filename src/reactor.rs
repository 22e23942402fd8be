//! The event loop: a thin I/O shell over `mio::Poll` around the sans-I/O core.
//!
//! One thread, one `Poll`, a `Slab` of connections indexed by `Token`. The listener is
//! accepted until `WouldBlock`, sockets are read until `WouldBlock` (or a per-turn cap,
//! for fairness), and every read goes into one loop-wide buffer, where frames are
//! unmasked in place and handed to the [`Handler`] as slices. WRITABLE interest is
//! registered only while a connection has queued output. Deadlines (handshake, close,
//! keepalive, send stall) live in a heap the loop consults for its poll timeout, and a
//! `mio::Waker` is the only door in from other threads ([`Handle`]).

use crate::compression::Compression;
use crate::config::{Config, Timeouts};
use crate::conn::ConnDeflate;
use crate::conn::{Conn, Handshake, Io, Phase, Wait};
use crate::handle::{Command, Handle, Inbox, Payload};
use crate::handler::{CloseReason, ConnId, Decision, Handler, SendStatus};
use crate::outbox::{Meter, SharedFrame};
use crate::proto::deflate::{self, DeflateParams};
use crate::proto::extension::parse_offers;
use crate::proto::frame::{FrameHeader, Opcode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::proto::handshake::{accept_response, HandshakeError, HeadReader, Request};
use crate::proto::http::{HttpResponse, StatusCode};
use crate::proto::receiver::Progress;
use crate::proto::{CloseCode, Event, InvalidCloseCode, Message, ProtocolError};
use crate::stats::Stats;
use crate::timer::{deadline_after, Clock, DeadlineQueue, Millis, When};
use crate::topics::Topics;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

const LISTENER: Token = Token(usize::MAX);

/// Pending connections the kernel may queue for us (tokio's default too).
const LISTEN_BACKLOG: libc::c_int = 1024;
const WAKER: Token = Token(usize::MAX - 1);

/// Reads per connection per loop turn before the others get their turn; a connection
/// with more input waiting is picked up again on the next turn.
const MAX_READS_PER_TURN: usize = 16;

/// How long accepting pauses after the process ran out of file descriptors. Pending
/// clients wait in the kernel's backlog meanwhile; retrying sooner would only spin.
const ACCEPT_BACKOFF: Millis = 100;

/// Everything the loop owns except the poller, the listener and the handler: the part
/// a [`Ctx`] lends to the handler.
struct Core<S> {
    conns: Slab<Conn<S>>,
    io: Io,
    /// Bytes the receivers hold now (`Stats::incoming_bytes`), against
    /// `Config::incoming_budget`.
    incoming: usize,
    /// Budget closes not yet logged: logged once per burst, not per connection.
    budget_log: BurstLog,
    /// When memory was last handed back to the system, and the most held since.
    trim: HeapTrim,
    config: Config,
    timeouts: Timeouts,
    timers: DeadlineQueue,
    topics: Topics,
    stats: Stats,
    clock: Clock,
    /// The loop's time, read once per turn.
    now: Millis,
    /// Connections whose state changed outside their own event (a handler closed
    /// them, a broadcast failed on them): settled at the end of the turn.
    touched: Vec<usize>,
    /// Connections that may have unread input left when their turn ended.
    backlog: Vec<usize>,
    /// Connections still in the handshake phase.
    handshaking: usize,
    shutdown_requested: bool,
    compression: Compression,
}

/// A WebSocket server: a listener, its connections, and the [`Handler`] they serve.
///
/// ```no_run
/// use wsreactor::{Config, Ctx, Handler, Message, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     type Session = ();
///     fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
///         let _ = cx.send(message);
///     }
/// }
///
/// let mut server = Server::bind("127.0.0.1:9998".parse()?, Config::default(), Echo)?;
/// server.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server<H: Handler> {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    core: Core<H::Session>,
    handler: H,
    /// The one read buffer the whole loop shares.
    read_buf: Vec<u8>,
    inbox: Arc<Inbox>,
    commands: VecDeque<Command>,
    /// Accepting is paused until then (the process ran out of file descriptors).
    accept_paused_until: Option<Millis>,
    /// Out of descriptors since the last successful accept (logged once).
    accept_exhausted: bool,
    /// The last turn stopped accepting at `max_accepts_per_turn`: the listener may
    /// hold more connections, and (edge-triggered) will raise no new event for them.
    accept_more: bool,
    /// Set once shutdown began: connections get until then to finish closing.
    shutdown_deadline: Option<Millis>,
    finished: bool,
}

impl<H: Handler> Server<H> {
    /// Binds a listener on `addr` (port 0 picks a free port; see [`local_addr`]).
    ///
    /// A `config` that [`Config::validate`] refuses is an error of kind
    /// `InvalidInput` carrying its message, before anything is bound.
    ///
    /// [`local_addr`]: Server::local_addr
    pub fn bind(addr: SocketAddr, config: Config, handler: H) -> io::Result<Server<H>> {
        config.check()?;
        let listener = std::net::TcpListener::bind(addr)?;
        // std listens with a backlog of 128: a burst of connects larger than that
        // overflows it, and each overflowed client waits a SYN retry (a second or
        // more). Listening again on a bound socket just raises the backlog.
        // SAFETY: listen() on a descriptor we own; the kernel caps it at somaxconn.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Server::from_listener(listener, config, handler)
    }

    /// Serves on a listener the caller set up (bound, listening). A `config` that
    /// [`Config::validate`] refuses is an error of kind `InvalidInput`.
    pub fn from_listener(
        listener: std::net::TcpListener,
        config: Config,
        handler: H,
    ) -> io::Result<Server<H>> {
        config.check()?;
        config.log_warnings();
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let clock = Clock::new();
        let reserved = reserved_slots::<H::Session>(&config);
        Ok(Server {
            events: Events::with_capacity(1024),
            listener: Some(listener),
            local_addr,
            core: Core {
                conns: Slab::with_capacity(reserved),
                io: Io {
                    registry: poll.registry().try_clone()?,
                    meter: Meter::default(),
                },
                incoming: 0,
                budget_log: BurstLog::default(),
                trim: HeapTrim::default(),
                timeouts: config.timeouts(),
                timers: DeadlineQueue::with_capacity(reserved),
                topics: Topics::default(),
                stats: Stats::default(),
                clock,
                now: clock.now(),
                touched: Vec::new(),
                backlog: Vec::new(),
                handshaking: 0,
                shutdown_requested: false,
                compression: Compression::new(config.deflate_level),
                config: config.clone(),
            },
            poll,
            handler,
            read_buf: vec![
                0;
                config
                    .read_buffer_size
                    .max(MAX_CONTROL_PAYLOAD + MAX_HEADER_LEN)
            ],
            inbox: Arc::new(Inbox::new(waker, config.handle_queue_capacity.max(1))),
            commands: VecDeque::new(),
            accept_paused_until: None,
            accept_exhausted: false,
            accept_more: false,
            shutdown_deadline: None,
            finished: false,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for other threads: send, broadcast, publish, close, shut down.
    pub fn handle(&self) -> Handle {
        Handle {
            inbox: Arc::clone(&self.inbox),
        }
    }

    /// The handler, e.g. to inspect its state between turns.
    pub fn handler(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// How many connections are in the table (in any phase).
    pub fn connection_count(&self) -> usize {
        self.core.conns.len()
    }

    /// Whether a shutdown has completed (then `run` has returned).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Runs the loop until a graceful shutdown completes ([`Handle::shutdown`]), or an
    /// unrecoverable error of the poller itself.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.finished {
            self.turn(None)?;
        }
        Ok(())
    }

    /// Starts a graceful shutdown: stop accepting, send close 1001 to every open
    /// connection, and finish once they are closed or the close timeout has passed
    /// (with no close timeout, once they are all closed).
    pub fn shutdown(&mut self) {
        self.core.shutdown_requested = true;
        self.settle();
    }

    /// Waits up to `timeout` for readiness and handles what is ready: one turn of the
    /// loop, for callers that interleave the server with their own work.
    pub fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        let timeout = self.poll_timeout(timeout);
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.core.now = self.core.clock.now();
        self.core.io.meter.set_now(self.core.now);
        for slot in std::mem::take(&mut self.core.backlog) {
            self.read(slot, true);
            self.settle_conn(slot);
        }
        if std::mem::take(&mut self.accept_more) {
            self.accept();
        }
        // Move the events out so handling them can borrow `self` mutably.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(),
                WAKER => self.run_commands(),
                Token(slot) => {
                    if event.is_writable() {
                        self.writable(slot);
                    }
                    if event.is_read_closed() || event.is_error() {
                        self.read(slot, true);
                    } else if event.is_readable() {
                        self.read(slot, false);
                    }
                    self.settle_conn(slot);
                }
            }
            self.settle();
        }
        self.events = events;
        if self
            .accept_paused_until
            .is_some_and(|until| until <= self.core.now)
        {
            self.accept_paused_until = None;
            self.accept();
        }
        self.expire_deadlines();
        self.settle();
        self.core.enforce_outgoing_budget();
        self.settle();
        self.core.update_gauges();
        Ok(())
    }

    fn poll_timeout(&self, requested: Option<Duration>) -> Option<Duration> {
        if !self.core.backlog.is_empty() || self.accept_more {
            return Some(Duration::ZERO);
        }
        let now = self.core.clock.now();
        let wakeups = [
            self.core.timers.next(),
            self.accept_paused_until,
            self.shutdown_deadline,
            self.core.trim.due(),
        ];
        let due = wakeups
            .into_iter()
            .flatten()
            .min()
            // +1: wake just after the deadline, not a hair before it.
            .map(|at| Duration::from_millis(at.saturating_sub(now).saturating_add(1)));
        match (requested, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Accepts up to `max_accepts_per_turn` connections: a connect flood must not
    /// keep the loop here while open connections wait for their reads and writes.
    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..self.core.config.max_accepts_per_turn.max(1) {
            let Some(listener) = &self.listener else {
                return;
            };
            let (socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    // EMFILE/ENFILE: pending clients stay in the kernel's backlog; pause
                    // instead of spinning on an accept that cannot succeed, and log once
                    // per burst (until an accept succeeds again).
                    if !self.accept_exhausted {
                        log::warn!("accept paused, retrying every {ACCEPT_BACKOFF} ms: {e}");
                        self.accept_exhausted = true;
                    }
                    self.accept_paused_until = Some(self.core.now + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            if self.accept_exhausted {
                log::info!("accepting again");
                self.accept_exhausted = false;
            }
            self.core.stats.accepted += 1;
            if self.core.conns.len() >= self.core.config.max_connections
                || self.core.handshaking >= self.core.config.max_handshakes
            {
                self.core.stats.refused += 1;
                log::debug!("{peer}: refused with 503 (connection limits)");
                refuse_busy(socket);
                continue;
            }
            self.core.add(socket, peer);
        }
        // The cap was reached before WouldBlock: come back next turn.
        self.accept_more = self.listener.is_some();
    }

    fn writable(&mut self, slot: usize) {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(slot) else {
            return;
        };
        conn.flush(&core.io, Token(slot));
        if conn.stalled_since.is_some() && conn.out.pending() <= core.config.max_send_queue / 2 {
            conn.stalled_since = When::NONE;
        }
        if conn.read_paused && conn.out.pending() <= core.config.write_high_water / 2 {
            conn.read_paused = false;
            // Edge-triggered: input that waited meanwhile raises no new event.
            core.backlog.push(slot);
        }
    }

    /// Reads until the socket is drained, the per-turn cap, or backpressure.
    ///
    /// A read that returns less than the buffer size has emptied the socket, so unless
    /// `until_would_block` is set we stop there instead of paying one more syscall
    /// for the `WouldBlock` (as nginx does): with edge-triggered readiness, bytes that
    /// arrive after that read raise a new event. A FIN that came with the data has
    /// already been reported (`is_read_closed`), and then we do read to the end.
    fn read(&mut self, slot: usize, until_would_block: bool) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.core.conns.get_mut(slot) else {
                return;
            };
            if conn.read_paused || matches!(conn.phase, Phase::Closed) {
                return;
            }
            let n = match (&conn.socket).read(&mut self.read_buf) {
                Ok(0) => return self.core.eof(slot),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return conn.fail_io(e),
            };
            conn.last_seen = self.core.now;
            if conn.phase == Phase::Open {
                // Anything from the peer answers a keepalive ping.
                conn.since = When::NONE;
            }
            match conn.phase {
                Phase::Handshake => self.handshake(slot, n),
                Phase::Open | Phase::CloseSent => {
                    let was = (conn.rx.is_mid_message(), conn.rx.data_received());
                    frames(
                        &mut self.core,
                        &mut self.handler,
                        slot,
                        &mut self.read_buf[..n],
                    );
                    if let Some(conn) = self.core.conns.get_mut(slot) {
                        let now = (conn.rx.is_mid_message(), conn.rx.data_received());
                        // A message that began or grew: its stall clock starts again.
                        if now.0 && (!was.0 || was.1 != now.1) {
                            conn.progress = When::at(self.core.now);
                        }
                    }
                }
                // Discarding: the stream is over as far as we are concerned.
                Phase::Finishing | Phase::Draining | Phase::Closed => {}
            }
            let Some(conn) = self.core.conns.get_mut(slot) else {
                return;
            };
            if conn.out.pending() > self.core.config.write_high_water {
                conn.read_paused = true;
                return;
            }
            if n < self.read_buf.len() && !until_would_block {
                return;
            }
        }
        self.core.backlog.push(slot);
    }

    /// Feeds bytes to the HTTP head reader; once the head is complete, answers it.
    fn handshake(&mut self, slot: usize, n: usize) {
        let core = &mut self.core;
        let conn = &mut core.conns[slot];
        if conn.phase != Phase::Handshake {
            return;
        }
        // The start of a request that did not come in one read is kept, and counted in
        // the incoming budget like any other incomplete message.
        let held = conn.head_bytes();
        let wanted = match conn.extras.as_ref().and_then(|e| e.handshake.as_ref()) {
            None => n,
            Some(Handshake { head, .. }) => (head.len() + n).saturating_sub(head.capacity()),
        };
        let partial = held > 0;
        if partial && wanted > 0 && !core.grant_incoming(slot, held, wanted) {
            return refuse_upgrade(core, slot);
        }
        let conn = &mut core.conns[slot];
        let (polled, mut owned) = match conn.extras.as_mut().and_then(|e| e.handshake.as_mut()) {
            // The usual case: the whole request in one read, answered straight from
            // the read buffer, with no copy and no allocation.
            None => {
                let mut reader = HeadReader::new(core.config.max_header_bytes);
                match reader.poll(&self.read_buf[..n]) {
                    Ok(None) => {
                        if !core.grant_incoming(slot, held, wanted) {
                            return refuse_upgrade(core, slot);
                        }
                        let head = self.read_buf[..n].to_vec();
                        core.conns[slot].extras_mut().handshake = Some(Handshake { head, reader });
                        return;
                    }
                    polled => (polled, None),
                }
            }
            Some(Handshake { head, reader }) => {
                head.reserve_exact(n);
                head.extend_from_slice(&self.read_buf[..n]);
                match reader.poll(head) {
                    Ok(None) => return,
                    polled => (polled, Some(std::mem::take(head))),
                }
            }
        };
        let conn = &mut core.conns[slot];
        if let Some(extras) = &mut conn.extras {
            extras.handshake = None;
            conn.shed_extras();
        }
        // The head is answered now and dropped at the end of this call.
        if partial {
            core.adjust_incoming(held + wanted, 0);
        }
        let conn = &mut core.conns[slot];
        let end = match polled {
            Ok(Some(end)) => end,
            Ok(None) => return,
            Err(e) => {
                log::debug!("{}: {e}", conn.peer);
                core.stats.http_responses += 1;
                let _ = conn.send_bytes(&core.io, Token(slot), &e.response().to_bytes());
                return conn.finish(&core.io, Token(slot));
            }
        };
        let bytes = match &mut owned {
            Some(head) => &mut head[..],
            None => &mut self.read_buf[..n],
        };
        upgrade(core, &mut self.handler, slot, bytes, end);
    }

    fn run_commands(&mut self) {
        self.inbox.drain_into(&mut self.commands);
        while let Some(command) = self.commands.pop_front() {
            let core = &mut self.core;
            match command {
                Command::Send(id, payload) => {
                    if let Some(slot) = core.slot_of(id) {
                        let (opcode, bytes) = payload.parts();
                        let _ = core.send(slot, opcode, bytes);
                        core.touched.push(slot);
                    }
                }
                Command::Broadcast(payload) => {
                    let (opcode, bytes) = payload.parts();
                    core.broadcast(opcode, bytes);
                }
                Command::Publish(topic, payload) => {
                    let (opcode, bytes) = payload.parts();
                    core.publish(&topic, opcode, bytes);
                }
                Command::Close(id, code, reason) => {
                    if let Some(slot) = core.slot_of(id) {
                        core.close(slot, code, &reason, CloseReason::Local { code });
                    }
                }
                Command::Shutdown => core.shutdown_requested = true,
            }
        }
        // Settled once for the whole batch, so the sends queued for one connection
        // leave in one write.
        self.settle();
    }

    /// Acts on every deadline that has passed.
    fn expire_deadlines(&mut self) {
        let now = self.core.now;
        while let Some(slot) = self.core.timers.due(now) {
            let Some(conn) = self.core.conns.get(slot) else {
                self.core.timers.remove(slot);
                continue;
            };
            match conn.next_deadline(&self.core.timeouts) {
                Some((at, wait)) if at <= now => {
                    self.core.timers.remove(slot);
                    self.core.on_deadline(slot, wait);
                    self.settle_conn(slot);
                    // Every wait moves the connection on; should one not, it must not
                    // spin this loop.
                    if self.core.timers.queued(slot).is_some_and(|at| at <= now) {
                        self.core.timers.set(slot, now + 1);
                    }
                }
                // The deadline moved later since the entry was queued: move the entry.
                Some((at, _)) => self.core.timers.set(slot, at),
                None => self.core.timers.remove(slot),
            }
        }
        if let Some(deadline) = self.shutdown_deadline {
            if deadline <= now {
                for slot in self.core.slots() {
                    self.core.conns[slot].phase = Phase::Closed;
                    self.settle_conn(slot);
                }
            }
        }
    }

    /// Settles every touched connection and a requested shutdown.
    fn settle(&mut self) {
        while let Some(slot) = self.core.touched.pop() {
            self.settle_conn(slot);
        }
        if self.core.shutdown_requested && self.shutdown_deadline.is_none() {
            self.begin_shutdown();
        }
        if self.shutdown_deadline.is_some() && self.core.conns.is_empty() && !self.finished {
            log::info!("shutdown complete");
            self.finished = true;
            self.inbox.close();
        }
    }

    fn begin_shutdown(&mut self) {
        log::info!(
            "shutting down: closing {} connections",
            self.core.conns.len()
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // Without a close timeout (zero or "never"), shutdown waits for every peer's
        // close: MAX is a deadline that never comes.
        let close = self.core.timeouts.close;
        self.shutdown_deadline =
            Some(close.map_or(Millis::MAX, |close| deadline_after(self.core.now, close)));
        for slot in self.core.slots() {
            let conn = &mut self.core.conns[slot];
            match conn.phase {
                Phase::Handshake => conn.phase = Phase::Closed,
                Phase::Open => {
                    let reason = CloseReason::Shutdown;
                    self.core
                        .close(slot, CloseCode::GOING_AWAY, "server shutting down", reason);
                }
                _ => {}
            }
            self.settle_conn(slot);
        }
    }

    /// After anything happened on a connection: report a finished WebSocket to the
    /// handler, remove a closed connection, or reschedule its deadline.
    fn settle_conn(&mut self, slot: usize) {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(slot) else {
            return;
        };
        // First the write that was corked for this connection: it can fail (the peer
        // reset), and a connection that fails here must still be reported below, not
        // dropped unseen with its session and topics.
        if conn.unflushed {
            conn.flush(&core.io, Token(slot));
        }
        if conn.is_closing() && conn.since.is_none() {
            conn.since = When::at(core.now);
        }
        if conn.opened && !matches!(conn.phase, Phase::Open | Phase::CloseSent) {
            conn.opened = false;
            let reason = conn.take_close_reason().unwrap_or(CloseReason::Abnormal);
            let session = std::mem::take(&mut conn.session);
            let id = ConnId {
                slot: slot as u32,
                generation: conn.generation,
            };
            log::debug!(
                "{}: WebSocket {id} closed: {reason:?} (code {})",
                conn.peer,
                reason.code()
            );
            let topics = conn.extras.as_mut().map(|e| std::mem::take(&mut e.topics));
            for topic in topics.unwrap_or_default() {
                core.topics.unsubscribe(&topic, slot);
            }
            core.stats.open_connections -= 1;
            core.stats.count_close(reason.code().0);
            if matches!(reason, CloseReason::Protocol(_)) {
                core.stats.protocol_errors += 1;
            }
            let handler = &mut self.handler;
            if catch_unwind(AssertUnwindSafe(|| handler.on_close(id, session, &reason))).is_err() {
                log::error!("handler panicked in on_close for {id}");
                core.stats.handler_panics += 1;
            }
        }
        let Some(conn) = core.conns.get_mut(slot) else {
            return;
        };
        if conn.counted_as_handshake && conn.phase != Phase::Handshake {
            conn.counted_as_handshake = false;
            core.handshaking -= 1;
        }
        if matches!(conn.phase, Phase::Closed) {
            let mut conn = core.conns.remove(slot);
            core.timers.remove(slot);
            let held = conn.rx.held() + conn.head_bytes();
            core.compression.release(&mut conn.rx);
            core.adjust_incoming(held, 0);
            let _ = core.io.registry.deregister(&mut conn.socket);
            log::debug!("{}: disconnected", conn.peer);
            return;
        }
        match conn.next_deadline(&core.timeouts) {
            Some((at, _)) => core.timers.schedule(slot, at),
            None => core.timers.remove(slot),
        }
    }
}

impl<H: Handler> Drop for Server<H> {
    fn drop(&mut self) {
        // Handles outlive the server: tell them it is gone.
        self.inbox.close();
    }
}

/// Connection slots (and deadline entries) reserved up front. Reserving costs address
/// space, not memory: the pages are touched only as connections arrive. What it saves:
/// a slab grown by doubling copies every connection during an accept burst (a latency
/// spike in the loop) and leaves the old copy behind in the allocator, which showed as
/// about 20 bytes of RSS per idle connection. Past this many the slab grows as usual.
/// Capped at 65,536 slots and at about 16 MiB of address space (a large `Session` makes
/// fewer), so that a strict overcommit policy is not asked for much up front.
fn reserved_slots<S>(config: &Config) -> usize {
    let by_size = (16 << 20) / std::mem::size_of::<Conn<S>>();
    config.max_connections.min(1 << 16).min(by_size)
}

fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Answers a connection whose request head cannot be kept (the incoming budget is
/// full) with 503, and closes it.
fn refuse_upgrade<S>(core: &mut Core<S>, slot: usize) {
    let conn = &mut core.conns[slot];
    log::debug!("{}: refused with 503 (incoming budget)", conn.peer);
    core.stats.http_responses += 1;
    core.stats.incoming_budget_closes += 1;
    let _ = conn.send_bytes(&core.io, Token(slot), &busy_response());
    conn.finish(&core.io, Token(slot));
}

/// `503 Service Unavailable` with `Retry-After: 1`: what an overloaded server says.
fn busy_response() -> Vec<u8> {
    HttpResponse::text(StatusCode::SERVICE_UNAVAILABLE, "server busy\n")
        .with_header("Retry-After", "1")
        .to_bytes()
}

/// Answers a connection over our limits with 503 and closes it, without giving it a
/// slot: a refusal must cost less than a connection.
fn refuse_busy(mut socket: TcpStream) {
    let response = busy_response();
    // Drain what the client already sent, so closing does not reset the connection
    // and destroy the answer before the client reads it.
    let mut sink = [0u8; 1024];
    let _ = socket.read(&mut sink);
    let _ = socket.write(&response);
    let _ = socket.shutdown(Shutdown::Both);
}

/// Answers a complete request head (`bytes[..end]`) and, if it was an accepted
/// upgrade, opens the connection and reads any frames the client sent right behind it.
fn upgrade<H: Handler>(
    core: &mut Core<H::Session>,
    handler: &mut H,
    slot: usize,
    bytes: &mut [u8],
    end: usize,
) {
    let conn = &mut core.conns[slot];
    let peer = conn.peer.get();
    let (response, accepted) = answer(handler, &core.config, &bytes[..end], peer);
    // Every answer to a request head is written here, so it is checked here: a
    // handler's response (from `on_http`, a `Reject`, or the 101 with the subprotocol
    // it chose) that would inject header lines becomes a 500 and the upgrade is off.
    let (response, accepted) = match response.validate() {
        Ok(()) => (response, accepted),
        Err(e) => (internal_error(&format!("invalid response: {e}")), None),
    };
    let _ = conn.send_bytes(&core.io, Token(slot), &response.to_bytes());
    let Some(accepted) = accepted else {
        log::debug!("{peer}: answered HTTP {}", response.status.0);
        core.stats.http_responses += 1;
        return conn.finish(&core.io, Token(slot));
    };
    if conn.phase == Phase::Closed {
        // The 101 could not be written (the peer is gone): nothing was opened.
        return;
    }
    conn.phase = Phase::Open;
    conn.since = When::NONE;
    if let Some(protocol) = accepted.protocol {
        conn.extras_mut().protocol = Some(protocol.into_boxed_str());
    }
    conn.session = accepted.session;
    if let Some(params) = accepted.deflate {
        conn.rx.enable_deflate(params.client_no_context_takeover);
        conn.extras_mut().deflate = Some(ConnDeflate {
            params,
            deflater: None,
        });
    }
    conn.opened = true;
    core.stats.handshakes += 1;
    core.stats.open_connections += 1;
    log::debug!("{peer}: WebSocket open as {}", core.id(slot));
    guard(core, slot, |cx| handler.on_open(cx));
    // A client may send its first frames right behind the request.
    if end < bytes.len() {
        frames(core, handler, slot, &mut bytes[end..]);
    }
}

/// What an accepted upgrade carries into the open connection.
struct Accepted<S> {
    protocol: Option<String>,
    session: S,
    deflate: Option<DeflateParams>,
}

/// Decides the HTTP answer to a complete request head: a 101 (with the subprotocol
/// and session), a refusal, or whatever the handler serves for a plain GET.
fn answer<H: Handler>(
    handler: &mut H,
    config: &Config,
    head: &[u8],
    peer: SocketAddr,
) -> (HttpResponse, Option<Accepted<H::Session>>) {
    let request = match Request::parse(head) {
        Ok(request) => request,
        Err(e) => return (e.response(), None),
    };
    if request.method() != "GET" {
        return (HandshakeError::MethodNotAllowed.response(), None);
    }
    if !request.wants_websocket() {
        return match catch_unwind(AssertUnwindSafe(|| handler.on_http(&request))) {
            Ok(response) if !response.is_upgrade() => (response, None),
            Ok(_) => (internal_error("on_http answered 101"), None),
            Err(_) => (internal_error("on_http panicked"), None),
        };
    }
    let key = match request.validate_upgrade() {
        Ok(key) => key,
        Err(e) => return (e.response(), None),
    };
    if !config.origin_allowed(request.origin()) {
        log::debug!("{peer}: Origin {:?} not allowed", request.origin());
        return (
            HttpResponse::text(StatusCode::FORBIDDEN, "origin not allowed\n"),
            None,
        );
    }
    // With compression on, a malformed extensions header fails the handshake
    // (RFC 6455 §9.1 grammar); with it off, the header is not our business.
    let offers = if config.deflate {
        match parse_offers(request.headers_named("Sec-WebSocket-Extensions")) {
            Ok(offers) => offers,
            Err(e) => {
                let body = format!("bad request: {e}\n");
                return (HttpResponse::text(StatusCode::BAD_REQUEST, &body), None);
            }
        }
    } else {
        Vec::new()
    };
    match catch_unwind(AssertUnwindSafe(|| handler.on_request(&request, peer))) {
        Ok(Decision::Accept {
            protocol: Some(chosen),
            ..
        }) if !request.protocols().any(|p| p == chosen) => (
            internal_error("handler chose a subprotocol the client did not offer"),
            None,
        ),
        Ok(Decision::Accept {
            protocol,
            session,
            compress,
        }) => {
            let deflate = compress
                .then(|| deflate::negotiate(&offers, config.deflate_policy()))
                .flatten();
            let mut response = accept_response(key, protocol.as_deref());
            if let Some(params) = &deflate {
                response =
                    response.with_header("Sec-WebSocket-Extensions", &params.response_header());
            }
            let accepted = Accepted {
                protocol,
                session,
                deflate,
            };
            (response, Some(accepted))
        }
        Ok(Decision::Reject(response)) if response.is_upgrade() => {
            (internal_error("on_request rejected with 101"), None)
        }
        Ok(Decision::Reject(response)) => (response, None),
        Err(_) => (internal_error("on_request panicked"), None),
    }
}

fn internal_error(why: &str) -> HttpResponse {
    log::error!("handler error: {why}");
    HttpResponse::text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
}

impl Payload {
    fn parts(&self) -> (Opcode, &[u8]) {
        match self {
            Payload::Text(text) => (Opcode::Text, text.as_bytes()),
            Payload::Binary(bytes) => (Opcode::Binary, bytes),
        }
    }
}

fn opcode_of(message: &Message<'_>) -> Opcode {
    match message {
        Message::Text(_) => Opcode::Text,
        Message::Binary(_) => Opcode::Binary,
    }
}

/// Runs a handler callback for `slot`, turning a panic into a 1011 close of that
/// connection alone.
fn guard<S>(core: &mut Core<S>, slot: usize, callback: impl FnOnce(&mut Ctx<'_, S>)) {
    let result = catch_unwind(AssertUnwindSafe(|| callback(&mut Ctx { core, slot })));
    if result.is_err() {
        let conn = &core.conns[slot];
        log::error!(
            "{}: handler panicked; closing {} with 1011",
            conn.peer,
            core.id(slot)
        );
        core.stats.handler_panics += 1;
        core.close(
            slot,
            CloseCode::INTERNAL_ERROR,
            "internal error",
            CloseReason::HandlerPanic,
        );
        // Stop parsing: whatever the peer sends next, the handler is not trusted with it.
        let conn = &mut core.conns[slot];
        if matches!(conn.phase, Phase::CloseSent) {
            conn.finish(&core.io, Token(slot));
        }
    }
}

/// Runs `input` through the connection's receiver and acts on each event in order.
///
/// The receiver is moved out of the table for the duration, so the events it lends
/// (which borrow it and `input`) can be handled with the whole table available to the
/// handler's [`Ctx`].
fn frames<H: Handler>(core: &mut Core<H::Session>, handler: &mut H, slot: usize, input: &mut [u8]) {
    let mut rx = std::mem::take(&mut core.conns[slot].rx);
    let (held, had_inflater) = (rx.held(), rx.holds_inflater());
    core.compression.lend_inflater(&mut rx);
    core.adjust_incoming(held, rx.held());
    let parsing =
        |core: &Core<H::Session>| matches!(core.conns[slot].phase, Phase::Open | Phase::CloseSent);
    let mut pos = 0;
    while pos < input.len() && parsing(core) {
        // What `core.incoming` counts for this receiver. Every growth asks the budget
        // first (which may close others to make room), after counting what the
        // receiver freed meanwhile (the buffer of the message it delivered last).
        let mut counted = rx.held();
        let result = rx.read_within(&mut input[pos..], &mut |holds, bytes| {
            core.adjust_incoming(counted, holds);
            counted = holds;
            let ok = core.grant_incoming(slot, holds, bytes);
            if ok {
                counted += bytes;
            }
            ok
        });
        match result {
            Ok(Progress { consumed, event }) => {
                pos += consumed;
                if let Some(event) = event {
                    on_event(core, handler, slot, event);
                }
            }
            Err(error) => {
                if error == ProtocolError::OverBudget {
                    core.stats.incoming_budget_closes += 1;
                    core.budget_log
                        .note("incoming budget full: closing connections with 1013");
                }
                core.fail(slot, error);
            }
        }
        core.adjust_incoming(counted, rx.held());
    }
    let held = rx.held();
    core.compression.reclaim_inflater(&mut rx, had_inflater);
    if !parsing(core) {
        // Failed or finishing: nothing more will be parsed, so nothing is kept.
        core.compression.release(&mut rx);
    }
    core.adjust_incoming(held, rx.held());
    core.conns[slot].rx = rx;
}

fn on_event<H: Handler>(
    core: &mut Core<H::Session>,
    handler: &mut H,
    slot: usize,
    event: Event<'_>,
) {
    let conn = &mut core.conns[slot];
    let open = conn.is_open();
    match event {
        Event::Message(message) if open => {
            core.stats.messages_in += 1;
            core.stats.bytes_in += message.len() as u64;
            guard(core, slot, |cx| handler.on_message(cx, message));
        }
        // After our close, data is read and dropped until the peer's close arrives.
        Event::Message(_) => {}
        Event::Ping(payload) if open => {
            let _ = conn.send_frame(
                &core.io,
                Token(slot),
                Opcode::Pong,
                payload,
                core.config.max_send_queue,
            );
        }
        Event::Ping(_) | Event::Pong(_) => {}
        Event::Close(frame) => {
            if open {
                // §5.5.1: answer with a close, echoing the peer's code.
                let code = frame.map(|f| f.code);
                conn.send_close(&core.io, Token(slot), code, "");
                conn.set_close_reason(CloseReason::Peer {
                    code: code.unwrap_or(CloseCode::NO_STATUS),
                    reason: frame.map(|f| f.reason.to_owned()).unwrap_or_default(),
                });
                log::debug!("{}: peer sent close {:?}", conn.peer, code);
            }
            // Either way the close handshake is complete: the server closes TCP first.
            conn.finish(&core.io, Token(slot));
        }
    }
}

impl<S: Default> Core<S> {
    fn add(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        // Small frames go out at once; batching is ours to do, not Nagle's.
        let _ = socket.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) = self
            .io
            .registry
            .register(&mut socket, Token(slot), Interest::READABLE)
        {
            log::warn!("{peer}: cannot register: {e}");
            return;
        }
        let generation = self.stats.accepted;
        log::debug!("{peer}: connected");
        entry.insert(Conn::new(socket, peer, generation, &self.config, self.now));
        self.handshaking += 1;
        self.touched.push(slot);
    }
}

impl<S> Core<S> {
    fn id(&self, slot: usize) -> ConnId {
        ConnId {
            slot: slot as u32,
            generation: self.conns[slot].generation,
        }
    }

    /// The slot of a live connection, if `id` still names one.
    fn slot_of(&self, id: ConnId) -> Option<usize> {
        let slot = id.slot as usize;
        match self.conns.get(slot) {
            Some(conn) if conn.generation == id.generation => Some(slot),
            _ => None,
        }
    }

    fn eof(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if matches!(conn.phase, Phase::Open | Phase::CloseSent) {
            log::debug!("{}: peer closed TCP without a close handshake", conn.peer);
            conn.note_close_reason(CloseReason::Abnormal);
        }
        // Nothing worth keeping the socket for once the peer has gone.
        conn.phase = Phase::Closed;
    }

    /// Sends one frame to an open connection, counting it and noting a stall.
    fn send(&mut self, slot: usize, opcode: Opcode, payload: &[u8]) -> SendStatus {
        if !self.conns[slot].is_open() {
            self.stats.sends_refused += 1;
            return SendStatus::Refused;
        }
        // A connection that is behind queues whatever it is sent: it needs room in
        // the outgoing budget first. (One that is not writes through; what the socket
        // does not take is queued and the budget is enforced at the end of the turn.)
        if self.conns[slot].out.pending() > 0 && !self.outgoing_room(slot, payload.len()) {
            self.count_send(slot, SendStatus::Refused, payload.len());
            return SendStatus::Refused;
        }
        let conn = &mut self.conns[slot];
        let (io, max_queue) = (&self.io, self.config.max_send_queue);
        let compress = payload.len() >= self.config.deflate_threshold
            && matches!(opcode, Opcode::Text | Opcode::Binary);
        let deflate = conn.extras.as_mut().and_then(|e| e.deflate.as_mut());
        let status = match deflate {
            Some(deflate) if compress => {
                let compressed = self.compression.compress(deflate, payload);
                let header = FrameHeader::server_compressed(opcode, compressed.len());
                conn.send_with_header(io, Token(slot), header, compressed, max_queue)
            }
            _ => conn.send_frame(io, Token(slot), opcode, payload, max_queue),
        };
        self.count_send(slot, status, payload.len());
        status
    }

    fn count_send(&mut self, slot: usize, status: SendStatus, len: usize) {
        match status {
            SendStatus::Written | SendStatus::Queued(_) => {
                self.stats.messages_out += 1;
                self.stats.bytes_out += len as u64;
            }
            SendStatus::Refused => {
                self.stats.sends_refused += 1;
                let conn = &mut self.conns[slot];
                if conn.is_open() && conn.stalled_since.is_none() {
                    conn.stalled_since = When::at(self.now);
                    self.touched.push(slot);
                }
            }
        }
    }

    /// Every connection's slot: a copy, so the table can change while they are visited.
    fn slots(&self) -> Vec<usize> {
        self.conns.iter().map(|(slot, _)| slot).collect()
    }

    /// Sends one message to every open connection (encoded once).
    fn broadcast(&mut self, opcode: Opcode, payload: &[u8]) -> Fanout {
        let slots = self.slots();
        self.fanout(&slots, opcode, payload)
    }

    /// Sends one message to every subscriber of `topic` (encoded once).
    fn publish(&mut self, topic: &str, opcode: Opcode, payload: &[u8]) -> Fanout {
        let slots = self.topics.members(topic).to_vec();
        self.fanout(&slots, opcode, payload)
    }

    /// Sends one message to each open connection in `slots`, encoded once (and
    /// compressed once, for receivers that can share a compressed frame). Receivers
    /// that are behind queue the one shared copy.
    fn fanout(&mut self, slots: &[usize], opcode: Opcode, payload: &[u8]) -> Fanout {
        let encoded = FrameHeader::server(opcode, payload.len()).frame_with(payload);
        let plain = SharedFrame::new(encoded, &self.io.meter);
        self.stats.fanout_frames_encoded += 1;
        let bits = self.config.deflate_window_bits.clamp(9, 15);
        let shares_compressed = |conn: &Conn<S>| {
            conn.deflate().is_some_and(|d| {
                d.params.server_no_context_takeover && d.params.server_max_window_bits == bits
            })
        };
        let compressed = (payload.len() >= self.config.deflate_threshold
            && matches!(opcode, Opcode::Text | Opcode::Binary)
            && slots
                .iter()
                .any(|&slot| self.conns.get(slot).is_some_and(shares_compressed)))
        .then(|| {
            self.stats.fanout_frames_encoded += 1;
            let frame = self.compression.encode_shared(bits, opcode, payload);
            SharedFrame::new(frame, &self.io.meter)
        });
        let payload_len = payload.len();
        let mut fanout = Fanout::default();
        for &slot in slots {
            let Some(conn) = self.conns.get(slot) else {
                continue;
            };
            if !conn.is_open() {
                continue;
            }
            let frame = match &compressed {
                Some(compressed) if shares_compressed(conn) => compressed,
                _ => &plain,
            };
            let behind = conn.out.pending() > 0;
            let status = if behind && !self.outgoing_room(slot, frame.bytes().len()) {
                SendStatus::Refused
            } else {
                let max_queue = self.config.max_send_queue;
                self.conns[slot].send_shared(&self.io, Token(slot), frame, max_queue)
            };
            match status {
                SendStatus::Refused => fanout.refused += 1,
                _ => {
                    fanout.sent += 1;
                    self.stats.fanout_deliveries += 1;
                }
            }
            self.count_send(slot, status, payload_len);
            self.touched.push(slot);
        }
        fanout
    }

    /// Starts the close handshake on an open connection.
    fn close(&mut self, slot: usize, code: CloseCode, reason: &str, why: CloseReason) {
        let conn = &mut self.conns[slot];
        if !conn.is_open() {
            return;
        }
        conn.send_close(&self.io, Token(slot), Some(code), reason);
        conn.set_close_reason(why);
        if conn.is_open() {
            conn.enter_closing(Phase::CloseSent);
        }
        self.touched.push(slot);
    }

    /// Fails the connection (§7.1.7): a close frame with the error's code, then shut down.
    fn fail(&mut self, slot: usize, error: ProtocolError) {
        let conn = &mut self.conns[slot];
        log::debug!("{}: protocol error: {error}", conn.peer);
        if conn.is_open() {
            conn.send_close(
                &self.io,
                Token(slot),
                Some(error.close_code()),
                &error.to_string(),
            );
            conn.set_close_reason(CloseReason::Protocol(error));
        }
        conn.finish(&self.io, Token(slot));
    }

    /// A connection's deadline passed: what it was waiting for did not happen.
    fn on_deadline(&mut self, slot: usize, wait: Wait) {
        let now = self.now;
        let conn = &mut self.conns[slot];
        match wait {
            Wait::Handshake => {
                log::debug!("{}: handshake timed out", conn.peer);
                conn.phase = Phase::Closed;
            }
            Wait::SendStall => {
                log::debug!("{}: send queue full for too long", conn.peer);
                let why = CloseReason::SendStalled;
                self.close(slot, CloseCode::POLICY_VIOLATION, "send queue full", why);
            }
            Wait::MessageProgress => {
                log::debug!("{}: half-received message stalled", conn.peer);
                self.stats.message_timeouts += 1;
                conn.send_close(
                    &self.io,
                    Token(slot),
                    Some(CloseCode::POLICY_VIOLATION),
                    "message timeout",
                );
                conn.set_close_reason(CloseReason::MessageTimeout);
                conn.finish(&self.io, Token(slot));
                self.release_incoming(slot);
            }
            Wait::Pong => {
                log::debug!("{}: no answer to keepalive ping", conn.peer);
                conn.send_close(
                    &self.io,
                    Token(slot),
                    Some(CloseCode::INTERNAL_ERROR),
                    "keepalive timeout",
                );
                conn.set_close_reason(CloseReason::KeepaliveTimeout);
                // A peer that does not answer pings will not answer a close either.
                conn.phase = Phase::Closed;
            }
            Wait::Idle => {
                let _ = conn.send_frame(
                    &self.io,
                    Token(slot),
                    Opcode::Ping,
                    b"keepalive",
                    usize::MAX,
                );
                conn.since = When::at(now);
                // Quiet for a whole idle period: give back the buffers its last
                // messages left (they are kept while traffic flows, so that the
                // echo path allocates nothing per message).
                conn.flush(&self.io, Token(slot));
                conn.out.shed();
                let held = conn.rx.held();
                conn.rx.shed_buffers();
                let after = conn.rx.held();
                self.adjust_incoming(held, after);
            }
            Wait::Close => {
                log::debug!("{}: close timed out", conn.peer);
                conn.phase = Phase::Closed;
            }
        }
    }

    /// Brings the incoming total up to date after a receiver went from holding
    /// `before` bytes to `after`.
    fn adjust_incoming(&mut self, before: usize, after: usize) {
        self.incoming = (self.incoming + after).saturating_sub(before);
    }

    /// Takes back everything a connection's receiver holds (it will parse no more).
    fn release_incoming(&mut self, slot: usize) {
        let rx = &mut self.conns[slot].rx;
        let held = rx.held();
        self.compression.release(rx);
        self.adjust_incoming(held, 0);
    }

    /// Lets `asking` (whose receiver is out of the table, reading) hold `bytes` more,
    /// if the incoming budget has room or can be made to have it. `asking_holds` is
    /// what it holds already.
    fn grant_incoming(&mut self, asking: usize, asking_holds: usize, bytes: usize) -> bool {
        let budget = self.config.incoming_budget;
        if self.incoming + bytes > budget {
            self.make_incoming_room(asking, asking_holds + bytes, self.incoming + bytes - budget);
        }
        if self.incoming + bytes > budget {
            return false;
        }
        self.incoming += bytes;
        true
    }

    /// Frees at least `needed` bytes of the incoming budget if it can, for a connection
    /// that would then hold `wanted`: first the buffers idle connections keep for
    /// reuse, then stalled half-received messages (longest stalled first), then any
    /// holder larger than `wanted` (largest first). Closed ones get 1013.
    fn make_incoming_room(&mut self, asking: usize, wanted: usize, needed: usize) {
        let target = self.incoming.saturating_sub(needed);
        // Buffers kept for reuse by connections between messages: free, no harm done.
        for (slot, conn) in self.conns.iter_mut() {
            if self.incoming <= target {
                return;
            }
            if slot != asking && !conn.rx.is_mid_message() && conn.rx.held() > 0 {
                let held = conn.rx.held();
                conn.rx.shed_buffers();
                self.incoming = (self.incoming + conn.rx.held()).saturating_sub(held);
            }
        }
        let stalled_before = self.now.saturating_sub(STALL_GRACE);
        let mut holders: Vec<(bool, Millis, usize, usize)> = self
            .conns
            .iter()
            .filter(|&(slot, conn)| {
                slot != asking
                    && conn.rx.is_mid_message()
                    && conn.rx.held() > 0
                    && matches!(conn.phase, Phase::Open | Phase::CloseSent)
            })
            .map(|(slot, conn)| {
                let progress = conn.progress.get().unwrap_or(0);
                let stalled = progress <= stalled_before;
                (stalled, progress, conn.rx.held(), slot)
            })
            .filter(|&(stalled, _, held, _)| stalled || held > wanted)
            .collect();
        // Stalled first, longest stalled first; then the largest.
        holders.sort_unstable_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| if a.0 { a.1.cmp(&b.1) } else { b.2.cmp(&a.2) })
        });
        for (_, _, _, slot) in holders {
            if self.incoming <= target {
                return;
            }
            self.stats.incoming_budget_closes += 1;
            self.budget_log
                .note("incoming budget full: closing connections with 1013");
            self.release_incoming(slot);
            self.fail(slot, ProtocolError::OverBudget);
            self.touched.push(slot);
        }
    }

    /// Whether `bytes` more may be queued for `slot`, after dropping the largest queues
    /// of other connections if the outgoing budget is short.
    fn outgoing_room(&mut self, slot: usize, bytes: usize) -> bool {
        let budget = self.config.outgoing_budget;
        if self.io.meter.get() + bytes <= budget {
            return true;
        }
        self.make_outgoing_room(Some(slot), bytes);
        self.io.meter.get() + bytes <= budget
    }

    /// Called at the end of every turn: write-through sends that the socket did not
    /// take may have queued past the budget.
    fn enforce_outgoing_budget(&mut self) {
        if self.io.meter.get() > self.config.outgoing_budget {
            self.make_outgoing_room(None, 0);
        }
    }

    /// Drops connections whose send queues have not moved for longest — readers that
    /// stopped reading — until `bytes` more fit with an eighth of the budget to spare (so that a stream
    /// of sends does not rescan every connection each time).
    fn make_outgoing_room(&mut self, except: Option<usize>, bytes: usize) {
        let budget = self.config.outgoing_budget;
        let target = (budget - budget / 8).saturating_sub(bytes);
        // The queue that has not moved for longest first (a reader that stopped
        // reading), the largest first among equals. Not the largest alone: a reader that
        // keeps up may have a large queue for a moment, and shared frames are freed only
        // when every queue that holds them is gone.
        let mut queues: Vec<(u64, std::cmp::Reverse<usize>, usize)> = self
            .conns
            .iter()
            .filter(|&(slot, conn)| Some(slot) != except && conn.out.pending() > 0)
            .map(|(slot, conn)| {
                (
                    conn.out.last_moved(),
                    std::cmp::Reverse(conn.out.pending()),
                    slot,
                )
            })
            .collect();
        queues.sort_unstable();
        for (_, _, slot) in queues {
            if self.io.meter.get() <= target {
                break;
            }
            let conn = &mut self.conns[slot];
            log::debug!(
                "{}: dropped: its send queue took the outgoing budget",
                conn.peer
            );
            conn.out.clear();
            conn.note_close_reason(CloseReason::OutgoingBudget);
            conn.phase = Phase::Closed;
            self.stats.outgoing_budget_closes += 1;
            self.budget_log
                .note("outgoing budget full: dropped the connections with the largest send queues");
            self.touched.push(slot);
        }
    }

    /// Copies the gauges into the stats, and logs budget closes once per burst.
    fn update_gauges(&mut self) {
        self.stats.handshakes_in_progress = self.handshaking as u64;
        self.stats.deadline_entries = self.timers.len() as u64;
        self.stats.incoming_bytes = self.incoming as u64;
        self.stats.outgoing_bytes = self.io.meter.get() as u64;
        self.stats.topic_memberships = self.topics.memberships() as u64;
        self.stats.inflaters_lent = self.compression.lent() as u64;
        self.budget_log.report(self.now);
        self.trim
            .after_turn(self.incoming + self.io.meter.get(), self.now);
    }
}

/// A half-received message that has not grown for this long counts as stalled when the
/// incoming budget needs room: its connection is closed before any that is sending.
const STALL_GRACE: Millis = 1000;

/// Gives freed message and queue memory back to the system once a lot of it has been
/// freed and stayed free for a second (an attack closed out of the budgets, a burst of
/// large messages over): otherwise the allocator keeps it, and RSS stays at the peak.
/// Not while large messages keep flowing: the next one would fault every page in again.
#[derive(Debug, Default)]
struct HeapTrim {
    high_water: usize,
    low_since: Option<Millis>,
}

/// Freed bytes (of what the budgets count) worth a trim.
const TRIM_AFTER_FREEING: usize = 16 << 20;

/// How long that much must stay free before the trim.
const TRIM_AFTER_QUIET: Millis = 1000;

impl HeapTrim {
    /// When a trim is waiting to happen, so that an idle loop wakes for it.
    fn due(&self) -> Option<Millis> {
        Some(self.low_since? + TRIM_AFTER_QUIET)
    }

    fn after_turn(&mut self, held: usize, now: Millis) {
        self.high_water = self.high_water.max(held);
        if self.high_water - held < TRIM_AFTER_FREEING {
            self.low_since = None;
            return;
        }
        match self.low_since {
            None => self.low_since = Some(now),
            Some(since) if now >= since + TRIM_AFTER_QUIET => {
                crate::sys::trim_heap();
                self.high_water = held;
                self.low_since = None;
            }
            Some(_) => {}
        }
    }
}

/// Counts events worth a warning and logs them at most once a second, so that an
/// attack that closes thousands of connections leaves a few lines, not thousands.
#[derive(Debug, Default)]
struct BurstLog {
    what: &'static str,
    count: u64,
    last: Option<Millis>,
}

impl BurstLog {
    fn note(&mut self, what: &'static str) {
        self.what = what;
        self.count += 1;
    }

    fn report(&mut self, now: Millis) {
        if self.count > 0 && self.last.is_none_or(|last| now >= last + 1000) {
            log::warn!("{} ({} since the last report)", self.what, self.count);
            self.count = 0;
            self.last = Some(now);
        }
    }
}

/// How a broadcast or publish went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Receivers whose socket took the frame or who queued it.
    pub sent: usize,
    /// Receivers that refused it (queue over the cap); they miss this message.
    pub refused: usize,
}

/// What a handler acts through: the current connection, and through it the rest of
/// the loop (other connections, broadcast, topics, stats, shutdown).
pub struct Ctx<'a, S = ()> {
    core: &'a mut Core<S>,
    slot: usize,
}

impl<S> Ctx<'_, S> {
    fn conn(&self) -> &Conn<S> {
        &self.core.conns[self.slot]
    }

    /// This connection's id (valid in [`Handle`] calls from other threads too).
    pub fn id(&self) -> ConnId {
        self.core.id(self.slot)
    }

    /// The peer's address (for IPv6, without flow info and scope id, which are not kept).
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn().peer.get()
    }

    /// The subprotocol agreed at the upgrade, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.conn().protocol()
    }

    /// This connection's session: the handler's own state for it.
    pub fn session(&mut self) -> &mut S {
        &mut self.core.conns[self.slot].session
    }

    /// Bytes waiting for the socket to take them: the backlog a peer that reads
    /// slower than we send builds up (see [`SendStatus::Queued`]).
    pub fn queued_bytes(&self) -> usize {
        self.conn().backlog()
    }

    /// The server's counters.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Sends a message as one frame: written through to the socket if it takes it,
    /// queued otherwise, refused if the connection is closing or its queue is full.
    pub fn send(&mut self, message: Message<'_>) -> SendStatus {
        self.core
            .send(self.slot, opcode_of(&message), message.as_bytes())
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.core.send(self.slot, Opcode::Text, text.as_bytes())
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, bytes: &[u8]) -> SendStatus {
        self.core.send(self.slot, Opcode::Binary, bytes)
    }

    /// Sends a ping (at most 125 bytes of payload, else refused).
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return SendStatus::Refused;
        }
        self.core.send(self.slot, Opcode::Ping, payload)
    }

    /// Starts the close handshake with `code` and `reason` (cut at a character
    /// boundary to fit 123 bytes). Messages that arrive until the peer's close are
    /// dropped. A code that may not be sent ([`CloseCode::is_sendable`]: e.g. 1005,
    /// 1006, 1015, 0, 5000) is an error and nothing happens: a peer would answer it
    /// with a protocol error. Closing a connection that is closing already is `Ok`
    /// and does nothing.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), InvalidCloseCode> {
        let code = code.sendable()?;
        self.core
            .close(self.slot, code, reason, CloseReason::Local { code });
        Ok(())
    }

    /// Sends a message to another connection; refused if it is gone or closing.
    pub fn send_to(&mut self, to: ConnId, message: Message<'_>) -> SendStatus {
        match self.core.slot_of(to) {
            Some(slot) => {
                let status = self
                    .core
                    .send(slot, opcode_of(&message), message.as_bytes());
                self.core.touched.push(slot);
                status
            }
            None => SendStatus::Refused,
        }
    }

    /// Starts the close handshake on another connection, as [`close`](Ctx::close)
    /// does on this one. An id of a connection that is gone is `Ok` and does nothing;
    /// a code that may not be sent is an error, whatever the id.
    pub fn close_connection(
        &mut self,
        id: ConnId,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), InvalidCloseCode> {
        let code = code.sendable()?;
        if let Some(slot) = self.core.slot_of(id) {
            self.core
                .close(slot, code, reason, CloseReason::Local { code });
        }
        Ok(())
    }

    /// Sends a message to every open connection, this one included. The frame is
    /// encoded once; each receiver's queue cap applies to it separately.
    pub fn broadcast(&mut self, message: Message<'_>) -> Fanout {
        self.core.broadcast(opcode_of(&message), message.as_bytes())
    }

    /// Subscribes this connection to `topic`; false if it already was.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        let added = self.core.topics.subscribe(topic, self.slot);
        if added {
            self.core.conns[self.slot]
                .extras_mut()
                .topics
                .push(topic.into());
        }
        added
    }

    /// Unsubscribes this connection from `topic`; false if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        let removed = self.core.topics.unsubscribe(topic, self.slot);
        if removed {
            self.core.conns[self.slot]
                .extras_mut()
                .topics
                .retain(|t| &**t != topic);
        }
        removed
    }

    /// Sends a message to every subscriber of `topic` (encoded once).
    pub fn publish(&mut self, topic: &str, message: Message<'_>) -> Fanout {
        self.core
            .publish(topic, opcode_of(&message), message.as_bytes())
    }

    /// Starts a graceful shutdown of the whole server after this callback.
    pub fn shutdown(&mut self) {
        self.core.shutdown_requested = true;
    }
}

/// Accepts connections on `addr` and serves them with `handler` until shut down.
pub fn serve<H: Handler>(addr: SocketAddr, config: Config, handler: H) -> io::Result<()> {
    Server::bind(addr, config, handler)?.run()
}
