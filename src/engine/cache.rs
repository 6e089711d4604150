//! The query cache: each tenant's day segments, names, presence and conversions in memory,
//! within one byte budget, brought up to date with the event store (a [`Source`]) before every
//! query.
//!
//! A query asks for a [`View`] with the [`Reads`] of its computation. Under the tenant's refresh
//! lock, in one read-only repeatable-read transaction, the cache
//! 1. reads what changed since the tenant's previous refresh (conversation records, presence
//!    and conversions written at or after its xmin) and merges it into the segments it holds;
//! 2. picks the days whose bounds the computation reads and loads the missing ones: from a
//!    persisted snapshot plus the records changed since it, or from the records alone;
//! 3. releases the lock and returns `Arc`s of immutable segments: the computation, and any
//!    stream to a slow client, never holds the tenant's lock.
//!
//! The budget is in bytes (moka weighs every entry); evicted segments are read again when a
//! query needs them. Segments built from records are persisted as snapshots in the background,
//! so the next process loads a day in one read.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::NaiveDate;
use moka::sync::Cache;
use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore};

use super::{
    intern::Interner,
    kpi::{
        ConversionRec, Data, PresenceChange, Reads,
        partial::{Changes, Partial, PartialKey, PartialStore},
        stored,
    },
    record,
    schedule::{Lane, Scheduler},
    segment::{Bounds, NEVER_PERSISTED, Segment, snapshot},
    side,
    source::{DayRows, SideEvent, Snapshot, SnapshotPart, Source, SourceReads, StoredConversation},
};
use crate::domain::{
    Error,
    event::Payload,
    facts::ConversationFacts,
    tenant::TenantId,
    time::{Micros, OPEN_END, Span, micros},
};

/// Connections reading a tenant's days at once when they are loaded.
const READERS: usize = 2;

mod totals;

/// A segment that drifted from its snapshot by this share of its rows is persisted again.
const PERSIST_DRIFT: usize = 10;
/// ...but at most once per this interval per day.
const PERSIST_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Tenant(TenantId),
    /// (tenant, the tenant state's generation, day): a tenant state that was evicted and
    /// rebuilt has new ids for its names, so its old segments are never used again.
    Segment(TenantId, u64, NaiveDate),
    /// A segment's totals for one question shape (`kpi::partial`).
    Partial(PartialKey),
}

#[derive(Clone)]
enum Value {
    Tenant(Arc<TenantEntry>),
    Segment(Arc<Segment>),
    Partial(Arc<Partial>),
}

impl Value {
    fn weight(&self) -> u32 {
        let bytes = match self {
            Value::Tenant(t) => t.weight.load(Ordering::Relaxed) as usize,
            Value::Segment(s) => s.heap_bytes(),
            Value::Partial(p) => p.heap_bytes(),
        };
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// What a computation reads, consistent as of one database snapshot.
pub struct View {
    pub data: Data,
    /// Names of customer ids (drill-down rows).
    pub customers: Arc<RwLock<Interner>>,
    /// Incremented whenever the tenant's data changed: watchers skip unchanged ticks.
    pub version: u64,
    /// What the data is as of: an answer computed from it holds while nothing changed since.
    pub as_of: AsOf,
}

/// The database state a [`View`] holds: every conversation record, presence and conversion
/// written by a transaction below `xmin` (and perhaps some at or above it), with `erasures`
/// erasures done. Its answers hold while the tenant has no record changed and no presence or
/// conversion event written at or after `xmin`, and still `erasures` erasures (the same
/// signals a refresh reads, [`QueryCache::view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsOf {
    pub xmin: i64,
    pub erasures: i64,
}

struct TenantEntry {
    state: Arc<Mutex<TenantState>>,
    /// The load under way, read by calls that stop waiting for it.
    progress: Progress,
    /// Kept totals persisted, by key: of which segment version, on which basis (`totals`).
    persisted_totals: std::sync::Mutex<HashMap<PartialKey, (u64, stored::Basis)>>,
    /// [`QueryCache::day_totals_kept`] when the tenant's last computation ended, and whether a
    /// pass persisting its totals is waiting to start (`totals`).
    totals_seen: AtomicU64,
    totals_pass: std::sync::atomic::AtomicBool,
    /// Bytes held by the tenant's names, presence and conversions (its segments weigh apart).
    weight: AtomicU32,
    /// Whether a refresh of the tenant ended well since the entry was made.
    refreshed: std::sync::atomic::AtomicBool,
}

/// How far the days a tenant's refresh loads are (readable without the tenant's lock).
#[derive(Default)]
struct Progress {
    /// Days the running load reads (0: no load running).
    days: AtomicU32,
    loaded: AtomicU32,
    started: std::sync::Mutex<Option<Instant>>,
}

impl Progress {
    /// Marks a load of `days` days as running until the guard returned drops.
    fn start(&self, days: usize) -> Loading<'_> {
        self.loaded.store(0, Ordering::Relaxed);
        self.days
            .store(u32::try_from(days).unwrap_or(u32::MAX), Ordering::Relaxed);
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Loading(self)
    }

    /// The error of a call that stopped waiting for the tenant's refresh, saying how far its
    /// load is.
    fn still_loading(&self) -> Error {
        let days = self.days.load(Ordering::Relaxed);
        let started = *self.started.lock().unwrap_or_else(|p| p.into_inner());
        let status = match started {
            Some(at) if days > 0 => format!(
                "loading the tenant's data into memory: {} of {days} days after {} s",
                self.loaded.load(Ordering::Relaxed),
                at.elapsed().as_secs()
            ),
            _ => "the tenant's data is being brought up to date".to_owned(),
        };
        Error::Unavailable(format!(
            "{status}; the load goes on without this call, retry in a few seconds"
        ))
    }
}

/// A load under way: ends it in its [`Progress`] when dropped (finished or failed).
struct Loading<'a>(&'a Progress);

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.0.days.store(0, Ordering::Relaxed);
    }
}

/// One tenant's query state; guarded by the tenant's refresh lock.
struct TenantState {
    tenant: TenantId,
    generation: u64,
    /// xmin of the database snapshot of the last refresh; `None` before the first.
    xmin: Option<i64>,
    /// Where each day's conversations lie in time (widened by changes, exact once a segment of
    /// the day is built).
    days: BTreeMap<NaiveDate, Bounds>,
    /// Symbol names; shared with running computations, copied on the rare new name.
    symbols: Arc<Interner>,
    customers: Arc<RwLock<Interner>>,
    /// Presence changes with their event ids, sorted by (agent, time, event id); shared with a
    /// snapshot being written.
    presence: Arc<Vec<(Box<str>, PresenceChange)>>,
    presence_view: Arc<Vec<PresenceChange>>,
    /// Conversions sorted by time.
    conversions: Arc<Vec<ConversionRec>>,
    /// Which customers' openings and conversions changed (see `Data::changes`).
    changes: Arc<Changes>,
    /// Presence and conversion events a later refresh may read again (written by transactions
    /// at or after the last xmin), to apply each once.
    recent_side_events: HashMap<Box<str>, i64>,
    /// Presence and conversion events applied since the tenant's side snapshot was loaded or
    /// written ([`NEVER_PERSISTED`] when there is none).
    side_unpersisted: usize,
    side_persisted_at: Option<Instant>,
    /// The `built_xmin` of the side snapshot last loaded or written: presence and conversions
    /// are exactly that snapshot while [`Self::side_unpersisted`] is 0.
    side_xmin: Option<i64>,
    version: u64,
    persisted_at: HashMap<NaiveDate, Instant>,
    /// The tenant's erasure counter when the state was read (`None` before the first refresh):
    /// when the database's moves, the state is rebuilt (a deletion leaves no changed row).
    erasures: Option<i64>,
    /// What the running refresh loaded on top of snapshots (`totals`).
    loaded: totals::Loaded,
    /// The stored snapshot of each day, and of presence and conversions, with the change-log
    /// version whose state it holds, when known (`totals`: totals are persisted on them).
    stored: HashMap<NaiveDate, totals::StoredAt>,
    side_stored: Option<totals::StoredAt>,
}

