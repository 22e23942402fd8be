//! Decoding a request's query string into key/value pairs, the way browsers encode
//! forms and `URLSearchParams` (`application/x-www-form-urlencoded`): pairs split on
//! `&`, key from value on the first `=`, `+` for a space, `%XX` for any byte.
//!
//! Handlers read tokens, room names and user ids from the upgrade URL
//! (`/chat?room=caf%C3%A9&token=a+b`); decoding that by hand is where embedders go
//! wrong (a `+` left in, a `%2F` not decoded), so the request offers it decoded.

use std::borrow::Cow;

/// The pairs of a query string, decoded; see [`Request::query_pairs`].
///
/// Empty pieces (`a=1&&b=2`, a trailing `&`) are skipped; a piece without `=` is a
/// key with an empty value. A malformed escape (`%4`, `%zz`) is kept as it was
/// written, and bytes that do not decode to UTF-8 become U+FFFD: decoding never
/// fails, since the query is the client's to write.
///
/// [`Request::query_pairs`]: super::handshake::Request::query_pairs
#[derive(Debug, Clone)]
pub struct QueryPairs<'a> {
    rest: &'a str,
}

impl<'a> QueryPairs<'a> {
    /// The pairs of `query` (the part after `?`, without it).
    pub fn new(query: &'a str) -> QueryPairs<'a> {
        QueryPairs { rest: query }
    }
}

impl<'a> Iterator for QueryPairs<'a> {
    type Item = (Cow<'a, str>, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (piece, rest) = self.rest.split_once('&').unwrap_or((self.rest, ""));
            self.rest = rest;
            if piece.is_empty() {
                continue;
            }
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            return Some((decode_component(key), decode_component(value)));
        }
    }
}

/// Decodes one form-encoded component: `+` is a space, `%XX` a byte. Borrows when
/// there is nothing to decode (the common case: plain ASCII names and values).
pub fn decode_component(component: &str) -> Cow<'_, str> {
    if !component.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(component);
    }
    let bytes = component.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' => {
                let escaped = bytes.get(i + 1..i + 3).and_then(|hex| {
                    let high = (hex[0] as char).to_digit(16)?;
                    let low = (hex[1] as char).to_digit(16)?;
                    Some((high * 16 + low) as u8)
                });
                match escaped {
                    Some(byte) => {
                        decoded.push(byte);
                        i += 3;
                        continue;
                    }
                    None => decoded.push(b'%'),
                }
            }
            other => decoded.push(other),
        }
        i += 1;
    }
    match String::from_utf8(decoded) {
        Ok(text) => Cow::Owned(text),
        Err(error) => Cow::Owned(String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        QueryPairs::new(query)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn splits_pairs_and_decodes_plus_and_escapes() {
        assert_eq!(
            pairs("room=caf%C3%A9&token=a+b%2Bc&path=%2Fx%2Fy"),
            owned(&[("room", "café"), ("token", "a b+c"), ("path", "/x/y")])
        );
    }

    #[test]
    fn empty_pieces_are_skipped_and_a_bare_key_has_an_empty_value() {
        assert_eq!(
            pairs("&a=1&&flag&b=&=v&"),
            owned(&[("a", "1"), ("flag", ""), ("b", ""), ("", "v")])
        );
        assert!(pairs("").is_empty());
    }

    #[test]
    fn only_the_first_equals_sign_separates() {
        assert_eq!(pairs("expr=a=b"), owned(&[("expr", "a=b")]));
    }

    #[test]
    fn malformed_escapes_stay_as_written_and_bad_utf8_is_replaced() {
        assert_eq!(decode_component("100%"), "100%");
        assert_eq!(decode_component("%4"), "%4");
        assert_eq!(decode_component("%zz%41"), "%zzA");
        assert_eq!(decode_component("%FF"), "\u{FFFD}");
        // A multi-byte character cut short.
        assert_eq!(decode_component("%C3"), "\u{FFFD}");
    }

    #[test]
    fn plain_components_are_borrowed() {
        assert!(matches!(
            decode_component("plain-value_1.2"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(decode_component("a+b"), Cow::Owned(_)));
    }

    #[test]
    fn escapes_of_non_ascii_input_do_not_split_characters() {
        // Non-ASCII characters sent raw (not escaped) pass through whole.
        assert_eq!(decode_component("é%20ü+ß"), "é ü ß");
    }
}
