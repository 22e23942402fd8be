//! `loadgen`: a closed-loop WebSocket load generator (single thread, `mio`), in the
//! manner of uWebSockets' `load_test`, that also verifies every echoed byte.
//!
//! N connections each do the opening handshake by hand (the 101 and the
//! `Sec-WebSocket-Accept` are checked), then each sends one masked binary frame of S
//! bytes and waits for its whole echo before sending the next. After a warm-up it
//! measures for a fixed time and prints ONE line of JSON: msgs/s, MB/s (payload bytes
//! echoed per second, one direction), round-trip percentiles, errors, and — given
//! `--server-pid` — the server's CPU time over exactly the measured window, read from
//! `/proc/PID/stat` (utime + stime) at the window's two edges.
//!
//! Verification: every message carries an 8-byte stamp (connection id and sequence
//! number) at the front of an otherwise fixed per-connection pattern, so a late,
//! duplicated or cross-wired echo is caught, and the echo is compared byte for byte,
//! header included, as it streams in (nothing is buffered per connection, so 16 MiB
//! messages cost no extra memory). The echo may come as one frame or as fragments (a
//! server that streams its echo, as wsreactor's does, sends a large message in pieces
//! as they arrive): each header is checked (unmasked, no RSV bits, Binary then
//! Continuation, FIN on the last only) and the payloads are compared as they stream in.
//!
//! `--raw` (for the `rawecho` ceiling, which speaks just enough HTTP for the handshake
//! and then echoes bytes verbatim): the echo is the masked frame exactly as sent,
//! header, mask key and masked payload included, and is compared with what was sent.
//! That keeps the comparison fair: the client does the same work per message in both
//! modes (stamp 8 bytes, one write, compare the echo as it arrives), and the bytes on
//! the wire differ only by the 4-byte mask key on the way back.
//!
//! `--idle`: open N connections, complete the handshakes, hold them idle, and report
//! the server's VmRSS before and after (bytes per connection); then send one message on
//! every connection to prove they were all still open. `--idle-prime` first exchanges
//! one message on every connection (so the server holds whatever state a used
//! connection keeps, e.g. compression context), then holds them idle.
//!
//! `--payload json` and `--deflate` switch to message mode: each message is built
//! afresh (`json`: a text frame of JSON-like text, exactly `--size` bytes, different
//! every time; otherwise the binary pattern, stamped), the echo is buffered whole,
//! its header checked (FIN, no RSV2/3, same opcode, unmasked), inflated if RSV1 is
//! set, and compared with the message sent. `--deflate` offers permessage-deflate
//! (RFC 7692; `permessage-deflate; client_max_window_bits` unless `--deflate-offer`
//! says otherwise), fails a connection whose 101 does not accept it, and honours what
//! the server answered: every message is compressed (raw DEFLATE, sync flush, the
//! `00 00 ff ff` tail stripped, RSV1 set), our compressor is reset per message if the
//! answer has `client_no_context_takeover` and our inflater if it has
//! `server_no_context_takeover`. `--deflate-takeover` makes the same offer (which
//! allows takeover both ways) and fails a connection unless the server keeps context
//! in both directions. The result line then also reports the bytes on the wire per
//! message, each way, against the uncompressed size.
//!
//! Every run is bounded: connection set-up by `--connect-timeout`, the load by
//! `--warmup` + `--seconds`, the idle check by `--settle` and `--verify-timeout`.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wsreactor_bench::openloop::{self, frame_len};
use wsreactor_bench::pmd::{self, ClientDeflate};
use wsreactor_bench::{
    check_upgrade_response, client_header, client_key, head_end, header_values, json, json_string,
    procfs, push_client_frame, push_header, set_linger_zero, upgrade_request_with_extensions, Args,
    FrameHeader, Opcode, Rng, RSV1,
};

const USAGE: &str = "\
loadgen: closed-loop WebSocket echo load generator (prints one JSON line)

  --addr HOST:PORT        server address                      [127.0.0.1:9998]
  --path PATH             request path                        [/echo]
  --conns N               connections                         [100]
  --size BYTES            payload bytes per message           [20]
  --seconds S             measured time                       [5]
  --warmup S              load before measuring               [1]
  --server-pid PID        read the server's CPU time / VmRSS from /proc
  --raw                   the server echoes raw bytes (rawecho): expect the masked frame back
  --idle                  open N connections, hold them, measure server RSS per connection
                          (then one echo per connection; combine with --raw for rawecho)
  --settle S              idle: wait this long before reading VmRSS [1]
  --ramp N                at most N handshakes in flight       [100]
  --connect-timeout S     give up connecting after S           [60]
  --verify-timeout S      idle: time for the final echo check  [20]
  --drain                 always read until WouldBlock (default: stop at a short read)
  --payload KIND          pattern (binary frames) | json (text frames of JSON-like
                          text, exactly --size bytes, different every message) [pattern]
  --deflate               offer permessage-deflate, require it in the 101, compress
                          every message, inflate compressed echoes
  --deflate-takeover      as --deflate, and require context takeover both ways
  --deflate-offer VALUE   the Sec-WebSocket-Extensions offer
                          [permessage-deflate; client_max_window_bits]
  --deflate-level N       our zlib level, 0..9                [6]
  --idle-prime            idle: exchange one message per connection before the hold
  --rate R                open loop: every connection sends R msgs/s on a fixed
                          timetable whatever the replies (several may be in flight);
                          latency from the *scheduled* send time (coordinated omission
                          corrected), p50..p99.99 and max, sent/received/missed, and
                          the generator's own lag. Binary pattern payloads only.
  --max-in-flight N       open loop: skip (and count) sends on a connection with N
                          messages outstanding                [1000]
  --tick-us N             open loop: wake for sends at most once per N µs; the
                          sends due in a tick go out at its end (≤ N µs late, and
                          counted in their latency), for fewer wake-ups   [0: exact]
  --drain-time S          open loop: after the window, wait up to S for the echoes
                          of measured messages                [2]
";

const READ_BUF: usize = 256 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshake,
    Open,
    Dead,
}

struct Conn {
    stream: TcpStream,
    id: u64,
    phase: Phase,
    key: String,
    request: Vec<u8>,
    request_written: usize,
    head: Vec<u8>,
    mask: [u8; 4],
    /// The masked frame we send, and where its payload starts.
    frame: Vec<u8>,
    frame_payload_at: usize,
    /// The bytes the echo must consist of, and where its payload starts.
    expected: Vec<u8>,
    expected_payload_at: usize,
    seq: u64,
    written: usize,
    received: usize,
    /// Pattern mode (not raw): the echo's frames as they arrive.
    echo: EchoFrames,
    in_flight: bool,
    sent_at: Instant,
    writable_interest: bool,
    /// Message mode (`--payload json`, `--deflate`): every message built afresh and
    /// every echo buffered whole. `None`: the fixed-pattern path above.
    msg: Option<Box<MsgConn>>,
}

