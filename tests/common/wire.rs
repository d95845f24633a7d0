//! An HTTP/1.1 reader for the tests' oracles, written from RFC 9112 alone and
//! sharing no code with `src/`: a framing bug in the proxy must show up as a
//! disagreement with this reader, not be mirrored by it.
//!
//! It is strict about what a correct proxy sends (CRLF line endings, one
//! Content-Length, never Content-Length with Transfer-Encoding, well-formed
//! chunks) and simple rather than fast: heads are parsed from a byte slice, and
//! chunked bodies by a small incremental decoder so that 50 MiB bodies stream.

/// A parsed message head (status line or request line, and fields).
#[derive(Clone, Debug)]
pub struct Head {
    /// The start line without its CRLF.
    pub start: String,
    /// Status code (responses) or 0 (requests).
    pub status: u16,
    /// Method and target (requests) or empty (responses).
    pub method: String,
    pub target: String,
    /// Minor HTTP version: 0 or 1.
    pub minor: u8,
    pub fields: Vec<(String, String)>,
    /// The same fields with their values as sent, byte for byte: a value may hold
    /// obs-text (RFC 9110 §5.5), which `fields` can only show lossily.
    pub field_bytes: Vec<(String, Vec<u8>)>,
    /// The head as received, CRLFs included.
    pub raw: String,
}

impl Head {
    /// The values of every field called `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of the only field called `name`, if there is one.
    pub fn get<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.all(name).next()
    }

    /// Does a Connection field list `option`?
    pub fn connection_has(&self, option: &str) -> bool {
        self.all("connection")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(option))
    }
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    Close,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Find the end of a head (the CRLFCRLF) in `buf`; `Err` on a bare LF before it.
fn head_end(buf: &[u8]) -> Result<Option<usize>, String> {
    for i in 0..buf.len() {
        if buf[i] == b'\n' {
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(format!("bare LF at byte {i} of a head"));
            }
            if i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
                return Ok(Some(i + 1));
            }
        }
    }
    Ok(None)
}

/// The lines of `b`, split at each CRLF (a lone CR stays in its line).
fn crlf_lines(mut b: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        lines.push(&b[..i]);
        b = &b[i + 2..];
    }
    lines.push(b);
    lines
}

/// Field lines (RFC 9112 §5): `field-name ":" OWS field-value OWS`, the name a
/// token and the value free of control bytes other than HTAB.
fn parse_fields(lines: &[&[u8]]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut fields = Vec::new();
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
            format!(
                "field line without a colon: {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(format!(
                "bad field name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        // A token is ASCII, so this cannot fail.
        let name = String::from_utf8(name.to_vec()).unwrap();
        if value.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(format!("control byte in the value of {name}"));
        }
        fields.push((name, value.to_vec()));
    }
    Ok(fields)
}

/// The head at the front of `buf`, with only its start line and fields read (the
/// caller reads the start line). Field values must be UTF-8 unless `obs_text`,
/// when any byte RFC 9110 §5.5 allows is kept and `fields` shows it lossily.
fn read_head(buf: &[u8], obs_text: bool) -> Result<Option<(Head, usize)>, String> {
    let Some(n) = head_end(buf)? else {
        return Ok(None);
    };
    let mut lines = crlf_lines(&buf[..n - 4]);
    let start = std::str::from_utf8(lines.remove(0))
        .map_err(|_| "head is not UTF-8".to_string())?
        .to_string();
    let field_bytes = parse_fields(&lines)?;
    let mut fields = Vec::with_capacity(field_bytes.len());
    for (name, value) in &field_bytes {
        let value = match std::str::from_utf8(value) {
            Ok(v) => v.to_string(),
            Err(_) if obs_text => String::from_utf8_lossy(value).into_owned(),
            Err(_) => return Err("head is not UTF-8".into()),
        };
        fields.push((name.clone(), value));
    }
    let head = Head {
        start,
        status: 0,
        method: String::new(),
        target: String::new(),
        minor: 1,
        fields,
        field_bytes,
        raw: String::from_utf8_lossy(&buf[..n]).into_owned(),
    };
    Ok(Some((head, n)))
}

/// Parse a response head at the front of `buf`: `Ok(None)` if incomplete, else the
/// head and its length in bytes.
pub fn response_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let Some((mut head, n)) = read_head(buf, false)? else {
        return Ok(None);
    };
    let start = head.start.as_str();
    head.minor = match start.get(..9) {
        Some("HTTP/1.1 ") => 1,
        Some("HTTP/1.0 ") => 0,
        _ => return Err(format!("bad status line {start:?}")),
    };
    let code = start.get(9..12).ok_or("short status line")?;
    if !code.bytes().all(|b| b.is_ascii_digit())
        || start.as_bytes().get(12).is_some_and(|&b| b != b' ')
    {
        return Err(format!("bad status code in {start:?}"));
    }
    head.status = code.parse().map_err(|_| "bad status code")?;
    Ok(Some((head, n)))
}

/// Parse a request head at the front of `buf` (as `response_head`).
pub fn request_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    request_line(read_head(buf, false)?)
}

/// As `request_head`, but a field value may hold obs-text (bytes 0x80-0xFF, RFC
/// 9110 §5.5), which a proxy relays as it is: see `Head::field_bytes`.
pub fn request_head_obs_text(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    request_line(read_head(buf, true)?)
}

