//! A `Handle` after shutdown has begun: every call but `shutdown` is refused with
//! `HandleError::ShuttingDown` at once, however the shutdown was asked for (a
//! `Handle`, a handler through its `Ctx`, or `Server::shutdown`), and `shutdown`
//! itself stays `Ok`; once the loop has finished, calls are `Closed`.

mod common;

use common::*;
use std::sync::mpsc::{self, Sender};
use wsreactor::{CloseCode, Config, ConnId, Ctx, Handle, HandleError, Handler, Message, Server};

/// Echoes text; `shutdown` shuts the server down from inside a callback. Reports
/// each connection's id.
struct Stopper(Sender<ConnId>);

impl Handler for Stopper {
    type Session = ();
    fn on_open(&mut self, cx: &mut Ctx<'_>) {
        let _ = self.0.send(cx.id());
    }
    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        if message.as_bytes() == b"shutdown" {
            cx.shutdown();
        } else {
            let _ = cx.send(message);
        }
    }
}

fn every_call_is_refused(handle: &Handle, id: ConnId, expected: HandleError) {
    assert_eq!(handle.send_text(id, "late"), Err(expected));
    assert_eq!(handle.send_binary(id, vec![1u8]), Err(expected));
    assert_eq!(handle.broadcast_text("late"), Err(expected));
    assert_eq!(handle.broadcast_binary(vec![1u8]), Err(expected));
    assert_eq!(handle.publish_text("t", "late"), Err(expected));
    assert_eq!(handle.publish_binary("t", vec![1u8]), Err(expected));
    assert_eq!(handle.close(id, CloseCode::NORMAL, "late"), Err(expected));
}

#[test]
fn handle_calls_are_refused_as_soon_as_a_handle_asks_for_shutdown() {
    let (opens, opened) = mpsc::channel();
    let server = spawn_server(Config::default(), Stopper(opens));
    let mut client = Raw::open(server.addr);
    let id = opened.recv_timeout(IO_TIMEOUT).unwrap();
    let handle = server.handle.clone();
    handle.send_text(id, "before").unwrap();
    client.expect_echo(TEXT, b"before");

    assert_eq!(handle.shutdown(), Ok(()));
    // At once: not after the loop has woken up and not when it has finished.
    every_call_is_refused(&handle, id, HandleError::ShuttingDown);
    assert_eq!(handle.shutdown(), Ok(()), "shutdown is idempotent");
    client.expect_close(1001);
    // The client holds the close open: still shutting down.
    every_call_is_refused(&handle, id, HandleError::ShuttingDown);
    assert_eq!(handle.shutdown(), Ok(()));

    client.send(true, CLOSE, &close_payload(1001, b""));
    client.expect_eof();
    drop(client);
    server.join().unwrap();
    every_call_is_refused(&handle, id, HandleError::Closed);
}

#[test]
fn handle_calls_are_refused_once_a_handler_shuts_down() {
    let (opens, opened) = mpsc::channel();
    let server = spawn_server(Config::default(), Stopper(opens));
    let mut client = Raw::open(server.addr);
    let id = opened.recv_timeout(IO_TIMEOUT).unwrap();
    let handle = server.handle.clone();
    client.send(true, TEXT, b"shutdown");
    // The 1001 leaves after the loop began the shutdown, which refuses handle calls
    // first.
    client.expect_close(1001);
    every_call_is_refused(&handle, id, HandleError::ShuttingDown);
    assert_eq!(handle.shutdown(), Ok(()));
    client.send(true, CLOSE, &close_payload(1001, b""));
    client.expect_eof();
    drop(client);
    server.join().unwrap();
}

#[test]
fn handle_calls_are_refused_once_server_shutdown_is_called() {
    let (opens, _opened) = mpsc::channel();
    let mut server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        Stopper(opens),
    )
    .unwrap();
    let handle = server.handle();
    let id_source = std::thread::spawn({
        let addr = server.local_addr();
        move || {
            let mut client = Raw::open(addr);
            client.expect_close(1001);
            client.send(true, CLOSE, &close_payload(1001, b""));
            client.expect_eof();
        }
    });
    wait_for(&mut server, |s| {
        s.connection_count() == 1 && s.stats().handshakes == 1
    });
    assert_eq!(handle.broadcast_text("before"), Ok(()));
    server.shutdown();
    assert_eq!(
        handle.broadcast_text("late"),
        Err(HandleError::ShuttingDown)
    );
    assert_eq!(
        handle.publish_text("t", "late"),
        Err(HandleError::ShuttingDown)
    );
    assert_eq!(handle.shutdown(), Ok(()));
    while !server.is_finished() {
        server
            .turn(Some(std::time::Duration::from_millis(10)))
            .unwrap();
    }
    id_source.join().unwrap();
    assert_eq!(handle.broadcast_text("late"), Err(HandleError::Closed));
}

/// Turns `server` until `done` holds (up to [`IO_TIMEOUT`]).
fn wait_for(server: &mut Server<Stopper>, mut done: impl FnMut(&Server<Stopper>) -> bool) {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !done(server) {
        assert!(std::time::Instant::now() < deadline, "timed out");
        server
            .turn(Some(std::time::Duration::from_millis(10)))
            .unwrap();
    }
}