/// One connection's state in message mode.
struct MsgConn {
    rng: Rng,
    /// JSON object ids continue from here (unique per connection and message).
    next_id: u64,
    json: bool,
    size: usize,
    opcode: Opcode,
    /// The current message, uncompressed.
    plain: Vec<u8>,
    /// The compressed payload being built, then the inflated echo.
    scratch: Vec<u8>,
    /// The echo's bytes so far.
    rx: Vec<u8>,
    /// Payload bytes of the current message as sent (compressed or not).
    wire_payload: usize,
    deflate: Option<ClientDeflate>,
}

impl MsgConn {
    /// Builds the next message and its masked frame.
    fn next(
        &mut self,
        shared: &mut pmd::Shared,
        id: u64,
        seq: u64,
        mask: [u8; 4],
        frame: &mut Vec<u8>,
    ) {
        if self.json {
            let ts_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            json::payload(
                &mut self.rng,
                self.size,
                &mut self.next_id,
                ts_ms,
                &mut self.plain,
            );
        } else {
            let stamp = ((id << 40) | (seq & ((1 << 40) - 1))).to_le_bytes();
            let n = self.plain.len().min(8);
            self.plain[..n].copy_from_slice(&stamp[..n]);
        }
        // RSV1 marks a compressed message (RFC 7692 §6).
        let rsv = if self.deflate.is_some() { RSV1 } else { 0 };
        let payload: &[u8] = match &mut self.deflate {
            Some(deflate) => {
                deflate.compress(shared, &self.plain, &mut self.scratch);
                &self.scratch
            }
            None => &self.plain,
        };
        frame.clear();
        let header = client_header(true, rsv, self.opcode, payload.len(), mask);
        push_client_frame(frame, &header, payload);
        self.wire_payload = payload.len();
        self.rx.clear();
    }

    /// Checks a whole echo frame in `rx` against the message sent; returns its payload
    /// length and whether it came compressed.
    fn check_echo(&mut self, shared: &mut pmd::Shared) -> Result<(usize, bool), String> {
        let (b0, b1) = (self.rx[0], self.rx[1]);
        if b0 & 0x80 == 0 {
            return Err("echo without FIN (fragmented)".into());
        }
        if b0 & 0x30 != 0 {
            return Err(format!("echo with RSV2/RSV3 set ({b0:#04x})"));
        }
        if b0 & 0x0f != self.opcode as u8 {
            return Err(format!(
                "echo opcode {:#x}, sent {:#x}",
                b0 & 0x0f,
                self.opcode as u8
            ));
        }
        if b1 & 0x80 != 0 {
            return Err("the server masked its frame".into());
        }
        let header = 2 + match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let payload = &self.rx[header..];
        let compressed = b0 & 0x40 != 0;
        let got: &[u8] = if compressed {
            let deflate = self
                .deflate
                .as_mut()
                .ok_or("RSV1 set, but no permessage-deflate was agreed")?;
            deflate.inflate(shared, payload, &mut self.scratch, self.plain.len())?;
            &self.scratch
        } else {
            payload
        };
        if got != &self.plain[..] {
            let at = got
                .iter()
                .zip(&self.plain)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(self.plain.len()));
            return Err(format!(
                "{}echo differs from the message at byte {at} (length {}, sent {})",
                if compressed { "inflated " } else { "" },
                got.len(),
                self.plain.len()
            ));
        }
        Ok((payload.len(), compressed))
    }
}

/// The echo of one message in pattern mode, frame by frame as its bytes arrive: one
/// frame, or fragments, all compared with the payload sent.
#[derive(Default)]
struct EchoFrames {
    /// The header being read (at most 10 bytes: servers do not mask).
    header: Vec<u8>,
    /// Payload bytes left in the current frame (`None`: a header comes next).
    left: Option<u64>,
    fin: bool,
    frames: u64,
    /// Payload bytes of the message received so far.
    payload: usize,
}

impl EchoFrames {
    /// Takes the next echo bytes; true once the message is complete. Bytes past its
    /// end are an error (one message is in flight at a time).
    fn feed(&mut self, mut bytes: &[u8], sent: &[u8]) -> Result<bool, String> {
        while !bytes.is_empty() {
            let Some(left) = self.left else {
                let ext = |b1: u8| match b1 & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let need = match self.header.get(1) {
                    None => 2,
                    Some(&b1) => 2 + ext(b1),
                };
                let take = (need - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() < need || self.header.len() < 2 + ext(self.header[1]) {
                    continue;
                }
                let Some(len) = frame_len(&self.header) else {
                    continue;
                };
                let (b0, b1) = (self.header[0], self.header[1]);
                let opcode = if self.frames == 0 {
                    Opcode::Binary as u8
                } else {
                    0
                };
                if b1 & 0x80 != 0 {
                    return Err("the server masked its frame".into());
                }
                if b0 & 0x70 != 0 || b0 & 0x0f != opcode {
                    return Err(format!(
                        "echo frame {} starts {b0:#04x} (want opcode {opcode:#x}, no RSV)",
                        self.frames
                    ));
                }
                let len = len - self.header.len() as u64;
                self.header.clear();
                self.frames += 1;
                self.fin = b0 & 0x80 != 0;
                self.left = Some(len);
                if len == 0 && self.fin {
                    return self.end(bytes, sent);
                }
                continue;
            };
            let take = (left.min(bytes.len() as u64)) as usize;
            let at = self.payload;
            if at + take > sent.len() {
                return Err(format!("echo longer than the {} bytes sent", sent.len()));
            }
            if bytes[..take] != sent[at..at + take] {
                let i = bytes
                    .iter()
                    .zip(&sent[at..])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(format!("echo differs at payload byte {}", at + i));
            }
            self.payload += take;
            bytes = &bytes[take..];
            let left = left - take as u64;
            self.left = (left > 0).then_some(left);
            if left == 0 && self.fin {
                return self.end(bytes, sent);
            }
        }
        Ok(false)
    }

    fn end(&self, rest: &[u8], sent: &[u8]) -> Result<bool, String> {
        if self.payload != sent.len() {
            return Err(format!(
                "echo of {} bytes, sent {}",
                self.payload,
                sent.len()
            ));
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes after the echo", rest.len()));
        }
        Ok(true)
    }
}

impl Conn {
    /// Puts a fresh stamp in the payload (and so in the frame and the expected echo).
    fn stamp(&mut self, raw: bool) {
        self.seq += 1;
        let stamp = ((self.id << 40) | (self.seq & ((1 << 40) - 1))).to_le_bytes();
        let size = self.frame.len() - self.frame_payload_at;
        for (i, &plain) in stamp.iter().enumerate().take(size) {
            let masked = plain ^ self.mask[i % 4];
            self.frame[self.frame_payload_at + i] = masked;
            self.expected[self.expected_payload_at + i] = if raw { masked } else { plain };
        }
    }
}

#[derive(Default)]
struct Stats {
    errors: u64,
    error_samples: Vec<String>,
    msgs: u64,
    payload_bytes: u64,
    measuring: bool,
    samples_ns: Vec<u64>,
    /// Echoes completed, measured or not (idle priming counts these).
    completed: u64,
    /// Message mode, over the measured messages: frame and payload bytes each way.
    sent_frame_bytes: u64,
    sent_payload_bytes: u64,
    echo_frame_bytes: u64,
    echo_payload_bytes: u64,
    echoes_compressed: u64,
}

impl Stats {
    /// Counts a whole, verified echo of a `payload`-byte message sent at `sent_at`.
    fn echoed(&mut self, payload: usize, sent_at: Instant, now: Instant) {
        self.completed += 1;
        if self.measuring {
            self.msgs += 1;
            self.payload_bytes += payload as u64;
            self.samples_ns
                .push(now.duration_since(sent_at).as_nanos() as u64);
        }
    }

