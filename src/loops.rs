//! One reactor per core: [`Reactor`] runs N single-threaded loops on one address,
//! each an ordinary [`Server`] on its own thread with its own listener
//! (`SO_REUSEPORT`), and ties them together through their inboxes.
//!
//! Why `SO_REUSEPORT` rather than one acceptor handing descriptors round-robin: the
//! kernel then spreads connections with no thread in between (an acceptor is a hop
//! and a wake-up per connection, and a single point every connection waits on), and
//! each loop keeps its accept path, per-turn cap and 503s unchanged. Its hash of the
//! four-tuple balances well even for one client address, since every connection has
//! its own source port (tests/loops.rs checks 1,000 of them within ±20% per loop).
//! What it cannot do is steer away from a loop that is busy: a loop gets its share
//! of new connections whatever its load.
//!
//! What the loops share is only this module's [`Group`]: each loop's inbox (the
//! `Handle`'s queue, also how a loop hands another a broadcast, a publish, a send to
//! an id it owns, or the shutdown) and a copy of each loop's stats, refreshed every
//! 100 ms. Subscriptions, connections, budgets and timers stay in each loop.

use crate::config::Config;
use crate::handle::{Handle, HandleError, Inbox};
use crate::handler::Handler;
use crate::histogram::Histogram;
use crate::server::{Loop, Server};
use crate::stats::Stats;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Pending connections the kernel may queue for each loop's listener.
const LISTEN_BACKLOG: i32 = 1024;

/// The most loops one reactor runs (ids carry the index in 16 bits; far more than
/// any machine has cores).
const MAX_LOOPS: usize = 1024;

/// What the loops of one reactor share: their inboxes, by loop index, and the
/// latest copy of each loop's stats.
pub(crate) struct Group {
    pub(crate) inboxes: Vec<Arc<Inbox>>,
    stats: Vec<Mutex<Stats>>,
}

impl Group {
    pub(crate) fn share_stats(&self, index: usize, stats: &Stats) {
        if let Some(slot) = self.stats.get(index) {
            slot.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone_from(stats);
        }
    }

    pub(crate) fn stats(&self) -> Vec<Stats> {
        self.stats
            .iter()
            .map(|slot| {
                slot.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone()
            })
            .collect()
    }
}

/// N single-threaded loops serving one address: one reactor per core.
///
/// Each loop is a [`Server`] with its own thread, listener (`SO_REUSEPORT` on the
/// same address: the kernel spreads new connections between them), connection
/// table, topics, timers and budgets, and its own handler, made by the factory
/// given to [`bind`](Reactor::bind) from the loop's index. Nothing is shared on the
/// hot path; what crosses loops goes through their inboxes:
///
/// - [`ConnId`](crate::ConnId)s name their loop. A [`Handle`] send or close, and
///   [`Loop::send_to`] / [`Loop::close_connection`] with another loop's id, go to
///   the loop that owns the connection; no loop ever reads another's table.
/// - [`Loop::broadcast`] and [`Loop::publish`] (from any loop's `Ctx`), and the
///   `Handle`'s, reach every loop's connections: the loop that makes one delivers
///   it to its own and hands it to each other loop as one command (the payload
///   copied once, shared), and each loop encodes (and compresses) it once for its
///   own subscribers. Subscriptions stay in each loop. One publisher's messages
///   arrive in order everywhere (each inbox is a FIFO; a `Handle` publishes through
///   its own loop).
/// - The shutdown of one loop, from anywhere, is the shutdown of all: each closes
///   its connections with 1001, and [`run`](Reactor::run) returns when every loop
///   has finished.
///
/// The application's own state is its own business: a handler per loop, made by the
/// factory, holds what is the loop's alone, and whatever every loop must see goes in
/// an `Arc` the factory clones into each (an atomic counter, a `Mutex`-ed map used
/// off the hot path, or nothing at all and a `Handle::defer_all` to update each
/// loop's copy).
///
/// ```no_run
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use wsreactor::{Config, Ctx, Handler, Message, Reactor};
///
/// struct Chat {
///     said: Arc<AtomicU64>, // shared by every loop
/// }
/// impl Handler for Chat {
///     type Session = ();
///     fn on_open(&mut self, cx: &mut Ctx<'_>) {
///         cx.subscribe("room");
///     }
///     fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
///         self.said.fetch_add(1, Ordering::Relaxed);
///         cx.publish("room", message); // every loop's members get it
///     }
/// }
///
/// let said = Arc::new(AtomicU64::new(0));
/// let config = Config { threads: 0, ..Config::default() }; // one loop per core
/// let mut reactor = Reactor::bind("127.0.0.1:9998".parse()?, config, |_loop_index| Chat {
///     said: Arc::clone(&said),
/// })?;
/// reactor.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Limits: `max_connections`, `max_handshakes`, `incoming_budget`,
/// `outgoing_budget` and `max_timers` are totals for the reactor, split evenly
/// between the loops (each gets its share, rounded up); a loop that reaches its
/// share answers 503 even if another has room. Per-connection limits apply as they
/// are; `handle_queue_capacity` is per loop (each has its own inbox).
pub struct Reactor<H: Handler> {
    servers: Vec<Server<H>>,
    group: Arc<Group>,
    local_addr: SocketAddr,
    pin: bool,
}

