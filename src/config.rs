//! Every limit and timeout the server enforces, in one place, each with its default
//! and the reason for it.

use crate::proto::deflate::DeflatePolicy;
use crate::timer::{millis, Millis};
use std::time::Duration;

/// Limits, sizes and timeouts for a [`Server`](crate::Server).
///
/// The defaults suit a public echo or chat service: large enough for the Autobahn
/// TestSuite's 16 MiB messages, bounded everywhere so that no peer can take the machine.
///
/// Every `Duration` is accepted. A timeout of zero turns that timeout off, and so does
/// one longer than about 100 years: `Duration::MAX` reads as "never" (the field docs
/// say what "off" means for each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The largest message (all fragments together) a peer may send; larger ones are
    /// refused with close code 1009 as soon as a frame header announces them, before
    /// any of their payload is buffered. Default: 16 MiB.
    pub max_message_size: usize,
    /// The largest HTTP request head (request line and headers) accepted for the
    /// upgrade; a larger one gets `431` and the connection is closed. Default: 16 KiB,
    /// several times what browsers send, small enough that half-sent heads are cheap.
    pub max_header_bytes: usize,
    /// Size of the one read buffer the whole loop shares. Idle connections own no read
    /// buffer at all. Default: 128 KiB, so that a 64 KiB message with its header
    /// usually arrives in one read and is handed out in place instead of being
    /// assembled (measured: 19.5 vs 23.7 µs of server CPU per 64 KiB echo against
    /// 64 KiB; 256 KiB was slower again).
    pub read_buffer_size: usize,
    /// While more than this many bytes wait in a connection's send queue, the server
    /// stops reading from it, so a peer that sends without reading feels TCP
    /// backpressure instead of growing our memory. Reading resumes once the queue
    /// drains to half of this. Default: 1 MiB.
    pub write_high_water: usize,
    /// A send that would take a connection's queue past this many bytes is refused
    /// ([`SendStatus::Refused`](crate::SendStatus::Refused)): the most memory one slow
    /// consumer can hold. Default: 20 MiB — above `max_message_size + write_high_water`,
    /// so an echo of a largest message is never refused, and no higher, because every
    /// byte of it is memory a peer that does not read makes us keep.
    pub max_send_queue: usize,
    /// A connection whose sends stay refused (queue over `max_send_queue`) this long is
    /// closed with 1008, so a consumer that stopped reading cannot hold its queue
    /// forever. Default: 30 s. Zero (or `Duration::MAX`): never closed for it; its
    /// sends stay refused while its queue is full.
    pub send_stall_timeout: Duration,
    /// Time allowed from TCP accept to a complete upgrade request; a slowloris that
    /// sends half a request is dropped. Default: 10 s. Zero (or `Duration::MAX`): no
    /// limit, and only `max_handshakes` bounds what slow clients hold.
    pub handshake_timeout: Duration,
    /// After we send a close frame (or an HTTP refusal), time allowed for the peer to
    /// answer and close; then the TCP connection is dropped. It also bounds a graceful
    /// shutdown. Default: 5 s. Zero (or `Duration::MAX`): no close timeout, wait for
    /// the peer however long it takes; a graceful shutdown then ends only once every
    /// peer has closed (never cut short at once).
    pub close_timeout: Duration,
    /// After this much silence from the peer, send a ping (keepalive: finds dead peers
    /// and keeps NAT mappings alive). Default: 30 s. Zero (or `Duration::MAX`) turns
    /// keepalive off.
    pub idle_timeout: Duration,
    /// Time allowed for any answer to a keepalive ping; then the connection is closed
    /// with 1011. Default: 30 s. Zero (or `Duration::MAX`): an unanswered ping never
    /// closes the connection (and no new ping is sent until the peer sends something).
    pub pong_timeout: Duration,
    /// Open connections at most (in any phase); past it, new TCP connections get `503`
    /// and are closed. Default: the process's open-file limit minus 64 spare
    /// descriptors (read when the `Config` is made).
    pub max_connections: usize,
    /// Connections at most that are still in the handshake; past it, new ones get `503`.
    /// Bounds what half-open or slow clients can hold. Default: 1024.
    pub max_handshakes: usize,
    /// If not empty, upgrade requests whose `Origin` is not in this list get `403`
    /// (compared case-insensitively, e.g. `"https://example.com"`). Requests without
    /// an `Origin` come from non-browser clients and are let through: browsers always
    /// send it, and it is browsers that cross-site requests abuse. Default: empty.
    pub allowed_origins: Vec<String>,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it. Text-heavy
    /// traffic shrinks several times, for CPU on both ends. Default: off, so that
    /// CPU and memory per connection stay what the rest of this table says unless
    /// asked for.
    pub deflate: bool,
    /// Keep compression context between messages when the client allows it: better
    /// ratios, but each connection then holds its own compressor (~256 KiB at a 15-bit
    /// window) and inflater (~48 KiB) for as long as it lives. Off (the default), the
    /// server asks for no context takeover both ways, and connections share one
    /// compressor and a small pool of inflaters: no compression memory per connection.
    pub deflate_context_takeover: bool,
    /// The largest LZ77 window our compressor uses, 9–15 bits. Default: 15.
    pub deflate_window_bits: u8,
    /// zlib compression level, 0–9. Default: 6, zlib's own default balance.
    pub deflate_level: u32,
    /// Messages shorter than this are sent uncompressed: the savings would not pay for
    /// the CPU. Default: 128 bytes.
    pub deflate_threshold: usize,
    /// Commands a [`Handle`](crate::Handle) may queue before calls fail with
    /// [`HandleError::Full`](crate::HandleError::Full). Default: 65,536.
    pub handle_queue_capacity: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_message_size: 16 << 20,
            max_header_bytes: 16 << 10,
            read_buffer_size: 128 << 10,
            write_high_water: 1 << 20,
            max_send_queue: 20 << 20,
            send_stall_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            max_connections: open_file_limit().saturating_sub(64).max(16),
            max_handshakes: 1024,
            allowed_origins: Vec::new(),
            handle_queue_capacity: 1 << 16,
            deflate: false,
            deflate_context_takeover: false,
            deflate_window_bits: 15,
            deflate_level: 6,
            deflate_threshold: 128,
        }
    }
}

