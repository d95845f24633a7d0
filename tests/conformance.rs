//! The llhttp conformance corpus (tests/corpus/llhttp, MIT, see its README and
//! LICENSE) run through the real proxy.
//!
//! Request cases: each input is sent to the proxy on a fresh connection (then our
//! side is shut), and a recording backend notes every request it receives.
//! - valid input: every complete message is forwarded once, in order, with the
//!   method and target the log names, and answered;
//! - input a strict parser rejects, or that only a lenient parser accepts: the
//!   client gets a 4xx/5xx or a close, and no message past the last complete valid
//!   one reaches the backend.
//!
//! Response cases: a backend answers with the input. Valid: the client gets the
//! status the log names. Malformed head: 502. Malformed body: the client connection
//! is closed rather than left hanging.
//!
//! Where corelb deliberately differs from llhttp, the case is in `DIFFERENCES` with
//! the reason, and the harness checks corelb's own outcome for it instead.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use corelb::framing::{BodyScanner, analyze_request, analyze_response};

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
    let b = block.as_bytes();
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
            other => (other, 2),
        };
        out.push(byte);
        i += used;
    }
    out
}

/// What the log says: the messages (method, target, complete?) and any error.
#[derive(Debug, Default)]
struct Expected {
    messages: Vec<(String, String, bool, Option<u16>)>,
    error: Option<String>,
    protocols: Vec<String>,
}

fn span(line: &str, name: &str) -> Option<String> {
    let rest = line.split(&format!("span[{name}]=\"")).nth(1)?;
    Some(rest.strip_suffix('"').unwrap_or(rest).to_string())
}

fn expected(log: &[String]) -> Expected {
    let mut e = Expected::default();
    for line in log {
        if line.ends_with("message begin") {
            e.messages.push((String::new(), String::new(), false, None));
        } else if let Some(m) = span(line, "method") {
            e.messages.last_mut().unwrap().0.push_str(&m);
        } else if let Some(u) = span(line, "url") {
            e.messages.last_mut().unwrap().1.push_str(&u);
        } else if let Some(p) = span(line, "protocol") {
            e.protocols.push(p);
        } else if line.ends_with("message complete") {
            e.messages.last_mut().unwrap().2 = true;
        } else if let Some(status) = line
            .split(" status=")
            .nth(1)
            .filter(|_| line.contains("headers complete"))
        {
            e.messages.last_mut().unwrap().3 =
                status.split(' ').next().and_then(|s| s.parse().ok());
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

/// Statuses of the complete final responses in `bytes`, and the status of a last
/// response cut short by a close (`Some(0)` if even its head was cut).
fn statuses(mut bytes: &[u8], head_request: bool) -> (Vec<u16>, Option<u16>) {
    let mut out = Vec::new();
    loop {
        if bytes.is_empty() {
            return (out, None);
        }
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return (out, Some(0)),
            Err(e) => panic!(
                "proxy sent a malformed response ({e}): {:?}",
                String::from_utf8_lossy(bytes)
            ),
        };
        let info = analyze_response(&resp, head_request).expect("proxy sent bad framing");
        let mut scanner = BodyScanner::new(info.framing);
        let body = scanner
            .scan(&bytes[n..])
            .expect("proxy sent a bad chunked body");
        if !scanner.is_done() && info.framing != corelb::framing::Framing::UntilClose {
            return (out, Some(info.status));
        }
        if info.status >= 200 {
            out.push(info.status);
        }
        bytes = &bytes[n + body..];
    }
}

/// A backend that records (method, target) of every complete request and answers 200.
/// (method, target) of each request a backend received, in order.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn recording_backend() -> (Scripted, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let backend = Scripted::start(move |mut s, _| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut req = httparse::Request::new(&mut headers);
            let parsed = match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => Some((
                    n,
                    analyze_request(&req).ok(),
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                )),
                Ok(httparse::Status::Partial) => None,
                Err(_) => return,
            };
            match parsed {
                Some((n, Some(info), method, path)) => {
                    let mut scanner = BodyScanner::new(info.framing);
                    let mut used = n + scanner.scan(&buf[n..]).unwrap_or(0);
                    while !scanner.is_done() {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => {
                                buf.extend_from_slice(&chunk[..k]);
                                match scanner.scan(&buf[used..]) {
                                    Ok(m) => used += m,
                                    Err(_) => return,
                                }
                            }
                        }
                    }
                    buf.drain(..used);
                    record.lock().unwrap().push((method, path));
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
                Some((_, None, _, _)) => return,
                None => match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                },
            }
        }
    });
    (backend, seen)
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

#[test]
fn llhttp_request_corpus() {
    let (backend, seen) = recording_backend();
    let proxy = proxy_for(&[backend.addr], 1);
    let addr = proxy.local_addrs()[0];
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in corpus("request") {
        let Some(e) = runnable(&case) else { continue };
        let strict = case.kind == "request";
        seen.lock().unwrap().clear();
        let mut s = connect(addr);
        let _ = s.write_all(&case.input);
        let _ = s.shutdown(Shutdown::Write);
        let name = format!("{} / {} [{}]", case.file, case.title, case.kind);
        let Some(bytes) = read_until_close(s) else {
            failures.push(format!("{name}: the proxy did not close the connection"));
            continue;
        };
        let (got, _) = statuses(&bytes, false);
        let forwarded = seen.lock().unwrap().clone();
        checked += 1;
        let complete: Vec<_> = e.messages.iter().filter(|m| m.2).collect();
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
                continue;
            }
            let want: Vec<(String, String)> = complete
                .iter()
                .map(|m| (m.0.clone(), m.1.clone()))
                .collect();
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
    assert!(checked > 100, "only {checked} request cases ran");
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
        let first = e.messages.iter().find(|m| m.3.is_some_and(|s| s >= 200));
        let outcome_ok = match (first, &e.error) {
            // Malformed head: nothing of it may reach the client.
            (None, Some(_)) => got == [502] && cut.is_none(),
            // Complete and valid (bytes after it are the backend's problem: the
            // connection is not reused).
            (Some(m), _) if m.2 => got.first() == m.3.as_ref(),
            // Malformed body: a 502 if nothing was sent yet, else the cut shows it.
            (Some(m), Some(_)) => got == [502] || cut == m.3,
            // Valid and delimited by the backend's close (complete), or cut short by
            // it (head relayed, then close).
            (Some(m), None) => got.first() == m.3.as_ref() || cut == m.3,
            (None, None) => true,
        };
        if !outcome_ok {
            failures.push(format!(
                "{name}: log {:?}, error {:?}; got {got:?}, cut {cut:?} after {:?}",
                first,
                e.error,
                started.elapsed()
            ));
        }
    }
    assert!(checked > 40, "only {checked} response cases ran");
    assert!(
        failures.is_empty(),
        "{} of {checked} response cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
