//! The opening handshake (RFC 6455 §4.2): read the client's HTTP/1.1 upgrade request,
//! check it, and build the `101 Switching Protocols` answer.
//!
//! The request arrives in as many reads as the network likes, down to one byte at a
//! time. [`HeadReader`] remembers how far it has scanned, so each new byte is looked at
//! a bounded number of times (tungstenite's CVE-2023-43669 was re-parsing the whole
//! block on every read: quadratic in the header size), and it caps the block so a peer
//! cannot make us hold an unbounded request.

use super::http::{HttpResponse, StatusCode};
use super::query::QueryPairs;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::borrow::Cow;
use std::fmt;

/// The GUID every server appends to the client's key before hashing (§1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version RFC 6455 defines.
const WEBSOCKET_VERSION: &str = "13";

/// Why a request could not be accepted, and so which HTTP status answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// The header block grew past the configured cap before it ended.
    HeadTooLarge,
    /// Not parseable as an HTTP/1.x request.
    Malformed(&'static str),
    /// A method other than GET.
    MethodNotAllowed,
    /// An upgrade request that is not valid per §4.2.1.
    BadUpgrade(&'static str),
    /// `Sec-WebSocket-Version` is not 13 (§4.4: answer 426 with the versions we speak).
    UnsupportedVersion,
}

impl HandshakeError {
    /// The HTTP response that tells the client what went wrong.
    pub fn response(self) -> HttpResponse {
        match self {
            HandshakeError::HeadTooLarge => HttpResponse::text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header too large\n",
            ),
            HandshakeError::Malformed(why) | HandshakeError::BadUpgrade(why) => {
                HttpResponse::text(StatusCode::BAD_REQUEST, &format!("bad request: {why}\n"))
            }
            HandshakeError::MethodNotAllowed => {
                HttpResponse::text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n")
                    .with_header("Allow", "GET")
            }
            HandshakeError::UnsupportedVersion => HttpResponse::text(
                StatusCode::UPGRADE_REQUIRED,
                "only WebSocket version 13 is supported\n",
            )
            .with_header("Sec-WebSocket-Version", WEBSOCKET_VERSION),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::HeadTooLarge => f.write_str("request header block too large"),
            HandshakeError::Malformed(why) => write!(f, "malformed request: {why}"),
            HandshakeError::MethodNotAllowed => f.write_str("method not allowed"),
            HandshakeError::BadUpgrade(why) => write!(f, "bad upgrade request: {why}"),
            HandshakeError::UnsupportedVersion => f.write_str("unsupported WebSocket version"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Finds the end of an HTTP request head in a growing buffer, scanning each byte once.
#[derive(Debug, Clone)]
pub struct HeadReader {
    max_len: usize,
    scanned: usize,
}

impl HeadReader {
    /// A reader that gives up once the head is longer than `max_len` bytes.
    pub fn new(max_len: usize) -> HeadReader {
        HeadReader {
            max_len,
            scanned: 0,
        }
    }

    /// Looks at the bytes added to `buf` since the last call; returns the length of the
    /// head (through the blank line) once it is complete.
    pub fn poll(&mut self, buf: &[u8]) -> Result<Option<usize>, HandshakeError> {
        // Back up three bytes: the terminator may straddle the old and new bytes.
        let start = self.scanned.saturating_sub(3);
        let found = buf
            .get(start..)
            .unwrap_or_default()
            .windows(4)
            .position(|w| w == b"\r\n\r\n");
        self.scanned = buf.len();
        match found {
            Some(at) if start + at + 4 <= self.max_len => Ok(Some(start + at + 4)),
            Some(_) => Err(HandshakeError::HeadTooLarge),
            None if buf.len() >= self.max_len => Err(HandshakeError::HeadTooLarge),
            None => Ok(None),
        }
    }
}

/// One header field, borrowed from the request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The field name as sent (compare case-insensitively).
    pub name: &'a str,
    /// The value, without surrounding whitespace.
    pub value: &'a str,
}

/// An HTTP/1.x request head, borrowed from the connection's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    method: &'a str,
    target: &'a str,
    /// The minor version of HTTP/1.x.
    minor_version: u8,
    headers: Vec<Header<'a>>,
}

/// Whether `c` may appear in an HTTP token (RFC 9110 §5.6.2): method and field names.
pub(crate) fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

impl<'a> Request<'a> {
    /// Parses a complete head (as delimited by [`HeadReader`]).
    pub fn parse(head: &'a [u8]) -> Result<Request<'a>, HandshakeError> {
        let head = std::str::from_utf8(head).map_err(|_| HandshakeError::Malformed("not UTF-8"))?;
        let head = head
            .strip_suffix("\r\n\r\n")
            .ok_or(HandshakeError::Malformed("unterminated head"))?;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(HandshakeError::Malformed("request line"));
        };
        if method.is_empty() || !method.bytes().all(is_token_char) {
            return Err(HandshakeError::Malformed("method"));
        }
        if target.is_empty() || target.bytes().any(|c| c.is_ascii_control()) {
            return Err(HandshakeError::Malformed("request target"));
        }
        let minor_version = match version {
            "HTTP/1.0" => 0,
            "HTTP/1.1" => 1,
            _ => return Err(HandshakeError::Malformed("HTTP version")),
        };
        let mut headers = Vec::with_capacity(16);
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or(HandshakeError::Malformed("header line"))?;
            // Whitespace before the colon, or a line starting with whitespace
            // (obsolete folding), is rejected by RFC 9112 §5.1 and §5.2.
            if name.is_empty() || !name.bytes().all(is_token_char) {
                return Err(HandshakeError::Malformed("header name"));
            }
            let value = value.trim_matches(|c| c == ' ' || c == '\t');
            if value.bytes().any(|c| c.is_ascii_control() && c != b'\t') {
                return Err(HandshakeError::Malformed("header value"));
            }
            headers.push(Header { name, value });
        }
        Ok(Request {
            method,
            target,
            minor_version,
            headers,
        })
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The request target as sent, query included.
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The path part of the target, without the query.
    pub fn path(&self) -> &'a str {
        self.target.split('?').next().unwrap_or(self.target)
    }

    /// The query string as sent (still encoded), without the `?`. For its decoded
    /// pairs, see [`query_pairs`](Request::query_pairs) and
    /// [`query_param`](Request::query_param).
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The query's key/value pairs, decoded as browsers encode them (`+` is a space,
    /// `%XX` a byte; see [`QueryPairs`] for malformed input), in order, repeats
    /// included: `/chat?room=caf%C3%A9&tag=a&tag=b` gives `("room", "café")`,
    /// `("tag", "a")`, `("tag", "b")`.
    pub fn query_pairs(&self) -> QueryPairs<'a> {
        QueryPairs::new(self.query().unwrap_or(""))
    }

    /// The decoded value of the first query parameter named `key` (compared after
    /// decoding, case-sensitively), if any: `request.query_param("room")`.
    pub fn query_param(&self, key: &str) -> Option<Cow<'a, str>> {
        self.query_pairs()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value)
    }

    /// Every header field, in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers
    }

    /// The first value of the named header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers_named(name).next()
    }

    /// All values of the named header, in order.
    pub fn headers_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The comma-separated tokens of every instance of the named header
    /// (`Connection: keep-alive, Upgrade` and two `Connection` lines mean the same).
    pub fn header_tokens<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers_named(name)
            .flat_map(|value| value.split(','))
            .map(|token| token.trim_matches(|c| c == ' ' || c == '\t'))
            .filter(|token| !token.is_empty())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_tokens(name)
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The `Origin` header a browser sends (§4.2.1 item 7; §10.2 on why to check it).
    pub fn origin(&self) -> Option<&'a str> {
        self.header("Origin")
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn protocols<'s>(&'s self) -> impl Iterator<Item = &'a str> + 's {
        self.header_tokens("Sec-WebSocket-Protocol")
    }

    /// Whether the client asked for a WebSocket (an `Upgrade: websocket` token). Such a
    /// request is held to §4.2.1; any other GET is plain HTTP.
    pub fn wants_websocket(&self) -> bool {
        self.has_token("Upgrade", "websocket")
    }

    /// Checks an upgrade request against §4.2.1 and returns its `Sec-WebSocket-Key`.
    pub fn validate_upgrade(&self) -> Result<&'a str, HandshakeError> {
        if self.method != "GET" {
            return Err(HandshakeError::MethodNotAllowed);
        }
        if self.minor_version < 1 {
            return Err(HandshakeError::BadUpgrade("HTTP/1.1 or later required"));
        }
        if self.header("Host").is_none() {
            return Err(HandshakeError::BadUpgrade("missing Host"));
        }
        if !self.wants_websocket() {
            return Err(HandshakeError::BadUpgrade("missing Upgrade: websocket"));
        }
        if !self.has_token("Connection", "upgrade") {
            return Err(HandshakeError::BadUpgrade("missing Connection: upgrade"));
        }
        let mut versions = self.headers_named("Sec-WebSocket-Version");
        match (versions.next(), versions.next()) {
            (Some(WEBSOCKET_VERSION), None) => {}
            _ => return Err(HandshakeError::UnsupportedVersion),
        }
        let mut keys = self.headers_named("Sec-WebSocket-Key");
        let key = match (keys.next(), keys.next()) {
            (Some(key), None) => key,
            _ => {
                return Err(HandshakeError::BadUpgrade(
                    "need exactly one Sec-WebSocket-Key",
                ))
            }
        };
        // §4.2.1 item 5: the key is a base64-encoded 16-byte nonce. tungstenite never
        // checked this; a key of any other shape is not from a conforming client.
        match BASE64.decode(key) {
            Ok(nonce) if nonce.len() == 16 => Ok(key),
            _ => Err(HandshakeError::BadUpgrade(
                "Sec-WebSocket-Key is not 16 base64 bytes",
            )),
        }
    }
}

