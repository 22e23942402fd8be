//! Reading: the read loop with its per-turn cap and backpressure, the frames a read
//! carries run through the connection's receiver, and each event acted on — messages
//! to the handler (a panic there closes that connection alone, 1011), pings answered,
//! a peer's close echoed.

use super::{Core, Ctx, Server};
use crate::handler::{CloseReason, Handler};
use crate::proto::frame::Opcode;
use crate::proto::receiver::Progress;
use crate::proto::{CloseCode, Event};
use mio::Token;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Reads per connection per loop turn before the others get their turn; a connection
/// with more input waiting is picked up again on the next turn.
pub(super) const MAX_READS_PER_TURN: usize = 16;

impl<H: Handler> Server<H> {
    pub(super) fn writable(&mut self, slot: usize) {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(slot) else {
            return;
        };
        core.stats.flush_bytes.record(conn.out.pending() as u64);
        conn.flush(&core.io, Token(slot));
        let config = &core.config;
        if conn.queue_drained(config.max_send_queue) {
            // Edge-triggered: input that waited meanwhile raises no new event.
            core.backlog.push(slot);
        }
        self.drained(slot);
    }

    /// Reads until the socket is drained, the per-turn cap, or backpressure.
    ///
    /// A read that returns less than the buffer size has emptied the socket, so unless
    /// `until_would_block` is set we stop there instead of paying one more syscall
    /// for the `WouldBlock` (as nginx does): with edge-triggered readiness, bytes that
    /// arrive after that read raise a new event. A FIN that came with the data has
    /// already been reported (`is_read_closed`), and then we do read to the end.
    pub(super) fn read(&mut self, slot: usize, until_would_block: bool) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.core.conns.get_mut(slot) else {
                return;
            };
            if conn.is_read_paused() || conn.is_closed() {
                return;
            }
            let read = conn.read(&mut self.read_buf);
            conn.after_read(&self.core.io, Token(slot));
            let n = match read {
                Ok(0) => return self.core.eof(slot),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    #[cfg(feature = "tls")]
                    if crate::tls::is_handshake_failure(&e) {
                        self.core.stats.tls_handshake_failures += 1;
                    }
                    return conn.fail_io(e);
                }
            };
            // Anything from the peer answers a keepalive ping.
            conn.heard(self.core.now);
            if conn.is_handshaking() {
                self.handshake(slot, n);
            } else if conn.parses_frames() {
                let was = (conn.rx.is_mid_message(), conn.rx.data_received());
                frames(
                    &mut self.core,
                    &mut self.handler,
                    slot,
                    &mut self.read_buf[..n],
                );
                if let Some(conn) = self.core.conns.get_mut(slot) {
                    let now = (conn.rx.is_mid_message(), conn.rx.data_received());
                    // A message that began or grew: its stall clock starts again.
                    if now.0 && (!was.0 || was.1 != now.1) {
                        conn.message_grew(self.core.now);
                    }
                }
            }
            // Otherwise discarding: the stream is over as far as we are concerned.
            let Some(conn) = self.core.conns.get_mut(slot) else {
                return;
            };
            if conn.out.pending() > self.core.config.write_high_water && conn.may_pause_reading() {
                conn.pause_reading();
                return;
            }
            if n < self.read_buf.len() && !until_would_block && !conn.read_may_have_more() {
                return;
            }
        }
        self.core.backlog.push(slot);
    }
}

