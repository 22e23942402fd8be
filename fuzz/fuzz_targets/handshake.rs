//! The opening handshake, fed as the reactor feeds it.
//!
//! Input: two bytes choosing the header cap (top bit of the first clear: the default
//! 16 KiB; set: `((b0 & 0x7f) << 8) | b1`, so 0..=32767), then a read schedule (see
//! `Schedule::take`), then the bytes a client sends. Each piece is appended to a growing
//! buffer and `HeadReader::poll` is called on it; the reactor stops at the first
//! `Some`/`Err`, and so do we. The head found goes through `Request::parse`,
//! `validate_upgrade`, `protocols()`, `accept_response(..).to_bytes()`, and the
//! permessage-deflate negotiation (`parse_offers`, `deflate::negotiate`).
//!
//! Besides "never panics", it checks `poll` against a one-shot model of it (the first
//! "\r\n\r\n" in the whole buffer, and the cap), and what a parsed request promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsreactor::proto::deflate::{self, DeflatePolicy};
use wsreactor::proto::extension::parse_offers;
use wsreactor::proto::handshake::{accept_key, accept_response, HandshakeError, HeadReader};
use wsreactor::proto::http::{HttpResponse, StatusCode};
use wsreactor::Request;
use wsreactor_fuzz::Schedule;

/// `Config::default().max_header_bytes`.
const DEFAULT_CAP: usize = 16 << 10;

const TERMINATOR: &[u8] = b"\r\n\r\n";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What `poll` must answer for the buffer as it stands, given that every earlier poll
/// (on a prefix of it) answered `Ok(None)`.
fn model_poll(buf: &[u8], cap: usize) -> Result<Option<usize>, HandshakeError> {
    match find(buf, TERMINATOR) {
        Some(at) if at + 4 <= cap => Ok(Some(at + 4)),
        Some(_) => Err(HandshakeError::HeadTooLarge),
        None if buf.len() >= cap => Err(HandshakeError::HeadTooLarge),
        None => Ok(None),
    }
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// A serialized response is one head, then the body; no header can smuggle a CR or LF.
/// Every response built from a request passes `HttpResponse::validate`, so the
/// reactor's check never turns a legitimate answer into a 500.
fn check_response(response: &HttpResponse) -> Vec<u8> {
    assert_eq!(response.validate(), Ok(()), "{response:?}");
    let bytes = response.to_bytes();
    let end = find(&bytes, TERMINATOR).expect("response head is terminated") + 4;
    let head = std::str::from_utf8(&bytes[..end]).expect("response head is UTF-8");
    let mut lines = head[..head.len() - 4].split("\r\n");
    let status = lines.next().unwrap();
    assert!(
        status.starts_with(&format!("HTTP/1.1 {} ", response.status.0)),
        "{status:?}"
    );
    for line in lines {
        assert!(
            !line.contains('\r') && !line.contains('\n'),
            "bare CR/LF in {line:?}"
        );
        let (name, _) = line.split_once(": ").expect("header line has ': '");
        assert!(
            !name.is_empty() && name.bytes().all(is_token_char),
            "{line:?}"
        );
    }
    assert_eq!(&bytes[end..], &response.body[..], "body follows the head");
    if response.is_upgrade() {
        assert!(response.body.is_empty());
    } else {
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", response.body.len())));
    }
    bytes
}

/// Everything the reactor does with a complete head, plus what a parsed request promises.
fn check_head(head: &[u8]) {
    let request = match Request::parse(head) {
        Ok(request) => request,
        Err(e) => {
            assert!(
                matches!(e, HandshakeError::Malformed(_)),
                "parse gave {e:?}"
            );
            check_response(&e.response());
            return;
        }
    };
    assert!(head.ends_with(TERMINATOR));
    let method = request.method();
    assert!(!method.is_empty() && method.bytes().all(is_token_char));
    let target = request.target();
    assert!(!target.is_empty() && !target.bytes().any(|c| c.is_ascii_control()));
    assert!(target.starts_with(request.path()));
    if let Some(query) = request.query() {
        assert!(target.ends_with(query));
        assert_eq!(request.path().len() + 1 + query.len(), target.len());
    } else {
        assert_eq!(request.path(), target);
    }
    for header in request.headers() {
        assert!(!header.name.is_empty() && header.name.bytes().all(is_token_char));
        assert!(
            !header
                .value
                .bytes()
                .any(|c| c.is_ascii_control() && c != b'\t'),
            "control byte in {:?}",
            header.value
        );
        assert!(!header.value.starts_with([' ', '\t']) && !header.value.ends_with([' ', '\t']));
        // `header` is the first of that name, whatever its case.
        let first = request
            .headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(header.name))
            .unwrap();
        assert_eq!(
            request.header(&header.name.to_ascii_uppercase()),
            Some(first.value)
        );
    }
    let _ = request.origin();
    let protocols: Vec<&str> = request.protocols().collect();
    for p in &protocols {
        assert!(!p.is_empty() && !p.contains(','), "{p:?}");
        assert!(
            !p.starts_with([' ', '\t']) && !p.ends_with([' ', '\t']),
            "{p:?}"
        );
    }
    let wants_websocket = request.wants_websocket();
    match request.validate_upgrade() {
        Ok(key) => {
            assert_eq!(method, "GET");
            assert!(wants_websocket);
            assert!(request.header("Host").is_some());
            assert_eq!(request.header("Sec-WebSocket-Version"), Some("13"));
            assert_eq!(request.header("Sec-WebSocket-Key"), Some(key));
            // Canonical base64 of 16 bytes: 22 characters and "==".
            assert_eq!(key.len(), 24, "key {key:?}");
            assert!(key.ends_with("=="), "key {key:?}");
            let accept = accept_key(key);
            assert_eq!(accept.len(), 28);
            check_extensions(&request, key);
            // The reactor answers with no protocol or with one the client offered.
            let choices = [None, protocols.first().copied(), protocols.last().copied()];
            for protocol in choices
                .into_iter()
                .take(if protocols.is_empty() { 1 } else { 3 })
            {
                let response = accept_response(key, protocol);
                assert!(response.is_upgrade());
                let bytes = check_response(&response);
                let text = std::str::from_utf8(&bytes).unwrap();
                assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
                assert!(text.contains(&format!("\r\nSec-WebSocket-Accept: {accept}\r\n")));
                if let Some(p) = protocol {
                    assert!(text.contains(&format!("\r\nSec-WebSocket-Protocol: {p}\r\n")));
                }
            }
        }
        Err(e) => {
            assert!(
                !matches!(
                    e,
                    HandshakeError::Malformed(_) | HandshakeError::HeadTooLarge
                ),
                "validate_upgrade gave {e:?}"
            );
            let response = e.response();
            assert!(!response.is_upgrade());
            check_response(&response);
        }
    }
}

