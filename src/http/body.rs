//! Where a message body ends: a scanner that walks Content-Length and chunked
//! bodies as they pass, without copying them.

use super::chunked::{ChunkError, ChunkedDecoder};
use super::framing::Framing;

/// Tracks how much of a body remains, for any framing: the proxy feeds it the bytes
/// it has buffered and learns how many belong to the current message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyScanner {
    /// Bytes still expected of a Content-Length body (0: done).
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Every byte belongs to the body until the peer closes.
    UntilClose,
}

impl BodyScanner {
    /// Body data seen so far, for a chunked body (framing excluded); 0 otherwise.
    pub fn chunked_data(&self) -> u64 {
        match self {
            BodyScanner::Chunked(d) => d.data_bytes(),
            _ => 0,
        }
    }

    pub fn new(framing: Framing) -> BodyScanner {
        match framing {
            Framing::None => BodyScanner::Length(0),
            Framing::Length(n) => BodyScanner::Length(n),
            Framing::Chunked => BodyScanner::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => BodyScanner::UntilClose,
        }
    }

    /// Consume bytes from the front of `buf` that belong to this body; returns how
    /// many. Stops at the end of the message, leaving the rest for the next one.
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        match self {
            BodyScanner::Length(remaining) => {
                let n = (*remaining).min(buf.len() as u64);
                *remaining -= n;
                Ok(n as usize)
            }
            BodyScanner::Chunked(decoder) => decoder.feed(buf),
            BodyScanner::UntilClose => Ok(buf.len()),
        }
    }

    /// The whole body has been seen (never true for a close-delimited body).
    pub fn is_done(&self) -> bool {
        match self {
            BodyScanner::Length(remaining) => *remaining == 0,
            BodyScanner::Chunked(decoder) => decoder.is_done(),
            BodyScanner::UntilClose => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_scanner_stops_at_message_end() {
        let mut s = BodyScanner::new(Framing::Length(5));
        assert_eq!(s.scan(b"abc").unwrap(), 3);
        assert!(!s.is_done());
        assert_eq!(s.scan(b"deGET").unwrap(), 2);
        assert!(s.is_done());
        let mut s = BodyScanner::new(Framing::Chunked);
        assert_eq!(s.scan(b"3\r\nabc\r\n0\r\n\r\nGET").unwrap(), 13);
        assert!(s.is_done());
        let mut s = BodyScanner::new(Framing::None);
        assert!(s.is_done());
        assert_eq!(s.scan(b"GET").unwrap(), 0);
    }
}
