//! The API-key use case: which tenant a bearer key belongs to and what it may do, and keeping
//! open streams honest about revocations.
//!
//! Valid keys are remembered for [`KEY_TTL`] so a dashboard polling every second does not cost a
//! database round trip per call. A revoked key stops working within [`REVOCATION_CHECK`] plus a
//! query (README, API keys: within 5 seconds): every [`REVOCATION_CHECK`] the keys remembered
//! and the keys of open streams are looked up again; a revoked one is forgotten, and every open
//! stream of it is told ([`KeyWatch`]) and ends with UNAUTHENTICATED.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use moka::sync::Cache;
use sqlx::PgPool;

use crate::{
    domain::{
        Error,
        tenant::{Scope, TenantId, parse_key},
    },
    store,
};

/// How long a validated key is trusted without asking the database again, unless the
/// revocation check sees it revoked first.
pub const KEY_TTL: Duration = Duration::from_secs(30);
/// How often remembered keys and the keys of open streams are checked for revocation.
pub const REVOCATION_CHECK: Duration = Duration::from_secs(1);
/// Keys remembered at most (bounded memory).
const KEYS_CACHED: u64 = 10_000;

/// A key's tenant and scopes.
type Known = (TenantId, Arc<[Scope]>);

/// A key that authenticated: its tenant, and what identifies it for the revocation check.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub tenant: TenantId,
    hash: Vec<u8>,
}

/// Tells an open stream that its key was revoked.
#[derive(Debug, Clone)]
pub struct KeyWatch(Arc<AtomicBool>);

impl KeyWatch {
    pub fn is_revoked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The keys of open streams: tenant, and a flag per stream (dropped streams leave dead `Weak`s,
/// removed at the next check).
type Watched = HashMap<Vec<u8>, (TenantId, Vec<Weak<AtomicBool>>)>;

/// Resolves API keys to tenants and scopes.
pub struct KeyService {
    pool: PgPool,
    valid: Cache<Vec<u8>, Known>,
    watched: Arc<Mutex<Watched>>,
}

impl KeyService {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            valid: Cache::builder()
                .max_capacity(KEYS_CACHED)
                .time_to_live(KEY_TTL)
                .build(),
            watched: Arc::default(),
        }
    }

    /// The tenant `key` claims (well formed keys only; the claim is only trusted once the key is
    /// found).
    pub fn claimed_tenant(key: &str) -> Result<TenantId, Error> {
        parse_key(key).ok_or(Error::Unauthenticated("invalid api key"))
    }

    /// The tenant of the key whose hash is `hash` when it is remembered as valid and has
    /// `scope`; `Ok(None)` when it is not remembered (a look-up decides, [`KeyService::look_up`]).
    pub fn remembered(&self, hash: &[u8], scope: Scope) -> Result<Option<Authorized>, Error> {
        match self.valid.get(hash) {
            Some(known) => allow(known, hash.to_vec(), scope).map(Some),
            None => Ok(None),
        }
    }

    /// The tenant of `key` (whose hash is `hash`) when the key has `scope`, looked up in the
    /// database: UNAUTHENTICATED for an unknown or revoked key (never saying whether the tenant
    /// exists), PERMISSION_DENIED without the scope.
    pub async fn look_up(&self, key: &str, hash: Vec<u8>, scope: Scope) -> Result<Authorized, Error> {
        let tenant = Self::claimed_tenant(key)?;
        let scopes: Arc<[Scope]> = store::tenants::key_scopes(&self.pool, tenant, &hash)
            .await?
            .ok_or(Error::Unauthenticated("invalid api key"))?
            .into();
        self.valid.insert(hash.clone(), (tenant, scopes.clone()));
        allow((tenant, scopes), hash, scope)
    }

    /// Registers an open stream of `key`: the watch turns revoked within [`REVOCATION_CHECK`]
    /// of the key's revocation.
    pub fn watch(&self, key: &Authorized) -> KeyWatch {
        let flag = Arc::new(AtomicBool::new(false));
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        watched
            .entry(key.hash.clone())
            .or_insert_with(|| (key.tenant, Vec::new()))
            .1
            .push(Arc::downgrade(&flag));
        KeyWatch(flag)
    }

    /// Checks every [`REVOCATION_CHECK`], until the task is aborted.
    pub fn watch_revocations(&self) -> tokio::task::JoinHandle<()> {
        let (pool, valid, watched) = (self.pool.clone(), self.valid.clone(), self.watched.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REVOCATION_CHECK).await;
                if let Err(err) = check_revocations(&pool, &valid, &watched).await {
                    tracing::debug!(error = %err, "cannot check keys for revocation now");
                }
            }
        })
    }
}

fn allow((tenant, scopes): Known, hash: Vec<u8>, scope: Scope) -> Result<Authorized, Error> {
    if !scopes.contains(&scope) {
        return Err(Error::PermissionDenied(format!(
            "this API key lacks the `{}` scope this call needs",
            scope.as_str()
        )));
    }
    Ok(Authorized { tenant, hash })
}

/// Looks the remembered keys and those of open streams up; forgets the revoked ones and tells
/// their streams.
async fn check_revocations(
    pool: &PgPool,
    valid: &Cache<Vec<u8>, Known>,
    watched: &Mutex<Watched>,
) -> Result<(), Error> {
    let mut keys: HashMap<Vec<u8>, TenantId> = valid
        .iter()
        .map(|(hash, (tenant, _))| (hash.as_ref().clone(), tenant))
        .collect();
    {
        let mut w = watched.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|_, (_, flags)| {
            flags.retain(|f| f.strong_count() > 0);
            !flags.is_empty()
        });
        keys.extend(w.iter().map(|(hash, (tenant, _))| (hash.clone(), *tenant)));
    }
    if keys.is_empty() {
        return Ok(());
    }
    let (hashes, tenants): (Vec<Vec<u8>>, Vec<TenantId>) = keys.into_iter().unzip();
    let revoked = store::tenants::revoked_among(pool, &tenants, &hashes).await?;
    for hash in revoked {
        valid.invalidate(&hash);
        let w = watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tenant, flags)) = w.get(&hash) {
            tracing::info!(
                tenant = tenant.0,
                streams = flags.len(),
                "key revoked, ending its open streams"
            );
            for flag in flags.iter().filter_map(Weak::upgrade) {
                flag.store(true, Ordering::Release);
            }
        }
    }
    Ok(())
}
