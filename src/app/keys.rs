//! The API-key use case: which tenant a bearer key belongs to and what it may do.
//!
//! Valid keys are remembered for [`KEY_TTL`] so a dashboard polling every second does not cost a
//! database round trip per call; a revoked key stops working within that time (README, API
//! keys).

use std::{sync::Arc, time::Duration};

use moka::sync::Cache;
use sqlx::PgPool;

use crate::{
    domain::{
        Error,
        tenant::{Scope, TenantId, hash_key, parse_key},
    },
    store,
};

/// How long a validated key is trusted without asking the database again.
pub const KEY_TTL: Duration = Duration::from_secs(5);
/// Keys remembered at most (bounded memory).
const KEYS_CACHED: u64 = 10_000;

/// Resolves API keys to tenants and scopes.
pub struct KeyService {
    pool: PgPool,
    valid: Cache<Vec<u8>, (TenantId, Arc<[Scope]>)>,
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

    /// The tenant of `key` when the key has `scope`: UNAUTHENTICATED for an unknown or revoked
    /// key (never saying whether the tenant exists), PERMISSION_DENIED without the scope.
    pub async fn authorize(&self, key: &str, scope: Scope) -> Result<TenantId, Error> {
        let tenant = parse_key(key).ok_or(Error::Unauthenticated("invalid api key"))?;
        let hash = hash_key(key);
        let (tenant, scopes) = match self.valid.get(&hash) {
            Some(known) => known,
            None => {
                let scopes: Arc<[Scope]> = store::tenants::key_scopes(&self.pool, tenant, &hash)
                    .await?
                    .ok_or(Error::Unauthenticated("invalid api key"))?
                    .into();
                self.valid.insert(hash, (tenant, scopes.clone()));
                (tenant, scopes)
            }
        };
        if !scopes.contains(&scope) {
            return Err(Error::PermissionDenied(format!(
                "this API key lacks the `{}` scope this call needs",
                scope.as_str()
            )));
        }
        Ok(tenant)
    }
}
