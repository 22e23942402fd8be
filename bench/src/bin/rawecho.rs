//! `rawecho`: the ceiling. A single-threaded `mio` TCP echo server making the same
//! syscalls as a WebSocket echo server without the protocol: it reads into one
//! loop-wide buffer until `WouldBlock` (as wsreactor does, with the same 64 KiB buffer
//! by default) and writes what it read straight back.
//!
//! It speaks just enough HTTP to answer the opening handshake with a valid 101 (the
//! `Sec-WebSocket-Accept` computed from the client's key), so the same `loadgen` drives
//! it; after that every byte is echoed verbatim, frame headers and masked payloads
//! included. `loadgen --raw` expects exactly that (see its docs for why the comparison
//! is fair). What the socket does not take is queued per connection and reading that
//! connection stops until the queue drains (TCP backpressure), so a 16 MiB message
//! costs at most one read buffer of queue.
//!
//! Like wsreactor, it stops reading at a short read (a read that did not fill the
//! buffer emptied the socket; with edge-triggered readiness the next bytes raise a new
//! event) instead of paying one more `read` for the `WouldBlock`; `--drain` reads until
//! `WouldBlock` instead.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use slab_lite::Slab;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use wsreactor_bench::{accept_key, head_end, procfs, Args};

const LISTENER: Token = Token(usize::MAX);

/// Reads per connection per loop turn (wsreactor uses the same cap for fairness).
const MAX_READS_PER_TURN: usize = 16;

struct Conn {
    stream: TcpStream,
    /// The request head until the handshake is answered; then `None`.
    head: Option<Vec<u8>>,
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
    sent: usize,
    writable_interest: bool,
}

/// Just enough of a slab: a Vec of slots with a free list.
mod slab_lite {
    pub struct Slab<T> {
        slots: Vec<Option<T>>,
        free: Vec<usize>,
    }
    impl<T> Slab<T> {
        pub fn new() -> Self {
            Slab {
                slots: Vec::new(),
                free: Vec::new(),
            }
        }
        pub fn insert(&mut self, value: T) -> usize {
            match self.free.pop() {
                Some(i) => {
                    self.slots[i] = Some(value);
                    i
                }
                None => {
                    self.slots.push(Some(value));
                    self.slots.len() - 1
                }
            }
        }
        pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
            self.slots.get_mut(i).and_then(Option::as_mut)
        }
        pub fn remove(&mut self, i: usize) -> Option<T> {
            let value = self.slots.get_mut(i)?.take();
            if value.is_some() {
                self.free.push(i);
            }
            value
        }
    }
}

enum Outcome {
    Keep,
    Close,
}

fn main() -> ExitCode {
    let args = match Args::parse(&["--drain"])
        .and_then(|a| a.only(&["--listen", "--buf", "--drain"]).map(|()| a))
    {
        Ok(args) => args,
        Err(e) => {
            eprintln!(
                "rawecho: {e}\nusage: rawecho --listen 127.0.0.1:PORT [--buf BYTES] [--drain]"
            );
            return ExitCode::from(2);
        }
    };
    let listen: SocketAddr = match args.get("--listen", "127.0.0.1:9997".to_owned()) {
        Ok(s) => match s.parse() {
            Ok(a) => a,
            Err(_) => {
                eprintln!("rawecho: --listen: not an address: {s}");
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("rawecho: {e}");
            return ExitCode::from(2);
        }
    };
    let buf_size: usize = args.get("--buf", 64 * 1024).unwrap_or(64 * 1024).max(1024);
    procfs::raise_nofile_limit();
    match serve(listen, buf_size, args.has("--drain")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rawecho: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(listen: SocketAddr, buf_size: usize, drain: bool) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("rawecho on {}", listener.local_addr()?);
    let mut events = Events::with_capacity(1024);
    let mut conns: Slab<Conn> = Slab::new();
    let mut buf = vec![0u8; buf_size];
    let mut backlog: Vec<usize> = Vec::new();
    loop {
        let timeout = if backlog.is_empty() {
            None
        } else {
            Some(std::time::Duration::ZERO)
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for slot in std::mem::take(&mut backlog) {
            drive(
                &mut conns,
                poll.registry(),
                slot,
                &mut buf,
                &mut backlog,
                false,
                drain,
            );
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept(&listener, &mut conns, poll.registry());
                continue;
            }
            let slot = event.token().0;
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            let writable = event.is_writable();
            // A FIN or error already reported: read to the end, no new event will come.
            let drain = drain || event.is_read_closed() || event.is_error();
            if writable || readable {
                drive(
                    &mut conns,
                    poll.registry(),
                    slot,
                    &mut buf,
                    &mut backlog,
                    writable,
                    drain,
                );
            }
        }
    }
}

fn accept(listener: &TcpListener, conns: &mut Slab<Conn>, registry: &Registry) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let slot = conns.insert(Conn {
                    stream,
                    head: Some(Vec::new()),
                    out: Vec::new(),
                    sent: 0,
                    writable_interest: false,
                });
                let conn = conns.get_mut(slot).expect("just inserted");
                if registry
                    .register(&mut conn.stream, Token(slot), Interest::READABLE)
                    .is_err()
                {
                    conns.remove(slot);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("rawecho: accept: {e}");
                return;
            }
        }
    }
}

