//! The llhttp conformance corpus (tests/corpus/llhttp, MIT, see its README and
//! LICENSE) run through the real proxy.
//!
//! Request cases: each input is sent to the proxy on a fresh connection (then our
//! side is shut), and a recording backend notes every request it receives.
//! - valid input: every complete message is forwarded once, in order, with the
//!   method, target, end-to-end header fields and body content the log spans (see
//!   `as_forwarded` for what a proxy changes), and answered. Most cases lack the
//!   Host that HTTP/1.1 requires, so they are refused (400) as they are, then sent
//!   again with a Host added to check their fields and body too;
//! - input a strict parser rejects, or that only a lenient parser accepts: the
//!   client gets a 4xx/5xx or a close, and no message past the last complete valid
//!   one reaches the backend.
//!
//! Response cases: a backend answers with the input. Valid: the client gets the
//! status the log names and, when complete, the same body content. Malformed head: 502. Malformed body: the client connection
//! is closed rather than left hanging.
//!
//! Where corelb deliberately differs from llhttp, the case is in `DIFFERENCES` with
//! the reason, and the harness checks corelb's own outcome for it instead.
//!
//! Everything the proxy sends, to the backend and to the client, is read by
//! `common::wire`, written from RFC 9110/9112 and sharing no code with `src/`:
//! where a head or body ends, chunked decoding, Connection options and the
//! absolute-form split all come from there, so a framing bug in the proxy shows
//! up as a disagreement rather than being mirrored by the test.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wire::{self, Body, Dechunk, Head};
use common::*;

struct Case {
    file: String,
    title: String,
    kind: String,
    skip_body: bool,
    input: Vec<u8>,
    log: Vec<String>,
}

/// Split a corpus file into cases.
fn cases_in(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap();
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut cases = Vec::new();
    let mut title = String::new();
    let mut lines = text.lines();
    let mut pending: Option<(String, bool)> = None;
    while let Some(line) = lines.next() {
        if let Some(t) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
        {
            title = t.trim().to_string();
        } else if let Some(meta) = line.strip_prefix("<!-- meta=") {
            let kind = meta
                .split("\"type\"")
                .nth(1)
                .and_then(|r| r.split('"').nth(1))
                .unwrap_or("")
                .to_string();
            pending = Some((kind, meta.contains("\"skipBody\": true")));
        } else if line.starts_with("```http") {
            let mut block = Vec::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                block.push(l);
            }
            let mut log = Vec::new();
            for l in lines.by_ref() {
                if l.starts_with("```log") {
                    break;
                }
            }
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                log.push(l.to_string());
            }
            let (kind, skip_body) = pending.take().unwrap_or_default();
            cases.push(Case {
                file: file.clone(),
                title: title.clone(),
                kind,
                skip_body,
                input: to_bytes(&block.join("\n")),
                log,
            });
        }
    }
    cases
}

/// The corpus README's rules for turning an `http` block into bytes.
fn to_bytes(block: &str) -> Vec<u8> {
    let block = block.replace("\\\n", "").replace('\n', "\r\n");
    unescape(block.as_bytes())
}

/// A span's value from a log line: characters up to U+00FF stand for one byte
/// each (the log prints bytes as Latin-1), then the escapes are expanded.
fn span_bytes(value: &str) -> Vec<u8> {
    let latin1: Vec<u8> = value.chars().map(|c| c as u32 as u8).collect();
    unescape(&latin1)
}

/// Expand `\r`, `\n`, `\t`, `\f`, `\xHH` and `\NNN`; any other backslash is literal.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match b[i + 1] {
            b'r' => (b'\r', 2),
            b'n' => (b'\n', 2),
            b't' => (b'\t', 2),
            b'f' => (0x0c, 2),
            b'x' => {
                let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                (u8::from_str_radix(hex, 16).unwrap(), 4)
            }
            b'0'..=b'7' => {
                let digits = b[i + 1..]
                    .iter()
                    .take(3)
                    .take_while(|c| (b'0'..=b'7').contains(c))
                    .count();
                let oct = std::str::from_utf8(&b[i + 1..i + 1 + digits]).unwrap();
                (u8::from_str_radix(oct, 8).unwrap(), 1 + digits)
            }
            _ => (b'\\', 1),
        };
        out.push(byte);
        i += used;
    }
    out
}

