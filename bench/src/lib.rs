//! Shared pieces of the bench binaries: the hand-written client side of the WebSocket
//! handshake, the server side of the handshake for the raw echo ceiling, and the
//! `/proc` readers that turn a server's PID into CPU time and resident memory.
//!
//! Frames, permessage-deflate and the expected `Sec-WebSocket-Accept` come from
//! wsreactor's sans-I/O core (`FrameHeader::encode`, `mask::apply`, `proto::deflate`,
//! `handshake::accept_key`): pure code, none of the server's I/O, so the client side
//! costs the same whichever server it drives, and compresses with the same library and
//! backend as wsreactor does. That makes the bench a load, not a conformance check of
//! wsreactor's codec: the end-to-end tests (tungstenite, flate2 directly, an accept key
//! computed apart) and the fuzz targets (an encoder written from the RFC) are that.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::time::Duration;
pub use wsreactor::proto::frame::{FrameHeader, Opcode, MAX_HEADER_LEN};
pub use wsreactor::proto::handshake::accept_key;
pub use wsreactor::proto::mask;

/// RSV1: the message is compressed (permessage-deflate, RFC 7692 §6).
pub const RSV1: u8 = 0b100;

/// A small, fast, seedable PRNG (xorshift64*): mask keys, handshake nonces, payloads.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never zero: xorshift stays at zero forever.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn from_time(salt: u64) -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Rng::new(nanos ^ salt.rotate_left(32) ^ u64::from(std::process::id()))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A mask key with no zero byte, so a server that forgets to unmask is caught.
    pub fn mask_key(&mut self) -> [u8; 4] {
        let mut key = (self.next_u64() as u32).to_ne_bytes();
        for b in &mut key {
            if *b == 0 {
                *b = 0x5A;
            }
        }
        key
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn client_key(rng: &mut Rng) -> String {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
    nonce[8..].copy_from_slice(&rng.next_u64().to_ne_bytes());
    BASE64.encode(nonce)
}

/// The client's upgrade request (§4.1).
pub fn upgrade_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    upgrade_request_with_extensions(host, path, key, None)
}

/// The client's upgrade request, offering `extensions` (a `Sec-WebSocket-Extensions`
/// value) when given.
pub fn upgrade_request_with_extensions(
    host: &str,
    path: &str,
    key: &str,
    extensions: Option<&str>,
) -> Vec<u8> {
    let extensions = match extensions {
        Some(value) => format!("Sec-WebSocket-Extensions: {value}\r\n"),
        None => String::new(),
    };
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         {extensions}\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// The values of every `name` header in an HTTP head (case-insensitive name), trimmed.
pub fn header_values(head: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// The length of an HTTP head through its blank line, once it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Checks a server's answer to our upgrade request: status 101, `Upgrade: websocket`,
/// a `Connection` with the `upgrade` token, and the right `Sec-WebSocket-Accept`.
pub fn check_upgrade_response(head: &[u8], key: &str) -> Result<(), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code != "101" {
        return Err(format!("expected 101, got status line {status:?}"));
    }
    let (mut upgrade, mut connection, mut accept) = (false, false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(value.to_owned());
        }
    }
    if !upgrade {
        return Err("101 without Upgrade: websocket".into());
    }
    if !connection {
        return Err("101 without Connection: upgrade".into());
    }
    let expected = accept_key(key);
    match accept {
        Some(got) if got == expected => Ok(()),
        Some(got) => Err(format!(
            "Sec-WebSocket-Accept {got:?}, expected {expected:?}"
        )),
        None => Err("101 without Sec-WebSocket-Accept".into()),
    }
}

/// Appends `header` as [`FrameHeader::encode`] writes it.
pub fn push_header(out: &mut Vec<u8>, header: &FrameHeader) {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    let len = header.encode(&mut bytes);
    out.extend_from_slice(&bytes[..len]);
}

/// The header of a masked client frame carrying `len` payload bytes; `rsv` holds
/// RSV1-3 as the low three bits.
pub fn client_header(fin: bool, rsv: u8, opcode: Opcode, len: usize, key: [u8; 4]) -> FrameHeader {
    FrameHeader {
        fin,
        rsv,
        opcode,
        mask: Some(key),
        payload_len: len as u64,
    }
}

/// Appends a masked client frame: its header, then `payload` masked with `key`.
pub fn push_client_frame(out: &mut Vec<u8>, header: &FrameHeader, payload: &[u8]) {
    debug_assert_eq!(header.payload_len, payload.len() as u64);
    push_header(out, header);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = header.mask {
        mask::apply(&mut out[start..], key, 0);
    }
}