impl TenantState {
    fn new(tenant: TenantId, generation: u64) -> Self {
        Self {
            tenant,
            generation,
            xmin: None,
            days: BTreeMap::new(),
            symbols: Arc::new(Interner::new()),
            customers: Arc::new(RwLock::new(Interner::new())),
            presence: Arc::default(),
            presence_view: Arc::default(),
            conversions: Arc::default(),
            changes: Arc::default(),
            recent_side_events: HashMap::new(),
            side_unpersisted: 0,
            side_persisted_at: None,
            side_xmin: None,
            version: 0,
            persisted_at: HashMap::new(),
            erasures: None,
            loaded: totals::Loaded::default(),
            stored: HashMap::new(),
            side_stored: None,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.symbols.heap_bytes()
            + read(&self.customers).heap_bytes()
            + self.presence.capacity() * (std::mem::size_of::<PresenceChange>() + 48)
            + self.conversions.capacity() * std::mem::size_of::<ConversionRec>()
            + self.days.len() * 96
            + self.recent_side_events.len() * 64
            + self.changes.heap_bytes()
    }

    /// The tenant id of symbol `name`; the shared table is copied only for a new name.
    fn symbol(&mut self, name: &str) -> u32 {
        match self.symbols.get(name) {
            Some(id) => id,
            None => Arc::make_mut(&mut self.symbols).intern(name),
        }
    }
}

fn read(lock: &RwLock<Interner>) -> std::sync::RwLockReadGuard<'_, Interner> {
    // Interning cannot leave the table half-updated: recover from a poisoned lock.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write(lock: &RwLock<Interner>) -> std::sync::RwLockWriteGuard<'_, Interner> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// The cache of every tenant's query data, read from `S`.
pub struct QueryCache<S> {
    source: S,
    budget: u64,
    /// How long a call waits for its tenant's refresh before answering UNAVAILABLE with the
    /// load's progress (the load goes on).
    patience: Duration,
    entries: Cache<Key, Value>,
    generations: AtomicU64,
    /// One snapshot write at a time: persisting is background work.
    snapshot_writes: Arc<Semaphore>,
    /// Records a load reads of a day at a time ([`LOAD_BATCH`]).
    load_batch: AtomicUsize,
    /// Day totals kept so far, all tenants: a computation that ends with it moved persists its
    /// tenant's new ones ([`QueryCache::computed`]).
    day_totals_kept: AtomicU64,
}

impl<S: Source> QueryCache<S> {
    /// A cache of the data of `source` holding at most `budget` bytes, whose calls wait at most
    /// `patience` for their tenant's data.
    pub fn new(source: S, budget: u64, patience: Duration) -> Arc<Self> {
        let entries = Cache::builder()
            .max_capacity(budget)
            // Least recently used goes first. (moka's default, TinyLFU, admits a new entry only
            // when it was asked for more often than what it would evict: the totals a live
            // tenant computes again after each change are new entries every time, and were
            // refused while older ones filled the budget.)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_: &Key, v: &Value| v.weight())
            .support_invalidation_closures()
            .build();
        Arc::new(Self {
            source,
            budget,
            patience,
            entries,
            generations: AtomicU64::new(1),
            snapshot_writes: Arc::new(Semaphore::new(1)),
            load_batch: AtomicUsize::new(LOAD_BATCH),
            day_totals_kept: AtomicU64::new(0),
        })
    }

    /// Bytes held (approximately: moka applies writes in the background).
    pub fn bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    /// Loads read a day's records `records` at a time from now on (at least one; [`LOAD_BATCH`]
    /// unless set): fewer hold less memory in flight, more take fewer merges.
    pub fn load_in_batches_of(&self, records: usize) {
        self.load_batch.store(records.max(1), Ordering::Relaxed);
    }

    /// The bytes its entries may hold.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes held per kind of entry: tenants' tables, day segments, kept totals.
    pub fn bytes_by_kind(&self) -> [(&'static str, u64); 3] {
        let mut sums = [("tenant", 0u64), ("segment", 0), ("totals", 0)];
        for (_, value) in self.entries.iter() {
            let i = match value {
                Value::Tenant(_) => 0,
                Value::Segment(_) => 1,
                Value::Partial(_) => 2,
            };
            sums[i].1 += u64::from(value.weight());
        }
        sums
    }

    /// Loads the last `days` days of the tenants queried in the last day (whose snapshots were
    /// written recently), most recent first, until half the budget is used or `deadline`
    /// passes: after a restart, their dashboards find their data in memory. Returns the
    /// tenants warmed, in that order.
    pub async fn warm_up(self: &Arc<Self>, days: u32, deadline: Duration) -> Vec<TenantId> {
        let mut warmed = Vec::new();
        if days == 0 {
            return warmed;
        }
        let started = Instant::now();
        let since = chrono::Utc::now() - chrono::Duration::days(1);
        let tenants = match self.source.recently_queried(since).await {
            Ok(t) => t,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list tenants to warm up");
                return warmed;
            }
        };
        for (tenant, last_day) in tenants {
            if started.elapsed() > deadline || self.bytes() > self.budget / 2 {
                break;
            }
            let to = last_day + chrono::Duration::days(1);
            let from = to - chrono::Duration::days(i64::from(days));
            let span = Span {
                start: micros(from.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()),
                end: micros(to.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()),
            };
            match tokio::time::timeout(
                deadline.saturating_sub(started.elapsed()),
                self.view(tenant, &Reads::active(span)),
            )
            .await
            {
                Ok(Ok(_)) => warmed.push(tenant),
                Ok(Err(err)) => tracing::warn!(tenant = tenant.0, error = %err, "warm-up failed"),
                Err(_) => break,
            }
        }
        tracing::info!(
            tenants = warmed.len(),
            ms = started.elapsed().as_millis() as u64,
            cache_bytes = self.bytes(),
            "query cache warmed up"
        );
        warmed
    }

    fn tenant(&self, tenant: TenantId) -> Arc<TenantEntry> {
        let value = self.entries.get_with(Key::Tenant(tenant), || {
            let generation = self.generations.fetch_add(1, Ordering::Relaxed);
            Value::Tenant(Arc::new(TenantEntry {
                state: Arc::new(Mutex::new(TenantState::new(tenant, generation))),
                progress: Progress::default(),
                persisted_totals: Default::default(),
                totals_seen: AtomicU64::new(0),
                totals_pass: Default::default(),
                weight: AtomicU32::new(0),
                refreshed: Default::default(),
            }))
        });
        match value {
            Value::Tenant(t) => t,
            // Keys and values are paired by construction.
            _ => unreachable!("a tenant key holds a tenant entry"),
        }
    }

