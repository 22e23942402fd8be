//! A `fastwebsockets` publish/subscribe server on a current-thread tokio runtime, the
//! peer of workload (f) of `make bench` (fan-out), written the way such servers usually
//! are: one `tokio::sync::broadcast` channel per topic, and per connection one task
//! forwarding from the channel to the socket.
//!
//! Semantics (those of wsreactor's `/topic/NAME` endpoint): a WebSocket to
//! `/topic/NAME` is subscribed to NAME, and every data message it sends is published
//! to every subscriber of NAME, the sender included (a publisher reads and discards its
//! own copies). Any other path is answered 404.
//!
//! hyper answers the upgrade (as in fastwebsockets' own examples); the receiver is
//! taken before the 101 is returned, so a client that has its 101 is subscribed. The
//! socket is split as in fastwebsockets' `echo_server_split` example
//! (`WebSocket::split(tokio::io::split)`, a `FragmentCollectorRead` on the read half):
//! the connection's task reads and publishes each data message, a second task owns the
//! write half and writes every message it receives from its `broadcast::Receiver`
//! (`write_frame`: one write per message per subscriber), and also the control frames
//! the read half is obliged to send (pong, close), which reach it over a small channel.
//! A subscriber more than `--capacity` messages behind (1024) skips what it missed
//! (`RecvError::Lagged`); the load generator counts those as gaps. Both tasks run
//! `unconstrained`, as in the echo example.
//!
//! `--batch` is a tuned variant, not the usual pattern: the write half sits on a
//! `BufWriter`, and the forwarding task writes every message already waiting in its
//! receiver before one flush, so a subscriber that is behind gets them in one write.
//!
//! The runtime is current-thread, for a like-for-like comparison with one wsreactor
//! loop on one core. Topics: at most 1,024 names (then 503), never removed (a bench
//! server). Max message size 1 MiB.

use fastwebsockets::{
    upgrade, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError, WebSocketWrite,
};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncWrite, BufWriter, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use wsreactor_bench::procfs;
use wsreactor_bench::pubsub::{pubsub_server_args, topic_of, Topics};

const LIMIT: usize = 1 << 20;

/// A published message: its opcode (text or binary) and payload, shared by every
/// subscriber's forwarding task (a `Bytes` clone is a reference count).
type Published = (OpCode, Bytes);
type Registry = Arc<Mutex<Topics<Published>>>;

fn main() {
    let args = pubsub_server_args("fastwebsockets-pubsub", "127.0.0.1:9993");
    procfs::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    let batch = args.batch;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await.expect("bind");
        eprintln!(
            "fastwebsockets-pubsub on {}/topic/NAME (capacity {}, batch {batch})",
            args.listen, args.capacity
        );
        let topics: Registry = Arc::new(Mutex::new(Topics::new(args.capacity)));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let topics = topics.clone();
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let service = service_fn(move |req| server_upgrade(req, topics.clone(), batch));
                let conn_fut = http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades();
                let _ = conn_fut.await;
            });
        }
    });
}

async fn server_upgrade(
    mut req: Request<Incoming>,
    topics: Registry,
    batch: bool,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let status = |code| {
        let mut response = Response::new(Empty::new());
        *response.status_mut() = code;
        Ok(response)
    };
    let Some(name) = topic_of(req.uri().path()) else {
        return status(StatusCode::NOT_FOUND);
    };
    if !upgrade::is_upgrade_request(&req) {
        return status(StatusCode::NOT_FOUND);
    }
    let Some((tx, rx)) = topics.lock().expect("topics").join(name) else {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    };
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        // Errors (a peer that resets at the end of a run) just end the connection.
        let _ = tokio::task::unconstrained(connection(fut, tx, rx, batch)).await;
    });
    Ok(response)
}

type Writer = BufWriter<WriteHalf<TokioIo<Upgraded>>>;

async fn connection(
    fut: upgrade::UpgradeFut,
    tx: broadcast::Sender<Published>,
    rx: broadcast::Receiver<Published>,
    batch: bool,
) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(LIMIT);
    // Without --batch the BufWriter has no buffer: every write goes straight through.
    let (read, write) = ws.split(|io| {
        let (r, w) = tokio::io::split(io);
        (
            r,
            BufWriter::with_capacity(if batch { 64 * 1024 } else { 0 }, w),
        )
    });
    let mut read = FragmentCollectorRead::new(read);
    let (control_tx, control_rx) = mpsc::channel::<Frame<'static>>(4);
    let forward = tokio::spawn(tokio::task::unconstrained(forward(
        rx, control_rx, write, batch,
    )));
    let result = async {
        loop {
            let control = control_tx.clone();
            let frame = read
                .read_frame(&mut move |frame: Frame<'_>| {
                    // A pong or close the protocol obliges us to send: the writer's job.
                    let owned = Frame::new(
                        frame.fin,
                        frame.opcode,
                        None,
                        Payload::Owned(frame.payload.to_vec()),
                    );
                    let control = control.clone();
                    async move { control.send(owned).await.map_err(|_| "writer gone") }
                })
                .await?;
            match frame.opcode {
                OpCode::Close => break,
                OpCode::Text | OpCode::Binary => {
                    let payload = match frame.payload {
                        Payload::Bytes(bytes) => bytes.freeze(),
                        other => Bytes::copy_from_slice(&other),
                    };
                    // Err: no subscriber at all (cannot happen: the sender is one).
                    let _ = tx.send((frame.opcode, payload));
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    forward.abort();
    result
}

/// Writes what the topic delivers to this subscriber, in order, skipping what a lag
/// lost, and the control frames the read half hands over.
async fn forward(
    mut rx: broadcast::Receiver<Published>,
    mut control: mpsc::Receiver<Frame<'static>>,
    mut write: WebSocketWrite<Writer>,
    batch: bool,
) -> Result<(), WebSocketError> {
    loop {
        let (opcode, payload) = tokio::select! {
            biased;
            frame = control.recv() => match frame {
                Some(frame) => {
                    let close = frame.opcode == OpCode::Close;
                    write.write_frame(frame).await?;
                    write.flush().await?; // buffered or not
                    if close {
                        return Ok(());
                    }
                    continue;
                }
                None => return Ok(()),
            },
            message = rx.recv() => match message {
                Ok(message) => message,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        };
        write_message(&mut write, opcode, &payload).await?;
        if batch {
            loop {
                match rx.try_recv() {
                    Ok((opcode, payload)) => write_message(&mut write, opcode, &payload).await?,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
            write.flush().await?;
        }
    }
}

async fn write_message<S: AsyncWrite + Unpin>(
    write: &mut WebSocketWrite<S>,
    opcode: OpCode,
    payload: &[u8],
) -> Result<(), WebSocketError> {
    write
        .write_frame(Frame::new(true, opcode, None, Payload::Borrowed(payload)))
        .await
}
