//! The per-tenant in-memory query dataset, a replica of the stored facts refreshed on demand.
//!
//! Every query first refreshes its tenant's dataset with the rows written since the previous
//! refresh (`change_xid` / `ingest_xid` at or after the xmin of the previous read snapshot:
//! that includes transactions that were still running then, so nothing is missed whatever the
//! commit order), then computes from memory. Results are therefore computed on demand from what
//! is stored, across any number of replicas writing to the same database, and a refresh with
//! nothing new costs two index probes. Memory is bounded by the number of tenants kept
//! (least recently used ones are dropped and reloaded when asked again).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::TryStreamExt;
use sqlx::{PgPool, types::Json};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::domain::{Error, dataset::Dataset, event::Payload, facts::ConversationFacts, tenant::TenantId};

/// One tenant's replica.
pub struct TenantData {
    pub dataset: Dataset,
    /// xmin of the snapshot of the last refresh; `None` before the first.
    xmin: Option<i64>,
    /// Rows applied by the last refresh (0 = nothing changed).
    pub last_changes: u64,
    /// Incremented by every refresh that applied changes: watchers compare it to notice new data.
    pub version: u64,
}

/// A tenant's replica and when it was last asked for.
type Entry = (Arc<RwLock<TenantData>>, Instant);

/// Per-tenant datasets, least recently used evicted beyond `max_tenants`.
pub struct DatasetCache {
    pool: PgPool,
    max_tenants: usize,
    tenants: Mutex<HashMap<TenantId, Entry>>,
}

impl DatasetCache {
    pub fn new(pool: PgPool, max_tenants: usize) -> Self {
        Self {
            pool,
            max_tenants: max_tenants.max(1),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, tenant: TenantId) -> Arc<RwLock<TenantData>> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if !tenants.contains_key(&tenant)
            && tenants.len() >= self.max_tenants
            && let Some(oldest) = tenants.iter().min_by_key(|(_, (_, used))| *used).map(|(t, _)| *t)
        {
            tenants.remove(&oldest);
        }
        let (data, used) = tenants.entry(tenant).or_insert_with(|| {
            let data = TenantData {
                dataset: Dataset::new(),
                xmin: None,
                last_changes: 0,
                version: 0,
            };
            (Arc::new(RwLock::new(data)), Instant::now())
        });
        *used = Instant::now();
        data.clone()
    }

    /// The tenant's dataset, refreshed with everything committed until now.
    pub async fn fresh(&self, tenant: TenantId) -> Result<OwnedRwLockReadGuard<TenantData>, Error> {
        let entry = self.entry(tenant);
        let mut data = entry.write_owned().await;
        refresh(&self.pool, tenant, &mut data).await?;
        Ok(data.downgrade())
    }
}

async fn refresh(pool: &PgPool, tenant: TenantId, data: &mut TenantData) -> Result<(), Error> {
    let since = data.xmin.unwrap_or(0).to_string();
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let (xmin,): (i64,) = sqlx::query_as("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        .fetch_one(&mut *tx)
        .await?;
    let mut changes = 0u64;
    {
        let mut rows = sqlx::query_as::<_, (Json<ConversationFacts>,)>(
            "select facts from conversations where tenant_id = $1 and change_xid >= $2::xid8",
        )
        .bind(tenant)
        .bind(&since)
        .fetch(&mut *tx);
        while let Some((Json(facts),)) = rows.try_next().await? {
            data.dataset.upsert(&facts);
            changes += 1;
        }
    }
    {
        let mut rows = sqlx::query_as::<_, (String, chrono::DateTime<chrono::Utc>, Json<Payload>)>(
            "select event_id, occurred_at, payload from events \
             where tenant_id = $1 and kind in ('agent_status', 'conversion') and ingest_xid >= $2::xid8",
        )
        .bind(tenant)
        .bind(&since)
        .fetch(&mut *tx);
        while let Some((event_id, at, Json(payload))) = rows.try_next().await? {
            match payload {
                Payload::AgentStatus(p) => data.dataset.add_presence(&event_id, &p.agent_id, at, p.status),
                Payload::Conversion(c) => data.dataset.add_conversion(
                    &event_id,
                    &c.customer_id,
                    at,
                    &c.kind,
                    c.value_minor,
                    c.currency.as_deref(),
                ),
                _ => continue,
            }
            changes += 1;
        }
    }
    tx.commit().await?;
    if changes > 0 || data.xmin.is_none() {
        data.dataset.finish();
        data.version += 1;
    }
    data.xmin = Some(xmin);
    data.last_changes = changes;
    Ok(())
}
