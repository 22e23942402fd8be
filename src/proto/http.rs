//! Plain HTTP/1.1 responses: the 101 that opens a WebSocket, the errors that refuse
//! one, and whatever a handler serves to a browser that asks for a page.
//!
//! Every response we send ends the connection (`Connection: close`) unless it is the
//! 101: a WebSocket server is not a web server, and keeping HTTP keep-alive out keeps
//! the connection state machine to one request per connection.
//!
//! A handler builds responses from request data (a redirect to a path it was given, a
//! header echoed back), so a response is checked before it is written
//! ([`HttpResponse::validate`]): a CR or LF in a header would let whoever chose that
//! data add header lines or a whole second response (response splitting), and the
//! server answers 500 instead.

use super::handshake::is_token_char;
use std::fmt;

/// An HTTP status code with its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCode(pub u16, pub &'static str);

#[allow(missing_docs)] // each constant is its own documentation
impl StatusCode {
    pub const SWITCHING_PROTOCOLS: StatusCode = StatusCode(101, "Switching Protocols");
    pub const OK: StatusCode = StatusCode(200, "OK");
    pub const BAD_REQUEST: StatusCode = StatusCode(400, "Bad Request");
    pub const FORBIDDEN: StatusCode = StatusCode(403, "Forbidden");
    pub const NOT_FOUND: StatusCode = StatusCode(404, "Not Found");
    pub const METHOD_NOT_ALLOWED: StatusCode = StatusCode(405, "Method Not Allowed");
    pub const UPGRADE_REQUIRED: StatusCode = StatusCode(426, "Upgrade Required");
    pub const REQUEST_HEADER_FIELDS_TOO_LARGE: StatusCode =
        StatusCode(431, "Request Header Fields Too Large");
    pub const INTERNAL_SERVER_ERROR: StatusCode = StatusCode(500, "Internal Server Error");
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503, "Service Unavailable");
}

