//! A connection's outgoing bytes that the socket has not taken yet, and the loop-wide
//! count of them.
//!
//! The queue is a list of chunks, so a large queue is never moved: bytes are appended
//! at the back and whole chunks leave from the front as the socket takes them (a
//! single growing buffer would have to be compacted, copying up to the whole queue on
//! the loop thread). A frame sent to many connections (broadcast, publish) is stored
//! once and shared by every queue that holds it.
//!
//! Every byte a queue holds is counted in a [`Meter`] the whole loop shares, so the
//! total over all connections can be bounded (`Config::outgoing_budget`); a shared
//! frame counts once, for as long as any queue holds it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// A queue that drained keeps a buffer of up to this size for the next sends, so the
/// steady echo path allocates nothing; larger ones are released.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Small sends are appended to the last chunk while it stays under this size.
const CHUNK_TARGET: usize = 64 * 1024;

/// Chunks handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Bytes held for sending by the whole loop, and the loop's clock as of this turn.
/// Shared with the queues and frames it counts, which give their bytes back when they
/// are dropped, and which stamp with the clock when a socket last took their bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter(Arc<MeterState>);

#[derive(Debug, Default)]
struct MeterState {
    bytes: AtomicUsize,
    now: AtomicU64,
}

impl Meter {
    pub fn get(&self) -> usize {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Sets the loop's time (once per turn).
    pub fn set_now(&self, now: u64) {
        self.0.now.store(now, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.0.now.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.0.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One encoded frame for many receivers, counted once in the meter while any queue
/// holds it.
#[derive(Debug)]
pub(crate) struct SharedFrame {
    bytes: Box<[u8]>,
    meter: Meter,
}

impl SharedFrame {
    pub fn new(bytes: Vec<u8>, meter: &Meter) -> Arc<SharedFrame> {
        let bytes = bytes.into_boxed_slice();
        meter.add(bytes.len());
        Arc::new(SharedFrame {
            bytes,
            meter: meter.clone(),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for SharedFrame {
    fn drop(&mut self) {
        self.meter.sub(self.bytes.len());
    }
}

#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<SharedFrame>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(bytes) => bytes,
            Chunk::Shared(frame) => frame.bytes(),
        }
    }

    /// What this chunk costs the meter on its own (a shared frame is counted by itself).
    fn owned_cost(&self) -> usize {
        match self {
            Chunk::Owned(bytes) => bytes.capacity(),
            Chunk::Shared(_) => 0,
        }
    }
}

#[derive(Debug)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_sent: usize,
    /// Bytes waiting, over all chunks.
    pending: usize,
    /// A drained buffer kept for the next small sends.
    spare: Vec<u8>,
    /// Capacity of the owned chunks in `chunks`.
    owned: usize,
    /// What this queue has added to the meter.
    counted: usize,
    /// When the socket last took bytes from this queue (or it was made): a reader
    /// that stopped reading shows as a queue that has not moved for long.
    moved: u64,
    meter: Meter,
}

impl Queue {
    fn cost(&self) -> usize {
        std::mem::size_of::<Queue>()
            + self.chunks.capacity() * std::mem::size_of::<Chunk>()
            + self.owned
            + self.spare.capacity()
    }

    /// Brings the meter up to date with what this queue holds now.
    fn recount(&mut self) {
        let cost = self.cost();
        // Usually nothing changed (a small send reused the spare buffer): no atomic op.
        if cost > self.counted {
            self.meter.add(cost - self.counted);
        } else if cost < self.counted {
            self.meter.sub(self.counted - cost);
        }
        self.counted = cost;
    }

    fn push_owned(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 {
            return;
        }
        match self.chunks.back_mut() {
            // Append to the last buffer while it stays small: corked frames leave in
            // one write.
            Some(Chunk::Owned(last)) if last.len() + len <= CHUNK_TARGET => {
                self.owned -= last.capacity();
                for part in parts {
                    last.extend_from_slice(part);
                }
                self.owned += last.capacity();
            }
            _ => {
                let mut buffer = if self.chunks.is_empty() && len <= self.spare.capacity() {
                    std::mem::take(&mut self.spare)
                } else {
                    Vec::with_capacity(len)
                };
                for part in parts {
                    buffer.extend_from_slice(part);
                }
                self.owned += buffer.capacity();
                self.chunks.push_back(Chunk::Owned(buffer));
            }
        }
        self.pending += len;
        self.recount();
    }

    fn push_shared(&mut self, frame: &Arc<SharedFrame>) {
        self.pending += frame.bytes().len();
        self.chunks.push_back(Chunk::Shared(Arc::clone(frame)));
        self.recount();
    }

    /// Writes as much as the socket takes; `Ok(true)` once the queue is empty.
    fn write_to(&mut self, mut socket: impl Write) -> io::Result<bool> {
        let result = loop {
            if self.pending == 0 {
                break Ok(true);
            }
            let written = if self.chunks.len() == 1 {
                // The usual case (corked replies in one buffer): a plain write.
                socket.write(&self.chunks[0].bytes()[self.front_sent..])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                    let skip = if i == 0 { self.front_sent } else { 0 };
                    slices[i] = IoSlice::new(&chunk.bytes()[skip..]);
                    count = i + 1;
                }
                socket.write_vectored(&slices[..count])
            };
            match written {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.advance(n);
                    self.moved = self.meter.now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.recount();
        result
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.front_sent;
            if n < left {
                self.front_sent += n;
                return;
            }
            n -= left;
            self.front_sent = 0;
            let chunk = self.chunks.pop_front();
            if let Some(chunk) = chunk {
                self.owned -= chunk.owned_cost();
                if let Chunk::Owned(mut buffer) = chunk {
                    if buffer.capacity() <= RETAINED_CAPACITY
                        && buffer.capacity() > self.spare.capacity()
                    {
                        buffer.clear();
                        self.spare = buffer;
                    }
                }
            }
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.meter.sub(self.counted);
    }
}

/// Bytes accepted for sending that the socket has not taken yet. A connection that
/// never had to queue, or whose queue was shed while idle, holds nothing but a null
/// pointer.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Option<Box<Queue>>,
}

impl Outbox {
    pub fn pending(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.pending)
    }

    /// When the socket last took bytes from the queue, or the queue was made.
    pub fn last_moved(&self) -> u64 {
        self.queue.as_ref().map_or(0, |q| q.moved)
    }

    /// Releases everything if nothing waits (for a connection that has gone quiet).
    pub fn shed(&mut self) {
        if self.pending() == 0 {
            self.queue = None;
        }
    }

    /// Drops whatever waits, unsent (the connection is being dropped).
    pub fn clear(&mut self) {
        self.queue = None;
    }

    fn queue(&mut self, meter: &Meter) -> &mut Queue {
        self.queue.get_or_insert_with(|| {
            let mut queue = Box::new(Queue {
                chunks: VecDeque::new(),
                front_sent: 0,
                pending: 0,
                spare: Vec::new(),
                owned: 0,
                counted: 0,
                moved: meter.now(),
                meter: meter.clone(),
            });
            queue.recount();
            queue
        })
    }

    pub fn push(&mut self, meter: &Meter, parts: &[&[u8]]) {
        self.queue(meter).push_owned(parts);
    }

    pub fn push_shared(&mut self, meter: &Meter, frame: &Arc<SharedFrame>) {
        self.queue(meter).push_shared(frame);
    }

    /// Writes as much as the socket takes; `Ok(true)` once the queue is empty.
    pub fn write_to(&mut self, socket: impl Write) -> io::Result<bool> {
        match &mut self.queue {
            None => Ok(true),
            Some(queue) => {
                let done = queue.write_to(socket)?;
                if done && queue.spare.capacity() > RETAINED_CAPACITY {
                    queue.spare = Vec::new();
                    queue.recount();
                }
                Ok(done)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes per call, then says WouldBlock.
    struct Trickle {
        taken: Vec<u8>,
        room: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.room - n);
                self.taken.extend_from_slice(&buf[..take]);
                n += take;
                if n == self.room {
                    break;
                }
            }
            self.room = 0;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_leave_in_order_across_owned_and_shared_chunks() {
        let meter = Meter::default();
        let shared = SharedFrame::new(b"SHARED".to_vec(), &meter);
        let mut out = Outbox::default();
        out.push(&meter, &[b"ab", b"cd"]);
        out.push_shared(&meter, &shared);
        out.push(&meter, &[&[b'x'; 70_000]]);
        out.push(&meter, &[b"end"]);
        let total = 4 + 6 + 70_000 + 3;
        assert_eq!(out.pending(), total);
        let mut socket = Trickle {
            taken: Vec::new(),
            room: 0,
            calls: 0,
        };
        let mut rounds = 0;
        while !out.write_to(&mut socket).unwrap() {
            socket.room = 7 + rounds % 5000;
            rounds += 1;
        }
        let mut expected = b"abcdSHARED".to_vec();
        expected.extend_from_slice(&[b'x'; 70_000]);
        expected.extend_from_slice(b"end");
        assert_eq!(socket.taken, expected);
        assert_eq!(out.pending(), 0);
    }

    #[test]
    fn the_meter_counts_what_queues_hold_and_a_shared_frame_once() {
        let meter = Meter::default();
        let frame = SharedFrame::new(vec![7; 10_000], &meter);
        let mut queues: Vec<Outbox> = (0..100).map(|_| Outbox::default()).collect();
        for out in &mut queues {
            out.push_shared(&meter, &frame);
        }
        drop(frame);
        let overhead = meter.get() - 10_000;
        // 100 queues hold the frame; it is counted once, plus each queue's own small
        // bookkeeping.
        assert!(overhead < 100 * 512, "overhead {overhead}");
        queues[0].push(&meter, &[&[1; 50_000]]);
        assert!(meter.get() >= 60_000);
        for out in &mut queues {
            out.clear();
        }
        assert_eq!(meter.get(), 0);
    }

    #[test]
    fn a_large_queue_is_never_copied_to_take_more() {
        let meter = Meter::default();
        let mut out = Outbox::default();
        out.push(&meter, &[&vec![1; 8 << 20]]);
        let mut socket = Trickle {
            taken: Vec::new(),
            room: 4096,
            calls: 0,
        };
        assert!(!out.write_to(&mut socket).unwrap());
        // The 8 MiB chunk stays where it is: the next small push is a new chunk, not a
        // compaction of the first.
        let before = meter.get();
        out.push(&meter, &[b"tail"]);
        assert!(meter.get() - before < 1024);
        assert_eq!(out.pending(), (8 << 20) - 4096 + 4);
    }

    #[test]
    fn a_drained_queue_keeps_one_small_buffer_and_sheds_it_when_asked() {
        let meter = Meter::default();
        let mut out = Outbox::default();
        out.push(&meter, &[&[0; 100]]);
        let mut socket = Trickle {
            taken: Vec::new(),
            room: 1000,
            calls: 0,
        };
        assert!(out.write_to(&mut socket).unwrap());
        let kept = meter.get();
        assert!(kept > 0);
        // The next push reuses the buffer: the meter does not move.
        out.push(&meter, &[&[0; 50]]);
        assert_eq!(meter.get(), kept);
        socket.room = 1000;
        assert!(out.write_to(&mut socket).unwrap());
        out.shed();
        assert_eq!(meter.get(), 0);
    }
}
