//! chatkpi's load, benchmark and simulation tools: not part of the service.
//!
//! - [`sim`]: a deterministic helpdesk simulator (demo data, tests, benchmarks);
//! - [`stream`]: simulated events to a server over `StreamEvents`, or to JSON lines;
//! - [`bulk`]: large benchmark data sets written through the store directly;
//! - [`queries`]: latency of the dashboard queries, measured at the client;
//! - [`export`]: a tenant's facts as CSV, for the DuckDB anchor of the query benchmark;
//! - [`live`]: dashboards of a tenant that writes, and of a tenant beside a noisy one.

pub mod bulk;
pub mod export;
pub mod live;
pub mod queries;
pub mod sim;
pub mod stream;