    /// The tenant's data for a computation that reads `reads`, up to date with everything
    /// committed when it was asked for.
    ///
    /// The refresh runs in a task of its own: a call that waited its patience (a load of a large
    /// history from its records can take minutes) gets UNAVAILABLE with the load's progress
    /// while the load goes on, and a later call finds the days in memory, instead of every call
    /// timing out and starting over. One load per tenant at a time: it holds the tenant's lock.
    pub async fn view(self: &Arc<Self>, tenant: TenantId, reads: &Reads) -> Result<View, Error> {
        let entry = self.tenant(tenant);
        let started = Instant::now();
        let Ok(state) = tokio::time::timeout(self.patience, entry.state.clone().lock_owned()).await else {
            return Err(entry.progress.still_loading());
        };
        let (cache, reads, held) = (self.clone(), reads.clone(), entry.clone());
        let refresh = async move { cache.refresh_held(&held, state, &reads, started).await };
        let task = match WORKER.try_with(Clone::clone) {
            Ok(worker) => tokio::spawn(WORKER.scope(worker, refresh)),
            Err(_) => tokio::spawn(refresh),
        };
        match tokio::time::timeout(self.patience.saturating_sub(started.elapsed()), task).await {
            Ok(done) => done
                .map_err(|e| Error::Internal(anyhow::Error::new(e).context("query cache refresh failed")))?,
            Err(_) => Err(entry.progress.still_loading()),
        }
    }

    /// [`Self::refresh`] of the tenant of `entry`, whose lock `state` is, and the entry's
    /// bookkeeping: its weight, or its reset when it grew too large or failed half-way.
    async fn refresh_held(
        self: &Arc<Self>,
        entry: &Arc<TenantEntry>,
        state: OwnedMutexGuard<TenantState>,
        reads: &Reads,
        started: Instant,
    ) -> Result<View, Error> {
        let tenant = state.tenant;
        match self.refresh(state, reads, &entry.progress).await {
            Ok((view, bytes)) => {
                tracing::debug!(
                    tenant = tenant.0,
                    segments = view.data.segments.len(),
                    ms = started.elapsed().as_millis() as u64,
                    cache_bytes = self.entries.weighted_size(),
                    cache_entries = self.entries.entry_count(),
                    "query data ready"
                );
                entry
                    .weight
                    .store(u32::try_from(bytes).unwrap_or(u32::MAX), Ordering::Relaxed);
                entry.refreshed.store(true, Ordering::Relaxed);
                if bytes as u64 > self.budget / 4 {
                    // Names of a huge history: start the tenant afresh with what queries read.
                    tracing::warn!(
                        tenant = tenant.0,
                        bytes,
                        "tenant query state over a quarter of the cache, resetting it"
                    );
                    self.entries.invalidate(&Key::Tenant(tenant));
                } else {
                    // Re-inserting makes moka weigh the entry again.
                    self.entries
                        .insert(Key::Tenant(tenant), Value::Tenant(entry.clone()));
                }
                Ok(view)
            }
            Err(err) => {
                if matches!(err, Error::Internal(_)) {
                    // The state may be half-updated: the next query starts the tenant afresh.
                    self.entries.invalidate(&Key::Tenant(tenant));
                }
                Err(err)
            }
        }
    }

    /// Brings the tenant's state up to date with the database (erasures, changed rows, presence
    /// and conversions), loads the days `reads` needs that it does not hold and returns what a
    /// computation reads, with the state's bytes.
    async fn refresh(
        self: &Arc<Self>,
        state: OwnedMutexGuard<TenantState>,
        reads: &Reads,
        progress: &Progress,
    ) -> Result<(View, usize), Error> {
        let tenant = state.tenant;
        // Milliseconds since the refresh began at the end of each phase, logged at debug: where
        // a slow refresh spent its time (BENCHMARKS.md, "Live tenants", session 25).
        let started = Instant::now();
        let mut db = self.source.begin().await?;
        let xmin = db.xmin();
        let (state, news) = self.read_news(state, &mut db).await?;
        let read_ms = started.elapsed().as_secs_f64() * 1e3;
        let cache = self.clone();
        let reads = reads.clone();
        let (mut state, mut picked, missing, side) =
            blocking(move || cache.apply_news(state, news, xmin, &reads)).await?;
        let applied_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut restored = Vec::new();
        if !missing.is_empty() {
            let started = Instant::now();
            let days = missing.len();
            let _loading = progress.start(days);
            let (s, loaded) = self.load(state, &mut db, missing, progress).await?;
            state = s;
            tracing::info!(
                tenant = tenant.0,
                days,
                conversations = loaded.iter().map(|s| s.len()).sum::<usize>(),
                ms = started.elapsed().as_millis() as u64,
                "day segments loaded"
            );
            restored.extend(loaded.iter().map(|s| s.day));
            picked.extend(loaded);
        }
        if let Some(reading) = side {
            let read = reading.await.map_err(|e| {
                Error::Internal(anyhow::Error::new(e).context("presence and conversions reader failed"))
            })??;
            state = blocking(move || {
                let mut state = state;
                state.apply_side_read(read, xmin);
                Ok(state)
            })
            .await?;
        }
        if !restored.is_empty() {
            state = self.restore_totals(state, &mut db, &restored).await?;
        }
        db.finish().await?;
        tracing::debug!(
            tenant = tenant.0,
            read_ms,
            applied_ms,
            finished_ms = started.elapsed().as_secs_f64() * 1e3,
            "refresh phases"
        );
        Ok(self.refreshed_view(state, picked, xmin))
    }

    /// What changed for the tenant since its state's refresh, read in `db`'s snapshot: erasures
    /// (a state the erasure log cannot bring up to date is started afresh), changed rows and
    /// side events; on a first refresh the day list, and the side events read on a second
    /// connection on the same snapshot while the segments load.
    async fn read_news(
        &self,
        mut state: OwnedMutexGuard<TenantState>,
        db: &mut S::Reads,
    ) -> Result<(OwnedMutexGuard<TenantState>, News), Error> {
        let tenant = state.tenant;
        let xmin = db.xmin();
        let erasures = db.erasures(tenant).await?;
        let mut erased = Erased::default();
        if let Some(seen) = state.erasures.filter(|seen| *seen != erasures) {
            erased = self.erased_since(db, tenant, seen, erasures).await?;
            if erased.everything {
                // The log does not cover every erasure: start the tenant afresh (a new
                // generation: nothing cached before is found again).
                *state = TenantState::new(tenant, self.generations.fetch_add(1, Ordering::Relaxed));
            }
        }
        state.erasures = Some(erasures);
        let news = match state.xmin {
            Some(since) => News {
                changed: db.changed_since(tenant, since).await?,
                days: None,
                // After an erasure of conversions, presence and conversions are read again.
                side: SideEvents::Read(
                    db.side_events(tenant, if erased.conversions { 0 } else { since })
                        .await?,
                ),
                erased,
            },
            None => {
                let days = db.days_among(tenant, None).await?;
                let (source, exported) = (self.source.clone(), db.export().await?);
                let reading = tokio::spawn(read_side(source, exported, xmin, tenant, erasures));
                News {
                    changed: Vec::new(),
                    days: Some(days),
                    side: SideEvents::Reading(reading),
                    erased,
                }
            }
        };
        Ok((state, news))
    }