impl Config {
    pub(crate) fn deflate_policy(&self) -> DeflatePolicy {
        DeflatePolicy {
            context_takeover: self.deflate_context_takeover,
            max_window_bits: self.deflate_window_bits,
        }
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            handshake: millis(self.handshake_timeout),
            close: millis(self.close_timeout),
            idle: millis(self.idle_timeout),
            pong: millis(self.pong_timeout),
            send_stall: millis(self.send_stall_timeout),
        }
    }

    /// Whether a browser page from `origin` may open a connection.
    pub(crate) fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            _ if self.allowed_origins.is_empty() => true,
            None => true,
            Some(origin) => self
                .allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin)),
        }
    }
}

/// The timeouts in loop clock units; `None` is off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub handshake: Option<Millis>,
    pub close: Option<Millis>,
    pub idle: Option<Millis>,
    pub pong: Option<Millis>,
    pub send_stall: Option<Millis>,
}

/// The soft limit on open files (`RLIMIT_NOFILE`), or 1024 if it cannot be read.
pub fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives on our stack.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

/// Raises the soft limit on open files to the hard limit, returning the new soft limit.
///
/// The default soft limit (often 1024) caps a server at about a thousand connections
/// though the hard limit allows far more; servers conventionally raise it at start-up.
pub fn raise_open_file_limit() -> std::io::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the struct we pass, which lives on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_allow_list() {
        let mut config = Config::default();
        assert!(config.origin_allowed(Some("https://evil.example")));
        config.allowed_origins = vec!["https://Good.example".into()];
        assert!(config.origin_allowed(Some("https://good.example")));
        assert!(!config.origin_allowed(Some("https://evil.example")));
        assert!(config.origin_allowed(None));
    }

    #[test]
    fn defaults_leave_room_to_echo_a_largest_message() {
        let config = Config::default();
        assert!(config.max_send_queue > config.max_message_size + config.write_high_water + 14);
        assert!(config.max_connections >= 16);
    }
}
