//! A connection's outgoing bytes that the socket has not taken yet, and the loop-wide
//! count of them.
//!
//! The queue is a list of chunks, so a large queue is never moved: bytes are appended
//! at the back and whole chunks leave from the front as the socket takes them (a
//! single growing buffer would have to be compacted, copying up to the whole queue on
//! the loop thread). A frame sent to many connections (broadcast, publish) is stored
//! once and shared by every queue that holds it.
//!
//! A connection whose queue policy drops messages (`QueuePolicy::DropOldest`,
//! `Close`) queues each whole data message as a chunk of its own, so that it can be
//! dropped without touching its neighbours: message boundaries cost nothing for the
//! others, whose small frames share a buffer.
//!
//! Every byte a queue holds is counted in a [`Meter`] the whole loop shares, so the
//! total over all connections can be bounded (`Config::outgoing_budget`); a shared
//! frame counts once, for as long as any queue holds it.
//!
//! Buffers: a queue that drained keeps one small buffer (up to 64 KiB) for its next
//! sends while traffic flows, and gives it up when the connection goes quiet. The
//! larger buffers that a partial write of a large frame or of a streamed part needs
//! (up to a read buffer's worth) go back, once written, to a small pool the whole loop
//! shares ([`POOL_BYTES`] at most), so that a steady stream of large messages
//! allocates nothing per message, and an idle connection still holds nothing.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A queue that drained keeps a buffer of up to this size for the next sends, so the
/// steady echo path allocates nothing; larger ones are released.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Small sends are appended to the last chunk while it stays under this size.
const CHUNK_TARGET: usize = 64 * 1024;

/// Chunks handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// The loop's pool of drained queue buffers holds at most this many bytes (of
/// capacity): a bound of its own, beside the outgoing budget, like the read buffer.
pub(crate) const POOL_BYTES: usize = 2 << 20;

/// ... and at most this many buffers.
const POOL_BUFFERS: usize = 32;

/// The pool is emptied at the first turn after it has gone unused this long (ms):
/// a loop whose large messages stopped gives the memory back.
pub(crate) const POOL_IDLE: u64 = 1000;

/// Buffers from this size up to [`POOL_MAX_BUFFER`] are pooled (the tail of a
/// streamed message that finds the queue busy is often small); smaller ones are not
/// worth a slot.
const POOL_MIN_BUFFER: usize = 1024;

/// The largest pooled buffer: a part streamed from a full read (128 KiB by default)
/// with its header, with room to spare; larger frames are rare and not pooled.
const POOL_MAX_BUFFER: usize = 256 * 1024;

/// New queue buffers of 16 KiB or more are allocated in multiples of this, so that
/// a pooled one fits requests a little larger than the one it was made for (at most
/// a quarter wasted; smaller buffers, of which a slow reader's queue may hold many,
/// are made to measure).
const POOL_GRANULE: usize = 4096;

/// Bytes held for sending by the whole loop, and the loop's clock as of this turn.
/// Shared with the queues and frames it counts, which give their bytes back when they
/// are dropped, and which stamp with the clock when a socket last took their bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter(Arc<MeterState>);

#[derive(Debug, Default)]
struct MeterState {
    bytes: AtomicUsize,
    now: AtomicU64,
    /// Drained queue buffers for the loop's next partial writes (behind a mutex only
    /// because the meter is shared with frames that may be dropped elsewhere: one
    /// thread takes it, uncontended).
    pool: Mutex<Pool>,
    /// What the pool holds (its `bytes`, readable without the lock).
    pooled: AtomicUsize,
    /// When the pool was last used (the loop's time).
    pool_used: AtomicU64,
}

/// Drained queue buffers kept for reuse, at most [`POOL_BUFFERS`] of them and
/// [`POOL_BYTES`] in all.
#[derive(Debug, Default)]
struct Pool {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl Pool {
    /// The smallest pooled buffer that holds `len` bytes, emptied.
    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        let (index, _) = self
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())?;
        let buffer = self.buffers.swap_remove(index);
        self.bytes -= buffer.capacity();
        Some(buffer)
    }

    /// Keeps `buffer` if it is of a pooled size and fits the bounds, replacing a
    /// smaller one if need be (a larger buffer serves more requests); otherwise it is
    /// freed.
    fn give(&mut self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if !(POOL_MIN_BUFFER..=POOL_MAX_BUFFER).contains(&capacity) {
            return;
        }
        if self.buffers.len() == POOL_BUFFERS || self.bytes + capacity > POOL_BYTES {
            let Some((index, _)) = self
                .buffers
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.capacity())
                .filter(|(_, b)| b.capacity() < capacity)
            else {
                return;
            };
            let smaller = self.buffers.swap_remove(index);
            self.bytes -= smaller.capacity();
            if self.bytes + capacity > POOL_BYTES {
                return;
            }
        }
        if self.buffers.capacity() == 0 {
            self.buffers.reserve_exact(POOL_BUFFERS);
        }
        buffer.clear();
        self.bytes += capacity;
        self.buffers.push(buffer);
    }
}

