//! The embedding API end to end, over loopback sockets: a [`Handle`] driven from other
//! threads, broadcast and publish (one encode for every receiver), topics, sessions,
//! sends and closes aimed at other connections, and the edges of `Handle` (stale ids,
//! shutdown, a dropped server, a full command queue).
//!
//! Every test runs its own server with [`Hub`], a handler that acts on text commands
//! (`sub:news`, `pub:news:hello`, `to:bob:hi`, ...) and reports what it did and saw
//! (`on_open`, `on_close`, the `Fanout` of a publish, `Ctx::stats`) over channels, so
//! the test thread can assert on the server's side of things too.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};
use wsreactor::{
    CloseCode, CloseReason, Config, ConnId, Ctx, Decision, Fanout, Handle, HandleError, Handler,
    Message, Request, SendStatus, Server, Stats,
};

/// How long a connection must stay silent to count as "received nothing".
const QUIET: Duration = Duration::from_millis(200);

/// Per-connection state: built from the upgrade request, changed by every message.
#[derive(Debug, Default)]
struct Session {
    /// From the query string (`?name=ada`), `anon` without one.
    name: String,
    /// Messages this connection has sent.
    messages: u32,
}

/// What the handler did on the loop's thread, for the test to check.
#[derive(Debug)]
enum Report {
    /// A broadcast or publish: its outcome, and the server's counters around it.
    Fanout {
        fanout: Fanout,
        before: Box<Stats>,
        after: Box<Stats>,
    },
    Stats(Box<Stats>),
    /// The outcome of a `send_to`.
    SendTo(SendStatus),
    /// `on_message` is about to block until the test opens the gate.
    Blocked,
}

/// The handler: text commands (`verb:argument`), binary messages published to `feed`.
struct Hub {
    opens: Sender<(ConnId, String)>,
    closes: Sender<(ConnId, Session, CloseReason)>,
    reports: Sender<Report>,
    gate: Receiver<()>,
    /// The latest connection of each name, kept after it closes (to aim at stale ids).
    ids: HashMap<String, ConnId>,
}

/// The test's side of a [`Hub`].
struct Probe {
    opens: Receiver<(ConnId, String)>,
    closes: Receiver<(ConnId, Session, CloseReason)>,
    reports: Receiver<Report>,
    gate: Sender<()>,
}

impl Hub {
    fn new() -> (Hub, Probe) {
        let (opens_tx, opens) = mpsc::channel();
        let (closes_tx, closes) = mpsc::channel();
        let (reports_tx, reports) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let hub = Hub {
            opens: opens_tx,
            closes: closes_tx,
            reports: reports_tx,
            gate: gate_rx,
            ids: HashMap::new(),
        };
        (
            hub,
            Probe {
                opens,
                closes,
                reports,
                gate,
            },
        )
    }

    fn report(&self, report: Report) {
        let _ = self.reports.send(report);
    }

    fn id_of(&self, name: &str) -> ConnId {
        *self
            .ids
            .get(name)
            .unwrap_or_else(|| panic!("no connection named {name:?}"))
    }
}

impl Handler for Hub {
    type Session = Session;

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<Session> {
        let name = request
            .query()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .find_map(|pair| pair.strip_prefix("name="))
            .unwrap_or("anon");
        Decision::accept_with(Session {
            name: name.to_owned(),
            messages: 0,
        })
    }

    fn on_open(&mut self, cx: &mut Ctx<'_, Session>) {
        let id = cx.id();
        let name = cx.session().name.clone();
        self.ids.insert(name.clone(), id);
        let _ = self.opens.send((id, name));
    }

