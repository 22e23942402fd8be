//! Several loops on one address (`Reactor`), end to end over real sockets: connections
//! spread between the loops, a publish from any loop (or a `Handle`) reaches the
//! members on every loop in order, `Handle` calls and `Loop::send_to` reach the loop
//! an id names and no other, one shutdown closes every loop's connections with 1001,
//! and a handler panic closes only its own connection.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;
use wsreactor::{
    CloseCode, Config, ConnId, Ctx, Handle, Handler, Loop, Message, Reactor, SendStatus,
};

/// Subscribes every connection to "room" and reports its id; publishes every text
/// message to "room", except "boom" (panics) and "stop" (shuts the reactor down).
struct Room {
    opens: Sender<ConnId>,
    deferred: u64,
}

impl Handler for Room {
    type Session = ();
    fn on_open(&mut self, cx: &mut Ctx<'_>) {
        cx.subscribe("room");
        let _ = self.opens.send(cx.id());
    }
    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        match message.as_bytes() {
            b"boom" => panic!("the handler panics on purpose"),
            b"stop" => cx.shutdown(),
            _ => {
                cx.publish("room", message);
            }
        }
    }
}

struct Running {
    addr: SocketAddr,
    handle: Handle,
    opened: Receiver<ConnId>,
    thread: JoinHandle<std::io::Result<()>>,
}

/// A reactor of `loops` loops of `Room`s on a free port, not yet running, and where
/// its rooms report their opens.
fn bind(loops: usize) -> (Reactor<Room>, Receiver<ConnId>) {
    let (opens, opened) = mpsc::channel();
    let config = Config {
        threads: loops,
        ..Config::default()
    };
    let reactor = Reactor::bind("127.0.0.1:0".parse().unwrap(), config, |_| Room {
        opens: opens.clone(),
        deferred: 0,
    })
    .expect("bind");
    (reactor, opened)
}

fn start(loops: usize) -> Running {
    let (mut reactor, opened) = bind(loops);
    assert_eq!(reactor.loops(), loops);
    let addr = reactor.local_addr();
    let handle = reactor.handle();
    let thread = std::thread::spawn(move || reactor.run());
    Running {
        addr,
        handle,
        opened,
        thread,
    }
}

impl Running {
    /// Opens a connection and returns it with its id (each open is reported before
    /// the next connection is made, so the ids come in the clients' order).
    fn open(&self) -> (Raw, ConnId) {
        let client = Raw::open(self.addr);
        let id = self.opened.recv_timeout(IO_TIMEOUT).expect("on_open");
        (client, id)
    }

