//! Backends from DNS, against a real DNS server on loopback: dnsmasq (Debian's
//! dnsmasq-base; the tests say they skipped when it is missing) serving A, AAAA
//! and SRV records from files the tests write and change.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::tls::TempDir;
use common::*;
use corelb::discovery::dns;

/// dnsmasq on a free loopback port, answering from a hosts file (A, AAAA:
/// changed with `set_hosts`, read again on SIGHUP) and SRV records given at
/// its start.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    hosts: PathBuf,
    _dir: TempDir,
}

impl Dnsmasq {
    fn start(hosts: &str, srv: &[&str]) -> Option<Dnsmasq> {
        if Command::new("dnsmasq").arg("--version").output().is_err() {
            eprintln!("skipped: dnsmasq is not installed (apt-get install dnsmasq-base)");
            return None;
        }
        let dir = TempDir::new("dns");
        // A name of its own tells that it answers.
        let hosts_file = dir.write("hosts", &format!("127.0.0.1 ready.test\n{hosts}"));
        // dnsmasq binds UDP and TCP on its port, and other tests take TCP
        // ports all along: a start that lost the race is tried again.
        for _ in 0..5 {
            let port = loop {
                let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let port = udp.local_addr().unwrap().port();
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                    break port;
                }
            };
            let mut cmd = Command::new("dnsmasq");
            cmd.args([
                "--keep-in-foreground",
                "--no-daemon",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--local-ttl=1",
                // Authoritative for .test: a question it has no record for gets
                // an empty answer, not a refusal (it has no server to forward to).
                "--local=/test/",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts_file.display()));
            for s in srv {
                cmd.arg(format!("--srv-host={s}"));
            }
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if dns::addresses(addr, "ready.test").is_ok_and(|a| !a.records.is_empty()) {
                    return Some(Dnsmasq {
                        child,
                        addr,
                        hosts: hosts_file,
                        _dir: dir,
                    });
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                // Back-off between two looks.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start in five tries");
    }

    /// New A/AAAA records: the hosts file rewritten, and dnsmasq told.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, format!("127.0.0.1 ready.test\n{hosts}")).unwrap();
        let _ = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn the_client_reads_addresses_and_services_with_their_ttls() {
    let Some(server) = Dnsmasq::start(
        "127.0.0.5 app.test\n127.0.0.6 app.test\n::1 app.test\n",
        &[
            "_web._tcp.app.test,app.test,8080,1,5",
            "_web._tcp.app.test,other.test,8081,2,10",
        ],
    ) else {
        return;
    };
    let mut got = dns::addresses(server.addr, "app.test").unwrap();
    got.records.sort();
    assert_eq!(got.records, ips(&["127.0.0.5", "127.0.0.6", "::1"]));
    assert_eq!(got.ttl, Some(1));
    assert!(
        dns::addresses(server.addr, "nothing.test")
            .unwrap()
            .records
            .is_empty()
    );
    let mut srv = dns::services(server.addr, "_web._tcp.app.test")
        .unwrap()
        .records;
    srv.sort_by_key(|s| s.port);
    assert_eq!(
        srv,
        vec![
            dns::Srv {
                target: "app.test".into(),
                port: 8080,
                priority: 1,
                weight: 5
            },
            dns::Srv {
                target: "other.test".into(),
                port: 8081,
                priority: 2,
                weight: 10
            },
        ]
    );
    server.set_hosts("127.0.0.7 app.test\n");
    wait_until(
        || dns::addresses(server.addr, "app.test").is_ok_and(|a| a.records == ips(&["127.0.0.7"])),
        "the changed record is served",
    );
    let addr = server.addr;
    drop(server);
    assert!(
        dns::addresses(addr, "app.test").is_err(),
        "a stopped server is an error"
    );
}

/// Two origins on one port, at 127.0.0.5 and 127.0.0.6, answering "five" and
/// "six".
fn two_origins() -> (corelb::Origin, corelb::Origin, u16) {
    let five =
        corelb::Origin::start("127.0.0.5:0".parse().unwrap(), 1, Some("five".into())).unwrap();
    let port = five.local_addr().port();
    let six = corelb::Origin::start(
        SocketAddr::from(([127, 0, 0, 6], port)),
        1,
        Some("six".into()),
    )
    .unwrap();
    (five, six, port)
}

/// A proxy whose backends `configured` names, found through `server` every
/// 100 ms, as `corelb serve` starts one.
fn discovering(
    server: &Dnsmasq,
    configured: impl FnOnce(&mut corelb::ProxyConfig),
) -> (corelb::Proxy, corelb::discovery::Discovery) {
    let mut c = corelb::ProxyConfig::new(vec![loopback()], Vec::new());
    c.workers = 1;
    c.resolve_interval = Some(std::time::Duration::from_millis(100));
    c.dns_server = Some(server.addr);
    configured(&mut c);
    let (expanded, found) = corelb::discovery::first_round(&c).unwrap();
    let proxy = corelb::Proxy::start(expanded).unwrap();
    let d = corelb::discovery::Discovery::spawn(c, found, proxy.reloader()).unwrap();
    (proxy, d)
}

fn named(port: u16) -> corelb::Backend {
    corelb::Backend {
        authority: format!("app.test:{port}"),
        ..corelb::Backend::new(SocketAddr::from(([127, 0, 0, 5], port)))
    }
}

/// Bodies of `n` requests in a row.
fn bodies(proxy: &corelb::Proxy, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| get(proxy.local_addrs()[0], "/").text())
        .collect()
}

#[test]
fn every_address_of_a_name_is_a_member_and_the_set_follows_the_records() {
    let (_five, _six, port) = two_origins();
    let Some(server) = Dnsmasq::start("127.0.0.5 app.test\n127.0.0.6 app.test\n", &[]) else {
        return;
    };
    let (proxy, discovery) = discovering(&server, |c| c.backends = vec![named(port)]);
    let seen = bodies(&proxy, 4);
    assert!(
        seen.contains(&"five".into()) && seen.contains(&"six".into()),
        "{seen:?}"
    );
    let status = proxy.stats().status_json();
    assert!(
        status.contains(&format!("app.test:{port}@127.0.0.5")),
        "{status}"
    );
    // Load all along: a member leaving drains, and no request fails.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (running, addr) = (std::sync::Arc::clone(&running), proxy.local_addrs()[0]);
        std::thread::spawn(move || {
            // One keep-alive connection: each request is balanced anew.
            let mut failed = 0;
            let mut r = Reader::new(connect(addr));
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                r.stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
                if r.response().status != 200 {
                    failed += 1;
                }
            }
            failed
        })
    };
    server.set_hosts("127.0.0.6 app.test\n");
    wait_until(
        || !proxy.stats().status_json().contains("@127.0.0.5"),
        "the address that left is no member",
    );
    let now = bodies(&proxy, 4);
    assert!(now.iter().all(|b| b == "six"), "{now:?}");
    // The server stops: the last set stays.
    let mut server = server;
    server.stop();
    let round = discovery.rounds();
    wait_until(
        || discovery.rounds() > round + 1,
        "a whole round of questions to the stopped server",
    );
    let after = bodies(&proxy, 4);
    assert!(after.iter().all(|b| b == "six"), "{after:?}");
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        load.join().unwrap(),
        0,
        "requests failed while the set changed"
    );
}

