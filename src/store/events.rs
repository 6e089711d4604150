//! The event store write path: one transaction (for one batch, or several batches merged by
//! `app::writer`) that appends the new events and recomputes the facts of every conversation they
//! touch.
//!
//! Why recompute instead of patching: docs/metrics.md §2 requires every derived value to be a function
//! of the event *set*. Recomputing a touched conversation from all its stored events makes late,
//! shuffled and duplicated events give the same facts by construction. Concurrent batches that
//! touch the same conversation are serialized by a transaction-scoped advisory lock per
//! conversation, taken after the event insert and before the events are read back, so the last
//! writer always sees every committed event. Locks are taken in sorted key order and events are
//! inserted in `event_id` order, so concurrent writers cannot deadlock.

use std::{
    borrow::Borrow,
    collections::{HashMap, HashSet},
};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction, types::Json};

use crate::domain::{
    Error,
    event::{Event, Payload},
    facts::{self, ConversationFacts},
    tenant::TenantId,
};
use crate::engine::record;

/// Stores a batch of validated events with distinct `event_id`s in one transaction and returns
/// the ids that were new (the others were stored before: duplicates). When this returns `Ok`,
/// the events and the facts derived from them are committed.
pub async fn store_batch<E: Borrow<Event> + Sync>(
    pool: &PgPool,
    tenant: TenantId,
    events: &[E],
) -> Result<HashSet<String>, Error> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let mut tx = pool.begin().await?;
    let inserted = insert_events(&mut tx, tenant, events).await?;

    // The events this transaction stored, by conversation: they are derived from as they are
    // (a validated event equals its stored row), so only the earlier ones are read back.
    let mut fresh: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events.iter().map(Borrow::borrow) {
        if let Some(id) = e.conversation_id.as_deref()
            && e.payload.belongs_to_conversation()
            && inserted.contains(&e.event_id)
        {
            fresh.entry(id).or_default().push(e);
        }
    }
    let mut touched: Vec<&str> = fresh.keys().copied().collect();
    touched.sort_unstable();

    if !touched.is_empty() {
        recompute(&mut tx, tenant, &touched, &fresh).await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// Recomputes the facts of `conversations` (sorted by their bytes, distinct) from all their
/// stored events, under their locks, inside `tx`: those stored by earlier transactions, read
/// back, and `fresh`, those this transaction stored.
async fn recompute(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    conversations: &[&str],
    fresh: &HashMap<&str, Vec<&Event>>,
) -> Result<(), Error> {
    lock_conversations(tx, tenant, conversations).await?;
    let rows = derive_touched(tx, tenant, conversations, fresh).await?;
    upsert_facts(tx, tenant, &rows).await
}

/// Takes the transaction-scoped locks of `conversations` (in sorted key order: no deadlocks).
pub(super) async fn lock_conversations(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    conversations: &[&str],
) -> Result<(), Error> {
    // One lock per conversation, in key order: concurrent writers cannot deadlock.
    sqlx::query!(
        r#"
        select pg_advisory_xact_lock(s.k)
        from (
            select distinct hashtextextended($1::text || '/' || c, 0) as k
            from unnest($2::text[]) as c
            order by 1
        ) as s
        "#,
        tenant.to_string(),
        conversations as _
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(())
}

/// Recomputes every conversation's facts of `tenant` from its events, `page` conversations per
/// transaction (after a change of the facts' shape or derivation rules). Returns the number of
/// conversations recomputed.
pub async fn reproject(pool: &PgPool, tenant: TenantId, page: i64) -> Result<u64, Error> {
    let mut after = String::new();
    let mut done = 0u64;
    loop {
        let ids = sqlx::query_scalar!(
            "select conversation_id from conversations where tenant_id = $1 and conversation_id > $2 \
             order by conversation_id limit $3",
            tenant.0,
            after,
            page
        )
        .fetch_all(pool)
        .await?;
        let Some(last) = ids.last() else {
            return Ok(done);
        };
        after = last.clone();
        // The page is in the database's order; recompute wants byte order.
        let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        let mut tx = pool.begin().await?;
        recompute(&mut tx, tenant, &ids, &HashMap::new()).await?;
        tx.commit().await?;
        done += ids.len() as u64;
    }
}

/// Stores derived facts directly, without their events, in one transaction. For tools that load
/// large benchmark data sets (the service derives facts from stored events and never calls
/// this).
pub async fn store_facts(pool: &PgPool, tenant: TenantId, facts: &[ConversationFacts]) -> Result<(), Error> {
    let mut rows = FactRows::with_capacity(facts.len());
    for f in facts {
        rows.push(f);
    }
    let mut tx = pool.begin().await?;
    upsert_facts(&mut tx, tenant, &rows).await?;
    tx.commit().await?;
    Ok(())
}

/// Derives again every conversation stored by an older derivation (`derivation` below
/// [`facts::DERIVATION`]), tenant by tenant; returns how many were derived. A tenant checked
/// before against this derivation (`derivation_checks`) is checked only in the rows changed
/// since (index `conversations_by_change`): a start reads every conversation once per
/// derivation, not every time.
pub async fn reproject_outdated(pool: &PgPool) -> Result<u64, Error> {
    // Taken before the check: every row changed by a transaction below it is read by the check.
    let checked =
        sqlx::query_scalar!(r#"select pg_snapshot_xmin(pg_current_snapshot())::text::bigint as "xmin!""#)
            .fetch_one(pool)
            .await?;
    let checks = sqlx::query!(
        r#"select t.tenant_id, d.checked_xmin::text::bigint as checked from tenants t
           left join derivation_checks d on d.tenant_id = t.tenant_id and d.derivation = $1
           order by t.tenant_id"#,
        facts::DERIVATION
    )
    .fetch_all(pool)
    .await?;
    let mut done = 0;
    for check in checks {
        let tenant = TenantId(check.tenant_id);
        if outdated_since(pool, tenant, check.checked).await? {
            tracing::info!(
                tenant = tenant.0,
                "deriving the tenant's conversations again (upgrade)"
            );
            done += reproject(pool, tenant, 2000).await?;
        }
    }
    sqlx::query!(
        "insert into derivation_checks (tenant_id, derivation, checked_xmin) \
         select tenant_id, $1, $2::text::xid8 from tenants \
         on conflict (tenant_id) do update \
           set derivation = excluded.derivation, checked_xmin = excluded.checked_xmin",
        facts::DERIVATION,
        checked.to_string()
    )
    .execute(pool)
    .await?;
    Ok(done)
}

/// Whether `tenant` has a conversation written by an older derivation: among the rows changed
/// at or after `checked` when given (one statement per tenant, so that the planner sees the
/// xid and reads the range of `conversations_by_change`; joined over tenants it scanned every
/// conversation).
async fn outdated_since(pool: &PgPool, tenant: TenantId, checked: Option<i64>) -> Result<bool, Error> {
    let outdated = match checked {
        Some(xmin) => {
            sqlx::query_scalar!(
                r#"select exists (select 1 from conversations where tenant_id = $1
                              and change_xid >= $2::text::xid8 and derivation < $3) as "outdated!""#,
                tenant.0,
                xmin.to_string(),
                facts::DERIVATION
            )
            .fetch_one(pool)
            .await?
        }
        None => {
            sqlx::query_scalar!(
                r#"select exists (select 1 from conversations where tenant_id = $1
                              and derivation < $2) as "outdated!""#,
                tenant.0,
                facts::DERIVATION
            )
            .fetch_one(pool)
            .await?
        }
    };
    Ok(outdated)
}

/// Every tenant id.
pub async fn tenants(pool: &PgPool) -> Result<Vec<TenantId>, Error> {
    let rows = sqlx::query_scalar!("select tenant_id from tenants order by tenant_id")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(TenantId).collect())
}

