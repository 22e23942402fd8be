//! The one door into the loop from other threads.
//!
//! A [`Handle`] puts commands on a bounded queue and wakes the loop through a
//! `mio::Waker`; the loop drains the whole queue at once. Calls never block on the
//! loop (only on a mutex held for a push or a swap) and never wait for room: a full
//! queue is an immediate [`HandleError::Full`], so a producer can never deadlock
//! against the loop the way ws-rs's bounded channel did.

use crate::handler::{ConnId, Handler};
use crate::proto::CloseCode;
use crate::server::Loop;
use std::any::{Any, TypeId};
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
    /// One part of a message sent in parts: `first`, `last`.
    SendPart(ConnId, Payload, bool, bool),
    Broadcast(Payload),
    Publish(String, Payload),
    Close(ConnId, CloseCode, String),
    Shutdown,
    /// A [`Deferred`] closure for the server's handler type, type-erased so that
    /// `Handle` need not be generic over the handler.
    Defer(Box<dyn Any + Send>),
    /// A message from another node (topic, or `None` for a broadcast): delivered
    /// locally only, never published again.
    #[cfg(feature = "cluster")]
    FromBroker(Option<Box<str>>, Payload),
    /// A broadcast (`None`) or publish another loop of the same
    /// [`Reactor`](crate::Reactor) made: delivered to this loop's connections only.
    /// The payload is shared by every loop it goes to.
    FromLoop(Option<Arc<str>>, crate::proto::frame::Opcode, Arc<[u8]>),
}

/// A closure [`Handle::defer`] sends to the loop of a server with handler `H`.
pub(crate) type Deferred<H> = Box<dyn FnOnce(&mut H, &mut Loop<<H as Handler>::Session>) + Send>;

/// Why a [`Handle`] call did not queue its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// The queue holds `Config::handle_queue_capacity` commands already; retry later.
    Full,
    /// The server is gone (dropped, or its loop has finished).
    Closed,
    /// The server is shutting down (through [`Handle::shutdown`],
    /// [`Loop::shutdown`](crate::Loop::shutdown), [`Server::shutdown`](crate::Server::shutdown)
    /// or a signal that calls one of them): nothing more is queued, since its
    /// connections are closing. Only [`Handle::shutdown`] itself is still `Ok`. When
    /// the loop has finished, calls are [`Closed`](HandleError::Closed).
    ShuttingDown,
    /// [`Handle::close`] was given a code that may not be sent
    /// ([`CloseCode::is_sendable`]); nothing was queued. Checked here rather than in
    /// the loop, so that the caller learns it.
    InvalidCloseCode,
    /// [`Handle::defer`] was given a closure for another handler type than the
    /// server's; nothing was queued.
    WrongHandler,
    /// [`Handle::defer_on`] or [`Handle::for_loop`] named a loop the reactor does not
    /// have; nothing was queued.
    NoSuchLoop,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleError::Full => f.write_str("the server's command queue is full"),
            HandleError::Closed => f.write_str("the server is gone"),
            HandleError::ShuttingDown => f.write_str("the server is shutting down"),
            HandleError::InvalidCloseCode => {
                f.write_str("the close code may not be sent (RFC 6455 §7.4)")
            }
            HandleError::WrongHandler => {
                f.write_str("the deferred closure is for another handler type than the server's")
            }
            HandleError::NoSuchLoop => f.write_str("the reactor has no loop of that index"),
        }
    }
}

impl std::error::Error for HandleError {}

pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    capacity: usize,
    waker: mio::Waker,
    /// The server's handler type: what a deferred closure must be written for.
    handler: TypeId,
}

struct InboxState {
    commands: VecDeque<Command>,
    closed: bool,
    /// Shutdown has begun: commands other than `Shutdown` are refused at once, so a
    /// producer learns it now rather than when the loop finishes.
    shutting_down: bool,
}

