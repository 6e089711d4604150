//! The event store write path: one transaction per batch that appends new events and recomputes
//! the facts of every conversation they touch.
//!
//! Why recompute instead of patching: METRICS.md §2 requires every derived value to be a function
//! of the event *set*. Recomputing a touched conversation from all its stored events makes late,
//! shuffled and duplicated events give the same facts by construction. Concurrent batches that
//! touch the same conversation are serialized by a transaction-scoped advisory lock per
//! conversation, taken after the event insert and before the events are read back, so the last
//! writer always sees every committed event. Locks are taken in sorted key order and events are
//! inserted in `event_id` order, so concurrent writers cannot deadlock.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction, types::Json};

use crate::domain::{
    Error,
    event::{Event, Payload},
    facts::{self, ConversationFacts},
    tenant::TenantId,
};

const INSERT_EVENTS: &str = r#"
insert into events (tenant_id, event_id, conversation_id, occurred_at, kind, payload)
select $1, e.event_id, e.conversation_id, e.occurred_at, e.kind, e.payload::jsonb
from unnest($2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[])
    as e(event_id, conversation_id, occurred_at, kind, payload)
order by e.event_id
on conflict (tenant_id, event_id) do nothing
returning event_id
"#;

const LOCK_CONVERSATIONS: &str = r#"
select pg_advisory_xact_lock(s.k)
from (
    select distinct hashtextextended($1::text || '/' || c, 0) as k
    from unnest($2::text[]) as c
    order by 1
) as s
"#;

const LOAD_EVENTS: &str = r#"
select conversation_id, event_id, occurred_at, payload
from events
where tenant_id = $1
  and conversation_id = any($2::text[])
  and kind not in ('conversion', 'agent_status')
"#;

const UPSERT_CONVERSATIONS: &str = r#"
insert into conversations (tenant_id, conversation_id, opened_at, channel, customer_id, agent,
                           state, resolved_at, ended_at, last_event_at, facts, updated_at,
                           change_xid)
select $1, c.id, c.opened_at, c.channel, c.customer_id, c.agent, c.state, c.resolved_at,
       c.ended_at, c.last_event_at, c.facts::jsonb, now(), pg_current_xact_id()
from unnest($2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::text[])
    as c(id, opened_at, channel, customer_id, agent, state, resolved_at, ended_at,
         last_event_at, facts)
order by c.id
on conflict (tenant_id, conversation_id) do update set
    opened_at = excluded.opened_at,
    channel = excluded.channel,
    customer_id = excluded.customer_id,
    agent = excluded.agent,
    state = excluded.state,
    resolved_at = excluded.resolved_at,
    ended_at = excluded.ended_at,
    last_event_at = excluded.last_event_at,
    facts = excluded.facts,
    updated_at = excluded.updated_at,
    change_xid = excluded.change_xid
"#;

/// Stores a batch of validated events with distinct `event_id`s in one transaction and returns
/// the ids that were new (the others were stored before: duplicates). When this returns `Ok`,
/// the events and the facts derived from them are committed.
pub async fn store_batch(
    pool: &PgPool,
    tenant: TenantId,
    events: &[Event],
) -> Result<HashSet<String>, Error> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let mut tx = pool.begin().await?;
    let inserted = insert_events(&mut tx, tenant, events).await?;

    let mut touched: Vec<&str> = events
        .iter()
        .filter(|e| e.payload.belongs_to_conversation() && inserted.contains(&e.event_id))
        .filter_map(|e| e.conversation_id.as_deref())
        .collect();
    touched.sort_unstable();
    touched.dedup();

    if !touched.is_empty() {
        recompute(&mut tx, tenant, &touched).await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// Recomputes the facts of `conversations` (sorted, distinct) from all their stored events,
/// under their locks, inside `tx`.
async fn recompute(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    conversations: &[&str],
) -> Result<(), Error> {
    sqlx::query(LOCK_CONVERSATIONS)
        .bind(tenant.to_string())
        .bind(conversations)
        .execute(&mut **tx)
        .await?;
    let by_conversation = load_events(tx, tenant, conversations).await?;
    let derived: Vec<ConversationFacts> = conversations
        .iter()
        .filter_map(|id| {
            by_conversation
                .get(*id)
                .and_then(|events| facts::derive(id, events))
        })
        .collect();
    upsert_facts(tx, tenant, &derived).await
}

/// Recomputes every conversation's facts of `tenant` from its events, `page` conversations per
/// transaction (after a change of the facts' shape or derivation rules). Returns the number of
/// conversations recomputed.
pub async fn reproject(pool: &PgPool, tenant: TenantId, page: i64) -> Result<u64, Error> {
    let mut after = String::new();
    let mut done = 0u64;
    loop {
        let ids: Vec<(String,)> = sqlx::query_as(
            "select conversation_id from conversations where tenant_id = $1 and conversation_id > $2 \
             order by conversation_id limit $3",
        )
        .bind(tenant)
        .bind(&after)
        .bind(page)
        .fetch_all(pool)
        .await?;
        let Some((last,)) = ids.last() else {
            return Ok(done);
        };
        after = last.clone();
        let ids: Vec<&str> = ids.iter().map(|(id,)| id.as_str()).collect();
        let mut tx = pool.begin().await?;
        recompute(&mut tx, tenant, &ids).await?;
        tx.commit().await?;
        done += ids.len() as u64;
    }
}

/// Every tenant id.
pub async fn tenants(pool: &PgPool) -> Result<Vec<TenantId>, Error> {
    let rows: Vec<(TenantId,)> = sqlx::query_as("select tenant_id from tenants order by tenant_id")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(t,)| t).collect())
}

