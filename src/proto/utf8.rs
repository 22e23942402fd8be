//! Incremental UTF-8 validation (RFC 6455 §8.1).
//!
//! A text message may arrive as many fragments, and one frame may arrive in many reads,
//! so a code point can be split anywhere. The RFC says an endpoint that sees invalid
//! UTF-8 must fail the connection; Autobahn's 6.4.x cases check that we do so *as soon
//! as* the bad byte arrives ("fail fast"), not after the whole message is in. The
//! validator keeps at most three bytes of an unfinished code point between calls.
//!
//! Every check of a text payload goes through [`from_utf8`]: SIMD validation
//! (`simdutf8`, 32 bytes a step with AVX2, chosen at run time) for the usual case, a
//! valid piece, and the standard library's only for the details of a failure. On a
//! 1 KiB text echo, `std::str::from_utf8` took more instructions than unmasking the
//! payload (a sixth of the server's own work per message under JSON-like load).

use std::str;

/// [`std::str::from_utf8`], faster on valid input of 64 bytes or more: SIMD
/// validation first, the standard library's (scalar) one only to describe an error
/// (where the valid prefix ends, and whether the input merely stops inside a code
/// point), which only invalid or split input needs. Same result either way.
pub fn from_utf8(bytes: &[u8]) -> Result<&str, str::Utf8Error> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(_) => str::from_utf8(bytes),
    }
}

/// The bytes fed so far are not a prefix of any valid UTF-8 string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

/// Validates a byte stream fed in pieces, rejecting at the first byte that cannot be
/// part of valid UTF-8.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

