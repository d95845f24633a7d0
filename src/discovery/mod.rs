//! Backends from DNS.

pub mod dns;