/// One message as the log spans it.
#[derive(Debug, Default, Clone)]
struct Msg {
    method: String,
    url: String,
    version: String,
    complete: bool,
    /// The head is over: field spans after this are trailers.
    head_done: bool,
    status: Option<u16>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// What the log says: the messages and any error.
#[derive(Debug, Default)]
struct Expected {
    messages: Vec<Msg>,
    error: Option<String>,
    protocols: Vec<String>,
}

fn span(line: &str, name: &str) -> Option<String> {
    // A lone line ending is logged unquoted, by name.
    match line.split(&format!("span[{name}]=")).nth(1)? {
        "cr" => return Some("\\r".into()),
        "lf" => return Some("\\n".into()),
        "crlf" => return Some("\\r\\n".into()),
        _ => {}
    }
    let rest = line.split(&format!("span[{name}]=\"")).nth(1)?;
    Some(rest.strip_suffix('"').unwrap_or(rest).to_string())
}

fn expected(log: &[String]) -> Expected {
    let mut e = Expected::default();
    // A field span after a value span starts a new header.
    let mut in_value = false;
    for line in log {
        if line.ends_with("message begin") {
            e.messages.push(Msg::default());
            in_value = false;
        } else if let Some(m) = span(line, "method") {
            e.messages.last_mut().unwrap().method.push_str(&m);
        } else if let Some(u) = span(line, "url") {
            let u = String::from_utf8_lossy(&span_bytes(&u)).into_owned();
            e.messages.last_mut().unwrap().url.push_str(&u);
        } else if let Some(p) = span(line, "protocol") {
            e.protocols.push(p);
        } else if let Some(v) = span(line, "version") {
            e.messages.last_mut().unwrap().version.push_str(&v);
        } else if line.contains(" headers complete") {
            let m = e.messages.last_mut().unwrap();
            m.head_done = true;
            m.status = line
                .split(" status=")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok());
        } else if let Some(f) = span(line, "header_field") {
            let m = e.messages.last_mut().unwrap();
            if m.head_done {
                continue;
            }
            if in_value || m.headers.is_empty() {
                m.headers.push((String::new(), Vec::new()));
                in_value = false;
            }
            m.headers.last_mut().unwrap().0.push_str(&f);
        } else if let Some(v) = span(line, "header_value") {
            in_value = true;
            let m = e.messages.last_mut().unwrap();
            if m.head_done {
                continue;
            }
            if let Some(h) = m.headers.last_mut() {
                h.1.extend(span_bytes(&v));
            }
        } else if line.ends_with("header_value complete") {
            in_value = true;
        } else if let Some(b) = span(line, "body") {
            e.messages.last_mut().unwrap().body.extend(span_bytes(&b));
        } else if line.ends_with("message complete") {
            e.messages.last_mut().unwrap().complete = true;
        } else if let Some(reason) = line
            .split(" reason=\"")
            .nth(1)
            .filter(|_| line.contains(" error code="))
        {
            e.error = Some(reason.trim_end_matches('"').to_string());
        }
    }
    e
}

/// What corelb does with a case where it differs from llhttp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered with this status and nothing forwarded.
    Refused(u16),
    /// Forwarded and answered 200.
    Forwarded,
}

