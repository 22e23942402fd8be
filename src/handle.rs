//! The one door into the loop from other threads.
//!
//! A [`Handle`] puts commands on a bounded queue and wakes the loop through a
//! `mio::Waker`; the loop drains the whole queue at once. Calls never block on the
//! loop (only on a mutex held for a push or a swap) and never wait for room: a full
//! queue is an immediate [`HandleError::Full`], so a producer can never deadlock
//! against the loop the way ws-rs's bounded channel did.

use crate::handler::ConnId;
use crate::proto::CloseCode;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// A message owned by a command, on its way into the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

#[derive(Debug)]
pub(crate) enum Command {
    Send(ConnId, Payload),
    Broadcast(Payload),
    Publish(String, Payload),
    Close(ConnId, CloseCode, String),
    Shutdown,
    /// A message from another node (topic, or `None` for a broadcast): delivered
    /// locally only, never published again.
    #[cfg(feature = "cluster")]
    FromBroker(Option<Box<str>>, Payload),
}

/// Why a [`Handle`] call did not queue its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// The queue holds `Config::handle_queue_capacity` commands already; retry later.
    Full,
    /// The server is gone (dropped, or its loop has finished).
    Closed,
    /// [`Handle::close`] was given a code that may not be sent
    /// ([`CloseCode::is_sendable`]); nothing was queued. Checked here rather than in
    /// the loop, so that the caller learns it.
    InvalidCloseCode,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleError::Full => f.write_str("the server's command queue is full"),
            HandleError::Closed => f.write_str("the server is gone"),
            HandleError::InvalidCloseCode => {
                f.write_str("the close code may not be sent (RFC 6455 §7.4)")
            }
        }
    }
}

impl std::error::Error for HandleError {}

pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    capacity: usize,
    waker: mio::Waker,
}

struct InboxState {
    commands: VecDeque<Command>,
    closed: bool,
}

impl Inbox {
    pub fn new(waker: mio::Waker, capacity: usize) -> Inbox {
        Inbox {
            state: Mutex::new(InboxState {
                commands: VecDeque::new(),
                closed: false,
            }),
            capacity,
            waker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a push or a swap), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn push(&self, command: Command) -> Result<(), HandleError> {
        let was_empty = {
            let mut state = self.lock();
            if state.closed {
                return Err(HandleError::Closed);
            }
            let is_shutdown = matches!(command, Command::Shutdown);
            if state.commands.len() >= self.capacity && !is_shutdown {
                return Err(HandleError::Full);
            }
            state.commands.push_back(command);
            state.commands.len() == 1
        };
        // Only the push that made the queue non-empty needs to wake the loop: it
        // drains everything queued behind it in the same turn.
        if was_empty {
            self.waker.wake().map_err(|_| HandleError::Closed)?;
        }
        Ok(())
    }

    /// Moves every queued command into `into` (which should be empty).
    pub fn drain_into(&self, into: &mut VecDeque<Command>) {
        std::mem::swap(&mut self.lock().commands, into);
    }

    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.commands.clear();
    }
}

/// A cloneable, `Send` handle to a running [`Server`](crate::Server), for other threads.
///
/// Every call queues a command and returns at once; the loop carries it out on its
/// next turn, with the same backpressure rules as sends from inside the loop (a
/// receiver whose queue is full misses the message; see
/// [`SendStatus`](crate::SendStatus)). Sends to a connection that has closed are
/// dropped silently: ids are never reused, so they cannot reach a newer connection.
///
/// ```no_run
/// use std::time::Duration;
/// use wsreactor::{Config, Ctx, HandleError, Handler, Message, Server};
///
/// struct Ticker;
/// impl Handler for Ticker {
///     type Session = ();
///     fn on_open(&mut self, cx: &mut Ctx<'_>) {
///         cx.subscribe("ticks");
///     }
///     fn on_message(&mut self, _cx: &mut Ctx<'_>, _message: Message<'_>) {}
/// }
///
/// let mut server = Server::bind("127.0.0.1:9998".parse()?, Config::default(), Ticker)?;
/// let handle = server.handle();
/// std::thread::spawn(move || loop {
///     match handle.publish_text("ticks", "tick") {
///         Ok(()) | Err(HandleError::Full) => std::thread::sleep(Duration::from_millis(1)),
///         Err(_) => return, // the server is gone
///     }
/// });
/// server.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Handle {
    pub(crate) inbox: Arc<Inbox>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl Handle {
    /// Sends a text message to one connection.
    pub fn send_text(&self, to: ConnId, text: impl Into<String>) -> Result<(), HandleError> {
        self.inbox
            .push(Command::Send(to, Payload::Text(text.into())))
    }

    /// Sends a binary message to one connection.
    pub fn send_binary(&self, to: ConnId, bytes: impl Into<Vec<u8>>) -> Result<(), HandleError> {
        self.inbox
            .push(Command::Send(to, Payload::Binary(bytes.into())))
    }

    /// Sends a text message to every open connection (encoded once).
    pub fn broadcast_text(&self, text: impl Into<String>) -> Result<(), HandleError> {
        self.inbox
            .push(Command::Broadcast(Payload::Text(text.into())))
    }

    /// Sends a binary message to every open connection (encoded once).
    pub fn broadcast_binary(&self, bytes: impl Into<Vec<u8>>) -> Result<(), HandleError> {
        self.inbox
            .push(Command::Broadcast(Payload::Binary(bytes.into())))
    }

    /// Sends a text message to every subscriber of `topic` (encoded once).
    pub fn publish_text(&self, topic: &str, text: impl Into<String>) -> Result<(), HandleError> {
        self.inbox.push(Command::Publish(
            topic.to_owned(),
            Payload::Text(text.into()),
        ))
    }

    /// Sends a binary message to every subscriber of `topic` (encoded once).
    pub fn publish_binary(
        &self,
        topic: &str,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<(), HandleError> {
        self.inbox.push(Command::Publish(
            topic.to_owned(),
            Payload::Binary(bytes.into()),
        ))
    }

    /// Starts the close handshake on one connection, with `reason` cut at a character
    /// boundary to fit 123 bytes. A code that may not be sent (1005, 1006, 1015, 0,
    /// 5000, ...: see [`CloseCode::is_sendable`]) is
    /// [`HandleError::InvalidCloseCode`] and queues nothing.
    pub fn close(&self, id: ConnId, code: CloseCode, reason: &str) -> Result<(), HandleError> {
        if !code.is_sendable() {
            return Err(HandleError::InvalidCloseCode);
        }
        self.inbox.push(Command::Close(id, code, reason.to_owned()))
    }

    /// Shuts the server down gracefully: stop accepting, close every connection with
    /// 1001, wait (up to the close timeout, if there is one) for their answers, then
    /// `run` returns.
    /// Accepted even when the queue is full.
    pub fn shutdown(&self) -> Result<(), HandleError> {
        self.inbox.push(Command::Shutdown)
    }
}
