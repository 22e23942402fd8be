//! The loop's side of a [`Reactor`](crate::Reactor): relaying its broadcasts and
//! publishes to the other loops, delivering theirs, routing a send to an id another
//! loop owns, starting every loop's shutdown with its own, and sharing its stats.
//!
//! Nothing here is shared on the hot path: subscriptions stay in each loop's own
//! `Topics`; a publish reaches another loop as one command on its inbox (the payload
//! copied once into an `Arc<[u8]>` all the loops share), and each loop encodes the
//! frame once for its own subscribers. What one turn sends another loop (relayed
//! publishes, routed sends and closes, in the order they were made) is handed over
//! at the end of the turn in one batch: one lock and at most one wake-up per loop
//! and turn, and the receiving loop gets the turn's messages together, so that each
//! of its subscribers gets them in one write, as on the publishing loop. A lone
//! `Server` has no group, and each of these is one branch on `None`.

use super::{Core, Server};
use crate::handle::{Command, Payload};
use crate::handler::{ConnId, Handler, SendStatus};
use crate::loops::Group;
use crate::proto::frame::Opcode;
use crate::proto::CloseCode;
use crate::stats::Stats;
use std::sync::Arc;

/// How often a loop copies its stats where the others can read them.
const SHARE_STATS_MS: u64 = 100;

impl<H: Handler> Server<H> {
    /// Makes this server loop `index` of `group` (before it runs).
    pub(crate) fn join_group(&mut self, index: u16, group: Arc<Group>) {
        self.core.loop_index = index;
        self.core.to_loops = (0..group.inboxes.len()).map(|_| Vec::new()).collect();
        self.core.group = Some(group);
        self.core.share_stats(true);
    }

    /// This loop's inbox, for the group's list.
    pub(crate) fn inbox(&self) -> Arc<crate::handle::Inbox> {
        Arc::clone(&self.inbox)
    }
}