    fn on_message(&mut self, cx: &mut Ctx<'_, Session>, message: Message<'_>) {
        cx.session().messages += 1;
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(bytes) => {
                let before = Box::new(cx.stats().clone());
                let fanout = cx.publish("feed", Message::Binary(bytes));
                let after = Box::new(cx.stats().clone());
                return self.report(Report::Fanout {
                    fanout,
                    before,
                    after,
                });
            }
        };
        let (verb, argument) = text.split_once(':').unwrap_or((text, ""));
        match verb {
            "stats" => self.report(Report::Stats(Box::new(cx.stats().clone()))),
            "whoami" => {
                let name = cx.session().name.clone();
                let _ = cx.send_text(&name);
            }
            "broadcast" => {
                let before = Box::new(cx.stats().clone());
                let fanout = cx.broadcast(Message::Text(argument));
                let after = Box::new(cx.stats().clone());
                self.report(Report::Fanout {
                    fanout,
                    before,
                    after,
                });
            }
            "sub" => {
                let added = cx.subscribe(argument);
                let _ = cx.send_text(&format!("sub {argument} {added}"));
            }
            "unsub" => {
                let removed = cx.unsubscribe(argument);
                let _ = cx.send_text(&format!("unsub {argument} {removed}"));
            }
            "pub" => {
                let (topic, body) = argument.split_once(':').expect("pub:TOPIC:BODY");
                let before = Box::new(cx.stats().clone());
                let fanout = cx.publish(topic, Message::Text(body));
                let after = Box::new(cx.stats().clone());
                self.report(Report::Fanout {
                    fanout,
                    before,
                    after,
                });
            }
            "to" => {
                let (name, body) = argument.split_once(':').expect("to:NAME:BODY");
                let from = cx.session().name.clone();
                let to = self.id_of(name);
                let status = cx.send_to(to, Message::Text(&format!("from {from}: {body}")));
                self.report(Report::SendTo(status));
            }
            "kick" => {
                let (name, code) = argument.split_once(':').expect("kick:NAME:CODE");
                let code = CloseCode(code.parse().expect("a close code"));
                if let Err(e) = cx.close_connection(self.id_of(name), code, "kicked") {
                    let _ = cx.send_text(&format!("kick refused: {e}"));
                }
            }
            "block" => {
                // Hold the whole loop until the test opens the gate (bounded, in case
                // the test failed and never does).
                self.report(Report::Blocked);
                let _ = self.gate.recv_timeout(IO_TIMEOUT);
            }
            _ => {
                let _ = cx.send_text(text);
            }
        }
    }

    fn on_close(&mut self, id: ConnId, session: Session, reason: &CloseReason) {
        let _ = self.closes.send((id, session, reason.clone()));
    }
}

impl Probe {
    fn open(&self) -> (ConnId, String) {
        self.opens
            .recv_timeout(IO_TIMEOUT)
            .expect("on_open was not called")
    }

    fn close(&self) -> (ConnId, Session, CloseReason) {
        self.closes
            .recv_timeout(IO_TIMEOUT)
            .expect("on_close was not called")
    }

    fn report(&self) -> Report {
        self.reports
            .recv_timeout(IO_TIMEOUT)
            .expect("the handler reported nothing")
    }

    fn fanout(&self) -> (Fanout, Stats, Stats) {
        match self.report() {
            Report::Fanout {
                fanout,
                before,
                after,
            } => (fanout, *before, *after),
            other => panic!("expected a fanout report, got {other:?}"),
        }
    }

    fn stats(&self, raw: &mut Raw) -> Stats {
        raw.send(true, TEXT, b"stats");
        match self.report() {
            Report::Stats(stats) => *stats,
            other => panic!("expected stats, got {other:?}"),
        }
    }

    fn send_to_status(&self) -> SendStatus {
        match self.report() {
            Report::SendTo(status) => status,
            other => panic!("expected a send_to status, got {other:?}"),
        }
    }

    fn blocked(&self) {
        match self.report() {
            Report::Blocked => {}
            other => panic!("expected the handler to block, got {other:?}"),
        }
    }

    fn open_gate(&self) {
        self.gate.send(()).expect("the handler is gone");
    }

    /// Connects as `name` (via the query string) and returns the client and the id
    /// `on_open` saw. Connections must be opened one at a time for the ids to match.
    fn connect(&self, addr: SocketAddr, name: &str) -> (Raw, ConnId) {
        let raw = open_at(addr, &format!("/hub?name={name}"));
        let (id, seen) = self.open();
        assert_eq!(seen, name, "on_open saw another connection's session");
        (raw, id)
    }
}

/// Connects and upgrades on `target` (path and query).
fn open_at(addr: SocketAddr, target: &str) -> Raw {
    let mut raw = Raw::connect(addr);
    raw.write(upgrade_request(target, RFC_KEY, "").as_bytes());
    let head = raw.read_http();
    assert_eq!(head.status, 101, "upgrade of {target} refused: {head:?}");
    raw
}

/// Reads one frame and checks it is a whole text message; returns its text.
fn read_text(raw: &mut Raw) -> String {
    let frame = raw.read_frame();
    assert!(
        frame.fin && frame.rsv == 0 && frame.opcode == TEXT,
        "expected a text message, got {frame:?}"
    );
    String::from_utf8(frame.payload).expect("text is UTF-8")
}

