//! Live reload (`Proxy::reload`, what SIGHUP runs): new backends, algorithms,
//! health settings and timeouts apply to new requests in every worker; exchanges
//! in flight finish; backends that stay keep their health, counters and pooled
//! connections.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::*;
use corelb::config::Algorithm;
use corelb::config::Backend;
use corelb::config::CheckConfig;
use corelb::{Origin, Proxy, ProxyConfig};

/// The configuration `proxy_with` starts from, over `addrs`.
fn config_for(addrs: &[SocketAddr]) -> ProxyConfig {
    let mut cfg = ProxyConfig::new(
        vec![loopback()],
        addrs.iter().map(|&a| backend_of(a)).collect(),
    );
    cfg.workers = 1;
    cfg.log_health = false;
    cfg
}

/// Which origin answered each of `n` requests on one keep-alive connection.
fn keep_alive_bodies(proxy: SocketAddr, n: usize) -> Vec<String> {
    let mut s = connect(proxy);
    let mut r = Reader::new(s.try_clone().unwrap());
    (0..n)
        .map(|_| {
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let resp = r.response();
            assert_eq!(resp.status, 200);
            resp.text()
        })
        .collect()
}

fn count(bodies: &[String], origin: &Origin) -> usize {
    let want = format!("backend {}\n", origin.local_addr());
    bodies.iter().filter(|b| **b == want).count()
}

/// A backend that holds each request: it reads the head, reports it on `seen`,
/// waits for `release` (at most `IO_TIMEOUT`), then writes `answer` and closes.
struct Held {
    backend: Scripted,
    seen: mpsc::Receiver<()>,
    release: Arc<AtomicBool>,
}

impl Held {
    fn start(answer: &'static [u8]) -> Held {
        let (head_seen, seen) = mpsc::channel::<()>();
        let head_seen = std::sync::Mutex::new(head_seen);
        let release = Arc::new(AtomicBool::new(false));
        let go = Arc::clone(&release);
        let backend = Scripted::start(move |mut s, _| {
            if read_head(&mut s).is_none() {
                return;
            }
            let _ = head_seen.lock().unwrap().send(());
            let deadline = Instant::now() + IO_TIMEOUT;
            while !go.load(Ordering::SeqCst) && Instant::now() < deadline {
                // Back-off between two looks at `release`.
                std::thread::sleep(Duration::from_millis(5));
            }
            write_and_close(s, answer);
        });
        Held {
            backend,
            seen,
            release,
        }
    }

    /// Wait until a request is being held.
    fn wait_for_request(&self) {
        self.seen
            .recv_timeout(IO_TIMEOUT)
            .expect("a request reached the held backend");
    }

