//! The access log (`--access-log PATH|-`): one line per answered request, in the
//! combined format of nginx and Apache (with backend and timings appended) or as
//! JSON. Each worker formats lines into its own buffer and writes it out in one
//! `write` when it fills, at every timer sweep and at exit; with the log off, none
//! of this runs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "combined" => Some(Format::Combined),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Combined => "combined",
            Format::Json => "json",
        }
    }
}

/// Where the log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `None`: standard output.
    pub path: Option<PathBuf>,
    pub format: Format,
}

/// The open log, shared by the workers.
#[derive(Debug)]
pub struct Sink {
    /// The file, and its path (reopened on a reload: see `reopen`).
    file: Option<(RwLock<File>, PathBuf)>,
    pub format: Format,
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Sink {
    pub fn open(config: &Config) -> io::Result<Arc<Sink>> {
        let file = match &config.path {
            Some(p) => Some((RwLock::new(open_append(p)?), p.clone())),
            None => None,
        };
        Ok(Arc::new(Sink {
            file,
            format: config.format,
        }))
    }

    /// Write whole lines at once (O_APPEND keeps workers' writes from interleaving).
    pub fn write(&self, bytes: &[u8]) {
        let _ = match &self.file {
            Some((f, _)) => (&*f.read().unwrap_or_else(|e| e.into_inner())).write_all(bytes),
            None => io::stdout().lock().write_all(bytes),
        };
    }

    /// Open the file at its path again, for the lines from now on: after
    /// logrotate moved it away, the log goes on in a new file of that name (no
    /// `copytruncate` needed). Standard output has nothing to reopen.
    /// Returns the path reopened.
    pub fn reopen(&self) -> io::Result<Option<&PathBuf>> {
        let Some((f, path)) = &self.file else {
            return Ok(None);
        };
        let fresh = open_append(path)?;
        *f.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(Some(path))
    }
}

/// What one line says.
pub struct Entry<'a> {
    pub client: IpAddr,
    /// `METHOD TARGET VERSION` (empty if the head never parsed).
    pub request: &'a [u8],
    pub referer: &'a [u8],
    pub user_agent: &'a [u8],
    /// The request's Host.
    pub host: &'a [u8],
    /// The X-Request-Id it went to its backend with (empty when it went to none).
    pub request_id: &'a [u8],
    /// The worker that answered.
    pub worker: usize,
    pub status: u16,
    pub bytes: u64,
    pub backend: Option<&'a str>,
    /// From the request head to the response head, if a backend answered.
    pub upstream: Option<Duration>,
    pub total: Duration,
    /// For a client that spoke TLS: what it negotiated.
    pub tls: Option<Tls<'a>>,
}

/// A TLS client's session, as the log shows it.
pub struct Tls<'a> {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'a str,
    /// The cipher suite's IANA name (`TLS13_AES_128_GCM_SHA256`).
    pub cipher: &'a str,
    /// The name the client asked for (SNI), if it sent one.
    pub sni: Option<&'a str>,
}

/// A worker's buffer of formatted lines, with the current second's timestamps cached.
pub struct Buffer {
    pub out: Vec<u8>,
    second: u64,
    clf_time: String,
    iso_time: String,
}

/// Lines are written out once this much is buffered.
pub const FLUSH_AT: usize = 32 * 1024;

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            out: Vec::with_capacity(FLUSH_AT + 1024),
            second: u64::MAX,
            clf_time: String::new(),
            iso_time: String::new(),
        }
    }
}