/// Makes closing `socket` send RST: a load generator that opens and closes thousands
/// of connections leaves no TIME_WAIT behind on loopback.
pub fn set_linger_zero(socket: &impl std::os::fd::AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized option value.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// `s` as a JSON string: quoted, with `"`, `\` and control characters escaped (the
/// binaries print their results as JSON without a serde dependency).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The client side of permessage-deflate (RFC 7692) for `loadgen --deflate`: reading
/// the server's answer to our offer, and compressing and inflating whole messages
/// (raw DEFLATE, a sync flush per message with its `00 00 ff ff` tail stripped on
/// sending and restored on receiving, context kept or reset as negotiated).
pub mod pmd {
    pub use wsreactor::proto::deflate::NAME;
    use wsreactor::proto::deflate::{Deflater, InflateError, Inflater};

    /// What `loadgen --deflate` offers: the extension with every default (context
    /// takeover allowed both ways, 32 KiB windows), and `client_max_window_bits`, which
    /// lets the server limit our window (as browsers offer it).
    pub const DEFAULT_OFFER: &str = "permessage-deflate; client_max_window_bits";

    /// The tail of a sync flush (§7.2.1).
    pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

    /// What the server's 101 agreed to.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Agreed {
        /// The server resets its compressor per message: we reset our inflater.
        pub server_no_context_takeover: bool,
        /// We must reset our compressor per message.
        pub client_no_context_takeover: bool,
        /// The server's window (informational: our inflater always has 15 bits).
        pub server_max_window_bits: u8,
        /// Our compressor's window.
        pub client_max_window_bits: u8,
        /// The response value as sent.
        pub response: String,
    }

    impl Agreed {
        /// Both directions keep their context between messages.
        pub fn takeover_both_ways(&self) -> bool {
            !self.server_no_context_takeover && !self.client_no_context_takeover
        }
    }

    fn bits(name: &str, value: Option<&str>) -> Result<u8, String> {
        let value = value
            .map(|v| v.trim_matches('"'))
            .ok_or_else(|| format!("{name} without a value in the response"))?;
        match value.parse::<u8>() {
            Ok(b @ 8..=15) if !value.starts_with('0') => Ok(b),
            _ => Err(format!("{name}={value}: not 8..15")),
        }
    }

    /// Reads the `Sec-WebSocket-Extensions` values of a 101 answering our offer of
    /// permessage-deflate (with `client_max_window_bits`). `Ok(None)`: no extension was
    /// agreed. An answer we did not offer or cannot honour is an error (RFC 6455 §9.1:
    /// the client must fail the connection).
    pub fn parse_response(values: &[String]) -> Result<Option<Agreed>, String> {
        let mut agreed: Option<Agreed> = None;
        for value in values {
            for ext in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let mut parts = ext.split(';').map(str::trim);
                let name = parts.next().unwrap_or_default();
                if !name.eq_ignore_ascii_case(NAME) {
                    return Err(format!(
                        "the server answered an extension not offered: {ext:?}"
                    ));
                }
                if agreed.is_some() {
                    return Err("the server answered permessage-deflate twice".into());
                }
                let mut a = Agreed {
                    server_no_context_takeover: false,
                    client_no_context_takeover: false,
                    server_max_window_bits: 15,
                    client_max_window_bits: 15,
                    response: ext.to_owned(),
                };
                let mut seen: Vec<String> = Vec::new();
                for param in parts.filter(|p| !p.is_empty()) {
                    let (pname, pvalue) = match param.split_once('=') {
                        Some((n, v)) => (n.trim(), Some(v.trim())),
                        None => (param, None),
                    };
                    let pname = pname.to_ascii_lowercase();
                    if seen.contains(&pname) {
                        return Err(format!("{pname} repeated in the response"));
                    }
                    seen.push(pname.clone());
                    match (pname.as_str(), pvalue) {
                        ("server_no_context_takeover", None) => a.server_no_context_takeover = true,
                        ("client_no_context_takeover", None) => a.client_no_context_takeover = true,
                        ("server_max_window_bits", v) => {
                            a.server_max_window_bits = bits(&pname, v)?
                        }
                        ("client_max_window_bits", v) => {
                            let b = bits(&pname, v)?;
                            if b < 9 {
                                // zlib cannot write raw DEFLATE with a 256-byte window.
                                return Err(
                                    "client_max_window_bits=8: zlib cannot honour it".into()
                                );
                            }
                            a.client_max_window_bits = b;
                        }
                        _ => {
                            return Err(format!("unexpected parameter in the response: {param:?}"))
                        }
                    }
                }
                agreed = Some(a);
            }
        }
        Ok(agreed)
    }

    /// Compression state that can serve every connection: without context takeover a
    /// compressor or inflater holds nothing between messages, so, as the server does,
    /// one of each (per window size) is reset after every message and shared. Per
    /// connection state with 100 connections would be ~30 MB of zlib state cycling
    /// through the client's caches, and the client, not the server, would set the pace.
    pub struct Shared {
        level: u32,
        /// Compressors by window bits 9..=15.
        compressors: [Option<Deflater>; 7],
        inflater: Option<Inflater>,
    }

    impl Shared {
        pub fn new(level: u32) -> Shared {
            Shared {
                level: level.min(9),
                compressors: Default::default(),
                inflater: None,
            }
        }

        fn compressor(&mut self, bits: u8) -> &mut Deflater {
            let level = self.level;
            self.compressors[usize::from(bits.clamp(9, 15) - 9)]
                .get_or_insert_with(|| Deflater::new(level, bits))
        }

        fn inflater(&mut self) -> &mut Inflater {
            self.inflater.get_or_insert_with(Inflater::new)
        }
    }

    /// One connection's compression: its own compressor only if it keeps its context
    /// (no `client_no_context_takeover`), its own inflater only if the server keeps
    /// its context (no `server_no_context_takeover`); otherwise the shared ones.
    pub struct ClientDeflate {
        agreed: Agreed,
        level: u32,
        compress: Option<Deflater>,
        decompress: Option<Inflater>,
    }

    impl ClientDeflate {
        pub fn new(agreed: Agreed, level: u32) -> ClientDeflate {
            ClientDeflate {
                agreed,
                level: level.min(9),
                compress: None,
                decompress: None,
            }
        }

        pub fn agreed(&self) -> &Agreed {
            &self.agreed
        }

        /// Replaces `out` with the payload of a compressed message (to send with RSV1).
        pub fn compress(&mut self, shared: &mut Shared, message: &[u8], out: &mut Vec<u8>) {
            let bits = self.agreed.client_max_window_bits;
            let reset = self.agreed.client_no_context_takeover;
            let level = self.level;
            let deflater = if reset {
                shared.compressor(bits)
            } else {
                self.compress
                    .get_or_insert_with(|| Deflater::new(level, bits))
            };
            deflater.compress(message, out, reset);
        }

        /// Replaces `out` with the inflated payload of a compressed message (RSV1),
        /// restoring the sync-flush tail; fails past `limit` bytes or on corrupt input.
        pub fn inflate(
            &mut self,
            shared: &mut Shared,
            payload: &[u8],
            out: &mut Vec<u8>,
            limit: usize,
        ) -> Result<(), String> {
            let reset = self.agreed.server_no_context_takeover;
            let inflater = if reset {
                shared.inflater()
            } else {
                self.decompress.get_or_insert_with(Inflater::new)
            };
            out.clear();
            let result = inflater
                .inflate(payload, out, limit)
                .and_then(|()| inflater.finish(out, limit, reset));
            if result.is_err() {
                // A broken stream: the next message starts afresh.
                inflater.reset();
            }
            result.map_err(|e| match e {
                InflateError::TooBig => format!("inflated echo longer than the {limit} bytes sent"),
                InflateError::Corrupt => "corrupt compressed data".into(),
                InflateError::NoMemory => "no memory for the inflated echo".into(),
            })
        }
    }
}

