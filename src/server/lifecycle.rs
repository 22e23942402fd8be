//! Settling: after anything happened on a connection, report a finished WebSocket to
//! the handler (once), remove a closed connection and everything it held, or
//! reschedule its deadline; and the graceful shutdown.

use super::Server;
use crate::handler::{CloseReason, ConnId, Handler};
use crate::proto::CloseCode;
use crate::timer::{deadline_after, Millis};
use mio::Token;
use std::panic::{catch_unwind, AssertUnwindSafe};

impl<H: Handler> Server<H> {
    /// Settles every touched connection and a requested shutdown.
    pub(super) fn settle(&mut self) {
        while let Some(slot) = self.core.touched.pop() {
            self.settle_conn(slot);
        }
        if self.core.shutdown_requested && self.shutdown_deadline.is_none() {
            self.begin_shutdown();
        }
        if self.shutdown_deadline.is_some() && self.core.conns.is_empty() && !self.finished {
            log::info!("shutdown complete");
            self.core.share_stats(true);
            self.finished = true;
            self.inbox.close();
        }
    }

    pub(super) fn begin_shutdown(&mut self) {
        // From here on a Handle call is refused with ShuttingDown, not queued for
        // connections that are closing.
        self.inbox.begin_shutdown();
        // What this turn sent the other loops goes before the shutdown.
        self.core.flush_loops();
        self.core.shutdown_other_loops();
        log::info!(
            "shutting down: closing {} connections",
            self.core.conns.len()
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // Without a close timeout (zero or "never"), shutdown waits for every peer's
        // close: MAX is a deadline that never comes.
        let close = self.core.timeouts.close;
        self.shutdown_deadline =
            Some(close.map_or(Millis::MAX, |close| deadline_after(self.core.now, close)));
        for slot in self.core.slots() {
            let conn = &mut self.core.conns[slot];
            if conn.is_handshaking() {
                conn.abort();
            } else if conn.is_open() {
                let reason = CloseReason::Shutdown;
                self.core
                    .close(slot, CloseCode::GOING_AWAY, "server shutting down", reason);
            }
            self.settle_conn(slot);
        }
    }

    /// After anything happened on a connection: report a finished WebSocket to the
    /// handler, remove a closed connection, or reschedule its deadline.
    pub(super) fn settle_conn(&mut self, slot: usize) {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(slot) else {
            return;
        };
        // First the write that was corked for this connection: it can fail (the peer
        // reset), and a connection that fails here must still be reported below, not
        // dropped unseen with its session and topics.
        if conn.is_unflushed() {
            core.stats.flush_bytes.record(conn.out.pending() as u64);
            conn.flush(&core.io, Token(slot));
            // Reading paused over the high-water mark resumes once the queue is empty:
            // here too, not only on WRITABLE, for a socket (or a TLS transport, which
            // takes plaintext as fast as it encrypts) that took the whole queue at once
            // registers no WRITABLE, and the paused reader would wait forever.
            if conn.queue_drained(core.config.max_send_queue) {
                core.backlog.push(slot);
            }
            // The socket took bytes: a drain owed may be due.
            self.drained(slot);
        }
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(slot) else {
            return;
        };
        if let Some(session) = conn.take_ended() {
            let reason = conn.take_close_reason().unwrap_or(CloseReason::Abnormal);
            // No on_timer after on_close.
            core.app_timers.cancel_connection(slot);
            let id = ConnId {
                loop_index: core.loop_index,
                slot: slot as u32,
                generation: conn.generation,
            };
            log::debug!(
                "{}: WebSocket {id} closed: {reason:?} (code {})",
                conn.peer,
                reason.code()
            );
            let topics = conn.extras.as_mut().map(|e| std::mem::take(&mut e.topics));
            for topic in topics.unwrap_or_default() {
                core.topics.unsubscribe(&topic, slot);
            }
            core.stats.open_connections -= 1;
            core.stats.count_close(reason.code().0);
            if matches!(reason, CloseReason::Protocol(_)) {
                core.stats.protocol_errors += 1;
            }
            if matches!(reason, CloseReason::QueueFull) {
                core.stats.queue_full_closes += 1;
            }
            let handler = &mut self.handler;
            let started = core.stalls.start();
            let result = catch_unwind(AssertUnwindSafe(|| handler.on_close(id, session, &reason)));
            core.stalls
                .callback_done(started, "on_close", Some(id), &mut core.stats);
            if result.is_err() {
                log::error!("handler panicked in on_close for {id}");
                core.stats.handler_panics += 1;
            }
        }
        let Some(conn) = core.conns.get_mut(slot) else {
            return;
        };
        if conn.take_left_handshake() {
            core.handshaking -= 1;
        }
        if conn.is_closed() {
            core.count_unreported_drops(slot);
            let mut conn = core.conns.remove(slot);
            core.timers.remove(slot);
            // The slot's next connection starts with no timers.
            core.app_timers.cancel_connection(slot);
            let held = conn.rx.held() + conn.head_bytes();
            core.compression.release(&mut conn.rx);
            core.adjust_incoming(held, 0);
            conn.deregister(&core.io.registry);
            log::debug!("{}: disconnected", conn.peer);
            return;
        }
        match conn.next_deadline(&core.timeouts) {
            Some((at, _)) => core.timers.schedule(slot, at),
            None => core.timers.remove(slot),
        }
    }
}
