//! Named groups of connections for publish/subscribe.

use std::collections::HashMap;

/// Topic name → the slots of its subscribers. Each connection also lists its topics,
/// so closing it removes it everywhere without scanning every topic.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    members: HashMap<Box<str>, Vec<usize>>,
    /// Subscriptions over all topics (for `Stats::topic_memberships`).
    memberships: usize,
    /// When watched (a cluster is attached): topics that gained their first member
    /// (true) or lost their last (false), in order, until taken. `None` costs a
    /// branch per first/last member and nothing else.
    changes: Option<Vec<(Box<str>, bool)>>,
}

impl Topics {
    /// Adds `slot` to `topic`; false if it was already there.
    pub fn subscribe(&mut self, topic: &str, slot: usize) -> bool {
        let members = self.members.entry(topic.into()).or_default();
        if members.contains(&slot) {
            return false;
        }
        if members.is_empty() {
            if let Some(changes) = &mut self.changes {
                changes.push((topic.into(), true));
            }
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
            if let Some(changes) = &mut self.changes {
                changes.push((topic.into(), false));
            }
        }
        true
    }

    /// Starts recording first-member/last-member changes; the topics that have
    /// members now are recorded as gained.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub fn watch(&mut self) {
        let now = self.members.keys().map(|t| (t.clone(), true)).collect();
        self.changes = Some(now);
    }

    /// The changes recorded since the last call (none unless watched).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub fn take_changes(&mut self) -> impl Iterator<Item = (Box<str>, bool)> + '_ {
        self.changes
            .iter_mut()
            .flat_map(|changes| changes.drain(..))
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

    #[test]
    fn watched_topics_report_first_and_last_members_only() {
        let mut topics = Topics::default();
        topics.subscribe("old", 1);
        assert_eq!(topics.take_changes().count(), 0, "not watched yet");
        topics.watch();
        topics.subscribe("news", 1);
        topics.subscribe("news", 2);
        topics.subscribe("old", 2);
        topics.unsubscribe("news", 1);
        topics.unsubscribe("news", 2);
        topics.unsubscribe("old", 1);
        let changes: Vec<_> = topics.take_changes().collect();
        let names = |v: &[(Box<str>, bool)]| {
            v.iter()
                .map(|(t, s)| (t.to_string(), *s))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&changes),
            [
                ("old".into(), true),
                ("news".into(), true),
                ("news".into(), false)
            ]
        );
        assert_eq!(topics.take_changes().count(), 0);
    }
}