/// Read the request line (RFC 9112 §3) of a head.
fn request_line(head: Option<(Head, usize)>) -> Result<Option<(Head, usize)>, String> {
    let Some((mut head, n)) = head else {
        return Ok(None);
    };
    let start = head.start.as_str();
    let mut parts = start.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {start:?}"));
    };
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(format!("bad version in {start:?}")),
    };
    if method.is_empty() || !method.bytes().all(is_tchar) || target.is_empty() {
        return Err(format!("bad request line {start:?}"));
    }
    (head.method, head.target, head.minor) = (method.to_string(), target.to_string(), minor);
    Ok(Some((head, n)))
}

/// Strip optional whitespace from both ends of a field value or list element:
/// `OWS = *( SP / HTAB )` (RFC 9110 §5.6.3).
pub fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The elements of a comma-separated list field value (RFC 9110 §5.6.1:
/// `#element` is `[ element ] *( OWS "," OWS [ element ] )`, and a recipient
/// ignores empty elements). Quoted strings are not special-cased: the lists read
/// here (Connection options) are tokens.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// An absolute-form request target (RFC 9112 §3.2.2) for "http" or "https" split
/// into the Host a proxy must send in its place and the rest, path and query
/// (empty when there is no path). RFC 9110 §7.2: the Host is the target URI's
/// authority without its userinfo; §4.2.1: an "http" URI has a non-empty host.
/// `None` for any other target, or one with a fragment (absolute-URI has none).
pub fn split_absolute_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    if target.contains('#') {
        return None;
    }
    // The authority runs to the first "/" or "?" (RFC 3986 §3.2).
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    (!host.is_empty()).then_some((host, path))
}

/// The Content-Length and Transfer-Encoding of a head, checked for consistency.
fn length_fields(head: &Head) -> Result<(Option<u64>, Option<bool>), String> {
    let lengths: Vec<&str> = head.all("content-length").collect();
    if lengths.len() > 1 {
        return Err(format!("{} Content-Length fields", lengths.len()));
    }
    let length = match lengths.first() {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            Some(v.parse::<u64>().map_err(|_| "Content-Length overflows")?)
        }
        Some(v) => return Err(format!("bad Content-Length {v:?}")),
        None => None,
    };
    let codings: Vec<String> = head
        .all("transfer-encoding")
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    let chunked_last = if head.get("transfer-encoding").is_some() {
        Some(codings.last().is_some_and(|c| c == "chunked"))
    } else {
        None
    };
    if length.is_some() && chunked_last.is_some() {
        return Err("Content-Length with Transfer-Encoding".into());
    }
    Ok((length, chunked_last))
}

/// How the body of a response is delimited (RFC 9112 §6.3), given whether it
/// answers a HEAD request.
pub fn response_body(head: &Head, to_head_request: bool) -> Result<Body, String> {
    let (length, chunked_last) = length_fields(head)?;
    if to_head_request || (100..200).contains(&head.status) || matches!(head.status, 204 | 304) {
        return Ok(Body::None);
    }
    Ok(match (chunked_last, length) {
        (Some(true), _) => Body::Chunked,
        (Some(false), _) => Body::Close,
        (None, Some(0)) => Body::None,
        (None, Some(n)) => Body::Length(n),
        (None, None) => Body::Close,
    })
}

/// How the body of a request is delimited (RFC 9112 §6.3): no framing field, no body.
pub fn request_body(head: &Head) -> Result<Body, String> {
    let (length, chunked_last) = length_fields(head)?;
    Ok(match (chunked_last, length) {
        (Some(true), _) => Body::Chunked,
        (Some(false), _) => return Err("request Transfer-Encoding not ending in chunked".into()),
        (None, Some(0) | None) => Body::None,
        (None, Some(n)) => Body::Length(n),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a size line; the size so far and whether a digit was seen.
    Size(u64, bool),
    /// Skipping a chunk extension up to the CR.
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// Incremental chunked decoder: `feed` returns how many of the bytes given belong
/// to the body (framing included) and appends the chunk data to `data`.
#[derive(Clone, Debug)]
pub struct Dechunk {
    state: Chunk,
}

impl Default for Dechunk {
    fn default() -> Self {
        Dechunk {
            state: Chunk::Size(0, false),
        }
    }
}

impl Dechunk {
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    pub fn feed(&mut self, buf: &[u8], data: &mut Vec<u8>, keep: bool) -> Result<usize, String> {
        let mut i = 0;
        while i < buf.len() && self.state != Chunk::Done {
            if let Chunk::Data(left) = self.state {
                let take = left.min((buf.len() - i) as u64) as usize;
                if keep {
                    data.extend_from_slice(&buf[i..i + take]);
                }
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (Chunk::Size(n, _), b) if b.is_ascii_hexdigit() => {
                    let d = (b as char).to_digit(16).unwrap() as u64;
                    Chunk::Size(
                        n.checked_mul(16)
                            .and_then(|v| v.checked_add(d))
                            .ok_or("chunk size overflows")?,
                        true,
                    )
                }
                (Chunk::Size(n, true), b';') => Chunk::Ext(n),
                (Chunk::Size(n, true), b'\r') => Chunk::SizeLf(n),
                (Chunk::Ext(n), b'\r') => Chunk::SizeLf(n),
                (Chunk::Ext(n), b) if b != b'\n' => Chunk::Ext(n),
                (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
                (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size(0, false),
                (Chunk::TrailerStart, b'\r') => Chunk::FinalLf,
                (Chunk::TrailerStart | Chunk::Trailer, b) if b != b'\r' && b != b'\n' => {
                    Chunk::Trailer
                }
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::FinalLf, b'\n') => Chunk::Done,
                (state, b) => return Err(format!("bad chunked byte {b:#04x} in {state:?}")),
            };
        }
        Ok(i)
    }
}
