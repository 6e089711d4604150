//! Per-tenant write queues: batches waiting for a tenant are merged into one transaction.
//!
//! Why merge: a conversation's events usually arrive spread over many consecutive batches
//! (streams are in time order), so one transaction per batch makes concurrent transactions of a
//! tenant wait on each other's conversation locks and recompute the same facts again and again.
//! A writer that takes everything queued (up to [`MAX_MERGED_EVENTS`]) recomputes each touched
//! conversation once.
//!
//! What an answer means: a client batch is never split, so it is stored in exactly one
//! transaction. An acknowledged batch is committed whole; a batch reported failed was stored
//! whole or not at all (whole only when the commit's outcome was lost with the connection), so
//! resending it is always correct. When a merged transaction fails, its batches are stored again
//! one by one and only the batch at fault fails. Several replicas stay correct because the store
//! takes a lock per conversation.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, oneshot};

use crate::domain::{Error, event::Event, tenant::TenantId};

/// Most events one merged transaction carries. A writer holds them, their JSON and the
/// statement's arguments until it commits: the soak of RELIABILITY.md (session 27) peaked when
/// writers that had fallen behind a busy moment merged 20,000 each.
pub const MAX_MERGED_EVENTS: usize = 10_000;
/// Batches that may wait for a tenant; further callers wait for room (backpressure).
const QUEUE_DEPTH: usize = 64;

/// Where batches are stored: one transaction per call.
pub trait EventStore: Send + Sync + 'static {
    /// Stores events with distinct ids in one transaction; returns the ids that were new (the
    /// others were stored before).
    fn store_batch(
        &self,
        tenant: TenantId,
        events: &[&Event],
    ) -> impl Future<Output = Result<HashSet<String>, Error>> + Send;
}

/// One caller's batch and where its answer goes.
struct Job {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<HashSet<String>, Error>>,
}

/// The write queues of all tenants.
pub struct Writer<S> {
    store: Arc<S>,
    /// Writer tasks per tenant, all draining the tenant's one queue.
    writers: usize,
    queues: Mutex<HashMap<TenantId, mpsc::Sender<Job>>>,
}

impl<S: EventStore> Writer<S> {
    pub fn new(store: S, writers: usize) -> Arc<Self> {
        Arc::new(Self {
            store: Arc::new(store),
            writers: writers.max(1),
            queues: Mutex::new(HashMap::new()),
        })
    }

    fn queue(&self, tenant: TenantId) -> mpsc::Sender<Job> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .entry(tenant)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                for _ in 0..self.writers {
                    tokio::spawn(write_loop(self.store.clone(), tenant, rx.clone()));
                }
                tx
            })
            .clone()
    }

    /// Stores a batch of validated events with distinct ids; returns the ids that were new. The
    /// answer comes after the transaction that carried the batch committed.
    pub async fn store(&self, tenant: TenantId, events: Vec<Event>) -> Result<HashSet<String>, Error> {
        if events.is_empty() {
            return Ok(HashSet::new());
        }
        let (reply, answer) = oneshot::channel();
        self.queue(tenant)
            .send(Job { events, reply })
            .await
            .map_err(|_| Error::Unavailable("ingest writer stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("ingest writer stopped".into()))?
    }

    /// Batches waiting in all queues (a metric of write pressure).
    pub fn queued(&self) -> usize {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.values().map(|q| QUEUE_DEPTH - q.capacity()).sum()
    }
}

async fn write_loop<S: EventStore>(
    store: Arc<S>,
    tenant: TenantId,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
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
            jobs
        };
        store_jobs(store.as_ref(), tenant, jobs).await;
    }
}

/// Stores the events of several jobs in one transaction (borrowed, not copied); returns the new
/// ids of each job. The first job (in queue order) carrying an id owns it; later copies are
/// duplicates.
async fn store_merged<S: EventStore>(
    store: &S,
    tenant: TenantId,
    jobs: &[Job],
) -> Result<Vec<HashSet<String>>, Error> {
    let size = jobs.iter().map(|j| j.events.len()).sum();
    let mut owner: HashMap<&str, usize> = HashMap::with_capacity(size);
    let mut merged: Vec<&Event> = Vec::with_capacity(size);
    for (i, job) in jobs.iter().enumerate() {
        for event in &job.events {
            if !owner.contains_key(event.event_id.as_str()) {
                owner.insert(&event.event_id, i);
                merged.push(event);
            }
        }
    }
    let inserted = store.store_batch(tenant, &merged).await?;
    let mut per_job: Vec<HashSet<String>> = vec![HashSet::new(); jobs.len()];
    for id in inserted {
        if let Some(&i) = owner.get(id.as_str()) {
            per_job[i].insert(id);
        }
    }
    Ok(per_job)
}

