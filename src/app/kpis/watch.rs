//! Watched overviews, one computation per question: the watches of a tenant that ask the same
//! question (the same query, window or sliding length, interval) share one ticking computation
//! and each receives its pushes (docs/metrics.md §6, "Edge cases": `WatchOverview`).
//!
//! A support floor opens the same team overview on every agent's screen: without sharing, N
//! screens cost N computations per tick, and at the soak's load they were part of the
//! transient above the cache's budget (RELIABILITY.md, sessions 27 and 29). Each watch
//! keeps its own stream slot and its own reader: a watch whose client does not read holds
//! only the latest push (older ones are replaced, never queued), and never delays the others.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use chrono::Utc;
use tokio::sync::{Notify, mpsc, watch};

use super::{KpiService, WatchUpdate, single};
use crate::{
    domain::{
        Error,
        query::{AskedKind, Query, Window},
        tenant::TenantId,
        time::{Span, micros},
    },
    engine::kpi::{Grouping, Reads},
};

/// What a watch receives: the latest push (none before the first computation ends).
type Push = Option<Arc<Computed>>;

/// One computation's push: the overview and the data version it saw, or the error that ended
/// the shared computation.
struct Computed {
    result: Result<WatchUpdate, Error>,
    version: Option<u64>,
}

/// The shared computations in progress, by question.
#[derive(Default)]
pub(super) struct Watches {
    hubs: Mutex<HashMap<HubKey, Weak<Hub>>>,
}

/// The question a computation answers for all its watches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HubKey {
    tenant: TenantId,
    interval: Duration,
    sliding: bool,
    /// The query (with its window, or only its length when sliding), as written by `Debug`:
    /// every field counts.
    query: String,
}

impl HubKey {
    fn new(tenant: TenantId, query: &Query, interval: Duration, sliding: bool) -> Self {
        let mut q = query.clone();
        if sliding {
            // Only the length of a sliding window is asked; where it lies follows the clock.
            let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH;
            q.window = Window {
                from: epoch,
                to: epoch + query.window.length(),
            };
        }
        HubKey {
            tenant,
            interval,
            sliding,
            query: format!("{q:?}"),
        }
    }
}

/// One shared computation: its latest push, which every watch of it reads. The computation
/// runs while a watch holds it, and stops as soon as none does (not at its next tick, which
/// may be an hour away).
struct Hub {
    pushes: watch::Sender<Push>,
    gone: Arc<Notify>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        // Kept as a permit when the computation is not waiting for its tick right now.
        self.gone.notify_one();
    }
}

impl Watches {
    /// A watch of `query`: joins the computation of the same question if one runs (its latest
    /// push comes first), else starts it. The receiver ends after an error, or never while read.
    pub(super) fn watch(
        self: &Arc<Self>,
        service: &KpiService,
        tenant: TenantId,
        query: Query,
        interval: Duration,
        sliding: bool,
    ) -> mpsc::Receiver<Result<WatchUpdate, Error>> {
        let key = HubKey::new(tenant, &query, interval, sliding);
        let (tx, rx) = mpsc::channel(1);
        let watch = Watch {
            watches: self.clone(),
            service: service.clone(),
            key,
            query,
        };
        tokio::spawn(watch.forward(tx));
        rx
    }

    fn join_or_start(self: &Arc<Self>, service: &KpiService, key: &HubKey, query: &Query) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hub) = hubs.get(key).and_then(Weak::upgrade) {
            return hub;
        }
        // Entries of computations that ended are dropped as new ones start.
        hubs.retain(|_, hub| hub.strong_count() > 0);
        let gone = Arc::new(Notify::new());
        let hub = Arc::new(Hub {
            pushes: watch::Sender::new(None),
            gone: gone.clone(),
        });
        hubs.insert(key.clone(), Arc::downgrade(&hub));
        let run = Run {
            service: service.clone(),
            watches: self.clone(),
            key: key.clone(),
            query: query.clone(),
            hub: Arc::downgrade(&hub),
            gone,
        };
        tokio::spawn(run.ticks());
        hub
    }

    /// Forgets `key`'s computation, if it is still `hub`'s.
    fn ended(&self, key: &HubKey, hub: &Weak<Hub>) {
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        if hubs.get(key).is_some_and(|h| h.ptr_eq(hub)) {
            hubs.remove(key);
        }
    }
}

/// One open watch.
struct Watch {
    watches: Arc<Watches>,
    service: KpiService,
    key: HubKey,
    query: Query,
}

