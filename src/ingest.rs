//! Per-tenant write queues: merge the batches waiting for a tenant into one transaction.
//!
//! Why: a conversation's events usually arrive spread over many consecutive batches (streams
//! are in time order), so concurrent transactions of one tenant keep touching the same
//! conversations, wait on each other's conversation locks and recompute the same facts again
//! and again. One writer per tenant that takes everything queued (up to a cap) and stores it in
//! one transaction removes that contention and recomputes each touched conversation once per
//! merged batch. To keep both cores busy, a tenant has [`PARTITIONS`] writers, each owning the
//! conversations whose id hashes to it, so they never wait for each other. Acks still mean
//! "committed": a caller gets its answer after every transaction that carried its events
//! committed; if one of them fails the caller gets the error (a resend is safe: the events that
//! were stored come back as duplicates). Several replicas stay correct because the store still
//! takes the per-conversation locks.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::{
    domain::{Error, event::Event, tenant::TenantId},
    store,
};

/// Most events one merged transaction carries.
const MAX_MERGED_EVENTS: usize = 20_000;
/// Batches that may wait for one writer; further callers wait for room (backpressure).
const QUEUE_DEPTH: usize = 64;
/// Writers per tenant.
pub const PARTITIONS: usize = 2;

/// One caller's batch and where its answer goes.
struct Job {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<HashSet<String>, Error>>,
}

/// The writers of all tenants.
pub struct IngestQueue {
    pool: PgPool,
    writers: Mutex<HashMap<(TenantId, usize), mpsc::Sender<Job>>>,
}

impl IngestQueue {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            writers: Mutex::new(HashMap::new()),
        })
    }

    fn writer(&self, tenant: TenantId, partition: usize) -> mpsc::Sender<Job> {
        let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        writers
            .entry((tenant, partition))
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                tokio::spawn(write_loop(self.pool.clone(), tenant, rx));
                tx
            })
            .clone()
    }

    /// Stores validated events with distinct ids; returns the ids that were new. Returns after
    /// the transactions that carried them committed.
    pub async fn store(&self, tenant: TenantId, events: Vec<Event>) -> Result<HashSet<String>, Error> {
        let mut parts: Vec<Vec<Event>> = vec![Vec::new(); PARTITIONS];
        for event in events {
            parts[partition(&event)].push(event);
        }
        let mut answers = Vec::with_capacity(PARTITIONS);
        for (i, events) in parts.into_iter().enumerate().filter(|(_, e)| !e.is_empty()) {
            let (reply, answer) = oneshot::channel();
            self.writer(tenant, i)
                .send(Job { events, reply })
                .await
                .map_err(|_| Error::Unavailable("ingest writer stopped".into()))?;
            answers.push(answer);
        }
        let mut inserted = HashSet::new();
        for answer in answers {
            inserted.extend(
                answer
                    .await
                    .map_err(|_| Error::Unavailable("ingest writer stopped".into()))??,
            );
        }
        Ok(inserted)
    }
}

/// The writer owning an event: by conversation, so one conversation is always written by the
/// same writer; events without a conversation by their id.
fn partition(event: &Event) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    event
        .conversation_id
        .as_deref()
        .unwrap_or(&event.event_id)
        .hash(&mut h);
    (h.finish() % PARTITIONS as u64) as usize
}

async fn write_loop(pool: PgPool, tenant: TenantId, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut size = first.events.len();
        let mut jobs = vec![first];
        while size < MAX_MERGED_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // The first job (in queue order) carrying an id owns it; later copies are duplicates.
        let mut owner: HashMap<String, usize> = HashMap::with_capacity(size);
        let mut merged = Vec::with_capacity(size);
        for (i, job) in jobs.iter_mut().enumerate() {
            for event in std::mem::take(&mut job.events) {
                if !owner.contains_key(&event.event_id) {
                    owner.insert(event.event_id.clone(), i);
                    merged.push(event);
                }
            }
        }
        let result = store::events::store_batch(&pool, tenant, &merged).await;
        if jobs.len() > 1 {
            tracing::debug!(
                tenant,
                batches = jobs.len(),
                events = merged.len(),
                "merged batches"
            );
        }
        match result {
            Ok(inserted) => {
                let mut per_job: Vec<HashSet<String>> = vec![HashSet::new(); jobs.len()];
                for id in inserted {
                    if let Some(&i) = owner.get(&id) {
                        per_job[i].insert(id);
                    }
                }
                for (job, ids) in jobs.into_iter().zip(per_job) {
                    let _ = job.reply.send(Ok(ids));
                }
            }
            Err(err) => {
                tracing::warn!(tenant, error = ?err, batches = jobs.len(), "failed to store merged batch");
                for job in jobs {
                    let _ = job.reply.send(Err(copy_error(&err)));
                }
            }
        }
    }
}

/// The same error for every caller of a failed merged batch.
fn copy_error(err: &Error) -> Error {
    match err {
        Error::InvalidArgument { field, reason } => Error::invalid(field.clone(), reason.clone()),
        Error::NotFound(what) => Error::NotFound(what.clone()),
        Error::FailedPrecondition(why) => Error::FailedPrecondition(why.clone()),
        Error::Unauthenticated(why) => Error::Unauthenticated(why),
        Error::Unavailable(why) => Error::Unavailable(why.clone()),
        Error::Internal(_) => {
            Error::Internal(anyhow::anyhow!("storing the batch failed (logged by the writer)"))
        }
    }
}