impl Inbox {
    pub fn new(waker: mio::Waker, capacity: usize, handler: TypeId) -> Inbox {
        Inbox {
            state: Mutex::new(InboxState {
                commands: VecDeque::new(),
                closed: false,
                shutting_down: false,
            }),
            capacity,
            waker,
            handler,
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
            let is_shutdown = matches!(command, Command::Shutdown);
            if state.closed {
                return Err(HandleError::Closed);
            }
            match (state.shutting_down, is_shutdown) {
                // Idempotent: asked for already.
                (true, true) => return Ok(()),
                (true, false) => return Err(HandleError::ShuttingDown),
                (false, true) => state.shutting_down = true,
                (false, false) => {}
            }
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

    /// Queues every command of `batch` (emptying it) under one lock, with at most one
    /// wake-up: how a loop hands another everything one of its turns sent there.
    /// `Ok` with how many did not fit (the queue at capacity: the last ones are
    /// dropped); an error, dropping the whole batch, when the loop is shutting down
    /// or gone.
    pub(crate) fn push_batch(&self, batch: &mut Vec<Command>) -> Result<usize, HandleError> {
        let (was_empty, dropped) = {
            let mut state = self.lock();
            if state.closed || state.shutting_down {
                batch.clear();
                return Err(if state.closed {
                    HandleError::Closed
                } else {
                    HandleError::ShuttingDown
                });
            }
            let was_empty = state.commands.is_empty();
            let room = self.capacity.saturating_sub(state.commands.len());
            let dropped = batch.len().saturating_sub(room);
            batch.truncate(batch.len() - dropped);
            state.commands.extend(batch.drain(..));
            (was_empty, dropped)
        };
        if was_empty {
            let _ = self.waker.wake();
        }
        Ok(dropped)
    }

    /// Moves every queued command into `into` (which should be empty).
    pub fn drain_into(&self, into: &mut VecDeque<Command>) {
        std::mem::swap(&mut self.lock().commands, into);
    }

    /// Shutdown has begun (from inside the loop, or a `Handle`): refuse what follows.
    pub fn begin_shutdown(&self) {
        self.lock().shutting_down = true;
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
/// receiver whose queue is full misses the message, or drops older ones under its
/// [`QueuePolicy`](crate::QueuePolicy); see [`SendStatus`](crate::SendStatus)). The
/// call's `Ok` says only that the command was queued: what receivers missed is counted
/// in [`Stats::messages_dropped`](crate::Stats::messages_dropped) and reported to
/// [`Handler::on_dropped`] for each of them. Sends to a connection that has closed are
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
    /// The loop this handle was made for: broadcasts, publishes and `defer` go there.
    pub(crate) inbox: Arc<Inbox>,
    /// Every loop of a [`Reactor`](crate::Reactor) (`None` for a lone `Server`): sends
    /// and closes go to the loop their id names.
    pub(crate) group: Option<Arc<crate::loops::Group>>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl Handle {
    /// Sends a text message to one connection.
    pub fn send_text(&self, to: ConnId, text: impl Into<String>) -> Result<(), HandleError> {
        self.owner(to)
            .push(Command::Send(to, Payload::Text(text.into())))
    }

    /// Sends a binary message to one connection.
    pub fn send_binary(&self, to: ConnId, bytes: impl Into<Vec<u8>>) -> Result<(), HandleError> {
        self.owner(to)
            .push(Command::Send(to, Payload::Binary(bytes.into())))
    }

    /// Sends one part of a text message sent in parts to a connection: the
    /// [`Handle`]'s [`Ctx::send_part`](crate::Ctx::send_part). `first` begins the message, `last` finishes
    /// it; each part is one frame, and other messages to the connection are
    /// refused ([`SendStatus::Busy`](crate::SendStatus::Busy)) until the last part is sent.
    ///
    /// What happens on the loop cannot be reported back: a part that is refused (the
    /// connection's queue is over its cap) or out of order closes the connection with
    /// 1011, since its message could only arrive with a piece missing. Send parts
    /// from one thread, in order.
    pub fn send_part_text(
        &self,
        to: ConnId,
        text: impl Into<String>,
        first: bool,
        last: bool,
    ) -> Result<(), HandleError> {
        self.owner(to).push(Command::SendPart(
            to,
            Payload::Text(text.into()),
            first,
            last,
        ))
    }

    /// [`send_part_text`](Handle::send_part_text) for a binary message.
    pub fn send_part_binary(
        &self,
        to: ConnId,
        bytes: impl Into<Vec<u8>>,
        first: bool,
        last: bool,
    ) -> Result<(), HandleError> {
        self.owner(to).push(Command::SendPart(
            to,
            Payload::Binary(bytes.into()),
            first,
            last,
        ))
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
        self.owner(id)
            .push(Command::Close(id, code, reason.to_owned()))
    }

    /// Runs `job` on the loop's thread with the handler and the [`Loop`]: work that
    /// needs the handler's state or several loop calls at once (uWebSockets'
    /// `Loop::defer`), from any thread.
    ///
    /// With several loops ([`Reactor`](crate::Reactor)) it runs on this handle's loop;
    /// [`defer_on`](Handle::defer_on) picks the loop (e.g. a connection's,
    /// `id.loop_index()`), [`defer_all`](Handle::defer_all) runs on every one.
    ///
    /// It goes through the same bounded queue as every other call, in order: a
    /// `send_text` queued before it has been carried out when it runs, one queued
    /// after it has not. It never blocks; a full queue is [`HandleError::Full`].
    /// `H` must be the server's handler type, else [`HandleError::WrongHandler`]
    /// (the `Handle` is not generic over the handler, so this is checked at run
    /// time). A panic in `job` is logged (and counted in `Stats::handler_panics`)
    /// and the loop goes on.
    ///
    /// ```no_run
    /// use wsreactor::{Config, Ctx, Handler, Loop, Message, Server};
    ///
    /// #[derive(Default)]
    /// struct Hub {
    ///     price: u64,
    /// }
    /// impl Handler for Hub {
    ///     type Session = ();
    ///     fn on_message(&mut self, cx: &mut Ctx<'_>, _message: Message<'_>) {
    ///         let price = self.price.to_string();
    ///         let _ = cx.send_text(&price);
    ///     }
    /// }
    ///
    /// let mut server = Server::bind("127.0.0.1:9998".parse()?, Config::default(), Hub::default())?;
    /// let handle = server.handle();
    /// std::thread::spawn(move || {
    ///     // From another thread: update the handler's state and tell everyone, in one go.
    ///     handle.defer(|hub: &mut Hub, lp: &mut Loop| {
    ///         hub.price = 42;
    ///         lp.broadcast(Message::Text("price: 42"));
    ///     })
    /// });
    /// server.run()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn defer<H: Handler>(
        &self,
        job: impl FnOnce(&mut H, &mut Loop<H::Session>) + Send + 'static,
    ) -> Result<(), HandleError> {
        if TypeId::of::<H>() != self.inbox.handler {
            return Err(HandleError::WrongHandler);
        }
        let job: Deferred<H> = Box::new(job);
        self.inbox.push(Command::Defer(Box::new(job)))
    }

    /// Shuts the server down gracefully: stop accepting, close every connection with
    /// 1001, wait (up to the close timeout, if there is one) for their answers, then
    /// `run` returns.
    ///
    /// Accepted even when the queue is full, and idempotent: once shutdown has begun
    /// (from here or anywhere else) it is `Ok` and does nothing, while every other
    /// call is [`HandleError::ShuttingDown`]. Once the loop has finished (or the
    /// server was dropped) every call, this one included, is [`HandleError::Closed`].
    pub fn shutdown(&self) -> Result<(), HandleError> {
        let result = self.inbox.push(Command::Shutdown);
        // Every loop of a reactor: each also tells the others when it begins, but a
        // loop that has finished already would not.
        if let Some(group) = &self.group {
            for inbox in &group.inboxes {
                let _ = inbox.push(Command::Shutdown);
            }
        }
        result
    }

    /// The inbox of the loop that owns `id` (this handle's own loop if the id names
    /// no loop of the reactor: that loop then finds no such connection).
    fn owner(&self, id: ConnId) -> &Inbox {
        match &self.group {
            Some(group) => group.inboxes.get(id.loop_index()).unwrap_or(&self.inbox),
            None => &self.inbox,
        }
    }
}
