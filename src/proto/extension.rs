//! The `Sec-WebSocket-Extensions` header (RFC 6455 §9.1): a list of offers, each a
//! name with parameters.
//!
//! ```text
//! extension-list = 1#extension
//! extension      = token *( OWS ";" OWS param )
//! param          = token [ "=" ( token / quoted-string ) ]
//! ```
//!
//! A header that does not follow this grammar fails the handshake (400); what the
//! offers *mean* is up to each extension (see [`deflate`](super::deflate)).

use std::fmt;

/// The header does not follow the RFC 6455 §9.1 grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionSyntaxError(pub &'static str);

impl fmt::Display for ExtensionSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed Sec-WebSocket-Extensions: {}", self.0)
    }
}

impl std::error::Error for ExtensionSyntaxError {}

/// One offered extension with its parameters, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The extension's token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameter names with their value, if any (quoted values are unquoted).
    pub params: Vec<(String, Option<String>)>,
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// A cursor over one header value.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn skip_ows(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn token(&mut self, what: &'static str) -> Result<String, ExtensionSyntaxError> {
        let start = self.at;
        while self.peek().is_some_and(is_token_char) {
            self.at += 1;
        }
        if start == self.at {
            return Err(ExtensionSyntaxError(what));
        }
        Ok(String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned())
    }

    fn quoted_string(&mut self) -> Result<String, ExtensionSyntaxError> {
        self.at += 1; // the opening quote
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err(ExtensionSyntaxError("unterminated quoted string")),
                Some(b'"') => {
                    self.at += 1;
                    break;
                }
                Some(b'\\') => {
                    let escaped = self
                        .bytes
                        .get(self.at + 1)
                        .ok_or(ExtensionSyntaxError("dangling escape"))?;
                    value.push(*escaped);
                    self.at += 2;
                }
                Some(c) => {
                    value.push(c);
                    self.at += 1;
                }
            }
        }
        // §9.1: "the value MUST conform to the token ABNF" once unquoted.
        if value.is_empty() || !value.iter().copied().all(is_token_char) {
            return Err(ExtensionSyntaxError("quoted value is not a token"));
        }
        Ok(String::from_utf8_lossy(&value).into_owned())
    }
}

/// Parses every value of the header, in order, into offers.
pub fn parse_offers<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Offer>, ExtensionSyntaxError> {
    let mut offers = Vec::new();
    for value in values {
        let mut cursor = Cursor {
            bytes: value.as_bytes(),
            at: 0,
        };
        loop {
            cursor.skip_ows();
            // Empty list elements (", ,") are allowed by the #rule and skipped.
            if cursor.peek() == Some(b',') {
                cursor.at += 1;
                continue;
            }
            if cursor.peek().is_none() {
                break;
            }
            let name = cursor.token("extension name")?;
            let mut params = Vec::new();
            loop {
                cursor.skip_ows();
                match cursor.peek() {
                    Some(b';') => {
                        cursor.at += 1;
                        cursor.skip_ows();
                        let param = cursor.token("parameter name")?;
                        cursor.skip_ows();
                        let value = if cursor.peek() == Some(b'=') {
                            cursor.at += 1;
                            cursor.skip_ows();
                            if cursor.peek() == Some(b'"') {
                                Some(cursor.quoted_string()?)
                            } else {
                                Some(cursor.token("parameter value")?)
                            }
                        } else {
                            None
                        };
                        params.push((param, value));
                    }
                    Some(b',') | None => break,
                    Some(_) => return Err(ExtensionSyntaxError("unexpected character")),
                }
            }
            offers.push(Offer { name, params });
        }
    }
    Ok(offers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offer(name: &str, params: &[(&str, Option<&str>)]) -> Offer {
        Offer {
            name: name.into(),
            params: params
                .iter()
                .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn parses_several_offers_across_headers() {
        let offers = parse_offers([
            "permessage-deflate; client_max_window_bits, permessage-deflate;server_max_window_bits=10",
            " x-foo ; a=\"b\" ;c",
        ])
        .unwrap();
        assert_eq!(
            offers,
            [
                offer("permessage-deflate", &[("client_max_window_bits", None)]),
                offer(
                    "permessage-deflate",
                    &[("server_max_window_bits", Some("10"))]
                ),
                offer("x-foo", &[("a", Some("b")), ("c", None)]),
            ]
        );
    }

    #[test]
    fn chrome_offer() {
        let offers = parse_offers(["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(offers.len(), 1);
        assert_eq!(
            offers[0].params,
            [("client_max_window_bits".to_string(), None)]
        );
    }

    #[test]
    fn rejects_what_the_grammar_does_not_allow() {
        for bad in [
            "permessage-deflate; =10",
            "permessage-deflate; a=",
            "permessage-deflate; a=\"1 0\"",
            "permessage-deflate; a=\"10",
            "perm essage",
            ";a",
            "x; a=b c",
        ] {
            assert!(parse_offers([bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_elements_are_skipped() {
        assert_eq!(parse_offers([" , x ,, "]).unwrap(), [offer("x", &[])]);
        assert_eq!(parse_offers([""]).unwrap(), []);
    }

    proptest! {
        #[test]
        fn never_panics(value in "[ -~]{0,80}") {
            let _ = parse_offers([value.as_str()]);
        }

        #[test]
        fn well_formed_offers_round_trip(
            names in proptest::collection::vec("[a-z][a-z0-9_-]{0,12}", 1..4),
            params in proptest::collection::vec(("[a-z_]{1,10}", proptest::option::of("[0-9a-z]{1,4}"), any::<bool>()), 0..4),
        ) {
            let mut header = String::new();
            let mut expected = Vec::new();
            for name in &names {
                if !header.is_empty() {
                    header.push_str(" , ");
                }
                header.push_str(name);
                let mut offer = Offer { name: name.clone(), params: Vec::new() };
                for (param, value, quoted) in &params {
                    header.push_str(" ;\t");
                    header.push_str(param);
                    if let Some(value) = value {
                        if *quoted {
                            header.push_str(&format!("=\"{value}\""));
                        } else {
                            header.push_str(&format!("={value}"));
                        }
                    }
                    offer.params.push((param.clone(), value.clone()));
                }
                expected.push(offer);
            }
            prop_assert_eq!(parse_offers([header.as_str()]).unwrap(), expected);
        }
    }
}
