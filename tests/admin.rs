//! The admin endpoint: /metrics under a strict check of the Prometheus text format,
//! with counts that match the traffic sent; /status JSON; /healthz; errors.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;

use common::*;

/// Label pairs of one series.
type Labels = Vec<(String, String)>;
/// Every sample of a scrape: (name, labels) -> value.
type Samples = HashMap<(String, Labels), f64>;

/// GET `path` from the admin endpoint: (status, content type, body).
fn admin_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = connect(addr);
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    (status, ctype, body.to_string())
}

fn valid_name(name: &str, first: fn(char) -> bool) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(first)
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parse `{a="x",b="y"}`; panics on anything the text format does not allow.
fn parse_labels(text: &str, line: &str) -> Labels {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label: {line}"));
        assert!(
            valid_name(name, |c| c.is_ascii_alphabetic() || c == '_') && !name.contains(':'),
            "label name {name:?}: {line}"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, c @ ('\\' | '"' | 'n'))) => value.push(c),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

/// A strict reading of the text exposition format 0.0.4. Returns every sample as
/// (name, labels) -> value.
fn check_exposition(text: &str) -> Samples {
    assert!(text.ends_with('\n'), "no final newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line");
        if let Some(rest) = line.strip_prefix("# ") {
            let (kind, rest) = rest.split_once(' ').unwrap();
            let (name, value) = rest.split_once(' ').unwrap();
            assert!(valid_name(name, |c| c.is_ascii_alphabetic()
                || c == '_'
                || c == ':'));
            match kind {
                "HELP" => assert!(helped.insert(name.to_string()), "two HELP for {name}"),
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&value),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_string(), value.to_string()).is_none(),
                        "two TYPE for {name}"
                    );
                    assert!(
                        !samples
                            .keys()
                            .any(|(n, _): &(String, _)| n.starts_with(name)),
                        "TYPE after samples: {line}"
                    );
                }
                _ => panic!("unknown comment {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value {v:?}: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').unwrap(), line)),
            None => (series, Vec::new()),
        };
        assert!(valid_name(name, |c| c.is_ascii_alphabetic()
            || c == '_'
            || c == ':'));
        let family = types
            .keys()
            .find(|f| {
                *f == name
                    || (types[*f] == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name == format!("{f}{s}")))
            })
            .unwrap_or_else(|| panic!("sample without a TYPE: {line}"));
        if types[family] == "counter" {
            assert!(value >= 0.0, "{line}");
        }
        // corelb's own counters count events (CPU seconds are a counter too,
        // and fractional).
        if (types[family] == "counter" && name.starts_with("corelb_"))
            || name.ends_with("_bucket")
            || name.ends_with("_count")
        {
            assert!(value >= 0.0 && value.fract() == 0.0, "{line}");
        }
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "duplicate series: {line}"
        );
    }
    // Histograms: cumulative buckets ending in +Inf, equal to _count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let mut series: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
        for ((name, labels), v) in &samples {
            if *name == bucket {
                let le = labels
                    .iter()
                    .find(|l| l.0 == "le")
                    .expect("bucket without le");
                let bound = if le.1 == "+Inf" {
                    f64::INFINITY
                } else {
                    le.1.parse().unwrap()
                };
                let rest: Vec<_> = labels.iter().filter(|l| l.0 != "le").cloned().collect();
                series.entry(rest).or_default().push((bound, *v));
            }
        }
        assert!(!series.is_empty(), "histogram {family} has no buckets");
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "not cumulative"
            );
            assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
            let count = samples[&(format!("{family}_count"), labels.clone())];
            assert_eq!(buckets.last().unwrap().1, count);
            assert!(samples.contains_key(&(format!("{family}_sum"), labels)));
        }
    }
    samples
}