#[test]
fn srv_records_give_the_members_their_ports_and_weights() {
    let (_five, _six, port) = two_origins();
    let Some(server) = Dnsmasq::start(
        "127.0.0.5 five.test\n127.0.0.6 six.test\n",
        &[
            &format!("_web._tcp.svc.test,five.test,{port},1,3"),
            &format!("_web._tcp.svc.test,six.test,{port},1,1"),
            // A higher priority value is a fallback: not a member while the
            // others are there.
            &format!("_web._tcp.svc.test,other.test,{port},9,1"),
        ],
    ) else {
        return;
    };
    let (proxy, _discovery) = discovering(&server, |c| {
        c.backend_srv = vec!["_web._tcp.svc.test".into()];
        c.algorithm = corelb::config::Algorithm::WeightedRoundRobin;
    });
    let seen = bodies(&proxy, 8);
    let fives = seen.iter().filter(|b| *b == "five").count();
    assert_eq!((fives, seen.len() - fives), (6, 2), "{seen:?}");
    let status = proxy.stats().status_json();
    assert!(
        status.contains(&format!("five.test:{port}@127.0.0.5")),
        "{status}"
    );
    assert!(!status.contains("other.test"), "{status}");
}

#[test]
fn a_name_that_does_not_resolve_at_start_is_one_line_and_exit_2() {
    let Some(server) = Dnsmasq::start("", &[]) else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_corelb"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--backend",
            "nowhere.test:80",
            "--resolve-interval",
            "1s",
        ])
        .arg("--dns-server")
        .arg(server.addr.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nowhere.test"), "{err}");
}

