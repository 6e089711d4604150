//! gRPC adapters: generated code, the services (proto <-> domain only), auth and status mapping.

pub mod auth;
pub mod convert;
pub mod events;
pub mod metrics;
pub mod status;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use sqlx::PgPool;

use crate::domain::Error;

/// Code generated from `proto/chatkpi/v1` (prost messages, tonic services, pbjson serde).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("chatkpi.v1");
    include!(concat!(env!("OUT_DIR"), "/chatkpi.v1.serde.rs"));

    /// The file descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chatkpi_descriptor");
}

/// What every service shares.
pub struct AppState {
    pub pool: PgPool,
    pub auth: auth::Authenticator,
    /// Set once the database is reachable and migrated; cleared if it stops answering.
    pub ready: Arc<AtomicBool>,
    /// Largest accepted batch, in events.
    pub max_batch: usize,
    /// Per-tenant write queues.
    pub ingest: Arc<crate::ingest::IngestQueue>,
    /// Per-tenant query datasets.
    pub cache: crate::store::dataset::DatasetCache,
}

impl AppState {
    pub fn new(pool: PgPool, ready: Arc<AtomicBool>, max_batch: usize, cache_tenants: usize) -> Self {
        Self {
            auth: auth::Authenticator::new(pool.clone()),
            cache: crate::store::dataset::DatasetCache::new(pool.clone(), cache_tenants),
            ingest: crate::ingest::IngestQueue::new(pool.clone()),
            pool,
            ready,
            max_batch,
        }
    }

    /// UNAVAILABLE until the database is migrated, so clients retry instead of seeing
    /// "relation does not exist" as an internal error.
    pub fn ensure_ready(&self) -> Result<(), Error> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::Unavailable("database not ready".into()))
        }
    }
}