fn sum(samples: &Samples, name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, labels), _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.iter().any(|l| l.0 == *k && l.1 == *v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Scrape /metrics (each under the strict format check) until `done` holds of
/// it, or 5 s have passed: workers count just after their writes, so a client
/// may see bytes a moment before the counters do. Returns the last scrape.
fn scrape_until(admin: SocketAddr, done: impl Fn(&Samples) -> bool) -> (String, Samples) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = admin_get(admin, "GET", "/metrics").2;
        let samples = check_exposition(&text);
        if done(&samples) || std::time::Instant::now() > deadline {
            return (text, samples);
        }
        // Back-off between two scrapes.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn metrics_follow_the_text_format_and_count_the_traffic() {
    let origins = origins(1);
    let backend = origins[0].local_addr().to_string();
    let proxy = proxy_with(&[origins[0].local_addr()], |c| {
        c.workers = 2;
        c.admin = Some(loopback());
    });
    let admin = proxy.admin_addr().unwrap();
    let (status, ctype, before) = admin_get(admin, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    check_exposition(&before);
    // Which build serves, as the version flag says.
    assert!(
        before.contains(&format!(
            "corelb_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            corelb::COMMIT
        )),
        "{before}"
    );

    let addr = proxy.local_addrs()[0];
    for _ in 0..20 {
        assert_eq!(get(addr, "/").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(addr, "/status/404").status, 404);
    }
    let (bad, _) = roundtrip(addr, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(bad.status, 400);

    // A worker counts a request just after writing its last byte: wait for the
    // counts to settle rather than race them.
    let (after, samples) = scrape_until(admin, |samples| {
        sum(samples, "corelb_request_duration_seconds_count", &[]) >= 23.0
    });
    let requests = "corelb_requests_total";
    assert_eq!(
        sum(
            &samples,
            requests,
            &[("backend", &backend), ("class", "2xx")]
        ),
        20.0
    );
    assert_eq!(
        sum(
            &samples,
            requests,
            &[("backend", &backend), ("class", "4xx")]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &samples,
            requests,
            &[("backend", "local"), ("class", "4xx")]
        ),
        1.0
    );
    // The latency histogram is per backend: corelb's own 400 is not in it.
    assert_eq!(
        sum(
            &samples,
            "corelb_request_duration_seconds_count",
            &[("backend", &backend)]
        ),
        23.0
    );
    let upstream = sum(&samples, "corelb_upstream_connects_total", &[])
        + sum(&samples, "corelb_upstream_reuses_total", &[]);
    assert_eq!(upstream, 23.0);
    assert_eq!(
        sum(&samples, "corelb_backend_up", &[("backend", &backend)]),
        1.0
    );
    assert_eq!(
        sum(&samples, "corelb_accepted_connections_total", &[]),
        24.0 + 0.0
    );
    // A scrape's size does not grow with traffic.
    assert_eq!(before.lines().count(), after.lines().count());
}

#[test]
fn status_healthz_and_errors() {
    let origins = origins(2);
    let addrs: Vec<_> = origins.iter().map(|o| o.local_addr()).collect();
    let proxy = proxy_with(&addrs, |c| {
        c.workers = 2;
        c.admin = Some(loopback());
    });
    for _ in 0..10 {
        get(proxy.local_addrs()[0], "/");
    }
    let admin = proxy.admin_addr().unwrap();
    let (status, ctype, body) = admin_get(admin, "GET", "/status");
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    let build = format!(
        "{{\"version\":\"{}\",\"commit\":\"{}\",",
        env!("CARGO_PKG_VERSION"),
        corelb::COMMIT
    );
    assert!(
        body.strip_prefix(&build).is_some_and(|rest| rest.starts_with("\"algorithm\":\"round-robin\",\"reloads\":0,\"last_backend_kept\":false,\"config\":{\"listen\":[\"127.0.0.1:0\"],\"workers\":2,\"retries\":2,\"health_path\":null,")),
        "{body}"
    );
    assert!(
        body.contains("\"timeouts_ms\":{\"idle\":60000,\"header\":10000,\"connect\":3000,"),
        "{body}"
    );
    for a in &addrs {
        let entry = format!(
            "{{\"address\":\"{a}\",\"up\":true,\"admin_state\":\"ready\",\"weight\":1,\"ramp\":1.000,\"inflight\":0,\"connections\":"
        );
        let at = body
            .find(&entry)
            .unwrap_or_else(|| panic!("{entry} in {body}"));
        let rest = &body[at + entry.len()..];
        // Its pooled connections, as of the workers' last sweeps: one per worker at most.
        let (connections, rest) = rest.split_once(',').unwrap();
        assert!(connections.parse::<u64>().unwrap() <= 2, "{body}");
        assert!(
            rest.starts_with("\"requests\":5,\"received_bytes\":"),
            "{body}"
        );
        assert!(rest.contains(",\"sent_bytes\":"), "{body}");
    }
    assert!(body.contains("\"skew\":"), "{body}");
    assert_eq!(
        admin_get(admin, "GET", "/healthz"),
        (200, "text/plain".into(), "ok\n".into())
    );
    assert_eq!(admin_get(admin, "HEAD", "/healthz").2, "");
    // HEAD says the length GET's body has (RFC 9110 §9.3.2), and sends none.
    let length_of = |method: &str, path: &str| {
        let mut s = connect(admin);
        s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        (length, body.len())
    };
    for path in ["/healthz", "/status", "/nope"] {
        let (get_length, get_body) = length_of("GET", path);
        assert_eq!(get_length, get_body, "{path}");
        assert_eq!(length_of("HEAD", path), (get_length, 0), "{path}");
    }
    assert_eq!(admin_get(admin, "GET", "/nope").0, 404);
    assert_eq!(admin_get(admin, "POST", "/metrics").0, 405);
}

#[test]
fn the_admin_endpoint_is_off_by_default() {
    let origins = origins(1);
    let proxy = proxy_for(&[origins[0].local_addr()], 1);
    assert!(proxy.admin_addr().is_none());
}

#[test]
fn the_access_log_has_a_line_per_request_in_either_format() {
    let origins = origins(1);
    let backend = origins[0].local_addr().to_string();
    let dir = std::env::temp_dir().join(format!("corelb-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for format in [
        corelb::access::Format::Json,
        corelb::access::Format::Combined,
    ] {
        let path = dir.join(format!("{format:?}.log"));
        let proxy = proxy_with(&[origins[0].local_addr()], |c| {
            c.access_log = Some(corelb::access::Config {
                path: Some(path.clone()),
                format,
            });
        });
        let addr = proxy.local_addrs()[0];
        get(addr, "/size/5");
        get(addr, "/status/404");
        roundtrip(addr, b"GET /bad HTTP/1.1\r\n\r\n");
        let (_, _) = roundtrip(
            addr,
            b"GET /ua HTTP/1.1\r\nHost: t\r\nUser-Agent: test \"agent\"\r\nReferer: http://r/\r\nConnection: close\r\n\r\n",
        );
        proxy.shutdown();
        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 4, "{log}");
        match format {
            corelb::access::Format::Json => {
                // A time to the millisecond: "2026-12-07T20:21:46.363Z".
                let time = &lines[0]["{\"time\":\"".len()..][..24];
                assert!(
                    time.starts_with("20") && time.as_bytes()[19] == b'.' && time.ends_with('Z'),
                    "{}",
                    lines[0]
                );
                assert!(
                    lines[0].contains("\"client\":\"127.0.0.1\",\"worker\":"),
                    "{}",
                    lines[0]
                );
                assert!(
                    lines[0].contains(
                        "\"method\":\"GET\",\"path\":\"/size/5\",\"host\":\"test\",\"referer\":\"\",\"user_agent\":\"\",\"request_id\":\""
                    ),
                    "{}",
                    lines[0]
                );
                assert!(
                    lines[0].contains(&format!(
                        "\",\"status\":200,\"bytes\":5,\"backend\":\"{backend}\",\"upstream_time\":0."
                    )),
                    "{}",
                    lines[0]
                );
                assert!(lines[1].contains("\"status\":404"), "{}", lines[1]);
                assert!(
                    // corelb's own answer counts its body ("Bad Request\n").
                    lines[2].contains("\"method\":\"GET\",\"path\":\"/bad\",\"host\":\"\",\"referer\":\"\",\"user_agent\":\"\",\"request_id\":\"\",\"status\":400,\"bytes\":12,\"backend\":null,\"upstream_time\":null"),
                    "{}",
                    lines[2]
                );
            }
            corelb::access::Format::Combined => {
                assert!(
                    lines[0].contains(&format!(
                        "\"GET /size/5 HTTP/1.1\" 200 5 \"-\" \"-\" backend={backend} upstream_time=0."
                    )),
                    "{}",
                    lines[0]
                );
                assert!(
                    lines[2].contains(
                        "\"GET /bad HTTP/1.1\" 400 12 \"-\" \"-\" backend=- upstream_time=-"
                    ),
                    "{}",
                    lines[2]
                );
                assert!(
                    lines[3].contains(&format!(
                        "\"GET /ua HTTP/1.1\" 200 {} \"http://r/\" \"test \\\"agent\\\"\"",
                        format!("backend {backend}\n").len()
                    )),
                    "{}",
                    lines[3]
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that trickles its request holds neither the endpoint (others are
/// answered meanwhile) nor itself past the request deadline (408 after 2 s).
#[test]
fn a_slow_admin_client_stalls_nobody() {
    let origins = origins(1);
    let proxy = proxy_with(&[origins[0].local_addr()], |c| c.admin = Some(loopback()));
    let admin = proxy.admin_addr().unwrap();
    let started = std::time::Instant::now();
    let mut slow: Vec<_> = (0..3)
        .map(|_| {
            let mut s = connect(admin);
            s.write_all(b"GET /metr").unwrap();
            s
        })
        .collect();
    for _ in 0..5 {
        assert_eq!(admin_get(admin, "GET", "/healthz").0, 200);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "answered while the slow ones wait: {:?}",
        started.elapsed()
    );
    for s in &mut slow {
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 408 "), "{raw}");
    }
}

/// The process families every Prometheus client exports, checked against
/// /proc as read here, and the whole scrape through promtool when it is
/// installed (Debian's prometheus package; CI installs it).
#[test]
fn process_metrics_and_promtool() {
    let origins = origins(1);
    let proxy = proxy_with(&[origins[0].local_addr()], |c| c.admin = Some(loopback()));
    get(proxy.local_addrs()[0], "/");
    let (_, _, body) = admin_get(proxy.admin_addr().unwrap(), "GET", "/metrics");
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .parse()
            .unwrap()
    };
    // This test's process is the proxy's.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let rss = value("process_resident_memory_bytes");
    assert!(
        rss > rss_kb * 1024.0 / 2.0 && rss < rss_kb * 1024.0 * 2.0,
        "{rss} vs {rss_kb} kB"
    );
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
    // Other tests of this binary open and close sockets meanwhile.
    assert!((value("process_open_fds") - fds).abs() < 200.0, "{fds}");
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert_eq!(value("process_max_fds"), soft as f64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value("process_start_time_seconds");
    assert!(
        start <= now + 1.0 && start > now - 3600.0,
        "{start} vs {now}"
    );
    assert!(value("process_cpu_seconds_total") >= 0.0);
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let said = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && said.trim().is_empty(),
                "promtool: {said}"
            );
        }
        Err(e) => eprintln!("skipped promtool ({e}): apt-get install prometheus"),
    }
}

/// goaccess, a standard log analyser, reads every line of the combined log
/// with its COMBINED format (CI installs it; skipped when missing), refusals
/// included: a head too large for the buffer is logged with its request line
/// and the length of the 431's body.
#[test]
fn goaccess_reads_every_access_log_line() {
    let origins = origins(1);
    let dir = common::tls::TempDir::new("goaccess");
    let path = dir.0.join("access.log");
    let proxy = proxy_with(&[origins[0].local_addr()], |c| {
        c.access_log = Some(corelb::access::Config {
            path: Some(path.clone()),
            format: corelb::access::Format::Combined,
        });
    });
    let addr = proxy.local_addrs()[0];
    get(addr, "/a");
    get(addr, "/status/404");
    roundtrip(
        addr,
        b"GET /q?x=\"1\" HTTP/1.1\r\nHost: t\r\nUser-Agent: a \"quoted\" agent\r\nReferer: http://r/\r\n\r\n",
    );
    roundtrip(addr, b"GET /bad HTTP/1.1\r\n\r\n");
    let mut big = b"GET /big HTTP/1.1\r\nHost: t\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 40_000));
    big.extend_from_slice(b"\r\n\r\n");
    let mut s = connect(addr);
    let _ = s.write_all(&big);
    let mut r = Reader::new(s);
    assert_eq!(r.response().status, 431);
    drop(r);
    proxy.shutdown();
    let log = std::fs::read_to_string(&path).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");
    let big_line = log.lines().find(|l| l.contains(" 431 ")).unwrap();
    assert!(
        big_line.contains("\"GET /big HTTP/1.1\" 431 32 "),
        "{big_line}"
    );
    let report = dir.0.join("report.json");
    match std::process::Command::new("goaccess")
        .arg(&path)
        .args(["--log-format=COMBINED", "--no-global-config", "-o"])
        .arg(&report)
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let json = std::fs::read_to_string(&report).unwrap();
            let general = &json[json.find("\"general\"").unwrap()..];
            let field = |name: &str| -> u64 {
                let at = general.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
                general[at..]
                    .trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            assert_eq!(
                (field("total_requests"), field("failed_requests")),
                (5, 0),
                "{general:.300}"
            );
        }
        Err(e) => eprintln!("skipped goaccess ({e}): apt-get install goaccess"),
    }
}

/// X-Request-Id: a client's valid one is kept, else one is made; the backend
/// gets it and the access log line says the same one, so a request can be
/// followed from the client to the backend's own log.
#[test]
fn a_request_id_reaches_the_backend_and_the_log() {
    let backend = Scripted::start(|mut s, _| {
        while let Some(req) = read_request(&mut s) {
            let ids: Vec<&str> = req.head.all("x-request-id").collect();
            let body = ids.join("|");
            let out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    });
    let dir = common::tls::TempDir::new("request-id");
    let path = dir.0.join("access.log");
    let proxy = proxy_with(&[backend.addr], |c| {
        c.workers = 1;
        c.access_log = Some(corelb::access::Config {
            path: Some(path.clone()),
            format: corelb::access::Format::Json,
        });
    });
    let addr = proxy.local_addrs()[0];
    let made: Vec<String> = (0..3).map(|_| get(addr, "/").text()).collect();
    for id in &made {
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    assert!(made[0] != made[1] && made[1] != made[2], "{made:?}");
    let (kept, _) = roundtrip(
        addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: client-7\r\nX-Request-Id: again\r\n\r\n",
    );
    assert_eq!(kept.text(), "client-7");
    let (replaced, _) = roundtrip(
        addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: a,b\r\n\r\n",
    );
    assert_eq!(replaced.text().len(), 32, "{}", replaced.text());
    proxy.shutdown();
    let log = std::fs::read_to_string(&path).unwrap();
    for id in made
        .iter()
        .chain([&"client-7".to_string(), &replaced.text()])
    {
        assert!(
            log.contains(&format!("\"request_id\":\"{id}\"")),
            "{id}: {log}"
        );
    }
}

/// A worker writes its access log lines in the order it answered, so their
/// times never go back (one worker, four clients at once).
#[test]
fn access_log_lines_of_a_worker_are_in_time_order() {
    let origins = origins(1);
    let dir = common::tls::TempDir::new("log-order");
    let path = dir.0.join("access.log");
    let proxy = proxy_with(&[origins[0].local_addr()], |c| {
        c.workers = 1;
        c.access_log = Some(corelb::access::Config {
            path: Some(path.clone()),
            format: corelb::access::Format::Json,
        });
    });
    let addr = proxy.local_addrs()[0];
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..100 {
                    assert_eq!(get(addr, "/").status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    proxy.shutdown();
    let log = std::fs::read_to_string(&path).unwrap();
    assert_eq!(log.lines().count(), 400, "{log}");
    // `{"time":"2026-12-07T20:21:46.363Z"`: the time is bytes 9 to 33.
    let times: Vec<&str> = log.lines().map(|l| &l[9..33]).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{log}");
}

/// What one scripted backend read and wrote, counted on its own sockets.
#[derive(Default)]
struct Wire {
    read: std::sync::atomic::AtomicU64,
    written: std::sync::atomic::AtomicU64,
}

/// A backend that counts every byte it reads and writes: `/big` gets a 200 KiB
/// body (long enough to go through the pipe with splice on), an `Upgrade: echo`
/// request a 101 and then its bytes back until the client's side ends, anything
/// else a short answer. Requests carry a Content-Length body or none.
fn counting_backend(wire: std::sync::Arc<Wire>) -> Scripted {
    use std::sync::atomic::Ordering::SeqCst;
    Scripted::start(move |mut s, _| {
        while let Some(head) = read_head(&mut s) {
            let lower = head.to_ascii_lowercase();
            let length: usize = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let mut body = vec![0u8; length];
            s.read_exact(&mut body).unwrap();
            wire.read.fetch_add((head.len() + length) as u64, SeqCst);
            let answer = if lower.contains("upgrade: echo") {
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
                    .to_vec()
            } else if head.starts_with("GET /big ") {
                let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 204800\r\n\r\n".to_vec();
                a.resize(a.len() + 204_800, b'b');
                a
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()
            };
            s.write_all(&answer).unwrap();
            wire.written.fetch_add(answer.len() as u64, SeqCst);
            if lower.contains("upgrade: echo") {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            wire.read.fetch_add(n as u64, SeqCst);
                            s.write_all(&buf[..n]).unwrap();
                            wire.written.fetch_add(n as u64, SeqCst);
                        }
                    }
                }
            }
        }
    })
}

#[test]
fn bytes_are_counted_per_backend_as_both_ends_saw_them() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::SeqCst;
    let wires = [Arc::new(Wire::default()), Arc::new(Wire::default())];
    let backends = wires.each_ref().map(|w| counting_backend(Arc::clone(w)));
    let proxy = proxy_with(&[backends[0].addr, backends[1].addr], |c| {
        c.workers = 2;
        c.admin = Some(loopback());
        c.tune.splice = true;
    });
    let addr = proxy.local_addrs()[0];
    // What the clients wrote and read, counted on their sockets.
    let (mut wrote, mut got) = (0u64, 0u64);

    // Pipelined on one connection: a GET, an upload (longer than a buffer, so
    // most of it is read while the exchange relays it), a large body (spliced).
    for _ in 0..3 {
        let mut s = connect(addr);
        let mut raw = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
        raw.extend_from_slice(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n");
        raw.resize(raw.len() + 200_000, b'u');
        raw.extend_from_slice(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(&raw).unwrap();
        wrote += raw.len() as u64;
        let answers = read_until_closed(&mut s);
        assert!(answers.ends_with(&[b'b'; 100]), "the large body came whole");
        got += answers.len() as u64;
    }
    // A tunnel: its bytes go once the 101 is in, so they are read by the tunnel.
    let mut s = connect(addr);
    let head = b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    s.write_all(head).unwrap();
    let switched = read_head(&mut s).unwrap();
    assert!(switched.starts_with("HTTP/1.1 101 "), "{switched}");
    let ping = [b'p'; 3000];
    s.write_all(&ping).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    wrote += (head.len() + ping.len()) as u64;
    let echoed = read_until_closed(&mut s);
    assert_eq!(echoed, ping);
    got += (switched.len() + echoed.len()) as u64;
    // corelb's own answer to a request without a Host; the body it announced
    // comes after the answer, and is read (and dropped) by the lingering close.
    let mut s = connect(addr);
    let bad = b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
    s.write_all(bad).unwrap();
    let answer = read_until_closed(&mut s);
    assert!(answer.starts_with(b"HTTP/1.1 400 ") && answer.len() > 60);
    s.write_all(&[b'x'; 5000]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = read_until_end(&mut s);
    wrote += (bad.len() + 5000) as u64;
    got += answer.len() as u64;

    // What each end saw, against what corelb counted (a worker counts just after
    // its write returns, so the clients may see bytes a moment before).
    let admin = proxy.admin_addr().unwrap();
    let expected = |samples: &Samples| {
        let mut pairs = vec![
            (
                "client received".to_string(),
                wrote,
                sum(samples, "corelb_client_received_bytes_total", &[]),
            ),
            (
                "client sent".to_string(),
                got,
                sum(samples, "corelb_client_sent_bytes_total", &[]),
            ),
        ];
        for (b, w) in backends.iter().zip(&wires) {
            let name = b.addr.to_string();
            let at = [("backend", name.as_str())];
            pairs.push((
                format!("{name} received"),
                w.written.load(SeqCst),
                sum(samples, "corelb_backend_received_bytes_total", &at),
            ));
            pairs.push((
                format!("{name} sent"),
                w.read.load(SeqCst),
                sum(samples, "corelb_backend_sent_bytes_total", &at),
            ));
        }
        pairs
    };
    let (_, samples) = scrape_until(admin, |samples| {
        expected(samples)
            .iter()
            .all(|(_, want, have)| *want as f64 == *have)
    });
    let pairs = expected(&samples);
    for (what, want, have) in &pairs {
        assert_eq!(*want as f64, *have, "{what}: {pairs:?}");
    }
    // Both backends carried traffic, and the large bodies went through the pipe.
    assert!(wires.iter().all(|w| w.written.load(SeqCst) > 0));
    assert!(metric(&proxy, "corelb_spliced_responses_total", "") >= 1);
    // The status JSON gives each backend's bytes too.
    let status = admin_get(admin, "GET", "/status").2;
    for (b, w) in backends.iter().zip(&wires) {
        let wanted = format!(
            "\"received_bytes\":{},\"sent_bytes\":{},",
            w.written.load(SeqCst),
            w.read.load(SeqCst)
        );
        let at = status.find(&format!("\"address\":\"{}\"", b.addr)).unwrap();
        let entry = &status[at..at + status[at..].find('}').unwrap()];
        assert!(entry.contains(&wanted), "{wanted} not in {entry}");
    }
    // And each worker's bytes with clients, which add up to what the clients saw.
    let workers = &status[status.find("\"workers\":[").unwrap()..];
    let total = |key: &str| -> u64 {
        let key = format!("\"{key}\":");
        (workers.match_indices(&key))
            .map(|(at, _)| {
                let digits = &workers[at + key.len()..];
                let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap();
                digits[..end].parse::<u64>().unwrap()
            })
            .sum()
    };
    assert_eq!((total("received_bytes"), total("sent_bytes")), (wrote, got));
}