/// JSON-like text payloads (`loadgen --payload json`): an array of product-like
/// objects (ids, names, categories, prices, quantities, timestamps, tags), exactly the
/// requested size, different in every message.
pub mod json {
    use super::Rng;
    use std::io::Write;

    const ADJECTIVES: [&str; 16] = [
        "Blue",
        "Compact",
        "Deluxe",
        "Smart",
        "Classic",
        "Ultra",
        "Eco",
        "Portable",
        "Wireless",
        "Vintage",
        "Heavy-Duty",
        "Mini",
        "Pro",
        "Organic",
        "Modular",
        "Silent",
    ];
    const NOUNS: [&str; 16] = [
        "Widget", "Kettle", "Speaker", "Backpack", "Monitor", "Lamp", "Sprocket", "Blender",
        "Keyboard", "Tent", "Drill", "Mug", "Router", "Jacket", "Charger", "Camera",
    ];
    const CATEGORIES: [&str; 8] = [
        "hardware", "kitchen", "audio", "outdoor", "office", "lighting", "tools", "apparel",
    ];
    const TAGS: [&str; 8] = [
        "sale",
        "new",
        "bestseller",
        "limited",
        "refurbished",
        "gift",
        "clearance",
        "eco",
    ];
    const WORDS: [&str; 16] = [
        "ships",
        "within",
        "two",
        "days",
        "from",
        "the",
        "nearest",
        "warehouse",
        "and",
        "includes",
        "a",
        "one",
        "year",
        "limited",
        "warranty",
        "returns",
    ];