impl Watch {
    /// Pushes the latest overview of the question's computation to the client, as it reads: a
    /// push the client has not taken yet is replaced by a newer one, not queued. Holding the
    /// [`Hub`] keeps the computation running; a client that has not taken its last push for
    /// a whole interval lets go of it until it reads again (then it joins again, or starts
    /// the computation anew, and a fixed window's overview of data it already has is not
    /// pushed twice).
    async fn forward(self, tx: mpsc::Sender<Result<WatchUpdate, Error>>) {
        let mut sent: Option<Arc<Computed>> = None;
        let mut hub = self.watches.join_or_start(&self.service, &self.key, &self.query);
        loop {
            let permit = match tokio::time::timeout(self.key.interval, tx.reserve()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return,
                Err(_) => {
                    drop(hub);
                    let Ok(permit) = tx.reserve().await else { return };
                    hub = self.watches.join_or_start(&self.service, &self.key, &self.query);
                    permit
                }
            };
            let Some(push) = next_push(&hub, sent.as_deref(), self.key.sliding, &tx).await else {
                return;
            };
            let message = match &push.result {
                Ok(update) => Ok(update.clone()),
                Err(err) => Err(err.duplicate()),
            };
            let failed = message.is_err();
            permit.send(message);
            if failed {
                return;
            }
            sent = Some(push);
        }
    }
}

/// The hub's latest push once it is new to this watch (at once when it already is): not the
/// push `sent` last, nor, for a fixed window, one of the same data version. `None` when the
/// client went away.
async fn next_push(
    hub: &Hub,
    sent: Option<&Computed>,
    sliding: bool,
    tx: &mpsc::Sender<Result<WatchUpdate, Error>>,
) -> Option<Arc<Computed>> {
    let mut pushes = hub.pushes.subscribe();
    pushes.mark_changed();
    loop {
        tokio::select! {
            changed = pushes.changed() => changed.ok()?,
            () = tx.closed() => return None,
        }
        let Some(push) = pushes.borrow_and_update().clone() else {
            continue;
        };
        let seen =
            sent.is_some_and(|s| std::ptr::eq(s, push.as_ref()) || (!sliding && s.version == push.version));
        if !seen {
            return Some(push);
        }
    }
}

/// The ticking computation of one question.
struct Run {
    service: KpiService,
    watches: Arc<Watches>,
    key: HubKey,
    query: Query,
    hub: Weak<Hub>,
    /// Notified when the last watch let go of the hub.
    gone: Arc<Notify>,
}

impl Run {
    /// Computes the overview every interval (skipping a tick when a fixed window's data did not
    /// change) while a watch is open, and publishes it; ends after an error.
    async fn ticks(self) {
        let (tenant, sliding) = (self.key.tenant, self.key.sliding);
        let mut last_version: Option<u64> = None;
        let mut ticker = tokio::time::interval(self.key.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.gone.notified() => break,
            }
            let Some(hub) = self.hub.upgrade() else { break };
            let mut q = self.query.clone();
            if sliding {
                let length = q.window.length();
                q.window.to = Utc::now();
                q.window.from = q.window.to - length;
            }
            // Debounce: compute and push only when the data changed (a sliding window moves
            // with the clock, so it is recomputed every tick).
            let seen = if sliding { None } else { last_version };
            let window = Span {
                start: micros(q.window.from),
                end: micros(q.window.to),
            };
            let reads = Reads::summary(&q, Grouping::All);
            let computed = self
                .service
                .compute(tenant, &q, reads, seen, |c, _| Ok(single(c.run(Grouping::All)?)))
                .await;
            let push = match computed {
                Ok(None) => continue,
                Ok(Some((kpis, version))) => {
                    if last_version.is_none() {
                        // A watched overview is the dashboard's overview.
                        let kind = AskedKind::Overview {
                            compare_previous: false,
                        };
                        self.service.asked.note(tenant, &q, kind);
                    }
                    last_version = Some(version);
                    Computed {
                        result: Ok(WatchUpdate { kpis, window }),
                        version: last_version,
                    }
                }
                Err(err) => Computed {
                    result: Err(err),
                    version: None,
                },
            };
            let failed = push.result.is_err();
            hub.pushes.send_replace(Some(Arc::new(push)));
            if failed {
                break;
            }
        }
        self.watches.ended(&self.key, &self.hub);
    }
}
