//! Active health checks: one thread that asks every backend for `--health-path`
//! each interval and feeds the verdicts to `Health` (rise / fall hysteresis).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use super::health::Health;
use crate::config::CheckConfig;

/// The health-check thread; dropping it stops the thread.
pub struct Checker {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checker {
    /// Start checking the backends of `health` off the workers' path: one thread,
    /// blocking sockets with timeouts. A backend starts from its last verdict.
    pub fn spawn(health: Arc<Health>, config: CheckConfig) -> std::io::Result<Checker> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("corelb-health".into())
            .spawn(move || run_checks(&health, &config, &stopped))?;
        Ok(Checker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        // Closing the channel wakes the thread from its wait.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_checks(health: &Health, config: &CheckConfig, stopped: &Receiver<()>) {
    loop {
        for (b, m) in health.members().iter().enumerate() {
            // Stopping (a reload) need not wait for a round over every backend.
            if !matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
                return;
            }
            let result = check_once(m.addr, &m.authority, &config.path, config.timeout);
            let why = match &result {
                Ok(status) => format!("health check: {status}"),
                Err(e) => format!("health check: {e}"),
            };
            health.record_check(b, result.is_ok(), config.rise, config.fall, &why);
        }
        match stopped.recv_timeout(config.interval) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// One check: connect, send `GET path`, read the status line. Ok with the status
/// when it is 2xx or 3xx; Err with why not.
fn check_once(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: corelb-health-check\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !line.contains(&b'\n') {
        if line.len() > 1024 {
            return Err("status line too long".into());
        }
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Err("closed before answering".into()),
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    // "HTTP/1.x NNN ..."
    let status = line
        .get(9..12)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u16>().ok())
        .filter(|_| line.starts_with(b"HTTP/1."))
        .ok_or_else(|| "not an HTTP/1.x response".to_string())?;
    if (200..400).contains(&status) {
        Ok(status)
    } else {
        Err(format!("status {status}"))
    }
}
