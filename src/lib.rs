//! corelb: a thread-per-core HTTP/1.1 load balancer.
//!
//! One mio event loop per worker thread, each accepting on its own SO_REUSEPORT
//! socket; requests parsed with httparse and relayed to backends chosen round-robin
//! by one atomic counter shared by all workers. The library holds everything so that
//! tests and benchmarks can start a proxy and origins in-process; the binary is a
//! thin CLI over it.

pub mod balance;
pub mod buffer;
pub mod chunked;
pub mod config;
pub mod demo;
pub mod framing;
pub mod net;
pub mod origin;
pub mod proxy;
pub mod rewrite;

pub use config::{Backend, ProxyConfig};
pub use origin::Origin;
pub use proxy::Proxy;
