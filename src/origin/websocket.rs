//! The origin's `/ws` route: the WebSocket handshake (RFC 6455 §4) and an echo of
//! every frame.

use crate::http::RequestInfo;

use super::{Conn, READ_BUF};

/// The Sec-WebSocket-Key of a valid opening handshake (RFC 6455 §4.2.1): GET,
/// an upgrade to `websocket`, version 13 and a key.
pub(super) fn websocket_key(req: &httparse::Request<'_, '_>, info: &RequestInfo) -> Option<String> {
    let field = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let ok = req.method == Some("GET")
        && info.upgrade
        && field("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && field("sec-websocket-version").as_deref() == Some("13");
    field("sec-websocket-key").filter(|k| ok && !k.is_empty())
}

/// Sec-WebSocket-Accept for a key: base64 of the SHA-1 of key + the RFC's GUID.
pub fn websocket_accept(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha.digest().bytes())
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Echo one WebSocket frame if a whole one is buffered (RFC 6455 §5.2). Client
/// frames must be masked; replies are not. A protocol error or a frame too large
/// for the buffer gets a close frame with its code, then the connection closes.
pub(super) fn websocket_frame(c: &mut Conn) -> Option<bool> {
    let buf = c.inbuf.filled();
    if buf.len() < 2 {
        return Some(false);
    }
    let (first, opcode) = (buf[0], buf[0] & 0x0f);
    let (len, offset) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?), 10),
        126 | 127 => return Some(false),
        n => (u64::from(n), 2),
    };
    let reserved = first & 0x70 != 0;
    let unmasked = buf[1] & 0x80 == 0;
    if reserved || unmasked || !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        websocket_close(c, 1002);
        return None;
    }
    if len > (READ_BUF - 14) as u64 {
        websocket_close(c, 1009);
        return None;
    }
    let len = len as usize;
    let total = offset + 4 + len;
    if buf.len() < total {
        return Some(false);
    }
    let mask = [
        buf[offset],
        buf[offset + 1],
        buf[offset + 2],
        buf[offset + 3],
    ];
    let reply_first = if opcode == 9 { 0x80 | 10 } else { first };
    if opcode != 10 {
        c.out.push(reply_first);
        match len {
            0..=125 => c.out.push(len as u8),
            126..=65535 => {
                c.out.push(126);
                c.out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                c.out.push(127);
                c.out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let payload = &c.inbuf.filled()[offset + 4..total];
        c.out
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    c.inbuf.consume(total);
    if opcode == 8 {
        return None;
    }
    Some(true)
}

/// Queue a close frame with `code`.
pub(super) fn websocket_close(c: &mut Conn, code: u16) {
    c.out.extend_from_slice(&[0x88, 2]);
    c.out.extend_from_slice(&code.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455() {
        // The example of RFC 6455 §1.3.
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
