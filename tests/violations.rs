//! Protocol violations, written as hand-built frames over a raw TCP connection: each
//! must be answered with a close frame carrying the exact code RFC 6455 asks for, after
//! which the server ends the TCP connection. Other connections must not notice.

mod common;

use common::{
    close_payload, frame, header, next_key, raw_frame, start, start_default, Raw, BINARY, CLOSE,
    CONTINUATION, PING, PONG, TEXT,
};
use std::time::Duration;
use wsreactor::{CloseReason, Config};

/// How long "nothing happens" is watched for where a test needs it.
const QUIET: Duration = Duration::from_millis(150);

/// Opens a connection on a default server, writes `bytes`, and expects close `code`
/// followed by the end of the TCP connection.
fn violation_closes_with(bytes: &[u8], code: u16) {
    let (addr, seen) = start_default();
    let mut raw = Raw::open(addr);
    raw.write(bytes);
    raw.expect_close(code);
    raw.expect_eof();
    let closes = seen.wait_for_closes(1);
    assert!(
        matches!(closes[0], CloseReason::Protocol(_)),
        "on_close reason: {closes:?}"
    );
    assert_eq!(closes[0].code().0, code, "on_close code: {closes:?}");
}

#[test]
fn unmasked_client_frame_gets_1002() {
    violation_closes_with(&raw_frame(0x80 | TEXT, None, b"Hello"), 1002);
}

#[test]
fn rsv1_set_gets_1002() {
    violation_closes_with(&raw_frame(0x80 | 0x40 | TEXT, Some(next_key()), b"x"), 1002);
}

#[test]
fn rsv2_set_gets_1002() {
    violation_closes_with(&raw_frame(0x80 | 0x20 | TEXT, Some(next_key()), b"x"), 1002);
}

#[test]
fn rsv3_set_gets_1002() {
    violation_closes_with(
        &raw_frame(0x80 | 0x10 | BINARY, Some(next_key()), b"x"),
        1002,
    );
}

#[test]
fn rsv_set_on_a_ping_gets_1002() {
    violation_closes_with(&raw_frame(0x80 | 0x40 | PING, Some(next_key()), b"p"), 1002);
}

#[test]
fn reserved_data_opcode_0x3_gets_1002() {
    violation_closes_with(&raw_frame(0x80 | 0x3, Some(next_key()), b""), 1002);
}

#[test]
fn reserved_control_opcode_0xb_gets_1002() {
    violation_closes_with(&raw_frame(0x80 | 0xB, Some(next_key()), b"payload"), 1002);
}

#[test]
fn ping_with_126_byte_payload_gets_1002() {
    violation_closes_with(&frame(true, PING, &[b'p'; 126]), 1002);
}

#[test]
fn fragmented_ping_gets_1002() {
    violation_closes_with(&frame(false, PING, b"part"), 1002);
}

#[test]
fn continuation_without_a_start_gets_1002() {
    violation_closes_with(&frame(true, CONTINUATION, b"orphan"), 1002);
}

#[test]
fn new_text_frame_inside_a_fragmented_message_gets_1002() {
    let bytes = [frame(false, TEXT, b"first "), frame(true, TEXT, b"second")].concat();
    violation_closes_with(&bytes, 1002);
}

#[test]
fn new_binary_frame_inside_a_fragmented_message_gets_1002() {
    let bytes = [
        frame(false, BINARY, b"first"),
        frame(false, BINARY, b"again"),
    ]
    .concat();
    violation_closes_with(&bytes, 1002);
}

#[test]
fn length_with_top_bit_set_gets_1002() {
    // 127 + a 64-bit length of 2^63: no payload follows, the header alone is wrong.
    violation_closes_with(&header(0x80 | BINARY, Some(next_key()), 1 << 63), 1002);
}

#[test]
fn invalid_utf8_in_a_text_message_gets_1007() {
    violation_closes_with(&frame(true, TEXT, b"caf\xc3\x28 au lait"), 1007);
}

#[test]
fn utf8_surrogate_in_a_text_message_gets_1007() {
    // U+D800 encoded as ED A0 80 is not valid UTF-8.
    violation_closes_with(&frame(true, TEXT, b"a\xed\xa0\x80b"), 1007);
}

#[test]
fn invalid_utf8_split_across_fragments_fails_fast_without_fin() {
    let (addr, _) = start_default();
    let mut raw = Raw::open(addr);
    // The first fragment ends with the first two bytes of a four-byte code point
    // (F0 9F ..): a valid prefix, so the connection must stay open.
    raw.send(false, TEXT, b"smile \xf0\x9f");
    raw.expect_silence(QUIET);
    // The second fragment continues it with 'A': now it is invalid. FIN is never sent,
    // yet the close must come at once.
    raw.send(false, CONTINUATION, b"A rest of the text");
    raw.expect_close(1007);
    raw.expect_eof();
}

#[test]
fn invalid_utf8_inside_one_frame_fails_before_the_frame_is_complete() {
    let (addr, _) = start_default();
    let mut raw = Raw::open(addr);
    // A text frame announcing 1000 bytes, of which only a bad prefix is sent.
    let key = next_key();
    let mut prefix = b"ok so far \xff".to_vec();
    wsreactor::proto::mask::apply(&mut prefix, key, 0);
    let bytes = [header(0x80 | TEXT, Some(key), 1000), prefix].concat();
    raw.write(&bytes);
    raw.expect_close(1007);
    raw.expect_eof();
}

#[test]
fn invalid_utf8_in_a_close_reason_gets_1007() {
    violation_closes_with(&frame(true, CLOSE, &close_payload(1000, b"bad \xff")), 1007);
}

