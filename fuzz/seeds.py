#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/ (checked in; rerun after changing it).

Each target's input starts with a few control bytes (see fuzz_targets/*.rs and
Schedule::take in src/lib.rs); the seeds here are real protocol bytes behind them.

    python3 fuzz/seeds.py            # rewrites fuzz/corpus/{handshake,frames,utf8}/

fuzz/corpus/frames_split_equivalence/ is not written here: that target decodes its input
with `arbitrary`, so its seeds are inputs picked from a fuzzer run (named for the stream
they decode to) and are left alone by this script.
"""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"

# Schedules (Schedule::take): WHOLE = one piece; otherwise k sizes, used in turn.
WHOLE = b"\x00"


def sched(*sizes):
    """Read sizes 1..=240 (the byte is size - 1)."""
    assert 0 < len(sizes) < 16 and all(1 <= s <= 240 for s in sizes)
    return bytes([len(sizes)]) + bytes(s - 1 for s in sizes)


def mask(payload, key):
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def frame(opcode, payload, key=b"\x37\xfa\x21\x3d", fin=True, masked=True):
    """A client frame with the minimal length encoding."""
    out = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        out.append(bit | n)
    elif n <= 0xFFFF:
        out += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        out += bytes([bit | 127]) + n.to_bytes(8, "big")
    if masked:
        out += key + mask(payload, key)
    else:
        out += payload
    return bytes(out)


RFC_1_2 = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)

CHROME = (
    b"GET /echo?room=1 HTTP/1.1\r\n"
    b"Host: 127.0.0.1:9998\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: http://127.0.0.1:9998\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)

FIREFOX_PROTOCOLS = (
    b"GET /ws HTTP/1.1\r\n"
    b"Host: example.org\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: graphql-ws,\tmqtt\r\n"
    b"Sec-WebSocket-Protocol: wamp.2.json\r\n"
    b"Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"upgrade: WebSocket\r\n\r\n"
)

DEFAULT_CAP = b"\x00\x00"


def cap(n):
    assert n < 0x8000
    return bytes([0x80 | (n >> 8), n & 0xFF])


def handshake():
    return {
        "rfc6455_1_2": DEFAULT_CAP + WHOLE + RFC_1_2,
        "rfc6455_1_2_bytewise": DEFAULT_CAP + sched(1) + RFC_1_2,
        "chrome": DEFAULT_CAP + sched(17, 64, 3) + CHROME,
        "protocols": DEFAULT_CAP + sched(2, 100) + FIREFOX_PROTOCOLS,
        "truncated": DEFAULT_CAP + sched(40) + RFC_1_2[:100],
        "terminator_straddles": DEFAULT_CAP + sched(len(RFC_1_2) - 2, 1) + RFC_1_2,
        "head_then_frame": DEFAULT_CAP + WHOLE + RFC_1_2 + frame(0x1, b"Hello"),
        "cap_exact": cap(len(RFC_1_2)) + sched(30) + RFC_1_2,
        "cap_too_small": cap(100) + WHOLE + RFC_1_2,
        "plain_get": DEFAULT_CAP + WHOLE + b"GET /index.html?x=1 HTTP/1.0\r\nHost: a\r\n\r\n",
        "post": DEFAULT_CAP + WHOLE + RFC_1_2.replace(b"GET", b"POST", 1),
        "version_8": DEFAULT_CAP + WHOLE + RFC_1_2.replace(b"Version: 13", b"Version: 8"),
        "bad_key": DEFAULT_CAP + WHOLE + RFC_1_2.replace(b"Q==", b"Q"),
        "deflate_offers": DEFAULT_CAP
        + WHOLE
        + RFC_1_2.replace(
            b"Sec-WebSocket-Version: 13\r\n",
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: x-webkit-deflate-frame, "
            b'permessage-deflate; server_no_context_takeover; server_max_window_bits="10", '
            b"permessage-deflate; client_max_window_bits\r\n",
        ),
        "deflate_offer_malformed": DEFAULT_CAP
        + WHOLE
        + RFC_1_2.replace(
            b"Sec-WebSocket-Version: 13\r\n",
            b'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; a="b\\\r\n',
        ),
        "malformed_folded": DEFAULT_CAP + WHOLE + b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    }


RFC_5_7_HELLO = bytes.fromhex("818537fa213d7f9f4d5158")  # masked "Hello"


def deflate_raw(data, final=False):
    """Raw DEFLATE with a sync flush, its 00 00 ff ff tail removed (RFC 7692 §7.2.1)."""
    import zlib

    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out


RSV1 = 0x40


def frames():
    # selector 0 = max_message_size 16 MiB (the default); 0x03 = 125 bytes.
    default = b"\x00\x00"
    fragmented_with_ping = (
        frame(0x1, b"Hel", fin=False)
        + frame(0x9, b"are you there?", key=b"\x01\x02\x03\x04")
        + frame(0x0, b"lo", fin=True, key=b"\xaa\xbb\xcc\xdd")
    )
    close_with_reason = frame(0x8, (1000).to_bytes(2, "big") + b"bye, see you", key=b"\x0f\x1e\x2d\x3c")
    return {
        "rfc6455_5_7_masked_hello": default + WHOLE + RFC_5_7_HELLO,
        "rfc6455_5_7_masked_hello_bytewise": default + sched(1) + RFC_5_7_HELLO,
        "rfc6455_5_7_fragmented_ping_between": default + sched(3, 7) + fragmented_with_ping,
        "rfc6455_5_7_ping_pong": default
        + WHOLE
        + frame(0x9, b"Hello")
        + frame(0xA, b"Hello", key=b"\x00\x00\x00\x00"),
        "rfc6455_5_7_binary_256": default + sched(100, 5) + frame(0x2, bytes(range(256))),
        "binary_64bit_length_truncated": default
        + WHOLE
        + frame(0x2, bytes(70000))[:14 + 64],
        "close_code_reason": default + sched(5) + close_with_reason,
        "close_empty": default + WHOLE + frame(0x8, b""),
        "text_utf8_split_across_fragments": default
        + sched(2)
        + frame(0x1, "κό".encode()[:3], fin=False)
        + frame(0x0, "κόσμε 𝄞".encode()[3:]),
        "session": default
        + sched(9, 1, 30)
        + frame(0x1, b"Hello")
        + fragmented_with_ping
        + frame(0x2, b"\x00\xff" * 20)
        + close_with_reason,
        "too_big_for_125": b"\x03\x00" + WHOLE + frame(0x2, bytes(126)),
        "invalid_utf8_fail_fast": default
        + sched(12, 1)
        + frame(0x1, "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"x" * 20),
        "unmasked": default + WHOLE + bytes.fromhex("810548656c6c6f"),
        "reserved_opcode": default + WHOLE + frame(0x3, b""),
        "bad_close_code": default + WHOLE + frame(0x8, (1005).to_bytes(2, "big")),
        # permessage-deflate: mode bit 0x10 on (no context takeover); 0x30 keeps context.
        "deflate_rfc7692_7_2_3_1_hello": b"\x10\x00" + WHOLE + frame(RSV1 | 0x1, bytes.fromhex("f248cdc9c90700")),
        "deflate_rfc7692_7_2_3_3_bfinal": b"\x10\x00" + sched(3) + frame(RSV1 | 0x1, bytes.fromhex("f348cdc9c90700")),
        "deflate_fragmented_ping_between": b"\x10\x00"
        + sched(7, 2)
        + frame(RSV1 | 0x2, deflate_raw(b"compress me " * 30)[:20], fin=False)
        + frame(0x9, b"ping")
        + frame(0x0, deflate_raw(b"compress me " * 30)[20:]),
        "deflate_context_takeover": b"\x30\x00"
        + sched(11)
        + frame(RSV1 | 0x1, bytes.fromhex("f248cdc9c90700"))
        + frame(RSV1 | 0x1, bytes.fromhex("f200110000")),
        "deflate_bomb_limit_125": b"\x13\x00" + sched(64) + frame(RSV1 | 0x1, deflate_raw(b"a" * 5000)),
        "deflate_plain_and_compressed": b"\x10\x00"
        + WHOLE
        + frame(0x1, b"plain")
        + frame(RSV1 | 0x1, deflate_raw("κόσμε, compressed".encode()))
        + frame(0x8, (1000).to_bytes(2, "big")),
    }


def utf8():
    return {
        "kosme": WHOLE + "κόσμε".encode(),
        "kosme_bytewise": bytes([1, 1]) + "κόσμε".encode(),
        "autobahn_6_4_1": bytes([2, 4, 1]) + "κόσμε".encode() + b"\xf4\x90\x80\x80" + "edited".encode(),
        "four_byte_split": bytes([3, 1, 2, 3]) + "𝄞€ü a".encode(),
        "surrogate": bytes([1, 1]) + b"\xed\xa0\x80",
        "overlong": bytes([1, 1]) + b"\xe0\x80\xaf\xc0\xaf",
        "truncated": WHOLE + "€".encode()[:2],
        "max_code_point": bytes([2, 0, 2]) + "\U0010ffff".encode() + b"\xf4\x90\x80\x80",
        "empty": WHOLE,
    }


def main():
    for target, seeds in [("handshake", handshake()), ("frames", frames()), ("utf8", utf8())]:
        directory = ROOT / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            # Minimized crash reproducers live next to the seeds; they are not ours.
            if not old.name.startswith("regression-"):
                old.unlink()
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
