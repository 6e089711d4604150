//! chatkpi: a gRPC service that turns customer-support conversation events into helpdesk KPIs.
//!
//! The contract is `METRICS.md` (shared with the product team); project-specific rules where it
//! is silent are in `docs/metrics-notes.md`.
//!
//! # Layout
//! - [`grpc`]: adapters only. Generated code, proto <-> domain conversion with field paths,
//!   authentication, and the one mapping from domain errors to `tonic::Status`.
//! - [`domain`]: pure logic. Validated events, derived conversation facts (METRICS.md §3),
//!   tenants and keys, errors. No tonic, no sqlx.
//! - [`store`]: Postgres through sqlx. The event store write path recomputes facts with
//!   [`domain::facts::derive`] inside the batch transaction.
//! - [`ingest`]: the per-tenant write queue that merges waiting batches into one transaction.
//! - [`startup`], [`config`], [`telemetry`], [`cli`]: wiring, settings, logs, subcommands.
//! - [`sim`]: the deterministic helpdesk simulator.

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod edge;
pub mod grpc;
pub mod startup;
pub mod store;
pub mod telemetry;
