//! The memory grant: the receiver asks before it holds more of a peer's bytes, and holds
//! no more than it was granted.

use super::deflate::{compressed, deflate_receiver};
use super::*;

/// A memory grant that allows `room` bytes in all and records what was asked.
struct Allowance {
    room: usize,
    used: usize,
    asked_with: Vec<usize>,
}

impl MemoryGrant for Allowance {
    fn grant(&mut self, held: usize, bytes: usize) -> bool {
        self.asked_with.push(held);
        if self.used + bytes > self.room {
            return false;
        }
        self.used += bytes;
        true
    }
}

/// Feeds `stream` in `piece`-byte reads within `memory`; the events, or the error.
fn feed_within(
    rx: &mut Receiver,
    stream: &[u8],
    piece: usize,
    memory: &mut Allowance,
) -> Result<Vec<OwnedEvent>, ProtocolError> {
    let mut events = Vec::new();
    for chunk in stream.chunks(piece) {
        let mut chunk = chunk.to_vec();
        let mut pos = 0;
        while pos < chunk.len() {
            let progress = rx.read_within(&mut chunk[pos..], memory)?;
            pos += progress.consumed;
            events.extend(progress.event.map(OwnedEvent::from));
            assert!(
                rx.held() <= memory.used,
                "{} held, {} granted",
                rx.held(),
                memory.used
            );
        }
    }
    Ok(events)
}

#[test]
fn a_fragmented_message_is_assembled_within_what_is_granted() {
    let message = vec![7u8; 100_000];
    let mut stream = frame(false, 0x2, &message[..60_000]);
    stream.extend(frame(true, 0x0, &message[60_000..]));
    let mut memory = Allowance {
        room: 200_000,
        used: 0,
        asked_with: Vec::new(),
    };
    let events = feed_within(&mut Receiver::new(1 << 20), &stream, 4096, &mut memory);
    assert_eq!(events, Ok(vec![OwnedEvent::Binary(message.clone())]));
    // Each request says what the receiver held then: never less than before.
    assert!(memory.asked_with.windows(2).all(|w| w[0] <= w[1]));

    let mut tight = Allowance {
        room: 80_000,
        used: 0,
        asked_with: Vec::new(),
    };
    let result = feed_within(&mut Receiver::new(1 << 20), &stream, 4096, &mut tight);
    assert_eq!(result, Err(ProtocolError::OverBudget));
    assert!(tight.used <= 80_000);
}

#[test]
fn a_compressed_bomb_stops_at_the_grant_not_at_the_size_limit() {
    let bomb = compressed(&vec![0u8; 8 << 20]);
    let mut stream = frame(true, 0x2, &bomb);
    stream[0] |= 0x40;
    let mut rx = deflate_receiver(16 << 20);
    let mut memory = Allowance {
        room: 1 << 20,
        used: 0,
        asked_with: Vec::new(),
    };
    assert_eq!(
        feed_within(&mut rx, &stream, 1000, &mut memory),
        Err(ProtocolError::OverBudget)
    );
    assert!(memory.used <= 1 << 20);
    // With room for it, the same message is fine.
    let mut rx = deflate_receiver(16 << 20);
    let mut memory = Allowance {
        room: 32 << 20,
        used: 0,
        asked_with: Vec::new(),
    };
    let events = feed_within(&mut rx, &stream, 1000, &mut memory).unwrap();
    assert_eq!(events, vec![OwnedEvent::Binary(vec![0u8; 8 << 20])]);
}

#[test]
fn a_refused_grant_is_reported_as_try_again_later() {
    assert_eq!(
        ProtocolError::OverBudget.close_code(),
        CloseCode::TRY_AGAIN_LATER
    );
    let mut rx = Receiver::new(1 << 20);
    let mut stream = frame(true, 0x2, &[1; 10_000]);
    let mut nothing = Allowance {
        room: 0,
        used: 0,
        asked_with: Vec::new(),
    };
    // A frame wholly in one read is handed out in place: it needs no grant.
    assert!(feed_within(&mut rx, &stream, stream.len(), &mut nothing).is_ok());
    stream = frame(true, 0x2, &[1; 10_000]);
    assert_eq!(
        feed_within(&mut Receiver::new(1 << 20), &stream, 1000, &mut nothing),
        Err(ProtocolError::OverBudget)
    );
}
