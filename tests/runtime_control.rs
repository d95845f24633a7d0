//! Steering backends at run time through the admin endpoint: drain, disable,
//! enable and weight, allowed only with the admin token, kept across reloads.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use corelb::config::{Algorithm, values};
use corelb::{Origin, Proxy, ProxyConfig};

const TOKEN: &str = "s3cret-token-for-the-tests";

/// The Authorization value that carries the test token.
fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A token file of its own (tests run in parallel: none reads a file another
/// is writing).
fn token_file(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("corelb-{name}-{}-{n}", std::process::id()));
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path.display().to_string()
}

/// `method path` on the admin endpoint with `auth` as the Authorization
/// field: the status and the body.
fn admin(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = connect(addr);
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: a\r\n{auth}\r\n").as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let (head, end) = common::wire::response_head(&raw)
        .expect("a valid response head")
        .expect("a whole head");
    (
        head.status,
        String::from_utf8_lossy(&raw[end..]).into_owned(),
    )
}

fn steer(proxy: &Proxy, backend: SocketAddr, action: &str) -> String {
    let path = format!("/backends/{backend}/{action}");
    let (status, body) = admin(proxy.admin_addr().unwrap(), "POST", &path, Some(&bearer()));
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The value of `"field":` in the status entry of `backend`.
fn backend_field(proxy: &Proxy, backend: SocketAddr, field: &str) -> String {
    let status = proxy.stats().status_json();
    let at = status
        .find(&format!("{{\"address\":\"{backend}\""))
        .unwrap_or_else(|| panic!("{backend} not in {status}"));
    let entry = &status[at..at + status[at..].find('}').unwrap()];
    let key = format!("\"{field}\":");
    let v = &entry[entry
        .find(&key)
        .unwrap_or_else(|| panic!("{field} in {entry}"))
        + key.len()..];
    v.split(',').next().unwrap().trim_matches('"').to_string()
}

fn config(addrs: &[SocketAddr], tweak: impl FnOnce(&mut ProxyConfig)) -> ProxyConfig {
    let mut c = ProxyConfig::new(
        vec![loopback()],
        addrs.iter().map(|&a| backend_of(a)).collect(),
    );
    c.workers = 1;
    c.admin = Some(loopback());
    c.admin_token = Some(values::admin_token(&token_file("token")).unwrap());
    tweak(&mut c);
    c
}

/// Requests that change state need the token: 403 when none is configured,
/// 401 (with a Bearer challenge) without one, 403 with a wrong one. Reading
/// stays open, and a refused request changes nothing.
#[test]
fn steering_needs_the_token_and_reading_does_not() {
    let o = Origin::start(loopback(), 1, None).unwrap();
    let a = o.local_addr();
    let path = format!("/backends/{a}/disable");
    let untokened = Proxy::start(config(&[a], |c| c.admin_token = None)).unwrap();
    let (status, body) = admin(
        untokened.admin_addr().unwrap(),
        "POST",
        &path,
        Some(&bearer()),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--admin-token"), "{body}");

    let proxy = Proxy::start(config(&[a], |_| {})).unwrap();
    let at = proxy.admin_addr().unwrap();
    let mut raw = connect(at);
    raw.write_all(format!("POST {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    let head = Reader::new(raw).response();
    assert_eq!(head.status, 401);
    assert_eq!(
        head.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"corelb\"")
    );
    for wrong in [
        "Bearer s3cret-token-for-the-test",
        "Bearer s3cret-token-for-the-testsX",
        "Basic czNjcmV0LXRva2Vu",
        "Bearer ",
    ] {
        let (status, body) = admin(at, "POST", &path, Some(wrong));
        assert!(matches!(status, 401 | 403), "{wrong}: {status} {body}");
    }
    assert_eq!(
        admin(at, "POST", &path, Some("Bearer nope")).0,
        403,
        "a wrong token"
    );
    assert_eq!(
        backend_field(&proxy, a, "admin_state"),
        "ready",
        "nothing changed"
    );
    assert_eq!(admin(at, "GET", "/status", None).0, 200);
    assert_eq!(admin(at, "GET", "/metrics", None).0, 200);
    assert_eq!(admin(at, "GET", &path, None).0, 405);
    let (status, body) = admin(at, "POST", "/backends/127.0.0.1:1/drain", Some(&bearer()));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains(&a.to_string()), "names the backends: {body}");
    let (status, _) = admin(
        at,
        "POST",
        &format!("/backends/{a}/weight/0"),
        Some(&bearer()),
    );
    assert_eq!(status, 400);
    let (status, _) = admin(at, "POST", &format!("/backends/{a}/sleep"), Some(&bearer()));
    assert_eq!(status, 404);
    steer(&proxy, a, "disable");
    assert_eq!(backend_field(&proxy, a, "admin_state"), "disabled");
    assert_eq!(
        get(proxy.local_addrs()[0], "/").status,
        503,
        "no backend left"
    );
}

/// A backend whose connections are counted as they open and close, which
/// answers `/slow` only once `release` is called and anything else at once.
struct Counted {
    backend: Scripted,
    closed: Arc<AtomicUsize>,
    /// Dropped to release the `/slow` answers (their receive ends then).
    gate: std::sync::Mutex<Option<crossbeam_channel::Sender<()>>>,
}

impl Counted {
    fn release(&self) {
        self.gate.lock().unwrap().take();
    }
}

fn counted(name: &'static str) -> Counted {
    let closed = Arc::new(AtomicUsize::new(0));
    let (gate, released) = crossbeam_channel::bounded::<()>(0);
    let c = Arc::clone(&closed);
    let backend = Scripted::start(move |mut s, _| {
        while let Some(head) = read_head(&mut s) {
            if head.starts_with("GET /slow") {
                let _ = released.recv_timeout(IO_TIMEOUT);
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                name.len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                break;
            }
        }
        c.fetch_add(1, Ordering::SeqCst);
    });
    Counted {
        backend,
        closed,
        gate: std::sync::Mutex::new(Some(gate)),
    }
}

/// Drain: an exchange in flight on the drained backend finishes, no new
/// request goes to it, its idle pooled connection closes, and so does the busy
/// one once its exchange is over.
#[test]
fn drain_lets_exchanges_in_flight_finish_sends_nothing_new_and_closes_its_connections() {
    let a = counted("A");
    let b = counted("B");
    let (a_addr, b_addr) = (a.backend.addr, b.backend.addr);
    let proxy = Proxy::start(config(&[a_addr, b_addr], |_| {})).unwrap();
    let addr = proxy.local_addrs()[0];
    // Everything to A for now.
    steer(&proxy, b_addr, "drain");
    let slow = std::thread::spawn(move || get(addr, "/slow"));
    wait_until(
        || a.backend.connections.load(Ordering::SeqCst) == 1,
        "the slow request is at A",
    );
    // A second connection to A, pooled once this request is answered.
    assert_eq!(get(addr, "/").text(), "A");
    assert_eq!(a.backend.connections.load(Ordering::SeqCst), 2);
    steer(&proxy, b_addr, "enable");
    let body = steer(&proxy, a_addr, "drain");
    assert!(body.contains("\"admin_state\":\"drain\""), "{body}");
    wait_until(
        || a.closed.load(Ordering::SeqCst) == 1,
        "A's idle connection closes",
    );
    for i in 0..20 {
        assert_eq!(get(addr, "/").text(), "B", "request {i} after the drain");
    }
    a.release();
    let resp = slow.join().unwrap();
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "A"),
        "the exchange in flight finished"
    );
    wait_until(
        || a.closed.load(Ordering::SeqCst) == 2,
        "A's last connection closes after its exchange",
    );
    assert_eq!(
        a.backend.connections.load(Ordering::SeqCst),
        2,
        "no new connection to A"
    );
    wait_until(
        || backend_field(&proxy, a_addr, "connections") == "0",
        "/status shows A drained",
    );
    assert_eq!(backend_field(&proxy, a_addr, "up"), "false");
    assert_eq!(
        metric(
            &proxy,
            "corelb_backend_admin_state{",
            &format!("backend=\"{a_addr}\",state=\"drain\"")
        ),
        1
    );
    steer(&proxy, a_addr, "enable");
    let names: Vec<String> = (0..4).map(|_| get(addr, "/").text()).collect();
    assert!(names.contains(&"A".to_string()), "A is back: {names:?}");
    b.release();
}

