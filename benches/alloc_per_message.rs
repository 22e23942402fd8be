//! Allocations per echoed message, measured: a `wsreactor::Server` with an echo
//! handler runs on its own thread under a counting `#[global_allocator]` that counts
//! only that thread's allocations (a thread-local flag), while a hand-written blocking
//! client on the main thread sends N messages, one at a time, and checks every echo.
//! Two echoes, as the `make run` binary has them: on `/echo`, whole messages
//! (`on_message` → `send`, the embedder's one-liner); on `/stream`, the binary's own
//! echo on a connection without permessage-deflate, which receives in parts and sends
//! each part on as it arrives (`on_part` → `send_part`), so a large message is echoed
//! in several frames (the "streamed" cases).
//!
//! For each case: open a connection, warm up, snapshot the counters, echo N messages,
//! snapshot again; allocations per message = delta / N. The client takes the second
//! snapshot after reading the last echo, so the server's work after writing that echo
//! (going back to `poll`) may fall outside the window: at most one message's tail out
//! of N. Nothing here asserts a number; it prints what it counted.
//!
//! `cargo bench --bench alloc_per_message` (a plain `main`, no criterion). Under
//! `cargo test --benches` it runs a short pass to check that it works.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsreactor::proto::handshake::accept_key;
use wsreactor::{Config, Ctx, Decision, Handler, Message, Part, Request, SendStatus, Server};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Heap bytes allocated and not yet freed (by the server thread).
static LIVE: AtomicI64 = AtomicI64::new(0);

thread_local! {
    // `const` and `Cell<bool>`: no lazy initialisation and no destructor, so reading
    // it from inside the allocator never allocates.
    static COUNT_THIS_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNT_THIS_THREAD.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every method forwards to `System` unchanged; the counters are side effects.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Relaxed);
            BYTES.fetch_add(layout.size() as u64, Relaxed);
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Relaxed);
            BYTES.fetch_add(layout.size() as u64, Relaxed);
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            REALLOCS.fetch_add(1, Relaxed);
            BYTES.fetch_add(new_size.saturating_sub(layout.size()) as u64, Relaxed);
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            FREES.fetch_add(1, Relaxed);
            LIVE.fetch_sub(layout.size() as i64, Relaxed);
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    allocs: u64,
    reallocs: u64,
    frees: u64,
    bytes: u64,
}

fn snapshot() -> Counts {
    Counts {
        allocs: ALLOCS.load(Relaxed),
        reallocs: REALLOCS.load(Relaxed),
        frees: FREES.load(Relaxed),
        bytes: BYTES.load(Relaxed),
    }
}

/// The `make run` binary's echo handler: whole messages, or (the session is `true`,
/// on `/stream`) in parts as the binary's `Echo::on_part` does.
struct Echo;

impl Handler for Echo {
    type Session = bool;

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<bool> {
        Decision::accept_with(request.path() == "/stream")
    }

    fn on_open(&mut self, cx: &mut Ctx<'_, bool>) {
        let streams = *cx.session();
        cx.receive_in_parts(streams);
    }

    fn on_message(&mut self, cx: &mut Ctx<'_, bool>, message: Message<'_>) {
        let _ = cx.send(message);
    }

    fn on_part(&mut self, cx: &mut Ctx<'_, bool>, part: Part<'_>) {
        if part.first && part.last {
            let _ = cx.send(part.data);
            return;
        }
        match cx.send_part(part) {
            Ok(SendStatus::Written | SendStatus::Queued(_)) => {}
            other => panic!("a part was not sent: {other:?}"),
        }
    }
}

/// A blocking client connection that has completed the handshake.
struct Client {
    stream: TcpStream,
    key: [u8; 4],
    seq: u64,
}

impl Client {
    fn connect(addr: SocketAddr, path: &str) -> Client {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("request");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("101");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("UTF-8 head");
        assert!(head.starts_with("HTTP/1.1 101 "), "not a 101: {head}");
        let accept = format!("sec-websocket-accept: {}\r\n", accept_key(key));
        assert!(
            head.to_ascii_lowercase()
                .contains(&accept.to_ascii_lowercase()),
            "bad accept: {head}"
        );
        Client {
            stream,
            key: [0x11, 0x22, 0x33, 0x44],
            seq: 0,
        }
    }

