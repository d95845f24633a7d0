//! TLS to backends: `https://` backends are reached over TLS from the workers'
//! loops, their certificates verified for their host against `--backend-ca`
//! (or the system's roots), their connections pooled as plain ones are; a
//! certificate that does not verify is a 502, counted and logged. The backends
//! are rustls servers with certificates the tests make (rcgen).

mod common;

use common::tls::*;
use common::*;
use corelb::{Proxy, ProxyConfig};

fn proxy_to(backend: corelb::Backend, ca: Option<std::path::PathBuf>) -> Proxy {
    let mut c = ProxyConfig::new(vec![loopback()], vec![backend]);
    c.workers = 1;
    c.backend_ca = ca;
    c.passive.max_fails = 0;
    Proxy::start(c).expect("proxy starts")
}

#[test]
fn requests_reach_an_https_backend_over_one_pooled_verified_connection() {
    let dir = TempDir::new("https-ok");
    let ca = Ca::new("backend CA");
    let backend = TlsBackend::start(&ca.leaf(&["localhost"]));
    let proxy = proxy_to(backend.backend(), Some(dir.write("ca.pem", &ca.pem)));
    let addr = proxy.local_addrs()[0];
    for i in 0..3 {
        let resp = get(addr, &format!("/r{i}"));
        assert_eq!(resp.status, 200, "{}", resp.head);
        // SNI names the backend's host; one connection carries them all.
        assert_eq!(resp.text(), format!("/r{i} sni=localhost conn=0"));
    }
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// Certificates that must not be trusted: each gets a 502 (never the backend's
/// answer), counted as a certificate failure.
#[test]
fn a_backend_certificate_that_does_not_verify_gets_502() {
    let dir = TempDir::new("https-bad");
    let ca = Ca::new("backend CA");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let expired = ca.leaf_with(&["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let other_host = ca.leaf(&["other.test"]);
    let unknown_issuer = Ca::new("nobody's CA").leaf(&["localhost"]);
    for (what, pair, ca) in [
        ("expired", &expired, Some(ca_file.clone())),
        ("for another host", &other_host, Some(ca_file.clone())),
        (
            "from an unknown issuer",
            &unknown_issuer,
            Some(ca_file.clone()),
        ),
        // Without --backend-ca the system's roots decide, and they do not know
        // the tests' CA.
        (
            "from the tests' CA, system roots",
            &ca.leaf(&["localhost"]),
            None,
        ),
    ] {
        let backend = TlsBackend::start(pair);
        let proxy = proxy_to(backend.backend(), ca);
        let resp = get(proxy.local_addrs()[0], "/");
        assert_eq!(resp.status, 502, "a certificate {what}");
        assert!(
            metric(&proxy, "corelb_upstream_tls_failures_total{", "certificate") >= 1,
            "a certificate {what} is counted"
        );
    }
}

#[test]
fn health_checks_reach_https_backends_over_tls() {
    let dir = TempDir::new("https-check");
    let ca = Ca::new("backend CA");
    let good = TlsBackend::start(&ca.leaf(&["localhost"]));
    let expired = TlsBackend::start(&ca.leaf_with(&["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }));
    let mut c = ProxyConfig::new(vec![loopback()], vec![good.backend(), expired.backend()]);
    c.workers = 1;
    c.backend_ca = Some(dir.write("ca.pem", &ca.pem));
    let mut check = corelb::config::CheckConfig::new("/health".into());
    // Generous for a TLS handshake in a debug build, on a loaded machine.
    check.interval = std::time::Duration::from_millis(300);
    check.timeout = std::time::Duration::from_millis(300);
    check.fall = 1;
    c.health_check = Some(check);
    let proxy = Proxy::start(c).unwrap();
    let up = |b: &TlsBackend| {
        let status = proxy.stats().status_json();
        let key = format!("{{\"address\":\"localhost:{}\",\"up\":", b.addr.port());
        let at = status.find(&key).expect("the backend is in the status");
        status[at + key.len()..].starts_with("true")
    };
    wait_until(
        || !up(&expired) && up(&good),
        "the expired one is down, the good one up",
    );
    // Requests go to the good one only.
    for _ in 0..4 {
        assert_eq!(get(proxy.local_addrs()[0], "/").status, 200);
    }
}
