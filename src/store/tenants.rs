//! Tenants, their API keys and customer erasure in Postgres.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

pub use crate::engine::source::ErasureLog;

use crate::domain::{
    Error,
    tenant::{NewApiKey, Scope, TenantId, generate_key, key_id},
};

fn scope_names(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_owned()).collect()
}

/// Creates a tenant and its first API key (every scope); returns the id and the key (shown
/// once).
pub async fn create_tenant(pool: &PgPool, name: &str) -> Result<(TenantId, NewApiKey), Error> {
    let mut tx = pool.begin().await?;
    let tenant = TenantId(
        sqlx::query_scalar!("insert into tenants (name) values ($1) returning tenant_id", name)
            .fetch_one(&mut *tx)
            .await?,
    );
    let key = generate_key(tenant);
    sqlx::query!(
        "insert into api_keys (tenant_id, key_hash, scopes, label) values ($1, $2, $3, 'first key')",
        tenant.0,
        &key.hash,
        &scope_names(&Scope::ALL)
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((tenant, key))
}

/// Adds an API key with `scopes` to an existing tenant.
pub async fn create_key(
    pool: &PgPool,
    tenant: TenantId,
    scopes: &[Scope],
    label: &str,
) -> Result<NewApiKey, Error> {
    let exists = sqlx::query_scalar!("select tenant_id from tenants where tenant_id = $1", tenant.0)
        .fetch_optional(pool)
        .await?;
    if exists.is_none() {
        return Err(Error::NotFound(format!("tenant {tenant}")));
    }
    let key = generate_key(tenant);
    sqlx::query!(
        "insert into api_keys (tenant_id, key_hash, scopes, label) values ($1, $2, $3, $4)",
        tenant.0,
        &key.hash,
        &scope_names(scopes),
        label
    )
    .execute(pool)
    .await?;
    Ok(key)
}

/// The scopes of a live (not revoked) key of `tenant` with this hash; `None` when there is no
/// such key.
pub async fn key_scopes(pool: &PgPool, tenant: TenantId, hash: &[u8]) -> Result<Option<Vec<Scope>>, Error> {
    let names = sqlx::query_scalar!(
        "select scopes from api_keys where tenant_id = $1 and key_hash = $2 and revoked_at is null",
        tenant.0,
        hash
    )
    .fetch_optional(pool)
    .await?;
    Ok(names.map(|names| names.iter().filter_map(|n| Scope::parse(n)).collect()))
}

/// Of the keys `(tenants[i], hashes[i])`, the hashes of those that are revoked.
pub async fn revoked_among(
    pool: &PgPool,
    tenants: &[TenantId],
    hashes: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, Error> {
    let tenants: Vec<i64> = tenants.iter().map(|t| t.0).collect();
    Ok(sqlx::query_scalar!(
        "select k.key_hash from unnest($1::bigint[], $2::bytea[]) as u(tenant_id, key_hash) \
         join api_keys k on k.tenant_id = u.tenant_id and k.key_hash = u.key_hash \
         where k.revoked_at is not null",
        &tenants,
        hashes
    )
    .fetch_all(pool)
    .await?)
}

/// A key as listed: never its secret.
#[derive(Debug, Clone)]
pub struct KeyListing {
    pub key_id: String,
    pub scopes: Vec<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

struct KeyRow {
    key_hash: Vec<u8>,
    scopes: Vec<String>,
    label: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

/// Every key of `tenant`, oldest first.
pub async fn list_keys(pool: &PgPool, tenant: TenantId) -> Result<Vec<KeyListing>, Error> {
    let rows = sqlx::query_as!(
        KeyRow,
        "select key_hash, scopes, label, created_at, revoked_at from api_keys \
         where tenant_id = $1 order by created_at, key_hash",
        tenant.0
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| KeyListing {
            key_id: key_id(&r.key_hash),
            scopes: r.scopes,
            label: r.label,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
        .collect())
}

/// Revokes the key of `tenant` whose id is `id` (see [`key_id`]). NotFound when no live key has
/// it.
pub async fn revoke_key(pool: &PgPool, tenant: TenantId, id: &str) -> Result<(), Error> {
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(
            "key_id",
            "must be the 12 hex digits `list-keys` shows",
        ));
    }
    let done = sqlx::query!(
        "update api_keys set revoked_at = now() \
         where tenant_id = $1 and encode(substring(key_hash from 1 for 6), 'hex') = lower($2) \
           and revoked_at is null",
        tenant.0,
        id
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!("live key {id} of tenant {tenant}")));
    }
    Ok(())
}

/// The tenant's erasure counter (see the erasure migration): query caches rebuild the tenant
/// when it moves.
pub async fn erasures(conn: &mut sqlx::PgConnection, tenant: TenantId) -> Result<i64, Error> {
    let erasures = sqlx::query_scalar!("select erasures from tenants where tenant_id = $1", tenant.0)
        .fetch_optional(conn)
        .await?;
    Ok(erasures.unwrap_or(0))
}

/// What an erasure deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    pub conversations: u64,
    pub events: u64,
    pub conversions: u64,
}

