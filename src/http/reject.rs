//! Why a request is refused before anything of it is forwarded, and the local
//! response each refusal is answered with; how a head that does not parse is
//! classified (400, 414, 431, 505).

/// Why a request is refused before anything of it is forwarded. Each maps to one
/// status code; see `status()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Malformed or ambiguous message: 400.
    BadRequest,
    /// The client took too long to send its head: 408.
    Timeout,
    /// The request line alone is longer than the head limit: 414.
    UriTooLong,
    /// The head is larger than the limit, or has too many fields: 431.
    HeadTooLarge,
    /// An Expect field other than `100-continue`: 417.
    ExpectationFailed,
    /// Transfer coding or method we do not implement: 501.
    NotImplemented,
    /// No backend could be reached, or it answered with garbage: 502.
    BadGateway,
    /// Every backend is down: 503, with Retry-After.
    Unavailable,
    /// The request body is over `--max-body-bytes`: 413.
    BodyTooLarge,
    /// The backend did not answer in time: 504.
    GatewayTimeout,
    /// HTTP version other than 1.0 and 1.1: 505.
    VersionNotSupported,
}

impl Reject {
    /// The status code sent for this refusal.
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest => 400,
            Reject::Timeout => 408,
            Reject::UriTooLong => 414,
            Reject::ExpectationFailed => 417,
            Reject::HeadTooLarge => 431,
            Reject::NotImplemented => 501,
            Reject::BadGateway => 502,
            Reject::Unavailable => 503,
            Reject::BodyTooLarge => 413,
            Reject::GatewayTimeout => 504,
            Reject::VersionNotSupported => 505,
        }
    }

    /// The local response to send: without its body when it answers a HEAD request
    /// (RFC 9110 §9.3.2), which must not get one.
    pub fn response_to(self, head_request: bool) -> &'static [u8] {
        let full = self.response();
        if head_request {
            let end = full
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(full.len(), |p| p + 4);
            &full[..end]
        } else {
            full
        }
    }

    /// The complete local response: short body, Content-Length and `Connection: close`.
    pub fn response(self) -> &'static [u8] {
        match self {
            Reject::BadRequest => b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nBad Request\n",
            Reject::Timeout => b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nRequest Timeout\n",
            Reject::UriTooLong => b"HTTP/1.1 414 URI Too Long\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: close\r\n\r\nURI Too Long\n",
            Reject::ExpectationFailed => b"HTTP/1.1 417 Expectation Failed\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\nExpectation Failed\n",
            Reject::HeadTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n\r\nRequest Header Fields Too Large\n",
            Reject::NotImplemented => b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nNot Implemented\n",
            Reject::BadGateway => b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nBad Gateway\n",
            Reject::BodyTooLarge => b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: 18\r\nConnection: close\r\n\r\nContent Too Large\n",
            Reject::Unavailable => b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nRetry-After: 1\r\nConnection: close\r\n\r\nService Unavailable\n",
            Reject::GatewayTimeout => b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nGateway Timeout\n",
            Reject::VersionNotSupported => b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\nContent-Length: 27\r\nConnection: close\r\n\r\nHTTP Version Not Supported\n",
        }
    }
}

/// Line endings in a head must be CRLF. httparse also accepts a bare LF; a proxy must
/// not, because a backend that reads the head differently is a smuggling vector
/// (RFC 9112 §2.2 lets recipients accept it, which is exactly the ambiguity).
pub fn has_bare_lf(head: &[u8]) -> bool {
    // Every head passes through here whole, so the scan has no early exit and no
    // branch: each byte pair folds into one flag, which the compiler vectorises
    // (a byte-at-a-time loop cost about 5 instructions a byte).
    let Some((&first, rest)) = head.split_first() else {
        return false;
    };
    let bare = head.iter().zip(rest).fold(0u8, |bare, (&prev, &b)| {
        bare | u8::from((b == b'\n') & (prev != b'\r'))
    });
    first == b'\n' || bare != 0
}

/// Why a head over the `limit` is refused: 414 when the request line alone does not
/// end within it, 431 otherwise.
pub fn oversized_head(head: &[u8], limit: usize) -> Reject {
    if head[..head.len().min(limit)].contains(&b'\n') {
        Reject::HeadTooLarge
    } else {
        Reject::UriTooLong
    }
}

/// Classify an httparse error on a request. A version that looks like `HTTP/x.y`
/// but is not 1.0 or 1.1 gets 505; everything else is malformed.
pub fn classify_parse_error(err: httparse::Error, head: &[u8]) -> Reject {
    match err {
        httparse::Error::TooManyHeaders => Reject::HeadTooLarge,
        httparse::Error::Version if looks_like_other_version(head) => Reject::VersionNotSupported,
        _ => Reject::BadRequest,
    }
}

/// Does the request line end in a well-formed `HTTP/DIGIT.DIGIT` version?
fn looks_like_other_version(head: &[u8]) -> bool {
    let line_end = head
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(head.len());
    let line = &head[..line_end];
    match line.iter().rposition(|&b| b == b' ') {
        Some(sp) => matches!(
            &line[sp + 1..],
            [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                if major.is_ascii_digit() && minor.is_ascii_digit()
        ),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_request_gets_no_body_in_a_local_response() {
        let full = Reject::BadGateway.response_to(false);
        let head = Reject::BadGateway.response_to(true);
        assert!(full.ends_with(b"\r\n\r\nBad Gateway\n"));
        assert!(head.ends_with(b"Connection: close\r\n\r\n"));
        assert_eq!(&full[..head.len()], head);
    }

    #[test]
    fn oversized_heads_are_414_or_431() {
        assert_eq!(oversized_head(b"GET /aaaaaaaa", 8), Reject::UriTooLong);
        assert_eq!(
            oversized_head(b"GET / HTTP/1.1\r\nX: aaaa", 8),
            Reject::UriTooLong
        );
        assert_eq!(
            oversized_head(b"GET / HTTP/1.1\r\nX: aaaa", 20),
            Reject::HeadTooLarge
        );
    }

    #[test]
    fn bare_lf_detection() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\n\r\n"));
        for (head, bare) in [
            (&b""[..], false),
            (b"\n", true),
            (b"\r\n", false),
            (b"\r", false),
        ] {
            assert_eq!(has_bare_lf(head), bare, "{head:?}");
        }
        // At every position of a head longer than a vector, against the plain
        // definition: an LF at the start, or one not preceded by CR.
        let plain = |h: &[u8]| {
            h.first() == Some(&b'\n') || h.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r')
        };
        let base = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
        for at in 0..base.len() {
            let mut head = base.to_vec();
            head[at] = b'\n';
            assert_eq!(has_bare_lf(&head), plain(&head), "LF at {at}");
            let mut head = base.to_vec();
            head[at] = b'x';
            assert_eq!(has_bare_lf(&head), plain(&head), "x at {at}");
        }
    }
}
