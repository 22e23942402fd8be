//! Plain HTTP/1.1 responses: the 101 that opens a WebSocket, the errors that refuse
//! one, and whatever a handler serves to a browser that asks for a page.
//!
//! Every response we send ends the connection (`Connection: close`) unless it is the
//! 101: a WebSocket server is not a web server, and keeping HTTP keep-alive out keeps
//! the connection state machine to one request per connection.

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

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> HttpResponse {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
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

    /// Serializes the response, adding `Server`, and for a non-101 response
    /// `Content-Length` and `Connection: close`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_has_length_and_closes() {
        let bytes = HttpResponse::text(StatusCode::NOT_FOUND, "nope").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nnope"));
    }
}
