//! Shared pieces of the bench binaries: the hand-written client side of the WebSocket
//! handshake and framing (the load generator must not lean on any of the libraries it
//! measures), the server side of the handshake for the raw echo ceiling, and the
//! `/proc` readers that turn a server's PID into CPU time and resident memory.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::time::Duration;

/// The GUID every server appends to the client's key before hashing (RFC 6455 §1.3).
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest frame header: 2 bytes, 8 bytes of length, 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// `base64(sha1(key + GUID))` (§4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.digest().bytes())
}

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
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
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

/// Appends a frame header (FIN set, minimal length encoding, §5.2).
pub fn encode_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// XORs `payload` with `key` as if it started `offset` bytes into the frame payload.
pub fn apply_mask(payload: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

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
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
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
        let mut pairs = Vec::new();
        let mut args = std::env::args().skip(1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
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
    fn header_lengths() {
        for (len, want) in [(20, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)] {
            let mut out = Vec::new();
            encode_header(&mut out, 2, len, Some([1, 2, 3, 4]));
            assert_eq!(out.len(), want, "len {len}");
        }
    }
}
