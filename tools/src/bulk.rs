//! The bulk path for benchmark data sets (not for production ingest): simulate a helpdesk and
//! write it through the store directly instead of over gRPC.
//!
//! Every simulated event is validated with the service's own rules first. With `facts_only`,
//! each conversation's facts are derived in-process with the service's derivation (the
//! simulator emits a conversation's whole event set on its opening day) and stored without the
//! message-level events they came from; presence and conversions, which queries read, are stored
//! as events. Without it, every event goes through the service's write path.

use std::{collections::HashMap, time::Instant};

use anyhow::Context;
use chatkpi::{
    domain::{event::Event, facts, tenant::TenantId},
    store,
};
use sqlx::PgPool;

use crate::{
    sim::{self, SimConfig},
    stream::validated,
};

/// Facts (or events) per transaction.
const CHUNK: usize = 5_000;

/// Creates a tenant, prints `tenant_id=` and `api_key=` lines, and loads the simulated helpdesk
/// into it.
pub async fn load(
    pool: &PgPool,
    tenant_name: &str,
    config: SimConfig,
    facts_only: bool,
    until_now: bool,
) -> anyhow::Result<()> {
    let (tenant, key) = store::tenants::create_tenant(pool, tenant_name)
        .await
        .context("cannot create the tenant")?;
    println!("tenant_id={tenant}");
    println!("api_key={}", key.plaintext);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Vec<Event>>>(2);
    let producer = tokio::task::spawn_blocking(move || {
        let now = chrono::Utc::now();
        sim::for_each_day(&config, |mut chunk| {
            if until_now {
                chunk.retain(|e| e.occurred_at <= now);
            }
            // A closed channel means the loader stopped on an error: the rest is not needed.
            let _ = tx.blocking_send(validated(chunk, now));
        });
    });
    let started = Instant::now();
    let (mut events, mut conversations) = (0u64, 0u64);
    while let Some(day) = rx.recv().await {
        let day = day?;
        events += day.len() as u64;
        if facts_only {
            conversations += store_facts_only(pool, tenant, &day).await?;
        } else {
            for chunk in day.chunks(CHUNK) {
                store::events::store_batch(pool, tenant, chunk).await?;
            }
        }
        eprintln!(
            "loaded {events} events ({conversations} conversations as facts), {:.0} events/s",
            events as f64 / started.elapsed().as_secs_f64()
        );
    }
    producer.await?;
    println!(
        "events={events} conversations={conversations} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stores a day's conversations as derived facts and its presence and conversions as events;
/// returns the number of conversations.
async fn store_facts_only(pool: &PgPool, tenant: TenantId, day: &[Event]) -> anyhow::Result<u64> {
    let mut by_conversation: HashMap<&str, Vec<Event>> = HashMap::new();
    let mut side = Vec::new();
    for e in day {
        match e.conversation_id.as_deref() {
            Some(c) if e.payload.belongs_to_conversation() => {
                by_conversation.entry(c).or_default().push(e.clone())
            }
            _ => side.push(e.clone()),
        }
    }
    let derived: Vec<facts::ConversationFacts> = by_conversation
        .iter()
        .filter_map(|(id, events)| facts::derive(id, events))
        .collect();
    for chunk in derived.chunks(CHUNK) {
        store::events::store_facts(pool, tenant, chunk).await?;
    }
    for chunk in side.chunks(CHUNK) {
        store::events::store_batch(pool, tenant, chunk).await?;
    }
    Ok(derived.len() as u64)
}