    /// Merges `news` into the state (on the blocking pool: segments are rebuilt) and picks the
    /// segments `reads` needs: those held, and the days still to load. Side events still being
    /// read are handed back.
    fn apply_news(
        &self,
        mut state: OwnedMutexGuard<TenantState>,
        news: News,
        xmin: i64,
        reads: &Reads,
    ) -> Result<Applied, Error> {
        let News {
            changed,
            days,
            side,
            mut erased,
        } = news;
        let first = state.xmin.is_none();
        state.loaded = totals::Loaded::default();
        if let Some(days) = days {
            state.set_days(days);
        }
        if let Some(rebuilt) = erased.rebuilt.take() {
            self.forget_days(&mut state, &erased.days, rebuilt);
            state.version += 1;
        }
        if erased.conversions {
            state.forget_side_events();
        }
        let changed_any = !changed.is_empty();
        self.apply_changes(&mut state, changed, xmin)?;
        let side = match side {
            SideEvents::Read(events) => {
                let news = state.apply_side_events(events, xmin);
                if !news.moved {
                    // The customers of new conversions: the kept totals that read them are
                    // computed again (a moved one made every kept total stale already).
                    Arc::make_mut(&mut state.changes).record(Vec::new(), news.conversions);
                }
                if news.changed {
                    state.version += 1;
                }
                None
            }
            SideEvents::Reading(reading) => Some(reading),
        };
        if changed_any || first {
            state.version += 1;
        }
        let (picked, missing) = self.pick(&state, reads);
        metrics::counter!("chatkpi_query_cache_hits_total").increment(picked.len() as u64);
        metrics::counter!("chatkpi_query_cache_misses_total").increment(missing.len() as u64);
        Ok((state, picked, missing, side))
    }

    /// The state, refreshed up to `xmin`, as a computation reads it (with its bytes).
    fn refreshed_view(
        self: &Arc<Self>,
        mut state: OwnedMutexGuard<TenantState>,
        picked: Vec<Arc<Segment>>,
        xmin: i64,
    ) -> (View, usize) {
        state.xmin = Some(xmin);
        state.loaded = totals::Loaded::default();
        state
            .recent_side_events
            .retain(|_, ingest_xid| *ingest_xid >= xmin);
        self.persist_drifted(&mut state, &picked);
        self.persist_side(&mut state, xmin);
        let view = View {
            data: Data {
                segments: picked,
                symbols: state.symbols.clone(),
                customers: read(&state.customers).len(),
                presence: state.presence_view.clone(),
                conversions: state.conversions.clone(),
                changes: state.changes.clone(),
                tenant: state.generation,
            },
            customers: state.customers.clone(),
            version: state.version,
            as_of: AsOf {
                xmin,
                erasures: state.erasures.unwrap_or(0),
            },
        };
        let bytes = state.heap_bytes();
        (view, bytes)
    }

    /// What the erasures after the `seen`-th changed (`erasures` in all now): the days to
    /// rebuild with their bounds as of now, whether conversions went; everything when the log
    /// does not cover them all.
    async fn erased_since(
        &self,
        db: &mut S::Reads,
        tenant: TenantId,
        seen: i64,
        erasures: i64,
    ) -> Result<Erased, Error> {
        let log = db.erasures_after(tenant, seen).await?;
        let complete =
            log.len() as i64 == erasures - seen && log.iter().zip(seen + 1..).all(|(l, n)| l.erasure == n);
        if !complete {
            tracing::info!(
                tenant = tenant.0,
                "customers erased since the last refresh, rebuilding the tenant's data"
            );
            return Ok(Erased {
                everything: true,
                ..Erased::default()
            });
        }
        let mut days: Vec<NaiveDate> = log.iter().flat_map(|l| l.days.iter().copied()).collect();
        days.sort_unstable();
        days.dedup();
        tracing::info!(
            tenant = tenant.0,
            days = days.len(),
            "customers erased since the last refresh, rebuilding their days"
        );
        let rebuilt = db.days_among(tenant, Some(&days)).await?;
        Ok(Erased {
            everything: false,
            rebuilt: Some(rebuilt),
            days,
            conversions: log.iter().any(|l| l.conversions > 0),
        })
    }

    /// Drops the cached segments of `days` and takes their bounds as read now (`rebuilt`; a day
    /// without conversations left has none): the days are loaded again from their records.
    fn forget_days(&self, state: &mut TenantState, days: &[NaiveDate], rebuilt: Vec<DayRows>) {
        for day in days {
            self.entries
                .invalidate(&Key::Segment(state.tenant, state.generation, *day));
            state.days.remove(day);
            state.persisted_at.remove(day);
            state.stored.remove(day);
        }
        state.days.extend(bounds_of(rebuilt));
        // The erased conversations' customers are not known here: no kept totals hold.
        Arc::make_mut(&mut state.changes).reset();
    }

    /// The cached segments the computation reads, and the days it reads that are not cached.
    fn pick(&self, state: &TenantState, reads: &Reads) -> (Vec<Arc<Segment>>, Vec<NaiveDate>) {
        let mut picked = Vec::new();
        let mut missing = Vec::new();
        for (day, bounds) in &state.days {
            if !reads.wants(bounds) {
                continue;
            }
            match self.cached(state, *day) {
                Some(seg) => picked.push(seg),
                None => missing.push(*day),
            }
        }
        (picked, missing)
    }

    fn cached(&self, state: &TenantState, day: NaiveDate) -> Option<Arc<Segment>> {
        match self
            .entries
            .get(&Key::Segment(state.tenant, state.generation, day))
        {
            Some(Value::Segment(s)) => Some(s),
            _ => None,
        }
    }

    fn put(&self, state: &mut TenantState, seg: Arc<Segment>) {
        state.days.insert(seg.day, seg.bounds);
        self.entries.insert(
            Key::Segment(state.tenant, state.generation, seg.day),
            Value::Segment(seg),
        );
    }

    /// Merges changed conversations into the cached segments of their days and widens the
    /// bounds of every day they belong to.
    fn apply_changes(
        &self,
        state: &mut TenantState,
        changed: Vec<StoredConversation>,
        xmin: i64,
    ) -> Result<(), Error> {
        let mut by_day: BTreeMap<NaiveDate, Vec<ConversationFacts>> = BTreeMap::new();
        for row in changed {
            by_day.entry(row.day).or_default().push(decode(&row)?);
        }
        // Customers whose openings changed (a new conversation, or one whose opening moved):
        // the kept totals that read them are computed again (`kpi::partial`).
        let mut openings = Vec::new();
        let mut unknown = false;
        for (day, facts) in by_day {
            let cached = self.cached(state, day);
            let known_day = state.days.contains_key(&day);
            let bounds = state.days.entry(day).or_insert(Bounds::EMPTY);
            for f in &facts {
                bounds.rows += 1;
                bounds.widen(
                    micros(f.opened_at),
                    Span {
                        start: micros(f.first_event_at),
                        end: micros(f.last_event_at),
                    },
                    f.live_until().map_or(OPEN_END, micros),
                );
            }
            let customers = state.customers.clone();
            let mut names = write(&customers);
            for f in &facts {
                let now = (names.intern_opt(f.customer_id.as_deref()), micros(f.opened_at));
                let before = match &cached {
                    Some(seg) => seg
                        .find(&f.conversation_id)
                        .map(|r| (seg.customer(r), seg.opened_at(r))),
                    // A day never seen before holds only new conversations; of a day whose
                    // segment is not in memory, the previous rows are not known.
                    None if !known_day => None,
                    None => {
                        unknown = true;
                        None
                    }
                };
                if before != Some(now) {
                    openings.push(now);
                    openings.extend(before);
                }
            }
            drop(names);
            if let Some(seg) = cached {
                let merged = seg.merge(&facts, xmin, &mut |n| state.symbol(n), &mut write(&customers));
                self.put(state, Arc::new(merged));
            }
        }
        let changes = Arc::make_mut(&mut state.changes);
        if unknown {
            tracing::debug!(
                tenant = state.tenant.0,
                "changed rows of a day not in memory: kept totals dropped"
            );
            changes.reset();
        } else {
            changes.record(openings, Vec::new());
        }
        Ok(())
    }