fn drive(
    conns: &mut Slab<Conn>,
    registry: &Registry,
    slot: usize,
    buf: &mut [u8],
    backlog: &mut Vec<usize>,
    writable: bool,
    drain: bool,
) {
    let Some(conn) = conns.get_mut(slot) else {
        return;
    };
    let outcome = (|| {
        if writable && !flush(conn, registry, slot)? {
            return Ok(Outcome::Close);
        }
        read(conn, registry, slot, buf, backlog, drain)
    })();
    match outcome {
        Ok(Outcome::Keep) => {}
        Ok(Outcome::Close) | Err(_) => {
            if let Some(mut conn) = conns.remove(slot) {
                let _ = registry.deregister(&mut conn.stream);
            }
        }
    }
}

/// Writes queued bytes; `Ok(false)` if the connection should close.
fn flush(conn: &mut Conn, registry: &Registry, slot: usize) -> io::Result<bool> {
    while conn.sent < conn.out.len() {
        match (&conn.stream).write(&conn.out[conn.sent..]) {
            Ok(0) => return Ok(false),
            Ok(n) => conn.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.out.clear();
    conn.sent = 0;
    if conn.writable_interest {
        registry.reregister(&mut conn.stream, Token(slot), Interest::READABLE)?;
        conn.writable_interest = false;
    }
    Ok(true)
}

/// Reads until a short read (or `WouldBlock`, the per-turn cap, a queue to drain), echoing.
fn read(
    conn: &mut Conn,
    registry: &Registry,
    slot: usize,
    buf: &mut [u8],
    backlog: &mut Vec<usize>,
    drain: bool,
) -> io::Result<Outcome> {
    for _ in 0..MAX_READS_PER_TURN {
        if !conn.out.is_empty() {
            // Backpressure: the peer is not reading; WRITABLE will resume us.
            return Ok(Outcome::Keep);
        }
        let n = match (&conn.stream).read(buf) {
            Ok(0) => return Ok(Outcome::Close),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Outcome::Keep),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(head) = &mut conn.head {
            head.extend_from_slice(&buf[..n]);
            let Some(end) = head_end(head) else {
                if head.len() > 16 * 1024 {
                    return Ok(Outcome::Close);
                }
                continue;
            };
            let Some(response) = handshake_response(&head[..end]) else {
                let _ =
                    (&conn.stream).write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                return Ok(Outcome::Close);
            };
            let rest = head[end..].to_vec();
            conn.head = None;
            send(conn, registry, slot, response.as_bytes())?;
            if !rest.is_empty() {
                send(conn, registry, slot, &rest)?;
            }
            if n < buf.len() && !drain {
                return Ok(Outcome::Keep);
            }
            continue;
        }
        send(conn, registry, slot, &buf[..n])?;
        if n < buf.len() && !drain {
            return Ok(Outcome::Keep);
        }
    }
    backlog.push(slot);
    Ok(Outcome::Keep)
}

/// Write-through; whatever the socket does not take waits in `out`.
fn send(conn: &mut Conn, registry: &Registry, slot: usize, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    if conn.out.is_empty() {
        while written < bytes.len() {
            match (&conn.stream).write(&bytes[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    if written < bytes.len() {
        conn.out.extend_from_slice(&bytes[written..]);
        if !conn.writable_interest {
            registry.reregister(
                &mut conn.stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            conn.writable_interest = true;
        }
    }
    Ok(())
}

/// The 101 for a request carrying a `Sec-WebSocket-Key` (nothing else is checked: this
/// is the ceiling, not a server).
fn handshake_response(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    let key = text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    })?;
    Some(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    ))
}
