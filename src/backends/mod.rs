//! The backends as every worker sees them: their shared state and health
//! (`health`: passive failures, active verdicts), the thread that checks them
//! (`checker`), and how a request picks one (`select`, over `round_robin`'s one
//! shared counter). Nothing here does I/O on the request path.

pub mod checker;
pub mod health;
pub mod round_robin;
pub mod select;

pub use checker::Checker;
pub use health::{AdminState, Health, Member};
pub use select::Select;