    fn pick<'a>(rng: &mut Rng, list: &[&'a str]) -> &'a str {
        list[(rng.next_u64() % list.len() as u64) as usize]
    }

    fn object(rng: &mut Rng, id: u64, ts_ms: u64, out: &mut Vec<u8>) {
        let r = rng.next_u64();
        let price = 99 + r % 99_900; // cents
        let qty = (r >> 20) % 500;
        let ts = ts_ms.saturating_sub((r >> 32) % 86_400_000);
        let _ = write!(
            out,
            "{{\"id\":{id},\"name\":\"{} {} {}\",\"category\":\"{}\",\"price\":{}.{:02},\
             \"qty\":{qty},\"in_stock\":{},\"updated_at\":{ts},\"tags\":[\"{}\",\"{}\"]}}",
            pick(rng, &ADJECTIVES),
            pick(rng, &NOUNS),
            100 + (r >> 48) % 900,
            pick(rng, &CATEGORIES),
            price / 100,
            price % 100,
            r >> 61 != 0,
            pick(rng, &TAGS),
            pick(rng, &TAGS),
        );
    }

    /// Replaces `out` with a JSON text of exactly `size` bytes (ASCII). Object ids
    /// continue from `*next_id`, so no two messages of one generator are alike.
    pub fn payload(rng: &mut Rng, size: usize, next_id: &mut u64, ts_ms: u64, out: &mut Vec<u8>) {
        out.clear();
        if size < 48 {
            // Too small for an object: a JSON string (or a lone digit).
            if size == 0 {
                return;
            } else if size == 1 {
                out.push(b'0' + (*next_id % 10) as u8);
            } else {
                // The id's last digits, so consecutive messages differ.
                let digits = next_id.to_string();
                let k = size - 2;
                out.push(b'"');
                out.resize(1 + k.saturating_sub(digits.len()), b'x');
                out.extend_from_slice(&digits.as_bytes()[digits.len().saturating_sub(k)..]);
                out.push(b'"');
            }
            *next_id += 1;
            return;
        }
        out.push(b'[');
        let mut item = Vec::with_capacity(256);
        loop {
            item.clear();
            object(rng, *next_id, ts_ms, &mut item);
            let sep = usize::from(out.len() > 1);
            if out.len() + sep + item.len() + 1 > size {
                break;
            }
            if sep == 1 {
                out.push(b',');
            }
            out.extend_from_slice(&item);
            *next_id += 1;
        }
        if out.len() == 1 {
            // Not even one whole object fits: a small one, stretched below.
            let _ = write!(out, "{{\"id\":{}}}", *next_id);
            *next_id += 1;
        }
        let gap = size - out.len() - 1;
        if gap >= 11 {
            // Stretch the last object with a note of words to the exact size.
            out.pop(); // its '}'
            out.extend_from_slice(b",\"note\":\"");
            let end = size - 3; // then `"}]`
            while out.len() < end {
                let word = pick(rng, &WORDS);
                let room = end - out.len();
                if room > word.len() {
                    out.extend_from_slice(word.as_bytes());
                    out.push(b' ');
                } else {
                    out.extend_from_slice(&word.as_bytes()[..room]);
                }
            }
            out.extend_from_slice(b"\"}");
        } else {
            // Under 11 bytes short: whitespace before the bracket.
            out.resize(size - 1, b' ');
        }
        out.push(b']');
        debug_assert_eq!(out.len(), size);
    }
}

/// `loadgen --rate`: the open-loop mode (fixed send timetable, latency from the
/// scheduled send time).
pub mod openloop;

