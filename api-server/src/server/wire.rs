//! The bytes of a response, as Cloud Hypervisor's own client reads them.
//!
//! `ch-remote` parses responses with CH's `api_client` crate, which is
//! stricter than HTTP/1.1 and than hyper's defaults in three ways; each is
//! met here without leaving HTTP/1.1:
//!
//! * **The status line.** `api_client` parses everything after
//!   `HTTP/1.1 ` up to the line end, trimmed, as the status code, so
//!   `200 OK` fails ("invalid digit found in string"). Every response
//!   carries an empty reason phrase ([`empty_reason`]), and hyper writes
//!   `HTTP/1.1 200 \r\n`: the form RFC 9112 allows (`status-code SP
//!   [reason-phrase]`) and the one CH's server (micro_http) writes.
//! * **Header case.** `api_client` looks for `Content-Length: ` in exactly
//!   that case; hyper writes lower-case names unless told otherwise. The
//!   server turns on hyper's `title_case_headers`, which writes
//!   `Content-Length`, `Content-Type`, `Allow`.
//! * **ASCII bodies.** `api_client` reads the socket 256 bytes at a time
//!   and decodes each piece as UTF-8 on its own, panicking when a
//!   multi-byte character straddles two pieces. Every JSON body is
//!   written with non-ASCII characters escaped ([`to_ascii_json`]:
//!   `"é"` as `"\u00e9"`), which any JSON reader decodes to the same text.
//!
//! Status codes: where Cloud Hypervisor answers a situation with a code
//! its client knows (200, 204, 400, 404, 500), the server answers the same
//! one; see `docs/api.md` for the codes snp-vmm adds (405, 409, 413).

use std::io;

use hyper::Response;
use hyper::ext::ReasonPhrase;
use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

/// Gives `response` an empty reason phrase: `HTTP/1.1 204 \r\n`.
pub(crate) fn empty_reason<B>(response: &mut Response<B>) {
    response
        .extensions_mut()
        .insert(ReasonPhrase::from_static(b""));
}

/// `value` as compact JSON whose every byte is ASCII.
pub(crate) fn to_ascii_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::new();
    value.serialize(&mut Serializer::with_formatter(&mut out, AsciiFormatter))?;
    Ok(out)
}

/// serde_json's compact format, with non-ASCII characters in strings
/// written as `\uXXXX` escapes (UTF-16 surrogate pairs beyond the BMP, as
/// JSON spells them).
struct AsciiFormatter;

impl Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut plain = 0;
        for (at, c) in fragment.char_indices() {
            if c.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[plain..at])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            plain = at + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[plain..])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn non_ascii_is_escaped_and_reads_back_the_same() {
        let value =
            json!({"chain": ["/tmp/été/certs.bin: no such file", "a — b", "🦀"], "ok": "plain"});
        let bytes = to_ascii_json(&value).unwrap();
        assert!(bytes.is_ascii(), "{}", String::from_utf8_lossy(&bytes));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r"\u00e9t\u00e9"), "{text}");
        assert!(text.contains(r"\u2014"), "{text}");
        assert!(text.contains(r"\ud83e\udd80"), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
        // Everything else as serde_json writes it.
        let plain = json!({"a": [1, true, null, "x\"y\n"]});
        assert_eq!(
            to_ascii_json(&plain).unwrap(),
            serde_json::to_vec(&plain).unwrap()
        );
    }
}
