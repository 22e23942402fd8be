//! The bridge's two threads and what they run: the publisher, which writes what the
//! loop queued as pipelines of `PUBLISH`es, and the subscriber, which holds the node's
//! subscriptions and hands what arrives to the loop; both reconnect with back-off.

use super::envelope::decode;
use super::*;

/// Connection attempts with exponential back-off.
struct Backoff {
    role: &'static str,
    wait: Duration,
}

impl Backoff {
    fn new(role: &'static str, shared: &Shared) -> Backoff {
        Backoff {
            role,
            wait: shared.reconnect.0,
        }
    }

    /// Connects, retrying until it works or the bridge stops.
    fn connect(&mut self, shared: &Shared) -> Option<redis::Connection> {
        loop {
            if shared.stopping() {
                return None;
            }
            let attempt = shared
                .client
                .get_connection_with_timeout(Duration::from_secs(2));
            match attempt {
                Ok(con) => {
                    self.wait = shared.reconnect.0;
                    return Some(con);
                }
                Err(e) => {
                    shared.went_down(self.role, &e);
                    if !shared.sleep(self.wait) {
                        return None;
                    }
                    self.wait = (self.wait * 2).min(shared.reconnect.1);
                }
            }
        }
    }
}

pub(super) fn run_publisher(shared: &Shared) {
    let mut backoff = Backoff::new("publisher", shared);
    let mut batch = VecDeque::new();
    let mut pipe = redis::Pipeline::new();
    while let Some(mut con) = backoff.connect(shared) {
        let _ = con.set_write_timeout(Some(COMMAND_TIMEOUT));
        let _ = con.set_read_timeout(Some(COMMAND_TIMEOUT));
        shared.reset_publisher.store(false, Ordering::Relaxed);
        {
            // Under the queue's lock, as it goes down (see `Link::flush`).
            let _queue = lock(&shared.queue);
            shared.came_up(&shared.publisher_up);
        }
        loop {
            {
                let mut queue = lock(&shared.queue);
                while queue.messages.is_empty()
                    && !shared.stopping()
                    && !shared.reset_publisher.load(Ordering::Relaxed)
                {
                    queue = shared
                        .queue_ready
                        .wait(queue)
                        .unwrap_or_else(|p| p.into_inner());
                }
                if shared.stopping() {
                    return;
                }
                if shared.reset_publisher.swap(false, Ordering::Relaxed) {
                    shared.publisher_down(&mut queue);
                    break;
                }
                std::mem::swap(&mut queue.messages, &mut batch);
                queue.bytes = 0;
                shared.queued.store(0, Ordering::Relaxed);
                shared.queued_bytes.store(0, Ordering::Relaxed);
            }
            pipe.clear();
            for message in &batch {
                pipe.cmd("PUBLISH")
                    .arg(&*message.channel)
                    .arg(&message.envelope)
                    .ignore();
            }
            let sent = batch.len() as u64;
            batch.clear();
            match pipe.exec(&mut con) {
                Ok(()) => {
                    shared.published.fetch_add(sent, Ordering::Relaxed);
                    shared.pipelines.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    // At most once: what was in flight may or may not have been
                    // published; it is not sent again.
                    shared.publishes_dropped.fetch_add(sent, Ordering::Relaxed);
                    shared.publisher_down(&mut lock(&shared.queue));
                    shared.went_down("publisher", &e);
                    break;
                }
            }
        }
        if !shared.sleep(backoff.wait) {
            return;
        }
    }
}

pub(super) fn run_subscriber(shared: &Shared, handle: &Handle) {
    let mut backoff = Backoff::new("subscriber", shared);
    // Topics with local subscribers: what the node is subscribed to, or will be again
    // after a reconnect.
    let mut wanted: HashSet<Box<str>> = HashSet::new();
    let broadcast = shared.broadcast_channel();
    let topic_prefix = shared.topic_channel("");
    while let Some(mut con) = backoff.connect(shared) {
        let result = subscribe_and_listen(
            shared,
            handle,
            &mut con,
            &mut wanted,
            &broadcast,
            &topic_prefix,
        );
        shared.subscriber_up.store(false, Ordering::Relaxed);
        match result {
            // Stopping, or the server is gone.
            Ok(()) | Err(None) => return,
            Err(Some(e)) => {
                shared.went_down("subscriber", &e);
                // One broker: the publisher's connection is most likely gone too.
                let _queue = lock(&shared.queue);
                shared.reset_publisher.store(true, Ordering::Relaxed);
                shared.queue_ready.notify_one();
            }
        }
        if !shared.sleep(backoff.wait) {
            return;
        }
    }
}

