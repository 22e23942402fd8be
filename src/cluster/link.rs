//! The loop's end of the bridge: what a loop turn publishes and which topics gained or
//! lost their local subscribers, collected in the loop without a lock and handed to
//! the bridge threads once, at the end of the turn.

use super::envelope::{encode, ENVELOPE_HEADER};
use super::{lock, ClusterStats, Outgoing, Shared};
use crate::proto::frame::Opcode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The loop's end of the bridge, kept in the loop's core: it collects a turn's
/// publishes and subscription changes and hands them over once, at the end of the
/// turn.
pub(crate) struct Link {
    shared: Arc<Shared>,
    out: Vec<Outgoing>,
    out_bytes: usize,
    changes: Vec<(Box<str>, bool)>,
}

impl Link {
    pub(super) fn new(shared: Arc<Shared>) -> Link {
        Link {
            shared,
            out: Vec::new(),
            out_bytes: 0,
            changes: Vec::new(),
        }
    }

    /// Queues a publish to `topic` (`None`: a broadcast) for the end of the turn.
    pub fn publish(&mut self, topic: Option<&str>, opcode: Opcode, payload: &[u8]) {
        let shared = &self.shared;
        let channel = match topic {
            Some(topic) if shared.is_local(topic) => return,
            Some(topic) => shared.topic_channel(topic),
            None => shared.broadcast_channel(),
        };
        let bytes = ENVELOPE_HEADER + payload.len();
        // At most once: with the broker away nothing is queued for later, so that a
        // reconnect does not deliver a burst of stale messages.
        let fits = self.out.len() + shared.queued.load(Ordering::Relaxed) < shared.capacity
            && self.out_bytes + bytes + shared.queued_bytes.load(Ordering::Relaxed)
                <= shared.capacity_bytes;
        if !fits || !shared.publisher_up.load(Ordering::Relaxed) {
            shared.publishes_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.out_bytes += bytes;
        self.out.push(Outgoing {
            channel: channel.into(),
            envelope: encode(shared.node_id, opcode, payload),
        });
    }

    /// Notes that `topic` gained its first local subscriber (`true`) or lost its last.
    pub fn topic_changed(&mut self, topic: Box<str>, subscribed: bool) {
        if !self.shared.is_local(&topic) {
            self.changes.push((topic, subscribed));
        }
    }

    /// Hands the turn's publishes and subscription changes to the bridge: one lock
    /// and one wake-up each, however many there were.
    pub fn flush(&mut self) {
        let shared = &*self.shared;
        if !self.changes.is_empty() {
            let mut changes = lock(&shared.changes);
            for (topic, subscribed) in self.changes.drain(..) {
                changes.insert(topic, subscribed);
            }
            shared.changed.store(true, Ordering::Release);
        }
        if !self.out.is_empty() {
            let mut queue = lock(&shared.queue);
            // Checked again under the lock the publisher holds when it finds the broker
            // gone and empties the queue: nothing enters it after that, so nothing
            // published during an outage is sent when the broker is back.
            if !shared.publisher_up.load(Ordering::Relaxed) {
                let dropped = self.out.len() as u64;
                shared
                    .publishes_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
                self.out.clear();
                self.out_bytes = 0;
                return;
            }
            let was_empty = queue.messages.is_empty();
            queue.bytes += self.out_bytes;
            queue.messages.extend(self.out.drain(..));
            shared.queued.store(queue.messages.len(), Ordering::Relaxed);
            shared.queued_bytes.store(queue.bytes, Ordering::Relaxed);
            self.out_bytes = 0;
            drop(queue);
            if was_empty {
                shared.queue_ready.notify_one();
            }
        }
    }

    /// The bridge's counters.
    pub fn stats(&self) -> ClusterStats {
        self.shared.stats()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The server is gone: so is the node's part in the cluster.
        self.shared.stop();
    }
}
