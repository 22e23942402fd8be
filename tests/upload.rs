//! `examples/upload.rs` end to end: a 256 MiB file streamed through a real socket in
//! 1 MiB fragments, written to disk part by part, answered with its length and CRC-32,
//! while the process's peak RSS stays far below the file's size.
//!
//! One test in a binary of its own: the peak RSS (VmHWM) is the whole process's, so
//! nothing else may run beside it.

mod common;
#[path = "../examples/upload.rs"]
#[allow(dead_code)]
mod upload;

use common::*;
use std::time::Duration;
use upload::{Crc32, Upload};

const MIB: usize = 1 << 20;

/// The CRC-32 of "123456789" is CBF43926 (the standard check value), and the table
/// version agrees with a bit-at-a-time one written here.
#[test]
fn crc32_is_the_ieee_one() {
    let mut crc = Crc32::default();
    crc.update(b"123456789");
    assert_eq!(crc.value(), 0xCBF4_3926);
    let data = pattern(9, 10_000);
    let mut bitwise = 0xFFFF_FFFFu32;
    for &byte in &data {
        bitwise ^= u32::from(byte);
        for _ in 0..8 {
            bitwise = if bitwise & 1 != 0 {
                (bitwise >> 1) ^ 0xEDB8_8320
            } else {
                bitwise >> 1
            };
        }
    }
    let mut table = Crc32::default();
    table.update(&data[..1234]);
    table.update(&data[1234..]);
    assert_eq!(table.value(), !bitwise);
}

#[test]
fn a_256_mib_upload_is_written_part_by_part_with_flat_memory() {
    let dir = std::env::temp_dir().join(format!("wsreactor-upload-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = serve(Upload::config(), Upload::new(&dir));
    let mut client = Raw::open(addr);
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    client
        .stream
        .set_write_timeout(Some(Duration::from_secs(120)))
        .unwrap();

    // 256 fragments of 1 MiB: a different block each time, so a lost, repeated or
    // reordered part changes the checksum.
    let blocks: Vec<Vec<u8>> = (0..4).map(|seed| pattern(seed, MIB)).collect();
    let count = 256;
    let before = status_kib(std::process::id(), "VmHWM:");
    let mut crc = Crc32::default();
    for i in 0..count {
        let block = &blocks[i % blocks.len()];
        let opcode = if i == 0 { 0x2 } else { 0x0 };
        client.send(i == count - 1, opcode, block);
        crc.update(block);
        if i == count / 2 {
            // A control frame between fragments is answered mid-upload.
            client.send(true, 0x9, b"halfway");
        }
    }
    let pong = client.read_frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0xA, &b"halfway"[..])
    );
    let answer = client.read_frame();
    let after = status_kib(std::process::id(), "VmHWM:");
    assert_eq!((answer.opcode, answer.fin), (0x1, true));
    let answer = String::from_utf8(answer.payload).unwrap();
    let mut fields = answer.splitn(3, ' ');
    let (len, checksum, path) = (
        fields.next().unwrap(),
        fields.next().unwrap(),
        fields.next().unwrap(),
    );
    assert_eq!(len, (count * MIB).to_string());
    assert_eq!(checksum, format!("{:08x}", crc.value()));
    let written = std::fs::metadata(path).unwrap().len();
    assert_eq!(written, (count * MIB) as u64);
    // The file holds the blocks in order (checked at a few places).
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(path).unwrap();
        for i in [0, 1, 2, 3, 130, count - 1] {
            let mut block = vec![0; MIB];
            file.seek(SeekFrom::Start((i * MIB) as u64)).unwrap();
            file.read_exact(&mut block).unwrap();
            assert!(block == blocks[i % blocks.len()], "block {i} differs");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // The client's own buffers are a few MiB; a server that held the file would have
    // grown by 256 MiB.
    let growth_kib = after.saturating_sub(before);
    eprintln!("VmHWM before {before} KiB, after {after} KiB: growth {growth_kib} KiB");
    assert!(
        growth_kib < 16 * 1024,
        "peak RSS grew by {growth_kib} KiB while 256 MiB streamed through"
    );
    client.close_cleanly();
}
