//! The chunked transfer coding (RFC 9112 §7.1), as a push decoder that only finds
//! where a message ends.
//!
//! The proxy relays chunked bodies byte for byte, so the decoder never copies data:
//! it walks the framing (sizes, extensions, CRLFs, trailers) one byte at a time and
//! skips chunk data in bulk. It is strict: lines end in CRLF, sizes are bare hex,
//! extensions are `;token[=token|quoted-string]`, and trailers are bounded. Any
//! deviation is an error, because a lenient reading that differs from the backend's
//! is how requests get smuggled.

/// Largest trailer section accepted, in bytes: every field line with its CRLF (the
/// empty line that ends the body is not part of it).
pub const MAX_TRAILER_BYTES: u32 = 16 * 1024;
/// Most hex digits in a chunk size (leading zeros included): 16 fill 64 bits.
pub const MAX_SIZE_DIGITS: u32 = 16;
/// Longest chunk-size line (size and extensions, before the CRLF), in bytes.
pub const MAX_CHUNK_LINE: u32 = 1024;

/// Why a chunked body is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A byte that has no place at this point of the framing.
    Syntax,
    /// The chunk size has more than `MAX_SIZE_DIGITS` digits or does not fit in 64 bits.
    SizeOverflow,
    /// The chunk-size line is longer than `MAX_CHUNK_LINE`.
    LineTooLong,
    /// The trailer section is longer than `MAX_TRAILER_BYTES`.
    TrailerTooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first hex digit of a chunk size.
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// After `;`, expecting an extension name.
    ExtNameStart,
    ExtName,
    /// After `=`, expecting a token or a quoted string.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    /// After a backslash inside a quoted string.
    ExtQuotedPair,
    /// After the closing quote: `;` or CR.
    ExtAfterQuoted,
    /// Saw CR after the size line, need LF.
    SizeLf,
    /// Inside chunk data; `remaining` bytes to go.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// In a trailer field's name, then (after the colon) its value.
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// Saw the CR of the final empty line.
    FinalLf,
    Done,
}

/// Finds the end of a chunked body. Feed it bytes in order; it says how many of
/// them belong to the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
    /// Chunk size being parsed, then data bytes left in the current chunk.
    remaining: u64,
    /// (At most `MAX_TRAILER_BYTES` + 1, as `line_bytes` is at most
    /// `MAX_CHUNK_LINE` + 1: `u16` keeps a body's state, and so every session,
    /// 16 bytes smaller.)
    trailer_bytes: u16,
    /// Bytes of the current chunk-size line so far.
    line_bytes: u16,
    /// Chunk data bytes seen so far (framing excluded).
    data: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// tchar (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// qdtext (RFC 9110 §5.6.4): HTAB, SP and visible characters except `"` and `\`.