impl<H: Handler> std::fmt::Debug for Reactor<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("loops", &self.servers.len())
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl<H> Reactor<H>
where
    H: Handler + Send,
    H::Session: Send,
{
    /// Binds `config.threads` loops on `addr` (0: one per available core; port 0
    /// picks a free port for all of them), each with the handler `factory` makes
    /// for its index, in order 0, 1, ... A `config` that [`Config::validate`]
    /// refuses is an error of kind `InvalidInput`.
    ///
    /// With one loop it is one [`Server`] bound as [`Server::bind`] binds (no
    /// `SO_REUSEPORT`), run on the calling thread.
    pub fn bind(
        addr: SocketAddr,
        config: Config,
        mut factory: impl FnMut(usize) -> H,
    ) -> io::Result<Reactor<H>> {
        config.check()?;
        let loops = config.loops();
        if loops > MAX_LOOPS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("threads: {loops} loops is over the {MAX_LOOPS} a reactor runs"),
            ));
        }
        let share = config.share(loops);
        let mut servers = Vec::with_capacity(loops);
        let mut local_addr = addr;
        for index in 0..loops {
            let listener = if loops == 1 {
                let listener = std::net::TcpListener::bind(addr)?;
                crate::sys::listen(&listener, LISTEN_BACKLOG)?;
                listener
            } else {
                // Port 0: the first loop picks the port, the others join it.
                crate::sys::bind_reuseport(local_addr, LISTEN_BACKLOG)?
            };
            let server = Server::from_listener(listener, share.clone(), factory(index))?;
            local_addr = server.local_addr();
            servers.push(server);
        }
        let group = Arc::new(Group {
            inboxes: servers.iter().map(Server::inbox).collect(),
            stats: (0..loops).map(|_| Mutex::new(Stats::default())).collect(),
        });
        for (index, server) in servers.iter_mut().enumerate() {
            server.join_group(index as u16, Arc::clone(&group));
        }
        Ok(Reactor {
            servers,
            group,
            local_addr,
            pin: false,
        })
    }

    /// Pins loop `i` to CPU `i` (modulo the CPUs there are) when it runs: fewer
    /// migrations and a warm cache, on a machine given over to the server. Loop 0
    /// runs on the thread that calls [`run`](Reactor::run), which stays pinned after
    /// it returns. A pin that fails is a warning, not an error. Off by default.
    pub fn pin_to_cores(&mut self, pin: bool) -> &mut Self {
        self.pin = pin;
        self
    }

    /// The address every loop listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many loops there are.
    pub fn loops(&self) -> usize {
        self.servers.len()
    }

    /// A handle on loop 0 (see [`Handle::for_loop`] for the others): sends and
    /// closes go to the loop their id names, broadcasts and publishes reach every
    /// loop, `shutdown` stops them all.
    pub fn handle(&self) -> Handle {
        self.servers[0].handle()
    }

    /// Serves wss:// on every loop, all sharing `tls` (one reload reaches them all:
    /// see [`Server::with_tls`]).
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: crate::tls::TlsConfig) -> Reactor<H> {
        for server in &mut self.servers {
            server.set_tls(tls.clone());
        }
        self
    }

    /// Loop `index`'s server, before [`run`](Reactor::run) (e.g. to set a
    /// server-level timer on it from a deferred closure, or to read its handler).
    pub fn server(&mut self, index: usize) -> Option<&mut Server<H>> {
        self.servers.get_mut(index)
    }

    /// Each loop's stats, by loop index, as last shared (every 100 ms while running,
    /// and when each loop finished). Sum them with [`Stats::sum`].
    pub fn stats(&self) -> Vec<Stats> {
        self.group.stats()
    }

    /// Runs every loop, each on a thread of its own (loop 0 on the calling thread),
    /// until a graceful shutdown has completed on all of them. An error of one loop's
    /// poller (or a panic outside the handler's callbacks, which are caught) shuts
    /// the others down and is returned once they have finished.
    pub fn run(&mut self) -> io::Result<()> {
        let pin = self.pin;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let handle = self.handle();
        let (first, rest) = self.servers.split_at_mut(1);
        std::thread::scope(|scope| {
            let mut threads = Vec::new();
            for (i, server) in rest.iter_mut().enumerate() {
                let index = i + 1;
                let own = handle.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("wsreactor-loop-{index}"))
                    .spawn_scoped(scope, move || run_loop(server, index, pin, cpus, &own));
                match thread {
                    Ok(thread) => threads.push(thread),
                    Err(e) => {
                        let _ = handle.shutdown();
                        // Loop 0 runs still, to close what the others hold.
                        let _ = run_loop(&mut first[0], 0, pin, cpus, &handle);
                        return Err(e);
                    }
                }
            }
            let mut result = run_loop(&mut first[0], 0, pin, cpus, &handle);
            for thread in threads {
                let outcome = thread.join().unwrap_or_else(|_| {
                    Err(io::Error::other(
                        "a loop's thread panicked outside the handler",
                    ))
                });
                if result.is_ok() {
                    result = outcome;
                }
            }
            result
        })
    }
}

