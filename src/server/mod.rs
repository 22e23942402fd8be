//! The event loop: a thin I/O shell over `mio::Poll` around the sans-I/O core.
//!
//! One thread, one `Poll`, a `Slab` of connections indexed by `Token`. Every read goes
//! into one loop-wide buffer, where frames are unmasked in place and handed to the
//! [`Handler`] as slices; WRITABLE interest is registered only while a connection has
//! queued output; deadlines live in a heap the loop consults for its poll timeout; a
//! `mio::Waker` is the only door in from other threads ([`Handle`]).
//!
//! This file holds the two structs and the turn: what happens in one pass of the loop,
//! in order. Each job has a room of its own:
//!
//! | room | job |
//! |---|---|
//! | `accept` | new connections: per-turn cap, 503s, out of descriptors |
//! | `upgrade` | the request head and the handler's decision → 101 or an HTTP answer |
//! | `dispatch` | reading, frames through the receiver, events to the handler |
//! | `table` | the connection table: look a connection up, send to it, close, fail it |
//! | `fanout`, `topics` | one message to many |
//! | `budget` | the loop-wide memory budgets, and whom to close when they run out |
//! | `deadlines` | timeouts and keepalive |
//! | `timers` | the application's timers, per connection and server-level |
//! | `lifecycle` | settling a connection after anything happened; shutdown |
//! | `commands` | the `Handle`'s inbox |
//! | `nesting` | driven from another event loop: the poller's descriptor, the next timeout |
//! | `flow` | drain, dropped messages and pongs for the handler |
//! | `cluster` | the loop's end of the Redis bridge (feature `cluster`) |
//! | `stalls` | loop-stall warnings: callbacks and turns over `stall_threshold` |
//! | `ctx` | `Ctx`, the handler's view of the loop |

mod accept;
mod budget;
#[cfg(feature = "cluster")]
mod cluster;
mod commands;
mod ctx;
mod deadlines;
mod dispatch;
mod fanout;
mod flow;
mod lifecycle;
mod loops;
mod nesting;
mod parts;
mod stalls;
mod table;
mod timers;
mod topics;
mod upgrade;

pub use ctx::Ctx;

/// The name the loop's own rooms use for [`Loop`]: their `impl<S> Core<S>` blocks
/// are the loop's internals, not its public face.
pub(crate) type Core<S> = Loop<S>;
pub use fanout::Fanout;
pub use parts::PartError;
pub use timers::{TimerError, TimerId};

use crate::compression::Compression;
use crate::config::{Config, Timeouts};
use crate::conn::{Conn, Io};
use crate::handle::{Command, Handle, Inbox};
use crate::handler::Handler;
use crate::outbox::Meter;
use crate::proto::frame::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::stats::Stats;
use crate::timer::{Clock, DeadlineQueue, Millis};
use budget::{BurstLog, HeapTrim};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use stalls::StallWatch;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use timers::AppTimers;
use topics::Topics;

const LISTENER: Token = Token(usize::MAX);

/// Pending connections the kernel may queue for us (tokio's default too).
const LISTEN_BACKLOG: i32 = 1024;

const WAKER: Token = Token(usize::MAX - 1);

