//! Embedding: a service thread pushes ticks to subscribers through a `Handle` while the
//! loop echoes whatever clients send.
//!
//! `cargo run --example embed [ADDR]`, then `websocat ws://127.0.0.1:9998/`: you get a
//! tick every millisecond, and your own lines back.
//!
//! `--threads N` (after the address; 0 = one per core) runs N loops on the port: the
//! service thread's handle publishes through loop 0, which hands every tick to the
//! other loops, so every subscriber gets every tick in order, whatever its loop.

use std::time::{Duration, Instant};
use wsreactor::{Config, Ctx, Handle, HandleError, Handler, Message, Reactor};

struct TickerEcho;

impl Handler for TickerEcho {
    type Session = ();

    fn on_open(&mut self, cx: &mut Ctx<'_>) {
        cx.subscribe("ticks");
    }

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        let _ = cx.send(message);
    }
}

/// The "market data" thread: 1,000 ticks a second, published to the `ticks` topic.
fn publish_ticks(handle: Handle) {
    let start = Instant::now();
    for n in 0u64.. {
        // Sleep to the next millisecond boundary, so the rate holds whatever a publish costs.
        let due = start + Duration::from_millis(n);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match handle.publish_text("ticks", format!("tick {n}")) {
            Ok(()) => {}
            // The loop is behind: drop this tick rather than block the service thread.
            Err(HandleError::Full) => log::warn!("tick {n} dropped: loop busy"),
            // Closed: the server is gone (a publish has no close code to be invalid).
            Err(_) => return,
        }
    }
}

fn main() -> std::io::Result<()> {
    env_logger::init();
    let mut addr = "127.0.0.1:9998".to_owned();
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--threads needs a number")
            }
            _ => addr = arg,
        }
    }
    let addr = addr.parse().expect("an address like 127.0.0.1:9998");
    let config = Config {
        threads,
        ..Config::default()
    };
    let mut reactor = Reactor::bind(addr, config, |_loop_index| TickerEcho)?;
    let handle = reactor.handle();
    std::thread::spawn(move || publish_ticks(handle));
    println!(
        "listening on ws://{}/ ({} loops)",
        reactor.local_addr(),
        reactor.loops()
    );
    reactor.run()
}