/// Cases where corelb deliberately differs from llhttp's strict mode: (file, case
/// title, corelb's outcome, why). Besides these, every HTTP/1.1 request without a
/// Host field is refused with 400, because RFC 9112 §3.2 says a server MUST.
const DIFFERENCES: &[(&str, &str, Outcome, &str)] = &[
    (
        "invalid.md",
        "HTTP protocol and ANNOUNCE method",
        Outcome::Forwarded,
        "any token is a method (RFC 9110 §9.1): extension methods are forwarded; llhttp knows a fixed list",
    ),
    (
        "method.md",
        "M-SEARCH request",
        Outcome::Refused(400),
        "the asterisk-form target is for OPTIONS only (RFC 9112 §3.2.4); SSDP's M-SEARCH * belongs to HTTP over UDP",
    ),
    (
        "uri.md",
        "`host:port` and basic auth",
        Outcome::Refused(400),
        "userinfo in an http(s) target is treated as an error (RFC 9110 §4.2.4)",
    ),
    (
        "sample.md",
        "No HTTP version",
        Outcome::Refused(400),
        "HTTP/0.9 requests (no version) are not served",
    ),
    (
        "sample.md",
        "HTTP version 0.9",
        Outcome::Refused(502),
        "a backend answering HTTP/0.9 is not relayed",
    ),
];

fn difference(case: &Case) -> Option<Outcome> {
    DIFFERENCES
        .iter()
        .find(|d| d.0 == case.file && d.1 == case.title)
        .map(|d| d.2)
}

/// Is this an HTTP/1.1 request with no Host field? (Checked on the raw bytes.)
fn lacks_host(input: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(input) {
        Ok(httparse::Status::Complete(_)) => {
            req.version == Some(1)
                && !req
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("host"))
        }
        _ => false,
    }
}

/// Read everything until the peer closes; `None` if it never does.
fn read_until_close(mut s: TcpStream) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(all),
            Err(_) => return None,
        }
    }
}

/// Where the body framed by `framing` ends in `bytes` (which follow its head), per
/// `wire` (RFC 9112 §6-7), not corelb: its length with framing, whether it is
/// complete, and its content (dechunked). A close-delimited body is everything.
fn body_in(framing: Body, bytes: &[u8]) -> Result<(usize, bool, Vec<u8>), String> {
    Ok(match framing {
        Body::None => (0, true, Vec::new()),
        Body::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= bytes.len() => (n, true, bytes[..n].to_vec()),
            _ => (bytes.len(), false, Vec::new()),
        },
        Body::Chunked => {
            let mut decoder = Dechunk::default();
            let mut data = Vec::new();
            let used = decoder.feed(bytes, &mut data, true)?;
            (used, decoder.is_done(), data)
        }
        Body::Close => (bytes.len(), true, bytes.to_vec()),
    })
}

/// The body content of the first final response in `bytes` (dechunked), if complete.
fn first_body(mut bytes: &[u8]) -> Option<Vec<u8>> {
    loop {
        let (head, n) = wire::response_head(bytes).ok()??;
        let framing = wire::response_body(&head, false).ok()?;
        let (len, complete, data) = body_in(framing, &bytes[n..]).ok()?;
        if head.status < 200 {
            bytes = &bytes[n + len..];
            continue;
        }
        return complete.then_some(data);
    }
}

/// Statuses of the complete final responses in `bytes`, and the status of a last
/// response cut short by a close (`Some(0)` if even its head was cut).
fn statuses(mut bytes: &[u8], head_request: bool) -> (Vec<u16>, Option<u16>) {
    let mut out = Vec::new();
    loop {
        if bytes.is_empty() {
            return (out, None);
        }
        let (head, n) = match wire::response_head(bytes) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return (out, Some(0)),
            Err(e) => panic!(
                "proxy sent a malformed response ({e}): {:?}",
                String::from_utf8_lossy(bytes)
            ),
        };
        let framing = wire::response_body(&head, head_request).expect("proxy sent bad framing");
        let (len, complete, _) = body_in(framing, &bytes[n..])
            .unwrap_or_else(|e| panic!("proxy sent a bad chunked body ({e})"));
        if !complete {
            return (out, Some(head.status));
        }
        if head.status >= 200 {
            out.push(head.status);
        }
        bytes = &bytes[n + len..];
    }
}

/// A request as the backend should see it, reduced to what must survive the
/// proxy: method, target, end-to-end header fields (names lowercased, values
/// trimmed, stably sorted by name so fields the proxy appends compare equal), and
/// the body's content (dechunked).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Forwarded {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// Fields compared on neither side: hop-by-hop ones, Content-Length (the body is
/// compared instead) and the ones the proxy sets itself.
fn compared(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-request-id"
    )
}

