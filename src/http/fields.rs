//! The field grammar the framing rules rest on (RFC 9110 §5): which fields
//! matter to a proxy, list elements, optional whitespace, Content-Length values,
//! request targets and authorities, and transfer codings.

/// The header fields whose names matter for framing and hop-by-hop handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    Expect,
    /// Hop-by-hop, but forwarded for a protocol switch (RFC 9110 §7.8).
    Upgrade,
    /// Hop-by-hop by definition (RFC 9110 §7.6.1): never forwarded.
    HopByHop,
    XForwardedFor,
    XForwardedProto,
    XRequestId,
    Other,
}

/// Classify a field name, case-insensitively, by length first so most names cost one compare.
pub fn field_kind(name: &str) -> FieldKind {
    let n = name.as_bytes();
    let is = |s: &str| lower_eq(n, s.as_bytes());
    match n.len() {
        2 if is("te") => FieldKind::HopByHop,
        4 if is("host") => FieldKind::Host,
        6 if is("expect") => FieldKind::Expect,
        7 if is("upgrade") => FieldKind::Upgrade,
        7 if is("trailer") => FieldKind::HopByHop,
        10 if is("connection") => FieldKind::Connection,
        10 if is("keep-alive") => FieldKind::HopByHop,
        12 if is("x-request-id") => FieldKind::XRequestId,
        14 if is("content-length") => FieldKind::ContentLength,
        15 if is("x-forwarded-for") => FieldKind::XForwardedFor,
        16 if is("proxy-connection") => FieldKind::HopByHop,
        17 if is("transfer-encoding") => FieldKind::TransferEncoding,
        17 if is("x-forwarded-proto") => FieldKind::XForwardedProto,
        _ => FieldKind::Other,
    }
}

/// `name` equals `lower` (lowercase letters and `-`) but for the case of its
/// letters, compared eight bytes at a time: a byte may differ from `lower`'s only
/// in bit 5 (the case bit), and only where `lower` has a letter (bit 6 set).
#[inline]
fn lower_eq(name: &[u8], lower: &[u8]) -> bool {
    fn word(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    }
    fn same(name: u64, lower: u64) -> bool {
        let case_bits = (lower & 0x4040_4040_4040_4040) >> 1;
        (name ^ lower) & !case_bits == 0
    }
    debug_assert!(
        lower.iter().all(|&b| b.is_ascii_lowercase() || b == b'-'),
        "{lower:?}"
    );
    let len = lower.len();
    if name.len() != len {
        return false;
    }
    if len < 8 {
        return name.eq_ignore_ascii_case(lower);
    }
    // Whole words, then the last eight bytes (overlapping the one before).
    let mut at = 0;
    while at + 8 < len {
        if !same(word(name, at), word(lower, at)) {
            return false;
        }
        at += 8;
    }
    same(word(name, len - 8), word(lower, len - 8))
}