fn command(raw: &mut Raw, text: &str) {
    raw.send(true, TEXT, text.as_bytes());
}

/// The slot part of a `ConnId` (`#slot.generation`).
fn slot_of(id: ConnId) -> String {
    let shown = id.to_string();
    shown.split('.').next().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------
// Handle under load
// ---------------------------------------------------------------------------------------

#[test]
fn handle_delivers_100k_messages_to_100_connections_from_another_thread() {
    const CLIENTS: usize = 100;
    const PER_CLIENT: usize = 1000;
    const TOTAL: usize = CLIENTS * PER_CLIENT;
    /// The producer gives up (and the test fails) if the queue stays full this long.
    const PRODUCER_DEADLINE: Duration = Duration::from_secs(60);

    let config = Config::default();
    let capacity = config.handle_queue_capacity;
    let (hub, probe) = Hub::new();
    let server = spawn_server(config, hub);
    let clients: Vec<(Raw, ConnId)> = (0..CLIENTS)
        .map(|i| probe.connect(server.addr, &format!("c{i}")))
        .collect();
    let ids: Vec<ConnId> = clients.iter().map(|(_, id)| *id).collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), CLIENTS, "ids are not unique: {ids:?}");
    let (mut control, _) = probe.connect(server.addr, "control");

    let started = Instant::now();
    // One reader per connection: exactly its own messages, in order.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(mut raw, id)| {
            thread::spawn(move || -> Result<(), String> {
                for seq in 0..PER_CLIENT {
                    let frame = raw.read_frame();
                    let expected = format!("{id} {seq}");
                    if !(frame.fin && frame.opcode == TEXT && frame.payload == expected.as_bytes())
                    {
                        return Err(format!(
                            "connection {id}, message {seq}: expected {expected:?}, got \
                             fin {} opcode {} {:?}",
                            frame.fin,
                            frame.opcode,
                            String::from_utf8_lossy(&frame.payload)
                        ));
                    }
                }
                Ok(())
            })
        })
        .collect();
    // Round-robin through a cloned Handle; a full queue is retried after a short pause.
    let producer = {
        let handle = server.handle.clone();
        let ids = ids.clone();
        thread::spawn(move || -> Result<(u64, Duration), String> {
            let started = Instant::now();
            let mut full = 0u64;
            for i in 0..TOTAL {
                let id = ids[i % CLIENTS];
                let text = format!("{id} {}", i / CLIENTS);
                loop {
                    match handle.send_text(id, text.as_str()) {
                        Ok(()) => break,
                        Err(HandleError::Full) => {
                            full += 1;
                            if started.elapsed() > PRODUCER_DEADLINE {
                                return Err(format!(
                                    "queue still full after {PRODUCER_DEADLINE:?}, at message {i}"
                                ));
                            }
                            thread::sleep(Duration::from_micros(50));
                        }
                        Err(e) => {
                            return Err(format!("server gone at message {i}: {e}"));
                        }
                    }
                }
            }
            Ok((full, started.elapsed()))
        })
    };

    let (full, produced_in) = producer
        .join()
        .expect("producer panicked")
        .unwrap_or_else(|e| panic!("producer: {e}"));
    let mut failures = Vec::new();
    for reader in readers {
        match reader.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(panic) => failures.push(format!("reader panicked: {panic:?}")),
        }
    }
    let wall = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} readers failed: {failures:#?}",
        failures.len()
    );

    // Nothing else was sent, nothing dropped.
    let stats = probe.stats(&mut control);
    assert_eq!(stats.messages_out, TOTAL as u64, "{stats:?}");
    println!(
        "handle_delivers_100k: {TOTAL} messages to {CLIENTS} connections through a Handle \
         in {wall:.2?} wall ({:.0} msg/s; producer done after {produced_in:.2?}); \
         HandleError::Full {full} times (handle_queue_capacity {capacity})",
        TOTAL as f64 / wall.as_secs_f64()
    );
    assert!(wall < Duration::from_secs(60), "took {wall:?}");
}

// ---------------------------------------------------------------------------------------
// Broadcast
// ---------------------------------------------------------------------------------------

