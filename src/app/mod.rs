//! The application layer: the use cases between the adapters (`grpc/`) and the store.
//!
//! - [`ingest`]: validate, de-duplicate and store batches, one outcome per event, through the
//!   per-tenant write queues of [`writer`];
//! - [`kpis`]: answer KPI questions (settings, preconditions, scorecards, streams) from the
//!   engine's query cache over the event store;
//! - [`keys`]: resolve API keys to tenants and scopes;
//! - [`admin`]: erase a customer;
//! - [`alerts`]: alert rules, their evaluation and the delivery of their notices;
//! - [`limits`]: per-tenant and per-client rates and open streams;
//! - [`whatsapp`]: WhatsApp Cloud API sources and webhooks.

pub mod admin;
pub mod alerts;
pub mod ingest;
pub mod keys;
pub mod kpis;
pub mod limits;
pub mod whatsapp;
pub mod writer;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use sqlx::PgPool;

use crate::domain::Error;

/// Whether the database is reachable and migrated: until it is, requests get UNAVAILABLE (a
/// client retries) instead of "relation does not exist" as an internal error.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn check(&self) -> Result<(), Error> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(Error::Unavailable("database not ready".into()))
        }
    }
}

/// How the application is sized.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Largest accepted batch, in events.
    pub max_batch: usize,
    /// Writer tasks per tenant.
    pub writers_per_tenant: usize,
    /// Memory for query data and the work on it, in bytes ([`entries_budget`]).
    pub cache_bytes: u64,
    /// How long a query waits for its tenant's data to load before answering UNAVAILABLE with
    /// the load's progress (the load goes on): below the request timeout.
    pub load_patience: std::time::Duration,
    /// Per-tenant and per-client limits.
    pub limits: limits::LimitSettings,
    /// How alerts are evaluated and delivered.
    pub alerts: alerts::AlertConfig,
}

/// What of `--cache-bytes` is left to the work on the query cache's data rather than to its
/// entries: computations in flight, changes being merged into segments, snapshots being
/// written, the write path's batches and the allocator's partly used pages. In the 10-minute
/// soak at 28,000 events/s with 8 watchers (RELIABILITY.md, "Soak") they came to up to 97 MiB
/// allocated beyond the entries plus 46-58 MiB resident beyond the allocated bytes, and at 10 M
/// conversations (4 GiB) to 250 MiB more than the entries while days were persisted: with the
/// entries filling the whole budget, the process passed `--cache-bytes` plus 96 MiB (README,
/// "Memory is bounded in bytes"). With 64 MiB the soak still peaked at 612-613 MiB once the
/// write path held only one conversation's events at a time (session 27): the watchers'
/// computations every 5 s, two at once, took up to 80 MiB for a moment over a steady 530-550.
/// A larger reserve costs the live tenant of BENCHMARKS.md ("Live tenants") its kept totals:
/// 96 MiB of 512 made its overview p95 at 100 events/s 107 ms instead of 35. The work grows
/// with the tenants' days, as the budget does.
pub const WORKING_RESERVE: u64 = 80 << 20;

/// The bytes the query cache's entries may hold of a `cache_bytes` budget: all but the working
/// reserve or a sixteenth, whichever is more (a small budget gives at most a quarter).
pub fn entries_budget(cache_bytes: u64) -> u64 {
    let reserve = WORKING_RESERVE.max(cache_bytes / 16).min(cache_bytes / 4);
    cache_bytes - reserve
}

/// Every use case, sharing one pool.
pub struct App {
    pub ingest: ingest::IngestService,
    pub kpis: kpis::KpiService,
    pub keys: keys::KeyService,
    pub admin: admin::AdminService,
    pub whatsapp: whatsapp::WhatsAppService,
    pub alerts: alerts::AlertService,
    pub limits: limits::Limits,
    pub ready: Readiness,
}

impl App {
    pub fn new(pool: PgPool, config: &AppConfig) -> Result<Self, Error> {
        let ready = Readiness::default();
        Ok(Self {
            ingest: ingest::IngestService::new(
                ingest::PgEvents(pool.clone()),
                config.writers_per_tenant,
                config.max_batch,
                ready.clone(),
            ),
            kpis: kpis::KpiService::new(
                pool.clone(),
                kpis::QueryCache::new(
                    crate::store::segments::PgSource(pool.clone()),
                    entries_budget(config.cache_bytes),
                    config.load_patience,
                ),
                std::sync::Arc::new(crate::engine::schedule::Scheduler::new()?),
            ),
            keys: keys::KeyService::new(pool.clone()),
            admin: admin::AdminService::new(pool.clone()),
            whatsapp: whatsapp::WhatsAppService::new(pool.clone()),
            alerts: alerts::AlertService::new(pool, config.alerts.clone()),
            limits: limits::Limits::new(&config.limits),
            ready,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_entries_leave_the_working_reserve_of_the_budget() {
        const MIB: u64 = 1 << 20;
        assert_eq!(entries_budget(512 * MIB), 432 * MIB);
        // A large budget leaves a sixteenth.
        assert_eq!(entries_budget(4096 * MIB), 3840 * MIB);
        // A small budget keeps three quarters for its entries.
        assert_eq!(entries_budget(128 * MIB), 96 * MIB);
    }
}