/// Iterate the elements of a comma-separated field value (RFC 9110 §5.6.1), with
/// optional whitespace trimmed and empty elements skipped.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Strip optional whitespace (SP / HTAB) from both ends.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Does any Connection field in `headers` list `name` as a connection option?
/// Such fields are hop-by-hop (RFC 9110 §7.6.1) and are not forwarded.
pub fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| field_kind(h.name) == FieldKind::Connection)
        .any(|h| list_elements(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// Parse a Content-Length value: 1*DIGIT, or a list of identical such values
/// (RFC 9112 §6.3 item 5). Anything else is invalid.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    let mut elements = 0;
    for element in value.split(|&b| b == b',') {
        let element = trim_ows(element);
        if element.is_empty() {
            return None;
        }
        let mut n: u64 = 0;
        for &b in element {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        match result {
            Some(prev) if prev != n => return None,
            _ => result = Some(n),
        }
        elements += 1;
    }
    if elements == 0 { None } else { result }
}

/// Split an absolute-form target `http://authority/path?query` into its authority
/// and the rest (`/path?query`, `?query` or empty: the origin-form target is that
/// with a `/` in front when it does not start with one). `None` unless the scheme
/// is http or https, the authority is a valid host and port with no userinfo, and
/// there is no fragment.
pub fn split_absolute_form(target: &str) -> Option<(&str, &str)> {
    let colon = target.find("://")?;
    let scheme = &target[..colon];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = &target[colon + 3..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || !is_valid_authority(authority.as_bytes()) || target.contains('#') {
        return None;
    }
    Some((authority, path))
}

/// `uri-host [":" port]` (RFC 3986 §3.2.2-3): an IP literal in brackets, or a
/// reg-name of unreserved, sub-delims and percent-encoded bytes; then digits.
/// Userinfo (`@`), paths, whitespace and commas are not part of it. An empty host is
/// refused: "http" URIs must have one (RFC 9110 §4.2.1).
pub fn is_valid_authority(value: &[u8]) -> bool {
    let value = trim_ows(value);
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &rest[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b"x"[..], port),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, &b""[..]),
        }
    };
    if host.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if b == b'%' {
            if !(i + 2 < host.len()
                && host[i + 1].is_ascii_hexdigit()
                && host[i + 2].is_ascii_hexdigit())
            {
                return false;
            }
            i += 3;
        } else if REG_NAME[usize::from(b)] {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Bytes allowed in a reg-name besides percent-encodings: unreserved and
/// sub-delims (RFC 3986 §3.2.2), except `,` (RFC 3986 allows it; refused, because a
/// Host with a comma reads like two Host fields folded into one list).
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// Codings registered for Transfer-Encoding that we pass through to the backend.
pub(super) fn is_known_coding(element: &[u8]) -> bool {
    // A coding may carry parameters ("gzip;q=1" is not valid here, but a parameter
    // on a known coding is still that coding); only the name decides.
    let name = match element.iter().position(|&b| b == b';') {
        Some(i) => trim_ows(&element[..i]),
        None => element,
    };
    ["gzip", "x-gzip", "deflate", "compress", "x-compress"]
        .iter()
        .any(|known| name.eq_ignore_ascii_case(known.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_values() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(
            parse_content_length(b"18446744073709551615"),
            Some(u64::MAX)
        );
        assert_eq!(parse_content_length(b"18446744073709551616"), None);
        assert_eq!(parse_content_length(b"4,4"), Some(4));
        assert_eq!(parse_content_length(b"4,"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"0x10"), None);
    }

    #[test]
    fn field_kinds() {
        assert_eq!(field_kind("content-LENGTH"), FieldKind::ContentLength);
        assert_eq!(field_kind("TE"), FieldKind::HopByHop);
        assert_eq!(field_kind("Keep-Alive"), FieldKind::HopByHop);
        assert_eq!(field_kind("X-Forwarded-For"), FieldKind::XForwardedFor);
        assert_eq!(field_kind("Accept"), FieldKind::Other);
    }

    /// Against the plain comparison: every known name in mixed case, and every
    /// name one byte away from one (any byte value at any position).
    #[test]
    fn field_kind_matches_the_plain_comparison() {
        let names = [
            "te",
            "host",
            "expect",
            "upgrade",
            "trailer",
            "connection",
            "keep-alive",
            "content-length",
            "x-forwarded-for",
            "proxy-connection",
            "transfer-encoding",
            "x-forwarded-proto",
            "x-request-id",
        ];
        for lower in names {
            for target in names {
                let plain = |n: &[u8]| n.eq_ignore_ascii_case(target.as_bytes());
                let mut mixed = lower.as_bytes().to_vec();
                for (i, b) in mixed.iter_mut().enumerate() {
                    if i % 3 == 0 {
                        *b = b.to_ascii_uppercase();
                    }
                }
                assert_eq!(lower_eq(&mixed, target.as_bytes()), plain(&mixed));
                for at in 0..mixed.len() {
                    for byte in 0..=255u8 {
                        let mut name = mixed.clone();
                        name[at] = byte;
                        assert_eq!(
                            lower_eq(&name, target.as_bytes()),
                            plain(&name),
                            "{name:?} against {target}"
                        );
                    }
                }
            }
        }
    }
}