fn normalised(mut headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    for h in &mut headers {
        h.0.make_ascii_lowercase();
        h.1 = collapse_non_ascii(wire::trim_ows(&h.1));
    }
    headers.retain(|h| compared(&h.0));
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers
}

/// Each run of non-ASCII bytes becomes one `?`. The log prints such bytes either as
/// UTF-8 text or as Latin-1 characters, and which one cannot be told from the log
/// alone; the proxy relays them untouched either way.
fn collapse_non_ascii(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value {
        if b.is_ascii() {
            out.push(b);
        } else if out.last() != Some(&b'?') {
            out.push(b'?');
        }
    }
    out
}

/// What corelb must forward for a message llhttp accepted: the fields Connection
/// names are dropped, a 1.0 request's Expect is dropped, and an absolute-form
/// target becomes origin-form with its authority as the Host.
fn as_forwarded(m: &Msg) -> Forwarded {
    let options: Vec<String> = m
        .headers
        .iter()
        .filter(|h| h.0.eq_ignore_ascii_case("connection"))
        .flat_map(|h| {
            wire::list_elements(&h.1)
                .map(|o| String::from_utf8_lossy(o).to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut headers: Vec<(String, Vec<u8>)> = m
        .headers
        .iter()
        .filter(|h| !options.contains(&h.0.to_ascii_lowercase()))
        .filter(|h| !(m.version == "1.0" && h.0.eq_ignore_ascii_case("expect")))
        .cloned()
        .collect();
    let mut target = m.url.clone();
    if let Some((authority, path)) = wire::split_absolute_form(&m.url) {
        headers.retain(|h| !h.0.eq_ignore_ascii_case("host"));
        headers.push(("host".into(), authority.as_bytes().to_vec()));
        target = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
    }
    Forwarded {
        method: m.method.clone(),
        target,
        headers: normalised(headers),
        body: m.body.clone(),
    }
}

/// Every request a backend received, in order.
type Seen = Arc<Mutex<Vec<Forwarded>>>;

/// A backend that records every complete request it receives and answers 200.
fn recording_backend() -> (Scripted, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let backend = Scripted::start(move |mut s, _| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        // Read more of the request; false once the proxy has closed.
        let mut fill = |s: &mut std::net::TcpStream, buf: &mut Vec<u8>| match s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                true
            }
        };
        loop {
            // Head and framing as `wire` reads them (RFC 9112), not corelb. A
            // request it finds malformed is not recorded: the connection is dropped.
            let (head, n) = match wire::request_head_obs_text(&buf) {
                Ok(Some(parsed)) => parsed,
                Ok(None) if fill(&mut s, &mut buf) => continue,
                Ok(None) => return,
                Err(e) => return eprintln!("backend: proxy sent a malformed head: {e}"),
            };
            let framing = match wire::request_body(&head) {
                Ok(framing) => framing,
                Err(e) => return eprintln!("backend: proxy sent bad framing: {e}"),
            };
            let (used, body) = loop {
                match body_in(framing, &buf[n..]) {
                    Ok((len, true, body)) => break (n + len, body),
                    Ok(_) if fill(&mut s, &mut buf) => {}
                    Ok(_) => return,
                    Err(e) => return eprintln!("backend: proxy sent a bad chunked body: {e}"),
                }
            };
            buf.drain(..used);
            record.lock().unwrap().push(forwarded(&head, body));
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    });
    (backend, seen)
}

/// A request as the backend received it, reduced as `as_forwarded` reduces the log.
fn forwarded(head: &Head, body: Vec<u8>) -> Forwarded {
    Forwarded {
        method: head.method.clone(),
        target: head.target.clone(),
        headers: normalised(head.field_bytes.clone()),
        body,
    }
}

fn corpus_dir(side: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/llhttp")
        .join(side)
}

fn corpus(side: &str) -> Vec<Case> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(side))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .filter(|p| {
            !matches!(
                p.file_name().unwrap().to_str(),
                Some("pausing.md" | "finish.md")
            )
        })
        .flat_map(|p| cases_in(p))
        .collect()
}

