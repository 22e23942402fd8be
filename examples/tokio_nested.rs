//! The server inside a tokio application: one thread, one tokio (current-thread)
//! runtime, and the wsreactor loop driven from it through the server's poll
//! descriptor (`AsRawFd`) wrapped in `tokio::io::unix::AsyncFd`, alongside tokio's
//! own tasks — here a plain TCP service on the next port that answers every line
//! with the count of messages echoed so far, and a timer that prints it every 5 s.
//! The driver itself (a dozen lines) is in `tokio_nested/drive.rs`, which
//! `tests/nesting.rs` runs too.
//!
//! ```text
//! cargo run --example tokio_nested [ADDR]      # default 127.0.0.1:9001; TCP on 9002
//! websocat ws://127.0.0.1:9001/                # echoes
//! nc 127.0.0.1 9002                            # type a line: "echoed N messages"
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use wsreactor::{Config, Ctx, Handler, Message, Server};

#[path = "tokio_nested/drive.rs"]
mod drive;
use drive::drive;

/// Echoes every message and counts them; the count is shared with the tokio tasks.
struct Echo {
    echoed: Arc<AtomicU64>,
}

impl Handler for Echo {
    type Session = ();
    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        let _ = cx.send(message);
        self.echoed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A plain TCP service of tokio's own: answers each line with the echo count.
async fn count_service(addr: SocketAddr, echoed: Arc<AtomicU64>) -> io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        let echoed = Arc::clone(&echoed);
        tokio::spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                let answer = format!("echoed {} messages\n", echoed.load(Ordering::Relaxed));
                if write.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(addr) => addr.parse().map_err(io::Error::other)?,
        None => "127.0.0.1:9001".parse().unwrap(),
    };
    let echoed = Arc::new(AtomicU64::new(0));
    let handler = Echo {
        echoed: Arc::clone(&echoed),
    };
    let server = Server::bind(addr, Config::default(), handler)?;
    let service = SocketAddr::new(addr.ip(), server.local_addr().port() + 1);
    println!(
        "WebSocket echo on ws://{}/, counts on tcp {service}",
        server.local_addr()
    );
    tokio::spawn(count_service(service, Arc::clone(&echoed)));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            println!("echoed {} messages", echoed.load(Ordering::Relaxed));
        }
    });
    // The server runs on this task, the tokio tasks beside it, all on one thread.
    drive(server).await
}