/// How many of `n` requests each of the two backends answered.
fn spread(addr: SocketAddr, n: usize) -> (usize, usize) {
    let a = (0..n).filter(|_| get(addr, "/").text() == "A").count();
    (a, n - a)
}

/// A weight and a disable set at run time hold across a reload that keeps the
/// backends; a reload that changes the backend's weight in the configuration
/// wins over the runtime one.
#[test]
fn weight_and_disable_survive_a_reload() {
    let a = Origin::start(loopback(), 1, Some("A".into())).unwrap();
    let b = Origin::start(loopback(), 1, Some("B".into())).unwrap();
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    let base = |c: &mut ProxyConfig| c.algorithm = Algorithm::WeightedRoundRobin;
    let proxy = Proxy::start(config(&[a_addr, b_addr], base)).unwrap();
    let addr = proxy.local_addrs()[0];
    assert_eq!(spread(addr, 40), (20, 20));
    let body = steer(&proxy, a_addr, "weight/3");
    assert!(body.contains("\"weight\":3"), "{body}");
    assert_eq!(spread(addr, 40), (30, 10));
    steer(&proxy, b_addr, "disable");
    assert_eq!(spread(addr, 20), (20, 0));
    // A reload that changes something else.
    let reloaded = proxy
        .reload(config(&[a_addr, b_addr], |c| {
            base(c);
            c.retries = 1;
        }))
        .unwrap();
    assert!(!reloaded.unchanged && reloaded.confirmed, "{reloaded:?}");
    assert_eq!(backend_field(&proxy, b_addr, "admin_state"), "disabled");
    assert_eq!(backend_field(&proxy, a_addr, "weight"), "3");
    assert_eq!(spread(addr, 20), (20, 0), "B stays disabled");
    steer(&proxy, b_addr, "enable");
    assert_eq!(spread(addr, 40), (30, 10), "A keeps weight 3");
    // The file now says weight 2 for A: that is the newer word.
    proxy
        .reload(config(&[a_addr, b_addr], |c| {
            base(c);
            c.retries = 1;
            c.backends[0].weight = 2;
        }))
        .unwrap();
    assert_eq!(backend_field(&proxy, a_addr, "weight"), "2");
    assert_eq!(spread(addr, 30), (20, 10));
    // Round-robin ignores weights, and the answer says so.
    let rr = Proxy::start(config(&[a_addr, b_addr], |_| {})).unwrap();
    assert!(steer(&rr, a_addr, "weight/5").contains("does not use weights"));
    assert_eq!(spread(rr.local_addrs()[0], 20), (10, 10));
}