/// How many bytes a code point that starts with `lead` has. Only called for bytes the
/// standard library already accepted as the start of an unfinished sequence.
fn sequence_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    /// Feeds the next piece of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            let have = usize::from(self.partial_len);
            let want = sequence_width(self.partial[0]);
            let take = (want - have).min(bytes.len());
            self.partial[have..have + take].copy_from_slice(&bytes[..take]);
            self.partial_len += take as u8;
            bytes = &bytes[take..];
            match from_utf8(&self.partial[..usize::from(self.partial_len)]) {
                Ok(_) => self.partial_len = 0,
                // Still unfinished: the piece was too short to complete it.
                Err(e) if e.error_len().is_none() => return Ok(()),
                Err(_) => return Err(Utf8Error),
            }
        }
        match from_utf8(bytes) {
            Ok(_) => Ok(()),
            // `error_len() == None` means the input ends inside a sequence that is valid
            // so far; the standard library checks each continuation byte's range (no
            // surrogates, no overlongs, nothing above U+10FFFF), so this is fail-fast.
            Err(e) if e.error_len().is_none() => {
                let rest = &bytes[e.valid_up_to()..];
                self.partial[..rest.len()].copy_from_slice(rest);
                self.partial_len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(Utf8Error),
        }
    }

    /// Declares the end of the stream: an unfinished code point is an error.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let complete = self.partial_len == 0;
        self.partial_len = 0;
        if complete {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }

    /// Whether bytes of an unfinished code point are held (at most three).
    pub fn holds(&self) -> bool {
        self.partial_len > 0
    }

    /// How many more bytes the held code point needs (0 if none is held).
    pub fn needs(&self) -> usize {
        if self.partial_len == 0 {
            0
        } else {
            sequence_width(self.partial[0]) - usize::from(self.partial_len)
        }
    }

    /// Parts mode: feeds the start of `bytes` to the held code point, taking at most
    /// [`needs`](Self::needs) bytes. Returns how many were taken and, once the code
    /// point is complete, the code point itself (up to 4 bytes), so that it can be
    /// handed on as a part of its own without copying anything else.
    pub fn complete(&mut self, bytes: &[u8]) -> Result<(usize, Option<&str>), Utf8Error> {
        let have = usize::from(self.partial_len);
        let want = sequence_width(self.partial[0]);
        let take = (want - have).min(bytes.len());
        self.partial[have..have + take].copy_from_slice(&bytes[..take]);
        self.partial_len += take as u8;
        match from_utf8(&self.partial[..usize::from(self.partial_len)]) {
            Ok(text) => {
                self.partial_len = 0;
                Ok((take, Some(text)))
            }
            Err(e) if e.error_len().is_none() => Ok((take, None)),
            Err(_) => Err(Utf8Error),
        }
    }

    /// The first `len` bytes of the held code point: after [`complete`](Self::complete)
    /// finished one, the code point it returned.
    pub fn completed(&self, len: usize) -> &[u8] {
        &self.partial[..len.min(4)]
    }

    /// The bytes of the unfinished code point held now.
    pub fn held(&self) -> &[u8] {
        &self.partial[..usize::from(self.partial_len)]
    }

    /// Parts mode: validates `bytes` (nothing may be held) and returns its longest
    /// valid prefix, holding the rest — at most three bytes of a code point that is
    /// valid so far — for [`complete`](Self::complete) to finish.
    pub fn split<'b>(&mut self, bytes: &'b [u8]) -> Result<&'b str, Utf8Error> {
        debug_assert!(self.partial_len == 0);
        match from_utf8(bytes) {
            Ok(text) => Ok(text),
            Err(e) if e.error_len().is_none() => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                self.partial[..rest.len()].copy_from_slice(rest);
                self.partial_len = rest.len() as u8;
                // Checked valid just above; the standard library gives no safe way
                // to keep that knowledge, so ask again (only the prefix, once).
                from_utf8(valid).map_err(|_| Utf8Error)
            }
            Err(_) => Err(Utf8Error),
        }
    }

    /// Forgets any unfinished code point, ready for a new message.
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn validate_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::default();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.min(bytes.len()).max(start);
            v.feed(&bytes[start..cut])?;
            start = cut;
        }
        v.feed(&bytes[start..])?;
        v.finish()
    }

    #[test]
    fn accepts_code_point_split_at_every_position() {
        let text = "κόσμε 𝄞 €".as_bytes();
        for cut in 0..=text.len() {
            assert_eq!(validate_in_pieces(text, &[cut]), Ok(()), "cut at {cut}");
        }
        // One byte at a time.
        let cuts: Vec<usize> = (0..text.len()).collect();
        assert_eq!(validate_in_pieces(text, &cuts), Ok(()));
    }

    #[test]
    fn fails_fast_on_the_first_impossible_byte() {
        // Autobahn 6.4.1: "κόσμε" followed by F4 90 (above U+10FFFF); the error must be
        // seen when F4 90 arrives, not when the message ends.
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed("κόσμε".as_bytes()), Ok(()));
        assert_eq!(v.feed(&[0xF4]), Ok(()));
        assert_eq!(v.feed(&[0x90]), Err(Utf8Error));
    }

    #[test]
    fn rejects_surrogates_overlongs_and_truncation() {
        for bad in [
            &[0xED, 0xA0, 0x80][..],
            &[0xC0, 0xAF],
            &[0xE0, 0x80, 0xAF],
            &[0xF8, 0x88, 0x80, 0x80, 0x80],
            &[0xFF],
        ] {
            assert_eq!(validate_in_pieces(bad, &[1]), Err(Utf8Error), "{bad:x?}");
        }
        assert_eq!(validate_in_pieces(&[0xE2, 0x82], &[]), Err(Utf8Error));
    }

    proptest! {
        #[test]
        fn from_utf8_agrees_with_std(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                     text in "\\PC{0,100}") {
            // Long enough for the SIMD path (64 bytes and more) and short ones; valid
            // text, random bytes, and valid text with random bytes spliced in.
            let mut spliced = text.as_bytes().repeat(3);
            let at = bytes.len() % (spliced.len() + 1);
            spliced.splice(at..at, bytes.iter().copied().take(3));
            for input in [&bytes[..], text.as_bytes(), &spliced] {
                let std = std::str::from_utf8(input);
                let ours = from_utf8(input);
                prop_assert_eq!(ours, std);
            }
        }

        #[test]
        fn agrees_with_std_for_any_split(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                         cuts in proptest::collection::vec(0usize..64, 0..6)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let expected = std::str::from_utf8(&bytes).is_ok();
            prop_assert_eq!(validate_in_pieces(&bytes, &cuts).is_ok(), expected);
        }

        #[test]
        fn valid_strings_pass_for_any_split(s in "\\PC*", cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(validate_in_pieces(s.as_bytes(), &cuts), Ok(()));
        }
    }
}