    /// Loads the segments of `days`: each from its snapshot and the records changed since, or
    /// from its records when it has no usable snapshot.
    ///
    /// Three stages overlap: readers on other connections (on this refresh's exact database
    /// snapshot) fetch one day after another in batches of [`LOAD_BATCH`] records
    /// ([`read_days`]), the blocking pool parses the snapshot, and this task decodes each batch
    /// and merges it into its day's segment, caching the segment with its last batch. Memory
    /// holds a few batches in flight and the segments being built, whatever the size of a day
    /// (a day of a 10 M-conversation tenant is 333,000 records of 600 bytes, several times that
    /// decoded).
    async fn load(
        self: &Arc<Self>,
        mut state: OwnedMutexGuard<TenantState>,
        db: &mut S::Reads,
        days: Vec<NaiveDate>,
        progress: &Progress,
    ) -> Result<(OwnedMutexGuard<TenantState>, Vec<Arc<Segment>>), Error> {
        let xmin = db.xmin();
        let exported = db.export().await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Prepared, Error>>(2);
        let batch = self.load_batch.load(Ordering::Relaxed);
        // Readers each taking every other day: PostgreSQL reads one day while another is sent.
        let worker = WORKER.try_with(Clone::clone).ok();
        let readers: Vec<_> = (0..READERS)
            .map(|part| {
                let days: Vec<NaiveDate> = days.iter().copied().skip(part).step_by(READERS).collect();
                let source = (self.source.clone(), exported.clone(), xmin);
                let read = read_days(source, state.tenant, days, batch, tx.clone());
                // A spawned task does not inherit the task-local: the reader works for the
                // same tenant.
                match worker.clone() {
                    Some(w) => tokio::spawn(WORKER.scope(w, read)),
                    None => tokio::spawn(read),
                }
            })
            .collect();
        drop(tx);
        let mut loaded = Vec::new();
        // Days whose batches are still arriving.
        let mut building: HashMap<NaiveDate, Arc<Segment>> = HashMap::new();
        while let Some(prepared) = rx.recv().await {
            let prepared = prepared?;
            let (day, last) = (prepared.day, prepared.last);
            let partial = building.remove(&day);
            let (s, seg) = self.clone().attach(state, prepared, partial, xmin).await?;
            state = s;
            let seg = match seg {
                Some(seg) => seg,
                None => {
                    // The snapshot was damaged: build the day from all its records (the
                    // batches still to come, changed since the snapshot, are among them).
                    let (s, seg) = self.clone().rebuild(state, db, day).await?;
                    state = s;
                    seg
                }
            };
            if last {
                self.put(&mut state, seg.clone());
                loaded.push(seg);
                progress.loaded.fetch_add(1, Ordering::Relaxed);
            } else {
                building.insert(day, seg);
            }
        }
        for reader in readers {
            reader
                .await
                .map_err(|e| Error::Internal(anyhow::Error::new(e).context("segment reader failed")))?;
        }
        Ok((state, loaded))
    }

    /// `day` built from all its records, read in `db` a batch at a time.
    async fn rebuild(
        self: Arc<Self>,
        mut state: OwnedMutexGuard<TenantState>,
        db: &mut S::Reads,
        day: NaiveDate,
    ) -> Result<(OwnedMutexGuard<TenantState>, Arc<Segment>), Error> {
        let (tenant, xmin) = (state.tenant, db.xmin());
        let batch = self.load_batch.load(Ordering::Relaxed);
        db.open_day(tenant, day, 0).await?;
        let mut partial = None;
        loop {
            let prepared = Prepared::next(db, day, None, batch).await?;
            let last = prepared.last;
            let (s, seg) = self.clone().attach(state, prepared, partial, xmin).await?;
            state = s;
            let seg =
                seg.ok_or_else(|| Error::Internal(anyhow::anyhow!("a segment built without a snapshot")))?;
            if last {
                return Ok((state, seg));
            }
            partial = Some(seg);
        }
    }

    /// Decodes a batch of a day and merges it into `partial`, the day's segment of the batches
    /// before (none for the first: then the segment starts from the parsed snapshot, or empty).
    /// `None` when the snapshot was damaged.
    async fn attach(
        self: Arc<Self>,
        state: OwnedMutexGuard<TenantState>,
        prepared: Prepared,
        partial: Option<Arc<Segment>>,
        xmin: i64,
    ) -> Result<(OwnedMutexGuard<TenantState>, Option<Arc<Segment>>), Error> {
        blocking(move || {
            let mut state = state;
            let Prepared { day, base, rows, .. } = prepared;
            // Decoded here, a batch at a time, not by the readers: decoded records take several
            // times the bytes of the stored ones, and the batches read ahead would all hold them.
            let facts = decode_all(&rows)?;
            drop(rows);
            let customers = state.customers.clone();
            // Openings the records merged on top of a snapshot move (`totals::Loaded`).
            let mut loaded = std::mem::take(&mut state.loaded);
            let mut symbols = |n: &str| state.symbol(n);
            let seg = match (partial, base) {
                (Some(partial), _) if facts.is_empty() => partial,
                (Some(partial), _) => {
                    loaded.merging(&partial, &facts, &mut write(&customers));
                    Arc::new(partial.merge(&facts, xmin, &mut symbols, &mut write(&customers)))
                }
                (None, Some(Ok(parsed))) => {
                    let base = parsed.attach(&mut symbols, &mut write(&customers));
                    loaded.days.insert(day, base.as_of);
                    if facts.is_empty() {
                        Arc::new(base)
                    } else {
                        loaded.merging(&base, &facts, &mut write(&customers));
                        Arc::new(base.merge(&facts, xmin, &mut symbols, &mut write(&customers)))
                    }
                }
                (None, Some(Err(err))) => {
                    tracing::warn!(tenant = state.tenant.0, %day, error = %err, "ignoring a damaged segment snapshot");
                    state.loaded = loaded;
                    return Ok((state, None));
                }
                (None, None) => Arc::new(Segment::build(day, &facts, xmin, &mut symbols, &mut write(&customers))),
            };
            state.loaded = loaded;
            Ok((state, Some(seg)))
        })
        .await
    }