/// An HTTP response to write before switching protocols or closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code and reason phrase.
    pub status: StatusCode,
    /// Header fields, in order (`Server`, `Content-Length` and `Connection` are added).
    pub headers: Vec<(String, String)>,
    /// The body (empty for a 101).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with no body and no headers of its own.
    pub fn new(status: StatusCode) -> HttpResponse {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A plain-text response, the usual way to refuse a request.
    pub fn text(status: StatusCode, body: &str) -> HttpResponse {
        HttpResponse::new(status)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_body(body.as_bytes().to_vec())
    }

    /// A page, e.g. a demo client.
    pub fn html(body: &str) -> HttpResponse {
        HttpResponse::new(StatusCode::OK)
            .with_header("Content-Type", "text/html; charset=utf-8")
            .with_body(body.as_bytes().to_vec())
    }

    /// `404 Not Found`: the default for anything a handler does not serve.
    pub fn not_found() -> HttpResponse {
        HttpResponse::text(StatusCode::NOT_FOUND, "not found\n")
    }

    /// Adds a header, unchecked: the server checks the whole response before sending
    /// it ([`validate`](HttpResponse::validate)) and answers 500 instead of one that
    /// is invalid. Use [`try_with_header`](HttpResponse::try_with_header) to learn
    /// about a bad header where it is added.
    pub fn with_header(mut self, name: &str, value: &str) -> HttpResponse {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds a header if it is valid (see [`validate`](HttpResponse::validate)), e.g.
    /// one built from request data.
    pub fn try_with_header(self, name: &str, value: &str) -> Result<HttpResponse, InvalidResponse> {
        check_header(name, value)?;
        Ok(self.with_header(name, value))
    }

    /// Sets the body.
    pub fn with_body(mut self, body: Vec<u8>) -> HttpResponse {
        self.body = body;
        self
    }

    /// Whether the connection switches to WebSocket after this response.
    pub fn is_upgrade(&self) -> bool {
        self.status == StatusCode::SWITCHING_PROTOCOLS
    }

    /// Checks that the response can be written as it is without changing its meaning:
    ///
    /// - the status code is within 100–599 (RFC 9110 §15);
    /// - the reason phrase and every header value hold no control character but tab
    ///   (RFC 9110 §5.5, RFC 9112 §4): CR and LF would end the line early and start
    ///   a header or a response of someone else's choosing, NUL truncates it for
    ///   some readers;
    /// - every header name is a non-empty HTTP token (RFC 9110 §5.1), so that it
    ///   cannot carry the colon, space or line break that would change where a line
    ///   splits;
    /// - no header is `Content-Length` or `Transfer-Encoding`: the server frames the
    ///   body itself, and a second, different framing header is how a response is
    ///   made to mean two things to two readers.
    pub fn validate(&self) -> Result<(), InvalidResponse> {
        let StatusCode(code, reason) = self.status;
        if !(100..=599).contains(&code) {
            return Err(InvalidResponse::Status(code));
        }
        if has_control_char(reason) {
            return Err(InvalidResponse::ReasonPhrase);
        }
        for (name, value) in &self.headers {
            check_header(name, value)?;
        }
        Ok(())
    }

    /// Serializes the response as it is, adding `Server`, and for a non-101 response
    /// `Content-Length` and `Connection: close`. Only for a response that passed
    /// [`validate`](HttpResponse::validate): the server checks every response it sends.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status.0, self.status.1);
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("Server: wsreactor\r\n");
        if !self.is_upgrade() {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Why an [`HttpResponse`] may not be sent (see [`HttpResponse::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidResponse {
    /// The status code is outside 100–599.
    Status(u16),
    /// The reason phrase holds a control character (CR, LF, NUL, ...).
    ReasonPhrase,
    /// A header name is empty or not an HTTP token (this name).
    HeaderName(String),
    /// The value of the header with this name holds a control character other than tab.
    HeaderValue(String),
    /// A header the server writes itself (`Content-Length`, `Transfer-Encoding`).
    FramingHeader(String),
}

impl fmt::Display for InvalidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names are shown with `{:?}`: escaped, so that a log line stays one line too.
        match self {
            InvalidResponse::Status(code) => write!(f, "status code {code} is outside 100-599"),
            InvalidResponse::ReasonPhrase => {
                f.write_str("the reason phrase holds a control character (CR, LF, NUL, ...)")
            }
            InvalidResponse::HeaderName(name) => {
                write!(f, "header name {name:?} is not an HTTP token")
            }
            InvalidResponse::HeaderValue(name) => write!(
                f,
                "the value of header {name:?} holds a control character (CR, LF, NUL, ...)"
            ),
            InvalidResponse::FramingHeader(name) => write!(
                f,
                "header {name:?} is the server's own: it frames the body itself"
            ),
        }
    }
}

impl std::error::Error for InvalidResponse {}

/// Every control character but tab, as the request parser rejects them in values.
fn has_control_char(text: &str) -> bool {
    text.bytes().any(|c| c.is_ascii_control() && c != b'\t')
}

fn check_header(name: &str, value: &str) -> Result<(), InvalidResponse> {
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(InvalidResponse::HeaderName(name.to_owned()));
    }
    if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("Transfer-Encoding")
    {
        return Err(InvalidResponse::FramingHeader(name.to_owned()));
    }
    if has_control_char(value) {
        return Err(InvalidResponse::HeaderValue(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::{accept_response, HandshakeError};

    #[test]
    fn error_response_has_length_and_closes() {
        let bytes = HttpResponse::text(StatusCode::NOT_FOUND, "nope").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nnope"));
    }

    #[test]
    fn the_servers_own_responses_are_valid() {
        let own = [
            HttpResponse::not_found(),
            HttpResponse::html("<p>hi</p>"),
            HttpResponse::text(StatusCode::SERVICE_UNAVAILABLE, "server busy\n")
                .with_header("Retry-After", "1"),
            accept_response("dGhlIHNhbXBsZSBub25jZQ==", Some("chat")),
            HandshakeError::HeadTooLarge.response(),
            HandshakeError::Malformed("header line").response(),
            HandshakeError::MethodNotAllowed.response(),
            HandshakeError::BadUpgrade("missing Connection: upgrade").response(),
            HandshakeError::UnsupportedVersion.response(),
        ];
        for response in own {
            assert_eq!(response.validate(), Ok(()), "{response:?}");
        }
    }

    #[test]
    fn a_line_break_or_nul_in_a_header_value_is_refused() {
        for value in [
            "x\r\nSet-Cookie: session=stolen",
            "x\nSet-Cookie: y",
            "x\rSet-Cookie: y",
            "x\0y",
            "\r\n\r\n<script>",
            "bell\x07",
            "del\x7f",
        ] {
            let response = HttpResponse::not_found().with_header("Location", value);
            assert_eq!(
                response.validate(),
                Err(InvalidResponse::HeaderValue("Location".into())),
                "{value:?}"
            );
            assert_eq!(
                HttpResponse::not_found().try_with_header("Location", value),
                Err(InvalidResponse::HeaderValue("Location".into()))
            );
        }
    }

    #[test]
    fn tabs_spaces_and_non_ascii_values_are_fine() {
        let response = HttpResponse::new(StatusCode::OK)
            .try_with_header("X-Note", "a\tb c")
            .and_then(|r| r.try_with_header("X-Name", "Zoë €"))
            .and_then(|r| r.try_with_header("X-Empty", ""))
            .unwrap();
        assert_eq!(response.validate(), Ok(()));
        assert_eq!(response.headers.len(), 3);
    }

    #[test]
    fn header_names_must_be_tokens() {
        for name in [
            "",
            "Set-Cookie: x\r\nX",
            "X Y",
            "X:Y",
            "X\r\nSet-Cookie",
            "X\0",
            "Zoë",
            "(x)",
        ] {
            let response = HttpResponse::not_found().with_header(name, "v");
            assert_eq!(
                response.validate(),
                Err(InvalidResponse::HeaderName(name.into())),
                "{name:?}"
            );
        }
        assert!(HttpResponse::not_found()
            .try_with_header("X-Ok_1.2~!#$%&'*+^`|", "v")
            .is_ok());
    }

    #[test]
    fn framing_headers_belong_to_the_server() {
        for name in ["Content-Length", "content-length", "Transfer-Encoding"] {
            assert_eq!(
                HttpResponse::not_found().try_with_header(name, "0"),
                Err(InvalidResponse::FramingHeader(name.into()))
            );
        }
    }

    #[test]
    fn status_must_be_100_to_599_and_its_reason_one_line() {
        for code in [0, 99, 600, 999, u16::MAX] {
            let response = HttpResponse::new(StatusCode(code, "Odd"));
            assert_eq!(response.validate(), Err(InvalidResponse::Status(code)));
        }
        for code in [100, 200, 599] {
            assert_eq!(
                HttpResponse::new(StatusCode(code, "Fine")).validate(),
                Ok(())
            );
        }
        for reason in ["OK\r\nSet-Cookie: x", "OK\n", "OK\0"] {
            let status = StatusCode(200, reason);
            assert_eq!(
                HttpResponse::new(status).validate(),
                Err(InvalidResponse::ReasonPhrase)
            );
        }
        // An empty reason phrase is allowed (RFC 9112 §4).
        assert_eq!(HttpResponse::new(StatusCode(204, "")).validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_header_escaped() {
        let shown = InvalidResponse::HeaderValue("X-A".into()).to_string();
        assert!(
            shown.contains("\"X-A\"") && shown.contains("control character"),
            "{shown}"
        );
        let shown = InvalidResponse::HeaderName("a\r\nb".into()).to_string();
        assert!(shown.contains(r#""a\r\nb""#), "{shown}");
        assert!(!shown.contains('\n'));
        assert!(InvalidResponse::Status(700).to_string().contains("700"));
    }
}
