//! Active health checks scale with the pool: a round checks every backend at
//! once, so dead or silent backends do not delay the verdict on live ones.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::*;
use corelb::Origin;
use corelb::config::CheckConfig;

/// 200 backends that accept connections and never answer, and 2 that refuse
/// them at first: once the two start listening, the checks see them within one
/// interval plus one timeout (plus scheduling slack). Checked one after another,
/// a round would take 200 timeouts (100 s here).
#[test]
fn a_round_over_200_silent_backends_sees_the_live_ones_within_an_interval_and_a_timeout() {
    let silent: Vec<TcpListener> = (0..200)
        .map(|_| TcpListener::bind(loopback()).unwrap())
        .collect();
    let live = [ClosedPort::new(), ClosedPort::new()];
    let live_addrs = [live[0].addr, live[1].addr];
    let mut addrs: Vec<SocketAddr> = silent.iter().map(|l| l.local_addr().unwrap()).collect();
    addrs.extend(live_addrs);
    let interval = Duration::from_millis(300);
    let timeout = Duration::from_millis(500);
    let proxy = proxy_with(&addrs, |c| {
        c.workers = 1;
        let mut check = CheckConfig::new("/".into());
        check.interval = interval;
        check.timeout = timeout;
        check.rise = 1;
        check.fall = 1;
        c.health_check = Some(check);
    });
    wait_until(
        || addrs.iter().all(|&a| !backend_up(&proxy, a)),
        "every backend fails its first check",
    );
    let started = Instant::now();
    let origins: Vec<Origin> = live
        .into_iter()
        .map(|c| Origin::start(c.release(), 1, Some("live".into())).unwrap())
        .collect();
    wait_until(
        || live_addrs.iter().all(|&a| backend_up(&proxy, a)),
        "the live backends pass a check",
    );
    let took = started.elapsed();
    eprintln!("the live backends were seen {took:?} after they started");
    let slack = Duration::from_millis(300);
    assert!(
        took <= interval + timeout + slack,
        "seen after {took:?}; bound {:?} plus {slack:?}",
        interval + timeout
    );
    let resp = get(proxy.local_addrs()[0], "/");
    assert_eq!((resp.status, resp.text().as_str()), (200, "live"));
    assert!(
        addrs[..200].iter().all(|&a| !backend_up(&proxy, a)),
        "the silent ones stay down"
    );
    drop(origins);
}