    fn release(&self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

#[test]
fn backends_change_and_those_that_stay_keep_pool_and_counters() {
    let o = origins(3);
    let (a, b, c) = (&o[0], &o[1], &o[2]);
    let proxy = Proxy::start(config_for(&[a.local_addr(), b.local_addr()])).unwrap();
    let addr = proxy.local_addrs()[0];
    let before = keep_alive_bodies(addr, 10);
    assert_eq!((count(&before, a), count(&before, b)), (5, 5));
    assert_eq!(metric(&proxy, "corelb_upstream_connects_total", ""), 2);

    let done = proxy
        .reload(config_for(&[b.local_addr(), c.local_addr()]))
        .unwrap();
    assert!(done.confirmed && !done.unchanged && done.need_restart.is_empty());
    assert_eq!(done.added, [c.local_addr().to_string()]);
    assert_eq!(done.removed, [a.local_addr().to_string()]);

    let after = keep_alive_bodies(addr, 10);
    assert_eq!(count(&after, a), 0, "a removed backend took a request");
    assert!(proxy.stats().status_json().contains("\"reloads\":1,"));
    assert_eq!(metric(&proxy, "corelb_config_reloads_total", ""), 1);
    assert_eq!((count(&after, b), count(&after, c)), (5, 5));
    // One new connection (to c): b's pooled connection served on.
    assert_eq!(metric(&proxy, "corelb_upstream_connects_total", ""), 3);
    // b's counter went on from 5; a is gone from the scrape.
    let b_label = format!("backend=\"{}\"", b.local_addr());
    assert_eq!(metric(&proxy, "corelb_requests_total", &b_label), 10);
    let a_label = format!("backend=\"{}\"", a.local_addr());
    assert!(!proxy.stats().prometheus().contains(&a_label));
    assert_eq!(a.requests(), 5, "a got nothing after the reload");
    assert_no_open_connections(&proxy);
}

#[test]
fn an_exchange_in_flight_on_a_removed_backend_finishes() {
    let slow =
        Held::start(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow");
    let o = origins(1);
    let proxy = Proxy::start(config_for(&[slow.backend.addr])).unwrap();
    let addr = proxy.local_addrs()[0];
    let client = std::thread::spawn(move || get(addr, "/"));
    slow.wait_for_request();
    let done = proxy.reload(config_for(&[o[0].local_addr()])).unwrap();
    assert_eq!(done.removed, [slow.backend.addr.to_string()]);
    // New requests go to the new backend while the old exchange still waits.
    assert_eq!(
        get(addr, "/").text(),
        format!("backend {}\n", o[0].local_addr())
    );
    slow.release();
    let resp = client.join().unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "slow"));
    assert_eq!(slow.backend.connections.load(Ordering::SeqCst), 1);
    assert_no_open_connections(&proxy);
}

#[test]
fn a_backend_that_is_down_stays_down_across_a_reload() {
    let o = origins(2);
    let closed = ClosedPort::new();
    let dead = closed.addr;
    let mut cfg = config_for(&[dead, o[0].local_addr()]);
    cfg.passive.max_fails = 1;
    cfg.passive.window = Duration::from_secs(30);
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let addr = proxy.local_addrs()[0];
    // The first request tries the dead backend, which goes down, and is retried.
    for _ in 0..4 {
        assert_eq!(get(addr, "/").status, 200);
    }
    let dead_up = |proxy: &Proxy| {
        let status = proxy.stats().status_json();
        let at = status.find(&format!("\"address\":\"{dead}\"")).unwrap();
        status[at..].starts_with(&format!("\"address\":\"{dead}\",\"up\":true"))
    };
    assert!(!dead_up(&proxy));
    let connects = metric(&proxy, "corelb_upstream_connects_total", "");

    let mut next = cfg;
    next.backends.push(backend_of(o[1].local_addr()));
    proxy.reload(next).unwrap();
    assert!(
        !dead_up(&proxy),
        "the reload forgot that the backend is down"
    );
    let bodies = keep_alive_bodies(addr, 10);
    assert_eq!((count(&bodies, &o[0]), count(&bodies, &o[1])), (5, 5));
    // One new connection, to the added backend: the pooled one to o[0] served
    // on, and the dead backend was not tried.
    assert_eq!(
        metric(&proxy, "corelb_upstream_connects_total", ""),
        connects + 1
    );
}

#[test]
fn the_algorithm_and_weights_change_on_reload() {
    let o = origins(2);
    let addrs = [o[0].local_addr(), o[1].local_addr()];
    let proxy = Proxy::start(config_for(&addrs)).unwrap();
    let addr = proxy.local_addrs()[0];
    let bodies = keep_alive_bodies(addr, 8);
    assert_eq!((count(&bodies, &o[0]), count(&bodies, &o[1])), (4, 4));
    let mut next = config_for(&addrs);
    next.algorithm = Algorithm::WeightedRoundRobin;
    next.backends[0].weight = 3;
    let done = proxy.reload(next).unwrap();
    assert!(done.added.is_empty() && done.removed.is_empty() && !done.unchanged);
    let bodies = keep_alive_bodies(addr, 40);
    assert_eq!((count(&bodies, &o[0]), count(&bodies, &o[1])), (30, 10));
    assert!(proxy.stats().status_json().contains("weighted-round-robin"));
}

#[test]
fn restart_only_settings_are_reported_and_keep_their_values() {
    let o = origins(1);
    let proxy = Proxy::start(config_for(&[o[0].local_addr()])).unwrap();
    let addr = proxy.local_addrs()[0];
    let same = config_for(&[o[0].local_addr()]);
    assert!(proxy.reload(same.clone()).unwrap().unchanged);
    let mut next = same;
    next.listen = vec![corelb::config::Listen::plain(
        "127.0.0.1:1".parse().unwrap(),
    )];
    next.max_header_bytes = 4096;
    next.workers = 2;
    let done = proxy.reload(next).unwrap();
    assert_eq!(done.need_restart, ["listen", "workers", "max_header_bytes"]);
    assert!(done.unchanged, "nothing a reload applies changed");
    // Still on the old address, with the old head limit (16 KiB).
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8000)
    );
    assert_eq!(roundtrip(addr, big.as_bytes()).0.status, 200);
}