async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    events: &[Event],
) -> Result<HashSet<String>, Error> {
    let n = events.len();
    let (mut ids, mut conversations, mut times, mut kinds, mut payloads) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events {
        ids.push(e.event_id.as_str());
        conversations.push(e.conversation_id.as_deref());
        times.push(e.occurred_at);
        kinds.push(e.payload.kind());
        payloads
            .push(serde_json::to_string(&e.payload).map_err(|err| Error::Internal(anyhow::Error::new(err)))?);
    }
    let rows: Vec<(String,)> = sqlx::query_as(INSERT_EVENTS)
        .bind(tenant)
        .bind(&ids)
        .bind(&conversations)
        .bind(&times)
        .bind(&kinds)
        .bind(&payloads)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

async fn load_events(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    conversations: &[&str],
) -> Result<HashMap<String, Vec<Event>>, Error> {
    let rows: Vec<(String, String, DateTime<Utc>, Json<Payload>)> = sqlx::query_as(LOAD_EVENTS)
        .bind(tenant)
        .bind(conversations)
        .fetch_all(&mut **tx)
        .await?;
    let mut grouped: HashMap<String, Vec<Event>> = HashMap::with_capacity(conversations.len());
    for (conversation_id, event_id, occurred_at, Json(payload)) in rows {
        grouped.entry(conversation_id.clone()).or_default().push(Event {
            event_id,
            conversation_id: Some(conversation_id),
            occurred_at,
            payload,
        });
    }
    Ok(grouped)
}

async fn upsert_facts(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    facts: &[ConversationFacts],
) -> Result<(), Error> {
    let mut ids = Vec::with_capacity(facts.len());
    let mut opened = Vec::with_capacity(facts.len());
    let mut channels = Vec::with_capacity(facts.len());
    let mut customers = Vec::with_capacity(facts.len());
    let mut agents = Vec::with_capacity(facts.len());
    let mut states = Vec::with_capacity(facts.len());
    let mut resolved = Vec::with_capacity(facts.len());
    let mut ended = Vec::with_capacity(facts.len());
    let mut last = Vec::with_capacity(facts.len());
    let mut records = Vec::with_capacity(facts.len());
    for f in facts {
        ids.push(f.conversation_id.as_str());
        opened.push(f.opened_at);
        channels.push(f.channel.as_str());
        customers.push(f.customer_id.as_deref());
        agents.push(f.agent.as_deref());
        states.push(f.state.as_str());
        resolved.push(f.resolved_at);
        ended.push(f.ended_at);
        last.push(f.last_event_at);
        records.push(serde_json::to_string(f).map_err(|err| Error::Internal(anyhow::Error::new(err)))?);
    }
    sqlx::query(UPSERT_CONVERSATIONS)
        .bind(tenant)
        .bind(&ids)
        .bind(&opened)
        .bind(&channels)
        .bind(&customers)
        .bind(&agents)
        .bind(&states)
        .bind(&resolved)
        .bind(&ended)
        .bind(&last)
        .bind(&records)
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
    let row: Option<(Json<ConversationFacts>,)> =
        sqlx::query_as("select facts from conversations where tenant_id = $1 and conversation_id = $2")
            .bind(tenant)
            .bind(conversation_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(Json(f),)| f))
}

/// The stored facts of every conversation of a tenant, ordered by conversation id.
pub async fn all_conversation_facts(
    pool: &PgPool,
    tenant: TenantId,
) -> Result<Vec<ConversationFacts>, Error> {
    let rows: Vec<(Json<ConversationFacts>,)> =
        sqlx::query_as("select facts from conversations where tenant_id = $1 order by conversation_id")
            .bind(tenant)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(Json(f),)| f).collect())
}

/// Number of stored events of a tenant.
pub async fn count_events(pool: &PgPool, tenant: TenantId) -> Result<i64, Error> {
    let (n,): (i64,) = sqlx::query_as("select count(*) from events where tenant_id = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await?;
    Ok(n)
}