impl<S> Core<S> {
    /// The other loops of the group, if there are any.
    fn peers(&self) -> impl Iterator<Item = &crate::handle::Inbox> + '_ {
        let own = usize::from(self.loop_index);
        self.group
            .iter()
            .flat_map(|group| group.inboxes.iter().enumerate())
            .filter(move |(i, _)| *i != own)
            .map(|(_, inbox)| &**inbox)
    }

    /// Hands a broadcast (`None`) or publish made on this loop to every other loop,
    /// which delivers it to its own connections only (at the end of the turn). Each
    /// loop's inbox is a FIFO, so the messages of one publisher arrive in order on
    /// every loop.
    pub(super) fn relay(&mut self, topic: Option<&str>, opcode: Opcode, payload: &[u8]) {
        if self.to_loops.len() < 2 {
            return;
        }
        let topic: Option<Arc<str>> = topic.map(Arc::from);
        let payload: Arc<[u8]> = Arc::from(payload);
        for index in 0..self.to_loops.len() {
            if index != usize::from(self.loop_index) {
                let command = Command::FromLoop(topic.clone(), opcode, Arc::clone(&payload));
                self.send_to_loop(index, command);
            }
        }
    }

    /// Queues `command` for loop `index`, handed over at the end of the turn (or now,
    /// if a turn queued as many as the inbox holds: the batch stays bounded).
    fn send_to_loop(&mut self, index: usize, command: Command) {
        let batch = &mut self.to_loops[index];
        batch.push(command);
        if batch.len() >= self.config.handle_queue_capacity.max(1) {
            self.flush_loop(index);
        }
    }

    /// End of turn: hands each other loop what this turn sent it. A loop whose inbox
    /// is full misses what does not fit: logged, and counted in
    /// `Stats::messages_dropped` (one per command).
    pub(super) fn flush_loops(&mut self) {
        for index in 0..self.to_loops.len() {
            if !self.to_loops[index].is_empty() {
                self.flush_loop(index);
            }
        }
    }

    fn flush_loop(&mut self, index: usize) {
        let Some(group) = &self.group else {
            return;
        };
        // A loop that is shutting down or gone takes nothing more: not a drop.
        if let Ok(dropped) = group.inboxes[index].push_batch(&mut self.to_loops[index]) {
            if dropped > 0 {
                self.stats.messages_dropped += dropped as u64;
                log::warn!(
                    "loop {}: loop {index} missed {dropped} message(s) (its inbox was full)",
                    self.loop_index
                );
            }
        }
    }

    /// The index of the other loop that owns `id`, if it is one of this group's.
    fn owner_of(&self, id: ConnId) -> Option<usize> {
        let index = id.loop_index();
        (id.loop_index != self.loop_index && index < self.to_loops.len()).then_some(index)
    }

    /// A send to a connection another loop owns: handed to that loop with the rest
    /// of the turn's, in order. `Some(Queued(0))` (what happens there is counted in
    /// that loop's stats), or `None` when the id is not another loop's.
    pub(super) fn route_send(
        &mut self,
        to: ConnId,
        opcode: Opcode,
        payload: &[u8],
    ) -> Option<SendStatus> {
        let index = self.owner_of(to)?;
        let payload = match opcode {
            Opcode::Text => Payload::Text(String::from_utf8_lossy(payload).into_owned()),
            _ => Payload::Binary(payload.to_vec()),
        };
        self.send_to_loop(index, Command::Send(to, payload));
        Some(SendStatus::Queued(0))
    }

    /// A close of a connection another loop owns: handed to that loop (true), or the
    /// id is not another loop's (false).
    pub(super) fn route_close(&mut self, id: ConnId, code: CloseCode, reason: &str) -> bool {
        let Some(index) = self.owner_of(id) else {
            return false;
        };
        self.send_to_loop(index, Command::Close(id, code, reason.to_owned()));
        true
    }

    /// This loop's shutdown begins: so does every other loop's.
    pub(super) fn shutdown_other_loops(&self) {
        for inbox in self.peers() {
            let _ = inbox.push(Command::Shutdown);
        }
    }

    /// When the loop must wake to share stats a turn changed (`None`: shared).
    pub(super) fn stats_due(&self) -> Option<crate::timer::Millis> {
        self.stats_stale
            .then_some(self.stats_shared + SHARE_STATS_MS)
    }

    /// Copies the stats where the other loops (and handles) read them: at most every
    /// 100 ms, or now if `force`.
    pub(super) fn share_stats(&mut self, force: bool) {
        let Some(group) = &self.group else {
            return;
        };
        if !force && self.now < self.stats_shared + SHARE_STATS_MS {
            self.stats_stale = true;
            return;
        }
        self.stats_shared = self.now;
        self.stats_stale = false;
        group.share_stats(usize::from(self.loop_index), &self.stats);
    }
}

impl<S> super::Loop<S> {
    /// This loop's index in its [`Reactor`](crate::Reactor): 0 to
    /// [`loops`](super::Loop::loops)` - 1` (0 for a lone [`Server`]).
    pub fn loop_index(&self) -> usize {
        usize::from(self.loop_index)
    }

    /// How many loops serve the address (1 for a lone [`Server`]).
    pub fn loops(&self) -> usize {
        self.group.as_ref().map_or(1, |group| group.inboxes.len())
    }

    /// Every loop's stats, by loop index: this loop's as they are now, the others'
    /// as they last shared them (at most 100 ms ago, and when they finished). Sum
    /// them with [`Stats::sum`]. A lone [`Server`]'s is its own.
    pub fn loop_stats(&self) -> Vec<Stats> {
        match &self.group {
            None => vec![self.stats.clone()],
            Some(group) => {
                let mut all = group.stats();
                if let Some(own) = all.get_mut(usize::from(self.loop_index)) {
                    own.clone_from(&self.stats);
                }
                all
            }
        }
    }
}