/// What the case's log expects, unless the case is not about HTTP framing: llhttp's
/// pause API, RTSP/ICE, or a body the caller tells llhttp to skip.
fn runnable(case: &Case) -> Option<Expected> {
    let e = expected(&case.log);
    let pause = e
        .error
        .as_deref()
        .is_some_and(|r| r.starts_with("Pause on"));
    let not_http = e
        .protocols
        .iter()
        .any(|p| p != "HTTP" && !p.is_empty() && !"HTTP".starts_with(p.as_str()));
    (!case.skip_body && !pause && !not_http).then_some(e)
}

/// Send `input` on a fresh connection, shut our side, and return the statuses the
/// client got (`[0]` if the proxy never closed) and what the backend received.
fn run_request(
    addr: std::net::SocketAddr,
    input: &[u8],
    seen: &Seen,
) -> (Vec<u16>, Vec<Forwarded>) {
    seen.lock().unwrap().clear();
    let mut s = connect(addr);
    let _ = s.write_all(input);
    let _ = s.shutdown(Shutdown::Write);
    let Some(bytes) = read_until_close(s) else {
        return (vec![0], Vec::new());
    };
    let head_request = input
        .iter()
        .skip_while(|&&b| b == b'\r' || b == b'\n')
        .take(5)
        .eq(b"HEAD ".iter());
    let (got, _) = statuses(&bytes, head_request);
    (got, seen.lock().unwrap().clone())
}