/// The requests `/status` counts for the member called `name`.
fn requests_of(proxy: &corelb::Proxy, name: &str) -> Option<u64> {
    let status = proxy.stats().status_json();
    let at = status.find(&format!("\"address\":\"{name}\""))?;
    let rest = &status[at..];
    let n = rest.find("\"requests\":")? + "\"requests\":".len();
    rest[n..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A record's TTL shorter than the interval brings the next question sooner,
/// and a member that leaves and comes back takes up its state (its request
/// count goes on from where it was).
#[test]
fn a_short_ttl_is_honoured_and_a_member_that_returns_keeps_its_state() {
    let (_five, _six, port) = two_origins();
    let Some(server) = Dnsmasq::start("127.0.0.5 app.test\n127.0.0.6 app.test\n", &[]) else {
        return;
    };
    // An interval far longer than the test: only the TTL (1 s) can bring changes.
    let (proxy, _discovery) = discovering(&server, |c| {
        c.backends = vec![named(port)];
        c.resolve_interval = Some(std::time::Duration::from_secs(600));
    });
    bodies(&proxy, 6);
    let five = format!("app.test:{port}@127.0.0.5");
    let before = requests_of(&proxy, &five).unwrap();
    assert!(before >= 3, "{before}");
    server.set_hosts("127.0.0.6 app.test\n");
    wait_until(
        || requests_of(&proxy, &five).is_none(),
        "the record's TTL brings the change",
    );
    server.set_hosts("127.0.0.5 app.test\n127.0.0.6 app.test\n");
    wait_until(
        || requests_of(&proxy, &five).is_some(),
        "the address is back",
    );
    assert!(
        requests_of(&proxy, &five).unwrap() >= before,
        "the returning member starts over"
    );
}

/// `corelb serve --config`: a SIGHUP that adds a backend by name asks for the
/// name before the new configuration applies.
#[test]
fn a_reload_resolves_the_new_names_through_the_dns_server() {
    let (_five, _six, port) = two_origins();
    let seven = corelb::Origin::start(
        SocketAddr::from(([127, 0, 0, 7], port)),
        1,
        Some("seven".into()),
    )
    .unwrap();
    let Some(server) = Dnsmasq::start("127.0.0.5 app.test\n127.0.0.7 new.test\n", &[]) else {
        return;
    };
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = TempDir::new("dns-reload");
    let config = |names: &[&str]| {
        let mut text = format!(
            "listen = \"{listen}\"\nworkers = 1\nresolve_interval = \"1s\"\ndns_server = \"{}\"\n",
            server.addr
        );
        for n in names {
            text.push_str(&format!("[[backend]]\naddress = \"{n}:{port}\"\n"));
        }
        dir.write("corelb.toml", &text)
    };
    let path = config(&["app.test"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_corelb"))
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        || std::net::TcpStream::connect(listen).is_ok(),
        "corelb listens",
    );
    assert_eq!(get(listen, "/").text(), "five");
    config(&["app.test", "new.test"]);
    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    wait_until(
        || (0..4).any(|_| get(listen, "/").text() == "seven"),
        "the new name's address serves",
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(seven);
}
