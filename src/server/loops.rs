//! The loop's side of a [`Reactor`](crate::Reactor): relaying its broadcasts and
//! publishes to the other loops, delivering theirs, routing a send to an id another
//! loop owns, starting every loop's shutdown with its own, and sharing its stats.
//!
//! Nothing here is shared on the hot path: subscriptions stay in each loop's own
//! `Topics`; a publish reaches another loop as one command on its inbox (the payload
//! copied once into an `Arc<[u8]>` all the loops share), and each loop encodes the
//! frame once for its own subscribers. A lone `Server` has no group, and each of
//! these is one branch on `None`.

use super::{Core, Fanout, Server};
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
    /// which delivers it to its own connections only. Each loop's inbox is a FIFO, so
    /// the messages of one publisher arrive in order on every loop. A loop whose inbox
    /// is full (or that has finished) misses it: logged and counted in
    /// `Stats::messages_dropped` once per loop that missed it.
    pub(super) fn relay(&mut self, topic: Option<&str>, opcode: Opcode, payload: &[u8]) {
        if self.group.as_ref().is_none_or(|g| g.inboxes.len() < 2) {
            return;
        }
        let topic: Option<Arc<str>> = topic.map(Arc::from);
        let payload: Arc<[u8]> = Arc::from(payload);
        let mut missed = 0;
        for inbox in self.peers() {
            let command = Command::FromLoop(topic.clone(), opcode, Arc::clone(&payload));
            if let Err(e) = inbox.push(command) {
                if e != crate::HandleError::ShuttingDown && e != crate::HandleError::Closed {
                    missed += 1;
                }
            }
        }
        if missed > 0 {
            self.stats.messages_dropped += missed;
            log::warn!(
                "loop {}: {missed} other loop(s) missed a {} (their inbox was full)",
                self.loop_index,
                if topic.is_some() {
                    "publish"
                } else {
                    "broadcast"
                }
            );
        }
    }

    /// Delivers what another loop broadcast (`None`) or published, to this loop's
    /// connections only: never relayed again, nor sent to a cluster's broker (the
    /// loop that made it did both).
    pub(super) fn deliver_relayed(
        &mut self,
        topic: Option<&str>,
        opcode: Opcode,
        payload: &[u8],
    ) -> Fanout {
        let slots = match topic {
            Some(topic) => self.topics.members(topic).to_vec(),
            None => self.slots(),
        };
        self.fanout(&slots, opcode, payload)
    }

    /// The inbox of the other loop that owns `id`, if it is one of this group's.
    fn owner_of(&self, id: ConnId) -> Option<&crate::handle::Inbox> {
        if id.loop_index == self.loop_index {
            return None;
        }
        self.group
            .as_ref()
            .and_then(|group| group.inboxes.get(id.loop_index()))
            .map(|inbox| &**inbox)
    }

    /// A send to a connection another loop owns: queued on that loop's inbox.
    /// `Some(Queued(len))` when handed over (what happens there is counted in that
    /// loop's stats), `Some(Refused)` when its inbox is full or it has finished,
    /// `None` when the id is not another loop's.
    pub(super) fn route_send(
        &self,
        to: ConnId,
        opcode: Opcode,
        payload: &[u8],
    ) -> Option<SendStatus> {
        let inbox = self.owner_of(to)?;
        let payload = match opcode {
            Opcode::Text => Payload::Text(String::from_utf8_lossy(payload).into_owned()),
            _ => Payload::Binary(payload.to_vec()),
        };
        Some(match inbox.push(Command::Send(to, payload)) {
            Ok(()) => SendStatus::Queued(0),
            Err(_) => SendStatus::Refused,
        })
    }

    /// A close of a connection another loop owns: queued on its inbox (true), or
    /// the id is not another loop's (false).
    pub(super) fn route_close(&self, id: ConnId, code: CloseCode, reason: &str) -> bool {
        let Some(inbox) = self.owner_of(id) else {
            return false;
        };
        let _ = inbox.push(Command::Close(id, code, reason.to_owned()));
        true
    }

    /// This loop's shutdown begins: so does every other loop's.
    pub(super) fn shutdown_other_loops(&self) {
        for inbox in self.peers() {
            let _ = inbox.push(Command::Shutdown);
        }
    }

    /// Copies the stats where the other loops (and handles) read them: at most every
    /// 100 ms, or now if `force`.
    pub(super) fn share_stats(&mut self, force: bool) {
        let Some(group) = &self.group else {
            return;
        };
        if !force && self.now < self.stats_shared + SHARE_STATS_MS {
            return;
        }
        self.stats_shared = self.now;
        group.share_stats(usize::from(self.loop_index), &self.stats);
    }
}

impl<S> super::Loop<S> {
    /// This loop's index in its [`Reactor`](crate::Reactor): 0 to
    /// [`loops`](Loop::loops)` - 1` (0 for a lone [`Server`]).
    ///
    /// [`Loop::loops`]: super::Loop::loops
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