fn is_qdtext(b: u8) -> bool {
    b == b'\t'
        || b == b' '
        || b == 0x21
        || (0x23..=0x5b).contains(&b)
        || (0x5d..=0x7e).contains(&b)
        || b >= 0x80
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::SizeStart,
            remaining: 0,
            trailer_bytes: 0,
            line_bytes: 0,
            data: 0,
        }
    }

    /// Chunk data bytes seen so far, framing excluded.
    pub fn data_bytes(&self) -> u64 {
        self.data
    }

    /// The last chunk and the trailer section have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume framing and data from `buf`; returns the number of bytes that belong
    /// to the body. Stops at the end of the body: bytes after it are not consumed.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            if self.state == State::Data {
                let take = self.remaining.min((buf.len() - i) as u64);
                self.remaining -= take;
                self.data += take;
                i += take as usize;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            if self.state == State::Done {
                break;
            }
            self.step(buf[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// Advance by one framing byte.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        if matches!(
            self.state,
            SizeStart
                | Size
                | ExtNameStart
                | ExtName
                | ExtValueStart
                | ExtToken
                | ExtQuoted
                | ExtQuotedPair
                | ExtAfterQuoted
        ) && b != b'\r'
        {
            self.line_bytes = self.line_bytes.saturating_add(1);
            if u32::from(self.line_bytes) > MAX_CHUNK_LINE {
                return Err(ChunkError::LineTooLong);
            }
        }
        self.state = match self.state {
            SizeStart | Size => match hex_value(b) {
                Some(_) if u32::from(self.line_bytes) > MAX_SIZE_DIGITS => {
                    return Err(ChunkError::SizeOverflow);
                }
                Some(d) => {
                    self.remaining = self
                        .remaining
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(d)))
                        .ok_or(ChunkError::SizeOverflow)?;
                    Size
                }
                None if self.state == SizeStart => return Err(ChunkError::Syntax),
                None => match b {
                    b';' => ExtNameStart,
                    b'\r' => SizeLf,
                    _ => return Err(ChunkError::Syntax),
                },
            },
            ExtNameStart | ExtName if is_tchar(b) => ExtName,
            ExtName => match b {
                b'=' => ExtValueStart,
                b';' => ExtNameStart,
                b'\r' => SizeLf,
                _ => return Err(ChunkError::Syntax),
            },
            ExtValueStart if b == b'"' => ExtQuoted,
            ExtValueStart | ExtToken if is_tchar(b) => ExtToken,
            ExtToken => match b {
                b';' => ExtNameStart,
                b'\r' => SizeLf,
                _ => return Err(ChunkError::Syntax),
            },
            ExtQuoted => match b {
                b'"' => ExtAfterQuoted,
                b'\\' => ExtQuotedPair,
                _ if is_qdtext(b) => ExtQuoted,
                _ => return Err(ChunkError::Syntax),
            },
            ExtQuotedPair if b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80 => ExtQuoted,
            ExtAfterQuoted => match b {
                b';' => ExtNameStart,
                b'\r' => SizeLf,
                _ => return Err(ChunkError::Syntax),
            },
            SizeLf if b == b'\n' => {
                self.line_bytes = 0;
                if self.remaining == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            DataCr if b == b'\r' => DataLf,
            DataLf if b == b'\n' => SizeStart,
            TrailerStart if b == b'\r' => FinalLf,
            TrailerStart | TrailerName | TrailerValue => {
                self.trailer_bytes = self.trailer_bytes.saturating_add(1);
                if u32::from(self.trailer_bytes) > MAX_TRAILER_BYTES {
                    return Err(ChunkError::TrailerTooLarge);
                }
                // field-name ":" OWS field-value OWS (RFC 9112 §7.1.2, RFC 9110 §5).
                match (self.state, b) {
                    (TrailerStart | TrailerName, _) if is_tchar(b) => TrailerName,
                    (TrailerName, b':') => TrailerValue,
                    (TrailerValue, b'\r') => TrailerLf,
                    (TrailerValue, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => TrailerValue,
                    _ => return Err(ChunkError::Syntax),
                }
            }
            TrailerLf if b == b'\n' => {
                // The line's LF belongs to the section too.
                self.trailer_bytes = self.trailer_bytes.saturating_add(1);
                if u32::from(self.trailer_bytes) > MAX_TRAILER_BYTES {
                    return Err(ChunkError::TrailerTooLarge);
                }
                TrailerStart
            }
            FinalLf if b == b'\n' => Done,
            _ => return Err(ChunkError::Syntax),
        };
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed the whole input at once and one byte at a time; both must agree.
    fn decode(input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut whole = ChunkedDecoder::new();
        let n = whole.feed(input)?;
        let mut bytewise = ChunkedDecoder::new();
        let mut m = 0;
        for b in input {
            let k = bytewise.feed(std::slice::from_ref(b))?;
            m += k;
            if k == 0 {
                break;
            }
        }
        assert_eq!(
            (n, whole.is_done()),
            (m, bytewise.is_done()),
            "split feeding disagrees"
        );
        Ok((n, whole.is_done()))
    }

    #[test]
    fn valid_bodies() {
        let cases: &[(&[u8], usize, bool)] = &[
            (b"0\r\n\r\n", 5, true),
            (b"5\r\nhello\r\n0\r\n\r\n", 15, true),
            (b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1", 15, true),
            (b"A\r\n0123456789\r\n0\r\n\r\n", 20, true),
            (b"a\r\n0123456789\r\n00\r\n\r\n", 21, true),
            (b"5;name=value\r\nhello\r\n0\r\n\r\n", 26, true),
            (b"5;a;b=c;d=\"x;y \\\"z\"\r\nhello\r\n0\r\n\r\n", 33, true),
            (b"0\r\nExpires: never\r\n\r\n", 21, true),
            (b"5\r\nhel", 6, false),
            (b"5\r\nhello\r\n", 10, false),
        ];
        for (input, consumed, done) in cases {
            assert_eq!(
                decode(input),
                Ok((*consumed, *done)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn invalid_bodies() {
        let cases: &[(&[u8], ChunkError)] = &[
            (b"\r\n", ChunkError::Syntax),
            (b"x\r\n", ChunkError::Syntax),
            (b"5 \r\nhello\r\n", ChunkError::Syntax),
            (b" 5\r\nhello\r\n", ChunkError::Syntax),
            (b"5\nhello\r\n", ChunkError::Syntax),
            (b"5\r\nhelloX\r\n", ChunkError::Syntax),
            (b"5\r\nhello\rX", ChunkError::Syntax),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::Syntax),
            (b"5;\r\nhello\r\n", ChunkError::Syntax),
            (b"5 ;a\r\nhello\r\n", ChunkError::Syntax),
            (b"5;a=\"x\r\nhello\r\n", ChunkError::Syntax),
            (b"5;a=\"x\"y\r\n", ChunkError::Syntax),
            (b"0\r\nX: y\n\r\n", ChunkError::Syntax),
            (b"0\r\nTrailer\r\n\r\n", ChunkError::Syntax),
            (b"0\r\nX : y\r\n\r\n", ChunkError::Syntax),
            (b"0\r\n: y\r\n\r\n", ChunkError::Syntax),
            (b"0\r\nX: a\x01b\r\n\r\n", ChunkError::Syntax),
            (b"0\r\n X: y\r\n\r\n", ChunkError::Syntax),
            (b"0\r\n\n", ChunkError::Syntax),
            (b"-1\r\n", ChunkError::Syntax),
            (b"0x5\r\n", ChunkError::Syntax),
            (b"10000000000000000\r\n", ChunkError::SizeOverflow),
            (b"00000000000000001\r\nx\r\n", ChunkError::SizeOverflow),
            (b"5;a\x00\r\n", ChunkError::Syntax),
            (b"5;a=\"\x01\"\r\n", ChunkError::Syntax),
            (b"5;a\nb\r\n", ChunkError::Syntax),
        ];
        for (input, err) in cases {
            assert_eq!(
                decode(input),
                Err(*err),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn large_chunk_is_skipped_in_bulk() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"ffffffff\r\n").unwrap(), 10);
        let data = vec![b'x'; 1 << 20];
        assert_eq!(d.feed(&data).unwrap(), data.len());
        assert!(!d.is_done());
    }

    #[test]
    fn counts_data_bytes_only() {
        let mut d = ChunkedDecoder::new();
        d.feed(b"3;x=y\r\nabc\r\nA\r\n0123456789\r\n").unwrap();
        assert_eq!(d.data_bytes(), 13);
    }

    #[test]
    fn trailer_limit() {
        let mut d = ChunkedDecoder::new();
        d.feed(b"0\r\n").unwrap();
        let line = vec![b'a'; MAX_TRAILER_BYTES as usize + 1];
        assert_eq!(d.feed(&line), Err(ChunkError::TrailerTooLarge));
    }

    #[test]
    fn the_trailer_limit_counts_every_byte_of_the_section() {
        // One field line of `len` bytes, CRLF included, then the final CRLF.
        let section = |len: usize| {
            let mut body = b"0\r\nX: ".to_vec();
            body.extend(std::iter::repeat_n(b'v', len - 5));
            body.extend_from_slice(b"\r\n\r\n");
            body
        };
        let limit = MAX_TRAILER_BYTES as usize;
        let at_limit = section(limit);
        assert_eq!(decode(&at_limit), Ok((at_limit.len(), true)));
        assert_eq!(
            decode(&section(limit + 1)),
            Err(ChunkError::TrailerTooLarge)
        );
        // Many short lines: each line's CRLF counts too.
        let mut many = b"0\r\n".to_vec();
        for _ in 0..limit / 8 {
            many.extend_from_slice(b"A: 1234\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(decode(&many), Err(ChunkError::TrailerTooLarge));
    }

    #[test]
    fn size_line_limits() {
        // 16 digits, leading zeros included, is the most.
        assert_eq!(
            decode(b"000000000000000a\r\n0123456789\r\n0\r\n\r\n"),
            Ok((35, true))
        );
        // Extensions up to the line limit pass, one byte more is refused.
        let ext = |len: usize| {
            let mut line = b"1;".to_vec();
            line.extend(std::iter::repeat_n(b'e', len - 2));
            line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
            line
        };
        let at_limit = ext(MAX_CHUNK_LINE as usize);
        assert_eq!(decode(&at_limit), Ok((at_limit.len(), true)));
        assert_eq!(
            decode(&ext(MAX_CHUNK_LINE as usize + 1)),
            Err(ChunkError::LineTooLong)
        );
        // The limit is per line: many chunks with long extensions are fine.
        let mut many = Vec::new();
        for _ in 0..10 {
            many.extend_from_slice(&ext(MAX_CHUNK_LINE as usize)[..MAX_CHUNK_LINE as usize + 5]);
        }
        many.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode(&many), Ok((many.len(), true)));
    }
}
