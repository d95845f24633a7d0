//! A `proxy-protocol` listener's connections begin with a PROXY header from
//! the balancer in front (`crate::proxy_protocol`): it is read before anything
//! else, the client's address it gives replaces the peer's, and a connection
//! without a valid one is closed unread. The header is peeked at and then
//! consumed to its exact length, so not one byte of the client's own (a
//! request, a TLS ClientHello) is taken with it.

use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use crate::config::SendProxy;
use crate::counters::ProxyFailure;
use crate::proxy_protocol::{self, Invalid};

use super::session::{Fail, Phase, Step, Timer, Wait};
use super::worker::Worker;

impl Worker {
    /// The PROXY header that opens a new connection to a `send-proxy` backend
    /// for session `ck`: its client and destination as its own PROXY header
    /// gave them, else as its socket has them.
    pub(super) fn proxy_header_for(
        &self,
        ck: usize,
        version: SendProxy,
    ) -> Result<Box<[u8]>, Fail> {
        let c = &self.clients[ck];
        let (client, dest) = match c.proxied.as_deref() {
            Some(&addrs) => addrs,
            None => {
                let sock = c.io.tcp();
                match (sock.peer_addr(), sock.local_addr()) {
                    (Ok(peer), Ok(local)) => (peer, local),
                    _ => return Err(Fail::Close),
                }
            }
        };
        let mut out = Vec::with_capacity(proxy_protocol::V1_MAX);
        match version {
            SendProxy::V1 => proxy_protocol::write_v1(&mut out, client, dest),
            _ => proxy_protocol::write_v2(&mut out, client, dest),
        }
        Ok(out.into_boxed_slice())
    }

    /// `ip` may send PROXY headers (`--proxy-protocol-from`).
    pub(super) fn proxy_header_allowed(&self, ip: IpAddr) -> bool {
        let from = &self.plan.config.proxy_protocol_from;
        from.iter().any(|net| net.contains(ip))
    }

    /// Count a connection closed before its header was read, with a debug line.
    #[cold]
    pub(super) fn proxy_header_failed(&self, why: ProxyFailure, ip: IpAddr) {
        self.metrics().proxy_failures[why as usize].fetch_add(1, Ordering::Relaxed);
        let what = match why {
            ProxyFailure::Untrusted => "is not in --proxy-protocol-from",
            ProxyFailure::Missing => "sent no PROXY protocol header",
            ProxyFailure::Malformed => "sent a malformed PROXY protocol header",
            ProxyFailure::Timeout => {
                "sent no whole PROXY protocol header within the header timeout"
            }
            ProxyFailure::Closed => "closed before a whole PROXY protocol header",
        };
        crate::log!(
            crate::log::Level::Debug,
            "corelb: worker {}: {ip} {what}; closed",
            self.id
        );
    }

    /// Waiting for the PROXY header: peek at what came, and once a whole header
    /// is there, take exactly its bytes.
    pub(super) fn step_preamble(&mut self, ck: usize) -> Step {
        let c = &mut self.clients[ck];
        if !c.ready.readable {
            return Ok(false);
        }
        let mut buf = [0u8; proxy_protocol::MAX_HEADER];
        let seen = match c.io.tcp().peek(&mut buf) {
            Ok(0) => {
                let ip = c.ip;
                self.proxy_header_failed(ProxyFailure::Closed, ip);
                return Err(Fail::Close);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.ready.readable = false;
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            // A reset (or another error) before a whole header.
            Err(_) => {
                let ip = c.ip;
                self.proxy_header_failed(ProxyFailure::Closed, ip);
                return Err(Fail::Close);
            }
        };
        let header = match proxy_protocol::parse(&buf[..seen]) {
            // Cut short by the peer's end of stream: no more is coming.
            Ok(None) if c.ready.read_closed => {
                let ip = c.ip;
                self.proxy_header_failed(ProxyFailure::Closed, ip);
                return Err(Fail::Close);
            }
            // The rest is on its way: the next bytes raise a new edge.
            Ok(None) => {
                c.ready.readable = false;
                return Ok(false);
            }
            Ok(Some(header)) => header,
            Err(invalid) => {
                let why = match invalid {
                    Invalid::Missing => ProxyFailure::Missing,
                    Invalid::Malformed(_) => ProxyFailure::Malformed,
                };
                let ip = c.ip;
                self.proxy_header_failed(why, ip);
                return Err(Fail::Close);
            }
        };
        // The header's bytes are all in the socket (peeked): one read takes them.
        let mut taken = 0;
        while taken < header.len {
            match c.io.tcp().read(&mut buf[taken..header.len]) {
                Ok(0) => return Err(Fail::Close),
                Ok(n) => taken += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Fail::Close),
            }
        }
        if let Some((client, dest)) = header.addrs {
            let (client, dest) = (
                proxy_protocol::canonical(client),
                proxy_protocol::canonical(dest),
            );
            c.ip = client.ip();
            c.proxied = Some(Box::new((client, dest)));
        }
        c.phase = Phase::Head;
        // From here on, as a connection just accepted: its first request's head
        // has the header timeout from its first byte.
        c.timer = Timer::new(self.now + self.timeouts.idle, Wait::Idle);
        let version = usize::from(header.version - 1);
        self.metrics().proxy_headers[version].fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}
