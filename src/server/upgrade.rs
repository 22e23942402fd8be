//! The upgrade: a request head that came in pieces is collected (counted in the
//! incoming budget), then answered — the handler's decision (path, Origin,
//! subprotocol, compression), a 101 that opens the connection, or an HTTP refusal,
//! checked before it reaches the wire.

use super::accept::busy_response;
use super::dispatch::{frames, guard};
use super::{Core, Server};
use crate::config::Config;
use crate::conn::QueuePolicy;
use crate::conn::{ConnDeflate, Handshake};
use crate::handler::{Decision, Handler};
use crate::proto::deflate::{self, DeflateParams};
use crate::proto::extension::parse_offers;
use crate::proto::handshake::{accept_response, HandshakeError, HeadReader, Request};
use crate::proto::http::{HttpResponse, StatusCode};
use crate::stats::Stats;
use mio::Token;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};

impl<H: Handler> Server<H> {
    /// Feeds bytes to the HTTP head reader; once the head is complete, answers it.
    pub(super) fn handshake(&mut self, slot: usize, n: usize) {
        let core = &mut self.core;
        let conn = &mut core.conns[slot];
        if !conn.is_handshaking() {
            return;
        }
        // The start of a request that did not come in one read is kept, and counted in
        // the incoming budget like any other incomplete message.
        let held = conn.head_bytes();
        let wanted = match conn.extras.as_ref().and_then(|e| e.handshake.as_ref()) {
            None => n,
            Some(Handshake { head, .. }) => (head.len() + n).saturating_sub(head.capacity()),
        };
        let partial = held > 0;
        if partial && wanted > 0 && !core.grant_incoming(slot, held, wanted) {
            return refuse_upgrade(core, slot);
        }
        let conn = &mut core.conns[slot];
        let (polled, mut owned) = match conn.extras.as_mut().and_then(|e| e.handshake.as_mut()) {
            // The usual case: the whole request in one read, answered straight from
            // the read buffer, with no copy and no allocation.
            None => {
                let mut reader = HeadReader::new(core.config.max_header_bytes);
                match reader.poll(&self.read_buf[..n]) {
                    Ok(None) => {
                        if !core.grant_incoming(slot, held, wanted) {
                            return refuse_upgrade(core, slot);
                        }
                        let head = self.read_buf[..n].to_vec();
                        core.conns[slot].extras_mut().handshake = Some(Handshake { head, reader });
                        return;
                    }
                    polled => (polled, None),
                }
            }
            Some(Handshake { head, reader }) => {
                head.reserve_exact(n);
                head.extend_from_slice(&self.read_buf[..n]);
                match reader.poll(head) {
                    Ok(None) => return,
                    polled => (polled, Some(std::mem::take(head))),
                }
            }
        };
        let conn = &mut core.conns[slot];
        if let Some(extras) = &mut conn.extras {
            extras.handshake = None;
            conn.shed_extras();
        }
        // The head is answered now and dropped at the end of this call.
        if partial {
            core.adjust_incoming(held + wanted, 0);
        }
        let conn = &mut core.conns[slot];
        let end = match polled {
            Ok(Some(end)) => end,
            Ok(None) => return,
            Err(e) => {
                log::debug!("{}: {e}", conn.peer);
                core.stats.http_responses += 1;
                let response = e.response().to_bytes();
                return conn.answer(&core.io, Token(slot), &response, core.now);
            }
        };
        let bytes = match &mut owned {
            Some(head) => &mut head[..],
            None => &mut self.read_buf[..n],
        };
        upgrade(core, &mut self.handler, slot, bytes, end);
    }
}

/// Answers a connection whose request head cannot be kept (the incoming budget is
/// full) with 503, and closes it.
pub(super) fn refuse_upgrade<S>(core: &mut Core<S>, slot: usize) {
    let conn = &mut core.conns[slot];
    log::debug!("{}: refused with 503 (incoming budget)", conn.peer);
    core.stats.http_responses += 1;
    core.stats.incoming_budget_closes += 1;
    conn.answer(&core.io, Token(slot), &busy_response(), core.now);
}

