//! Topics and broadcast across server processes, through Redis pub/sub (feature
//! `cluster`).
//!
//! Several nodes behind an L4 balancer each run their own loop; a message published on
//! one must reach the subscribers of its topic on every node. Like socket.io's Redis
//! adapter and Centrifugo's Redis broker, the nodes do not talk to each other: each
//! one publishes to, and subscribes at, one Redis.
//!
//! ```no_run
//! use wsreactor::cluster::ClusterConfig;
//! use wsreactor::{Config, Ctx, Handler, Message, Server};
//!
//! struct Room;
//! impl Handler for Room {
//!     type Session = ();
//!     fn on_open(&mut self, cx: &mut Ctx<'_>) {
//!         cx.subscribe("lobby");
//!     }
//!     fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
//!         // Delivered here at once, and to "lobby" on every other node.
//!         cx.publish("lobby", message);
//!     }
//! }
//!
//! let mut server = Server::bind("127.0.0.1:9998".parse()?, Config::default(), Room)?;
//! // Never blocks on Redis: an unreachable broker is a warning, and the server
//! // serves locally while the bridge retries.
//! let _cluster = server.attach_cluster(ClusterConfig::new("redis://127.0.0.1:6379"))?;
//! server.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How it works
//!
//! The loop never touches the broker. Two bridge threads do, each with a connection
//! of its own:
//!
//! - the **publisher** takes what the loop queued and writes it as one pipeline of
//!   `PUBLISH`es: every publish and broadcast of one loop turn (more, if the broker was
//!   slower than the loop) leave in one write. The queue between them is bounded
//!   ([`ClusterConfig::queue_capacity`], [`ClusterConfig::queue_bytes`]): past it, and
//!   whenever the broker is away, a publish is delivered locally only and counted in
//!   `Stats::cluster_publishes_dropped`.
//! - the **subscriber** holds the node's subscriptions: `wsreactor:topic:NAME` while
//!   at least one local connection is subscribed to NAME (the loop tells it when a
//!   topic gains its first member or loses its last), and `wsreactor:broadcast`
//!   always. What it receives enters the loop through the same inbox as a
//!   [`Handle`]'s commands, and is fanned out locally, encoded once, and
//!   never published again.
//!
//! # Guarantees
//!
//! - **Local delivery does not depend on the broker**: a publish reaches the local
//!   subscribers at once, whether the broker is up, slow or gone.
//! - **At most once across nodes**: a message published while the broker is away,
//!   or that did not fit the queue, or that was in flight when the connection broke,
//!   does not reach the other nodes (and is counted); nothing is sent twice, and a node
//!   never delivers its own message twice (the envelope names the node it came from).
//!   A subscription takes effect a round trip after the first local subscriber
//!   arrives; messages published elsewhere before that are not seen. This is the
//!   guarantee of socket.io's Redis adapter and Centrifugo's at-most-once broker:
//!   applications that need more keep their own history and sequence numbers.
//! - **Order per publisher per topic**: messages one node publishes to one topic
//!   arrive at every other node in the order it published them (one connection, one
//!   pipeline, one Redis channel). Messages from different nodes interleave.
//!
//! After an outage the bridge reconnects with exponential back-off (from
//! [`ClusterConfig::reconnect_min`] to [`ClusterConfig::reconnect_max`]) and
//! subscribes again to every topic that has local subscribers. Each outage is
//! logged once when it starts and once when it ends. A broker that does not answer a
//! pipeline or a (un)subscribe within 5 s counts as lost (while it is merely slow, the
//! bounded queue fills and then drops); a subscriber connection that has heard nothing
//! for 30 s pings the broker, so a connection that died silently is replaced.
//!
//! # The envelope
//!
//! Every message on a channel is a 16-byte header and the payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..3 | `WSR`, the magic |
//! | 3 | version, 1 |
//! | 4 | kind: 1 text, 2 binary (the WebSocket opcode) |
//! | 5..8 | reserved, zero |
//! | 8..16 | the origin node's id, u64 big-endian |
//! | 16.. | the payload |
//!
//! The topic is the channel's name, so it is not repeated. A message that does not
//! parse (another program on the channel), text that is not UTF-8, or a payload over
//! `Config::max_message_size` is dropped and counted in
//! `Stats::cluster_received_dropped`.
//!
//! # The rooms
//!
//! This file holds the configuration, the state the loop and the threads share, and
//! start-up; `link.rs` is the loop's end of the bridge, `bridge.rs` the publisher and
//! subscriber threads, `envelope.rs` the codec above.