/// `/proc` readers for the server being measured (Linux only).
pub mod procfs {
    /// Clock ticks per second for `/proc/PID/stat` times.
    pub fn clock_ticks() -> u64 {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            ticks as u64
        } else {
            100
        }
    }

    /// utime + stime of the whole process (all threads), in microseconds.
    pub fn cpu_us(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: fields start after the
        // last ')'. Counting from there, utime is the 12th and stime the 13th
        // (fields 14 and 15 of proc(5)).
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) * 1_000_000 / clock_ticks())
    }

    /// Minor page faults of the whole process (`minflt`, field 10 of proc(5)).
    pub fn minor_faults(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(7)?.parse().ok()
    }

    /// Voluntary + involuntary context switches of the main thread (`/proc/PID/status`).
    pub fn context_switches(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mut total = 0;
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches:")
                || line.starts_with("nonvoluntary_ctxt_switches:")
            {
                total += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            }
        }
        Some(total)
    }

    /// Time on CPU of every thread of the process from the scheduler's own accounting
    /// (`/proc/PID/task/*/schedstat`, nanoseconds): a finer cross-check of `cpu_us`.
    pub fn sched_cpu_ns(pid: u32) -> Option<u64> {
        let mut total = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let path = task.ok()?.path().join("schedstat");
            if let Ok(text) = std::fs::read_to_string(path) {
                total += text.split_whitespace().next()?.parse::<u64>().ok()?;
            }
        }
        Some(total)
    }

    /// Time every thread of the process spent runnable but waiting for a CPU
    /// (`/proc/PID/task/*/schedstat`, second field, nanoseconds): how much other work
    /// on the machine delayed it. `pid` 0 means this process.
    pub fn run_delay_ns(pid: u32) -> Option<u64> {
        let dir = if pid == 0 {
            "/proc/self/task".to_owned()
        } else {
            format!("/proc/{pid}/task")
        };
        let mut total = 0u64;
        for task in std::fs::read_dir(dir).ok()? {
            let path = task.ok()?.path().join("schedstat");
            if let Ok(text) = std::fs::read_to_string(path) {
                total += text.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            }
        }
        Some(total)
    }

    /// `VmRSS` of the process in bytes.
    pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
        status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
    }

    /// `VmHWM` (the peak resident set size over the process's life) in bytes.
    pub fn vm_hwm_bytes(pid: u32) -> Option<u64> {
        status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
    }

    /// A `kB` field of `/proc/PID/status` (`field` with its colon, e.g. `"VmRSS:"`).
    fn status_kib(pid: u32, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// This process's own user + system CPU time, in microseconds.
    pub fn self_cpu_us() -> u64 {
        // SAFETY: getrusage writes into the struct we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        us(usage.ru_utime) + us(usage.ru_stime)
    }

    /// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
    pub fn raise_nofile_limit() -> u64 {
        // SAFETY: plain getrlimit/setrlimit on a struct we own.
        unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return 0;
            }
            if limit.rlim_cur < limit.rlim_max {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur as u64
        }
    }
}

/// Parses `--flag value` pairs (and bare `--switch`es listed in `switches`).
pub struct Args {
    pairs: Vec<(String, Option<String>)>,
}

impl Args {
    pub fn parse(switches: &[&str]) -> Result<Args, String> {
        Args::parse_from(std::env::args().skip(1), switches)
    }

    /// As [`Args::parse`], over any argument list (e.g. what follows a subcommand).
    pub fn parse_from(
        args: impl IntoIterator<Item = String>,
        switches: &[&str],
    ) -> Result<Args, String> {
        let mut pairs = Vec::new();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if !flag.starts_with("--") {
                return Err(format!("unexpected argument {flag:?}"));
            }
            if switches.contains(&flag.as_str()) {
                pairs.push((flag, None));
            } else {
                let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
                pairs.push((flag, Some(value)));
            }
        }
        Ok(Args { pairs })
    }

    pub fn has(&self, flag: &str) -> bool {
        self.pairs.iter().any(|(f, _)| f == flag)
    }

    pub fn get<T: std::str::FromStr>(&self, flag: &str, default: T) -> Result<T, String> {
        match self.pairs.iter().rev().find(|(f, _)| f == flag) {
            Some((_, Some(value))) => value
                .parse()
                .map_err(|_| format!("{flag}: cannot parse {value:?}")),
            _ => Ok(default),
        }
    }

    pub fn seconds(&self, flag: &str, default: f64) -> Result<Duration, String> {
        Ok(Duration::from_secs_f64(self.get(flag, default)?))
    }

    /// Rejects flags not in `known` (catches typos in the runner).
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self
            .pairs
            .iter()
            .find(|(f, _)| !known.contains(&f.as_str()))
        {
            Some((f, _)) => Err(format!("unknown flag {f}")),
            None => Ok(()),
        }
    }
}