    /// Persists, in the background, the segments that have no snapshot or drifted from it.
    fn persist_drifted(self: &Arc<Self>, state: &mut TenantState, segments: &[Arc<Segment>]) {
        for seg in segments {
            let unpersisted = seg.unpersisted.load(Ordering::Relaxed);
            let drifted = unpersisted == NEVER_PERSISTED
                || unpersisted.saturating_mul(PERSIST_DRIFT) > seg.len().max(1_000);
            let recent = state
                .persisted_at
                .get(&seg.day)
                .is_some_and(|at| at.elapsed() < PERSIST_INTERVAL);
            if !drifted || recent || seg.is_empty() {
                continue;
            }
            state.persisted_at.insert(seg.day, Instant::now());
            let (cache, seg, customers, tenant) =
                (self.clone(), seg.clone(), state.customers.clone(), state.tenant);
            // `seg` is the day as of every change logged so far, and of none logged later.
            let (generation, log) = (state.generation, state.changes.version);
            let erasures = state.erasures.unwrap_or(0);
            let worker = WORKER.try_with(Clone::clone).ok();
            tokio::spawn(async move {
                let Ok(_permit) = cache.snapshot_writes.clone().acquire_owned().await else {
                    return;
                };
                let snapshot = Snapshot {
                    day: seg.day,
                    built_xmin: seg.as_of,
                    erasures,
                };
                // One part in the channel, one being written: a day is never held encoded whole.
                let (parts, written) = tokio::sync::mpsc::channel(1);
                let (encoded, saved) = tokio::join!(
                    encode_in_parts(worker.clone(), seg.clone(), customers, parts),
                    cache.source.save_snapshot(tenant, &snapshot, written)
                );
                let result = encoded.and(saved);
                match result {
                    Ok(()) => {
                        seg.unpersisted.store(0, Ordering::Relaxed);
                        let stored = totals::StoredAt { xmin: seg.as_of, log };
                        cache.snapshot_stored(tenant, generation, seg.day, stored).await;
                        // Totals of the day (and of days that read it) may now be persisted.
                        cache.persist_totals(tenant, worker);
                    }
                    Err(err) => {
                        tracing::warn!(tenant = tenant.0, day = %seg.day, error = %err, "could not persist a segment snapshot")
                    }
                }
            });
        }
    }

    /// Writes the tenant's presence and conversions, complete for `xmin`, as its side snapshot
    /// (engine/side.rs) in the background when none is stored or a tenth of them arrived since
    /// the last one (at most once per [`PERSIST_INTERVAL`]): the next process reads them in one
    /// row instead of every event as JSON.
    fn persist_side(self: &Arc<Self>, state: &mut TenantState, xmin: i64) {
        let total = state.presence.len() + state.conversions.len();
        let unpersisted = state.side_unpersisted;
        let drifted =
            unpersisted == NEVER_PERSISTED || unpersisted.saturating_mul(PERSIST_DRIFT) > total.max(1_000);
        let recent = state
            .side_persisted_at
            .is_some_and(|at| at.elapsed() < PERSIST_INTERVAL);
        if !drifted || recent || total == 0 {
            return;
        }
        // Counted as written now: a failed write is logged and the next drift writes again.
        state.side_unpersisted = 0;
        state.side_persisted_at = Some(Instant::now());
        state.side_xmin = Some(xmin);
        state.side_stored = Some(totals::StoredAt {
            xmin,
            log: state.changes.version,
        });
        let (cache, tenant, erasures) = (self.clone(), state.tenant, state.erasures.unwrap_or(0));
        let (presence, conversions, recent) = (
            state.presence.clone(),
            state.conversions.clone(),
            state.recent_side_events.clone(),
        );
        let (symbols, customers) = (state.symbols.clone(), state.customers.clone());
        let worker = WORKER.try_with(Clone::clone).ok();
        tokio::spawn(async move {
            let Ok(_permit) = cache.snapshot_writes.clone().acquire_owned().await else {
                return;
            };
            let encode = move || {
                let side = side::Side {
                    xmin,
                    presence: &presence,
                    conversions: &conversions,
                    recent: &recent,
                };
                side::encode(&side, &symbols, &read(&customers))
            };
            let result = match in_background(worker.clone(), encode).await {
                Ok(body) => {
                    cache
                        .source
                        .save_side_snapshot(tenant, xmin, erasures, body)
                        .await
                }
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => cache.persist_totals(tenant, worker),
                Err(err) => {
                    tracing::warn!(tenant = tenant.0, error = %err, "could not persist presence and conversions")
                }
            }
        });
    }
}

impl<S: Source> QueryCache<S> {
    /// Drops the kept totals of `tenant`: after a settings change none of them can be used again
    /// (the settings are part of their shape), and they would hold the budget until evicted.
    pub async fn forget_totals(&self, tenant: TenantId) {
        let Some(Value::Tenant(entry)) = self.entries.get(&Key::Tenant(tenant)) else {
            return;
        };
        let generation = entry.state.lock().await.generation;
        let dropped = self
            .entries
            .invalidate_entries_if(move |k, _| matches!(k, Key::Partial(p) if p.tenant == generation));
        if let Err(err) = dropped {
            tracing::warn!(error = %err, "cannot drop a tenant's kept totals");
        }
    }

    /// How long a call waits for its tenant's data before it is told the load goes on.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// Whether the cache holds `tenant`'s data, refreshed before and not loading days now: a
    /// question about it is answered in memory without waiting for a load (whole or partial).
    pub fn holds(&self, tenant: TenantId) -> bool {
        match self.entries.get(&Key::Tenant(tenant)) {
            Some(Value::Tenant(entry)) => {
                entry.refreshed.load(Ordering::Relaxed) && entry.progress.days.load(Ordering::Relaxed) == 0
            }
            _ => false,
        }
    }

    /// How many kept totals of `tenant` the cache holds (a diagnostic: a restarted server holds
    /// those of the questions it asked again before serving).
    pub async fn kept_totals(&self, tenant: TenantId) -> usize {
        let Some(Value::Tenant(entry)) = self.entries.get(&Key::Tenant(tenant)) else {
            return 0;
        };
        let generation = entry.state.lock().await.generation;
        self.entries
            .iter()
            .filter(|(k, _)| matches!(&**k, Key::Partial(p) if p.tenant == generation))
            .count()
    }
}

impl<S: Source> PartialStore for QueryCache<S> {
    fn get(&self, key: &PartialKey) -> Option<Arc<Partial>> {
        match self.entries.get(&Key::Partial(key.clone())) {
            Some(Value::Partial(p)) => Some(p),
            _ => None,
        }
    }

    fn put(&self, key: PartialKey, partial: Arc<Partial>) {
        if totals::persistable(&key) {
            self.day_totals_kept.fetch_add(1, Ordering::Relaxed);
        }
        self.entries.insert(Key::Partial(key), Value::Partial(partial));
    }
}

impl TenantState {
    /// The day bounds of a tenant's first refresh.
    fn set_days(&mut self, days: Vec<DayRows>) {
        self.days = bounds_of(days).collect();
    }

    /// Forgets presence and conversions (after an erasure of conversions): this refresh reads
    /// them all again.
    fn forget_side_events(&mut self) {
        self.presence = Arc::default();
        self.presence_view = Arc::default();
        self.conversions = Arc::default();
        Arc::make_mut(&mut self.changes).reset();
        self.recent_side_events.clear();
        self.side_unpersisted = NEVER_PERSISTED;
        self.side_stored = None;
    }