#[test]
fn llhttp_request_corpus() {
    let (backend, seen) = recording_backend();
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut with_host_added = 0;
    for case in corpus("request") {
        let Some(e) = runnable(&case) else { continue };
        let strict = case.kind == "request";
        let name = format!("{} / {} [{}]", case.file, case.title, case.kind);
        let (got, forwarded) = run_request(addr, &case.input, &seen);
        if got == [0] {
            failures.push(format!("{name}: the proxy did not close the connection"));
            continue;
        }
        checked += 1;
        let complete: Vec<_> = e.messages.iter().filter(|m| m.complete).collect();
        if let Some(outcome) = difference(&case) {
            let ok = match outcome {
                Outcome::Refused(status) => got == [status] && forwarded.is_empty(),
                Outcome::Forwarded => got == [200] && forwarded.len() == 1,
            };
            if !ok {
                failures.push(format!(
                    "{name}: declared {outcome:?}, got {got:?} / {forwarded:?}"
                ));
            }
            continue;
        }
        if strict && e.error.is_none() {
            if lacks_host(&case.input) {
                if got.first() != Some(&400) || !forwarded.is_empty() {
                    failures.push(format!("{name}: no Host, expected 400 and nothing forwarded, got {got:?} {forwarded:?}"));
                }
                // Once more with a Host added, so its fields and body are checked too
                // (one message only: the field goes after the first line).
                if let [m] = complete.as_slice() {
                    // After the request line: past any empty lines before it.
                    let start = case
                        .input
                        .iter()
                        .position(|&b| b != b'\r' && b != b'\n')
                        .unwrap_or(0);
                    let line_end = start
                        + case.input[start..]
                            .windows(2)
                            .position(|w| w == b"\r\n")
                            .unwrap();
                    let mut input = case.input[..line_end + 2].to_vec();
                    input.extend_from_slice(b"Host: t\r\n");
                    input.extend_from_slice(&case.input[line_end + 2..]);
                    let mut m = (*m).clone();
                    m.headers.push(("Host".into(), b"t".to_vec()));
                    let want = vec![as_forwarded(&m)];
                    let (got, forwarded) = run_request(addr, &input, &seen);
                    if forwarded != want || got != [200] {
                        failures.push(format!("{name}, Host added: expected {want:?} forwarded and answered, got {forwarded:?} / {got:?}"));
                    }
                    with_host_added += 1;
                }
                continue;
            }
            let want: Vec<Forwarded> = complete.iter().map(|m| as_forwarded(m)).collect();
            if forwarded != want || got.len() != want.len() || got.iter().any(|&s| s != 200) {
                failures.push(format!("{name}: valid input; expected {want:?} forwarded and answered, got {forwarded:?} / {got:?}"));
            }
        } else {
            // Refused: nothing past the complete messages before the error, and the
            // last thing the client sees is a 4xx/5xx or a close.
            let limit = match case.kind.as_str() {
                "request" => complete.len(),
                // The first message ends the connection (1.0, or Connection: close);
                // only a lenient parser reads on.
                "request-lenient-keep-alive" => 1,
                // The lenient part is inside the last message llhttp accepted.
                _ => complete.len().saturating_sub(1),
            };
            let oks = got.iter().filter(|&&s| s < 400).count();
            if forwarded.len() > limit || oks > limit {
                failures.push(format!(
                    "{name}: should be refused ({:?}); forwarded {forwarded:?}, statuses {got:?}",
                    e.error
                ));
            }
        }
    }
    println!(
        "llhttp request corpus: {} of {checked} cases pass, {with_host_added} of them also with a Host added",
        checked - failures.len()
    );
    assert!(checked > 100, "only {checked} request cases ran");
    assert!(
        with_host_added >= 25,
        "only {with_host_added} cases ran with a Host added"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} request cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llhttp_response_corpus() {
    let payload: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let p = Arc::clone(&payload);
    let backend = Scripted::start(move |mut s, _| {
        if read_head(&mut s).is_some() {
            let bytes = p.lock().unwrap().clone();
            write_and_close(s, &bytes);
        }
    });
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut bodies_checked = 0;
    for case in corpus("response") {
        let Some(e) = runnable(&case) else { continue };
        *payload.lock().unwrap() = case.input.clone();
        let name = format!("{} / {} [{}]", case.file, case.title, case.kind);
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let Some(bytes) = read_until_close(s) else {
            failures.push(format!("{name}: the proxy did not close the connection"));
            continue;
        };
        checked += 1;
        let (got, cut) = statuses(&bytes, false);
        if let Some(Outcome::Refused(status)) = difference(&case) {
            if got != [status] {
                failures.push(format!("{name}: declared Refused({status}), got {got:?}"));
            }
            continue;
        }
        if case.kind != "response" {
            continue; // Lenient-only input: it must not hang or produce garbage (checked above).
        }
        // The first final response, whether it completed, and whether the error (if
        // any) came before its head was complete.
        let first = e
            .messages
            .iter()
            .find(|m| m.status.is_some_and(|s| s >= 200));
        let outcome_ok = match (first, &e.error) {
            // Malformed head: nothing of it may reach the client.
            (None, Some(_)) => got == [502] && cut.is_none(),
            // Complete and valid (bytes after it are the backend's problem: the
            // connection is not reused).
            (Some(m), _) if m.complete => got.first() == m.status.as_ref(),
            // Malformed body: a 502 if nothing was sent yet, else the cut shows it.
            (Some(m), Some(_)) => got == [502] || cut == m.status,
            // Valid and delimited by the backend's close (complete), or cut short by
            // it (head relayed, then close).
            (Some(m), None) => got.first() == m.status.as_ref() || cut == m.status,
            (None, None) => true,
        };
        if !outcome_ok {
            failures.push(format!(
                "{name}: log {:?}, error {:?}; got {got:?}, cut {cut:?} after {:?}",
                first,
                e.error,
                started.elapsed()
            ));
        } else if let (Some(m), None) = (first, &e.error)
            && m.complete
        {
            // Valid and complete: the client gets the same body content.
            let body = first_body(&bytes);
            if body.as_deref() != Some(&m.body[..]) {
                failures.push(format!(
                    "{name}: body {:?} expected, client got {:?}",
                    String::from_utf8_lossy(&m.body),
                    body.map(|b| String::from_utf8_lossy(&b).into_owned())
                ));
            } else {
                bodies_checked += 1;
            }
        }
    }
    println!(
        "llhttp response corpus: {} of {checked} cases pass, {bodies_checked} with their body compared",
        checked - failures.len()
    );
    assert!(checked > 40, "only {checked} response cases ran");
    assert!(
        bodies_checked >= 15,
        "only {bodies_checked} bodies compared"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} response cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