#[test]
fn broadcast_to_1000_connections_encodes_the_frame_once() {
    const CLIENTS: usize = 1000;
    let limit = wsreactor::config::raise_open_file_limit().expect("raise RLIMIT_NOFILE");
    // Two descriptors per connection in this process (client and server side), plus
    // what the other tests of this binary hold meanwhile.
    assert!(
        limit >= 2 * CLIENTS + 512,
        "open-file limit {limit} is too low for {CLIENTS} connections"
    );
    // After the raise: the default `max_connections` is read from the limit.
    let config = Config::default();
    assert!(config.max_connections > CLIENTS, "{config:?}");
    let (hub, probe) = Hub::new();
    let server = spawn_server(config, hub);
    let mut clients: Vec<Raw> = (0..CLIENTS)
        .map(|i| probe.connect(server.addr, &format!("c{i}")).0)
        .collect();

    // From inside the loop: one client asks, the handler broadcasts once.
    command(&mut clients[0], "broadcast:news for everyone");
    let (fanout, before, after) = probe.fanout();
    for (i, raw) in clients.iter_mut().enumerate() {
        let text = read_text(raw);
        assert_eq!(text, "news for everyone", "client {i}");
    }
    assert_eq!(
        fanout,
        Fanout {
            sent: CLIENTS,
            refused: 0
        }
    );
    assert_eq!(after.open_connections, CLIENTS as u64);
    assert_eq!(
        after.fanout_frames_encoded - before.fanout_frames_encoded,
        1,
        "encodes: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.fanout_deliveries - before.fanout_deliveries,
        CLIENTS as u64,
        "deliveries: {before:?} -> {after:?}"
    );
    assert_eq!(after.messages_out - before.messages_out, CLIENTS as u64);

    // From another thread, through the Handle.
    let before = probe.stats(&mut clients[0]);
    let handle = server.handle.clone();
    thread::spawn(move || handle.broadcast_text("from another thread"))
        .join()
        .unwrap()
        .expect("broadcast_text");
    for (i, raw) in clients.iter_mut().enumerate() {
        assert_eq!(read_text(raw), "from another thread", "client {i}");
    }
    let after = probe.stats(&mut clients[0]);
    assert_eq!(
        after.fanout_frames_encoded - before.fanout_frames_encoded,
        1,
        "encodes: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.fanout_deliveries - before.fanout_deliveries,
        CLIENTS as u64,
        "deliveries: {before:?} -> {after:?}"
    );
    assert_eq!(after.messages_out - before.messages_out, CLIENTS as u64);

    // Free the descriptors: shut down, and let the clients go.
    server.handle.shutdown().unwrap();
    drop(clients);
    server.join().expect("run() after shutdown");
}

// ---------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------

fn subscribe(raw: &mut Raw, topic: &str, expect_added: bool) {
    command(raw, &format!("sub:{topic}"));
    assert_eq!(read_text(raw), format!("sub {topic} {expect_added}"));
}

fn unsubscribe(raw: &mut Raw, topic: &str, expect_removed: bool) {
    command(raw, &format!("unsub:{topic}"));
    assert_eq!(read_text(raw), format!("unsub {topic} {expect_removed}"));
}

/// Publishes `body` on `topic` through `publisher`'s handler and checks the fanout.
fn publish(probe: &Probe, publisher: &mut Raw, topic: &str, body: &str, sent: usize) {
    command(publisher, &format!("pub:{topic}:{body}"));
    let (fanout, before, after) = probe.fanout();
    assert_eq!(
        fanout,
        Fanout { sent, refused: 0 },
        "publish {body:?} on {topic}"
    );
    // Encoded once, and not at all for a topic nobody here has joined.
    assert_eq!(
        after.fanout_frames_encoded - before.fanout_frames_encoded,
        u64::from(sent > 0)
    );
    assert_eq!(
        after.fanout_deliveries - before.fanout_deliveries,
        sent as u64
    );
}

