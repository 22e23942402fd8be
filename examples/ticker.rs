//! A market-data ticker built on the loop's own timers: no service thread, no Handle.
//!
//! - A server-level timer publishes a price update to the `prices` topic every
//!   `--every` ms (default 100), as JSON with a sequence number.
//! - Subscribers get `DropOldest` queues of 64 KiB: a client that falls behind skips to
//!   the newest prices instead of reading seconds of stale ones, and is told how many
//!   updates it missed (`on_dropped`).
//! - Keepalive pings go out after 1 s of silence from a client; every 2 s a
//!   per-connection timer sends each client its last ping round trip, and a
//!   server-level timer logs the spread of round trips over all clients.
//!
//! `cargo run --example ticker [ADDR] [--every MS]`, then
//! `websocat ws://127.0.0.1:9998/prices`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use wsreactor::{
    Config, ConnId, Ctx, Decision, Handler, HttpResponse, Loop, Message, QueuePolicy, Request,
    Server,
};

/// Timer tokens: what a timer is for.
const PUBLISH: u64 = 1;
const REPORT: u64 = 2;
const RTT_TO_CLIENT: u64 = 3;

const REPORT_EVERY: Duration = Duration::from_secs(2);

struct Ticker {
    every: Duration,
    sequence: u64,
    price: f64,
    /// The last round trip each client's keepalive ping took, µs.
    round_trips: HashMap<ConnId, u64>,
}

impl Ticker {
    /// The next price: a deterministic wiggle, so runs can be compared.
    fn next_update(&mut self) -> String {
        self.sequence += 1;
        let step = ((self.sequence * 7919) % 200) as f64 / 100.0 - 0.995;
        self.price = (self.price + step).max(1.0);
        format!(
            r#"{{"type":"price","seq":{},"symbol":"WSR","price":{:.2}}}"#,
            self.sequence, self.price
        )
    }
}

impl Handler for Ticker {
    type Session = ();

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<()> {
        match request.path() {
            "/prices" | "/" => Decision::accept().with_queue_policy(QueuePolicy::DropOldest),
            _ => Decision::Reject(HttpResponse::not_found()),
        }
    }

    fn on_open(&mut self, cx: &mut Ctx<'_>) {
        cx.subscribe("prices");
        // A timer error here means the loop's timer table is full: the client still
        // gets prices, just not its round-trip reports.
        let _ = cx.set_timer(REPORT_EVERY, RTT_TO_CLIENT);
    }

    fn on_message(&mut self, _cx: &mut Ctx<'_>, _message: Message<'_>) {
        // Clients only listen; anything they send is ignored (it still counts as
        // being heard from, so it postpones their keepalive ping).
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, token: u64) {
        if token != RTT_TO_CLIENT {
            return;
        }
        if let Some(rtt) = cx.ping_rtt() {
            let micros = rtt.as_micros() as u64;
            self.round_trips.insert(cx.id(), micros);
            let _ = cx.send_text(&format!(r#"{{"type":"rtt","micros":{micros}}}"#));
        }
        let _ = cx.set_timer(REPORT_EVERY, RTT_TO_CLIENT);
    }

    fn on_loop_timer(&mut self, lp: &mut Loop, token: u64) {
        match token {
            PUBLISH => {
                let update = self.next_update();
                lp.publish("prices", Message::Text(&update));
                let _ = lp.set_loop_timer(self.every, PUBLISH);
            }
            REPORT => {
                let mut rtts: Vec<u64> = self.round_trips.values().copied().collect();
                rtts.sort_unstable();
                if let (Some(min), Some(max)) = (rtts.first(), rtts.last()) {
                    log::info!(
                        "{} clients with a round trip: min {min} µs, median {} µs, max {max} µs; {} updates sent",
                        rtts.len(),
                        rtts[rtts.len() / 2],
                        self.sequence
                    );
                }
                let _ = lp.set_loop_timer(REPORT_EVERY, REPORT);
            }
            _ => {}
        }
    }

    fn on_dropped(&mut self, cx: &mut Ctx<'_>, dropped: u64) {
        // The client skipped ahead; tell it, so it knows its view had a gap.
        let _ = cx.send_text(&format!(r#"{{"type":"gap","missed":{dropped}}}"#));
    }

    fn on_close(&mut self, id: ConnId, _session: (), _reason: &wsreactor::CloseReason) {
        self.round_trips.remove(&id);
    }
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut addr = "127.0.0.1:9998".to_owned();
    let mut every = Duration::from_millis(100);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--every" => {
                let ms = args.next().and_then(|ms| ms.parse().ok());
                every = Duration::from_millis(ms.expect("--every MS: milliseconds"));
            }
            _ => addr = arg,
        }
    }
    let config = Config {
        // Ping a listening client after 1 s of silence: its round trip is measured
        // that often, and a dead one is found within idle + pong timeout.
        idle_timeout: Duration::from_secs(1),
        pong_timeout: Duration::from_secs(5),
        // A client may lag by 64 KiB of updates (a few hundred); past that the
        // oldest are dropped (DropOldest, per connection in on_request).
        max_send_queue: 64 * 1024,
        write_high_water: 32 * 1024,
        ..Config::default()
    };
    let ticker = Ticker {
        every,
        sequence: 0,
        price: 100.0,
        round_trips: HashMap::new(),
    };
    let mut server = Server::bind(addr.parse().expect("an address"), config, ticker)?;
    // The first publish and report; each re-arms itself from its callback.
    let handle = server.handle();
    handle
        .defer(move |_: &mut Ticker, lp: &mut Loop| {
            lp.set_loop_timer(every, PUBLISH)
                .expect("an empty timer table");
            lp.set_loop_timer(REPORT_EVERY, REPORT)
                .expect("an empty timer table");
        })
        .expect("a fresh server takes commands");
    println!("prices on ws://{}/prices", server.local_addr());
    server.run()
}
