//! A `tokio-tungstenite` publish/subscribe server on a current-thread tokio runtime, the
//! peer of workload (f) of `make bench` (fan-out), written the way such servers usually
//! are: one `tokio::sync::broadcast` channel per topic, and per connection one task
//! forwarding from the channel to the socket.
//!
//! Semantics (those of wsreactor's `/topic/NAME` endpoint): a WebSocket to
//! `/topic/NAME` is subscribed to NAME, and every data message it sends is published
//! to every subscriber of NAME, the sender included (a publisher reads and discards its
//! own copies). Any other path is answered 404.
//!
//! Per connection: the connection's task reads (`SplitStream`) and publishes each data
//! message with `Sender::send`; a second task owns the write half (`SplitSink`) and
//! `send`s every message it receives from its `broadcast::Receiver`, so each message
//! costs one write per subscriber (`SinkExt::send` flushes). The receiver is taken in
//! the handshake callback, before the 101 goes out, so a client that has its 101 is
//! subscribed. A subscriber more than `--capacity` messages behind (1024) skips what
//! it missed (`RecvError::Lagged`: the broadcast channel keeps only the newest
//! `capacity` messages); the load generator counts those as gaps.
//!
//! `--batch` is a tuned variant, not the usual pattern: the forwarding task `feed`s
//! every message already waiting in its receiver and flushes once, so a subscriber
//! that is behind gets them in one write.
//!
//! The runtime is current-thread, for a like-for-like comparison with one wsreactor
//! loop on one core. Topics: at most 1,024 names (then 503), never removed (a bench
//! server). Limits: messages and frames of at most 1 MiB.

use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use wsreactor_bench::procfs;
use wsreactor_bench::pubsub::{pubsub_server_args, topic_of, Topics};

const LIMIT: usize = 1 << 20;

type Registry = Arc<Mutex<Topics<Message>>>;

fn main() {
    let args = pubsub_server_args("tokio-tungstenite-pubsub", "127.0.0.1:9994");
    procfs::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await.expect("bind");
        eprintln!(
            "tokio-tungstenite-pubsub on {}/topic/NAME (capacity {}, batch {})",
            args.listen, args.capacity, args.batch
        );
        let topics: Registry = Arc::new(Mutex::new(Topics::new(args.capacity)));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, topics.clone(), args.batch));
                }
                // EMFILE and the like: keep serving the others.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    });
}

#[allow(clippy::result_large_err)] // the callback type is tungstenite's
async fn connection(stream: TcpStream, topics: Registry, batch: bool) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(Some(LIMIT))
        .max_frame_size(Some(LIMIT));
    let mut joined: Option<(broadcast::Sender<Message>, broadcast::Receiver<Message>)> = None;
    let subscribe = |request: &Request, response: Response| {
        let refuse = |status| {
            let mut refusal = ErrorResponse::new(None);
            *refusal.status_mut() = status;
            Err(refusal)
        };
        let Some(name) = topic_of(request.uri().path()) else {
            return refuse(StatusCode::NOT_FOUND);
        };
        match topics.lock().expect("topics").join(name) {
            Some(pair) => {
                joined = Some(pair);
                Ok(response)
            }
            None => refuse(StatusCode::SERVICE_UNAVAILABLE),
        }
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, subscribe, Some(config)).await
    else {
        return;
    };
    let Some((tx, rx)) = joined else { return };
    let (write, mut read) = ws.split();
    let forward = tokio::spawn(forward(rx, write, batch));
    // Errors (a peer that resets at the end of a run) just end the connection.
    while let Some(Ok(message)) = read.next().await {
        match message {
            Message::Text(_) | Message::Binary(_) => {
                // Err: no subscriber at all (cannot happen: the sender is one).
                let _ = tx.send(message);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    forward.abort();
}

type Sink = futures_util::stream::SplitSink<tokio_tungstenite::WebSocketStream<TcpStream>, Message>;

/// Writes what the topic delivers to this subscriber, in order; skips what a lag lost.
async fn forward(mut rx: broadcast::Receiver<Message>, mut write: Sink, batch: bool) {
    loop {
        let message = match rx.recv().await {
            Ok(message) => message,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !batch {
            if write.send(message).await.is_err() {
                return;
            }
            continue;
        }
        if write.feed(message).await.is_err() {
            return;
        }
        loop {
            match rx.try_recv() {
                Ok(message) => {
                    if write.feed(message).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        if write.flush().await.is_err() {
            return;
        }
    }
}