    fn frame(&mut self, opcode: u8, size: usize) -> (Vec<u8>, Vec<u8>) {
        self.seq += 1;
        let mut payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let stamp = format!("{:08}", self.seq % 100_000_000);
        let n = stamp.len().min(size);
        payload[..n].copy_from_slice(&stamp.as_bytes()[..n]);
        let mut header = vec![0x80 | opcode];
        match size {
            n if n < 126 => header.push(n as u8),
            n if n <= 0xFFFF => {
                header.push(126);
                header.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                header.push(127);
                header.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut expected = header.clone();
        expected.extend_from_slice(&payload);
        let mut frame = header;
        frame[1] |= 0x80;
        frame.extend_from_slice(&self.key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ self.key[i % 4]));
        (frame, expected)
    }

    /// Sends `burst` messages back to back, then reads and checks their echoes.
    fn echo(&mut self, opcode: u8, size: usize, burst: usize) {
        let mut out = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..burst {
            let (frame, echo) = self.frame(opcode, size);
            out.extend_from_slice(&frame);
            expected.extend_from_slice(&echo);
        }
        self.stream.write_all(&out).expect("send");
        let mut got = vec![0u8; expected.len()];
        self.stream.read_exact(&mut got).expect("echo");
        assert!(got == expected, "echo differs");
    }

    /// Sends one message and reads its echo as the frames of one message (the
    /// streaming echo sends a large one in several), checking opcodes and payload.
    /// The frame is written from another thread while this one reads: a streaming
    /// server echoes the start of a large message before its end is in.
    fn echo_streamed(&mut self, opcode: u8, size: usize) {
        let (frame, expected) = self.frame(opcode, size);
        let header_len = expected.len() - size;
        let payload = &expected[header_len..];
        let mut writer = self.stream.try_clone().expect("clone");
        let mut got = Vec::with_capacity(size);
        std::thread::scope(|scope| {
            scope.spawn(move || writer.write_all(&frame).expect("send"));
            let mut first = true;
            loop {
                let mut head = [0u8; 2];
                self.stream.read_exact(&mut head).expect("echo header");
                let want = if first { opcode } else { 0 };
                assert_eq!(head[0] & 0x0f, want, "opcode");
                assert_eq!(head[1] & 0x80, 0, "masked echo");
                let len = match head[1] & 0x7f {
                    126 => {
                        let mut b = [0u8; 2];
                        self.stream.read_exact(&mut b).expect("length");
                        u16::from_be_bytes(b) as usize
                    }
                    127 => {
                        let mut b = [0u8; 8];
                        self.stream.read_exact(&mut b).expect("length");
                        u64::from_be_bytes(b) as usize
                    }
                    n => n as usize,
                };
                let start = got.len();
                got.resize(start + len, 0);
                self.stream.read_exact(&mut got[start..]).expect("echo");
                first = false;
                if head[0] & 0x80 != 0 {
                    break;
                }
            }
        });
        assert!(got == payload, "echo differs");
    }
}

struct Case {
    label: &'static str,
    opcode: u8,
    size: usize,
    burst: usize,
    /// On `/stream`: the binary's echo, in parts.
    streamed: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|f| "alloc_per_message".contains(f.as_str()))
    {
        return;
    }
    // `cargo bench` passes --bench; without it (cargo test --benches) run briefly.
    let (warmup, messages) = if args.iter().any(|a| a == "--bench") {
        (2_000, 20_000)
    } else {
        (20, 200)
    };