/// The loop as a handler sees it when no connection is in question: other
/// connections by id, broadcast, topics, stats, shutdown, and server-level timers.
///
/// A handler meets it in [`Handler::on_loop_timer`]
/// and in closures run through [`Handle::defer`]; a [`Ctx`] dereferences to it, so
/// every method here works on a `Ctx` too.
///
/// It is everything the loop owns except the poller, the listener and the handler:
/// one struct, so that a [`Ctx`] is just this and a connection slot, and lending
/// either costs a pointer.
pub struct Loop<S = ()> {
    conns: Slab<Conn<S>>,
    io: Io,
    /// Bytes the receivers hold now (`Stats::incoming_bytes`), against
    /// `Config::incoming_budget`.
    incoming: usize,
    /// Budget closes not yet logged: logged once per burst, not per connection.
    budget_log: BurstLog,
    /// When memory was last handed back to the system, and the most held since.
    trim: HeapTrim,
    /// Times handler callbacks and turns against `Config::stall_threshold`.
    stalls: StallWatch,
    config: Config,
    timeouts: Timeouts,
    timers: DeadlineQueue,
    /// The application's timers (`Ctx::set_timer`, `Loop::set_loop_timer`).
    app_timers: AppTimers,
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
    /// Connections with drops to report at the end of the turn (`on_dropped`).
    dropped: Vec<usize>,
    /// Connections still in the handshake phase.
    handshaking: usize,
    shutdown_requested: bool,
    compression: Compression,
    /// The connection whose receiver `dispatch::frames` has taken out of the table
    /// while the handler sees its events.
    rx_lent: Option<usize>,
    /// The loop's end of the cluster bridge, once one is attached.
    #[cfg(feature = "cluster")]
    cluster: Option<crate::cluster::Link>,
    /// This loop's index in its [`Reactor`](crate::Reactor) (0 alone): in every id.
    loop_index: u16,
    /// The other loops of the reactor, if there are any (see `loops`).
    group: Option<Arc<crate::loops::Group>>,
    /// When the stats were last copied where the other loops can read them.
    stats_shared: Millis,
    /// A turn since then was not shared (too soon): the loop wakes to share it, so
    /// that an idle loop's copy is not left behind.
    stats_stale: bool,
    /// What this turn sends to each other loop (by loop index), handed over in one
    /// batch at the end of the turn.
    to_loops: Vec<Vec<Command>>,
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
    /// The last poll filled `events`: more may be ready, which (edge-triggered) a
    /// host loop watching our descriptor would not be told again.
    events_full: bool,
    /// wss://: every accepted connection speaks TLS with the configuration current at
    /// its accept.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConfig>,
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
        crate::sys::listen(&listener, LISTEN_BACKLOG)?;
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
                stalls: StallWatch::new(config.timeouts().stall),
                timeouts: config.timeouts(),
                timers: DeadlineQueue::with_capacity(reserved),
                app_timers: AppTimers::new(config.max_timers, config.max_timers_per_connection),
                topics: Topics::default(),
                stats: Stats::default(),
                clock,
                now: clock.now(),
                touched: Vec::new(),
                backlog: Vec::new(),
                dropped: Vec::new(),
                handshaking: 0,
                shutdown_requested: false,
                compression: Compression::new(config.deflate_level),
                rx_lent: None,
                #[cfg(feature = "cluster")]
                cluster: None,
                loop_index: 0,
                group: None,
                stats_shared: 0,
                stats_stale: false,
                to_loops: Vec::new(),
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
            inbox: Arc::new(Inbox::new(
                waker,
                config.handle_queue_capacity.max(1),
                std::any::TypeId::of::<H>(),
            )),
            commands: VecDeque::new(),
            accept_paused_until: None,
            accept_exhausted: false,
            accept_more: false,
            shutdown_deadline: None,
            finished: false,
            events_full: false,
            #[cfg(feature = "tls")]
            tls: None,
        })
    }

    /// Serves wss:// instead of ws:// on the same listener: every connection accepted
    /// from now on starts with a TLS handshake (covered by `handshake_timeout`). Keep a
    /// clone of `tls` to reload the certificate while the server runs
    /// ([`TlsConfig::reload_pem_files`](crate::tls::TlsConfig::reload_pem_files)).
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: crate::tls::TlsConfig) -> Server<H> {
        self.set_tls(tls);
        self
    }

    /// [`with_tls`](Server::with_tls) on a server held by reference (a loop of a
    /// [`Reactor`](crate::Reactor)).
    #[cfg(feature = "tls")]
    pub fn set_tls(&mut self, tls: crate::tls::TlsConfig) {
        self.tls = Some(tls);
    }

    /// The TLS configuration this server serves with, if any: a handle on the shared,
    /// reloadable one.
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&crate::tls::TlsConfig> {
        self.tls.as_ref()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for other threads: send, broadcast, publish, close, shut down.
    pub fn handle(&self) -> Handle {
        Handle {
            inbox: Arc::clone(&self.inbox),
            group: self.core.group.clone(),
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
    ///
    /// `Some(Duration::ZERO)` never blocks (the poll does not wait, and every socket
    /// is non-blocking): what a host event loop calls when the server's
    /// [descriptor](std::os::fd::AsRawFd) is readable or its
    /// [`next_timeout`](Server::next_timeout) has passed. After the shutdown has
    /// completed it returns at once.
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
        // One reading for the loop's clock and the turn's timing.
        let started = std::time::Instant::now();
        self.core.now = self.core.clock.at(started);
        self.core.io.meter.set_now(self.core.now);
        self.core.stalls.turn_started(started);
        for slot in std::mem::take(&mut self.core.backlog) {
            self.read(slot, true);
            self.settle_conn(slot);
        }
        if std::mem::take(&mut self.accept_more) {
            self.accept();
        }
        // Move the events out so handling them can borrow `self` mutably.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        self.events_full = events.iter().count() >= events.capacity();
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
        self.fire_timers();
        self.core.enforce_outgoing_budget();
        self.settle();
        self.report_drops();
        self.settle();
        self.core.update_gauges();
        self.core.share_stats(false);
        self.core.flush_loops();
        // The turn's publishes leave for the broker together.
        #[cfg(feature = "cluster")]
        self.core.flush_cluster();
        self.core.stalls.turn_done(&mut self.core.stats);
        Ok(())
    }

    fn poll_timeout(&self, requested: Option<Duration>) -> Option<Duration> {
        if !self.core.backlog.is_empty() || self.accept_more || self.events_full {
            return Some(Duration::ZERO);
        }
        let now = self.core.clock.now();
        let wakeups = [
            self.core.timers.next(),
            self.core.app_timers.next(),
            self.accept_paused_until,
            self.shutdown_deadline,
            self.core.trim.due(),
            self.core.stats_due(),
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

/// Accepts connections on `addr` and serves them with `handler` until shut down.
pub fn serve<H: Handler>(addr: SocketAddr, config: Config, handler: H) -> io::Result<()> {
    Server::bind(addr, config, handler)?.run()
}
