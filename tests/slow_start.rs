//! Slow start: a backend coming into service gets a share of traffic that
//! grows over `--slow-start`, under every algorithm.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use corelb::config::Algorithm;
use corelb::{Origin, Proxy, ProxyConfig};

const WINDOWS: usize = 10;

/// A's share of the requests in each of `WINDOWS` equal windows over `span`,
/// sent one after another with varying hash keys.
fn shares(addr: SocketAddr, span: Duration) -> Vec<f64> {
    let started = Instant::now();
    let mut counts = [(0usize, 0usize); WINDOWS];
    let mut i = 0u64;
    loop {
        let w = (started.elapsed().as_secs_f64() / span.as_secs_f64() * WINDOWS as f64) as usize;
        if w >= WINDOWS {
            break;
        }
        let mut s = connect(addr);
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: t\r\nX-Key: {i}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let resp = Reader::new(s).response();
        assert_eq!(resp.status, 200);
        i += 1;
        counts[w].1 += 1;
        if resp.text() == "A" {
            counts[w].0 += 1;
        }
    }
    counts
        .iter()
        .map(|&(a, n)| a as f64 / n.max(1) as f64)
        .collect()
}

/// For each algorithm: B alone, then a reload adds A with a 1 s slow start. A's
/// share of the requests starts low and grows to its full half.
#[test]
fn a_backend_a_reload_adds_ramps_up_under_every_algorithm() {
    let a = Origin::start(loopback(), 1, Some("A".into())).unwrap();
    let b = Origin::start(loopback(), 1, Some("B".into())).unwrap();
    let span = Duration::from_secs(1);
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::PowerOfTwo,
        Algorithm::Hash,
    ] {
        let config = |addrs: &[SocketAddr]| {
            let mut c = ProxyConfig::new(
                vec![loopback()],
                addrs.iter().map(|&a| backend_of(a)).collect(),
            );
            c.workers = 1;
            c.algorithm = algorithm;
            c.hash_header = Some("X-Key".into());
            c.tune.slow_start = span;
            c
        };
        let proxy = Proxy::start(config(&[b.local_addr()])).unwrap();
        proxy
            .reload(config(&[a.local_addr(), b.local_addr()]))
            .unwrap();
        let curve = shares(proxy.local_addrs()[0], span);
        let shown: Vec<String> = curve.iter().map(|s| format!("{s:.2}")).collect();
        eprintln!(
            "{algorithm}: A's share in {WINDOWS} windows of 100 ms: {}",
            shown.join(" ")
        );
        let head: f64 = curve[..3].iter().sum::<f64>() / 3.0;
        let tail: f64 = curve[WINDOWS - 3..].iter().sum::<f64>() / 3.0;
        assert!(curve[0] < 0.2, "{algorithm}: starts low: {shown:?}");
        assert!(head < tail, "{algorithm}: grows: {shown:?}");
        assert!(tail > 0.3, "{algorithm}: reaches about its half: {shown:?}");
        // After the window: its full share.
        let after = shares(proxy.local_addrs()[0], Duration::from_millis(300));
        let mean = after.iter().sum::<f64>() / WINDOWS as f64;
        assert!(
            (0.35..=0.65).contains(&mean),
            "{algorithm}: full share after: {mean}"
        );
    }
}