    // As the binary sets it: --max-message-size is also the largest message streamed.
    let config = Config {
        max_streamed_message_size: Config::default().max_message_size as u64,
        ..Config::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, server_thread) = start_server(config.clone(), None, &stop);
    // The streamed cases run against a second server whose sockets have small kernel
    // send buffers (inherited from its listener), as a loaded server's are in effect:
    // its writes of a large part are often partial, and the rest waits in the
    // connection's queue — the path that allocated per message.
    let (small_addr, small_thread) = start_server(config, Some(32 * 1024), &stop);

    let cases = [
        Case {
            label: "binary 20 B",
            opcode: 0x2,
            size: 20,
            burst: 1,
            streamed: false,
        },
        Case {
            label: "binary 512 B",
            opcode: 0x2,
            size: 512,
            burst: 1,
            streamed: false,
        },
        Case {
            label: "binary 16 KiB",
            opcode: 0x2,
            size: 16 * 1024,
            burst: 1,
            streamed: false,
        },
        // Past the 16 KiB target, for information: a frame larger than the 64 KiB read
        // buffer always straddles reads, so it is assembled in a per-connection buffer.
        Case {
            label: "binary 64 KiB",
            opcode: 0x2,
            size: 64 * 1024,
            burst: 1,
            streamed: false,
        },
        Case {
            label: "binary 1 MiB",
            opcode: 0x2,
            size: 1 << 20,
            burst: 1,
            streamed: false,
        },
        // The binary's echo: a message that straddles reads goes out in parts as it
        // arrives, its echo in several frames; partial writes queue the rest.
        Case {
            label: "binary 64 KiB, streamed",
            opcode: 0x2,
            size: 64 * 1024,
            burst: 1,
            streamed: true,
        },
        Case {
            label: "text 64 KiB, streamed",
            opcode: 0x1,
            size: 64 * 1024,
            burst: 1,
            streamed: true,
        },
        Case {
            label: "binary 1 MiB, streamed",
            opcode: 0x2,
            size: 1 << 20,
            burst: 1,
            streamed: true,
        },
        Case {
            label: "text 20 B",
            opcode: 0x1,
            size: 20,
            burst: 1,
            streamed: false,
        },
        Case {
            label: "binary 20 B, 16 per write",
            opcode: 0x2,
            size: 20,
            burst: 16,
            streamed: false,
        },
    ];
    let mut json = Vec::new();
    println!(
        "alloc_per_message: allocations on the server thread per echoed message (measured; \
         the set-up column shows the counter is live)"
    );
    for case in &cases {
        let before_connect = snapshot();
        let mut client = if case.streamed {
            let client = Client::connect(small_addr, "/stream");
            shrink_socket_buffers(&client.stream, 32 * 1024);
            client
        } else {
            Client::connect(addr, "/echo")
        };
        let echo = |client: &mut Client| {
            if case.streamed {
                client.echo_streamed(case.opcode, case.size);
            } else {
                client.echo(case.opcode, case.size, case.burst);
            }
        };
        if case.streamed {
            client.echo_streamed(case.opcode, case.size);
        } else {
            client.echo(case.opcode, case.size, 1);
        }
        // Let the server finish the turn that wrote the first echo.
        std::thread::sleep(Duration::from_millis(20));
        let handshake = delta(before_connect, snapshot());
        // Fewer rounds of large messages (the server's work per byte is the same).
        let scale = match case.size {
            n if n > 256 * 1024 => 40,
            n if n > 16 * 1024 => 10,
            _ => case.burst,
        };
        for _ in 0..warmup / scale {
            echo(&mut client);
        }
        let start = snapshot();
        let t0 = Instant::now();
        let rounds = messages / scale;
        for _ in 0..rounds {
            echo(&mut client);
        }
        let elapsed = t0.elapsed();
        let d = delta(start, snapshot());
        let n = (rounds * case.burst) as f64;
        println!(
            "  {:<26} {:>7.3} allocs/msg  {:>7.3} reallocs/msg  {:>9.1} bytes/msg  \
             ({} msgs, {:.1} µs/round trip; connection set-up + first echo: {} allocs, {} bytes)",
            case.label,
            d.allocs as f64 / n,
            d.reallocs as f64 / n,
            d.bytes as f64 / n,
            n,
            elapsed.as_secs_f64() * 1e6 / rounds as f64,
            handshake.allocs + handshake.reallocs,
            handshake.bytes,
        );
        json.push(format!(
            "{{\"case\":\"{}\",\"msgs\":{},\"allocs_per_msg\":{:.4},\"reallocs_per_msg\":{:.4},\
             \"frees_per_msg\":{:.4},\"bytes_per_msg\":{:.1},\"setup_allocs\":{},\"setup_bytes\":{}}}",
            case.label,
            n,
            d.allocs as f64 / n,
            d.reallocs as f64 / n,
            d.frees as f64 / n,
            d.bytes as f64 / n,
            handshake.allocs + handshake.reallocs,
            handshake.bytes,
        ));
        drop(client);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Idle connections: heap bytes the server allocates per open connection once running
    // (capacity, not touched pages: `make bench` workload (e) measures RSS; the slots
    // the server reserves at start-up are not counted). 400 connections keep client +
    // server sockets under a 1024 open-file limit.
    let idle = if messages > 1000 { 400 } else { 50 };
    // Long enough for the loop to give back the buffers it pools for large messages
    // (after a second unused), which would otherwise show as a negative figure here.
    std::thread::sleep(Duration::from_millis(1500));
    let live0 = LIVE.load(Relaxed);
    let clients: Vec<Client> = (0..idle).map(|_| Client::connect(addr, "/echo")).collect();
    std::thread::sleep(Duration::from_millis(50));
    let live1 = LIVE.load(Relaxed);
    let per_conn = (live1 - live0) as f64 / idle as f64;
    println!(
        "  idle connections: {per_conn:.1} heap bytes live per open connection \
         ({idle} open; slots reserved at start-up not counted)"
    );
    drop(clients);
    json.push(format!(
        "{{\"case\":\"idle\",\"conns\":{idle},\"heap_bytes_per_conn\":{per_conn:.1}}}"
    ));
    println!("ALLOCS_JSON [{}]", json.join(","));
    stop.store(true, Relaxed);
    server_thread.join().expect("server thread");
    small_thread.join().expect("server thread");
}

/// Runs a server with the echo handler on its own (counted) thread until `stop`;
/// `sndbuf` caps its sockets' kernel send buffers.
fn start_server(
    config: Config,
    sndbuf: Option<usize>,
    stop: &Arc<AtomicBool>,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    if let Some(bytes) = sndbuf {
        set_buffer(&listener, libc::SO_SNDBUF, bytes);
    }
    let mut server = Server::from_listener(listener, config, Echo).expect("server");
    let addr = server.local_addr();
    let stop = Arc::clone(stop);
    let thread = std::thread::spawn(move || {
        COUNT_THIS_THREAD.with(|c| c.set(true));
        while !stop.load(Relaxed) {
            server
                .turn(Some(Duration::from_millis(5)))
                .expect("server turn");
        }
        COUNT_THIS_THREAD.with(|c| c.set(false));
    });
    (addr, thread)
}

/// Caps a socket's kernel buffers (both ways) at about `bytes`.
fn shrink_socket_buffers(stream: &TcpStream, bytes: usize) {
    set_buffer(stream, libc::SO_RCVBUF, bytes);
    set_buffer(stream, libc::SO_SNDBUF, bytes);
}

/// Sets a socket's `SO_SNDBUF` or `SO_RCVBUF` (Linux doubles it for bookkeeping).
fn set_buffer(socket: &impl std::os::fd::AsRawFd, option: libc::c_int, bytes: usize) {
    let size = libc::c_int::try_from(bytes).expect("a buffer size that fits a c_int");
    // SAFETY: setsockopt reads `size` (a c_int that outlives the call) for the
    // descriptor of a socket we own.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "setsockopt");
}

fn delta(a: Counts, b: Counts) -> Counts {
    Counts {
        allocs: b.allocs - a.allocs,
        reallocs: b.reallocs - a.reallocs,
        frees: b.frees - a.frees,
        bytes: b.bytes - a.bytes,
    }
}
