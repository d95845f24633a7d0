//! Backends from DNS, against a real DNS server on loopback: dnsmasq (Debian's
//! dnsmasq-base; the tests say they skipped when it is missing) serving A, AAAA
//! and SRV records from files the tests write and change.

mod common;

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
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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
        .arg(format!("--addn-hosts={}", hosts_file.display()))
        .arg(format!("--pid-file={}", dir.0.join("pid").display()));
        for s in srv {
            cmd.arg(format!("--srv-host={s}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = Dnsmasq {
            child,
            addr,
            hosts: hosts_file,
            _dir: dir,
        };
        wait_until(
            || dns::addresses(addr, "ready.test").is_ok_and(|a| !a.records.is_empty()),
            "dnsmasq answers",
        );
        Some(d)
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
