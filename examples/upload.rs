//! Uploads of any size, received in parts: each client message is a file, written to
//! disk part by part as it arrives and answered with its length and CRC-32, so the
//! server's memory stays flat however large the file is.
//!
//! `cargo run --release --example upload [ADDR] [DIR]` (or `UPLOAD_DIR=...`; default: the
//! system's temp dir), then send a binary message to `ws://ADDR/`; the answer is a text
//! message `"<length> <crc32 in hex> <path>"`. Files up to 4 GiB − 1 (the largest
//! streamed message the server takes).
//!
//! Writing on the loop thread blocks it for as long as the disk takes: fine for an
//! example and a local disk, not for a server with many latency-sensitive clients (hand
//! the parts to a writer thread there, and come back through a `Handle`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use wsreactor::{CloseCode, CloseReason, Config, ConnId, Ctx, Handler, Message, Part, Server};

/// Receives uploads into `dir`.
pub struct Upload {
    dir: PathBuf,
    /// Numbers the files, so that uploads never overwrite each other.
    next: u64,
}

impl Upload {
    /// Writes uploads into `dir` (which must exist).
    pub fn new(dir: impl Into<PathBuf>) -> Upload {
        Upload {
            dir: dir.into(),
            next: 0,
        }
    }

    /// The server configuration the example runs with: the largest streamed message
    /// the server takes (4 GiB − 1); the whole-message limit does not apply to a
    /// connection in parts mode.
    pub fn config() -> Config {
        Config {
            max_streamed_message_size: u64::MAX,
            ..Config::default()
        }
    }
}

/// One connection's upload in progress.
#[derive(Default)]
pub struct Receiving {
    file: Option<(BufWriter<File>, PathBuf)>,
    len: u64,
    crc: Crc32,
}

impl Handler for Upload {
    type Session = Receiving;

    fn on_open(&mut self, cx: &mut Ctx<'_, Receiving>) {
        // Parts for this connection (or `Config::message_parts` for all of them).
        cx.receive_in_parts(true);
    }

    fn on_part(&mut self, cx: &mut Ctx<'_, Receiving>, part: Part<'_>) {
        if part.first {
            let path = self
                .dir
                .join(format!("upload-{}-{}.bin", std::process::id(), self.next));
            self.next += 1;
            match File::create(&path) {
                Ok(file) => {
                    *cx.session() = Receiving {
                        file: Some((BufWriter::with_capacity(64 << 10, file), path)),
                        ..Receiving::default()
                    }
                }
                Err(e) => return fail(cx, &format!("cannot create a file: {e}")),
            }
        }
        let session = cx.session();
        let Some((file, _)) = session.file.as_mut() else {
            // The file failed earlier in this message; the connection is closing.
            return;
        };
        if let Err(e) = file.write_all(part.as_bytes()) {
            return fail(cx, &format!("cannot write: {e}"));
        }
        session.len += part.len() as u64;
        session.crc.update(part.as_bytes());
        if part.last {
            let (mut file, path) = session.file.take().expect("checked above");
            if let Err(e) = file.flush() {
                return fail(cx, &format!("cannot write: {e}"));
            }
            let answer = format!(
                "{} {:08x} {}",
                session.len,
                session.crc.value(),
                path.display()
            );
            let _ = cx.send_text(&answer);
        }
    }

    fn on_message(&mut self, cx: &mut Ctx<'_, Receiving>, _message: Message<'_>) {
        // Only if parts mode could not be chosen; never in practice.
        let _ = cx.close(CloseCode::INTERNAL_ERROR, "expected parts");
    }

    fn on_close(&mut self, _id: ConnId, session: Receiving, _reason: &CloseReason) {
        // An upload cut short leaves no partial file behind.
        if let Some((file, path)) = session.file {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn fail(cx: &mut Ctx<'_, Receiving>, why: &str) {
    log::warn!("{}: {why}", cx.id());
    if let Some((file, path)) = cx.session().file.take() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    let _ = cx.close(CloseCode::INTERNAL_ERROR, why);
}

/// CRC-32 (IEEE 802.3, the one zlib and `gzip` use), a byte at a time from a table.
#[derive(Debug, Clone, Copy)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Crc32 {
        Crc32(0xFFFF_FFFF)
    }
}

/// The reflected polynomial's table, one entry per byte value.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

impl Crc32 {
    /// Adds `bytes` to the checksum.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.0;
        for &byte in bytes {
            crc = CRC_TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    /// The checksum of everything added so far.
    pub fn value(&self) -> u32 {
        !self.0
    }
}

/// Where uploads go: the second argument, `UPLOAD_DIR`, or the temp dir.
fn upload_dir() -> PathBuf {
    std::env::args()
        .nth(2)
        .or_else(|| std::env::var("UPLOAD_DIR").ok())
        .map_or_else(std::env::temp_dir, PathBuf::from)
}

#[allow(dead_code)] // The end-to-end test includes this file for its handler.
fn main() -> std::io::Result<()> {
    env_logger::init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9997".into());
    let dir = upload_dir();
    let mut server = Server::bind(
        addr.parse().expect("an address like 127.0.0.1:9997"),
        Upload::config(),
        Upload::new(&dir),
    )?;
    println!(
        "listening on ws://{}/, writing uploads to {}",
        server.local_addr(),
        dir.display()
    );
    server.run()
}
