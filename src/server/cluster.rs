//! The loop's end of the cluster bridge (`crate::cluster`): attaching it, handing it
//! the turn's publishes and topic changes, and delivering what other nodes published.

use super::{Core, Server};
use crate::cluster::{self, Cluster, ClusterConfig, ClusterError};
use crate::handler::Handler;
use crate::proto::frame::Opcode;

impl<H: Handler> Server<H> {
    /// Links this server's topics and broadcasts with other nodes through a Redis
    /// broker (see [`crate::cluster`] for how, and what is guaranteed).
    ///
    /// Returns at once: the bridge connects on threads of its own, and a broker that
    /// cannot be reached is a warning in the log, not an error (the server serves
    /// locally and the bridge keeps trying). Errors are a URL that does not parse, a
    /// second attach, a thread that cannot be started, or a server that is one of
    /// several loops of a [`Reactor`](crate::Reactor) (the bridge is single-loop). Keep the returned
    /// [`Cluster`] for as long as the node should stay in the cluster.
    pub fn attach_cluster(&mut self, config: ClusterConfig) -> Result<Cluster, ClusterError> {
        if self.core.cluster.is_some() {
            return Err(ClusterError::AlreadyAttached);
        }
        if self.core.loops() > 1 {
            return Err(ClusterError::SeveralLoops);
        }
        let max = self.core.config.max_message_size;
        let (link, cluster) = cluster::start(config, self.handle(), max)?;
        // Topics subscribed before the attach count as gained now.
        self.core.topics.watch();
        self.core.cluster = Some(link);
        self.core.flush_cluster();
        Ok(cluster)
    }
}

impl<S> Core<S> {
    /// Queues a local publish (`topic`) or broadcast (`None`) for the broker, if a
    /// cluster is attached. Sent at the end of the turn.
    pub(super) fn cluster_publish(&mut self, topic: Option<&str>, opcode: Opcode, payload: &[u8]) {
        if let Some(link) = &mut self.cluster {
            link.publish(topic, opcode, payload);
        }
    }

    /// End of turn: hands the turn's topic changes and publishes to the bridge, and
    /// copies its counters into the stats.
    pub(super) fn flush_cluster(&mut self) {
        let Some(link) = &mut self.cluster else {
            return;
        };
        for (topic, subscribed) in self.topics.take_changes() {
            link.topic_changed(topic, subscribed);
        }
        link.flush();
        let stats = link.stats();
        self.stats.cluster_published = stats.published;
        self.stats.cluster_publishes_dropped = stats.publishes_dropped;
        self.stats.cluster_received = stats.received;
        self.stats.cluster_received_dropped = stats.received_dropped;
        self.stats.cluster_connected = u64::from(stats.connected);
    }
}
