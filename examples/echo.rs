//! The smallest useful server: echo every message back.
//!
//! `cargo run --example echo [ADDR]`, then `websocat ws://127.0.0.1:9998/`.

use wsreactor::{Config, Ctx, Handler, Message, Server};

struct Echo;

impl Handler for Echo {
    type Session = ();

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        // The message borrows the read buffer; sending it writes straight from there.
        let _ = cx.send(message);
    }
}

fn main() -> std::io::Result<()> {
    env_logger::init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9998".into());
    let mut server = Server::bind(
        addr.parse().expect("an address like 127.0.0.1:9998"),
        Config::default(),
        Echo,
    )?;
    println!("listening on ws://{}/", server.local_addr());
    server.run()
}