#[test]
fn topics_reach_subscribers_only_and_forget_unsubscribed_and_closed_ones() {
    let (hub, probe) = Hub::new();
    let server = spawn_server(Config::default(), hub);
    let (mut a, _) = probe.connect(server.addr, "a");
    let (mut b, _) = probe.connect(server.addr, "b");
    // The publisher, never subscribed.
    let (mut c, _) = probe.connect(server.addr, "c");
    subscribe(&mut a, "news", true);
    subscribe(&mut b, "news", true);
    subscribe(&mut a, "news", false);
    subscribe(&mut c, "other", true);

    publish(&probe, &mut c, "news", "one", 2);
    assert_eq!(read_text(&mut a), "one");
    assert_eq!(read_text(&mut b), "one");
    c.expect_silence(QUIET);

    // From another thread.
    server.handle.publish_text("news", "two").unwrap();
    assert_eq!(read_text(&mut a), "two");
    assert_eq!(read_text(&mut b), "two");
    c.expect_silence(QUIET);

    unsubscribe(&mut b, "news", true);
    unsubscribe(&mut b, "news", false);
    publish(&probe, &mut c, "news", "three", 1);
    assert_eq!(read_text(&mut a), "three");
    b.expect_silence(QUIET);

    // Subscribers that leave, cleanly or not, are no longer counted.
    let (mut d, d_id) = probe.connect(server.addr, "d");
    let (mut e, e_id) = probe.connect(server.addr, "e");
    subscribe(&mut d, "news", true);
    subscribe(&mut e, "news", true);
    publish(&probe, &mut c, "news", "four", 3);
    for raw in [&mut a, &mut d, &mut e] {
        assert_eq!(read_text(raw), "four");
    }
    d.close_cleanly();
    drop(d);
    let (id, session, reason) = probe.close();
    assert_eq!((id, session.name.as_str()), (d_id, "d"));
    assert_eq!(reason.code(), CloseCode::NORMAL);
    publish(&probe, &mut c, "news", "five", 2);
    assert_eq!(read_text(&mut a), "five");
    assert_eq!(read_text(&mut e), "five");

    drop(e); // TCP gone without a close handshake
    let (id, _, reason) = probe.close();
    assert_eq!((id, reason), (e_id, CloseReason::Abnormal));
    publish(&probe, &mut c, "news", "six", 1);
    assert_eq!(read_text(&mut a), "six");
    // Newcomers take the freed slots: they must not inherit the subscriptions.
    let (mut f, _) = probe.connect(server.addr, "f");
    let (mut g, _) = probe.connect(server.addr, "g");
    publish(&probe, &mut c, "news", "six again", 1);
    assert_eq!(read_text(&mut a), "six again");
    f.expect_silence(QUIET);
    g.expect_silence(QUIET);

    // A topic with no subscribers reaches no one; the other topic is untouched.
    publish(&probe, &mut a, "nobody", "seven", 0);
    publish(&probe, &mut a, "other", "eight", 1);
    assert_eq!(read_text(&mut c), "eight");
    b.expect_silence(QUIET);
}

/// Message `seq` of the slow-subscriber test: 32 KiB (written through, not corked),
/// numbered in its first 4 bytes.
fn feed_message(seq: u32) -> Vec<u8> {
    let mut payload = pattern(u64::from(seq), 32 * 1024);
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    payload
}