#[test]
fn a_reload_without_backends_is_refused_and_changes_nothing() {
    let o = origins(1);
    let proxy = Proxy::start(config_for(&[o[0].local_addr()])).unwrap();
    let addr = proxy.local_addrs()[0];
    let mut empty = config_for(&[o[0].local_addr()]);
    empty.backends.clear();
    assert!(proxy.reload(empty).is_err());
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn health_checks_start_stop_and_change_on_reload() {
    let o = origins(2);
    let addrs = [o[0].local_addr(), o[1].local_addr()];
    let proxy = Proxy::start(config_for(&addrs)).unwrap();
    let addr = proxy.local_addrs()[0];
    let status_up = |proxy: &Proxy| proxy.stats().status_json().matches("\"up\":true").count();
    let wait_for = |proxy: &Proxy, up: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while status_up(proxy) != up {
            assert!(Instant::now() < deadline, "{}", proxy.stats().status_json());
            // Back-off between two looks.
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // Checks on, with a path the origins answer 500: both go down.
    let mut checked = config_for(&addrs);
    let mut check = CheckConfig::new("/status/500".into());
    check.interval = Duration::from_millis(30);
    check.timeout = Duration::from_millis(30);
    check.fall = 1;
    check.rise = 1;
    checked.health_check = Some(check.clone());
    proxy.reload(checked.clone()).unwrap();
    wait_for(&proxy, 0);
    assert_eq!(get(addr, "/").status, 503);
    // A path that passes: they come back.
    check.path = "/".into();
    checked.health_check = Some(check);
    proxy.reload(checked.clone()).unwrap();
    wait_for(&proxy, 2);
    assert_eq!(get(addr, "/").status, 200);
    // Failing again, then checks off: no stale verdict keeps them out.
    checked.health_check.as_mut().unwrap().path = "/status/500".into();
    proxy.reload(checked.clone()).unwrap();
    wait_for(&proxy, 0);
    checked.health_check = None;
    proxy.reload(checked).unwrap();
    assert_eq!(status_up(&proxy), 2);
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn new_timeouts_apply_after_a_reload() {
    let o = origins(1);
    let proxy = Proxy::start(config_for(&[o[0].local_addr()])).unwrap();
    let addr = proxy.local_addrs()[0];
    let mut next = config_for(&[o[0].local_addr()]);
    next.timeouts.header = Duration::from_millis(200);
    proxy.reload(next).unwrap();
    // A head that never completes now gets 408 after 200 ms, not 10 s.
    let started = Instant::now();
    let (resp, _) = roundtrip(addr, b"GET / HTTP/1.1\r\nHost: t\r\n");
    assert_eq!(resp.status, 408);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Clients in a loop, keep-alive and one request per connection, while the
/// backend set changes 30 times: no request fails, and at the end the last set
/// takes all the traffic.
#[test]
fn reloads_under_load_lose_nothing() {
    let o = origins(3);
    let addrs: Vec<SocketAddr> = o.iter().map(Origin::local_addr).collect();
    let mut cfg = config_for(&addrs[..2]);
    cfg.workers = 2;
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let addr = proxy.local_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    const CLIENTS: usize = 6;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = std::panic::catch_unwind(|| {
                        if i % 2 == 0 {
                            keep_alive_bodies(addr, 20).len()
                        } else {
                            usize::from(get(addr, "/").status == 200)
                        }
                    });
                    match result {
                        Ok(n) => ok.fetch_add(n, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let sets: [&[usize]; 3] = [&[1, 2], &[0], &[0, 1, 2]];
    let algorithms = [
        Algorithm::RoundRobin,
        Algorithm::LeastConnections,
        Algorithm::Hash,
    ];
    // Traffic under the set just applied: each client has at most one request
    // under way, so of the requests the origins get after a reload, all but the
    // first `CLIENTS` were routed after it.
    let served = || o.iter().map(Origin::requests).sum::<u64>();
    let traffic_under_it = || {
        let at_reload = served();
        wait_until(
            || served() > at_reload + CLIENTS as u64,
            "requests go through after a reload",
        );
    };
    let base = cfg;
    for round in 0..30 {
        let mut next = base.clone();
        next.backends = sets[round % 3]
            .iter()
            .map(|&i| backend_of(addrs[i]))
            .collect::<Vec<Backend>>();
        next.algorithm = algorithms[round % 3];
        assert!(proxy.reload(next).unwrap().confirmed);
        traffic_under_it();
    }
    let mut last = base;
    last.backends = vec![backend_of(addrs[2])];
    proxy.reload(last).unwrap();
    traffic_under_it();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little traffic to show anything"
    );
    let before: Vec<u64> = o.iter().map(Origin::requests).collect();
    let bodies = keep_alive_bodies(addr, 10);
    assert_eq!(count(&bodies, &o[2]), 10);
    let after: Vec<u64> = o.iter().map(Origin::requests).collect();
    assert_eq!(after[0] - before[0] + after[1] - before[1], 0);
    // Nothing is counted in flight once the traffic has stopped.
    assert!(
        proxy.inflight().iter().all(|&n| n == 0),
        "{:?}",
        proxy.inflight()
    );
    assert_no_open_connections(&proxy);
}

/// A request counted in flight under least-connections, retried after a reload to
/// round-robin (which does not count): no count may be left behind or taken twice.
#[test]
fn a_retry_across_a_change_of_algorithm_keeps_in_flight_counts_right() {
    // Takes the request, waits, then closes without answering: a GET is retried.
    let dropper = Held::start(b"");
    let o = origins(1);
    let mut cfg = config_for(&[dropper.backend.addr, o[0].local_addr()]);
    cfg.algorithm = Algorithm::LeastConnections;
    cfg.passive.max_fails = 0;
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let addr = proxy.local_addrs()[0];
    // Least-connections with no load picks the first backend: the dropper.
    let client = std::thread::spawn(move || get(addr, "/"));
    dropper.wait_for_request();
    assert_eq!(proxy.inflight(), [1, 0]);
    cfg.algorithm = Algorithm::RoundRobin;
    proxy.reload(cfg).unwrap();
    dropper.release();
    let resp = client.join().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), format!("backend {}\n", o[0].local_addr()));
    assert_eq!(proxy.inflight(), [0, 0]);
}

/// Health checks against backends that never answer take a whole timeout each;
/// a reload stops them between two backends, not after a round over all of them.
#[test]
fn a_reload_does_not_wait_for_a_round_of_slow_health_checks() {
    let silent: Vec<Scripted> = (0..8)
        .map(|_| {
            Scripted::start(|s, _| {
                // Never answers: each check takes its whole 1 s timeout.
                std::thread::sleep(Duration::from_secs(2));
                drop(s);
            })
        })
        .collect();
    let addrs: Vec<SocketAddr> = silent.iter().map(|s| s.addr).collect();
    let mut cfg = config_for(&addrs);
    let mut check = CheckConfig::new("/".into());
    check.interval = Duration::from_secs(1);
    check.timeout = Duration::from_secs(1);
    cfg.health_check = Some(check);
    let proxy = Proxy::start(cfg.clone()).unwrap();
    // Wait until the check thread is inside its round (a connection is open).
    let deadline = Instant::now() + IO_TIMEOUT;
    while silent[0].connections.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no health check arrived");
        // Back-off between two looks.
        std::thread::sleep(Duration::from_millis(5));
    }
    cfg.health_check = None;
    let started = Instant::now();
    proxy.reload(cfg).unwrap();
    // A round over all eight takes 8 s; stopping after the check in progress, 1 s.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the reload waited {:?} for the health checks",
        started.elapsed()
    );
}

/// A reload says which backends it gave another weight.
#[test]
fn a_reload_names_the_weights_it_changed() {
    let origins = origins(2);
    let addrs: Vec<_> = origins.iter().map(|o| o.local_addr()).collect();
    let proxy = Proxy::start(config_for(&addrs)).unwrap();
    let mut c = config_for(&addrs);
    c.backends[1].weight = 5;
    let done = proxy.reload(c).unwrap();
    assert_eq!(done.reweighted, vec![format!("{} 1->5", addrs[1])]);
    assert!(done.added.is_empty() && done.removed.is_empty());
}
