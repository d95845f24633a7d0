//! `corelb demo`: two built-in origins on loopback and the balancer in front of them.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::Origin;
use crate::config::{Backend, ProxyConfig};
use crate::proxy::Proxy;
use crate::runtime::StartError;

/// Everything the demo started; dropping it stops it all.
pub struct Demo {
    pub proxy: Proxy,
    pub origins: Vec<Origin>,
}

impl Demo {
    /// Start two origins on ephemeral loopback ports and the proxy on `listen`.
    pub fn start(listen: SocketAddr) -> Result<Demo, StartError> {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let origins = vec![
            Origin::start(loopback, 1, None)?,
            Origin::start(loopback, 1, None)?,
        ];
        let backends = origins
            .iter()
            .map(|o| Backend::new(o.local_addr()))
            .collect();
        let proxy = Proxy::start(ProxyConfig::new(vec![listen], backends))?;
        Ok(Demo { proxy, origins })
    }

    /// What was started and what to try, for the terminal.
    pub fn banner(&self) -> String {
        let addr = self.proxy.local_addrs()[0];
        let mut s = String::from("corelb demo is running\n");
        for (i, o) in self.origins.iter().enumerate() {
            let _ = writeln!(
                s,
                "  backend {}:  http://{} (built-in origin)",
                i + 1,
                o.local_addr()
            );
        }
        let _ = writeln!(
            s,
            "  balancer:   http://{addr} ({} workers, round-robin)\n",
            self.proxy.counts().len()
        );
        let _ = writeln!(s, "Try (each request goes to the next backend):");
        let _ = writeln!(s, "  curl -s http://{addr}/ http://{addr}/");
        let _ = writeln!(s, "  wrk -t1 -c50 -d5s http://{addr}/");
        let _ = write!(s, "Press Ctrl-C to stop.");
        s
    }

    /// Stop the proxy, then the origins; returns the number of requests proxied.
    pub fn shutdown(self) -> u64 {
        let requests = self.proxy.shutdown().iter().map(|c| c.requests).sum();
        for o in self.origins {
            o.shutdown();
        }
        requests
    }
}
