//! A `tokio-tungstenite` echo server on a current-thread tokio runtime: the peer's own
//! example (`examples/echo-server.rs`: split, filter data messages, `forward` them
//! back) with only the runtime (current-thread), the path check, TCP_NODELAY (as every
//! server here sets it) and the size limits changed.
//!
//! Limits: max message and frame size 64 MiB (the defaults are 64 MiB / 16 MiB; the
//! 16 MiB workload sits exactly on the default frame cap, so both are raised to be
//! sure). Buffers keep their defaults (128 KiB read buffer, 128 KiB write target).

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wsreactor_bench::{peer_server_args, peer_tls_acceptor, procfs};

const LIMIT: usize = 64 << 20;

fn main() {
    let (listen, path) = peer_server_args("tokio-tungstenite-echo", "127.0.0.1:9996");
    procfs::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        eprintln!("tokio-tungstenite-echo on {listen}{path}");
        let path: &'static str = Box::leak(path.into_boxed_str());
        let tls = peer_tls_acceptor();
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    match tls.clone() {
                        Some(tls) => {
                            tokio::spawn(async move {
                                if let Ok(stream) = tls.accept(stream).await {
                                    accept_connection(stream, path).await
                                }
                            });
                        }
                        None => {
                            tokio::spawn(accept_connection(stream, path));
                        }
                    }
                }
                // EMFILE and the like: keep serving the others.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    });
}

#[allow(clippy::result_large_err)] // the callback type is tungstenite's
async fn accept_connection<S: AsyncRead + AsyncWrite + Unpin>(stream: S, path: &'static str) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(LIMIT))
        .max_frame_size(Some(LIMIT));
    let check_path = move |request: &Request, response: Response| {
        if request.uri().path() == path {
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(None);
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config)).await
    else {
        return;
    };
    let (write, read) = ws.split();
    // Errors (a peer that resets at the end of a run) just end the connection.
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}
