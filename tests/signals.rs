//! `wsreactor::signals` (feature `signals`): SIGTERM to this process closes every
//! client with 1001 and `run` returns. Its own test binary, since it signals itself.
#![cfg(feature = "signals")]

mod common;

use common::*;
use std::sync::mpsc;
use std::sync::Arc;
use wsreactor::signals::ShutdownSignals;
use wsreactor::{Config, Server};

#[test]
fn sigterm_after_install_is_a_graceful_shutdown_not_death() {
    let signals = ShutdownSignals::install().expect("install");
    let mut server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        Config::default(),
        Echo {
            seen: Arc::default(),
        },
    )
    .unwrap();
    let addr = server.local_addr();
    signals.forward_to(server.handle());
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || done_tx.send(server.run().map_err(|e| e.to_string())));

    let mut clients: Vec<Raw> = (0..2).map(|_| Raw::open(addr)).collect();
    clients[0].send(true, TEXT, b"before");
    clients[0].expect_echo(TEXT, b"before");
    // SAFETY: signals this process, whose SIGTERM is caught by `install` above (the
    // default action would end the test run, which is what the test guards against).
    assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
    for mut raw in clients {
        raw.expect_close(1001);
        raw.send(true, CLOSE, &close_payload(1001, b""));
        raw.expect_eof();
    }
    let result = done.recv_timeout(IO_TIMEOUT).expect("run returned");
    assert_eq!(result, Ok(()));
}