/// `base64(sha1(key + GUID))`: proof to the client that this server read its key (§4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.digest().bytes())
}

/// The `101 Switching Protocols` response that opens the connection.
pub fn accept_response(key: &str, protocol: Option<&str>) -> HttpResponse {
    let mut response = HttpResponse::new(StatusCode::SWITCHING_PROTOCOLS)
        .with_header("Upgrade", "websocket")
        .with_header("Connection", "Upgrade")
        .with_header("Sec-WebSocket-Accept", &accept_key(key));
    if let Some(protocol) = protocol {
        response = response.with_header("Sec-WebSocket-Protocol", protocol);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(head: &[u8]) -> Request<'_> {
        Request::parse(head).expect("parses")
    }

    #[test]
    fn rfc_1_3_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rfc_1_2_request_is_valid() {
        let request = parse(RFC_REQUEST);
        assert_eq!(request.path(), "/chat");
        assert_eq!(request.origin(), Some("http://example.com"));
        assert_eq!(
            request.protocols().collect::<Vec<_>>(),
            ["chat", "superchat"]
        );
        assert_eq!(request.validate_upgrade(), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
    }

    #[test]
    fn query_params_are_decoded_and_the_first_of_a_repeat_wins() {
        let head = b"GET /chat?room=caf%C3%A9&tag=a&tag=b&user=ann+lee HTTP/1.1\r\nHost: x\r\n\r\n";
        let request = parse(head);
        assert_eq!(request.path(), "/chat");
        assert_eq!(
            request.query(),
            Some("room=caf%C3%A9&tag=a&tag=b&user=ann+lee")
        );
        assert_eq!(request.query_param("room").as_deref(), Some("café"));
        assert_eq!(request.query_param("user").as_deref(), Some("ann lee"));
        assert_eq!(request.query_param("tag").as_deref(), Some("a"));
        assert_eq!(request.query_param("missing"), None);
        let tags: Vec<_> = request
            .query_pairs()
            .filter(|(k, _)| k == "tag")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(tags, ["a", "b"]);
        let bare = parse(b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(bare.query_pairs().count(), 0);
        assert_eq!(bare.query_param("room"), None);
    }

    #[test]
    fn accept_response_carries_the_accept_key_and_protocol() {
        let bytes = accept_response("dGhlIHNhbXBsZSBub25jZQ==", Some("chat")).to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(text.contains("Server: wsreactor\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    fn with_header_replaced(name: &str, line: &str) -> Vec<u8> {
        let text = std::str::from_utf8(RFC_REQUEST).unwrap();
        let mut out = String::new();
        for l in text.split_inclusive("\r\n") {
            if l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            {
                out.push_str(line);
            } else {
                out.push_str(l);
            }
        }
        out.into_bytes()
    }

    #[test]
    fn connection_header_is_a_case_insensitive_token_list() {
        let head = with_header_replaced("Connection", "Connection: keep-alive, UPGRADE\r\n");
        assert!(parse(&head).validate_upgrade().is_ok());
        let head = with_header_replaced("Connection", "Connection: keep-alive\r\n");
        assert_eq!(
            parse(&head).validate_upgrade(),
            Err(HandshakeError::BadUpgrade("missing Connection: upgrade"))
        );
    }

    #[test]
    fn wrong_version_asks_for_13() {
        let head = with_header_replaced("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8\r\n");
        let err = parse(&head).validate_upgrade().unwrap_err();
        assert_eq!(err, HandshakeError::UnsupportedVersion);
        let text = String::from_utf8(err.response().to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 "));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn key_must_decode_to_sixteen_bytes() {
        for bad in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZXh4eA==",
        ] {
            let head = with_header_replaced(
                "Sec-WebSocket-Key",
                &format!("Sec-WebSocket-Key: {bad}\r\n"),
            );
            assert!(
                matches!(
                    parse(&head).validate_upgrade(),
                    Err(HandshakeError::BadUpgrade(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn upgrade_needs_get_http11_host_and_upgrade() {
        let post = [b"POST".as_slice(), &RFC_REQUEST[3..]].concat();
        assert_eq!(
            parse(&post).validate_upgrade(),
            Err(HandshakeError::MethodNotAllowed)
        );
        let text = std::str::from_utf8(RFC_REQUEST).unwrap();
        let http10 = text.replace("HTTP/1.1", "HTTP/1.0");
        assert!(parse(http10.as_bytes()).validate_upgrade().is_err());
        let no_host = with_header_replaced("Host", "");
        assert!(parse(&no_host).validate_upgrade().is_err());
        let no_upgrade = with_header_replaced("Upgrade", "Upgrade: h2c\r\n");
        assert!(!parse(&no_upgrade).wants_websocket());
    }

    #[test]
    fn malformed_heads_are_rejected() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(Request::parse(bad), Err(HandshakeError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_reader_finds_the_end_one_byte_at_a_time() {
        let mut reader = HeadReader::new(16 * 1024);
        let mut buf = Vec::new();
        for (i, byte) in RFC_REQUEST.iter().enumerate() {
            buf.push(*byte);
            let found = reader.poll(&buf).unwrap();
            if i + 1 < RFC_REQUEST.len() {
                assert_eq!(found, None);
            } else {
                assert_eq!(found, Some(RFC_REQUEST.len()));
            }
        }
    }

    #[test]
    fn head_reader_keeps_what_follows_the_head() {
        let mut buf = RFC_REQUEST.to_vec();
        buf.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        assert_eq!(
            HeadReader::new(16 * 1024).poll(&buf),
            Ok(Some(RFC_REQUEST.len()))
        );
    }

    #[test]
    fn head_reader_caps_the_block() {
        let mut reader = HeadReader::new(64);
        assert_eq!(reader.poll(&[b'a'; 63]), Ok(None));
        assert_eq!(reader.poll(&[b'a'; 64]), Err(HandshakeError::HeadTooLarge));
        let mut reader = HeadReader::new(RFC_REQUEST.len() - 1);
        assert_eq!(reader.poll(RFC_REQUEST), Err(HandshakeError::HeadTooLarge));
    }

    proptest! {
        #[test]
        fn any_split_finds_the_same_end(cuts in proptest::collection::vec(0usize..RFC_REQUEST.len(), 0..8)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            cuts.push(RFC_REQUEST.len());
            let mut reader = HeadReader::new(16 * 1024);
            let mut found = None;
            for cut in cuts {
                if let Some(end) = reader.poll(&RFC_REQUEST[..cut]).unwrap() {
                    found.get_or_insert(end);
                }
            }
            prop_assert_eq!(found, Some(RFC_REQUEST.len()));
        }

        #[test]
        fn random_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut reader = HeadReader::new(200);
            if let Ok(Some(end)) = reader.poll(&bytes) {
                if let Ok(request) = Request::parse(&bytes[..end]) {
                    let _ = request.validate_upgrade();
                    let _ = request.protocols().count();
                }
            }
        }
    }
}