/// What the reactor does with `Sec-WebSocket-Extensions` when compression is on:
/// parse the offers (400 if malformed), negotiate permessage-deflate, and answer with
/// the agreed parameters.
fn check_extensions(request: &Request<'_>, key: &str) {
    let offers = match parse_offers(request.headers_named("Sec-WebSocket-Extensions")) {
        Ok(offers) => offers,
        Err(e) => {
            let body = format!("bad request: {e}\n");
            check_response(&HttpResponse::text(StatusCode::BAD_REQUEST, &body));
            return;
        }
    };
    for offer in &offers {
        assert!(!offer.name.is_empty() && offer.name.bytes().all(is_token_char));
        for (name, value) in &offer.params {
            assert!(
                !name.is_empty() && name.bytes().all(is_token_char),
                "{name:?}"
            );
            if let Some(value) = value {
                assert!(
                    !value.is_empty() && value.bytes().all(is_token_char),
                    "{value:?}"
                );
            }
        }
    }
    // Config::default()'s policy, and one with context takeover and a window from the key.
    let policies = [
        DeflatePolicy {
            context_takeover: false,
            max_window_bits: 15,
        },
        DeflatePolicy {
            context_takeover: true,
            max_window_bits: 8 + key.as_bytes()[0] % 9,
        },
    ];
    for policy in policies {
        let Some(params) = deflate::negotiate(&offers, policy) else {
            continue;
        };
        let bits = params.server_max_window_bits;
        assert!(
            (9..=policy.max_window_bits.clamp(9, 15)).contains(&bits),
            "window {bits}"
        );
        if !policy.context_takeover {
            assert!(params.server_no_context_takeover && params.client_no_context_takeover);
        }
        let value = params.response_header();
        let echoed = parse_offers([value.as_str()]).expect("our answer parses");
        assert_eq!(echoed.len(), 1, "{value:?}");
        assert_eq!(echoed[0].name, deflate::NAME);
        let response = accept_response(key, None).with_header("Sec-WebSocket-Extensions", &value);
        check_response(&response);
    }
}

fuzz_target!(|data: &[u8]| {
    let [b0, b1, ref rest @ ..] = *data else {
        return;
    };
    let cap = if b0 & 0x80 == 0 {
        DEFAULT_CAP
    } else {
        (usize::from(b0 & 0x7f) << 8) | usize::from(b1)
    };
    let Some((schedule, stream)) = Schedule::take(rest, false) else {
        return;
    };

    let mut reader = HeadReader::new(cap);
    let mut buf = Vec::new();
    for piece in schedule.pieces(stream) {
        buf.extend_from_slice(piece);
        let got = reader.poll(&buf);
        assert_eq!(
            got,
            model_poll(&buf, cap),
            "poll after {} bytes, cap {cap}",
            buf.len()
        );
        match got {
            Ok(None) => assert!(buf.len() < cap),
            Ok(Some(end)) => {
                assert!(
                    end <= buf.len() && end <= cap,
                    "end {end}, buffered {}, cap {cap}",
                    buf.len()
                );
                assert!(buf[..end].ends_with(TERMINATOR));
                check_head(&buf[..end]);
                break;
            }
            Err(e) => {
                assert_eq!(e, HandshakeError::HeadTooLarge);
                check_response(&e.response());
                break;
            }
        }
    }
    // `parse` on its own, on bytes no HeadReader delimited (e.g. a blank line inside).
    check_head(stream);
});
