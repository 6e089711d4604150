//! End-to-end tests: the real server on 127.0.0.1:0 against a real Postgres, through the
//! generated gRPC clients. One binary for every integration test.
//!
//! The database comes from `DATABASE_URL` (default
//! `postgres://postgres:postgres@127.0.0.1:5432/chatkpi_test`, created if missing). When it is
//! unreachable every test fails with that message: nothing is skipped.

mod alerts;
mod auth;
mod dashboard;
mod errors;
mod hardening;
mod helpers;
mod import;
mod ingest;
mod isolation;
mod keys;
mod metrics;
mod props;
mod restart;
mod server;
mod sla;
mod validation;
mod web;
mod whatsapp;