/// Deletes, in one transaction, every conversation in which `customer` opened a conversation
/// (any of its `conversation_opened` events, found by the `events_by_customer` index) with all
/// their events, and every other event naming the customer (conversions); drops the snapshots of
/// the days that held those conversations (they may hold the customer) and the tenant's
/// presence and conversions snapshot, bumps the tenant's erasure counter and logs which days and
/// how many conversions went, so query caches rebuild only those days. Concurrent ingest of the same conversations waits on their locks.
pub async fn erase_customer(pool: &PgPool, tenant: TenantId, customer: &str) -> Result<Erased, Error> {
    let mut tx = pool.begin().await?;
    // First: the row lock orders this erasure with snapshot writes (store::segments::save_snapshot).
    let erasure = sqlx::query_scalar!(
        "update tenants set erasures = erasures + 1 where tenant_id = $1 returning erasures",
        tenant.0
    )
    .fetch_one(&mut *tx)
    .await?;
    // An opening always names its conversation (docs/metrics.md §2).
    let ids: Vec<String> = sqlx::query_scalar!(
        r#"select distinct conversation_id as "conversation_id!" from events
           where tenant_id = $1 and customer_id = $2 and kind = 'conversation_opened'
           order by conversation_id"#,
        tenant.0,
        customer
    )
    .fetch_all(&mut *tx)
    .await?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    super::events::lock_conversations(&mut tx, tenant, &id_refs).await?;
    let events = sqlx::query!(
        "delete from events where tenant_id = $1 and conversation_id = any($2)",
        tenant.0,
        &ids
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let conversions = sqlx::query!(
        "delete from events where tenant_id = $1 and customer_id = $2",
        tenant.0,
        customer
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mut days = sqlx::query_scalar!(
        "delete from conversations where tenant_id = $1 and conversation_id = any($2) returning segment_day",
        tenant.0,
        &ids
    )
    .fetch_all(&mut *tx)
    .await?;
    let deleted = days.len() as u64;
    days.sort_unstable();
    days.dedup();
    drop_snapshots(&mut tx, tenant, &days).await?;
    // The WhatsApp contacts of the customer (docs/metrics.md §11: the customer id is the wa_id).
    sqlx::query!(
        "delete from whatsapp_contacts where tenant_id = $1 and wa_id = $2",
        tenant.0,
        customer
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "insert into erasures (tenant_id, erasure, days, conversions) values ($1, $2, $3, $4)",
        tenant.0,
        erasure,
        &days,
        conversions as i64
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Erased {
        conversations: deleted,
        events,
        conversions,
    })
}

/// Deletes the persisted data an erasure may leave naming or counting the customer: the
/// snapshots of `days`, the tenant's presence and conversions snapshot (engine/side.rs) and its
/// kept answers (store/answers.rs).
async fn drop_snapshots(
    tx: &mut sqlx::PgConnection,
    tenant: TenantId,
    days: &[NaiveDate],
) -> Result<(), Error> {
    sqlx::query!(
        "delete from segments where tenant_id = $1 and segment_day = any($2)",
        tenant.0,
        days
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("delete from side_snapshots where tenant_id = $1", tenant.0)
        .execute(&mut *tx)
        .await?;
    super::answers::forget(tx, tenant).await?;
    Ok(())
}

/// The logged erasures of `tenant` after the `seen`-th, in order.
pub async fn erasures_after(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
    seen: i64,
) -> Result<Vec<ErasureLog>, Error> {
    Ok(sqlx::query_as!(
        ErasureLog,
        "select erasure, days, conversions from erasures where tenant_id = $1 and erasure > $2 order by erasure",
        tenant.0,
        seen
    )
    .fetch_all(conn)
    .await?)
}