use crate::handle::{Command, Handle, Payload};
use crate::proto::frame::Opcode;
use bridge::{run_publisher, run_subscriber};
pub use envelope::ENVELOPE_HEADER;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod bridge;
mod envelope;
mod link;

pub(crate) use link::Link;

/// How the subscriber waits for a message before it looks for subscription changes:
/// the delay of a new subscription, at worst, when no message is flowing.
const SUBSCRIBER_POLL: Duration = Duration::from_millis(10);

/// How long a command to the broker may take before the connection counts as lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// After this long without a message, the subscriber pings the broker: a connection
/// that died silently (a balancer's or NAT's idle timeout) is found and replaced
/// rather than leaving the node deaf.
const SUBSCRIBER_PING: Duration = Duration::from_secs(30);

/// How a node joins the others: where the broker is, and the bounds of the queue
/// towards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The broker: `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// This node's id in the envelope; `None` draws a random one (the default). Two
    /// nodes with the same id drop each other's messages as their own.
    pub node_id: Option<u64>,
    /// Prefix of every channel: topic NAME is `{namespace}topic:NAME`, broadcast is
    /// `{namespace}broadcast`. Default `wsreactor:`; give each cluster sharing one
    /// Redis its own.
    pub namespace: String,
    /// Topics whose name starts with one of these stay on their node: never
    /// published to the broker nor subscribed at it (the binary's stats stream, whose
    /// numbers are per node). Default: none.
    pub local_topic_prefixes: Vec<String>,
    /// Messages that may wait for the broker, at most (default 65,536). Past it a
    /// publish is delivered locally only, and counted as dropped.
    pub queue_capacity: usize,
    /// Bytes (envelopes included) that may wait for the broker, at most
    /// (default 64 MiB).
    pub queue_bytes: usize,
    /// The first wait before reconnecting after the broker was lost (default 100 ms);
    /// doubled after each failure, up to `reconnect_max` (default 5 s).
    pub reconnect_min: Duration,
    /// The longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

impl ClusterConfig {
    /// The defaults, with the broker at `url`.
    pub fn new(url: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            url: url.into(),
            node_id: None,
            namespace: "wsreactor:".to_owned(),
            local_topic_prefixes: Vec::new(),
            queue_capacity: 1 << 16,
            queue_bytes: 64 << 20,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// Why [`Server::attach_cluster`](crate::Server::attach_cluster) did not attach.
#[derive(Debug)]
pub enum ClusterError {
    /// The URL does not parse as a Redis URL.
    InvalidUrl(String),
    /// The server has a cluster attached already.
    AlreadyAttached,
    /// A bridge thread could not be started.
    Spawn(std::io::Error),
    /// The server is one of several loops of a [`Reactor`](crate::Reactor): the
    /// bridge links one loop's topics only, so it is refused rather than half-linked.
    SeveralLoops,
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::InvalidUrl(e) => write!(f, "invalid broker URL: {e}"),
            ClusterError::AlreadyAttached => f.write_str("a cluster is attached already"),
            ClusterError::Spawn(e) => write!(f, "cannot start the cluster bridge: {e}"),
            ClusterError::SeveralLoops => {
                f.write_str("the cluster bridge links one loop only (threads = 1)")
            }
        }
    }
}

impl std::error::Error for ClusterError {}

/// The bridge's counters, as [`Cluster::stats`] reads them from any thread (the loop
/// copies the same numbers into its [`Stats`](crate::Stats) each turn).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Messages written to the broker.
    pub published: u64,
    /// Pipelined writes they took: one per loop turn that published, or fewer when
    /// the broker is slower than the loop.
    pub pipelines: u64,
    /// Publishes that did not reach the broker: the queue was full, the broker was
    /// away, or the write failed.
    pub publishes_dropped: u64,
    /// Messages from other nodes handed to the loop.
    pub received: u64,
    /// Messages from the broker not delivered: the loop's inbox was full, or the
    /// message was malformed or too large.
    pub received_dropped: u64,
    /// Both of the bridge's connections are up.
    pub connected: bool,
}

