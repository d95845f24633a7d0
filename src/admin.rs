//! The admin endpoint (`--admin ADDR`): `GET /metrics` (Prometheus text format),
//! `GET /status` (JSON) and `GET /healthz`. One thread with blocking sockets and
//! timeouts, off the workers' path: a scrape only reads their atomics.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::http::MAX_HEADERS;

/// What the endpoint serves; the proxy's `ProxyStats` is one. The endpoint knows
/// nothing else of the proxy.
pub trait Report: Send + 'static {
    /// The Prometheus text exposition (`GET /metrics`).
    fn prometheus(&self) -> String;
    /// The JSON status (`GET /status`).
    fn status_json(&self) -> String;
}

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
        let thread = std::thread::Builder::new()
            .name("corelb-admin".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = serve(conn, &stats);
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

/// Answer one request, then close.
fn serve(mut conn: TcpStream, stats: &dyn Report) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let (status, content_type, body) = loop {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let head_only = req.method == Some("HEAD");
                let (status, ctype, body) = route(&req, stats);
                break (status, ctype, if head_only { String::new() } else { body });
            }
            Ok(httparse::Status::Partial) if len < buf.len() => {}
            _ => break (400, "text/plain", "bad request\n".to_string()),
        }
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    Ok(())
}

fn route(req: &httparse::Request<'_, '_>, stats: &dyn Report) -> (u16, &'static str, String) {
    if !matches!(req.method, Some("GET" | "HEAD")) {
        return (405, "text/plain", "GET only\n".into());
    }
    match req.path.unwrap_or("").split('?').next().unwrap_or("") {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            stats.prometheus(),
        ),
        "/status" => (200, "application/json", stats.status_json() + "\n"),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        _ => (
            404,
            "text/plain",
            "try /metrics, /status or /healthz\n".into(),
        ),
    }
}
