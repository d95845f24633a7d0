//! What takes a backend out and what brings it back: passive health never takes
//! out the last backend that is up, one request counts against one backend once,
//! and with active checks on, passing checks (not a cool-down) bring a backend
//! back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use corelb::config::{CheckConfig, Passive};
use corelb::{Origin, Proxy};

fn status(proxy: &Proxy) -> String {
    proxy.stats().status_json()
}

/// A one-worker proxy over `addrs` with `retries` and a passive limit of
/// `max_fails` failures within 30 s.
fn passive_proxy(addrs: &[std::net::SocketAddr], retries: u32, max_fails: u32) -> Proxy {
    proxy_with(addrs, |c| {
        c.workers = 1;
        c.retries = retries;
        c.passive = Passive {
            max_fails,
            window: Duration::from_secs(30),
        };
    })
}

fn kept_gauge(proxy: &Proxy) -> String {
    let text = proxy.stats().prometheus();
    text.lines()
        .find(|l| l.starts_with("corelb_last_backend_kept "))
        .unwrap_or_else(|| panic!("no corelb_last_backend_kept in {text}"))
        .to_string()
}

/// With 1, 2 and 5 backends that all refuse connections and a passive limit of
/// one failure, every request fails with 502, never with 503: the last backend up
/// stays in, and `/status` and `/metrics` say so. Once the backends are back, the
/// next request is served.
#[test]
fn passive_health_never_takes_out_the_last_backend_up() {
    for n in [1, 2, 5] {
        let closed: Vec<ClosedPort> = (0..n).map(|_| ClosedPort::new()).collect();
        let addrs: Vec<_> = closed.iter().map(|c| c.addr).collect();
        let proxy = passive_proxy(&addrs, 2, 1);
        let addr = proxy.local_addrs()[0];
        assert_eq!(kept_gauge(&proxy), "corelb_last_backend_kept 0");
        for i in 0..2 * n {
            assert_eq!(get(addr, "/").status, 502, "{n} backends, request {i}");
        }
        let up = addrs.iter().filter(|&&a| backend_up(&proxy, a)).count();
        assert_eq!(up, 1, "{n} backends: {}", status(&proxy));
        assert!(
            status(&proxy).contains("\"last_backend_kept\":true"),
            "{}",
            status(&proxy)
        );
        assert_eq!(kept_gauge(&proxy), "corelb_last_backend_kept 1");
        // Back on the same ports: served at once, without waiting out a window.
        let origins: Vec<Origin> = closed
            .into_iter()
            .map(|c| Origin::start(c.release(), 1, Some("back".into())).unwrap())
            .collect();
        let resp = get(addr, "/");
        assert_eq!((resp.status, resp.text().as_str()), (200, "back"), "{n}");
        drop(origins);
    }
}

/// A lone backend that refuses a request's connect, its two retries too (they go
/// to it, the only one), is counted one failure for that request, not three: with
/// a limit of three it reaches the limit at the third request, when the
/// last-backend rule keeps it in and says so.
#[test]
fn one_request_counts_against_one_backend_once() {
    let closed = ClosedPort::new();
    let proxy = passive_proxy(&[closed.addr], 2, 3);
    let addr = proxy.local_addrs()[0];
    for request in 1..=3 {
        assert_eq!(get(addr, "/").status, 502);
        let expected = if request < 3 { "0" } else { "1" };
        assert_eq!(
            kept_gauge(&proxy),
            format!("corelb_last_backend_kept {expected}"),
            "after request {request}"
        );
    }
    assert_eq!(
        metric(&proxy, "corelb_retries_total{", ""),
        6,
        "each request was tried three times"
    );
}

/// Every backend failing its active checks is the one way to 503 (passive
/// health keeps the last one in).
#[test]
fn all_backends_down_by_their_checks_is_503_with_retry_after() {
    let closed = [ClosedPort::new(), ClosedPort::new()];
    let dead = [closed[0].addr, closed[1].addr];
    let proxy = proxy_with(&dead, |c| {
        c.workers = 1;
        let mut check = CheckConfig::new("/".into());
        check.interval = Duration::from_millis(50);
        check.timeout = Duration::from_millis(200);
        check.fall = 1;
        c.health_check = Some(check);
    });
    wait_until(
        || dead.iter().all(|&a| !backend_up(&proxy, a)),
        "both backends fail their checks",
    );
    let resp = get(proxy.local_addrs()[0], "/");
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after").as_deref(), Some("1"));
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
}

/// With active checks on, a backend that passive health took out under load is
/// back as soon as `rise` checks pass, not after the fail window: restarted, it
/// gets traffic within `rise` intervals plus one.
#[test]
fn active_checks_bring_back_a_backend_passive_health_took_out() {
    let a = Origin::start(loopback(), 1, Some("A".into())).unwrap();
    let a_addr = a.local_addr();
    let b = Origin::start(loopback(), 1, Some("B".into())).unwrap();
    let interval = Duration::from_millis(300);
    let rise = 2;
    let proxy = proxy_with(&[a_addr, b.local_addr()], |c| {
        c.workers = 1;
        let mut check = CheckConfig::new("/".into());
        check.interval = interval;
        check.timeout = Duration::from_millis(200);
        check.rise = rise;
        // The checks alone would take it out only after a long time: what takes
        // it out here is the failed requests.
        check.fall = 100;
        c.health_check = Some(check);
        c.passive = Passive {
            max_fails: 1,
            // Longer than the test: a cool-down would keep it out throughout.
            window: Duration::from_secs(60),
        };
    });
    let addr = proxy.local_addrs()[0];
    // Load: one client after another, recording when each body was seen.
    let stop = Arc::new(AtomicBool::new(false));
    let seen_a = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let load = {
        let (stop, seen_a) = (Arc::clone(&stop), Arc::clone(&seen_a));
        std::thread::spawn(move || {
            let mut failures = 0;
            while !stop.load(Ordering::SeqCst) {
                let resp = get(addr, "/");
                if resp.status != 200 {
                    failures += 1;
                }
                if resp.text() == "A" {
                    *seen_a.lock().unwrap() = Some(Instant::now());
                }
            }
            failures
        })
    };
    wait_until(|| seen_a.lock().unwrap().is_some(), "A serves at first");
    drop(a);
    wait_until(|| !backend_up(&proxy, a_addr), "A is taken out");
    *seen_a.lock().unwrap() = None;
    let restarted = Instant::now();
    let a = Origin::start(a_addr, 1, Some("A".into())).unwrap();
    wait_until(|| seen_a.lock().unwrap().is_some(), "A serves again");
    let took = seen_a.lock().unwrap().unwrap() - restarted;
    stop.store(true, Ordering::SeqCst);
    let failures = load.join().unwrap();
    let bound = interval * (rise + 1);
    assert!(
        took <= bound,
        "A served again {took:?} after its restart (bound {bound:?})"
    );
    assert_eq!(failures, 0, "requests to A while it was down moved to B");
    drop(a);
}