/// The running bridge, returned by
/// [`Server::attach_cluster`](crate::Server::attach_cluster). Dropping it takes the
/// node out of the cluster (its threads stop, its subscriptions end with their
/// connections); the server goes on serving locally.
pub struct Cluster {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.shared.node_id)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// This node's id, as its envelopes carry it.
    pub fn node_id(&self) -> u64 {
        self.shared.node_id
    }

    /// Whether both connections to the broker are up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected()
    }

    /// Waits up to `timeout` for the bridge to be connected; true if it is.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while !self.is_connected() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// The bridge's counters now.
    pub fn stats(&self) -> ClusterStats {
        self.shared.stats()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shared.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One message on its way to the broker.
struct Outgoing {
    channel: Box<str>,
    envelope: Vec<u8>,
}

/// What the loop and the bridge threads share.
pub(crate) struct Shared {
    node_id: u64,
    namespace: String,
    local_prefixes: Vec<String>,
    capacity: usize,
    capacity_bytes: usize,
    max_message_size: usize,
    reconnect: (Duration, Duration),
    client: redis::Client,
    url: String,
    /// Towards the publisher.
    queue: Mutex<Queue>,
    queue_ready: Condvar,
    /// Topic → whether it has local subscribers now, for the subscriber to apply
    /// (only the last state of each topic matters).
    changes: Mutex<HashMap<Box<str>, bool>>,
    changed: AtomicBool,
    /// Messages and bytes in `queue`, readable without its lock.
    queued: AtomicUsize,
    queued_bytes: AtomicUsize,
    stopping: AtomicBool,
    /// Wakes back-off sleeps when stopping.
    stop_lock: Mutex<()>,
    stop_wake: Condvar,
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    /// Set by the subscriber when it lost the broker: the publisher's connection (idle,
    /// maybe) is as dead, and is replaced before the next batch rather than by losing it.
    reset_publisher: AtomicBool,
    /// When the current outage began and the drops counted then; `None` while up.
    outage: Mutex<Option<(Instant, u64)>>,
    ever_connected: AtomicBool,
    published: AtomicU64,
    pipelines: AtomicU64,
    publishes_dropped: AtomicU64,
    received: AtomicU64,
    received_dropped: AtomicU64,
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<Outgoing>,
    bytes: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a push, a swap or a take: a panic cannot leave the
    // data half-changed, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn connected(&self) -> bool {
        self.publisher_up.load(Ordering::Relaxed) && self.subscriber_up.load(Ordering::Relaxed)
    }

    fn stats(&self) -> ClusterStats {
        ClusterStats {
            published: self.published.load(Ordering::Relaxed),
            pipelines: self.pipelines.load(Ordering::Relaxed),
            publishes_dropped: self.publishes_dropped.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            received_dropped: self.received_dropped.load(Ordering::Relaxed),
            connected: self.connected(),
        }
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _guard = lock(&self.stop_lock);
        self.stop_wake.notify_all();
        drop(_guard);
        let _queue = lock(&self.queue);
        self.queue_ready.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Notes that a connection failed or could not be made. Logged once per outage,
    /// whichever thread notices first; the rest at debug level.
    fn went_down(&self, role: &str, error: &redis::RedisError) {
        let mut outage = lock(&self.outage);
        if outage.is_some() {
            log::debug!("cluster: {role}: broker still away: {error}");
            return;
        }
        *outage = Some((
            Instant::now(),
            self.publishes_dropped.load(Ordering::Relaxed),
        ));
        if self.ever_connected.load(Ordering::Relaxed) {
            log::warn!(
                "cluster: lost the broker at {} ({role}: {error}); serving locally only \
                 (messages to other nodes are dropped and counted) until it is back",
                self.url
            );
        } else {
            log::warn!(
                "cluster: cannot reach the broker at {} ({error}); serving locally only, \
                 retrying in the background",
                self.url
            );
        }
    }

    /// Marks the publisher down and drops (counted) what waits for it, under the
    /// queue's lock (see `Link::flush`).
    fn publisher_down(&self, queue: &mut Queue) {
        self.publisher_up.store(false, Ordering::Relaxed);
        let dropped = queue.messages.len() as u64;
        queue.messages.clear();
        queue.bytes = 0;
        self.queued.store(0, Ordering::Relaxed);
        self.queued_bytes.store(0, Ordering::Relaxed);
        self.publishes_dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Marks one side up; once both are, ends the outage (logged with its length and
    /// what it dropped).
    fn came_up(&self, side: &AtomicBool) {
        // Under the outage's lock: the two sides may come up at the same moment, and
        // each must see the other's flag (relaxed stores alone could both miss).
        let mut outage = lock(&self.outage);
        side.store(true, Ordering::Relaxed);
        if !self.connected() {
            return;
        }
        let first = !self.ever_connected.swap(true, Ordering::Relaxed);
        match outage.take() {
            Some((since, dropped_before)) if !first => log::info!(
                "cluster: the broker at {} is back after {:.1} s; {} publishes to other \
                 nodes dropped meanwhile",
                self.url,
                since.elapsed().as_secs_f64(),
                self.publishes_dropped.load(Ordering::Relaxed) - dropped_before
            ),
            _ => log::info!("cluster: connected to the broker at {}", self.url),
        }
    }

    /// Sleeps `wait` unless stopped first; false if stopping.
    fn sleep(&self, wait: Duration) -> bool {
        let guard = lock(&self.stop_lock);
        if self.stopping() {
            return false;
        }
        let _ = self
            .stop_wake
            .wait_timeout(guard, wait)
            .unwrap_or_else(|p| p.into_inner());
        !self.stopping()
    }

    fn topic_channel(&self, topic: &str) -> String {
        format!("{}topic:{topic}", self.namespace)
    }

    fn broadcast_channel(&self) -> String {
        format!("{}broadcast", self.namespace)
    }

    fn is_local(&self, topic: &str) -> bool {
        self.local_prefixes.iter().any(|p| topic.starts_with(&**p))
    }
}

/// Starts the bridge threads for a server whose inbox `handle` reaches.
pub(crate) fn start(
    config: ClusterConfig,
    handle: Handle,
    max_message_size: usize,
) -> Result<(Link, Cluster), ClusterError> {
    let client = redis::Client::open(config.url.as_str())
        .map_err(|e| ClusterError::InvalidUrl(e.to_string()))?;
    let node_id = config.node_id.unwrap_or_else(random_id);
    let shared = Arc::new(Shared {
        node_id,
        namespace: config.namespace,
        local_prefixes: config.local_topic_prefixes,
        capacity: config.queue_capacity.max(1),
        capacity_bytes: config.queue_bytes,
        max_message_size,
        reconnect: (
            config.reconnect_min.max(Duration::from_millis(1)),
            config.reconnect_max.max(config.reconnect_min),
        ),
        client,
        url: config.url,
        queue: Mutex::new(Queue::default()),
        queue_ready: Condvar::new(),
        changes: Mutex::new(HashMap::new()),
        changed: AtomicBool::new(false),
        queued: AtomicUsize::new(0),
        queued_bytes: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        stop_lock: Mutex::new(()),
        stop_wake: Condvar::new(),
        publisher_up: AtomicBool::new(false),
        subscriber_up: AtomicBool::new(false),
        reset_publisher: AtomicBool::new(false),
        outage: Mutex::new(None),
        ever_connected: AtomicBool::new(false),
        published: AtomicU64::new(0),
        pipelines: AtomicU64::new(0),
        publishes_dropped: AtomicU64::new(0),
        received: AtomicU64::new(0),
        received_dropped: AtomicU64::new(0),
    });
    let mut threads = Vec::new();
    let publisher = Arc::clone(&shared);
    threads.push(
        std::thread::Builder::new()
            .name("wsreactor-cluster-pub".into())
            .spawn(move || run_publisher(&publisher))
            .map_err(ClusterError::Spawn)?,
    );
    let subscriber = Arc::clone(&shared);
    let spawned = std::thread::Builder::new()
        .name("wsreactor-cluster-sub".into())
        .spawn(move || run_subscriber(&subscriber, &handle));
    match spawned {
        Ok(thread) => threads.push(thread),
        Err(e) => {
            // The publisher stops when `Cluster` drops.
            drop(Cluster { shared, threads });
            return Err(ClusterError::Spawn(e));
        }
    }
    let link = Link::new(Arc::clone(&shared));
    Ok((link, Cluster { shared, threads }))
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_invalid_url_is_an_error_and_starts_nothing() {
        assert!(redis::Client::open("http://nowhere").is_err());
    }
}
