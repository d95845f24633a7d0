//! corelb: a thread-per-core HTTP/1.1 load balancer.
//!
//! One mio event loop per worker thread, each accepting on its own SO_REUSEPORT
//! socket; requests parsed with httparse and relayed to backends chosen round-robin
//! by one atomic counter shared by all workers. The library holds everything so that
//! tests and benchmarks can start a proxy and origins in-process; the binary is a
//! thin CLI over it.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! use corelb::{Backend, Origin, Proxy, ProxyConfig};
//!
//! // A built-in origin and a one-worker proxy in front of it, on ephemeral ports.
//! let origin = Origin::start("127.0.0.1:0".parse().unwrap(), 1, Some("hello".into())).unwrap();
//! let backend = Backend::new(origin.local_addr());
//! let mut config = ProxyConfig::new(vec!["127.0.0.1:0".parse().unwrap()], vec![backend]);
//! config.workers = 1;
//! let proxy = Proxy::start(config).unwrap();
//!
//! let mut client = std::net::TcpStream::connect(proxy.local_addrs()[0]).unwrap();
//! client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
//! client.write_all(b"GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n").unwrap();
//! let mut response = String::new();
//! client.read_to_string(&mut response).unwrap();
//! assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
//! assert!(response.ends_with("\r\n\r\nhello"));
//!
//! let counts = proxy.shutdown();
//! assert_eq!(counts[0].requests, 1);
//! origin.shutdown();
//! ```

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from (empty when built outside a checkout).
pub const COMMIT: &str = env!("CORELB_COMMIT");

/// `0.1.0 (commit 1a2b3c4d5e6f)`, or the version alone.
pub fn version() -> String {
    if COMMIT.is_empty() {
        VERSION.to_string()
    } else {
        format!("{VERSION} (commit {COMMIT})")
    }
}

pub mod access;
pub mod admin;
pub mod backends;
pub mod checks;
pub mod config;
pub mod counters;
pub mod discovery;
pub mod http;
pub mod io;
pub mod log;
pub mod metrics;
pub mod origin;
pub mod process;
pub mod proxy;
pub mod proxy_protocol;
pub mod runtime;
pub mod tls;

pub use config::{Backend, ProxyConfig};
pub use origin::Origin;
pub use proxy::Proxy;
