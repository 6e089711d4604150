//! The network edge, below the gRPC services: accepted connections and their limits
//! ([`conn`]), and the tower layer every call passes through ([`rpc`]: a span continuing the
//! caller's trace, metrics, the global concurrency limit with load shedding, the request
//! timeout).

pub mod conn;
pub mod rpc;