    fn error(&mut self, why: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(why);
        }
    }
}

struct Gen {
    /// The server echoes raw bytes: expect the masked frame back.
    raw: bool,
    /// Idle mode: no load; one verifying echo per connection at the end.
    idle: bool,
    /// Message mode: JSON text payloads.
    json: bool,
    /// Message mode: permessage-deflate.
    deflate: Option<DeflateOptions>,
    /// Compressor and inflater shared by connections that reset them per message.
    shared: pmd::Shared,
    /// The first permessage-deflate answer seen, and whether others differed.
    agreed: Option<String>,
    agreed_mixed: bool,
    size: usize,
    drain: bool,
    poll: Poll,
    conns: Vec<Conn>,
    buf: Vec<u8>,
    stats: Stats,
    /// Stop sending new messages (end of run); EOFs are no longer errors.
    stopping: bool,
    opened: usize,
    in_handshake: usize,
}

impl Gen {
    fn new_conn(
        &mut self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        rng: &mut Rng,
    ) -> io::Result<()> {
        let id = self.conns.len() as u64;
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        self.poll.registry().register(
            &mut stream,
            Token(id as usize),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let key = client_key(rng);
        let offer = self.deflate.as_ref().map(|d| d.offer.as_str());
        let request = upgrade_request_with_extensions(host, path, &key, offer);
        let mask = rng.mask_key();
        let size = self.size;
        // Payload: a per-connection pattern; the first 8 bytes are re-stamped per message.
        let payload: Vec<u8> = (0..size)
            .map(|i| (i as u64).wrapping_mul(31).wrapping_add(id * 7 + 1) as u8)
            .collect();
        let msg = (self.json || self.deflate.is_some()).then(|| {
            Box::new(MsgConn {
                rng: Rng::new(rng.next_u64()),
                next_id: (id + 1) * 1_000_000_000,
                json: self.json,
                size,
                opcode: if self.json {
                    Opcode::Text
                } else {
                    Opcode::Binary
                },
                plain: if self.json {
                    Vec::new()
                } else {
                    payload.clone()
                },
                scratch: Vec::new(),
                rx: Vec::new(),
                wire_payload: 0,
                deflate: None,
            })
        });
        // Message mode builds each frame, and checks each echo, as it goes; pattern mode
        // builds its frame and the echo it expects once (only the stamp changes).
        let (frame, frame_payload_at, expected, expected_payload_at) = if msg.is_some() {
            (Vec::with_capacity(size + 14), 0, Vec::new(), 0)
        } else {
            let mut frame = Vec::with_capacity(size + 14);
            let header = client_header(true, 0, Opcode::Binary, size, mask);
            push_client_frame(&mut frame, &header, &payload);
            let frame_payload_at = frame.len() - size;
            if self.raw {
                (frame.clone(), frame_payload_at, frame, frame_payload_at)
            } else {
                let mut expected = Vec::with_capacity(size + 10);
                push_header(&mut expected, &FrameHeader::server(Opcode::Binary, size));
                let at = expected.len();
                expected.extend_from_slice(&payload);
                (frame, frame_payload_at, expected, at)
            }
        };
        self.conns.push(Conn {
            stream,
            id,
            phase: Phase::Connecting,
            key,
            request,
            request_written: 0,
            head: Vec::new(),
            mask,
            frame,
            frame_payload_at,
            expected,
            expected_payload_at,
            seq: 0,
            written: 0,
            received: 0,
            echo: EchoFrames::default(),
            in_flight: false,
            sent_at: Instant::now(),
            writable_interest: true,
            msg,
        });
        self.in_handshake += 1;
        Ok(())
    }

    fn fail(&mut self, slot: usize, why: String) {
        let conn = &mut self.conns[slot];
        if conn.phase == Phase::Dead {
            return;
        }
        if matches!(conn.phase, Phase::Connecting | Phase::Handshake) {
            self.in_handshake -= 1;
        }
        conn.phase = Phase::Dead;
        conn.in_flight = false;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        if !self.stopping {
            self.stats.error(format!("conn {}: {why}", conn.id));
        }
    }

    fn event(&mut self, slot: usize, readable: bool, writable: bool) {
        if let Err(why) = self.event_inner(slot, readable, writable) {
            self.fail(slot, why);
        }
    }

    fn event_inner(&mut self, slot: usize, readable: bool, writable: bool) -> Result<(), String> {
        let registry = self.poll.registry();
        let conn = &mut self.conns[slot];
        match conn.phase {
            Phase::Dead => Ok(()),
            Phase::Connecting => {
                if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
                    return Err(format!("connect: {e}"));
                }
                match conn.stream.peer_addr() {
                    Ok(_) => {
                        conn.phase = Phase::Handshake;
                        self.event_inner(slot, true, true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                    Err(e) => Err(format!("connect: {e}")),
                }
            }
            Phase::Handshake => {
                while conn.request_written < conn.request.len() {
                    match (&conn.stream).write(&conn.request[conn.request_written..]) {
                        Ok(n) => conn.request_written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("writing the upgrade request: {e}")),
                    }
                }
                if !readable && !writable {
                    return Ok(());
                }
                loop {
                    match (&conn.stream).read(&mut self.buf) {
                        Ok(0) => {
                            // Say what the server answered, if it answered.
                            return Err(match head_end(&conn.head) {
                                Some(end) => check_upgrade_response(&conn.head[..end], &conn.key)
                                    .err()
                                    .unwrap_or_else(|| "EOF right after the 101".into()),
                                None => "EOF during the handshake".into(),
                            });
                        }
                        Ok(n) => conn.head.extend_from_slice(&self.buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("reading the 101: {e}")),
                    }
                    if conn.head.len() > 64 * 1024 {
                        return Err("response head over 64 KiB".into());
                    }
                }
                let Some(end) = head_end(&conn.head) else {
                    return Ok(());
                };
                check_upgrade_response(&conn.head[..end], &conn.key)?;
                let answered = header_values(&conn.head[..end], "sec-websocket-extensions");
                match (&self.deflate, conn.msg.as_deref_mut()) {
                    (Some(options), Some(msg)) => {
                        let agreed = pmd::parse_response(&answered)?.ok_or(
                            "the 101 accepts no permessage-deflate (server without --deflate?)",
                        )?;
                        if options.require_takeover && !agreed.takeover_both_ways() {
                            return Err(format!(
                                "context takeover required, the server answered {:?}",
                                agreed.response
                            ));
                        }
                        match &self.agreed {
                            None => self.agreed = Some(agreed.response.clone()),
                            Some(first) if *first != agreed.response => self.agreed_mixed = true,
                            Some(_) => {}
                        }
                        msg.deflate = Some(ClientDeflate::new(agreed, options.level));
                    }
                    _ if !answered.is_empty() => {
                        return Err(format!(
                            "the 101 answers extensions not offered: {answered:?}"
                        ));
                    }
                    _ => {}
                }
                if end != conn.head.len() {
                    return Err(format!(
                        "{} unexpected bytes after the 101",
                        conn.head.len() - end
                    ));
                }
                conn.head = Vec::new();
                conn.request = Vec::new();
                conn.key = String::new();
                conn.phase = Phase::Open;
                registry
                    .reregister(&mut conn.stream, Token(slot), Interest::READABLE)
                    .map_err(|e| format!("reregister: {e}"))?;
                conn.writable_interest = false;
                self.opened += 1;
                self.in_handshake -= 1;
                Ok(())
            }
            Phase::Open => {
                if writable && conn.in_flight && conn.written < conn.frame.len() {
                    write_frame(conn, registry, slot)?;
                }
                if readable {
                    if conn.msg.is_some() {
                        self.readable_msg(slot)?;
                    } else {
                        self.readable(slot)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads echo bytes, compares them as they come, and starts the next message when
    /// one is complete.
    fn readable(&mut self, slot: usize) -> Result<(), String> {
        let registry = self.poll.registry();
        let conn = &mut self.conns[slot];
        loop {
            let Some(n) = read_echo(conn, &mut self.buf, self.stopping)? else {
                return Ok(());
            };
            if !self.raw {
                let payload = &conn.expected[conn.expected_payload_at..];
                if conn.echo.feed(&self.buf[..n], payload)? {
                    let now = Instant::now();
                    conn.in_flight = false;
                    conn.echo = EchoFrames::default();
                    self.stats.echoed(self.size, conn.sent_at, now);
                    if !self.stopping && !self.idle {
                        start_message(conn, registry, &mut self.shared, slot, self.raw, now)?;
                    }
                }
                if n < self.buf.len() && !self.drain {
                    return Ok(());
                }
                continue;
            }
            let want = conn.expected.len() - conn.received;
            if n > want {
                return Err(format!("{} bytes more than the echo", n - want));
            }
            let expected = &conn.expected[conn.received..conn.received + n];
            if expected != &self.buf[..n] {
                let at = expected
                    .iter()
                    .zip(&self.buf[..n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(format!(
                    "echo differs at byte {} of {} (got {:#04x}, want {:#04x})",
                    conn.received + at,
                    conn.expected.len(),
                    self.buf[at],
                    expected[at]
                ));
            }
            conn.received += n;
            if conn.received == conn.expected.len() {
                let now = Instant::now();
                conn.in_flight = false;
                self.stats.echoed(self.size, conn.sent_at, now);
                if !self.stopping && !self.idle {
                    start_message(conn, registry, &mut self.shared, slot, self.raw, now)?;
                }
            }
            // A read that did not fill the buffer emptied the socket: Linux signals the
            // next arrival as a new edge, so the extra read that would only return
            // WouldBlock is skipped (a client-side saving; `--drain` turns it off).
            if n < self.buf.len() && !self.drain {
                return Ok(());
            }
        }
    }
}

impl Gen {
    /// Starts a message on every open connection, all at the moment `now`.
    fn start_all(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].phase != Phase::Open {
                continue;
            }
            let registry = self.poll.registry();
            let conn = &mut self.conns[slot];
            if let Err(why) = start_message(conn, registry, &mut self.shared, slot, self.raw, now) {
                self.fail(slot, why);
            }
        }
    }

    /// Message mode: buffers the echo, and checks it (header, inflated payload) when it
    /// is whole, then starts the next message.
    fn readable_msg(&mut self, slot: usize) -> Result<(), String> {
        let registry = self.poll.registry();
        let conn = &mut self.conns[slot];
        loop {
            let Some(n) = read_echo(conn, &mut self.buf, self.stopping)? else {
                return Ok(());
            };
            let msg = conn.msg.as_deref_mut().expect("message mode");
            msg.rx.extend_from_slice(&self.buf[..n]);
            if let Some(total) = frame_len(&msg.rx) {
                // An echo is never larger than the message plus a header, even
                // uncompressed (the server may send any message uncompressed).
                let bound = (msg.plain.len().max(conn.frame.len()) + 14) as u64;
                if total > bound {
                    return Err(format!(
                        "echo frame of {total} bytes for a {bound}-byte bound"
                    ));
                }
                let total = total as usize;
                if msg.rx.len() > total {
                    return Err(format!("{} bytes more than the echo", msg.rx.len() - total));
                }
                if msg.rx.len() == total {
                    let (echo_payload, compressed) = if self.raw {
                        if msg.rx != conn.frame {
                            return Err("raw echo differs from the frame sent".into());
                        }
                        (total, false)
                    } else {
                        msg.check_echo(&mut self.shared)?
                    };
                    let now = Instant::now();
                    conn.in_flight = false;
                    let stats = &mut self.stats;
                    stats.echoed(msg.plain.len(), conn.sent_at, now);
                    if stats.measuring {
                        stats.sent_frame_bytes += conn.frame.len() as u64;
                        stats.sent_payload_bytes += msg.wire_payload as u64;
                        stats.echo_frame_bytes += total as u64;
                        stats.echo_payload_bytes += echo_payload as u64;
                        stats.echoes_compressed += u64::from(compressed);
                    }
                    if !self.stopping && !self.idle {
                        start_message(conn, registry, &mut self.shared, slot, self.raw, now)?;
                    }
                }
            }
            if n < self.buf.len() && !self.drain {
                return Ok(());
            }
        }
    }
}

/// Reads echo bytes from an open connection: `Ok(None)` when there is nothing more to
/// read now (`WouldBlock`, or the run is ending and the server hung up).
fn read_echo(conn: &Conn, buf: &mut [u8], stopping: bool) -> Result<Option<usize>, String> {
    loop {
        let n = match (&conn.stream).read(buf) {
            Ok(0) if stopping => return Ok(None),
            Ok(0) => return Err("server closed the connection".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) if stopping => return Ok(None),
            Err(e) => return Err(format!("read: {e}")),
        };
        if !conn.in_flight {
            return Err(format!("{n} bytes with no message in flight"));
        }
        return Ok(Some(n));
    }
}

fn start_message(
    conn: &mut Conn,
    registry: &Registry,
    shared: &mut pmd::Shared,
    slot: usize,
    raw: bool,
    now: Instant,
) -> Result<(), String> {
    match conn.msg.as_deref_mut() {
        Some(msg) => {
            conn.seq += 1;
            msg.next(shared, conn.id, conn.seq, conn.mask, &mut conn.frame);
        }
        None => conn.stamp(raw),
    }
    conn.written = 0;
    conn.received = 0;
    conn.echo = EchoFrames::default();
    conn.in_flight = true;
    conn.sent_at = now;
    write_frame(conn, registry, slot)
}

/// Writes as much of the frame as the socket takes; asks for WRITABLE only while some
/// is left (small messages never touch the registration).
fn write_frame(conn: &mut Conn, registry: &Registry, slot: usize) -> Result<(), String> {
    while conn.written < conn.frame.len() {
        match (&conn.stream).write(&conn.frame[conn.written..]) {
            Ok(0) => return Err("write returned 0".into()),
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !conn.writable_interest {
                    registry
                        .reregister(
                            &mut conn.stream,
                            Token(slot),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .map_err(|e| format!("reregister: {e}"))?;
                    conn.writable_interest = true;
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    if conn.writable_interest {
        registry
            .reregister(&mut conn.stream, Token(slot), Interest::READABLE)
            .map_err(|e| format!("reregister: {e}"))?;
        conn.writable_interest = false;
    }
    Ok(())
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn opt(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "null".into(),
    }
}

struct Options {
    addr: SocketAddr,
    host: String,
    path: String,
    conns: usize,
    size: usize,
    seconds: Duration,
    warmup: Duration,
    server_pid: Option<u32>,
    raw: bool,
    idle: bool,
    settle: Duration,
    ramp: usize,
    connect_timeout: Duration,
    verify_timeout: Duration,
    drain: bool,
    json: bool,
    deflate: Option<DeflateOptions>,
    idle_prime: bool,
    /// Open loop: messages per second per connection.
    rate: Option<f64>,
    max_in_flight: usize,
    drain_secs: Duration,
    tick: Duration,
}

#[derive(Clone)]
struct DeflateOptions {
    /// The `Sec-WebSocket-Extensions` value offered.
    offer: String,
    level: u32,
    /// Fail connections the server does not grant context takeover both ways.
    require_takeover: bool,
}

fn options() -> Result<Options, String> {
    let args = Args::parse(&[
        "--raw",
        "--idle",
        "--drain",
        "--help",
        "--deflate",
        "--deflate-takeover",
        "--idle-prime",
    ])?;
    if args.has("--help") {
        print!("{USAGE}");
        std::process::exit(0);
    }
    args.only(&[
        "--addr",
        "--path",
        "--conns",
        "--size",
        "--seconds",
        "--warmup",
        "--server-pid",
        "--raw",
        "--idle",
        "--settle",
        "--ramp",
        "--connect-timeout",
        "--verify-timeout",
        "--drain",
        "--payload",
        "--deflate",
        "--deflate-takeover",
        "--deflate-offer",
        "--deflate-level",
        "--idle-prime",
        "--rate",
        "--max-in-flight",
        "--drain-time",
        "--tick-us",
    ])?;
    let host: String = args.get("--addr", "127.0.0.1:9998".to_owned())?;
    let addr: SocketAddr = host
        .parse()
        .map_err(|_| format!("--addr: not an address: {host}"))?;
    let pid: u32 = args.get("--server-pid", 0)?;
    let json = match args.get("--payload", "pattern".to_owned())?.as_str() {
        "pattern" => false,
        "json" => true,
        other => return Err(format!("--payload: pattern or json, not {other:?}")),
    };
    let deflate =
        (args.has("--deflate") || args.has("--deflate-takeover")).then(|| DeflateOptions {
            offer: String::new(),
            level: 6,
            require_takeover: args.has("--deflate-takeover"),
        });
    let deflate = match deflate {
        Some(mut d) => {
            d.offer = args.get("--deflate-offer", pmd::DEFAULT_OFFER.to_owned())?;
            d.level = args.get("--deflate-level", 6)?;
            if d.level > 9 {
                return Err("--deflate-level must be 0..=9".into());
            }
            Some(d)
        }
        None if args.has("--deflate-offer") || args.has("--deflate-level") => {
            return Err("--deflate-offer and --deflate-level need --deflate".into())
        }
        None => None,
    };
    let options = Options {
        addr,
        host,
        path: args.get("--path", "/echo".to_owned())?,
        conns: args.get("--conns", 100)?,
        size: args.get("--size", 20)?,
        seconds: args.seconds("--seconds", 5.0)?,
        warmup: args.seconds("--warmup", 1.0)?,
        server_pid: (pid != 0).then_some(pid),
        raw: args.has("--raw"),
        idle: args.has("--idle"),
        settle: args.seconds("--settle", 1.0)?,
        ramp: args.get("--ramp", 100)?,
        connect_timeout: args.seconds("--connect-timeout", 60.0)?,
        verify_timeout: args.seconds("--verify-timeout", 20.0)?,
        drain: args.has("--drain"),
        json,
        deflate,
        idle_prime: args.has("--idle-prime"),
        rate: match args.get("--rate", 0.0f64)? {
            r if r > 0.0 && r.is_finite() => Some(r),
            0.0 => None,
            r => return Err(format!("--rate must be positive, not {r}")),
        },
        max_in_flight: args.get("--max-in-flight", 1000)?,
        drain_secs: args.seconds("--drain-time", 2.0)?,
        tick: Duration::from_micros(args.get("--tick-us", 0)?),
    };
    if options.rate.is_some() && (options.json || options.deflate.is_some() || options.idle) {
        return Err(
            "--rate: binary pattern payloads only (no --payload json, --deflate, --idle)".into(),
        );
    }
    if options.max_in_flight == 0 {
        return Err("--max-in-flight must be positive".into());
    }
    if options.raw && options.deflate.is_some() {
        return Err("--raw and --deflate exclude each other (rawecho negotiates nothing)".into());
    }
    if options.idle_prime && !options.idle {
        return Err("--idle-prime needs --idle".into());
    }
    if options.conns == 0 || options.ramp == 0 {
        return Err("--conns and --ramp must be positive".into());
    }
    if options.size == 0 || options.size > 1 << 30 {
        return Err("--size must be 1..=1 GiB".into());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(3),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens every connection (at most `ramp` handshakes at a time); false on timeout.
fn connect_all(gen: &mut Gen, options: &Options, events: &mut Events) -> Result<(), String> {
    let mut rng = Rng::from_time(options.conns as u64);
    let deadline = Instant::now() + options.connect_timeout;
    loop {
        while gen.conns.len() < options.conns && gen.in_handshake < options.ramp {
            gen.new_conn(options.addr, &options.host, &options.path, &mut rng)
                .map_err(|e| format!("connect to {}: {e}", options.addr))?;
        }
        let dead = gen.conns.iter().filter(|c| c.phase == Phase::Dead).count();
        if gen.conns.len() == options.conns && gen.opened + dead == options.conns {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            gen.stats.error(format!(
                "only {} of {} connections opened within {:?}",
                gen.opened, options.conns, options.connect_timeout
            ));
            return Ok(());
        }
        poll_once(
            gen,
            events,
            (deadline - now).min(Duration::from_millis(100)),
        )?;
    }
}

fn poll_once(gen: &mut Gen, events: &mut Events, timeout: Duration) -> Result<(), String> {
    match gen.poll.poll(events, Some(timeout)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
        Err(e) => return Err(format!("poll: {e}")),
    }
    for event in events.iter() {
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed();
        gen.event(event.token().0, readable, writable);
    }
    Ok(())
}

fn run_until(gen: &mut Gen, events: &mut Events, until: Instant) -> Result<(), String> {
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        poll_once(gen, events, (until - now).min(Duration::from_millis(100)))?;
    }
}

/// The server's counters at one edge of the measured window.
#[derive(Default)]
struct ServerSample {
    cpu_us: Option<u64>,
    sched_ns: Option<u64>,
    minflt: Option<u64>,
    ctxsw: Option<u64>,
    run_delay_ns: Option<u64>,
}

fn server_sample(pid: Option<u32>) -> ServerSample {
    match pid {
        Some(pid) => ServerSample {
            cpu_us: procfs::cpu_us(pid),
            sched_ns: procfs::sched_cpu_ns(pid),
            minflt: procfs::minor_faults(pid),
            ctxsw: procfs::context_switches(pid),
            run_delay_ns: procfs::run_delay_ns(pid),
        },
        None => ServerSample::default(),
    }
}

/// `b - a` when both edges were read.
fn diff(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    Some(b?.checked_sub(a?)? as f64)
}

fn run(options: &Options) -> Result<u64, String> {
    let limit = procfs::raise_nofile_limit();
    if (options.conns as u64) + 32 > limit {
        return Err(format!(
            "{} connections need more file descriptors than RLIMIT_NOFILE allows ({limit})",
            options.conns
        ));
    }
    let mut gen = Gen {
        raw: options.raw,
        idle: options.idle,
        json: options.json,
        deflate: options.deflate.clone(),
        shared: pmd::Shared::new(options.deflate.as_ref().map_or(6, |d| d.level)),
        agreed: None,
        agreed_mixed: false,
        size: options.size,
        drain: options.drain,
        poll: Poll::new().map_err(|e| format!("poll: {e}"))?,
        conns: Vec::with_capacity(options.conns),
        buf: vec![0; READ_BUF],
        stats: Stats::default(),
        stopping: false,
        opened: 0,
        in_handshake: 0,
    };
    let mut events = Events::with_capacity(4096);
    let rss_before = options.server_pid.and_then(procfs::vm_rss_bytes);
    let connect_start = Instant::now();
    connect_all(&mut gen, options, &mut events)?;
    let open_secs = connect_start.elapsed().as_secs_f64();
    let line = if options.idle {
        run_idle(&mut gen, options, &mut events, rss_before, open_secs)?
    } else if let Some(rate) = options.rate {
        run_open(&mut gen, options, &mut events, open_secs, rate)?
    } else {
        run_load(&mut gen, options, &mut events, open_secs)?
    };
    // Tear down with RST (SO_LINGER 0): thousands of runs' worth of client sockets in
    // TIME_WAIT would otherwise pile up on loopback. Results are already computed.
    gen.stopping = true;
    for conn in &gen.conns {
        set_linger_zero(&conn.stream);
    }
    drop(gen);
    println!("{line}");
    Ok(line_errors(&line))
}

fn line_errors(line: &str) -> u64 {
    line.split("\"errors\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1)
}

/// Message mode's extra fields (a leading comma; empty otherwise): the payload kind,
/// the permessage-deflate answer, and the bytes on the wire per measured message.
fn message_json(gen: &Gen, wire: bool) -> String {
    if !gen.json && gen.deflate.is_none() {
        return String::new();
    }
    let agreed = match &gen.agreed {
        Some(a) if gen.agreed_mixed => json_string(&format!("{a} (and others)")),
        Some(a) => json_string(a),
        None => "null".into(),
    };
    let mut out = format!(
        ",\"payload\":\"{}\",\"deflate\":{agreed}",
        if gen.json { "json" } else { "pattern" }
    );
    if wire {
        let s = &gen.stats;
        let per = |v: u64| (s.msgs > 0).then(|| v as f64 / s.msgs as f64);
        let ratio = |v: u64| (s.payload_bytes > 0).then(|| v as f64 / s.payload_bytes as f64);
        out.push_str(&format!(
            ",\"wire\":{{\"plain_bytes_per_msg\":{},\"sent_frame_bytes_per_msg\":{},\
             \"sent_payload_bytes_per_msg\":{},\"echo_frame_bytes_per_msg\":{},\
             \"echo_payload_bytes_per_msg\":{},\"sent_ratio\":{},\"echo_ratio\":{},\
             \"echoes_compressed\":{}}}",
            opt(per(s.payload_bytes)),
            opt(per(s.sent_frame_bytes)),
            opt(per(s.sent_payload_bytes)),
            opt(per(s.echo_frame_bytes)),
            opt(per(s.echo_payload_bytes)),
            opt(ratio(s.sent_payload_bytes)),
            opt(ratio(s.echo_payload_bytes)),
            opt(per(s.echoes_compressed)),
        ));
    }
    out
}

fn errors_json(stats: &Stats) -> String {
    let samples: Vec<String> = stats.error_samples.iter().map(|s| json_string(s)).collect();
    format!(
        "\"errors\":{},\"error_samples\":[{}]",
        stats.errors,
        samples.join(",")
    )
}

fn run_load(
    gen: &mut Gen,
    options: &Options,
    events: &mut Events,
    open_secs: f64,
) -> Result<String, String> {
    // Every connection starts its first message at the same moment.
    let now = Instant::now();
    gen.start_all(now);
    run_until(gen, events, now + options.warmup)?;
    let expected_samples = (options.conns as f64 * options.seconds.as_secs_f64() * 50_000.0)
        .min(50_000_000.0) as usize;
    gen.stats
        .samples_ns
        .reserve(expected_samples.min(20_000_000));
    let server0 = server_sample(options.server_pid);
    let client0 = procfs::self_cpu_us();
    let client_delay0 = procfs::run_delay_ns(0);
    let t0 = Instant::now();
    gen.stats.measuring = true;
    run_until(gen, events, t0 + options.seconds)?;
    gen.stats.measuring = false;
    let elapsed = t0.elapsed().as_secs_f64();
    let server1 = server_sample(options.server_pid);
    let client1 = procfs::self_cpu_us();
    let client_delay1 = procfs::run_delay_ns(0);
    gen.stopping = true;
    let end = Instant::now();
    let oldest_in_flight_ms = gen
        .conns
        .iter()
        .filter(|c| c.in_flight && c.phase == Phase::Open)
        .map(|c| end.duration_since(c.sent_at).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);

    let extra = message_json(gen, true);
    let stats = &mut gen.stats;
    stats.samples_ns.sort_unstable();
    let samples = &stats.samples_ns;
    let msgs = stats.msgs as f64;
    let mean_us = if samples.is_empty() {
        0.0
    } else {
        samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0
    };
    let server_cpu_us = diff(server0.cpu_us, server1.cpu_us);
    let sched_us = diff(server0.sched_ns, server1.sched_ns).map(|ns| ns / 1000.0);
    let per_msg_of = |d: Option<f64>| d.filter(|_| msgs > 0.0).map(|d| d / msgs);
    let minflt_per_msg = per_msg_of(diff(server0.minflt, server1.minflt));
    let ctxsw_per_msg = per_msg_of(diff(server0.ctxsw, server1.ctxsw));
    // Fraction of the window each side spent runnable but waiting for its CPU.
    let server_wait = diff(server0.run_delay_ns, server1.run_delay_ns).map(|ns| ns / 1e9 / elapsed);
    let client_wait = diff(client_delay0, client_delay1).map(|ns| ns / 1e9 / elapsed);
    let per_msg = server_cpu_us.filter(|_| msgs > 0.0).map(|us| us / msgs);
    let per_cpu_sec = server_cpu_us
        .filter(|&us| us > 0.0)
        .map(|us| msgs / (us / 1e6));
    let mode = if options.raw { "raw" } else { "echo" };
    Ok(format!(
        "{{\"mode\":\"{mode}\",\"conns\":{},\"opened\":{},\"size\":{},\"open_secs\":{open_secs:.3},\
         \"seconds\":{elapsed:.3},\"msgs\":{},\"msgs_per_sec\":{:.1},\"mb_per_sec\":{:.3},\
         \"rtt_us\":{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1},\"mean\":{mean_us:.1}}},\
         \"server_cpu_us\":{},\"server_sched_cpu_us\":{},\"server_cpu_us_per_msg\":{},\
         \"msgs_per_server_cpu_sec\":{},\"server_cpu_util\":{},\"client_cpu_util\":{:.3},\
         \"server_minflt_per_msg\":{},\"server_ctxsw_per_msg\":{},\
         \"server_run_wait\":{},\"client_run_wait\":{},\
         \"oldest_in_flight_ms\":{oldest_in_flight_ms:.1}{extra},{}}}",
        options.conns,
        gen.opened,
        options.size,
        stats.msgs,
        msgs / elapsed,
        stats.payload_bytes as f64 / elapsed / 1e6,
        percentile(samples, 0.50),
        percentile(samples, 0.90),
        percentile(samples, 0.99),
        percentile(samples, 0.999),
        samples.last().copied().unwrap_or(0) as f64 / 1000.0,
        opt(server_cpu_us),
        opt(sched_us),
        opt(per_msg),
        opt(per_cpu_sec),
        opt(server_cpu_us.map(|us| us / 1e6 / elapsed)),
        (client1 - client0) as f64 / 1e6 / elapsed,
        opt(minflt_per_msg),
        opt(ctxsw_per_msg),
        opt(server_wait),
        opt(client_wait),
        errors_json(stats),
    ))
}

/// Open loop (`--rate`): hands the open connections to `openloop::OpenLoop`, warms up,
/// measures the sends scheduled in the window, drains their echoes, and reports.
fn run_open(
    gen: &mut Gen,
    options: &Options,
    events: &mut Events,
    open_secs: f64,
    rate: f64,
) -> Result<String, String> {
    let conns: Vec<openloop::OpenConn> = gen
        .conns
        .drain(..)
        .filter(|c| c.phase == Phase::Open)
        .map(|c| {
            let payload = if gen.raw {
                // The frame is masked: unmask the pattern for the checks.
                c.frame[c.frame_payload_at..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ c.mask[i % 4])
                    .collect()
            } else {
                c.expected[c.expected_payload_at..].to_vec()
            };
            openloop::OpenConn {
                token: c.id as usize,
                id: c.id,
                payload_at: c.frame_payload_at,
                frame: c.frame,
                mask: c.mask,
                payload,
                stream: c.stream,
            }
        })
        .collect();
    let live = conns.len();
    let start = Instant::now() + Duration::from_millis(1);
    let settings = openloop::Settings {
        rate,
        raw: options.raw,
        max_in_flight: options.max_in_flight,
        tick: options.tick,
    };
    let mut ol = openloop::OpenLoop::new(&gen.poll, conns, settings, start)?;
    let t0 = start + options.warmup;
    let t1 = t0 + options.seconds;
    ol.set_window(t0, t1);
    ol.run_until(&mut gen.poll, events, t0, false)?;
    let server0 = server_sample(options.server_pid);
    let client0 = procfs::self_cpu_us();
    let client_delay0 = procfs::run_delay_ns(0);
    let w0 = Instant::now();
    ol.run_until(&mut gen.poll, events, t1, false)?;
    let elapsed = w0.elapsed().as_secs_f64();
    let server1 = server_sample(options.server_pid);
    let client1 = procfs::self_cpu_us();
    let client_delay1 = procfs::run_delay_ns(0);
    // Nothing is sent after t1; wait for the window's echoes.
    ol.run_until(
        &mut gen.poll,
        events,
        Instant::now() + options.drain_secs,
        true,
    )?;
    gen.stopping = true;
    for stream in ol.streams() {
        set_linger_zero(stream);
    }
    let msgs = ol.counts.received as f64;
    let server_cpu_us = diff(server0.cpu_us, server1.cpu_us);
    // Server CPU per message over the window: echoes of the window's sends, which is
    // the rate the server handled in it (the edges differ by at most a latency).
    let per_msg = server_cpu_us.filter(|_| msgs > 0.0).map(|us| us / msgs);
    let ctxsw_per_msg = diff(server0.ctxsw, server1.ctxsw)
        .filter(|_| msgs > 0.0)
        .map(|d| d / msgs);
    let server_wait = diff(server0.run_delay_ns, server1.run_delay_ns).map(|ns| ns / 1e9 / elapsed);
    let client_wait = diff(client_delay0, client_delay1).map(|ns| ns / 1e9 / elapsed);
    let mut errors = Stats {
        errors: gen.stats.errors + ol.errors,
        error_samples: gen.stats.error_samples.clone(),
        ..Stats::default()
    };
    errors
        .error_samples
        .extend(ol.error_samples.iter().cloned());
    errors.error_samples.truncate(5);
    let mode = if options.raw { "open-raw" } else { "open" };
    Ok(format!(
        "{{\"mode\":\"{mode}\",\"conns\":{},\"opened\":{},\"live_at_end\":{},\"size\":{},\
         \"open_secs\":{open_secs:.3},\"seconds\":{elapsed:.3},\"msgs\":{},\"msgs_per_sec\":{:.1}{},\
         \"server_cpu_us\":{},\"server_cpu_us_per_msg\":{},\"server_cpu_util\":{},\
         \"client_cpu_util\":{:.3},\"server_ctxsw_per_msg\":{},\"server_run_wait\":{},\
         \"client_run_wait\":{},{}}}",
        options.conns,
        live,
        ol.live(),
        options.size,
        ol.counts.received,
        msgs / options.seconds.as_secs_f64(),
        ol.json_fields(options.seconds.as_secs_f64()),
        opt(server_cpu_us),
        opt(per_msg),
        opt(server_cpu_us.map(|us| us / 1e6 / elapsed)),
        (client1 - client0) as f64 / 1e6 / elapsed,
        opt(ctxsw_per_msg),
        opt(server_wait),
        opt(client_wait),
        errors_json(&errors),
    ))
}

fn run_idle(
    gen: &mut Gen,
    options: &Options,
    events: &mut Events,
    rss_before: Option<u64>,
    open_secs: f64,
) -> Result<String, String> {
    if options.idle_prime {
        // One message on every connection first, so the server holds whatever a used
        // connection keeps (compression context, buffers).
        let open = gen.conns.iter().filter(|c| c.phase == Phase::Open).count() as u64;
        let now = Instant::now();
        gen.start_all(now);
        let deadline = now + options.verify_timeout;
        while gen.stats.completed < open && Instant::now() < deadline {
            poll_once(gen, events, Duration::from_millis(50))?;
        }
        if gen.stats.completed < open {
            gen.stats.error(format!(
                "priming: only {} of {open} connections echoed within {:?}",
                gen.stats.completed, options.verify_timeout
            ));
        }
    }
    // Hold them idle; any byte a server sends now is an error (no message in flight).
    run_until(gen, events, Instant::now() + options.settle)?;
    let rss_after = options.server_pid.and_then(procfs::vm_rss_bytes);
    let open_now = gen.conns.iter().filter(|c| c.phase == Phase::Open).count();
    // Prove they were open: one echo on every connection.
    let now = Instant::now();
    gen.start_all(now);
    gen.stats.measuring = true;
    let deadline = now + options.verify_timeout;
    while gen.stats.msgs < open_now as u64 && Instant::now() < deadline {
        poll_once(gen, events, Duration::from_millis(50))?;
    }
    let verified = gen.stats.msgs;
    if verified < open_now as u64 {
        gen.stats.error(format!(
            "only {verified} of {open_now} idle connections echoed within {:?}",
            options.verify_timeout
        ));
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(a), Some(b)) if open_now > 0 => Some((b as f64 - a as f64) / open_now as f64),
        _ => None,
    };
    let mut extra = message_json(gen, false);
    if options.idle_prime {
        extra.push_str(&format!(",\"primed\":true,\"size\":{}", options.size));
    }
    Ok(format!(
        "{{\"mode\":\"idle\",\"conns\":{},\"opened\":{},\"open_secs\":{open_secs:.3},\
         \"rss_before\":{},\"rss_after\":{},\"rss_per_conn\":{},\"verified\":{verified}{extra},{}}}",
        options.conns,
        open_now,
        opt(rss_before.map(|b| b as f64)),
        opt(rss_after.map(|b| b as f64)),
        opt(per_conn),
        errors_json(&gen.stats),
    ))
}
