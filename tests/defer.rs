//! `Handle::defer` end to end: a closure from another thread runs on the loop with
//! the handler and the `Loop` (its effects on both are checked), in order with the
//! other `Handle` commands, refused for another handler type, and a panicking one is
//! logged while the loop keeps serving.

mod common;

use common::*;
use std::sync::mpsc::{self, Sender};
use wsreactor::{Config, ConnId, Ctx, HandleError, Handler, Loop, Message};

/// Answers `count` with its counter; reports each connection's id.
struct Counter {
    count: u64,
    opens: Sender<ConnId>,
}

impl Handler for Counter {
    type Session = ();
    fn on_open(&mut self, cx: &mut Ctx<'_>) {
        let _ = self.opens.send(cx.id());
    }
    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        if message.as_bytes() == b"count" {
            let count = self.count.to_string();
            let _ = cx.send_text(&count);
        }
    }
}

/// Another handler type, for the mismatch.
struct Other;

impl Handler for Other {
    type Session = ();
    fn on_message(&mut self, _cx: &mut Ctx<'_>, _message: Message<'_>) {}
}

fn start() -> (Running, Raw, ConnId) {
    let (opens, opened) = mpsc::channel();
    let server = spawn_server(Config::default(), Counter { count: 0, opens });
    let client = Raw::open(server.addr);
    let id = opened.recv_timeout(IO_TIMEOUT).unwrap();
    (server, client, id)
}

#[test]
fn a_deferred_closure_changes_the_handler_and_sends_through_the_loop() {
    let (server, mut client, id) = start();
    let handle = server.handle.clone();
    std::thread::spawn(move || {
        handle
            .defer(move |counter: &mut Counter, lp: &mut Loop| {
                counter.count += 5;
                let line = format!("deferred, count {}", counter.count);
                let _ = lp.send_to(id, Message::Text(&line));
            })
            .unwrap();
    })
    .join()
    .unwrap();
    client.expect_echo(TEXT, b"deferred, count 5");
    client.send(true, TEXT, b"count");
    client.expect_echo(TEXT, b"5");
}

#[test]
fn deferred_closures_keep_their_place_among_the_other_commands() {
    let (server, mut client, id) = start();
    let handle = server.handle.clone();
    let producer = std::thread::spawn(move || {
        for i in 0..200u64 {
            handle.send_text(id, format!("send {i}")).unwrap();
            handle
                .defer(move |counter: &mut Counter, lp: &mut Loop| {
                    counter.count += 1;
                    let line = format!("defer {i} count {}", counter.count);
                    let _ = lp.send_to(id, Message::Text(&line));
                })
                .unwrap();
            handle.broadcast_text(format!("broadcast {i}")).unwrap();
        }
    });
    for i in 0..200u64 {
        client.expect_echo(TEXT, format!("send {i}").as_bytes());
        client.expect_echo(TEXT, format!("defer {i} count {}", i + 1).as_bytes());
        client.expect_echo(TEXT, format!("broadcast {i}").as_bytes());
    }
    producer.join().unwrap();
}

#[test]
fn a_closure_for_another_handler_type_is_refused_and_queues_nothing() {
    let (server, mut client, _id) = start();
    let handle = server.handle.clone();
    let refused = handle.defer(|_: &mut Other, lp: &mut Loop| {
        lp.broadcast(Message::Text("must not run"));
    });
    assert_eq!(refused, Err(HandleError::WrongHandler));
    handle.broadcast_text("next").unwrap();
    client.expect_echo(TEXT, b"next");
}

#[test]
fn a_panicking_deferred_closure_is_logged_and_the_loop_keeps_serving() {
    let (server, mut client, id) = start();
    let handle = server.handle.clone();
    handle
        .defer(|counter: &mut Counter, _lp: &mut Loop| {
            counter.count += 1;
            panic!("a bug in a deferred closure");
        })
        .unwrap();
    let (panics, counted) = mpsc::channel();
    handle
        .defer(move |counter: &mut Counter, lp: &mut Loop| {
            counter.count += 1;
            let _ = panics.send(lp.stats().handler_panics);
            let _ = lp.send_to(id, Message::Text("after"));
        })
        .unwrap();
    client.expect_echo(TEXT, b"after");
    assert_eq!(counted.recv_timeout(IO_TIMEOUT).unwrap(), 1);
    // The connection was not touched by the panic; the handler's state was kept.
    client.send(true, TEXT, b"count");
    client.expect_echo(TEXT, b"2");
    client.close_cleanly();
}

#[test]
fn defer_after_shutdown_has_begun_is_refused() {
    let (server, mut client, _id) = start();
    let handle = server.handle.clone();
    handle.shutdown().unwrap();
    assert_eq!(
        handle.defer(|_: &mut Counter, _: &mut Loop| {}),
        Err(HandleError::ShuttingDown)
    );
    client.expect_close(1001);
}