    /// Takes the presence and conversions of a first refresh: the tenant's side snapshot when
    /// one was loaded, then the events written since it (all of them without one).
    fn apply_side_read(&mut self, read: SideRead, xmin: i64) {
        self.side_xmin = read.base.as_ref().map(|b| b.xmin);
        self.side_unpersisted = match read.base {
            Some(base) => {
                let customers = self.customers.clone();
                let attached = base.attach(&mut |name| self.symbol(name), &mut write(&customers));
                self.presence_view = Arc::new(attached.presence.iter().map(|(_, c)| *c).collect());
                self.presence = Arc::new(attached.presence);
                self.conversions = Arc::new(attached.conversions);
                self.recent_side_events = attached.recent;
                0
            }
            None => NEVER_PERSISTED,
        };
        // The tenant's first read: no totals were kept yet, nothing to log now; the totals read
        // back with the days log the conversions stored since the snapshot (`totals::Loaded`).
        let news = self.apply_side_events(read.events, xmin);
        self.loaded.side = self.side_xmin.map(|xmin| totals::SideLoaded {
            xmin,
            conversions: news.conversions,
            inserted: news.inserted,
            moved: news.moved,
        });
    }

    /// Applies presence and conversion events not applied before; the caller logs the
    /// customers of new conversions, if it keeps totals.
    fn apply_side_events(&mut self, events: Vec<SideEvent>, xmin: i64) -> SideNews {
        let mut new_presence = Vec::new();
        let mut new_conversions = Vec::new();
        for e in events {
            if self.recent_side_events.contains_key(e.event_id.as_str()) {
                continue;
            }
            let at = micros(e.occurred_at);
            match &e.payload {
                Payload::AgentStatus(p) => {
                    let change = PresenceChange {
                        agent: self.symbol(&p.agent_id),
                        at,
                        status: p.status,
                    };
                    new_presence.push((e.event_id.as_str().into(), change));
                }
                Payload::Conversion(c) => {
                    let customer = write(&self.customers).intern(&c.customer_id);
                    let rec = ConversionRec {
                        at,
                        customer,
                        kind: self.symbol(&c.kind),
                        value_minor: c.value_minor,
                        currency: match c.currency.as_deref() {
                            Some(cur) => self.symbol(cur),
                            None => 0,
                        },
                    };
                    new_conversions.push(rec);
                }
                _ => continue,
            }
            if e.ingest_xid >= xmin {
                self.recent_side_events.insert(e.event_id.into(), e.ingest_xid);
            }
        }
        self.side_unpersisted = self
            .side_unpersisted
            .saturating_add(new_presence.len() + new_conversions.len());
        let presence_changed = !new_presence.is_empty();
        if presence_changed {
            let all = Arc::make_mut(&mut self.presence);
            all.extend(new_presence);
            // A sorted run and a short tail (a first read: any order); a stable sort merges
            // runs in linear time.
            all.sort_by(|(a_id, a), (b_id, b)| (a.agent, a.at, a_id).cmp(&(b.agent, b.at, b_id)));
            self.presence_view = Arc::new(self.presence.iter().map(|(_, c)| *c).collect());
        }
        let conversions_changed = !new_conversions.is_empty();
        if conversions_changed {
            // Kept totals name attributed conversions by their place in the time-sorted list
            // (`Acc::attributed`): one placed before a conversion already held moves the later
            // ones, and every kept total that attributed one of them would count another's
            // value. Conversions arrive in time order nearly always; one that does not makes
            // every kept total stale instead.
            let newest = self.conversions.last().map(|c| c.at);
            let moves = newest.is_some_and(|newest| new_conversions.iter().any(|c| c.at < newest));
            let customers: Vec<_> = new_conversions.iter().map(|c| (c.customer, c.at)).collect();
            if moves {
                Arc::make_mut(&mut self.changes).reset();
            }
            let inserted = insert_sorted(Arc::make_mut(&mut self.conversions), new_conversions);
            return SideNews {
                changed: true,
                conversions: customers,
                inserted,
                moved: moves,
            };
        }
        SideNews {
            changed: presence_changed,
            conversions: Vec::new(),
            inserted: Vec::new(),
            moved: false,
        }
    }
}

/// Inserts `new` into `all` (sorted by time), each after those of its time already there and
/// in its own order among them (a stable sort of both); returns, for each inserted, in list
/// order, how many of those already there precede it.
fn insert_sorted(all: &mut Vec<ConversionRec>, mut new: Vec<ConversionRec>) -> Vec<u32> {
    new.sort_by_key(|c| c.at);
    let mut held = std::mem::take(all).into_iter().peekable();
    all.reserve(held.len() + new.len());
    let (mut before, mut preceding) = (Vec::with_capacity(new.len()), 0u32);
    for c in new {
        while let Some(h) = held.next_if(|h| h.at <= c.at) {
            all.push(h);
            preceding += 1;
        }
        before.push(preceding);
        all.push(c);
    }
    all.extend(held);
    before
}

/// What applying presence and conversion events did ([`TenantState::apply_side_events`]).
struct SideNews {
    /// Any event was new.
    changed: bool,
    /// (customer, time) of each new conversion.
    conversions: Vec<(u32, Micros)>,
    /// For each new conversion, in list order, how many held before precede it.
    inserted: Vec<u32>,
    /// One was placed before a conversion held before.
    moved: bool,
}

/// The bounds of days as read from the database.
fn bounds_of(days: Vec<DayRows>) -> impl Iterator<Item = (NaiveDate, Bounds)> {
    days.into_iter().map(|d| {
        let bounds = Bounds {
            rows: usize::try_from(d.rows).unwrap_or(usize::MAX),
            opened: Span {
                start: micros(d.opened_from),
                end: micros(d.opened_to),
            },
            active: Span {
                start: micros(d.active_from),
                end: micros(d.active_to),
            },
            live_until: d.live_until.map_or(OPEN_END, micros),
        };
        (d.day, bounds)
    })
}

/// What erasures since a tenant's last refresh changed.
#[derive(Default)]
struct Erased {
    /// The log did not cover them: the tenant is read afresh.
    everything: bool,
    /// The days that lost conversations, and their bounds now.
    days: Vec<NaiveDate>,
    rebuilt: Option<Vec<DayRows>>,
    /// Conversions were deleted: presence and conversions are read again.
    conversions: bool,
}

fn decode(row: &StoredConversation) -> Result<ConversationFacts, Error> {
    record::decode(&row.conversation_id, &row.record).map_err(|e| Error::Internal(anyhow::Error::new(e)))
}

/// Presence and conversion events of a refresh: read, or being read on another connection.
enum SideEvents {
    Read(Vec<SideEvent>),
    Reading(SideReading),
}

/// A state with news merged: the segments held that a query reads, the days still to load, the
/// side events still being read ([`QueryCache::apply_news`]).
type Applied = (
    OwnedMutexGuard<TenantState>,
    Vec<Arc<Segment>>,
    Vec<NaiveDate>,
    Option<SideReading>,
);

/// Presence and conversion events being read on a connection of their own.
type SideReading = tokio::task::JoinHandle<Result<SideRead, Error>>;

/// What a first refresh reads of presence and conversions: the tenant's side snapshot (parsed),
/// if one is stored for its erasure counter, and the events written since it.
struct SideRead {
    base: Option<side::Parsed>,
    events: Vec<SideEvent>,
}

/// What changed for a tenant since its last refresh ([`QueryCache::read_news`]).
struct News {
    changed: Vec<StoredConversation>,
    /// Every day with its bounds, on a first refresh.
    days: Option<Vec<DayRows>>,
    side: SideEvents,
    erased: Erased,
}

/// Records of a day fetched at a time by a load: about 10 MB stored, a few times that decoded.
const LOAD_BATCH: usize = 16_384;

/// A batch of a day read, its snapshot parsed (with the first batch), not yet attached to the
/// tenant's ids.
struct Prepared {
    day: NaiveDate,
    base: Option<Result<snapshot::Parsed, snapshot::CorruptSnapshot>>,
    /// Records changed since the snapshot (all of them without one), decoded when attached.
    rows: Vec<StoredConversation>,
    /// The day's last batch.
    last: bool,
}

impl Prepared {
    /// The next batch of `day`, open in `r` ([`SourceReads::open_day`]); `base` goes with the
    /// first. A batch short of `batch` records is the last.
    async fn next(
        r: &mut impl SourceReads,
        day: NaiveDate,
        base: Option<Result<snapshot::Parsed, snapshot::CorruptSnapshot>>,
        batch: usize,
    ) -> Result<Prepared, Error> {
        let rows = r.next_rows(batch).await?;
        Ok(Prepared {
            day,
            base,
            last: rows.len() < batch,
            rows,
        })
    }
}

/// Reads `days` on its own view of the exported database snapshot: each day's snapshot, parsed
/// on the blocking pool, then the records changed since it, in batches of `batch`, sent
/// to the loader in order. An error is sent too; a loader that stopped stops the reader.
async fn read_days<S: Source>(
    (source, exported, xmin): (S, String, i64),
    tenant: TenantId,
    days: Vec<NaiveDate>,
    batch: usize,
    tx: tokio::sync::mpsc::Sender<Result<Prepared, Error>>,
) {
    let read = async {
        let mut r = source.begin_at(&exported, xmin).await?;
        for day in days {
            let snapshot = r.snapshots(tenant, &[day]).await?.pop();
            let since = snapshot.as_ref().map_or(0, |s| s.built_xmin);
            let mut base = Some(blocking(move || Ok(snapshot.map(|s| snapshot::parse(day, s.body)))).await?);
            r.open_day(tenant, day, since).await?;
            loop {
                let prepared = Prepared::next(&mut r, day, base.take().flatten(), batch).await?;
                let last = prepared.last;
                if tx.send(Ok(prepared)).await.is_err() {
                    return Ok(()); // the loader stopped on an error
                }
                if last {
                    break;
                }
            }
        }
        r.finish().await
    };
    if let Err(err) = read.await {
        let _ = tx.send(Err(err)).await;
    }
}

/// Decodes records on every core (the costly part of building a segment from records).
fn decode_all(rows: &[StoredConversation]) -> Result<Vec<ConversationFacts>, Error> {
    use rayon::prelude::*;
    rows.par_iter().map(decode).collect()
}

tokio::task_local! {
    /// The scheduler and tenant a refresh works for: its CPU work (decoding records, building
    /// segments) runs on that tenant's lane and is charged to it, like its computations
    /// (engine/schedule.rs), so a tenant whose history is being loaded for the first time slows
    /// its neighbours no more than one asking many questions.
    pub static WORKER: (Arc<Scheduler>, TenantId);
}

/// Encodes `seg`'s snapshot a part at a time in the background ([`in_background`]), each part
/// sent to the writer before the next is encoded; stops early when the writer stops taking
/// them (a later snapshot is stored, or the write failed).
async fn encode_in_parts(
    worker: Option<(Arc<Scheduler>, TenantId)>,
    seg: Arc<Segment>,
    customers: Arc<RwLock<Interner>>,
    parts: tokio::sync::mpsc::Sender<SnapshotPart>,
) -> Result<(), Error> {
    let mut encoder = snapshot::PartEncoder::default();
    loop {
        let (seg, customers) = (seg.clone(), customers.clone());
        let (returned, part) = in_background(worker.clone(), move || {
            let part = encoder.next_part(&seg, &read(&customers), snapshot::PART_BYTES);
            (encoder, part)
        })
        .await?;
        encoder = returned;
        let Some((bytes, last)) = part else {
            return Ok(());
        };
        if parts.send(SnapshotPart { bytes, last }).await.is_err() || last {
            return Ok(());
        }
    }
}

/// Runs background CPU work (encoding snapshots) off the async threads, on the bulk lane (the
/// lowest priority) of the [`WORKER`] it was started for, charged to that tenant: persisting a
/// freshly built history does not slow other tenants' dashboards (engine/schedule.rs).
async fn in_background<T: Send + 'static>(
    worker: Option<(Arc<Scheduler>, TenantId)>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(move || match worker {
        Some((scheduler, tenant)) => scheduler.run(tenant, Lane::Bulk, f),
        None => f(),
    })
    .await
    .map_err(|e| Error::Internal(anyhow::Error::new(e).context("snapshot encoding failed")))
}