fn run_loop<H: Handler>(
    server: &mut Server<H>,
    index: usize,
    pin: bool,
    cpus: usize,
    handle: &Handle,
) -> io::Result<()> {
    if pin {
        if let Err(e) = crate::sys::pin_to_cpu(index % cpus) {
            log::warn!("loop {index}: could not pin to CPU {}: {e}", index % cpus);
        }
    }
    // The handler's callbacks catch their own panics; one anywhere else in the loop
    // stops this loop, and the others are shut down rather than left serving alone.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.run()))
        .unwrap_or_else(|_| Err(io::Error::other(format!("loop {index} panicked"))));
    if let Err(e) = &result {
        log::error!("loop {index} failed: {e}; shutting the other loops down");
        let _ = handle.shutdown();
    }
    result
}

impl Config {
    /// How many loops [`threads`](Config::threads) asks for: 0 is one per
    /// available core.
    pub fn loops(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// One loop's share of the totals, for `loops` loops: `max_connections`,
    /// `max_handshakes`, `incoming_budget`, `outgoing_budget` and `max_timers`
    /// divided evenly (rounded up, at least 1 where 0 is not allowed).
    fn share(&self, loops: usize) -> Config {
        let loops = loops.max(1);
        Config {
            max_connections: self.max_connections.div_ceil(loops).max(1),
            max_handshakes: self.max_handshakes.div_ceil(loops).max(1),
            incoming_budget: self.incoming_budget.div_ceil(loops),
            outgoing_budget: self.outgoing_budget.div_ceil(loops),
            max_timers: self.max_timers.div_ceil(loops),
            ..self.clone()
        }
    }
}

impl Handle {
    /// How many loops this handle's server has (1 for a lone [`Server`]).
    pub fn loops(&self) -> usize {
        self.group.as_ref().map_or(1, |group| group.inboxes.len())
    }

