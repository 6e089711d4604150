//! The network edge, below the gRPC services: accepted connections and their limits
//! ([`conn`]), serving them over HTTP/2 and HTTP/1.1 with TLS and a bounded drain ([`serve`]),
//! and the tower stack every call passes through ([`rpc`]: a span continuing the caller's trace,
//! metrics, deadlines, load shedding over the global concurrency limit, the request timeout).

pub mod conn;
pub mod rpc;
pub mod serve;

/// Largest accepted request message, gRPC or JSON (a 1000-event batch is well under 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
