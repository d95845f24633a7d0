//! HTTP/1.1 as pure code with no I/O: where a message ends and whether a
//! connection may carry another (`framing`, `body`, `chunked`), the field grammar
//! those rules rest on (`fields`), why a request is refused and what it is
//! answered with (`reject`), and the heads the proxy writes (`rewrite`). The
//! proxy, the built-in origin and the fuzz targets all go through here, so a
//! framing rule lives in exactly one place.

pub mod body;
pub mod chunked;
pub mod fields;
pub mod framing;
pub mod head;
pub mod reject;
pub mod rewrite;

pub use body::BodyScanner;
pub use framing::{
    BadResponse, Framing, MAX_HEADERS, RequestInfo, ResponseInfo, analyze_request, analyze_response,
};
pub use reject::{Reject, classify_parse_error, has_bare_lf, oversized_head};
