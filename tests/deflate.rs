//! permessage-deflate (RFC 7692) from outside: negotiation in the handshake, compressed
//! echoes, and a decompression bomb, with a raw client that does its own DEFLATE
//! (`common::compress` and `inflate`: flate2 directly, never the crate's
//! `proto::deflate`, so the server's codec is not trusted to check itself).

mod common;

use common::*;
use flate2::Compression;
use wsreactor::{Config, Ctx, Handler, Message};

fn deflate_config() -> Config {
    Config {
        deflate: true,
        ..Config::default()
    }
}

/// Upgrades with `extensions` offered; returns the client and the response head.
fn open_with(addr: std::net::SocketAddr, extensions: &str) -> (Raw, HttpHead) {
    let mut raw = Raw::connect(addr);
    let offer = format!("Sec-WebSocket-Extensions: {extensions}\r\n");
    raw.write(upgrade_request("/echo", RFC_KEY, &offer).as_bytes());
    let head = raw.read_http();
    (raw, head)
}

#[test]
fn a_browser_offer_is_accepted_without_context_takeover() {
    let (addr, _) = start(deflate_config());
    let (_, head) = open_with(addr, "permessage-deflate; client_max_window_bits");
    assert_eq!(head.status, 101);
    assert_eq!(
        head.header("Sec-WebSocket-Extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
}

#[test]
fn compression_is_off_unless_configured_and_bad_offers_are_declined() {
    let (plain, _) = start(Config::default());
    let (_, head) = open_with(plain, "permessage-deflate");
    assert_eq!(
        (head.status, head.header("Sec-WebSocket-Extensions")),
        (101, None)
    );
    let (addr, _) = start(deflate_config());
    let (_, head) = open_with(addr, "permessage-deflate; server_max_window_bits=20");
    assert_eq!(
        (head.status, head.header("Sec-WebSocket-Extensions")),
        (101, None)
    );
    // Not even the extensions grammar: the handshake fails.
    let (_, head) = open_with(addr, "permessage-deflate; =");
    assert_eq!(head.status, 400);
}

#[test]
fn compressed_messages_are_echoed_compressed_and_small_ones_plain() {
    let (addr, _) = start(deflate_config());
    let (mut raw, head) = open_with(addr, "permessage-deflate");
    assert_eq!(head.status, 101);
    let json = r#"{"symbol":"ACME","bid":101.25,"ask":101.27,"size":300}"#.repeat(20);
    for _ in 0..3 {
        // RSV1 on the first frame marks the message compressed.
        raw.write(&compressed_frame(
            true,
            TEXT,
            &compress(json.as_bytes(), Compression::default()),
        ));
        let echo = raw.read_frame();
        assert_eq!((echo.fin, echo.rsv, echo.opcode), (true, 0b100, TEXT));
        assert!(
            echo.payload.len() < json.len() / 4,
            "{} bytes",
            echo.payload.len()
        );
        assert_eq!(inflate(&echo.payload).unwrap(), json.as_bytes());
    }
    // A compressed message in fragments, a ping between them.
    let wire = compress(json.as_bytes(), Compression::default());
    let (a, b) = wire.split_at(wire.len() / 3);
    raw.write(&compressed_frame(false, BINARY, a));
    raw.send(true, PING, b"p");
    raw.write(&frame(true, CONTINUATION, b));
    assert_eq!(raw.read_frame().opcode, PONG);
    let echo = raw.read_frame();
    assert_eq!((echo.rsv, echo.opcode), (0b100, BINARY));
    assert_eq!(inflate(&echo.payload).unwrap(), json.as_bytes());
    // Under the 128-byte threshold the echo is not compressed.
    raw.write(&compressed_frame(
        true,
        TEXT,
        &compress(b"hi", Compression::default()),
    ));
    raw.expect_echo(TEXT, b"hi");
    raw.close_cleanly();
}

/// Sends nothing of its own: the test drives it through its `Handle`.
struct Silent;

impl Handler for Silent {
    type Session = ();

    fn on_message(&mut self, _cx: &mut Ctx<'_>, _message: Message<'_>) {}
}

#[test]
fn a_broadcast_reaches_those_that_agreed_compressed_and_the_rest_plain() {
    let server = spawn_server(deflate_config(), Silent);
    let (mut a, head_a) = open_with(server.addr, "permessage-deflate");
    let (mut b, head_b) = open_with(server.addr, "permessage-deflate; client_max_window_bits");
    let (mut plain, head_plain) = open_with(server.addr, "x-unknown-extension");
    assert_eq!(
        (head_a.status, head_b.status, head_plain.status),
        (101, 101, 101)
    );
    assert_eq!(head_plain.header("Sec-WebSocket-Extensions"), None);
    let json = r#"{"symbol":"ACME","bid":101.25,"ask":101.27,"size":300}"#.repeat(20);
    // Twice: without context takeover each message inflates on its own.
    for round in 0..2 {
        let text = format!("{round}{json}");
        server.handle.broadcast_text(text.as_str()).unwrap();
        for raw in [&mut a, &mut b] {
            let frame = raw.read_frame();
            assert_eq!((frame.fin, frame.rsv, frame.opcode), (true, 0b100, TEXT));
            assert!(
                frame.payload.len() < text.len() / 4,
                "{} bytes",
                frame.payload.len()
            );
            assert_eq!(inflate(&frame.payload).unwrap(), text.as_bytes());
        }
        plain.expect_echo(TEXT, text.as_bytes());
    }
    // Under the threshold nobody gets it compressed.
    server.handle.broadcast_text("hi").unwrap();
    for raw in [&mut a, &mut b, &mut plain] {
        raw.expect_echo(TEXT, b"hi");
    }
}

#[test]
fn a_decompression_bomb_gets_1009_and_others_carry_on() {
    let config = Config {
        max_message_size: 1 << 20,
        ..deflate_config()
    };
    let (addr, _) = start(config);
    let (mut bystander, _) = open_with(addr, "permessage-deflate");
    let (mut raw, _) = open_with(addr, "permessage-deflate");
    // 16 MiB of zeros: about 16 KiB on the wire. (The receiver's unit tests show the
    // server stops inflating within 16 KiB of the limit.)
    let bomb = compress(&vec![0u8; 16 << 20], Compression::default());
    assert!(bomb.len() < 32_000, "{}", bomb.len());
    raw.write(&compressed_frame(true, BINARY, &bomb));
    raw.expect_close(1009);
    raw.expect_eof();
    // Everyone else is untouched.
    let message = vec![b'x'; 1000];
    bystander.write(&compressed_frame(
        true,
        TEXT,
        &compress(&message, Compression::default()),
    ));
    let echo = bystander.read_frame();
    assert_eq!(inflate(&echo.payload).unwrap(), message);
}

#[test]
fn rsv1_without_negotiation_and_corrupt_data_are_rejected() {
    let (addr, _) = start(deflate_config());
    let mut plain = Raw::open(addr); // no offer: no compression
    plain.write(&compressed_frame(
        true,
        TEXT,
        &compress(b"hello", Compression::default()),
    ));
    plain.expect_close(1002);
    let (mut raw, _) = open_with(addr, "permessage-deflate");
    raw.write(&compressed_frame(true, BINARY, &[0xff; 32]));
    raw.expect_close(1007);
}
