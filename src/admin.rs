//! The admin endpoint (`--admin ADDR`): `GET /metrics` (Prometheus text format),
//! `GET /status` (JSON) and `GET /healthz`, and with `--admin-token` the runtime
//! control of backends: `POST /backends/NAME/drain`, `.../disable`, `.../enable`
//! and `.../weight/N`. One thread with blocking sockets and timeouts, off the
//! workers' path: a scrape only reads their atomics.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::MAX_HEADERS;

/// What the endpoint serves and steers; the proxy's `Reloader` is one. The
/// endpoint knows nothing else of the proxy.
pub trait Report: Send + Sync + 'static {
    /// The Prometheus text exposition (`GET /metrics`).
    fn prometheus(&self) -> String;
    /// The JSON status (`GET /status`).
    fn status_json(&self) -> String;
    /// Whether `bearer` is the admin token; None when no token is configured
    /// (then nothing may be changed).
    fn authorize(&self, bearer: &[u8]) -> Option<bool>;
    /// Apply `action` to the backends named `backend` (`host:port` as
    /// configured): Ok with the JSON of their new state, or Err with the
    /// status and why.
    fn control(&self, backend: &str, action: Action) -> Result<String, (u16, String)>;
}

/// What an operator can do to a backend at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// No new requests; exchanges in flight finish; connections close as they
    /// become idle.
    Drain,
    /// Out now, for maintenance (not health-checked).
    Disable,
    /// Back in service.
    Enable,
    /// Balance with this weight (until the configuration changes it).
    Weight(u32),
}

/// Connections answered at once, each on a thread of its own; more wait in the
/// listen backlog. A slow client holds one for at most `REQUEST_DEADLINE` plus
/// `WRITE_TIMEOUT`, so it cannot stall the endpoint, nor a shutdown or handover.
const MAX_SERVING: usize = 8;

/// The whole request head must arrive within this long of the connection's
/// accept (408 otherwise), however it trickles in.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// Each write of the answer must go out within this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin thread; dropping it stops the thread.
pub struct Admin {
    addr: SocketAddr,
    /// The listening socket's descriptor, for a handover (valid while it runs).
    fd: RawFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Listen on `addr` and serve `stats`.
    pub fn start(addr: SocketAddr, stats: impl Report) -> io::Result<Admin> {
        Admin::start_on(TcpListener::bind(addr)?, stats)
    }

    /// Serve `stats` on a socket already listening (one a predecessor handed
    /// over, which it may still be accepting on until it stops).
    pub fn start_on(listener: TcpListener, stats: impl Report) -> io::Result<Admin> {
        listener.set_nonblocking(true)?;
        let fd = listener.as_raw_fd();
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let stats: Arc<dyn Report> = Arc::new(stats);
        let serving = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("corelb-admin".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    if serving.load(Ordering::Acquire) >= MAX_SERVING {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let stats = Arc::clone(&stats);
                            let slot = Serving::take(&serving);
                            let spawned = std::thread::Builder::new()
                                .name("corelb-admin-conn".into())
                                .spawn(move || {
                                    let _slot = slot;
                                    let _ = serve(conn, &*stats);
                                });
                            if spawned.is_err() {
                                // The connection and the slot went with the closure.
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(Admin {
            addr,
            fd,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket, for a handover to a successor.
    pub fn listener_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One of the `MAX_SERVING` places, given back when dropped: when its
/// connection's thread ends, or with the closure when the thread cannot start.
struct Serving(Arc<AtomicUsize>);

impl Serving {
    fn take(count: &Arc<AtomicUsize>) -> Serving {
        count.fetch_add(1, Ordering::AcqRel);
        Serving(Arc::clone(count))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One answer: status, content type, body, and extra header lines.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    extra: &'static str,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain",
            body: body.into(),
            extra: "",
        }
    }
}

/// Answer one request, then close.
fn serve(mut conn: TcpStream, stats: &dyn Report) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let mut head_only = false;
    let answer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Answer::text(408, "the request did not arrive within 2 s\n");
        }
        conn.set_read_timeout(Some(left))?;
        let n = match conn.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break Answer::text(408, "the request did not arrive within 2 s\n");
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                head_only = req.method == Some("HEAD");
                break route(&req, stats);
            }
            Ok(httparse::Status::Partial) if len < buf.len() => {}
            _ => break Answer::text(400, "bad request\n"),
        }
    };
    let reason = match answer.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Error",
    };
    // HEAD: the head GET would have, its Content-Length the body's (RFC 9110
    // §9.3.2), and no body.
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len(),
        answer.extra,
    );
    conn.write_all(head.as_bytes())?;
    if !head_only {
        conn.write_all(answer.body.as_bytes())?;
    }
    Ok(())
}

/// The status page: one self-contained HTML file (no external assets).
const STATUS_PAGE: &str = include_str!("status_page.html");