/// Stores the jobs in one transaction, or one by one when that fails, and answers each.
async fn store_jobs<S: EventStore>(store: &S, tenant: TenantId, mut jobs: Vec<Job>) {
    if jobs.len() == 1 {
        store_alone(store, tenant, jobs.remove(0)).await;
        return;
    }
    match store_merged(store, tenant, &jobs).await {
        Ok(per_job) => {
            for (job, ids) in jobs.into_iter().zip(per_job) {
                let _ = job.reply.send(Ok(ids));
            }
        }
        Err(err) => {
            tracing::warn!(tenant = tenant.0, error = %err, batches = jobs.len(), "a merged write failed, storing its batches one by one");
            for job in jobs {
                store_alone(store, tenant, job).await;
            }
        }
    }
}

/// Stores one job's batch in a transaction of its own and answers it.
async fn store_alone<S: EventStore>(store: &S, tenant: TenantId, job: Job) {
    let result = store
        .store_batch(tenant, &job.events.iter().collect::<Vec<_>>())
        .await;
    if let Err(err) = &result {
        tracing::warn!(tenant = tenant.0, error = %err, events = job.events.len(), "failed to store a batch");
    }
    let _ = job.reply.send(result);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::Utc;

    use super::*;
    use crate::domain::event::Payload;

    /// Fails every transaction that carries a `poison` event; remembers what it stored.
    #[derive(Default)]
    struct FakeStore {
        stored: Mutex<HashSet<String>>,
        transactions: AtomicUsize,
    }

    impl EventStore for FakeStore {
        async fn store_batch(&self, _tenant: TenantId, events: &[&Event]) -> Result<HashSet<String>, Error> {
            self.transactions.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            if events.iter().any(|e| e.event_id.starts_with("poison")) {
                return Err(Error::Internal(anyhow::anyhow!("the database refused a value")));
            }
            let mut stored = self.stored.lock().unwrap();
            Ok(events
                .iter()
                .filter(|e| stored.insert(e.event_id.clone()))
                .map(|e| e.event_id.clone())
                .collect())
        }
    }

    fn event(id: &str) -> Event {
        Event {
            event_id: id.into(),
            conversation_id: Some("c".into()),
            occurred_at: Utc::now(),
            payload: Payload::Handoff,
        }
    }

    #[tokio::test]
    async fn a_failing_batch_fails_alone_and_the_others_are_stored_whole() {
        let writer = Writer::new(FakeStore::default(), 1);
        let batches: Vec<Vec<Event>> = (0..6)
            .map(|b| {
                let mut events: Vec<Event> = (0..5).map(|i| event(&format!("b{b}-e{i}"))).collect();
                if b == 3 {
                    events.insert(2, event("poison"));
                }
                events
            })
            .collect();
        let answers =
            futures::future::join_all(batches.into_iter().map(|b| writer.store(TenantId(1), b))).await;
        for (b, answer) in answers.iter().enumerate() {
            if b == 3 {
                assert!(answer.is_err(), "the poisoned batch fails");
            } else {
                assert_eq!(answer.as_ref().unwrap().len(), 5, "batch {b} stored whole");
            }
        }
        let stored = writer.store.stored.lock().unwrap().clone();
        assert_eq!(stored.len(), 25, "none of the poisoned batch's events");
        assert!(stored.iter().all(|id| !id.starts_with("b3-")));
    }

    #[tokio::test]
    async fn waiting_batches_are_merged_and_a_repeated_id_belongs_to_the_first() {
        let writer = Writer::new(FakeStore::default(), 1);
        let a = vec![event("x"), event("y")];
        let b = vec![event("y"), event("z")];
        let (ra, rb) = tokio::join!(writer.store(TenantId(7), a), writer.store(TenantId(7), b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra, ["x", "y"].iter().map(|s| s.to_string()).collect());
        assert_eq!(rb, ["z"].iter().map(|s| s.to_string()).collect());
        assert!(writer.store.transactions.load(Ordering::Relaxed) <= 2);
    }
}
