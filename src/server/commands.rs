//! The `Handle`'s inbox: commands from other threads, carried out on the loop in the
//! order they were queued, settled once per batch.

use super::Server;
use crate::handle::{Command, Deferred, Payload};
use crate::handler::{CloseReason, Handler};
use crate::proto::frame::Opcode;

impl<H: Handler> Server<H> {
    pub(super) fn run_commands(&mut self) {
        self.inbox.drain_into(&mut self.commands);
        while let Some(command) = self.commands.pop_front() {
            let core = &mut self.core;
            match command {
                Command::Send(id, payload) => {
                    if let Some(slot) = core.slot_of(id) {
                        let (opcode, bytes) = payload.parts();
                        let _ = core.send(slot, opcode, bytes);
                        core.touched.push(slot);
                    }
                }
                Command::SendPart(id, payload, first, last) => {
                    if let Some(slot) = core.slot_of(id) {
                        core.send_part_from_handle(slot, &payload, first, last);
                        core.touched.push(slot);
                    }
                }
                Command::Broadcast(payload) => {
                    let (opcode, bytes) = payload.parts();
                    core.broadcast_frame(opcode, bytes);
                }
                Command::Publish(topic, payload) => {
                    let (opcode, bytes) = payload.parts();
                    core.publish_frame(&topic, opcode, bytes);
                }
                Command::Close(id, code, reason) => {
                    if let Some(slot) = core.slot_of(id) {
                        core.close(slot, code, &reason, CloseReason::Local { code });
                    }
                }
                Command::Shutdown => core.shutdown_requested = true,
                Command::Defer(job) => match job.downcast::<Deferred<H>>() {
                    Ok(job) => {
                        let handler = &mut self.handler;
                        core.guard_loop("a deferred closure", |lp| job(handler, lp));
                    }
                    // Handle::defer checks the type before queueing.
                    Err(_) => log::error!("a deferred closure for another handler type"),
                },
                Command::FromLoop(topic, opcode, payload) => {
                    core.deliver_here(topic.as_deref(), opcode, &payload);
                }
                #[cfg(feature = "cluster")]
                Command::FromBroker(topic, payload) => {
                    let (opcode, bytes) = payload.parts();
                    core.deliver_here(topic.as_deref(), opcode, bytes);
                }
            }
        }
        // Settled once for the whole batch, so the sends queued for one connection
        // leave in one write.
        self.settle();
    }
}

impl Payload {
    pub(super) fn parts(&self) -> (Opcode, &[u8]) {
        match self {
            Payload::Text(text) => (Opcode::Text, text.as_bytes()),
            Payload::Binary(bytes) => (Opcode::Binary, bytes),
        }
    }
}