#[test]
fn slow_subscriber_is_refused_while_a_fast_one_gets_every_message() {
    const MAX_MESSAGES: u32 = 4000; // 128 MiB: far more than loopback buffers hold
    const AFTER_REFUSAL: u32 = 20;
    let config = Config {
        max_send_queue: 256 * 1024,
        // At most the queue cap (Config::validate); the slow subscriber sends nothing,
        // so when reading from it pauses does not matter here.
        write_high_water: 128 * 1024,
        // The slow subscriber must be refused, not closed, during the test.
        send_stall_timeout: Duration::from_secs(120),
        ..Config::default()
    };
    let (hub, probe) = Hub::new();
    let server = spawn_server(config, hub);
    let (mut fast, _) = probe.connect(server.addr, "fast");
    let (mut slow, _) = probe.connect(server.addr, "slow");
    let (mut publisher, _) = probe.connect(server.addr, "publisher");
    subscribe(&mut fast, "feed", true);
    subscribe(&mut slow, "feed", true);

    // Publish (binary messages are published to `feed`) one at a time; the fast
    // subscriber reads each, the slow one reads nothing.
    let mut published = 0u32;
    let mut refused_total = 0usize;
    let mut first_refusal = None;
    while published < MAX_MESSAGES {
        let payload = feed_message(published);
        publisher.send(true, BINARY, &payload);
        let (fanout, _, _) = probe.fanout();
        let frame = fast.read_frame();
        assert!(
            frame.fin && frame.opcode == BINARY && frame.payload == payload,
            "fast subscriber: message {published} missing or corrupt (fanout {fanout:?})"
        );
        assert_eq!(fanout.sent + fanout.refused, 2, "{fanout:?}");
        assert!(
            fanout.sent >= 1,
            "the fast subscriber was refused: {fanout:?}"
        );
        refused_total += fanout.refused;
        published += 1;
        if fanout.refused > 0 && first_refusal.is_none() {
            first_refusal = Some(published);
        }
        if first_refusal.is_some_and(|at| published >= at + AFTER_REFUSAL) {
            break;
        }
    }
    let first_refusal = first_refusal.unwrap_or_else(|| {
        panic!("{published} messages of 32 KiB published, the slow subscriber never refused")
    });
    println!(
        "slow subscriber: first refused at message {first_refusal}, {refused_total} of \
         {published} refused"
    );
    // The loop keeps serving everyone else: the publisher, and a newcomer.
    command(&mut publisher, "still there?");
    assert_eq!(read_text(&mut publisher), "still there?");
    let (mut newcomer, _) = probe.connect(server.addr, "newcomer");
    command(&mut newcomer, "whoami");
    assert_eq!(read_text(&mut newcomer), "newcomer");

    // The slow subscriber, reading at last: whole messages, in order, exactly the ones
    // it was not refused, then nothing.
    let expected = published as usize - refused_total;
    let mut last = None;
    for n in 0..expected {
        let frame = slow.read_frame();
        assert!(
            frame.fin && frame.opcode == BINARY,
            "slow frame {n}: {frame:?}"
        );
        let seq = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
        assert!(
            last.is_none_or(|last| seq > last),
            "out of order: {seq} after {last:?}"
        );
        assert!(frame.payload == feed_message(seq), "message {seq} corrupt");
        last = Some(seq);
    }
    slow.expect_silence(QUIET);
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

#[test]
fn session_is_built_from_the_request_lent_to_callbacks_and_handed_back_on_close() {
    let (hub, probe) = Hub::new();
    let server = spawn_server(Config::default(), hub);
    let mut ada = open_at(server.addr, "/echo?name=ada");
    let (ada_id, name) = probe.open();
    assert_eq!(name, "ada");
    let mut bob = open_at(server.addr, "/chat?lang=en&name=bob");
    let (bob_id, name) = probe.open();
    assert_eq!(name, "bob");
    let mut anon = open_at(server.addr, "/chat");
    let (_, name) = probe.open();
    assert_eq!(name, "anon");

    for (raw, name) in [(&mut ada, "ada"), (&mut bob, "bob"), (&mut anon, "anon")] {
        command(raw, "whoami");
        assert_eq!(read_text(raw), name);
    }
    for text in ["one", "two"] {
        command(&mut ada, text);
        assert_eq!(read_text(&mut ada), text);
    }
    ada.close_cleanly();
    let (id, session, reason) = probe.close();
    assert_eq!(id, ada_id);
    assert_eq!(session.name, "ada");
    assert_eq!(session.messages, 3, "changes to the session were lost");
    assert_eq!(
        reason,
        CloseReason::Peer {
            code: CloseCode::NORMAL,
            reason: String::new()
        }
    );

    drop(bob);
    let (id, session, reason) = probe.close();
    assert_eq!(
        (id, session.name.as_str(), session.messages),
        (bob_id, "bob", 1)
    );
    assert_eq!(reason, CloseReason::Abnormal);

    // Every other connection kept its own session.
    command(&mut anon, "whoami");
    assert_eq!(read_text(&mut anon), "anon");
}

// ---------------------------------------------------------------------------------------
// Acting on other connections from inside the handler
// ---------------------------------------------------------------------------------------

#[test]
fn handler_relays_with_send_to_and_closes_another_connection() {
    let (hub, probe) = Hub::new();
    let server = spawn_server(Config::default(), hub);
    let (mut alice, _) = probe.connect(server.addr, "alice");
    let (mut bob, bob_id) = probe.connect(server.addr, "bob");

    command(&mut alice, "to:bob:hi bob");
    assert_eq!(read_text(&mut bob), "from alice: hi bob");
    assert_eq!(probe.send_to_status(), SendStatus::Written);
    command(&mut bob, "to:alice:hello alice");
    assert_eq!(read_text(&mut alice), "from bob: hello alice");
    assert_eq!(probe.send_to_status(), SendStatus::Written);
    // The relay went only where it was aimed.
    alice.expect_silence(QUIET);

    command(&mut alice, "kick:bob:4001");
    assert_eq!(bob.expect_close(4001), "kicked");
    bob.send(true, CLOSE, &close_payload(4001, b""));
    bob.expect_eof();
    let (id, session, reason) = probe.close();
    assert_eq!((id, session.name.as_str()), (bob_id, "bob"));
    assert_eq!(
        reason,
        CloseReason::Local {
            code: CloseCode(4001)
        }
    );
    // The kicker is untouched; a send_to its old id is refused.
    command(&mut alice, "to:bob:are you there?");
    assert_eq!(probe.send_to_status(), SendStatus::Refused);
    command(&mut alice, "whoami");
    assert_eq!(read_text(&mut alice), "alice");
}

#[test]
fn unsendable_close_codes_from_ctx_and_handle_are_errors_and_close_nothing() {
    let (hub, probe) = Hub::new();
    let server = spawn_server(Config::default(), hub);
    let (mut alice, _) = probe.connect(server.addr, "alice");
    let (mut bob, bob_id) = probe.connect(server.addr, "bob");

    command(&mut alice, "kick:bob:1006");
    let refusal = read_text(&mut alice);
    assert!(
        refusal.starts_with("kick refused: close code 1006 may not be sent"),
        "{refusal}"
    );
    for code in [1005, 1006, 1015, 0, 5000, u16::MAX] {
        assert_eq!(
            server.handle.close(bob_id, CloseCode(code), "nope"),
            Err(HandleError::InvalidCloseCode),
            "code {code}"
        );
    }
    // Nothing reached bob, and he is still there for a valid close.
    bob.expect_silence(QUIET);
    command(&mut bob, "whoami");
    assert_eq!(read_text(&mut bob), "bob");
    server.handle.close(bob_id, CloseCode(4003), "now").unwrap();
    assert_eq!(bob.expect_close(4003), "now");
    bob.send(true, CLOSE, &close_payload(4003, b""));
    bob.expect_eof();
    let (id, _, reason) = probe.close();
    assert_eq!(
        (id, reason),
        (
            bob_id,
            CloseReason::Local {
                code: CloseCode(4003)
            }
        )
    );
    assert!(HandleError::InvalidCloseCode
        .to_string()
        .contains("close code"));
}

// ---------------------------------------------------------------------------------------
// Handle edge cases
// ---------------------------------------------------------------------------------------

#[test]
fn handle_send_to_a_closed_connection_never_reaches_the_one_that_reused_its_slot() {
    let (hub, probe) = Hub::new();
    let server = spawn_server(Config::default(), hub);
    let handle = &server.handle;
    let (mut a, a_id) = probe.connect(server.addr, "a");
    handle.send_text(a_id, "for a").unwrap();
    assert_eq!(read_text(&mut a), "for a");
    a.close_cleanly();
    drop(a);
    let (id, _, _) = probe.close();
    assert_eq!(id, a_id);

    let (mut b, b_id) = probe.connect(server.addr, "b");
    assert_ne!(a_id, b_id);
    assert_eq!(
        slot_of(a_id),
        slot_of(b_id),
        "b did not reuse a's slot ({a_id} then {b_id}): the test proves less than it claims"
    );
    assert_eq!(handle.send_text(a_id, "stale"), Ok(()));
    assert_eq!(handle.send_binary(a_id, b"stale".to_vec()), Ok(()));
    assert_eq!(handle.close(a_id, CloseCode(4000), "stale"), Ok(()));
    b.expect_silence(QUIET);
    // Commands run in order: b's next frame is the first one aimed at it.
    handle.send_text(b_id, "for b").unwrap();
    assert_eq!(read_text(&mut b), "for b");
    handle.send_binary(b_id, vec![1, 2, 3]).unwrap();
    b.expect_echo(BINARY, &[1, 2, 3]);
    handle.close(b_id, CloseCode(4002), "bye").unwrap();
    assert_eq!(b.expect_close(4002), "bye");
    b.send(true, CLOSE, &close_payload(4002, b""));
    b.expect_eof();
    let (id, _, reason) = probe.close();
    assert_eq!(
        (id, reason),
        (
            b_id,
            CloseReason::Local {
                code: CloseCode(4002)
            }
        )
    );
}

#[test]
fn handle_shutdown_closes_every_client_with_1001_and_run_returns_ok() {
    let (hub, probe) = Hub::new();
    let server = spawn_server(Config::default(), hub);
    let clients: Vec<(Raw, ConnId)> = (0..3)
        .map(|i| probe.connect(server.addr, &format!("c{i}")))
        .collect();
    let handle = server.handle.clone();
    let started = Instant::now();
    handle.shutdown().unwrap();
    for (mut raw, _) in clients {
        assert_eq!(raw.expect_close(1001), "server shutting down");
        raw.send(true, CLOSE, &close_payload(1001, b""));
        raw.expect_eof();
    }
    server.join().expect("run() returned an error");
    let took = started.elapsed();
    // The clients answered: no waiting for the close timeout (5 s).
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    let mut closed: Vec<_> = (0..3).map(|_| probe.close()).collect();
    closed.sort_by_key(|(id, _, _)| *id);
    for (_, session, reason) in &closed {
        assert_eq!(*reason, CloseReason::Shutdown, "{}", session.name);
    }
    // The server is gone (its thread ended, dropping it): the Handle says so.
    let some_id = closed[0].0;
    assert_eq!(handle.send_text(some_id, "late"), Err(HandleError::Closed));
    assert_eq!(handle.broadcast_text("late"), Err(HandleError::Closed));
    assert_eq!(handle.shutdown(), Err(HandleError::Closed));
}

#[test]
fn bind_refuses_an_invalid_config_with_invalid_input_before_binding() {
    let config = Config {
        read_buffer_size: 0,
        ..Config::default()
    };
    let (hub, _probe) = Hub::new();
    // A port that is free now: a refused config must not leave it bound.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = match Server::bind(addr, config, hub) {
        Ok(_) => panic!("a zero read buffer was accepted"),
        Err(error) => error,
    };
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        error
            .to_string()
            .starts_with("read_buffer_size: must not be 0"),
        "{error}"
    );
    assert!(
        std::net::TcpListener::bind(addr).is_ok(),
        "{addr} was left bound"
    );

    // The same through from_listener, for a listener the caller set up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (hub, _probe) = Hub::new();
    let config = Config {
        deflate_level: 10,
        ..Config::default()
    };
    let error = match Server::from_listener(listener, config, hub) {
        Ok(_) => panic!("deflate level 10 was accepted"),
        Err(error) => error,
    };
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("deflate_level"), "{error}");
}