impl Buffer {
    pub fn add(&mut self, format: Format, e: &Entry<'_>) {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let (now, millis) = (since.as_secs(), since.subsec_millis());
        if now != self.second {
            self.second = now;
            let (y, mo, d, h, mi, s) = civil(now);
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            self.clf_time = format!(
                "{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000",
                MONTHS[mo as usize - 1]
            );
            self.iso_time = format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
        }
        let out = &mut self.out;
        match format {
            Format::Combined => {
                let _ = write!(out, "{} - - [{}] \"", e.client, self.clf_time);
                quoted_text(out, e.request, b"-", false);
                let _ = write!(out, "\" {} {} \"", e.status, e.bytes);
                quoted_text(out, e.referer, b"-", false);
                out.extend_from_slice(b"\" \"");
                quoted_text(out, e.user_agent, b"-", false);
                let _ = write!(
                    out,
                    "\" backend={} upstream_time=",
                    e.backend.unwrap_or("-")
                );
                seconds(out, e.upstream, b"-");
                let _ = write!(
                    out,
                    " request_time={:.6} request_id=",
                    e.total.as_secs_f64()
                );
                quoted_text(out, e.request_id, b"-", false);
                if let Some(tls) = &e.tls {
                    let _ = write!(out, " tls={} cipher={} sni=", tls.version, tls.cipher);
                    quoted_text(out, tls.sni.unwrap_or("").as_bytes(), b"-", false);
                }
                out.push(b'\n');
            }
            Format::Json => {
                let mut parts = e.request.splitn(3, |&b| b == b' ');
                let method = parts.next().unwrap_or(b"");
                let path = parts.next().unwrap_or(b"");
                let _ = write!(
                    out,
                    "{{\"time\":\"{}.{millis:03}Z\",\"client\":\"{}\",\"worker\":{},\"method\":\"",
                    self.iso_time, e.client, e.worker
                );
                quoted_text(out, method, b"", true);
                out.extend_from_slice(b"\",\"path\":\"");
                quoted_text(out, path, b"", true);
                out.extend_from_slice(b"\",\"host\":\"");
                quoted_text(out, e.host, b"", true);
                out.extend_from_slice(b"\",\"referer\":\"");
                quoted_text(out, e.referer, b"", true);
                out.extend_from_slice(b"\",\"user_agent\":\"");
                quoted_text(out, e.user_agent, b"", true);
                out.extend_from_slice(b"\",\"request_id\":\"");
                quoted_text(out, e.request_id, b"", true);
                let _ = write!(
                    out,
                    "\",\"status\":{},\"bytes\":{},\"backend\":",
                    e.status, e.bytes
                );
                match e.backend {
                    Some(b) => {
                        out.push(b'"');
                        quoted_text(out, b.as_bytes(), b"", true);
                        out.push(b'"');
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"upstream_time\":");
                seconds(out, e.upstream, b"null");
                let _ = write!(out, ",\"request_time\":{:.6}", e.total.as_secs_f64());
                if let Some(tls) = &e.tls {
                    let _ = write!(
                        out,
                        ",\"tls\":{{\"version\":\"{}\",\"cipher\":\"{}\",\"sni\":",
                        tls.version, tls.cipher
                    );
                    match tls.sni {
                        Some(name) => {
                            out.push(b'"');
                            quoted_text(out, name.as_bytes(), b"", true);
                            out.push(b'"');
                        }
                        None => out.extend_from_slice(b"null"),
                    }
                    out.push(b'}');
                }
                out.extend_from_slice(b"}\n");
            }
        }
    }
}

/// A duration in seconds with microseconds, or `none` when there is none.
fn seconds(out: &mut Vec<u8>, d: Option<Duration>, none: &[u8]) {
    match d {
        Some(d) => {
            let _ = write!(out, "{:.6}", d.as_secs_f64());
        }
        None => out.extend_from_slice(none),
    }
}

/// Bytes inside quotes: `"` and `\` escaped, control and non-ASCII bytes as `\xHH`
/// (nginx's way) or, in JSON, `\u00HH`.
fn quoted_text(out: &mut Vec<u8>, text: &[u8], empty: &[u8], json: bool) {
    if text.is_empty() {
        out.extend_from_slice(empty);
        return;
    }
    for &b in text {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            0x20..=0x7e => out.push(b),
            _ if json => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

/// UTC civil time of a Unix timestamp (Howard Hinnant's days-from-civil inverse).
pub(crate) fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_matches_known_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_795_579_126), (2026, 11, 25, 3, 58, 46));
    }

    fn entry() -> Entry<'static> {
        Entry {
            client: "10.0.0.1".parse().unwrap(),
            request: b"GET /a\"b HTTP/1.1",
            referer: b"",
            user_agent: b"curl/8",
            host: b"a.test",
            request_id: b"r1",
            worker: 1,
            status: 200,
            bytes: 5,
            backend: Some("127.0.0.1:9001"),
            upstream: Some(Duration::from_micros(1500)),
            total: Duration::from_micros(2000),
            tls: None,
        }
    }

    #[test]
    fn combined_and_json_lines() {
        let mut b = Buffer::default();
        b.add(Format::Combined, &entry());
        let line = String::from_utf8(std::mem::take(&mut b.out)).unwrap();
        assert!(line.starts_with("10.0.0.1 - - ["), "{line}");
        assert!(
            line.ends_with("] \"GET /a\\\"b HTTP/1.1\" 200 5 \"-\" \"curl/8\" backend=127.0.0.1:9001 upstream_time=0.001500 request_time=0.002000 request_id=r1\n"),
            "{line}"
        );
        b.add(Format::Json, &entry());
        let line = String::from_utf8(b.out).unwrap();
        assert!(
            line.ends_with("\"client\":\"10.0.0.1\",\"worker\":1,\"method\":\"GET\",\"path\":\"/a\\\"b\",\"host\":\"a.test\",\"referer\":\"\",\"user_agent\":\"curl/8\",\"request_id\":\"r1\",\"status\":200,\"bytes\":5,\"backend\":\"127.0.0.1:9001\",\"upstream_time\":0.001500,\"request_time\":0.002000}\n"),
            "{line}"
        );
    }

    #[test]
    fn a_tls_client_s_lines_say_what_it_negotiated() {
        let mut e = entry();
        e.tls = Some(Tls {
            version: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            sni: Some("a.test"),
        });
        let mut b = Buffer::default();
        b.add(Format::Combined, &e);
        let line = String::from_utf8(std::mem::take(&mut b.out)).unwrap();
        assert!(
            line.ends_with(
                " request_time=0.002000 request_id=r1 tls=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256 sni=a.test\n"
            ),
            "{line}"
        );
        e.tls.as_mut().unwrap().sni = None;
        b.add(Format::Json, &e);
        let line = String::from_utf8(b.out).unwrap();
        assert!(
            line.ends_with(",\"request_time\":0.002000,\"tls\":{\"version\":\"TLSv1.3\",\"cipher\":\"TLS13_AES_128_GCM_SHA256\",\"sni\":null}}\n"),
            "{line}"
        );
    }
}