/// Answers a complete request head (`bytes[..end]`) and, if it was an accepted
/// upgrade, opens the connection and reads any frames the client sent right behind it.
pub(super) fn upgrade<H: Handler>(
    core: &mut Core<H::Session>,
    handler: &mut H,
    slot: usize,
    bytes: &mut [u8],
    end: usize,
) {
    let conn = &mut core.conns[slot];
    let peer = conn.peer.get();
    let started = core.stalls.start();
    let (response, accepted) = answer(handler, &core.config, &core.stats, &bytes[..end], peer);
    core.stalls
        .callback_done(started, "on_request/on_http", None, &mut core.stats);
    // Every answer to a request head is written here, so it is checked here: a
    // handler's response (from `on_http`, a `Reject`, or the 101 with the subprotocol
    // it chose) that would inject header lines becomes a 500 and the upgrade is off.
    let (response, accepted) = match response.validate() {
        Ok(()) => (response, accepted),
        Err(e) => (internal_error(&format!("invalid response: {e}")), None),
    };
    let Some(accepted) = accepted else {
        log::debug!("{peer}: answered HTTP {}", response.status.0);
        core.stats.http_responses += 1;
        return conn.answer(&core.io, Token(slot), &response.to_bytes(), core.now);
    };
    let _ = conn.send_bytes(&core.io, Token(slot), &response.to_bytes());
    if conn.is_closed() {
        // The 101 could not be written (the peer is gone): nothing was opened.
        return;
    }
    conn.open(core.now, accepted.session);
    if let Some(protocol) = accepted.protocol {
        conn.extras_mut().protocol = Some(protocol.into_boxed_str());
    }
    conn.set_queue_policy(accepted.queue_policy);
    if let Some(params) = accepted.deflate {
        conn.rx.enable_deflate(params.client_no_context_takeover);
        conn.extras_mut().deflate = Some(ConnDeflate {
            params,
            deflater: None,
        });
    }
    if core.config.message_parts {
        conn.rx
            .receive_in_parts(core.config.max_streamed_message_size);
    }
    core.stats.handshakes += 1;
    core.stats.open_connections += 1;
    log::debug!("{peer}: WebSocket open as {}", core.id(slot));
    guard(core, slot, "on_open", |cx| handler.on_open(cx));
    // A client may send its first frames right behind the request.
    if end < bytes.len() {
        frames(core, handler, slot, &mut bytes[end..]);
    }
}

/// What an accepted upgrade carries into the open connection.
pub(super) struct Accepted<S> {
    protocol: Option<String>,
    session: S,
    deflate: Option<DeflateParams>,
    queue_policy: QueuePolicy,
}

/// Decides the HTTP answer to a complete request head: a 101 (with the subprotocol
/// and session), a refusal, or whatever the handler serves for a plain GET.
pub(super) fn answer<H: Handler>(
    handler: &mut H,
    config: &Config,
    stats: &Stats,
    head: &[u8],
    peer: SocketAddr,
) -> (HttpResponse, Option<Accepted<H::Session>>) {
    let request = match Request::parse(head) {
        Ok(request) => request,
        Err(e) => return (e.response(), None),
    };
    if request.method() != "GET" {
        return (HandshakeError::MethodNotAllowed.response(), None);
    }
    if !request.wants_websocket() {
        return match catch_unwind(AssertUnwindSafe(|| handler.on_http_with(&request, stats))) {
            Ok(response) if !response.is_upgrade() => (response, None),
            Ok(_) => (internal_error("on_http answered 101"), None),
            Err(_) => (internal_error("on_http panicked"), None),
        };
    }
    let key = match request.validate_upgrade() {
        Ok(key) => key,
        Err(e) => return (e.response(), None),
    };
    if !config.origin_allowed(request.origin()) {
        log::debug!("{peer}: Origin {:?} not allowed", request.origin());
        return (
            HttpResponse::text(StatusCode::FORBIDDEN, "origin not allowed\n"),
            None,
        );
    }
    // With compression on, a malformed extensions header fails the handshake
    // (RFC 6455 §9.1 grammar); with it off, the header is not our business.
    let offers = if config.deflate {
        match parse_offers(request.headers_named("Sec-WebSocket-Extensions")) {
            Ok(offers) => offers,
            Err(e) => {
                let body = format!("bad request: {e}\n");
                return (HttpResponse::text(StatusCode::BAD_REQUEST, &body), None);
            }
        }
    } else {
        Vec::new()
    };
    match catch_unwind(AssertUnwindSafe(|| handler.on_request(&request, peer))) {
        Ok(Decision::Accept {
            protocol: Some(chosen),
            ..
        }) if !request.protocols().any(|p| p == chosen) => (
            internal_error("handler chose a subprotocol the client did not offer"),
            None,
        ),
        Ok(Decision::Accept {
            protocol,
            session,
            compress,
            queue_policy,
        }) => {
            let deflate = compress
                .then(|| deflate::negotiate(&offers, config.deflate_policy()))
                .flatten();
            let mut response = accept_response(key, protocol.as_deref());
            if let Some(params) = &deflate {
                response =
                    response.with_header("Sec-WebSocket-Extensions", &params.response_header());
            }
            let accepted = Accepted {
                protocol,
                session,
                deflate,
                queue_policy: queue_policy.unwrap_or(config.queue_policy),
            };
            (response, Some(accepted))
        }
        Ok(Decision::Reject(response)) if response.is_upgrade() => {
            (internal_error("on_request rejected with 101"), None)
        }
        Ok(Decision::Reject(response)) => (response, None),
        Err(_) => (internal_error("on_request panicked"), None),
    }
}

pub(super) fn internal_error(why: &str) -> HttpResponse {
    log::error!("handler error: {why}");
    HttpResponse::text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
}
