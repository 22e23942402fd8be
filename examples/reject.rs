//! Checks at the upgrade: only pages from an allowed Origin, only the `v1.demo`
//! subprotocol.
//!
//! `cargo run --example reject [ADDR]`. Try:
//! `websocat --protocol v1.demo ws://127.0.0.1:9998/` (accepted),
//! `websocat ws://127.0.0.1:9998/` (400: no subprotocol),
//! `websocat -H 'Origin: https://evil.example' --protocol v1.demo ws://127.0.0.1:9998/` (403).

use std::net::SocketAddr;
use wsreactor::{
    Config, Ctx, Decision, Handler, HttpResponse, Message, Request, Server, StatusCode,
};

const PROTOCOL: &str = "v1.demo";

struct Strict;

impl Handler for Strict {
    type Session = ();

    fn on_request(&mut self, request: &Request<'_>, peer: SocketAddr) -> Decision<()> {
        // The Origin check is Config::allowed_origins' job (403 before we get here);
        // the subprotocol is the application's.
        if request.protocols().any(|offered| offered == PROTOCOL) {
            Decision::accept().with_protocol(PROTOCOL)
        } else {
            log::info!("{peer}: refused, no {PROTOCOL} subprotocol offered");
            Decision::Reject(HttpResponse::text(
                StatusCode::BAD_REQUEST,
                "this endpoint speaks the v1.demo subprotocol only\n",
            ))
        }
    }

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        let _ = cx.send(message);
    }
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9998".into());
    let addr = addr.parse().expect("an address like 127.0.0.1:9998");
    let config = Config {
        allowed_origins: vec![
            "http://localhost:9998".into(),
            "http://127.0.0.1:9998".into(),
        ],
        ..Config::default()
    };
    let mut server = Server::bind(addr, config, Strict)?;
    println!("listening on ws://{}/", server.local_addr());
    server.run()
}