fn route(req: &httparse::Request<'_, '_>, stats: &dyn Report) -> Answer {
    let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
    if let Some(rest) = path.strip_prefix("/backends/") {
        return steer(req, rest, stats);
    }
    if !matches!(req.method, Some("GET" | "HEAD")) {
        return Answer {
            extra: "Allow: GET, HEAD\r\n",
            ..Answer::text(405, "GET only\n")
        };
    }
    match path {
        // The page for people: it reads /status itself, every two seconds.
        "/" => Answer {
            content_type: "text/html; charset=utf-8",
            ..Answer::text(200, STATUS_PAGE.to_string())
        },
        "/metrics" => Answer {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..Answer::text(200, stats.prometheus())
        },
        "/status" => Answer {
            content_type: "application/json",
            ..Answer::text(200, stats.status_json() + "\n")
        },
        "/healthz" => Answer::text(200, "ok\n"),
        _ => Answer::text(
            404,
            "try / (the status page), /metrics, /status, /healthz or POST /backends/NAME/(drain|disable|enable|weight/N)\n",
        ),
    }
}

/// `POST /backends/NAME/ACTION`: authorised by the token, then applied.
fn steer(req: &httparse::Request<'_, '_>, rest: &str, stats: &dyn Report) -> Answer {
    if req.method != Some("POST") {
        return Answer {
            extra: "Allow: POST\r\n",
            ..Answer::text(405, "POST only\n")
        };
    }
    let bearer = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| h.value.trim_ascii());
    let token = bearer.and_then(|v| {
        let (scheme, token) = v.split_at_checked(7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then_some(token.trim_ascii())
    });
    match (token, stats.authorize(token.unwrap_or(b""))) {
        (_, None) => {
            return Answer::text(
                403,
                "runtime control is off: start corelb with --admin-token FILE\n",
            );
        }
        (None, Some(_)) => {
            return Answer {
                extra: "WWW-Authenticate: Bearer realm=\"corelb\"\r\n",
                ..Answer::text(
                    401,
                    "send Authorization: Bearer TOKEN (the --admin-token file)\n",
                )
            };
        }
        (Some(_), Some(false)) => return Answer::text(403, "wrong token\n"),
        (Some(_), Some(true)) => {}
    }
    let Some((name, action)) = parse_action(rest) else {
        return Answer::text(
            404,
            "use /backends/HOST:PORT/drain, /disable, /enable or /weight/N\n",
        );
    };
    let Some(name) = percent_decode(name) else {
        return Answer::text(400, "bad percent-encoding in the backend name\n");
    };
    match stats.control(&name, action) {
        Ok(json) => Answer {
            content_type: "application/json",
            ..Answer::text(200, json + "\n")
        },
        Err((status, why)) => Answer::text(status, why + "\n"),
    }
}

/// `NAME/drain`, `NAME/disable`, `NAME/enable` or `NAME/weight/N` (N a number;
/// its range is the proxy's to check).
fn parse_action(rest: &str) -> Option<(&str, Action)> {
    let (before, last) = rest.rsplit_once('/')?;
    let action = match last {
        "drain" => Action::Drain,
        "disable" => Action::Disable,
        "enable" => Action::Enable,
        n => {
            let (name, verb) = before.rsplit_once('/')?;
            if verb != "weight" || name.is_empty() || n.is_empty() {
                return None;
            }
            // Digits only; a number too large for a weight is the proxy's to
            // refuse (400), not an unknown path.
            if !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let w = n
                .parse::<u64>()
                .map_or(u32::MAX, |w| u32::try_from(w).unwrap_or(u32::MAX));
            return Some((name, Action::Weight(w)));
        }
    };
    (!before.is_empty()).then_some((before, action))
}

/// `%XX` escapes decoded (`[::1]:80` may come as `%5B%3A%3A1%5D:80`).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_from_the_path() {
        assert_eq!(
            parse_action("127.0.0.1:80/drain"),
            Some(("127.0.0.1:80", Action::Drain))
        );
        assert_eq!(parse_action("a:1/enable"), Some(("a:1", Action::Enable)));
        assert_eq!(parse_action("a:1/disable"), Some(("a:1", Action::Disable)));
        assert_eq!(
            parse_action("[::1]:80/weight/7"),
            Some(("[::1]:80", Action::Weight(7)))
        );
        assert_eq!(parse_action("a:1/weight/x"), None);
        assert_eq!(parse_action("a:1/weight/+5"), None);
        assert_eq!(parse_action("a:1/weight/-1"), None);
        assert_eq!(
            parse_action("a:1/weight/99999999999"),
            Some(("a:1", Action::Weight(u32::MAX)))
        );
        assert_eq!(parse_action("a:1/size/7"), None);
        assert_eq!(parse_action("/drain"), None);
        assert_eq!(parse_action("drain"), None);
        assert_eq!(
            percent_decode("%5B%3A%3A1%5D:80").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("a%4"), None);
        assert_eq!(percent_decode("a%+2"), None);
    }
}