/// The flags of the peer echo servers (`tokio-tungstenite-echo`, `fastwebsockets-echo`):
/// `--listen ADDR [--path /echo]`. Prints a usage line and exits with 2 on bad flags.
pub fn peer_server_args(name: &str, default_listen: &str) -> (std::net::SocketAddr, String) {
    fn usage(name: &str, why: &str) -> ! {
        eprintln!("{name}: {why}\nusage: {name} --listen ADDR [--path /echo]");
        std::process::exit(2)
    }
    let args = Args::parse(&[])
        .and_then(|a| a.only(&["--listen", "--path"]).map(|()| a))
        .unwrap_or_else(|e| usage(name, &e));
    let listen = args
        .get(
            "--listen",
            default_listen.parse().expect("a valid default address"),
        )
        .unwrap_or_else(|e| usage(name, &e));
    let path = args
        .get("--path", "/echo".to_owned())
        .unwrap_or_else(|e| usage(name, &e));
    (listen, path)
}

/// wss:// for the peer echo servers: a TLS acceptor (tokio-rustls, ring, ALPN http/1.1)
/// when `BENCH_TLS_CERT` and `BENCH_TLS_KEY` name PEM files, as `bench/run.py` sets them
/// for the TLS rows; `None` (plain ws://) otherwise.
pub fn peer_tls_acceptor() -> Option<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = std::env::var_os("BENCH_TLS_CERT")?;
    let key = std::env::var_os("BENCH_TLS_KEY")?;
    let certs = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("{}: {e:?}", cert.to_string_lossy()));
    let key = PrivateKeyDer::from_pem_file(&key)
        .unwrap_or_else(|e| panic!("{}: {e:?}", key.to_string_lossy()));
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// What the publish/subscribe peers of workload (f) share: their flags, the topic in a
/// request path, and the registry of topics (one `tokio::sync::broadcast` channel each).
pub mod pubsub {
    use super::Args;
    use std::collections::HashMap;
    use tokio::sync::broadcast;

    /// The most topic names a peer keeps (they are never removed); past it, 503.
    pub const MAX_TOPICS: usize = 1024;

    /// A peer's flags: `--listen ADDR [--capacity N] [--batch]`.
    pub struct PubSubArgs {
        pub listen: std::net::SocketAddr,
        /// Messages a topic's channel keeps for receivers that are behind.
        pub capacity: usize,
        /// Write every message already waiting for a subscriber at once.
        pub batch: bool,
    }

    /// Parses a peer's flags; prints a usage line and exits with 2 on bad ones.
    pub fn pubsub_server_args(name: &str, default_listen: &str) -> PubSubArgs {
        let usage = |why: &str| -> ! {
            eprintln!("{name}: {why}\nusage: {name} --listen ADDR [--capacity 1024] [--batch]");
            std::process::exit(2)
        };
        let args = Args::parse(&["--batch"])
            .and_then(|a| a.only(&["--listen", "--capacity", "--batch"]).map(|()| a))
            .unwrap_or_else(|e| usage(&e));
        let listen = args
            .get("--listen", default_listen.parse().expect("a valid default"))
            .unwrap_or_else(|e| usage(&e));
        let capacity = args
            .get("--capacity", 1024usize)
            .unwrap_or_else(|e| usage(&e));
        if capacity == 0 {
            usage("--capacity must be positive");
        }
        PubSubArgs {
            listen,
            capacity,
            batch: args.has("--batch"),
        }
    }