#[test]
fn handle_of_a_dropped_server_returns_closed() {
    let (hub, _probe) = Hub::new();
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), Config::default(), hub).unwrap();
    let handle: Handle = server.handle();
    assert_eq!(handle.broadcast_text("before"), Ok(()));
    drop(server);
    let clone = handle.clone();
    assert_eq!(clone.broadcast_text("after"), Err(HandleError::Closed));
    assert_eq!(handle.broadcast_binary(vec![1u8]), Err(HandleError::Closed));
    assert_eq!(handle.publish_text("t", "after"), Err(HandleError::Closed));
    assert_eq!(handle.shutdown(), Err(HandleError::Closed));
}

#[test]
fn full_handle_queue_returns_full_accepts_shutdown_and_recovers() {
    const CAPACITY: usize = 4;
    let config = Config {
        handle_queue_capacity: CAPACITY,
        ..Config::default()
    };
    let (hub, probe) = Hub::new();
    let server = spawn_server(config, hub);
    let handle = server.handle.clone();
    let (mut c, id) = probe.connect(server.addr, "c");

    // The loop is held inside on_message: nothing drains the queue meanwhile.
    command(&mut c, "block");
    probe.blocked();
    for i in 0..CAPACITY {
        assert_eq!(handle.send_text(id, format!("q{i}")), Ok(()), "push {i}");
    }
    assert_eq!(handle.send_text(id, "one too many"), Err(HandleError::Full));
    assert_eq!(handle.send_binary(id, vec![0u8]), Err(HandleError::Full));
    assert_eq!(handle.broadcast_text("x"), Err(HandleError::Full));
    assert_eq!(handle.publish_text("t", "x"), Err(HandleError::Full));
    assert_eq!(
        handle.close(id, CloseCode(4000), "x"),
        Err(HandleError::Full)
    );
    probe.open_gate();
    for i in 0..CAPACITY {
        assert_eq!(read_text(&mut c), format!("q{i}"));
    }
    // Drained: room again.
    assert_eq!(handle.send_text(id, "after"), Ok(()));
    assert_eq!(read_text(&mut c), "after");

    // Full again, and shutdown is still accepted; it runs after what was queued.
    command(&mut c, "block");
    probe.blocked();
    for i in 0..CAPACITY {
        assert_eq!(handle.send_text(id, format!("r{i}")), Ok(()), "push {i}");
    }
    assert_eq!(handle.send_text(id, "one too many"), Err(HandleError::Full));
    assert_eq!(handle.shutdown(), Ok(()));
    probe.open_gate();
    for i in 0..CAPACITY {
        assert_eq!(read_text(&mut c), format!("r{i}"));
    }
    c.expect_close(1001);
    c.send(true, CLOSE, &close_payload(1001, b""));
    c.expect_eof();
    drop(c);
    server.join().expect("run() after shutdown");
    assert_eq!(handle.send_text(id, "late"), Err(HandleError::Closed));
}
