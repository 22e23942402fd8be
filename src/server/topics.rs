//! Named groups of connections for publish/subscribe.

use std::collections::HashMap;

/// Topic name → the slots of its subscribers. Each connection also lists its topics,
/// so closing it removes it everywhere without scanning every topic.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    members: HashMap<Box<str>, Vec<usize>>,
    /// Subscriptions over all topics (for `Stats::topic_memberships`).
    memberships: usize,
}

impl Topics {
    /// Adds `slot` to `topic`; false if it was already there.
    pub fn subscribe(&mut self, topic: &str, slot: usize) -> bool {
        let members = self.members.entry(topic.into()).or_default();
        if members.contains(&slot) {
            return false;
        }
        members.push(slot);
        self.memberships += 1;
        true
    }

    /// Removes `slot` from `topic`; false if it was not there.
    pub fn unsubscribe(&mut self, topic: &str, slot: usize) -> bool {
        let Some(members) = self.members.get_mut(topic) else {
            return false;
        };
        let Some(at) = members.iter().position(|&s| s == slot) else {
            return false;
        };
        members.swap_remove(at);
        self.memberships -= 1;
        if members.is_empty() {
            self.members.remove(topic);
        }
        true
    }

    pub fn memberships(&self) -> usize {
        self.memberships
    }

    pub fn members(&self, topic: &str) -> &[usize] {
        self.members.get(topic).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_is_idempotent_and_empty_topics_vanish() {
        let mut topics = Topics::default();
        assert!(topics.subscribe("news", 1));
        assert!(!topics.subscribe("news", 1));
        assert!(topics.subscribe("news", 2));
        assert_eq!(topics.members("news"), [1, 2]);
        assert!(topics.unsubscribe("news", 1));
        assert!(!topics.unsubscribe("news", 1));
        assert_eq!(topics.memberships(), 1);
        assert!(topics.unsubscribe("news", 2));
        assert!(topics.members.is_empty());
        assert_eq!(topics.memberships(), 0);
        assert_eq!(topics.members("news"), [] as [usize; 0]);
    }
}