    /// The index of the loop this handle belongs to (where its broadcasts, publishes
    /// and [`defer`](Handle::defer) go).
    pub fn loop_index(&self) -> usize {
        self.group
            .as_ref()
            .and_then(|g| g.inboxes.iter().position(|i| Arc::ptr_eq(i, &self.inbox)))
            .unwrap_or(0)
    }

    /// A handle on loop `index` of the same reactor ([`HandleError::NoSuchLoop`] if
    /// there is none; a lone server's only loop is 0).
    pub fn for_loop(&self, index: usize) -> Result<Handle, HandleError> {
        match &self.group {
            None if index == 0 => Ok(self.clone()),
            None => Err(HandleError::NoSuchLoop),
            Some(group) => match group.inboxes.get(index) {
                Some(inbox) => Ok(Handle {
                    inbox: Arc::clone(inbox),
                    group: Some(Arc::clone(group)),
                }),
                None => Err(HandleError::NoSuchLoop),
            },
        }
    }

    /// [`defer`](Handle::defer) on loop `index`: for work that belongs to one loop
    /// (its connections, its handler's state), e.g. the loop of a [`ConnId`]
    /// (`id.loop_index()`).
    ///
    /// [`ConnId`]: crate::ConnId
    pub fn defer_on<H: Handler>(
        &self,
        index: usize,
        job: impl FnOnce(&mut H, &mut Loop<H::Session>) + Send + 'static,
    ) -> Result<(), HandleError> {
        self.for_loop(index)?.defer(job)
    }

    /// Runs `job` on every loop, each with its own handler and [`Loop`] (e.g. to
    /// update the copy of some state each loop's handler keeps). Every loop is tried;
    /// the result is the first refusal, if any loop refused (the others still run it).
    pub fn defer_all<H: Handler>(
        &self,
        job: impl Fn(&mut H, &mut Loop<H::Session>) + Send + Sync + 'static,
    ) -> Result<(), HandleError> {
        let job = Arc::new(job);
        let mut result = Ok(());
        for index in 0..self.loops() {
            let job = Arc::clone(&job);
            let outcome = self.for_loop(index).and_then(|handle| {
                handle.defer(move |handler: &mut H, lp: &mut Loop<H::Session>| job(handler, lp))
            });
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }

    /// Every loop's stats, by loop index, as each last shared them (at most 100 ms
    /// ago). Empty for a lone [`Server`]'s handle (read [`Server::stats`] there).
    pub fn loop_stats(&self) -> Vec<Stats> {
        self.group
            .as_ref()
            .map_or_else(Vec::new, |group| group.stats())
    }
}

impl Stats {
    /// The stats of several loops as one: counters, gauges, close codes and
    /// histograms added up.
    pub fn sum(loops: &[Stats]) -> Stats {
        let mut total = Stats::default();
        for stats in loops {
            total.add(stats);
        }
        total
    }

