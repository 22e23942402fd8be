//! Broadcast: every message, text or binary, goes unchanged to every connection (the
//! sender included), on any path. The target of `attack fanout` (bench/).
//!
//! `cargo run --release --example broadcast -- [ADDR] [--deflate]`

use wsreactor::{Config, Ctx, Handler, Message, Server};

struct Broadcast;

impl Handler for Broadcast {
    type Session = ();

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        // Encoded once; a receiver whose queue is full misses it.
        cx.broadcast(message);
    }
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let _ = wsreactor::config::raise_open_file_limit();
    let mut addr = "127.0.0.1:9998".to_owned();
    let mut config = Config::default();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--deflate" => config.deflate = true,
            _ => addr = arg,
        }
    }
    let addr = addr.parse().expect("an address like 127.0.0.1:9998");
    let mut server = Server::bind(addr, config, Broadcast)?;
    println!("broadcasting on ws://{}/", server.local_addr());
    server.run()
}
