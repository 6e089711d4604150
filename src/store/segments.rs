//! The query engine's [`Source`] in PostgreSQL: a tenant's day segments (persisted snapshots and
//! conversation records), the rows changed since a snapshot of the database, and the events that
//! belong to no conversation (presence, conversions). All reads of one refresh run in one
//! read-only repeatable-read transaction ([`Reads`]), so a query sees one consistent state.
//!
//! Change tracking: every conversation row and event carries the id of the transaction that
//! wrote it (`change_xid`, `ingest_xid`). A reader that remembers the xmin of its previous
//! snapshot re-reads exactly the rows written since (`>= xmin`), including those of
//! transactions that were still running then, whatever the commit order.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Postgres, Transaction, types::Json};

use crate::domain::{Error, event::Payload, tenant::TenantId};
use crate::engine::source::{
    DayRows, ErasureLog, MAX_KEPT_TOTALS, SideEvent, Snapshot, SnapshotPart, Source, SourceReads,
    StoredConversation, StoredSide, StoredSnapshot, StoredTotals,
};

/// The event store as the query cache's [`Source`].
#[derive(Clone)]
pub struct PgSource(pub PgPool);

impl Source for PgSource {
    type Reads = Reads;

    async fn begin(&self) -> Result<Reads, Error> {
        Reads::begin(&self.0).await
    }

    async fn begin_at(&self, snapshot: &str, xmin: i64) -> Result<Reads, Error> {
        Reads::begin_at(&self.0, snapshot, xmin).await
    }

    async fn recently_queried(&self, since: DateTime<Utc>) -> Result<Vec<(TenantId, NaiveDate)>, Error> {
        recently_queried(&self.0, since).await
    }

    async fn save_snapshot(
        &self,
        tenant: TenantId,
        snapshot: &Snapshot,
        parts: tokio::sync::mpsc::Receiver<SnapshotPart>,
    ) -> Result<(), Error> {
        save_snapshot(&self.0, tenant, snapshot, parts).await
    }

    async fn save_totals(&self, tenant: TenantId, totals: StoredTotals) -> Result<(), Error> {
        save_totals(&self.0, tenant, totals).await
    }

    async fn save_side_snapshot(
        &self,
        tenant: TenantId,
        built_xmin: i64,
        erasures: i64,
        body: Vec<u8>,
    ) -> Result<(), Error> {
        save_side_snapshot(&self.0, tenant, built_xmin, erasures, body).await
    }
}

/// A read-only, repeatable-read transaction and the xmin of its snapshot.
pub struct Reads {
    tx: Transaction<'static, Postgres>,
    xmin: i64,
}

impl Reads {
    async fn begin(pool: &PgPool) -> Result<Self, Error> {
        let mut tx = pool.begin().await?;
        sqlx::query!("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        let xmin =
            sqlx::query_scalar!(r#"select pg_snapshot_xmin(pg_current_snapshot())::text::bigint as "xmin!""#)
                .fetch_one(&mut *tx)
                .await?;
        Ok(Self { tx, xmin })
    }

    /// A read-only transaction on a snapshot exported by [`SourceReads::export`] (while the
    /// exporting transaction is open).
    async fn begin_at(pool: &PgPool, snapshot: &str, xmin: i64) -> Result<Self, Error> {
        // Snapshot ids are hex words and dashes; anything else is not one.
        if snapshot.is_empty() || !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(Error::Internal(anyhow::anyhow!(
                "not a snapshot id: {snapshot:?}"
            )));
        }
        let mut tx = pool.begin().await?;
        sqlx::query!("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        // SET takes no parameters, so this one statement cannot be checked at compile time; the
        // id was checked to be hex words and dashes above.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "set transaction snapshot '{snapshot}'"
        )))
        .execute(&mut *tx)
        .await?;
        Ok(Self { tx, xmin })
    }
}

impl SourceReads for Reads {
    fn xmin(&self) -> i64 {
        self.xmin
    }