    /// Adds `other` into `self`. Every field is named (no `..`), so a field added to
    /// `Stats` does not compile here until it is summed too.
    fn add(&mut self, other: &Stats) {
        let Stats {
            open_connections,
            accepted,
            refused,
            handshakes,
            http_responses,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            fanout_frames_encoded,
            fanout_deliveries,
            protocol_errors,
            handler_panics,
            closes,
            sends_refused,
            messages_dropped,
            queue_full_closes,
            incoming_budget_closes,
            outgoing_budget_closes,
            message_timeouts,
            loop_stalls,
            tls_handshake_failures,
            cluster_published,
            cluster_publishes_dropped,
            cluster_received,
            cluster_received_dropped,
            handshakes_in_progress,
            deadline_entries,
            incoming_bytes,
            outgoing_bytes,
            send_pool_bytes,
            topic_memberships,
            inflaters_lent,
            timers_pending,
            cluster_connected,
            turn_micros,
            callback_micros,
            ping_rtt_micros,
            flush_bytes,
        } = other;
        self.open_connections += open_connections;
        self.accepted += accepted;
        self.refused += refused;
        self.handshakes += handshakes;
        self.http_responses += http_responses;
        self.messages_in += messages_in;
        self.messages_out += messages_out;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        self.fanout_frames_encoded += fanout_frames_encoded;
        self.fanout_deliveries += fanout_deliveries;
        self.protocol_errors += protocol_errors;
        self.handler_panics += handler_panics;
        for &(code, n) in closes {
            match self.closes.iter_mut().find(|(c, _)| *c == code) {
                Some((_, total)) => *total += n,
                None => {
                    self.closes.push((code, n));
                    self.closes.sort_unstable();
                }
            }
        }
        self.sends_refused += sends_refused;
        self.messages_dropped += messages_dropped;
        self.queue_full_closes += queue_full_closes;
        self.incoming_budget_closes += incoming_budget_closes;
        self.outgoing_budget_closes += outgoing_budget_closes;
        self.message_timeouts += message_timeouts;
        self.loop_stalls += loop_stalls;
        self.tls_handshake_failures += tls_handshake_failures;
        self.cluster_published += cluster_published;
        self.cluster_publishes_dropped += cluster_publishes_dropped;
        self.cluster_received += cluster_received;
        self.cluster_received_dropped += cluster_received_dropped;
        self.handshakes_in_progress += handshakes_in_progress;
        self.deadline_entries += deadline_entries;
        self.incoming_bytes += incoming_bytes;
        self.outgoing_bytes += outgoing_bytes;
        self.send_pool_bytes += send_pool_bytes;
        self.topic_memberships += topic_memberships;
        self.inflaters_lent += inflaters_lent;
        self.timers_pending += timers_pending;
        self.cluster_connected += cluster_connected;
        let histograms: [(&mut Histogram, &Histogram); 4] = [
            (&mut self.turn_micros, turn_micros),
            (&mut self.callback_micros, callback_micros),
            (&mut self.ping_rtt_micros, ping_rtt_micros),
            (&mut self.flush_bytes, flush_bytes),
        ];
        for (mine, theirs) in histograms {
            mine.merge(theirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_adds_every_metric_close_code_and_histogram() {
        let mut a = Stats {
            accepted: 3,
            open_connections: 2,
            ..Stats::default()
        };
        a.count_close(1000);
        a.count_close(1006);
        a.turn_micros.record(5);
        let mut b = Stats {
            accepted: 4,
            open_connections: 1,
            ..Stats::default()
        };
        b.count_close(1001);
        b.count_close(1000);
        b.turn_micros.record(7);
        let total = Stats::sum(&[a, b]);
        assert_eq!(total.accepted, 7);
        assert_eq!(total.open_connections, 3);
        assert_eq!(total.closes, vec![(1000, 2), (1001, 1), (1006, 1)]);
        assert_eq!(total.turn_micros.count(), 2);
        assert_eq!(total.turn_micros.sum(), 12);
    }

    #[test]
    fn every_metric_sums() {
        // Each metric read through METRICS: a field added without a line in `add`
        // would not compile; one added wrongly (not summed) fails here.
        let mut one = Stats::default();
        one.count_close(1000);
        let bump = |s: &mut Stats| {
            s.open_connections = 1;
            s.accepted = 1;
        };
        bump(&mut one);
        let total = Stats::sum(&[one.clone(), one.clone()]);
        for metric in Stats::METRICS {
            assert_eq!(
                (metric.get)(&total),
                2 * (metric.get)(&one),
                "{}",
                metric.name
            );
        }
    }

    #[test]
    fn totals_are_split_between_loops_rounded_up() {
        let config = Config {
            max_connections: 10,
            max_handshakes: 1,
            incoming_budget: 101,
            ..Config::default()
        };
        let share = config.share(4);
        assert_eq!(share.max_connections, 3);
        assert_eq!(share.max_handshakes, 1);
        assert_eq!(share.incoming_budget, 26);
        assert_eq!(share.max_send_queue, config.max_send_queue);
    }
}
