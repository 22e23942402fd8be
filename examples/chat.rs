//! A chat room: every message goes to everyone, with the sender's name.
//!
//! `cargo run --example chat [ADDR]`, then open http://127.0.0.1:9998/ in two tabs.
//! Names come from the upgrade request (`/chat?name=ada`), kept in the session.
//!
//! One conversation over two servers (feature `cluster`, a Redis on 6379):
//!
//! ```text
//! cargo run --features cluster --example chat 127.0.0.1:9998 --redis redis://127.0.0.1:6379
//! cargo run --features cluster --example chat 127.0.0.1:9999 --redis redis://127.0.0.1:6379
//! ```
//!
//! then a browser on http://127.0.0.1:9998/ and another on http://127.0.0.1:9999/:
//! every broadcast reaches every member on both.
//!
//! Several loops on one port (`--threads 2`, 0 for one per core): each loop has its
//! own `Chat`, built by the factory given to `Reactor::bind`; a broadcast reaches
//! the members on every loop, and the guest counter is shared by all of them through
//! an `Arc` (the application's shared state is its own: here one atomic).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wsreactor::{
    CloseReason, Config, ConnId, Ctx, Decision, Handler, HttpResponse, Message, Reactor, Request,
};

const PAGE: &str = include_str!("chat.html");

#[derive(Default)]
struct Member {
    name: String,
}

struct Chat {
    /// Shared by every loop, so that two loops never name two guests alike.
    guests: Arc<AtomicU64>,
}

impl Handler for Chat {
    type Session = Member;

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<Member> {
        if request.path() != "/chat" {
            return Decision::Reject(HttpResponse::not_found());
        }
        let asked = request
            .query()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .find_map(|pair| pair.strip_prefix("name="))
            .filter(|name| !name.is_empty() && name.len() <= 32)
            .filter(|name| {
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        let name = match asked {
            Some(name) => name.to_owned(),
            None => format!("guest-{}", self.guests.fetch_add(1, Ordering::Relaxed) + 1),
        };
        Decision::accept_with(Member { name })
    }

    fn on_http(&mut self, request: &Request<'_>) -> HttpResponse {
        match request.path() {
            "/" => HttpResponse::html(PAGE),
            _ => HttpResponse::not_found(),
        }
    }

    fn on_open(&mut self, cx: &mut Ctx<'_, Member>) {
        let line = format!("* {} joined", cx.session().name);
        cx.broadcast(Message::Text(&line));
    }

    fn on_message(&mut self, cx: &mut Ctx<'_, Member>, message: Message<'_>) {
        if let Message::Text(text) = message {
            let line = format!("{}: {}", cx.session().name, text);
            // Encoded once for everyone; a member whose queue is full misses it.
            cx.broadcast(Message::Text(&line));
        }
    }

    fn on_close(&mut self, id: ConnId, member: Member, reason: &CloseReason) {
        log::info!("{} ({id}) left: {reason:?}", member.name);
    }
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut addr = "127.0.0.1:9998".to_owned();
    let mut redis = None;
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--redis" => redis = Some(args.next().expect("--redis needs a URL")),
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
    let guests = Arc::new(AtomicU64::new(0));
    let mut reactor = Reactor::bind(addr, config, |_loop_index| Chat {
        guests: Arc::clone(&guests),
    })?;
    // Held until `run` returns: the node stays in the conversation while it serves.
    #[cfg(feature = "cluster")]
    let _cluster = match redis {
        // The bridge links one loop: with several, refuse rather than half-link.
        Some(_) if reactor.loops() > 1 => {
            eprintln!("chat: --redis works with one loop only (--threads 1)");
            std::process::exit(2);
        }
        Some(url) => Some(
            reactor
                .server(0)
                .expect("loop 0")
                .attach_cluster(wsreactor::cluster::ClusterConfig::new(url))
                .map_err(std::io::Error::other)?,
        ),
        None => None,
    };
    #[cfg(not(feature = "cluster"))]
    if redis.is_some() {
        eprintln!("chat: --redis needs the cluster feature (cargo run --features cluster ...)");
        std::process::exit(2);
    }
    println!(
        "listening on http://{}/ ({} loops)",
        reactor.local_addr(),
        reactor.loops()
    );
    reactor.run()
}