async fn insert_events<E: Borrow<Event>>(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    events: &[E],
) -> Result<HashSet<String>, Error> {
    let n = events.len();
    let (mut ids, mut conversations, mut times, mut kinds, mut payloads, mut customers) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events.iter().map(Borrow::borrow) {
        ids.push(e.event_id.as_str());
        conversations.push(e.conversation_id.as_deref());
        times.push(e.occurred_at);
        kinds.push(e.payload.kind());
        customers.push(e.payload.customer_id());
        payloads
            .push(serde_json::to_string(&e.payload).map_err(|err| Error::Internal(anyhow::Error::new(err)))?);
    }
    // In event_id order: concurrent writers take the rows' locks in one order. Arrays of
    // borrowed strings skip sqlx's Rust-side check (`as _`: it wants owned `String`s, which would
    // copy every id of the batch); PostgreSQL still checks their types.
    let inserted = sqlx::query_scalar!(
        r#"
        insert into events (tenant_id, event_id, conversation_id, occurred_at, kind, payload, customer_id)
        select $1, e.event_id, e.conversation_id, e.occurred_at, e.kind, e.payload::jsonb, e.customer_id
        from unnest($2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[])
            as e(event_id, conversation_id, occurred_at, kind, payload, customer_id)
        order by e.event_id
        on conflict (tenant_id, event_id) do nothing
        returning event_id
        "#,
        tenant.0,
        ids as _,
        conversations as _,
        times.as_slice(),
        kinds as _,
        payloads.as_slice(),
        customers as _
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Derives the facts of `conversations` (sorted by their bytes) and encodes them as rows to
/// upsert. The earlier events are read back in conversation order, and each conversation is
/// derived as soon as its last one arrives: only one conversation's events are held at a time,
/// however many a merged transaction touches (holding them all was 39 % of the server's page
/// faults in the soak of RELIABILITY.md, session 27).
async fn derive_touched(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    conversations: &[&str],
    fresh: &HashMap<&str, Vec<&Event>>,
) -> Result<FactRows, Error> {
    use futures::TryStreamExt;
    // `collate "C"`: byte order, the order of `conversations` whatever the database's locale.
    // The transaction's own events are left out: the caller holds them (`fresh`), and reading
    // them back would only convert them to JSON and parse them again.
    let mut earlier = sqlx::query!(
        r#"
        select conversation_id as "conversation_id!", event_id, occurred_at,
               payload as "payload: Json<Payload>"
        from events
        where tenant_id = $1
          and conversation_id = any($2::text[])
          and kind not in ('conversion', 'agent_status')
          and ingest_xid <> pg_current_xact_id()
        order by conversation_id collate "C"
        "#,
        tenant.0,
        conversations as _
    )
    .fetch(&mut **tx);
    let mut rows = FactRows::with_capacity(conversations.len());
    let mut next = earlier.try_next().await?;
    let mut events: Vec<Event> = Vec::new();
    for id in conversations {
        events.clear();
        while let Some(row) = next.take_if(|row| row.conversation_id.as_str() <= *id) {
            if row.conversation_id != *id {
                return Err(Error::Internal(anyhow::anyhow!(
                    "events read back out of conversation order: {} before {id}",
                    row.conversation_id
                )));
            }
            events.push(Event {
                event_id: row.event_id,
                conversation_id: Some(row.conversation_id),
                occurred_at: row.occurred_at,
                payload: row.payload.0,
            });
            next = earlier.try_next().await?;
        }
        let new = fresh.get(id).into_iter().flatten().copied();
        if let Some(facts) = facts::derive(id, events.iter().chain(new)) {
            rows.push(&facts);
        }
    }
    if let Some(row) = next {
        return Err(Error::Internal(anyhow::anyhow!(
            "an event read back of a conversation not asked for: {}",
            row.conversation_id
        )));
    }
    Ok(rows)
}

/// Derived facts as the columns of the conversation upsert, one entry per conversation.
struct FactRows {
    ids: Vec<String>,
    opened: Vec<DateTime<Utc>>,
    active_from: Vec<DateTime<Utc>>,
    last: Vec<DateTime<Utc>>,
    live_until: Vec<Option<DateTime<Utc>>>,
    states: Vec<&'static str>,
    resolved: Vec<Option<DateTime<Utc>>>,
    ended: Vec<Option<DateTime<Utc>>>,
    records: Vec<Vec<u8>>,
}

impl FactRows {
    fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            opened: Vec::with_capacity(n),
            active_from: Vec::with_capacity(n),
            last: Vec::with_capacity(n),
            live_until: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            resolved: Vec::with_capacity(n),
            ended: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, f: &ConversationFacts) {
        self.ids.push(f.conversation_id.clone());
        self.opened.push(f.opened_at);
        self.active_from.push(f.first_event_at);
        self.last.push(f.last_event_at);
        self.live_until.push(f.live_until());
        self.states.push(f.state.as_str());
        self.resolved.push(f.resolved_at);
        self.ended.push(f.ended_at);
        self.records.push(record::encode(f));
    }
}

async fn upsert_facts(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    rows: &FactRows,
) -> Result<(), Error> {
    let FactRows {
        ids,
        opened,
        active_from,
        last,
        live_until,
        states,
        resolved,
        ended,
        records,
    } = rows;
    // `as _`: borrowed strings and arrays with NULLs (which sqlx's Rust-side check does not
    // model); PostgreSQL checks their types.
    sqlx::query!(
        r#"
        insert into conversations (tenant_id, conversation_id, segment_day, opened_at, active_from,
                                   last_event_at, live_until, state, resolved_at, ended_at, record,
                                   derivation, updated_at, change_xid)
        select $1, c.id, (c.opened_at at time zone 'UTC')::date, c.opened_at, c.active_from,
               c.last_event_at, coalesce(c.live_until, 'infinity'), c.state, c.resolved_at, c.ended_at,
               c.record, $11, now(), pg_current_xact_id()
        from unnest($2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
                    $6::timestamptz[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::bytea[])
            as c(id, opened_at, active_from, last_event_at, live_until, state, resolved_at, ended_at,
                 record)
        order by c.id
        on conflict (tenant_id, conversation_id) do update set
            opened_at = excluded.opened_at,
            active_from = excluded.active_from,
            last_event_at = excluded.last_event_at,
            live_until = excluded.live_until,
            state = excluded.state,
            resolved_at = excluded.resolved_at,
            ended_at = excluded.ended_at,
            record = excluded.record,
            derivation = excluded.derivation,
            updated_at = excluded.updated_at,
            change_xid = excluded.change_xid
        "#,
        tenant.0,
        ids as _,
        opened.as_slice(),
        active_from.as_slice(),
        last.as_slice(),
        live_until as _,
        states as _,
        resolved as _,
        ended as _,
        records.as_slice(),
        facts::DERIVATION
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The stored facts of one conversation, if it has any.
pub async fn conversation_facts(
    pool: &PgPool,
    tenant: TenantId,
    conversation_id: &str,
) -> Result<Option<ConversationFacts>, Error> {
    let record = sqlx::query_scalar!(
        r#"select record as "record!" from conversations where tenant_id = $1 and conversation_id = $2"#,
        tenant.0,
        conversation_id
    )
    .fetch_optional(pool)
    .await?;
    record.map(|bytes| decode(conversation_id, &bytes)).transpose()
}

/// The stored facts of every conversation of a tenant, ordered by conversation id.
pub async fn all_conversation_facts(
    pool: &PgPool,
    tenant: TenantId,
) -> Result<Vec<ConversationFacts>, Error> {
    let rows = sqlx::query!(
        r#"select conversation_id, record as "record!" from conversations
           where tenant_id = $1 order by conversation_id"#,
        tenant.0
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| decode(&r.conversation_id, &r.record))
        .collect()
}

/// Up to `limit` stored records of `tenant` with conversation ids after `after`, by id: (id,
/// record bytes). A page at a time, for exports of any size.
pub async fn records_after(
    pool: &PgPool,
    tenant: TenantId,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let rows = sqlx::query!(
        r#"select conversation_id, record as "record!" from conversations
           where tenant_id = $1 and conversation_id > $2 order by conversation_id limit $3"#,
        tenant.0,
        after,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.conversation_id, r.record)).collect())
}

fn decode(conversation_id: &str, bytes: &[u8]) -> Result<ConversationFacts, Error> {
    record::decode(conversation_id, bytes).map_err(|e| Error::Internal(anyhow::Error::new(e)))
}

/// Number of stored events of a tenant.
pub async fn count_events(pool: &PgPool, tenant: TenantId) -> Result<i64, Error> {
    Ok(sqlx::query_scalar!(
        r#"select count(*) as "n!" from events where tenant_id = $1"#,
        tenant.0
    )
    .fetch_one(pool)
    .await?)
}