/// Subscribes to the broadcast channel and every wanted topic, then delivers until
/// the connection fails (`Err(Some)`), the server is gone (`Err(None)`) or the
/// bridge stops (`Ok`).
fn subscribe_and_listen(
    shared: &Shared,
    handle: &Handle,
    con: &mut redis::Connection,
    wanted: &mut HashSet<Box<str>>,
    broadcast: &str,
    topic_prefix: &str,
) -> Result<(), Option<redis::RedisError>> {
    let mut pubsub = con.as_pubsub();
    // (Un)subscribing waits for the broker's answer: longer than a poll for messages.
    pubsub.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    pubsub.subscribe(broadcast)?;
    take_changes(shared, wanted);
    for topic in wanted.iter() {
        pubsub.subscribe(shared.topic_channel(topic))?;
    }
    pubsub.set_read_timeout(Some(SUBSCRIBER_POLL))?;
    shared.came_up(&shared.subscriber_up);
    let mut heard = Instant::now();
    loop {
        if shared.stopping() {
            return Ok(());
        }
        if heard.elapsed() >= SUBSCRIBER_PING {
            pubsub.set_read_timeout(Some(COMMAND_TIMEOUT))?;
            pubsub.ping::<redis::Value>()?;
            pubsub.set_read_timeout(Some(SUBSCRIBER_POLL))?;
            heard = Instant::now();
        }
        if shared.changed.load(Ordering::Acquire) {
            pubsub.set_read_timeout(Some(COMMAND_TIMEOUT))?;
            for (topic, subscribed) in take_changes(shared, wanted) {
                let channel = shared.topic_channel(&topic);
                if subscribed {
                    pubsub.subscribe(channel)?;
                } else {
                    pubsub.unsubscribe(channel)?;
                }
            }
            pubsub.set_read_timeout(Some(SUBSCRIBER_POLL))?;
        }
        let message = match pubsub.get_message() {
            Ok(message) => {
                heard = Instant::now();
                message
            }
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(Some(e)),
        };
        let channel = message.get_channel_name();
        let topic = if channel == broadcast {
            None
        } else if let Some(topic) = channel.strip_prefix(topic_prefix) {
            Some(topic)
        } else {
            continue;
        };
        if !deliver(shared, handle, topic, message.get_payload_bytes()) {
            return Err(None);
        }
    }
}

/// Applies the loop's subscription changes to `wanted`; returns those that change
/// what the node is subscribed to.
fn take_changes(shared: &Shared, wanted: &mut HashSet<Box<str>>) -> Vec<(Box<str>, bool)> {
    shared.changed.store(false, Ordering::Release);
    let changes = std::mem::take(&mut *lock(&shared.changes));
    let mut applied = Vec::new();
    for (topic, subscribed) in changes {
        let changed = if subscribed {
            wanted.insert(topic.clone())
        } else {
            wanted.remove(&topic)
        };
        if changed {
            applied.push((topic, subscribed));
        }
    }
    applied
}

/// Hands one message from the broker to the loop; false if the server is gone.
fn deliver(shared: &Shared, handle: &Handle, topic: Option<&str>, bytes: &[u8]) -> bool {
    let dropped = || {
        shared.received_dropped.fetch_add(1, Ordering::Relaxed);
    };
    let Some(envelope) = decode(bytes) else {
        log::debug!("cluster: a message on {topic:?} that is not a wsreactor envelope");
        dropped();
        return true;
    };
    if envelope.origin == shared.node_id {
        return true; // our own, delivered locally when it was published
    }
    if envelope.payload.len() > shared.max_message_size {
        dropped();
        return true;
    }
    let payload = match envelope.opcode {
        Opcode::Text => match std::str::from_utf8(envelope.payload) {
            Ok(text) => Payload::Text(text.to_owned()),
            Err(_) => {
                dropped();
                return true;
            }
        },
        _ => Payload::Binary(envelope.payload.to_vec()),
    };
    match handle
        .inbox
        .push(Command::FromBroker(topic.map(Box::from), payload))
    {
        Ok(()) => {
            shared.received.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(crate::HandleError::Full) => {
            dropped();
            true
        }
        Err(_) => false,
    }
}
