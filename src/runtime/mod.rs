//! What the proxy and the built-in origin both run on: listening sockets
//! (`listen`), worker threads and their control channel (`workers`), handing
//! listeners to a successor process (`handover`), running under systemd
//! (`systemd`: readiness, binary upgrades), and the start-up errors (`error`).

pub mod error;
pub mod handover;
pub mod listen;
pub mod systemd;
pub mod workers;

pub use error::StartError;
pub use listen::{
    NodelayInherited, adopt_listeners, bind_listeners, listener_index, listener_token,
    serves_address,
};
pub use workers::{Control, ControlHandle, WAKER_TOKEN, WorkerContext, Workers};
