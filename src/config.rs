//! Every limit the server enforces, in one place, each with its default and the reason.

/// Limits and sizes for a [`Server`](crate::Server).
///
/// The defaults suit a public echo or chat service: large enough for the Autobahn
/// TestSuite's 16 MiB messages, small enough that no single peer can take the machine.
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
    /// buffer at all; bigger reads mean fewer syscalls for large messages. Default: 64 KiB.
    pub read_buffer_size: usize,
    /// While more than this many bytes wait in a connection's send queue, the server
    /// stops reading from it, so a peer that sends without reading feels TCP
    /// backpressure instead of growing our memory. Reading resumes once the queue
    /// drains to half of this. Default: 1 MiB.
    pub write_high_water: usize,
    /// A send that would take a connection's queue past this many bytes is refused
    /// ([`SendStatus::Refused`](crate::SendStatus::Refused)): the cap on memory one slow
    /// consumer can hold. It exceeds `max_message_size + write_high_water`, so echoing a
    /// largest message is never refused. Default: 40 MiB.
    pub max_send_queue: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_message_size: 16 << 20,
            max_header_bytes: 16 << 10,
            read_buffer_size: 64 << 10,
            write_high_water: 1 << 20,
            max_send_queue: 40 << 20,
        }
    }
}
