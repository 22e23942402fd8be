//! The server nested in another event loop: a tokio current-thread runtime drives it
//! through its poll descriptor (`AsRawFd`, in `tokio::io::unix::AsyncFd`) and
//! `Server::next_timeout`, beside a TCP service of tokio's own, all on one thread.
//! A tungstenite client exchanges messages with it; a connection timer fires with no
//! traffic at all (only `next_timeout` can wake the host for it); a `Handle` send
//! from another thread arrives (the waker makes the descriptor readable); and a
//! shutdown ends the host's loop.

mod common;

use common::*;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Sender};
use std::thread::{self, ThreadId};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tungstenite::Message as WsMessage;
use wsreactor::{Config, ConnId, Ctx, Handler, Message, Server};

/// The host's side: the example's own driver.
#[path = "../examples/tokio_nested/drive.rs"]
mod drive;
use drive::drive;

/// Echoes; each connection gets a `tick` from a timer 50 ms after it opens. Reports
/// its ids and the thread it runs on.
struct Echo {
    opens: Sender<(ConnId, ThreadId)>,
}

impl Handler for Echo {
    type Session = ();
    fn on_open(&mut self, cx: &mut Ctx<'_>) {
        let _ = self.opens.send((cx.id(), thread::current().id()));
        cx.set_timer(Duration::from_millis(50), 1).unwrap();
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, _token: u64) {
        let _ = cx.send_text("tick");
    }
    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        let _ = cx.send(message);
    }
}

/// tokio's own service: answers each line with `<line> from <thread id>`.
async fn line_service(listener: tokio::net::TcpListener) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = format!("{line} from {:?}\n", thread::current().id());
                if write.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[test]
fn the_server_runs_inside_a_tokio_runtime_beside_a_tokio_service() {
    let (opens, opened) = mpsc::channel();
    // No deadline of the connection's may come before the read timeout: the timer's
    // tick must be what wakes the host (through next_timeout), nothing else.
    let config = Config {
        handshake_timeout: IO_TIMEOUT * 6,
        ..Config::default()
    };
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config, Echo { opens }).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let (service_addr_tx, service_addr) = mpsc::channel::<SocketAddr>();
    let host = thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            service_addr_tx.send(listener.local_addr()?).unwrap();
            tokio::spawn(line_service(listener));
            drive(server).await
        })
    });

    // Over a socket with timeouts (common::tcp), so a hang fails instead of waiting.
    let (mut client, _) = tungstenite::client(format!("ws://{addr}/"), tcp(addr)).unwrap();
    let (id, server_thread) = opened.recv_timeout(IO_TIMEOUT).unwrap();
    // No traffic: only next_timeout wakes the host for the connection's timer.
    assert_eq!(client.read().unwrap(), WsMessage::text("tick"));
    client.send(WsMessage::text("hello")).unwrap();
    assert_eq!(client.read().unwrap(), WsMessage::text("hello"));
    client.send(WsMessage::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(client.read().unwrap(), WsMessage::binary(vec![1u8, 2, 3]));
    // From another thread, through the waker.
    handle.send_text(id, "from a handle").unwrap();
    assert_eq!(client.read().unwrap(), WsMessage::text("from a handle"));

    // tokio's own service answers meanwhile, on the same thread as the server.
    let service = tcp(service_addr.recv_timeout(IO_TIMEOUT).unwrap());
    let mut lines = BufReader::new(service.try_clone().unwrap());
    (&service).write_all(b"ping\n").unwrap();
    let mut answer = String::new();
    lines.read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("ping from {server_thread:?}\n"));

    // The WebSocket still works after tokio's task ran.
    client.send(WsMessage::text("again")).unwrap();
    assert_eq!(client.read().unwrap(), WsMessage::text("again"));

    handle.shutdown().unwrap();
    match client.read().unwrap() {
        WsMessage::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close, got {other:?}"),
    }
    // tungstenite answers the close; then the server finishes and the host returns.
    while client.read().is_ok() {}
    drop(client);
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !host.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the host loop did not end"
        );
        thread::sleep(Duration::from_millis(5));
    }
    host.join().unwrap().unwrap();
}

/// Whether `fd` is readable within `timeout_ms`, asked as a level-triggered host
/// would: `poll(2)`.
fn readable(fd: std::os::fd::RawFd, timeout_ms: i32) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
    assert!(ready >= 0, "poll: {}", io::Error::last_os_error());
    ready == 1 && pollfd.revents & libc::POLLIN != 0
}

#[test]
fn the_descriptor_is_readable_for_io_and_for_the_waker_and_quiet_otherwise() {
    use std::os::fd::AsRawFd;
    let (opens, opened) = mpsc::channel();
    let config = Config {
        handshake_timeout: IO_TIMEOUT * 6,
        ..Config::default()
    };
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), config, Echo { opens }).unwrap();
    let fd = server.as_raw_fd();
    let handle = server.handle();
    server.turn(Some(Duration::ZERO)).unwrap();
    assert!(!readable(fd, 0), "readable with nothing to do");
    assert_eq!(server.next_timeout(), None, "nothing scheduled");

    // A connection and its request: readable (the listener, then the socket) until
    // the host has turned through the upgrade.
    let mut client = Raw::connect(server.local_addr());
    client.write(upgrade_request("/", RFC_KEY, "").as_bytes());
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let id = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the upgrade never completed"
        );
        if readable(fd, 100) {
            server.turn(Some(Duration::ZERO)).unwrap();
        }
        if let Ok((id, _)) = opened.try_recv() {
            break id;
        }
    };
    assert_eq!(client.read_http().status, 101);
    // Handled: quiet again, and the connection's timer (50 ms) is what is due next.
    assert!(!readable(fd, 0));
    let due = server.next_timeout().expect("the connection's timer");
    assert!(due <= Duration::from_millis(51), "{due:?}");

    // A Handle command from another thread: the waker makes it readable.
    thread::spawn(move || handle.send_text(id, "woken").unwrap())
        .join()
        .unwrap();
    assert!(
        readable(fd, 10_000),
        "the waker did not make the descriptor readable"
    );
    server.turn(Some(Duration::ZERO)).unwrap();
    client.expect_echo(TEXT, b"woken");

    // The timer raises no readiness: only next_timeout says when to turn for it.
    let due = server.next_timeout().expect("the connection's timer");
    thread::sleep(due);
    server.turn(Some(Duration::ZERO)).unwrap();
    client.expect_echo(TEXT, b"tick");
}
