//! API-key authentication: `authorization: Bearer <key>` metadata -> tenant.
//!
//! Valid keys are cached in memory for a short time so a dashboard polling every second does not
//! cost a database round trip per call; a revoked key stops working within that time.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tonic::metadata::MetadataMap;

use crate::{
    domain::{
        Error,
        tenant::{TenantId, hash_key, parse_key},
    },
    store,
};

/// How long a validated key is trusted without asking the database again.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Upper bound of cached keys (bounded memory); the cache is cleared when full.
const CACHE_MAX: usize = 10_000;

/// Resolves API keys to tenants.
pub struct Authenticator {
    pool: PgPool,
    cache: Mutex<HashMap<Vec<u8>, (TenantId, Instant)>>,
}

impl Authenticator {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant of the request's bearer key, or UNAUTHENTICATED. Never says whether a tenant
    /// exists.
    pub async fn tenant(&self, metadata: &MetadataMap) -> Result<TenantId, Error> {
        let header = metadata.get("authorization").ok_or(Error::Unauthenticated(
            "missing authorization metadata (expected `Bearer <api key>`)",
        ))?;
        let key = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(Error::Unauthenticated("authorization must be `Bearer <api key>`"))?;
        let tenant = parse_key(key).ok_or(Error::Unauthenticated("invalid api key"))?;
        let hash = hash_key(key);
        if let Some(&(cached, at)) = self.lock().get(&hash)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(cached);
        }
        if !store::tenants::key_is_valid(&self.pool, tenant, &hash).await? {
            return Err(Error::Unauthenticated("invalid api key"));
        }
        let mut cache = self.lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(hash, (tenant, Instant::now()));
        Ok(tenant)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, (TenantId, Instant)>> {
        // A panic while holding this lock cannot leave the map inconsistent: recover it.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
