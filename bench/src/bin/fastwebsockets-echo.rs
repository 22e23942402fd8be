//! A `fastwebsockets` echo server on a current-thread tokio runtime: the peer's own
//! example (`examples/echo_server.rs`, also what its benchmarks run): hyper answers
//! the upgrade, a `FragmentCollector` reassembles messages, each data frame is written
//! back, and the connection task runs `unconstrained`. Changed: the runtime flavour
//! is current-thread (as in the example), the path is checked, TCP_NODELAY is set,
//! and the max message size is 64 MiB (its default; set explicitly, ≥ 16 MiB).

use fastwebsockets::{upgrade, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use wsreactor_bench::{peer_server_args, peer_tls_acceptor, procfs};

const LIMIT: usize = 64 << 20;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(LIMIT);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => {
                ws.write_frame(frame).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

async fn server_upgrade(
    mut req: Request<Incoming>,
    path: &'static str,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    if req.uri().path() != path || !upgrade::is_upgrade_request(&req) {
        let mut response = Response::new(Empty::new());
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    }
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        // Errors (a peer that resets at the end of a run) just end the connection.
        let _ = tokio::task::unconstrained(handle_client(fut)).await;
    });
    Ok(response)
}

fn main() {
    let (listen, path) = peer_server_args("fastwebsockets-echo", "127.0.0.1:9995");
    let path: &'static str = Box::leak(path.into_boxed_str());
    procfs::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        eprintln!("fastwebsockets-echo on {listen}{path}");
        let tls = peer_tls_acceptor();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| server_upgrade(req, path));
                let http = http1::Builder::new();
                let _ = match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(stream).await else {
                            return;
                        };
                        let io = hyper_util::rt::TokioIo::new(stream);
                        http.serve_connection(io, service).with_upgrades().await
                    }
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        http.serve_connection(io, service).with_upgrades().await
                    }
                };
            });
        }
    });
}