/// Reads a first refresh's presence and conversions on its own view of the same database
/// snapshot: the tenant's side snapshot when one is stored for the erasure counter the refresh
/// read (parsed while the events written since it are read), else every event.
async fn read_side<S: Source>(
    source: S,
    exported: String,
    xmin: i64,
    tenant: TenantId,
    erasures: i64,
) -> Result<SideRead, Error> {
    let mut r = source.begin_at(&exported, xmin).await?;
    let stored = r.side_snapshot(tenant).await?.filter(|s| s.erasures == erasures);
    let (base, events) = match stored {
        Some(stored) => {
            let built_xmin = stored.built_xmin;
            let parsing = tokio::task::spawn_blocking(move || side::parse(&stored.body));
            let events = r.side_events(tenant, built_xmin).await?;
            match parsing.await {
                Ok(Ok(base)) if base.xmin == built_xmin => (Some(base), events),
                _ => {
                    tracing::warn!(
                        tenant = tenant.0,
                        "presence and conversions snapshot damaged, reading the events"
                    );
                    (None, r.side_events(tenant, 0).await?)
                }
            }
        }
        None => (None, r.side_events(tenant, 0).await?),
    };
    r.finish().await?;
    Ok(SideRead { base, events })
}

/// Runs CPU work off the async threads, on the lane of the [`WORKER`] the task works for (when
/// there is one); a panic becomes an internal error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let worker = WORKER.try_with(Clone::clone).ok();
    tokio::task::spawn_blocking(move || match worker {
        Some((scheduler, tenant)) => {
            let lane = scheduler.lane(tenant);
            scheduler.run(tenant, lane, f)
        }
        None => f(),
    })
    .await
    .map_err(|e| Error::Internal(anyhow::Error::new(e).context("query cache work failed")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversions(times: &[i64], kind: u32) -> Vec<ConversionRec> {
        (times.iter())
            .map(|at| ConversionRec {
                at: *at,
                customer: 1,
                kind,
                value_minor: None,
                currency: 0,
            })
            .collect()
    }

    #[test]
    fn inserted_conversions_land_where_a_stable_sort_puts_them_with_the_held_ones_counted_before_them() {
        let held = conversions(&[10, 20, 20, 30], 1);
        let new = conversions(&[35, 20, 5, 20], 2);
        let mut all = held.clone();
        let inserted = insert_sorted(&mut all, new.clone());

        let mut expected = [held, new].concat();
        expected.sort_by_key(|c| c.at);
        let key = |c: &ConversionRec| (c.at, c.kind);
        assert_eq!(
            all.iter().map(key).collect::<Vec<_>>(),
            expected.iter().map(key).collect::<Vec<_>>()
        );
        // In list order: 5 (none held before it), 20 and 20 (after 10, 20, 20), 35 (all four).
        assert_eq!(inserted, vec![0, 3, 3, 4]);
    }
}