/// Runs a handler callback for `slot`, turning a panic into a 1011 close of that
/// connection alone.
/// `what` names the callback for a stall warning.
pub(super) fn guard<S>(
    core: &mut Core<S>,
    slot: usize,
    what: &'static str,
    callback: impl FnOnce(&mut Ctx<'_, S>),
) {
    let id = core.id(slot);
    let started = core.stalls.start();
    let result = catch_unwind(AssertUnwindSafe(|| callback(&mut Ctx { core, slot })));
    core.stalls
        .callback_done(started, what, Some(id), &mut core.stats);
    if result.is_err() {
        let conn = &core.conns[slot];
        log::error!(
            "{}: handler panicked; closing {} with 1011",
            conn.peer,
            core.id(slot)
        );
        core.stats.handler_panics += 1;
        core.close(
            slot,
            CloseCode::INTERNAL_ERROR,
            "internal error",
            CloseReason::HandlerPanic,
        );
        // Stop parsing: whatever the peer sends next, the handler is not trusted with it.
        core.conns[slot].stop_reading(&core.io, Token(slot));
    }
}

/// Runs `input` through the connection's receiver and acts on each event in order.
///
/// The receiver is moved out of the table for the duration, so the events it lends
/// (which borrow it and `input`) can be handled with the whole table available to the
/// handler's [`Ctx`].
pub(super) fn frames<H: Handler>(
    core: &mut Core<H::Session>,
    handler: &mut H,
    slot: usize,
    input: &mut [u8],
) {
    let mut rx = std::mem::take(&mut core.conns[slot].rx);
    core.rx_lent = Some(slot);
    let (held, had_inflater) = (rx.held(), rx.holds_inflater());
    core.compression.lend_inflater(&mut rx);
    core.adjust_incoming(held, rx.held());
    let parsing = |core: &Core<H::Session>| core.conns[slot].parses_frames();
    let mut pos = 0;
    // In parts mode a compressed message may have inflated output waiting when the
    // input is used up: the receiver is asked again until it has none.
    while (pos < input.len() || rx.has_pending()) && parsing(core) {
        // What `core.incoming` counts for this receiver. Every growth asks the budget
        // first (which may close others to make room), after counting what the
        // receiver freed meanwhile (the buffer of the message it delivered last).
        let mut counted = rx.held();
        let result = rx.read_within(&mut input[pos..], &mut |holds, bytes| {
            core.adjust_incoming(counted, holds);
            counted = holds;
            let ok = core.grant_incoming(slot, holds, bytes);
            if ok {
                counted += bytes;
            }
            ok
        });
        match result {
            Ok(Progress { consumed, event }) => {
                pos += consumed;
                if let Some(event) = event {
                    on_event(core, handler, slot, event);
                }
            }
            Err(error) => {
                core.fail(slot, error);
            }
        }
        core.adjust_incoming(counted, rx.held());
    }
    let held = rx.held();
    core.compression.reclaim_inflater(&mut rx, had_inflater);
    if !parsing(core) {
        // Failed or finishing: nothing more will be parsed, so nothing is kept.
        core.compression.release(&mut rx);
    }
    core.adjust_incoming(held, rx.held());
    core.conns[slot].rx = rx;
    core.rx_lent = None;
}

pub(super) fn on_event<H: Handler>(
    core: &mut Core<H::Session>,
    handler: &mut H,
    slot: usize,
    event: Event<'_>,
) {
    let conn = &mut core.conns[slot];
    let open = conn.is_open();
    match event {
        Event::Message(message) if open => {
            core.stats.messages_in += 1;
            core.stats.bytes_in += message.len() as u64;
            guard(core, slot, "on_message", |cx| {
                handler.on_message(cx, message)
            });
        }
        Event::Part(part) if open => {
            core.stats.bytes_in += part.len() as u64;
            if part.last {
                core.stats.messages_in += 1;
            }
            guard(core, slot, "on_part", |cx| handler.on_part(cx, part));
        }
        // After our close, data is read and dropped until the peer's close arrives.
        Event::Message(_) | Event::Part(_) => {}
        Event::Ping(payload) if open => {
            let _ = conn.send_frame(
                &core.io,
                Token(slot),
                Opcode::Pong,
                payload,
                core.config.max_send_queue,
            );
            // Room for the pong may have been made by dropping messages.
            core.list_drops(slot);
        }
        Event::Pong(payload) if open => super::flow::pong(core, handler, slot, payload),
        Event::Ping(_) | Event::Pong(_) => {}
        Event::Close(frame) => {
            if open {
                let code = frame.map(|f| f.code);
                conn.set_close_reason(CloseReason::Peer {
                    code: code.unwrap_or(CloseCode::NO_STATUS),
                    reason: frame.map(|f| f.reason.to_owned()).unwrap_or_default(),
                });
                log::debug!("{}: peer sent close {:?}", conn.peer, code);
            }
            // §5.5.1: answered with a close echoing the peer's code if ours is not out
            // yet; either way the handshake is complete and the server closes TCP first.
            conn.receive_close(&core.io, Token(slot), frame, core.now);
        }
    }
}
