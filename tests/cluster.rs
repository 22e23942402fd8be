//! Topics and broadcast across nodes through a real `redis-server` (feature `cluster`).
//!
//! Each test starts its own `redis-server` on a free loopback port (no persistence,
//! not daemonized) and stops it by PID; the nodes are in-process servers on threads,
//! their clients raw WebSocket connections. `make test` installs Debian's
//! `redis-server` when it is missing and sets `WSREACTOR_REQUIRE_REDIS=1`, so there
//! these tests fail rather than skip without it.
#![cfg(feature = "cluster")]

mod common;

use common::{upgrade_request, wait_until, Raw, RFC_KEY, TEXT};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wsreactor::cluster::{Cluster, ClusterConfig, ClusterError};
use wsreactor::{Config, Ctx, Decision, Handle, Handler, HttpResponse, Message, Request, Server};

// ---------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------

struct Redis {
    child: Option<Child>,
    port: u16,
}

fn have_redis() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("WSREACTOR_REQUIRE_REDIS").is_none(),
            "redis-server is not installed, and WSREACTOR_REQUIRE_REDIS is set"
        );
        eprintln!(
            "SKIPPED: redis-server is not installed (`make test` installs it: \
             apt-get install redis-server)"
        );
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// A redis-server on a free port, or `None` (test skipped) if there is none.
    fn start() -> Option<Redis> {
        if !have_redis() {
            return None;
        }
        let mut redis = Redis {
            child: None,
            port: free_port(),
        };
        redis.restart();
        Some(redis)
    }

    /// (Re)starts the server on its port and waits until it answers.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_until("redis-server to answer PING", || {
            self.cli(&["PING"]).as_deref() == Some("PONG")
        });
    }

    /// Kills the server (SIGKILL, by its PID) and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// One command through `redis-cli` (installed with redis-server); its output,
    /// or `None` if it failed.
    fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (output.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// How many nodes are subscribed to `topic`'s channel (`PUBSUB NUMSUB`).
    fn subscribers(&self, topic: &str) -> Option<u64> {
        let channel = format!("wsreactor:topic:{topic}");
        let out = self.cli(&["PUBSUB", "NUMSUB", &channel])?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// The topic channels with a subscriber (`PUBSUB CHANNELS`).
    fn channels(&self) -> Vec<String> {
        let out = self
            .cli(&["PUBSUB", "CHANNELS", "wsreactor:topic:*"])
            .unwrap_or_default();
        out.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// The nodes
// ---------------------------------------------------------------------------------------

/// `/topic/NAME`: subscribed to NAME, and each message is published to NAME (the
/// sender gets its copy too). `/all`: each message is broadcast. `/burst/NAME`: each
/// message is published to NAME `BURST` times, numbered, in one callback.
struct Room;

const BURST: u32 = 100;

impl Handler for Room {
    /// The topic; empty for `/all`.
    type Session = String;

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<String> {
        match request.path() {
            "/all" => Decision::accept(),
            path if path.starts_with("/burst/") => {
                Decision::accept_with(format!("burst:{}", &path["/burst/".len()..]))
            }
            path => match path.strip_prefix("/topic/") {
                Some(topic) if !topic.is_empty() => Decision::accept_with(topic.to_owned()),
                _ => Decision::Reject(HttpResponse::not_found()),
            },
        }
    }

    fn on_open(&mut self, cx: &mut Ctx<'_, String>) {
        let topic = cx.session().clone();
        if !topic.is_empty() && !topic.starts_with("burst:") {
            cx.subscribe(&topic);
        }
    }

    fn on_message(&mut self, cx: &mut Ctx<'_, String>, message: Message<'_>) {
        let topic = cx.session().clone();
        if let Some(topic) = topic.strip_prefix("burst:") {
            for i in 0..BURST {
                cx.publish(topic, Message::Text(&format!("burst {i}")));
            }
            return;
        }
        if topic.is_empty() {
            cx.broadcast(message);
        } else {
            cx.publish(&topic, message);
        }
    }
}

struct Node {
    addr: SocketAddr,
    handle: Handle,
    cluster: Cluster,
}

fn cluster_config(url: String) -> ClusterConfig {
    ClusterConfig {
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..ClusterConfig::new(url)
    }
}

fn node(url: String) -> Node {
    let mut server =
        Server::bind("127.0.0.1:0".parse().unwrap(), Config::default(), Room).expect("bind");
    let cluster = server
        .attach_cluster(cluster_config(url))
        .expect("attach the cluster");
    let addr = server.local_addr();
    let handle = server.handle();
    std::thread::spawn(move || server.run());
    Node {
        addr,
        handle,
        cluster,
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.handle.shutdown();
    }
}

fn join(addr: SocketAddr, path: &str) -> Raw {
    let mut raw = Raw::connect(addr);
    raw.write(upgrade_request(path, RFC_KEY, "").as_bytes());
    assert_eq!(raw.read_http().status, 101, "upgrade on {path}");
    raw
}

fn read_text(raw: &mut Raw) -> String {
    let frame = raw.read_frame();
    assert_eq!((frame.fin, frame.opcode), (true, TEXT));
    String::from_utf8(frame.payload).unwrap()
}

/// Reads `n` messages of the form `PUBLISHER SEQ` and checks that each publisher's
/// sequence numbers arrive in order with no gap and no repeat: returns them by
/// publisher.
fn read_sequences(raw: &mut Raw, n: usize) -> HashMap<String, Vec<u32>> {
    let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
    for _ in 0..n {
        let text = read_text(raw);
        let (who, seq) = text.split_once(' ').expect("PUBLISHER SEQ");
        seen.entry(who.to_owned())
            .or_default()
            .push(seq.parse().unwrap());
    }
    seen
}

fn sends(raw: &mut Raw, who: &str, range: std::ops::Range<u32>) {
    for i in range {
        raw.send(true, TEXT, format!("{who} {i}").as_bytes());
    }
}

fn connected(nodes: &[&Node]) {
    for node in nodes {
        assert!(
            node.cluster.wait_connected(Duration::from_secs(10)),
            "the bridge did not connect"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[test]
fn publishes_from_both_nodes_reach_every_subscriber_once_in_publisher_order() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(redis.url()), node(redis.url()));
    connected(&[&a, &b]);
    assert_ne!(a.cluster.node_id(), b.cluster.node_id());
    let mut on_a: Vec<Raw> = (0..3).map(|_| join(a.addr, "/topic/room")).collect();
    let mut on_b: Vec<Raw> = (0..3).map(|_| join(b.addr, "/topic/room")).collect();
    wait_until("both nodes subscribed", || {
        redis.subscribers("room") == Some(2)
    });

    const N: u32 = 300;
    sends(&mut on_a[0], "a", 0..N);
    sends(&mut on_b[0], "b", 0..N);
    for i in 0..N {
        // A publish from another thread, through A's handle.
        while a.handle.publish_text("room", format!("h {i}")).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let expected: Vec<u32> = (0..N).collect();
    for raw in on_a.iter_mut().chain(on_b.iter_mut()) {
        let seen = read_sequences(raw, 3 * N as usize);
        for who in ["a", "b", "h"] {
            assert_eq!(seen.get(who), Some(&expected), "from {who}");
        }
        // Nothing twice: a node does not deliver its own messages again.
        raw.expect_silence(Duration::from_millis(200));
    }
    wait_until("A's publishes counted", || {
        a.cluster.stats().published == 2 * u64::from(N)
    });
    let (sa, sb) = (a.cluster.stats(), b.cluster.stats());
    assert_eq!(sb.published, u64::from(N));
    assert_eq!((sa.publishes_dropped, sb.publishes_dropped), (0, 0));
    assert_eq!((sa.received, sb.received), (u64::from(N), 2 * u64::from(N)));

    // Broadcast reaches every connection on every node, once.
    let mut sender = join(b.addr, "/all");
    sender.send(true, TEXT, b"to everyone");
    b.handle.broadcast_text("from a handle").unwrap();
    for raw in on_a.iter_mut().chain(on_b.iter_mut()) {
        assert_eq!(read_text(raw), "to everyone");
        assert_eq!(read_text(raw), "from a handle");
        raw.expect_silence(Duration::from_millis(200));
    }
    assert_eq!(read_text(&mut sender), "to everyone");
    assert_eq!(read_text(&mut sender), "from a handle");
}

#[test]
fn a_broker_restart_keeps_local_delivery_and_resumes_across_nodes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (a, b) = (node(redis.url()), node(redis.url()));
    connected(&[&a, &b]);
    let mut publisher = join(a.addr, "/topic/t");
    let mut local = join(a.addr, "/topic/t");
    let mut remote = join(b.addr, "/topic/t");
    wait_until("both nodes subscribed", || {
        redis.subscribers("t") == Some(2)
    });

    let all = |range: std::ops::Range<u32>| range.collect::<Vec<u32>>();
    sends(&mut publisher, "p", 0..50);
    for raw in [&mut publisher, &mut local, &mut remote] {
        assert_eq!(read_sequences(raw, 50)["p"], all(0..50));
    }

    redis.kill();
    wait_until("the bridges to see the broker gone", || {
        !a.cluster.is_connected() && !b.cluster.is_connected()
    });
    // Local delivery goes on while the broker is away.
    sends(&mut publisher, "p", 50..100);
    for raw in [&mut publisher, &mut local] {
        assert_eq!(read_sequences(raw, 50)["p"], all(50..100));
    }
    remote.expect_silence(Duration::from_millis(200));
    wait_until("the outage's publishes counted as dropped", || {
        a.cluster.stats().publishes_dropped == 50
    });

    redis.restart();
    connected(&[&a, &b]);
    wait_until("both nodes subscribed again", || {
        redis.subscribers("t") == Some(2)
    });
    sends(&mut publisher, "p", 100..150);
    for raw in [&mut publisher, &mut local] {
        assert_eq!(read_sequences(raw, 50)["p"], all(100..150));
    }
    // Across the broker: what was sent after the reconnect, and nothing from the
    // outage, nothing twice.
    assert_eq!(read_sequences(&mut remote, 50)["p"], all(100..150));
    remote.expect_silence(Duration::from_millis(200));
    wait_until("A's publishes counted", || {
        a.cluster.stats().published == 100
    });
    let stats = a.cluster.stats();
    assert_eq!(stats.publishes_dropped, 50);
    assert_eq!(b.cluster.stats().received, 100);
}

#[test]
fn the_last_local_subscriber_leaving_unsubscribes_the_node() {
    let Some(redis) = Redis::start() else { return };
    let a = node(redis.url());
    connected(&[&a]);
    let mut first = join(a.addr, "/topic/solo");
    let mut second = join(a.addr, "/topic/solo");
    let mut other = join(a.addr, "/topic/other");
    wait_until("subscribed", || {
        let mut channels = redis.channels();
        channels.sort();
        channels == ["wsreactor:topic:other", "wsreactor:topic:solo"]
    });
    first.close_cleanly();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(redis.subscribers("solo"), Some(1), "one subscriber is left");
    second.close_cleanly();
    wait_until("solo unsubscribed", || {
        redis.channels() == ["wsreactor:topic:other"]
    });
    // A new first subscriber subscribes the node again.
    let _again = join(a.addr, "/topic/solo");
    wait_until("solo subscribed again", || {
        redis.subscribers("solo") == Some(1)
    });
    other.close_cleanly();
    wait_until("other unsubscribed", || {
        redis.subscribers("other") == Some(0)
    });
}

#[test]
fn an_unreachable_broker_is_no_obstacle_to_local_service_and_is_joined_when_up() {
    if !have_redis() {
        return;
    }
    // Nothing listens there yet.
    let mut redis = Redis {
        child: None,
        port: free_port(),
    };
    let a = node(redis.url());
    let mut publisher = join(a.addr, "/topic/t");
    let mut local = join(a.addr, "/topic/t");
    sends(&mut publisher, "p", 0..10);
    for raw in [&mut publisher, &mut local] {
        assert_eq!(read_sequences(raw, 10)["p"], (0..10).collect::<Vec<_>>());
    }
    assert!(!a.cluster.is_connected());
    assert_eq!(a.cluster.stats().publishes_dropped, 10);

    let started = Instant::now();
    redis.restart();
    connected(&[&a]);
    wait_until("subscribed after the late start", || {
        redis.subscribers("t") == Some(1)
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    let b = node(redis.url());
    connected(&[&b]);
    let mut remote = join(b.addr, "/topic/t");
    wait_until("both nodes subscribed", || {
        redis.subscribers("t") == Some(2)
    });
    sends(&mut remote, "r", 0..10);
    assert_eq!(
        read_sequences(&mut local, 10)["r"],
        (0..10).collect::<Vec<_>>()
    );
}

#[test]
fn a_url_that_does_not_parse_is_an_error_and_a_second_attach_too() {
    let mut server =
        Server::bind("127.0.0.1:0".parse().unwrap(), Config::default(), Room).expect("bind");
    assert!(matches!(
        server.attach_cluster(ClusterConfig::new("http://not-redis")),
        Err(ClusterError::InvalidUrl(_))
    ));
    // Nothing listens on this port: still attached (and retrying), not an error.
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let cluster = server.attach_cluster(cluster_config(url.clone())).unwrap();
    assert!(matches!(
        server.attach_cluster(cluster_config(url)),
        Err(ClusterError::AlreadyAttached)
    ));
    drop(cluster);
}

/// Two `wsreactor --redis` processes: their `/topic/NAME` rooms are one room, the
/// sender gets its own copy once, and `/stats` shows the bridge.
#[cfg(feature = "cli")]
#[test]
fn two_binaries_with_redis_share_their_topic_rooms() {
    let Some(redis) = Redis::start() else { return };
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let spawn = || {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wsreactor"))
            .args(["--listen", &addr.to_string(), "--redis", &redis.url()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn wsreactor");
        wait_until("the child to listen", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        (Child(child), addr)
    };
    let ((_a, a), (_b, b)) = (spawn(), spawn());
    let mut on_a = join(a, "/topic/lobby");
    let mut on_b = join(b, "/topic/lobby");
    let mut elsewhere = join(b, "/topic/other");
    wait_until("both nodes subscribed", || {
        redis.subscribers("lobby") == Some(2)
    });
    on_a.send(true, TEXT, b"hello from a");
    on_b.send(true, TEXT, b"hello from b");
    for raw in [&mut on_a, &mut on_b] {
        let mut got = [read_text(raw), read_text(raw)];
        got.sort();
        assert_eq!(got, ["hello from a", "hello from b"]);
        raw.expect_silence(Duration::from_millis(200));
    }
    elsewhere.expect_silence(Duration::from_millis(50));
    // A name that is not one: 404.
    let mut bad = Raw::connect(a);
    bad.write(upgrade_request("/topic/a%20b", RFC_KEY, "").as_bytes());
    assert_eq!(bad.read_http().status, 404);
    // The stats stream's topic stays on its node.
    assert!(!redis.channels().iter().any(|c| c.contains("stats")));
}

/// A broker that stops answering (SIGSTOP: its connections stay up, its replies stop)
/// fills the queue towards it and no more: past `queue_capacity` publishes are dropped
/// and counted, local delivery goes on, and once it answers again the other node gets
/// what was queued, in order, nothing twice.
#[test]
fn a_stalled_broker_meets_a_bounded_queue() {
    let Some(redis) = Redis::start() else { return };
    const CAPACITY: usize = 50;
    let b = node(redis.url());
    let mut server =
        Server::bind("127.0.0.1:0".parse().unwrap(), Config::default(), Room).expect("bind");
    let a_cluster = server
        .attach_cluster(ClusterConfig {
            queue_capacity: CAPACITY,
            ..cluster_config(redis.url())
        })
        .unwrap();
    let a_addr = server.local_addr();
    let a_handle = server.handle();
    std::thread::spawn(move || server.run());
    assert!(a_cluster.wait_connected(Duration::from_secs(10)));
    connected(&[&b]);
    let mut publisher = join(a_addr, "/topic/q");
    let mut remote = join(b.addr, "/topic/q");
    wait_until("both nodes subscribed", || {
        redis.subscribers("q") == Some(2)
    });

    let pid = redis.child.as_ref().unwrap().id().to_string();
    let signal = |name: &str| {
        let status = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    const N: u32 = 1000;
    sends(&mut publisher, "p", 0..N);
    // Local delivery does not wait for the broker.
    assert_eq!(
        read_sequences(&mut publisher, N as usize)["p"],
        (0..N).collect::<Vec<_>>()
    );
    // At most one batch in flight and a full queue behind it: the rest is dropped.
    wait_until("the overflow counted", || {
        a_cluster.stats().publishes_dropped >= u64::from(N) - 2 * CAPACITY as u64
    });
    signal("-CONT");
    wait_until("everything accounted for", || {
        let stats = a_cluster.stats();
        stats.published + stats.publishes_dropped == u64::from(N)
    });
    let published = a_cluster.stats().published as usize;
    assert!(published <= 2 * CAPACITY, "{published} published");
    // What was published arrives, in order, once.
    let seen = read_sequences(&mut remote, published)["p"].clone();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    remote.expect_silence(Duration::from_millis(200));
    let _ = a_handle.shutdown();
}

/// The publishes of one loop turn leave for the broker as one pipeline.
#[test]
fn one_turns_publishes_leave_in_one_pipeline() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(redis.url()), node(redis.url()));
    connected(&[&a, &b]);
    let mut remote = join(b.addr, "/topic/burst");
    wait_until("B subscribed", || redis.subscribers("burst") == Some(1));
    let mut trigger = join(a.addr, "/burst/burst");
    let before = a.cluster.stats();
    trigger.send(true, TEXT, b"go");
    let seen = read_sequences(&mut remote, BURST as usize);
    assert_eq!(seen["burst"], (0..BURST).collect::<Vec<_>>());
    wait_until("the burst counted", || {
        a.cluster.stats().published == before.published + u64::from(BURST)
    });
    // One callback, one turn: one write to the broker.
    assert_eq!(a.cluster.stats().pipelines, before.pipelines + 1);
}