    /// Opens connections until every loop has at least `each`: (client, id) by loop.
    fn open_on_every_loop(&self, loops: usize, each: usize) -> Vec<Vec<(Raw, ConnId)>> {
        let mut by_loop: Vec<Vec<(Raw, ConnId)>> = (0..loops).map(|_| Vec::new()).collect();
        for _ in 0..500 {
            if by_loop.iter().all(|l| l.len() >= each) {
                return by_loop;
            }
            let (client, id) = self.open();
            by_loop[id.loop_index()].push((client, id));
        }
        panic!(
            "500 connections did not reach every loop {each} times: {:?}",
            by_loop.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    fn join(self) -> std::io::Result<()> {
        wait_until("run() to return", || self.thread.is_finished());
        self.thread.join().expect("the reactor's thread panicked")
    }
}

fn text(frame: &Frame) -> String {
    assert_eq!(frame.opcode, TEXT, "a text frame");
    String::from_utf8(frame.payload.clone()).unwrap()
}

#[test]
fn connections_from_one_address_spread_over_the_loops_within_20_percent() {
    let loops = 4;
    let server = start(loops);
    let total = 1000;
    let mut clients = Vec::with_capacity(total);
    let mut per_loop = vec![0usize; loops];
    for _ in 0..total {
        let (client, id) = server.open();
        per_loop[id.loop_index()] += 1;
        clients.push(client);
    }
    let share = total / loops;
    for (index, &n) in per_loop.iter().enumerate() {
        assert!(
            n.abs_diff(share) * 5 <= share,
            "loop {index} holds {n} of {total} connections (share {share}): {per_loop:?}"
        );
    }
    // The loops' own stats say the same, summed and per loop.
    wait_until("every loop's stats to count its connections", || {
        let stats = server.handle.loop_stats();
        stats
            .iter()
            .map(|s| s.open_connections as usize)
            .collect::<Vec<_>>()
            == per_loop
    });
    let sum = wsreactor::Stats::sum(&server.handle.loop_stats());
    assert_eq!(sum.open_connections as usize, total);
    assert_eq!(sum.handshakes as usize, total);
    server.handle.shutdown().unwrap();
    for client in &mut clients {
        client.expect_close(1001);
    }
    drop(clients);
    server.join().unwrap();
}

#[test]
fn a_publish_from_any_loop_or_a_handle_reaches_every_loop_in_order_encoded_once_per_loop() {
    let loops = 2;
    let server = start(loops);
    let mut by_loop = server.open_on_every_loop(loops, 2);
    let messages = 100;
    // A client on loop 1 publishes; a handle (homed on loop 0) publishes at the
    // same time from another thread.
    let handle = server.handle.clone();
    let publisher = std::thread::spawn(move || {
        for i in 0..messages {
            while handle.publish_text("room", format!("h{i}")).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    for i in 0..messages {
        by_loop[1][0].0.send(true, TEXT, format!("c{i}").as_bytes());
    }
    publisher.join().unwrap();
    for (index, clients) in by_loop.iter_mut().enumerate() {
        for (client, id) in clients.iter_mut() {
            let (mut from_client, mut from_handle) = (0, 0);
            while from_client < messages || from_handle < messages {
                let got = text(&client.read_frame());
                if let Some(n) = got.strip_prefix('c') {
                    assert_eq!(n, from_client.to_string(), "{id} on loop {index}: order");
                    from_client += 1;
                } else if let Some(n) = got.strip_prefix('h') {
                    assert_eq!(n, from_handle.to_string(), "{id} on loop {index}: order");
                    from_handle += 1;
                } else {
                    panic!("{id} on loop {index}: unexpected {got:?}");
                }
            }
            client.expect_silence(Duration::from_millis(50));
        }
    }
    // Each message was encoded once on each loop, however many members it had there.
    wait_until("the loops' stats", || {
        let stats = server.handle.loop_stats();
        stats
            .iter()
            .all(|s| s.fanout_frames_encoded == 2 * messages as u64)
    });
    server.handle.shutdown().unwrap();
    server.join().unwrap();
}

#[test]
fn handle_calls_and_send_to_reach_the_loop_an_id_names_and_no_other() {
    let loops = 2;
    let server = start(loops);
    let mut by_loop = server.open_on_every_loop(loops, 1);
    let (first_on_0, first_on_1) = (by_loop[0][0].1, by_loop[1][0].1);
    // Each loop numbers its own connections: the first connection of each has the
    // same slot and generation, and only the loop tells the ids apart.
    let on_0 = first_on_0.to_string();
    let on_1 = first_on_1.to_string();
    assert_eq!(on_1, format!("#1:{}", &on_0[1..]), "{on_0} / {on_1}");
    assert_ne!(first_on_0, first_on_1);

    // A handle homed on loop 0 sends to loop 1's connection: only it gets the message.
    server.handle.send_text(first_on_1, "to loop 1").unwrap();
    by_loop[1][0].0.expect_echo(TEXT, b"to loop 1");
    by_loop[0][0].0.expect_silence(Duration::from_millis(100));
    // And a handle homed on loop 1 to loop 0's.
    let on_loop_1 = server.handle.for_loop(1).unwrap();
    assert_eq!(on_loop_1.loop_index(), 1);
    on_loop_1
        .send_binary(first_on_0, b"to loop 0".to_vec())
        .unwrap();
    by_loop[0][0].0.expect_echo(BINARY, b"to loop 0");
    by_loop[1][0].0.expect_silence(Duration::from_millis(100));

    // Loop::send_to on loop 0 with loop 1's id is routed there.
    let (statuses, status) = mpsc::channel();
    server
        .handle
        .defer_on(0, move |_: &mut Room, lp: &mut Loop| {
            let _ = statuses.send((
                lp.loop_index(),
                lp.send_to(first_on_1, Message::Text("routed")),
            ));
        })
        .unwrap();
    assert_eq!(
        status.recv_timeout(IO_TIMEOUT).unwrap(),
        (0, SendStatus::Queued(0))
    );
    by_loop[1][0].0.expect_echo(TEXT, b"routed");
    by_loop[0][0].0.expect_silence(Duration::from_millis(100));

    // A close goes to the owning loop too.
    server
        .handle
        .close(first_on_1, CloseCode(4000), "bye")
        .unwrap();
    by_loop[1][0].0.expect_close(4000);
    by_loop[0][0].0.expect_silence(Duration::from_millis(100));

    // defer_all runs on every loop, each with its own handler.
    let (ran, ran_on) = mpsc::channel();
    server
        .handle
        .defer_all(move |room: &mut Room, lp: &mut Loop| {
            room.deferred += 1;
            let _ = ran.send((lp.loop_index(), room.deferred));
        })
        .unwrap();
    let mut seen: Vec<_> = (0..loops)
        .map(|_| ran_on.recv_timeout(IO_TIMEOUT).unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(0, 1), (1, 1)]);
    assert_eq!(
        server.handle.defer_on(2, |_: &mut Room, _: &mut Loop| {}),
        Err(wsreactor::HandleError::NoSuchLoop)
    );
    server.handle.shutdown().unwrap();
    server.join().unwrap();
}

#[test]
fn a_shutdown_from_inside_one_loop_closes_every_loops_connections_and_run_returns() {
    let loops = 2;
    let server = start(loops);
    let mut by_loop = server.open_on_every_loop(loops, 3);
    // A client on loop 1 asks its handler to shut down.
    by_loop[1][0].0.send(true, TEXT, b"stop");
    for clients in by_loop.iter_mut() {
        for (client, _) in clients.iter_mut() {
            client.expect_close(1001);
            client.send(true, CLOSE, &close_payload(1001, b""));
            client.expect_eof();
        }
    }
    let handle = server.handle.clone();
    server.join().unwrap();
    let stats = wsreactor::Stats::sum(&server_stats_after(&handle));
    assert_eq!(stats.open_connections, 0);
}

/// The stats every loop shared when it finished.
fn server_stats_after(handle: &Handle) -> Vec<wsreactor::Stats> {
    let stats = handle.loop_stats();
    assert_eq!(stats.len(), 2);
    for s in &stats {
        assert!(s.handshakes >= 3, "{s}");
        assert!(s.closes.iter().any(|&(code, _)| code == 1001), "{s}");
    }
    stats
}

#[test]
fn a_handler_panic_closes_only_its_own_connection() {
    let loops = 2;
    let server = start(loops);
    let mut by_loop = server.open_on_every_loop(loops, 2);
    by_loop[0][0].0.send(true, TEXT, b"boom");
    by_loop[0][0].0.expect_close(1011);
    // Everyone else, on both loops, still gets the room's messages.
    by_loop[1][0].0.send(true, TEXT, b"still here");
    for (index, clients) in by_loop.iter_mut().enumerate() {
        for (client, id) in clients.iter_mut().skip(usize::from(index == 0)) {
            let got = text(&client.read_frame());
            assert_eq!(got, "still here", "{id}");
        }
    }
    let sum = wsreactor::Stats::sum(&{
        wait_until("the panic in the stats", || {
            server.handle.loop_stats()[0].handler_panics == 1
        });
        server.handle.loop_stats()
    });
    assert_eq!(sum.handler_panics, 1);
    server.handle.shutdown().unwrap();
    server.join().unwrap();
}

/// The CPUs the calling thread may run on (Linux), as the kernel lists them.
#[cfg(target_os = "linux")]
fn own_cpus() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_owned())
        .unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn pinned_loops_run_on_their_own_core() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut reactor, _opened) = bind(2);
    reactor.pin_to_cores(true);
    let handle = reactor.handle();
    let thread = std::thread::spawn(move || reactor.run());
    // Each loop reports the CPUs of the thread it runs on.
    let (report, reports) = mpsc::channel();
    for index in 0..2 {
        let report = report.clone();
        handle
            .defer_on(index, move |_: &mut Room, lp: &mut Loop| {
                let _ = report.send((lp.loop_index(), own_cpus()));
            })
            .unwrap();
    }
    let mut seen: Vec<_> = (0..2)
        .map(|_| reports.recv_timeout(IO_TIMEOUT).unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(0, "0".to_owned()), (1, (1 % cpus).to_string())]);
    handle.shutdown().unwrap();
    wait_until("run() to return", || thread.is_finished());
    thread.join().unwrap().unwrap();
}

#[cfg(feature = "cluster")]
#[test]
fn the_cluster_bridge_is_refused_on_a_loop_of_several() {
    use wsreactor::cluster::{ClusterConfig, ClusterError};
    let (mut reactor, _opened) = bind(2);
    let attached = reactor
        .server(0)
        .unwrap()
        .attach_cluster(ClusterConfig::new("redis://127.0.0.1:1"));
    assert!(
        matches!(attached, Err(ClusterError::SeveralLoops)),
        "{attached:?}"
    );
}

#[test]
fn an_id_that_names_its_loop_is_still_16_bytes() {
    assert_eq!(std::mem::size_of::<ConnId>(), 16);
}
