//! chatkpi: a gRPC service that turns customer-support conversation events into helpdesk KPIs.
//!
//! What every event, fact and KPI means is defined in `docs/metrics.md`; code comments cite its
//! sections (`docs/metrics.md §3`).
//!
//! # Layout (outside in)
//! - [`edge`]: accepted connections and their limits, and the tower layer every call passes
//!   through (span, metrics, concurrency limit, request timeout).
//! - [`web`]: the same listener's HTTP/1.1 face: JSON over HTTP (Connect unary) for every unary
//!   RPC, the drill-down as CSV, the dashboard page; each web call becomes the gRPC call it
//!   stands for and passes through the same stack.
//! - [`grpc`]: adapters only. Generated code, proto <-> domain conversion with field paths,
//!   authentication and scopes, and the one mapping from domain errors to `tonic::Status`.
//! - [`app`]: the use cases (ingest, KPI queries, admin) with their per-tenant limits, the
//!   per-tenant write queues that merge waiting batches into one transaction, and the query
//!   cache of day segments within a byte budget.
//! - [`engine`]: the query engine. The conversation record format, day segments and their
//!   snapshots, the parallel scan that computes every KPI, kept partial totals, duration
//!   accumulators. Reads only [`domain`].
//! - [`domain`]: the rules, pure. Validated events, derived conversation facts (docs/metrics.md
//!   §3), calendars, SLA clocks, settings, scorecards, alerts, the WhatsApp mapping, the KPI
//!   answer types, tenants and keys, errors. No tonic, no sqlx, no engine.
//! - [`store`]: PostgreSQL through sqlx: the event store write path (facts derived with
//!   [`domain::facts::derive`] inside the write transaction), segment reads and snapshots,
//!   settings, tenants and keys.
//! - [`startup`], [`config`], [`telemetry`], [`cli`]: wiring, settings, traces / metrics /
//!   logs, subcommands.
//! - [`client`], [`import`]: the EventService client (parallel streams that resend what a
//!   failed stream left unacknowledged) and `chatkpi import` on top of it.
//!
//! The simulator and benchmark tools are not here: they are the `chatkpi-bench` binary of the
//! `tools/` crate.

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod edge;
pub mod engine;
pub mod grpc;
pub mod import;
pub mod outbound;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod web;