    /// Exports this transaction's snapshot, so other connections read exactly the same state
    /// ([`Source::begin_at`]): loading runs on several connections at once.
    async fn export(&mut self) -> Result<String, Error> {
        Ok(sqlx::query_scalar!(r#"select pg_export_snapshot() as "id!""#)
            .fetch_one(&mut *self.tx)
            .await?)
    }

    async fn finish(self) -> Result<(), Error> {
        self.tx.commit().await?;
        Ok(())
    }

    /// The tenant's erasure counter (`tenants.erasures`).
    async fn erasures(&mut self, tenant: TenantId) -> Result<i64, Error> {
        super::tenants::erasures(&mut self.tx, tenant).await
    }

    /// The erasures of `tenant` after the `seen`-th (`tenants.erasures` counts them).
    async fn erasures_after(&mut self, tenant: TenantId, seen: i64) -> Result<Vec<ErasureLog>, Error> {
        super::tenants::erasures_after(&mut self.tx, tenant, seen).await
    }

    /// Where each day's conversations lie in time: the days `only`, or all.
    async fn days_among(
        &mut self,
        tenant: TenantId,
        only: Option<&[NaiveDate]>,
    ) -> Result<Vec<DayRows>, Error> {
        Ok(sqlx::query_as!(
            DayRows,
            r#"select segment_day as "day!", count(*) as "rows!", min(opened_at) as "opened_from!",
                      max(opened_at) as "opened_to!", min(active_from) as "active_from!",
                      max(last_event_at) as "active_to!",
                      case when max(live_until) = 'infinity' then null else max(live_until) end
                        as "live_until"
               from conversations where tenant_id = $1
                 and ($2::date[] is null or segment_day = any($2))
               group by segment_day"#,
            tenant.0,
            only
        )
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Conversations written by transactions at or after `xmin`.
    async fn changed_since(&mut self, tenant: TenantId, xmin: i64) -> Result<Vec<StoredConversation>, Error> {
        Ok(sqlx::query_as!(
            StoredConversation,
            r#"select segment_day as day, conversation_id, record as "record!" from conversations
               where tenant_id = $1 and change_xid >= $2::text::xid8"#,
            tenant.0,
            xmin.to_string()
        )
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// The persisted segments of `days`, their parts read one at a time into each body.
    async fn snapshots(
        &mut self,
        tenant: TenantId,
        days: &[NaiveDate],
    ) -> Result<Vec<StoredSnapshot>, Error> {
        use futures::TryStreamExt;
        let mut parts = sqlx::query!(
            r#"select s.segment_day as day, s.built_xmin::text::bigint as "built_xmin!", p.body,
                      sum(octet_length(p.body)) over (partition by s.segment_day) as "bytes!"
               from segments s
               join segment_parts p on p.tenant_id = s.tenant_id and p.segment_day = s.segment_day
               where s.tenant_id = $1 and s.segment_day = any($2)
               order by s.segment_day, p.part"#,
            tenant.0,
            days
        )
        .fetch(&mut *self.tx);
        let mut snapshots: Vec<StoredSnapshot> = Vec::new();
        while let Some(part) = parts.try_next().await? {
            match snapshots.last_mut() {
                Some(s) if s.day == part.day => s.body.extend_from_slice(&part.body),
                _ => {
                    let mut body = Vec::with_capacity(usize::try_from(part.bytes).unwrap_or(0));
                    body.extend_from_slice(&part.body);
                    snapshots.push(StoredSnapshot {
                        day: part.day,
                        built_xmin: part.built_xmin,
                        body,
                    });
                }
            }
        }
        Ok(snapshots)
    }

    async fn totals(&mut self, tenant: TenantId, days: &[NaiveDate]) -> Result<Vec<StoredTotals>, Error> {
        Ok(sqlx::query_as!(
            StoredTotals,
            r#"select k.segment_day as day, k.shape_hash, k.kind,
                      k.snapshot_xmin::text::bigint as "snapshot_xmin!", k.body
               from kept_totals k
               join segments s on s.tenant_id = k.tenant_id and s.segment_day = k.segment_day
               where k.tenant_id = $1 and k.segment_day = any($2) and k.snapshot_xmin = s.built_xmin
               order by k.written_at desc"#,
            tenant.0,
            days
        )
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// A cursor over the day's conversations in this transaction: each batch is a statement of
    /// its own, read as fast as it is taken.
    async fn open_day(&mut self, tenant: TenantId, day: NaiveDate, since: i64) -> Result<(), Error> {
        sqlx::query!(
            r#"declare day_rows no scroll cursor for
               select segment_day as day, conversation_id, record from conversations
               where tenant_id = $1 and segment_day = $2 and change_xid >= $3::text::xid8"#,
            tenant.0,
            day,
            since.to_string()
        )
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn next_rows(&mut self, n: usize) -> Result<Vec<StoredConversation>, Error> {
        use sqlx::Row;
        // FETCH takes no parameters and is not described at compile time: unchecked, and `n` is
        // a number.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("fetch forward {n} from day_rows")))
            .fetch_all(&mut *self.tx)
            .await?;
        let batch = rows
            .iter()
            .map(|r| {
                Ok(StoredConversation {
                    day: r.try_get("day")?,
                    conversation_id: r.try_get("conversation_id")?,
                    record: r.try_get("record")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        if batch.len() < n {
            sqlx::query!("close day_rows").execute(&mut *self.tx).await?;
        }
        Ok(batch)
    }

    async fn side_snapshot(&mut self, tenant: TenantId) -> Result<Option<StoredSide>, Error> {
        Ok(sqlx::query_as!(
            StoredSide,
            r#"select erasures, built_xmin::text::bigint as "built_xmin!", body
               from side_snapshots where tenant_id = $1"#,
            tenant.0
        )
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    /// Presence and conversion events written at or after `xmin` (0 = all).
    async fn side_events(&mut self, tenant: TenantId, xmin: i64) -> Result<Vec<SideEvent>, Error> {
        let rows = sqlx::query!(
            r#"select event_id, occurred_at, payload as "payload: Json<Payload>",
                      ingest_xid::text::bigint as "ingest_xid!" from events
               where tenant_id = $1 and kind in ('agent_status', 'conversion')
                 and ingest_xid >= $2::text::xid8"#,
            tenant.0,
            xmin.to_string()
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SideEvent {
                event_id: r.event_id,
                occurred_at: r.occurred_at,
                payload: r.payload.0,
                ingest_xid: r.ingest_xid,
            })
            .collect())
    }
}

/// Tenants whose snapshots were written since `since` (their data was queried recently), with
/// their latest snapshot day, most recently written first.
async fn recently_queried(pool: &PgPool, since: DateTime<Utc>) -> Result<Vec<(TenantId, NaiveDate)>, Error> {
    let rows = sqlx::query!(
        r#"select tenant_id, max(segment_day) as "day!" from segments where written_at > $1
           group by tenant_id order by max(written_at) desc"#,
        since
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (TenantId(r.tenant_id), r.day)).collect())
}

/// Upserts kept totals when their snapshot is the day's stored one (an erasure deletes it, a
/// newer snapshot replaces it: then nothing is written), and drops the day's oldest beyond
/// [`MAX_KEPT_TOTALS`].
async fn save_totals(pool: &PgPool, tenant: TenantId, t: StoredTotals) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let written = sqlx::query!(
        r#"insert into kept_totals (tenant_id, segment_day, shape_hash, kind, snapshot_xmin, body)
           select s.tenant_id, s.segment_day, $3, $4, s.built_xmin, $6
           from segments s
           where s.tenant_id = $1 and s.segment_day = $2 and s.built_xmin = $5::text::xid8
           on conflict (tenant_id, segment_day, shape_hash, kind) do update set
             snapshot_xmin = excluded.snapshot_xmin, body = excluded.body, written_at = now()"#,
        tenant.0,
        t.day,
        t.shape_hash,
        t.kind,
        t.snapshot_xmin.to_string(),
        t.body
    )
    .execute(&mut *tx)
    .await?;
    if written.rows_affected() > 0 {
        sqlx::query!(
            r#"delete from kept_totals
               where tenant_id = $1 and segment_day = $2 and (shape_hash, kind) not in (
                 select shape_hash, kind from kept_totals
                 where tenant_id = $1 and segment_day = $2
                 order by written_at desc limit $3)"#,
            tenant.0,
            t.day,
            MAX_KEPT_TOTALS
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Persists a segment from its parts unless a snapshot built at a later xmin is already stored
/// (another replica may have written one meanwhile) or a customer was erased since the segment
/// was read, in one transaction: the previous parts are replaced only when the last part
/// arrived. The tenant row is read `for share`: an erasure (which updates it first) waits for
/// this write and then deletes the snapshot, or this write waits for the erasure and then sees
/// the new counter. Each part is dropped once its statement holds its copy: the write holds
/// one part at a time (`snapshot::PART_BYTES`), however large the day.
async fn save_snapshot(
    pool: &PgPool,
    tenant: TenantId,
    s: &Snapshot,
    mut parts: tokio::sync::mpsc::Receiver<SnapshotPart>,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let erasures = sqlx::query_scalar!(
        "select erasures from tenants where tenant_id = $1 for share",
        tenant.0
    )
    .fetch_optional(&mut *tx)
    .await?;
    if erasures != Some(s.erasures) {
        return Ok(());
    }
    let newer = sqlx::query_scalar!(
        r#"insert into segments (tenant_id, segment_day, built_xmin) values ($1, $2, $3::text::xid8)
           on conflict (tenant_id, segment_day) do update set
             built_xmin = excluded.built_xmin, written_at = now()
           where segments.built_xmin < excluded.built_xmin
           returning 1 as "one!""#,
        tenant.0,
        s.day,
        s.built_xmin.to_string()
    )
    .fetch_optional(&mut *tx)
    .await?;
    if newer.is_none() {
        return Ok(());
    }
    // Totals of the snapshot replaced are of other rows.
    sqlx::query!(
        "delete from kept_totals where tenant_id = $1 and segment_day = $2",
        tenant.0,
        s.day
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "delete from segment_parts where tenant_id = $1 and segment_day = $2",
        tenant.0,
        s.day
    )
    .execute(&mut *tx)
    .await?;
    let mut part = 0i32;
    while let Some(SnapshotPart { bytes, last }) = parts.recv().await {
        let statement = sqlx::query!(
            "insert into segment_parts (tenant_id, segment_day, part, body) values ($1, $2, $3, $4)",
            tenant.0,
            s.day,
            part,
            &bytes
        );
        drop(bytes);
        statement.execute(&mut *tx).await?;
        if last {
            tx.commit().await?;
            return Ok(());
        }
        part += 1;
    }
    // The encoding stopped before its last part: nothing is stored (the transaction rolls back).
    Err(Error::Internal(anyhow::anyhow!(
        "the snapshot of {} ended before its last part",
        s.day
    )))
}

/// Persists a tenant's presence and conversions (`engine::side`) unless one complete for a later
/// xmin is stored or a customer was erased since the state was read; ordered with erasures by
/// the tenant row, as [`save_snapshot`]; the body is dropped once the statement holds its copy.
async fn save_side_snapshot(
    pool: &PgPool,
    tenant: TenantId,
    built_xmin: i64,
    erasures: i64,
    body: Vec<u8>,
) -> Result<(), Error> {
    let statement = sqlx::query!(
        "insert into side_snapshots (tenant_id, built_xmin, erasures, body) \
         select $1, $2::text::xid8, $3, $4 from tenants \
         where tenant_id = $1 and erasures = $3 for share \
         on conflict (tenant_id) do update set \
           built_xmin = excluded.built_xmin, erasures = excluded.erasures, body = excluded.body, \
           written_at = now() \
         where side_snapshots.built_xmin < excluded.built_xmin",
        tenant.0,
        built_xmin.to_string(),
        erasures,
        &body
    );
    drop(body);
    statement.execute(pool).await?;
    Ok(())
}