/// A request whose body was still being buffered when its backend was
/// disabled goes to another backend: nothing of it reaches the disabled one.
#[test]
fn a_buffered_request_moves_off_a_backend_disabled_meanwhile() {
    let a = counted("A");
    let b = counted("B");
    let (a_addr, b_addr) = (a.backend.addr, b.backend.addr);
    let proxy = Proxy::start(config(&[a_addr, b_addr], |_| {})).unwrap();
    steer(&proxy, b_addr, "drain");
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    // The head is in (the proxy holds the connection) and picked A, the only one ready.
    wait_until(
        || proxy.counts()[0].open == 1,
        "the proxy reads the request",
    );
    steer(&proxy, b_addr, "enable");
    steer(&proxy, a_addr, "disable");
    s.write_all(b"world").unwrap();
    let resp = Reader::new(s).response();
    assert_eq!((resp.status, resp.text().as_str()), (200, "B"));
    assert_eq!(
        a.backend.connections.load(Ordering::SeqCst),
        0,
        "nothing reached A"
    );
    a.release();
    b.release();
}

/// With `--rewrite-host`, a buffered request that moves to another backend (its
/// first was disabled while the body came in) names the backend it goes to.
#[test]
fn a_buffered_request_moved_off_a_disabled_backend_names_its_new_host() {
    let host_echo = || {
        Scripted::start(|mut s, _| {
            while let Some(req) = read_request(&mut s) {
                let host = req.head.get("host").unwrap_or("").to_string();
                let out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{host}",
                    host.len()
                );
                if s.write_all(out.as_bytes()).is_err() {
                    return;
                }
            }
        })
    };
    let (a, b) = (host_echo(), host_echo());
    let proxy = Proxy::start(config(&[a.addr, b.addr], |c| c.rewrite_host = true)).unwrap();
    steer(&proxy, b.addr, "drain");
    let mut s = connect(proxy.local_addrs()[0]);
    s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    wait_until(
        || proxy.counts()[0].open == 1,
        "the proxy reads the request",
    );
    steer(&proxy, b.addr, "enable");
    steer(&proxy, a.addr, "disable");
    s.write_all(b"world").unwrap();
    let resp = Reader::new(s).response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), b.addr.to_string(), "the Host B got");
    assert_eq!(a.connections.load(Ordering::SeqCst), 0, "nothing reached A");
}
