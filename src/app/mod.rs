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
    /// Query cache budget in bytes.
    pub cache_bytes: u64,
    /// How long a query waits for its tenant's data to load before answering UNAVAILABLE with
    /// the load's progress (the load goes on): below the request timeout.
    pub load_patience: std::time::Duration,
    /// Per-tenant and per-client limits.
    pub limits: limits::LimitSettings,
    /// How alerts are evaluated and delivered.
    pub alerts: alerts::AlertConfig,
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
                    config.cache_bytes,
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
