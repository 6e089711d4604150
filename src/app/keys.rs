//! The API-key use case: which tenant a bearer key belongs to.
//!
//! Valid keys are remembered for [`KEY_TTL`] so a dashboard polling every second does not cost a
//! database round trip per call; a revoked key stops working within that time.

use std::time::Duration;

use moka::sync::Cache;
use sqlx::PgPool;

use crate::{
    domain::{
        Error,
        tenant::{TenantId, hash_key, parse_key},
    },
    store,
};

/// How long a validated key is trusted without asking the database again.
pub const KEY_TTL: Duration = Duration::from_secs(30);
/// Keys remembered at most (bounded memory).
const KEYS_CACHED: u64 = 10_000;

/// Resolves API keys to tenants.
pub struct KeyService {
    pool: PgPool,
    valid: Cache<Vec<u8>, TenantId>,
}

impl KeyService {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            valid: Cache::builder()
                .max_capacity(KEYS_CACHED)
                .time_to_live(KEY_TTL)
                .build(),
        }
    }

    /// The tenant of `key`, or UNAUTHENTICATED. Never says whether a tenant exists.
    pub async fn tenant_of(&self, key: &str) -> Result<TenantId, Error> {
        let tenant = parse_key(key).ok_or(Error::Unauthenticated("invalid api key"))?;
        let hash = hash_key(key);
        if let Some(cached) = self.valid.get(&hash) {
            return Ok(cached);
        }
        if !store::tenants::key_is_valid(&self.pool, tenant, &hash).await? {
            return Err(Error::Unauthenticated("invalid api key"));
        }
        self.valid.insert(hash, tenant);
        Ok(tenant)
    }
}
