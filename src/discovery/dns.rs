//! A DNS client for the control side: one question over a blocking UDP socket,
//! messages made and read with hickory-proto's types (no resolver, no runtime).
//! It asks a recursive server (`--dns-server`, or the first `nameserver` of
//! /etc/resolv.conf) for A, AAAA or SRV records, and keeps their TTLs.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// How long one question waits for its answer; it is asked twice at most.
const WAIT: Duration = Duration::from_millis(1500);

/// An SRV record: where one instance of a service is, and its share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

/// What a question got: the records of the type asked, and the shortest TTL
/// among them (`None` when there were none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<T> {
    pub records: Vec<T>,
    pub ttl: Option<u32>,
}

/// The addresses (A and AAAA) of `name`, asked of `server`.
pub fn addresses(server: SocketAddr, name: &str) -> Result<Answer<IpAddr>, String> {
    let mut out = Answer {
        records: Vec::new(),
        ttl: None,
    };
    for rtype in [RecordType::A, RecordType::AAAA] {
        let (records, ttl) = ask(server, name, rtype)?;
        for data in records {
            match data {
                RData::A(a) => out.records.push(IpAddr::V4(a.0)),
                RData::AAAA(a) => out.records.push(IpAddr::V6(a.0)),
                _ => {}
            }
        }
        out.ttl = min_ttl(out.ttl, ttl);
    }
    Ok(out)
}

/// The SRV records of `name` (`_service._tcp.example.org`), asked of `server`.
pub fn services(server: SocketAddr, name: &str) -> Result<Answer<Srv>, String> {
    let (records, ttl) = ask(server, name, RecordType::SRV)?;
    let records = records
        .into_iter()
        .filter_map(|data| match data {
            RData::SRV(s) => Some(Srv {
                target: s.target().to_ascii().trim_end_matches('.').to_string(),
                port: s.port(),
                priority: s.priority(),
                weight: s.weight(),
            }),
            _ => None,
        })
        .collect();
    Ok(Answer { records, ttl })
}

fn min_ttl(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One question: the answer section's records of type `rtype` (after any
/// CNAME the server followed) and their shortest TTL. A name that does not
/// exist is an empty answer; a server failure, a truncated answer or silence
/// is an error.
fn ask(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
) -> Result<(Vec<RData>, Option<u32>), String> {
    let mut qname = Name::from_ascii(name).map_err(|e| format!("{name}: not a DNS name: {e}"))?;
    qname.set_fqdn(true);
    let id = random_id();
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname, rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    msg.set_edns(edns);
    let question = msg.to_vec().map_err(|e| format!("{name}: {e}"))?;
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).map_err(|e| format!("DNS: {e}"))?;
    sock.connect(server)
        .map_err(|e| format!("DNS server {server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        sock.send(&question)
            .map_err(|e| format!("DNS server {server}: {e}"))?;
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            sock.set_read_timeout(Some(left))
                .map_err(|e| format!("DNS: {e}"))?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(format!("DNS server {server}: {e}")),
            };
            // Anything but the answer to this question (a late one to an
            // earlier try, a forgery) is dropped.
            let Ok(answer) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if answer.id() != id
                || answer.message_type() != MessageType::Response
                || answer.queries() != msg.queries()
            {
                continue;
            }
            if answer.truncated() {
                return Err(format!("{name}: the answer did not fit in UDP"));
            }
            return match answer.response_code() {
                ResponseCode::NoError | ResponseCode::NXDomain => {
                    let mut ttl = None;
                    let records = answer
                        .answers()
                        .iter()
                        .filter(|r| r.record_type() == rtype)
                        .map(|r| {
                            ttl = min_ttl(ttl, Some(r.ttl()));
                            r.data().clone()
                        })
                        .collect();
                    Ok((records, ttl))
                }
                code => Err(format!("{name}: the DNS server answered {code}")),
            };
        }
    }
    Err(format!("{name}: no answer from the DNS server {server}"))
}

/// A query id nobody can guess in advance (std's per-process random keys).
fn random_id() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u16
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
pub fn system_server() -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("/etc/resolv.conf: {e}; give --dns-server"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or_else(|| "/etc/resolv.conf names no nameserver; give --dns-server".into())
}