    /// The topic of a request path `/topic/NAME` (NAME not empty, no further `/`).
    pub fn topic_of(path: &str) -> Option<&str> {
        let name = path.strip_prefix("/topic/")?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// Topic name -> its broadcast channel.
    pub struct Topics<T> {
        capacity: usize,
        channels: HashMap<String, broadcast::Sender<T>>,
    }

    impl<T: Clone> Topics<T> {
        pub fn new(capacity: usize) -> Topics<T> {
            Topics {
                capacity,
                channels: HashMap::new(),
            }
        }

        /// Subscribes to `name` (creating it): the topic's sender, to publish, and a
        /// receiver that gets everything published from now on. `None` past
        /// [`MAX_TOPICS`].
        pub fn join(
            &mut self,
            name: &str,
        ) -> Option<(broadcast::Sender<T>, broadcast::Receiver<T>)> {
            if let Some(tx) = self.channels.get(name) {
                return Some((tx.clone(), tx.subscribe()));
            }
            if self.channels.len() >= MAX_TOPICS {
                return None;
            }
            let (tx, rx) = broadcast::channel(self.capacity);
            self.channels.insert(name.to_owned(), tx.clone());
            Some((tx, rx))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_paths() {
        assert_eq!(pubsub::topic_of("/topic/bench"), Some("bench"));
        assert_eq!(pubsub::topic_of("/topic/"), None);
        assert_eq!(pubsub::topic_of("/topic/a/b"), None);
        assert_eq!(pubsub::topic_of("/echo"), None);
    }

    #[test]
    fn topics_share_a_channel_per_name_and_are_bounded() {
        let mut topics = pubsub::Topics::<u32>::new(4);
        let (tx, mut rx) = topics.join("a").unwrap();
        let (_tx2, mut rx2) = topics.join("a").unwrap();
        let (_tx3, mut other) = topics.join("b").unwrap();
        tx.send(7).unwrap();
        assert_eq!(rx.try_recv().unwrap(), 7);
        assert_eq!(rx2.try_recv().unwrap(), 7);
        assert!(other.try_recv().is_err());
        for i in 2..pubsub::MAX_TOPICS {
            assert!(topics.join(&i.to_string()).is_some());
        }
        assert!(topics.join("one-too-many").is_none());
        assert!(topics.join("a").is_some());
    }

    #[test]
    fn response_check() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
            connection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(check_upgrade_response(good, key), Ok(()));
        let bad = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
            connection: Upgrade\r\nsec-websocket-accept: AAAA\r\n\r\n";
        assert!(check_upgrade_response(bad, key).is_err());
        assert!(check_upgrade_response(b"HTTP/1.1 404 Not Found\r\n\r\n", key).is_err());
    }

    #[test]
    fn offer_in_the_request_and_headers_read_back() {
        let req = upgrade_request_with_extensions("h:1", "/echo", "k", Some(pmd::DEFAULT_OFFER));
        let text = String::from_utf8(req.clone()).unwrap();
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(
            header_values(&req, "sec-websocket-extensions"),
            [pmd::DEFAULT_OFFER]
        );
        assert!(header_values(
            &upgrade_request("h:1", "/", "k"),
            "Sec-WebSocket-Extensions"
        )
        .is_empty());
    }

    #[test]
    fn deflate_responses() {
        let parse =
            |v: &[&str]| pmd::parse_response(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(parse(&[]), Ok(None));
        let a =
            parse(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"])
                .unwrap()
                .unwrap();
        assert!(a.server_no_context_takeover && a.client_no_context_takeover);
        assert!(!a.takeover_both_ways());
        let a = parse(&["permessage-deflate"]).unwrap().unwrap();
        assert!(a.takeover_both_ways());
        assert_eq!(
            (a.server_max_window_bits, a.client_max_window_bits),
            (15, 15)
        );
        let a = parse(&[
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=\"12\"",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.server_max_window_bits, a.client_max_window_bits),
            (10, 12)
        );
        for bad in [
            "x-other",
            "permessage-deflate; foo",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate, permessage-deflate",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad:?}");
        }
    }

    fn agreed(snct: bool, cnct: bool) -> pmd::Agreed {
        pmd::Agreed {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            response: String::new(),
        }
    }

    #[test]
    fn deflate_round_trips_with_and_without_takeover() {
        let mut rng = Rng::new(7);
        for (snct, cnct) in [(true, true), (false, false), (true, false), (false, true)] {
            // Our compressor talks to a peer inflater with the same agreement (the
            // peer plays the server's inflater: it resets when the client does not
            // keep its context, which is what `server_no_context_takeover` means to
            // the receiving side here).
            let mut client = pmd::ClientDeflate::new(agreed(snct, cnct), 6);
            let mut peer = pmd::ClientDeflate::new(agreed(cnct, snct), 6);
            let (mut shared, mut peer_shared) = (pmd::Shared::new(6), pmd::Shared::new(6));
            let (mut plain, mut wire, mut back) = (Vec::new(), Vec::new(), Vec::new());
            let mut id = 1;
            let mut sizes = Vec::new();
            for size in [1024, 1024, 1024, 5, 0, 200_000, 1024] {
                json::payload(&mut rng, size, &mut id, 1_767_225_600_000, &mut plain);
                client.compress(&mut shared, &plain, &mut wire);
                assert!(!wire.ends_with(&pmd::SYNC_TAIL));
                sizes.push(wire.len());
                peer.inflate(&mut peer_shared, &wire, &mut back, plain.len())
                    .unwrap();
                assert_eq!(back, plain, "{snct} {cnct} {size}");
            }
            // Context takeover pays from the second 1 KiB message on.
            if cnct {
                assert!(sizes[1] * 10 > sizes[0] * 8, "{sizes:?}");
            } else {
                assert!(sizes[1] < sizes[0], "{sizes:?}");
            }
        }
    }

    #[test]
    fn inflate_limit_and_corruption() {
        for (snct, cnct) in [(true, true), (false, false)] {
            let mut c = pmd::ClientDeflate::new(agreed(snct, cnct), 6);
            let mut shared = pmd::Shared::new(6);
            let mut wire = Vec::new();
            c.compress(&mut shared, &[b'a'; 10_000], &mut wire);
            let mut out = Vec::new();
            assert!(c.inflate(&mut shared, &wire, &mut out, 9_999).is_err());
            // A failed message leaves the inflater fresh, ready for a new stream.
            let mut fresh = pmd::ClientDeflate::new(agreed(true, true), 6);
            fresh.compress(&mut pmd::Shared::new(6), &[b'a'; 10_000], &mut wire);
            assert!(c.inflate(&mut shared, &wire, &mut out, 10_000).is_ok());
            assert_eq!(out, [b'a'; 10_000]);
            assert!(c
                .inflate(&mut shared, &[0xff, 0xff, 0xff], &mut out, 100)
                .is_err());
        }
    }

    #[test]
    fn shared_state_serves_many_connections_without_takeover() {
        // Interleaved messages of several connections through one Shared: exactly the
        // bytes each connection would produce with state of its own.
        let mut rng = Rng::new(11);
        let mut shared = pmd::Shared::new(6);
        let mut conns: Vec<_> = (0..3)
            .map(|_| pmd::ClientDeflate::new(agreed(true, true), 6))
            .collect();
        let (mut plain, mut wire, mut own_wire, mut back) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut id = 1;
        for round in 0..4 {
            for c in conns.iter_mut() {
                json::payload(
                    &mut rng,
                    1024 + round,
                    &mut id,
                    1_767_225_600_000,
                    &mut plain,
                );
                c.compress(&mut shared, &plain, &mut wire);
                pmd::ClientDeflate::new(agreed(true, true), 6).compress(
                    &mut pmd::Shared::new(6),
                    &plain,
                    &mut own_wire,
                );
                assert_eq!(wire, own_wire);
                c.inflate(&mut shared, &wire, &mut back, plain.len())
                    .unwrap();
                assert_eq!(back, plain);
            }
        }
    }

    #[test]
    fn json_payloads_have_the_exact_size_and_vary() {
        let mut rng = Rng::new(3);
        let mut id = 1_000_000_000;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for size in (1..600).chain([1024, 1025, 4096, 65_536]) {
            json::payload(&mut rng, size, &mut id, 1_767_225_600_000, &mut a);
            json::payload(&mut rng, size, &mut id, 1_767_225_600_000, &mut b);
            assert_eq!((a.len(), b.len()), (size, size));
            assert!(a.is_ascii());
            if size > 2 {
                assert_ne!(a, b, "{size}");
            }
            if size >= 48 {
                assert_eq!(
                    (a[0], a[size - 1]),
                    (b'[', b']'),
                    "{}",
                    String::from_utf8_lossy(&a)
                );
            }
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            json_string("a\"b\\c\n\u{1}é"),
            "\"a\\\"b\\\\c\\u000a\\u0001é\""
        );
    }

    #[test]
    fn client_frames_are_masked_with_minimal_lengths() {
        for (len, want) in [(20, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)] {
            let payload = vec![0xA5; len];
            let mut out = Vec::new();
            let header = client_header(true, 0, Opcode::Binary, len, [1, 2, 3, 4]);
            push_client_frame(&mut out, &header, &payload);
            assert_eq!(out.len(), want + len, "len {len}");
            assert_eq!(&out[want - 4..want], &[1, 2, 3, 4]);
            assert_eq!(out[want] ^ 1, 0xA5);
        }
    }
}