impl Meter {
    pub fn get(&self) -> usize {
        self.0.bytes.load(Ordering::Relaxed)
    }

    /// Sets the loop's time (once per turn).
    pub fn set_now(&self, now: u64) {
        self.0.now.store(now, Ordering::Relaxed);
        if self.pooled() > 0 && now >= self.0.pool_used.load(Ordering::Relaxed) + POOL_IDLE {
            let mut pool = self.pool();
            pool.buffers = Vec::new();
            pool.bytes = 0;
            self.0.pooled.store(0, Ordering::Relaxed);
        }
    }

    /// The loop's time as of this turn.
    pub fn now(&self) -> u64 {
        self.0.now.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.0.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A buffer for `len` bytes: a pooled one if one is large enough, else a new one
    /// (of a size the pool will take back, if `len` is in its range).
    fn buffer(&self, len: usize) -> Vec<u8> {
        if len > POOL_MAX_BUFFER || (len < POOL_MIN_BUFFER && self.pooled() == 0) {
            return Vec::with_capacity(len);
        }
        let mut pool = self.pool();
        let buffer = pool.take(len);
        self.pool_used(&pool);
        buffer.unwrap_or_else(|| {
            Vec::with_capacity(if len < 16 * 1024 {
                len
            } else {
                len.next_multiple_of(POOL_GRANULE)
            })
        })
    }

    /// Gives a buffer nobody needs any more to the pool (which may free it).
    fn recycle(&self, buffer: Vec<u8>) {
        if (POOL_MIN_BUFFER..=POOL_MAX_BUFFER).contains(&buffer.capacity()) {
            let mut pool = self.pool();
            pool.give(buffer);
            self.pool_used(&pool);
        }
    }

    fn pool_used(&self, pool: &Pool) {
        self.0.pooled.store(pool.bytes, Ordering::Relaxed);
        self.0.pool_used.store(self.now(), Ordering::Relaxed);
    }

    /// Bytes of capacity the loop's buffer pool holds.
    pub fn pooled(&self) -> usize {
        self.0.pooled.load(Ordering::Relaxed)
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while it was held cannot leave the pool inconsistent enough to
        // matter: it is only a cache.
        self.0.pool.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Bytes of one or more frames, or the rest of one the socket took part of.
    Owned(Vec<u8>),
    /// One whole data message, queued alone so that it can be dropped whole.
    Whole(Vec<u8>),
    /// One whole data message shared with other queues (fan-out sends nothing else).
    Shared(Arc<SharedFrame>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(bytes) | Chunk::Whole(bytes) => bytes,
            Chunk::Shared(frame) => frame.bytes(),
        }
    }

    /// What this chunk costs the meter on its own (a shared frame is counted by itself).
    fn owned_cost(&self) -> usize {
        match self {
            Chunk::Owned(bytes) | Chunk::Whole(bytes) => bytes.capacity(),
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
    /// Messages this connection missed (refused, or dropped from the queue) that the
    /// loop has not counted and reported yet.
    dropped: u32,
    /// Whether the loop has this queue's connection on its list of drops to report.
    listed: bool,
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
            // Append to the last buffer while it stays small, or has room already (a
            // pooled one): corked frames leave in one write, and nothing is allocated.
            Some(Chunk::Owned(last)) if last.len() + len <= CHUNK_TARGET.max(last.capacity()) => {
                self.owned -= last.capacity();
                for part in parts {
                    last.extend_from_slice(part);
                }
                self.owned += last.capacity();
            }
            _ => {
                let buffer = self.buffer(parts, len);
                self.chunks.push_back(Chunk::Owned(buffer));
            }
        }
        self.pending += len;
        self.recount();
    }

    /// Queues one whole data message as a chunk of its own.
    fn push_whole(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let buffer = self.buffer(parts, len);
        self.chunks.push_back(Chunk::Whole(buffer));
        self.pending += len;
        self.recount();
    }

    /// A new buffer holding `parts` (`len` bytes): the spare one if it fits, else one
    /// from the loop's pool.
    fn buffer(&mut self, parts: &[&[u8]], len: usize) -> Vec<u8> {
        let mut buffer = if len <= self.spare.capacity() {
            std::mem::take(&mut self.spare)
        } else {
            self.meter.buffer(len)
        };
        for part in parts {
            buffer.extend_from_slice(part);
        }
        self.owned += buffer.capacity();
        buffer
    }

    /// Drops the oldest whole messages until at least `over` bytes are freed or none
    /// is left to drop; how many were dropped. Never a message the socket has taken
    /// part of (the front chunk once written into), never anything but a whole data
    /// message (a control frame, the rest of a frame, merged small frames stay).
    fn drop_oldest(&mut self, over: usize) -> usize {
        let (mut freed, mut owned, mut count, mut index) = (0, 0, 0, 0);
        let front_sent = self.front_sent;
        self.chunks.retain(|chunk| {
            let first = index == 0;
            index += 1;
            let whole = matches!(chunk, Chunk::Whole(_) | Chunk::Shared(_));
            if freed >= over || !whole || (first && front_sent > 0) {
                return true;
            }
            freed += chunk.bytes().len();
            owned += chunk.owned_cost();
            count += 1;
            false
        });
        self.pending -= freed;
        self.owned -= owned;
        if count > 0 {
            self.recount();
        }
        count
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
                if let Chunk::Owned(mut buffer) | Chunk::Whole(mut buffer) = chunk {
                    if buffer.capacity() <= RETAINED_CAPACITY
                        && buffer.capacity() > self.spare.capacity()
                    {
                        buffer.clear();
                        buffer = std::mem::replace(&mut self.spare, buffer);
                    }
                    self.meter.recycle(buffer);
                }
            }
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.meter.sub(self.counted);
        // Shed (the connection went quiet) or dropped: its buffers serve the others.
        self.meter.recycle(std::mem::take(&mut self.spare));
        for chunk in self.chunks.drain(..) {
            if let Chunk::Owned(buffer) | Chunk::Whole(buffer) = chunk {
                self.meter.recycle(buffer);
            }
        }
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

    /// Releases everything if nothing waits (for a connection that has gone quiet),
    /// and no drops wait to be reported.
    pub fn shed(&mut self) {
        if self.pending() == 0 && self.queue.as_ref().is_none_or(|q| q.dropped == 0) {
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
                dropped: 0,
                listed: false,
                meter: meter.clone(),
            });
            queue.recount();
            queue
        })
    }

    pub fn push(&mut self, meter: &Meter, parts: &[&[u8]]) {
        self.queue(meter).push_owned(parts);
    }

    /// Queues one whole data message as a chunk of its own, so that it can be dropped
    /// whole later ([`drop_oldest`](Self::drop_oldest)).
    pub fn push_whole(&mut self, meter: &Meter, parts: &[&[u8]]) {
        self.queue(meter).push_whole(parts);
    }

    /// Queues a frame shared with other queues: one whole data message.
    pub fn push_shared(&mut self, meter: &Meter, frame: &Arc<SharedFrame>) {
        self.queue(meter).push_shared(frame);
    }

    /// Drops the oldest whole messages waiting (queued with
    /// [`push_whole`](Self::push_whole) or shared) until `over` bytes are freed or
    /// none is left; how many were dropped. See [`Queue::drop_oldest`].
    pub fn drop_oldest(&mut self, over: usize) -> usize {
        match &mut self.queue {
            Some(queue) if over > 0 => queue.drop_oldest(over),
            _ => 0,
        }
    }

    /// Notes `count` messages the connection missed, to be counted and reported.
    pub fn note_dropped(&mut self, meter: &Meter, count: usize) {
        if count > 0 {
            let queue = self.queue(meter);
            queue.dropped = queue
                .dropped
                .saturating_add(count.min(u32::MAX as usize) as u32);
        }
    }

    /// Whether drops are noted that the loop has not listed for reporting yet; true
    /// once until they are taken.
    pub fn take_unlisted_drops(&mut self) -> bool {
        match &mut self.queue {
            Some(queue) if queue.dropped > 0 && !queue.listed => {
                queue.listed = true;
                true
            }
            _ => false,
        }
    }

    /// The drops noted since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        match &mut self.queue {
            Some(queue) => {
                queue.listed = false;
                std::mem::take(&mut queue.dropped) as u64
            }
            None => 0,
        }
    }

    /// Writes as much as the socket takes; `Ok(true)` once the queue is empty.
    pub fn write_to(&mut self, socket: impl Write) -> io::Result<bool> {
        match &mut self.queue {
            None => Ok(true),
            Some(queue) => {
                let done = queue.write_to(socket)?;
                if done && queue.spare.capacity() > RETAINED_CAPACITY {
                    let spare = std::mem::take(&mut queue.spare);
                    queue.meter.recycle(spare);
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

    /// Where the front chunk's bytes are (to tell a reused buffer from a new one).
    fn front_ptr(out: &Outbox) -> *const u8 {
        out.queue.as_ref().unwrap().chunks[0].bytes().as_ptr()
    }

    #[test]
    fn a_large_drained_buffer_goes_to_the_loops_pool_and_serves_the_next_queue() {
        let meter = Meter::default();
        let mut a = Outbox::default();
        // The rest of a large frame the socket did not take: too large to be kept
        // as a's spare, so it goes to the pool once written.
        a.push(&meter, &[&[1; 100_000]]);
        let buffer = front_ptr(&a);
        assert_eq!(drain(&mut a), [1; 100_000]);
        assert_eq!(meter.pooled(), 100_000usize.next_multiple_of(POOL_GRANULE));
        // Another connection's queue (or a's again) takes it: no allocation.
        let mut b = Outbox::default();
        b.push(&meter, &[&[2; 3], &[3; 90_000]]);
        assert_eq!(front_ptr(&b), buffer);
        assert_eq!(meter.pooled(), 0);
        // The pool is not counted against the outgoing budget; a queue is.
        assert!(meter.get() >= 90_003);
        b.clear();
        a.clear();
        assert_eq!(meter.get(), 0);
        assert!(meter.pooled() > 0);
    }

    #[test]
    fn a_small_send_behind_a_large_one_takes_a_pooled_buffer() {
        let meter = Meter::default();
        let mut a = Outbox::default();
        a.push(&meter, &[&[1; 40_000]]);
        a.push(&meter, &[&[2; 40_000]]);
        drain(&mut a);
        // One became the spare, the other is pooled.
        assert!(meter.pooled() >= 40_000);
        let mut b = Outbox::default();
        b.push(&meter, &[&[3; 65_000]]);
        let pooled = meter.pooled();
        // The tail of a streamed message, behind a full chunk: served from the pool.
        b.push(&meter, &[&[4; 900]]);
        assert!(meter.pooled() < pooled);
        b.clear();
        a.clear();
    }

    #[test]
    fn the_pool_is_bounded_and_takes_only_buffers_of_pooled_sizes() {
        let meter = Meter::default();
        for _ in 0..2 * POOL_BUFFERS {
            meter.recycle(Vec::with_capacity(POOL_MAX_BUFFER));
        }
        assert!(meter.pooled() <= POOL_BYTES);
        assert!(meter.pool().buffers.len() <= POOL_BUFFERS);
        let full = meter.pooled();
        // Smaller buffers do not push larger ones out; larger than the largest pooled
        // size and smaller than the smallest are freed.
        meter.recycle(Vec::with_capacity(POOL_MIN_BUFFER));
        meter.recycle(Vec::with_capacity(POOL_MAX_BUFFER + 1));
        meter.recycle(Vec::with_capacity(POOL_MIN_BUFFER - 1));
        assert_eq!(meter.pooled(), full);
        // A request larger than any pooled buffer is a new allocation, not a pooled one.
        let big = meter.buffer(POOL_MAX_BUFFER + 1);
        assert_eq!(big.capacity(), POOL_MAX_BUFFER + 1);
        assert_eq!(meter.pooled(), full);
    }

    #[test]
    fn the_pool_is_emptied_once_unused_for_a_while() {
        let meter = Meter::default();
        meter.set_now(10);
        let mut out = Outbox::default();
        out.push(&meter, &[&[0; 70_000]]);
        drain(&mut out);
        assert!(meter.pooled() > 0);
        meter.set_now(10 + POOL_IDLE - 1);
        assert!(meter.pooled() > 0);
        meter.set_now(10 + POOL_IDLE);
        assert_eq!(meter.pooled(), 0);
        assert!(meter.pool().buffers.is_empty());
    }

    #[test]
    fn a_shed_queue_gives_its_spare_to_the_pool() {
        let meter = Meter::default();
        let mut out = Outbox::default();
        out.push(&meter, &[&[0; 20_000]]);
        drain(&mut out);
        // Kept as the queue's spare while traffic flows.
        assert_eq!(meter.pooled(), 0);
        out.shed();
        assert_eq!(meter.get(), 0);
        assert!(meter.pooled() >= 20_000);
    }

    /// Writes everything the queue holds into a byte vector.
    fn drain(out: &mut Outbox) -> Vec<u8> {
        let mut socket = Trickle {
            taken: Vec::new(),
            room: usize::MAX,
            calls: 0,
        };
        while !out.write_to(&mut socket).unwrap() {
            socket.room = usize::MAX;
        }
        socket.taken
    }

    #[test]
    fn drop_oldest_drops_whole_messages_oldest_first_and_only_as_many_as_needed() {
        let meter = Meter::default();
        let mut out = Outbox::default();
        let shared = SharedFrame::new(b"[s]".to_vec(), &meter);
        out.push_whole(&meter, &[b"[1", b"]"]);
        out.push(&meter, &[b"<ping>"]);
        out.push_shared(&meter, &shared);
        out.push_whole(&meter, &[b"[2]"]);
        out.push_whole(&meter, &[b"[3]"]);
        assert_eq!(out.pending(), 3 + 6 + 3 + 3 + 3);
        // 4 bytes over: two 3-byte messages go, the oldest ones ([1], then the shared
        // frame); the control frame between them stays.
        assert_eq!(out.drop_oldest(4), 2);
        assert_eq!(out.pending(), 6 + 3 + 3);
        assert_eq!(drain(&mut out), b"<ping>[2][3]");
        // Nothing to drop: zero, and nothing changes.
        assert_eq!(out.drop_oldest(100), 0);
        drop(shared);
        out.clear();
        assert_eq!(meter.get(), 0);
    }

    #[test]
    fn drop_oldest_never_drops_a_message_the_socket_took_part_of() {
        let meter = Meter::default();
        let mut out = Outbox::default();
        out.push_whole(&meter, &[b"[first]"]);
        out.push_whole(&meter, &[b"[second]"]);
        let mut socket = Trickle {
            taken: Vec::new(),
            room: 3,
            calls: 0,
        };
        assert!(!out.write_to(&mut socket).unwrap());
        assert_eq!(socket.taken, b"[fi");
        // Everything asked for: only the untouched message goes.
        assert_eq!(out.drop_oldest(usize::MAX), 1);
        assert_eq!(out.pending(), 4);
        socket.room = 100;
        assert!(out.write_to(&mut socket).unwrap());
        assert_eq!(socket.taken, b"[first]");
    }

    /// What a queued message costs a queue beside its bytes (the README's sizing
    /// advice for fan-out counts on it).
    #[test]
    fn a_chunk_is_small() {
        assert!(std::mem::size_of::<Chunk>() <= 32);
    }

    #[test]
    fn merged_small_frames_are_never_dropped() {
        let meter = Meter::default();
        let mut out = Outbox::default();
        // The default policy's pushes: appended into one buffer, no boundaries kept.
        out.push(&meter, &[b"[a]"]);
        out.push(&meter, &[b"[b]"]);
        assert_eq!(out.drop_oldest(usize::MAX), 0);
        assert_eq!(drain(&mut out), b"[a][b]");
    }

    #[test]
    fn the_meter_gives_back_what_dropped_messages_held() {
        let meter = Meter::default();
        let mut out = Outbox::default();
        out.push_whole(&meter, &[&[0; 100_000]]);
        out.push_whole(&meter, &[&[1; 10]]);
        let before = meter.get();
        assert_eq!(out.drop_oldest(1), 1);
        assert!(before - meter.get() >= 100_000);
        assert_eq!(drain(&mut out), [1; 10]);
    }

    #[test]
    fn drops_noted_are_listed_once_and_taken_once() {
        let meter = Meter::default();
        let mut out = Outbox::default();
        assert!(!out.take_unlisted_drops());
        assert_eq!(out.take_dropped(), 0);
        out.note_dropped(&meter, 2);
        out.note_dropped(&meter, 0);
        assert!(out.take_unlisted_drops());
        out.note_dropped(&meter, 1);
        assert!(!out.take_unlisted_drops());
        // A queue with drops to report is kept though empty.
        out.shed();
        assert_eq!(out.take_dropped(), 3);
        assert_eq!(out.take_dropped(), 0);
        out.note_dropped(&meter, 1);
        assert!(out.take_unlisted_drops());
        assert_eq!(out.take_dropped(), 1);
        out.shed();
        assert_eq!(meter.get(), 0);
    }
}