#[test]
fn close_with_one_byte_payload_gets_1002() {
    violation_closes_with(&frame(true, CLOSE, &[0x03]), 1002);
}

#[test]
fn close_with_code_1005_gets_1002() {
    violation_closes_with(&frame(true, CLOSE, &close_payload(1005, b"")), 1002);
}

#[test]
fn close_with_code_1006_gets_1002() {
    violation_closes_with(&frame(true, CLOSE, &close_payload(1006, b"")), 1002);
}

#[test]
fn close_with_code_999_gets_1002() {
    violation_closes_with(&frame(true, CLOSE, &close_payload(999, b"")), 1002);
}

#[test]
fn close_with_code_5000_gets_1002() {
    violation_closes_with(&frame(true, CLOSE, &close_payload(5000, b"")), 1002);
}

#[test]
fn close_with_code_0_gets_1002() {
    violation_closes_with(&frame(true, CLOSE, &close_payload(0, b"")), 1002);
}

#[test]
fn close_with_application_code_is_echoed() {
    // The contrast case: 4000 is a valid application code and is echoed back.
    let (addr, seen) = start_default();
    let mut raw = Raw::open(addr);
    raw.send(true, CLOSE, &close_payload(4000, b"app says bye"));
    raw.expect_close(4000);
    raw.expect_eof();
    let closes = seen.wait_for_closes(1);
    assert_eq!(
        closes,
        [CloseReason::Peer {
            code: wsreactor::CloseCode(4000),
            reason: "app says bye".into()
        }]
    );
}

fn small_limit() -> Config {
    Config {
        max_message_size: 1000,
        ..Config::default()
    }
}

#[test]
fn message_over_max_message_size_gets_1009_before_its_payload_is_sent() {
    let (addr, seen) = start(small_limit());
    let mut raw = Raw::open(addr);
    // Only the header, declaring 1001 bytes: the server must refuse from it alone.
    raw.write(&header(0x80 | BINARY, Some(next_key()), 1001));
    raw.expect_close(1009);
    raw.expect_eof();
    assert_eq!(seen.wait_for_closes(1)[0].code().0, 1009);
}

#[test]
fn message_of_exactly_max_message_size_is_echoed() {
    let (addr, _) = start(small_limit());
    let mut raw = Raw::open(addr);
    let payload = common::pattern(1, 1000);
    raw.send(true, BINARY, &payload);
    raw.expect_echo(BINARY, &payload);
    raw.close_cleanly();
}

#[test]
fn fragments_adding_up_to_over_max_message_size_get_1009() {
    let (addr, _) = start(small_limit());
    let mut raw = Raw::open(addr);
    raw.send(false, TEXT, &[b'a'; 600]);
    raw.expect_silence(QUIET);
    // 600 + 401 > 1000: refused from the second header, before its payload.
    raw.write(&header(CONTINUATION, Some(next_key()), 401));
    raw.expect_close(1009);
    raw.expect_eof();
}

#[test]
fn message_one_byte_over_the_default_limit_gets_1009() {
    let (addr, _) = start_default();
    let mut raw = Raw::open(addr);
    raw.write(&header(0x80 | TEXT, Some(next_key()), (16 << 20) + 1));
    raw.expect_close(1009);
    raw.expect_eof();
}

#[test]
fn messages_before_a_bad_frame_in_the_same_write_are_echoed_first() {
    let (addr, _) = start_default();
    let mut raw = Raw::open(addr);
    let bytes = [
        frame(true, TEXT, b"one"),
        frame(true, BINARY, b"\x00two"),
        frame(true, PING, b"three"),
        frame(false, TEXT, b"fo"),
        frame(true, CONTINUATION, b"ur"),
        raw_frame(0x80 | 0x3, Some(next_key()), b"bad"),
        frame(true, TEXT, b"never echoed"),
    ]
    .concat();
    raw.write(&bytes);
    raw.expect_echo(TEXT, b"one");
    raw.expect_echo(BINARY, b"\x00two");
    raw.expect_echo(PONG, b"three");
    raw.expect_echo(TEXT, b"four");
    raw.expect_close(1002);
    raw.expect_eof();
}

#[test]
fn other_connections_are_unaffected_by_a_violation() {
    let (addr, seen) = start_default();
    let mut bystander = Raw::open(addr);
    bystander.send(true, TEXT, b"before");
    bystander.expect_echo(TEXT, b"before");
    // A second bystander in the middle of a fragmented message when the violation
    // happens: its partial message must survive too.
    let mut halfway = Raw::open(addr);
    halfway.send(false, BINARY, b"half");

    let mut offender = Raw::open(addr);
    offender.write(&raw_frame(0x80 | TEXT, None, b"unmasked"));
    offender.expect_close(1002);
    offender.expect_eof();
    assert_eq!(seen.wait_for_closes(1)[0].code().0, 1002);

    for i in 0..5 {
        let text = format!("after {i}");
        bystander.send(true, TEXT, text.as_bytes());
        bystander.expect_echo(TEXT, text.as_bytes());
    }
    halfway.send(true, CONTINUATION, b" and the rest");
    halfway.expect_echo(BINARY, b"half and the rest");
    // A connection opened after the violation works as well.
    let mut newcomer = Raw::open(addr);
    newcomer.send(true, TEXT, b"new");
    newcomer.expect_echo(TEXT, b"new");

    bystander.close_cleanly();
    halfway.close_cleanly();
    newcomer.close_cleanly();
    assert_eq!(seen.wait_for_closes(4).len(), 4);
}
