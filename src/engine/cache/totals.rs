//! Kept totals persisted beside the day snapshots, and read back by a restarted replica
//! (`kpi::stored` says what they are and when they hold).
//!
//! Persisting: after a day's snapshot or the side snapshot is written, and after a computation
//! kept new day totals ([`QueryCache::computed`]), a background pass writes every kept day
//! total whose basis is stored: its own day is its snapshot with nothing merged since, and
//! every other day whose openings it reads (and the side snapshot, when it reads conversions)
//! is either held exactly as its snapshot or has a stored snapshot for whose state the total is
//! as exact as for its own: nothing the change log holds between the two touched what it read
//! ([`StoredAt`]; a newest day that keeps receiving conversations is its snapshot only until its
//! next write, and the days before it read it).
//!
//! Restoring: a refresh that loaded days reads their persisted totals and keeps those whose own
//! day is held exactly as its snapshot and whose other reads come from the snapshots of their
//! basis, most recently written first, while the cache is under fifteen sixteenths of its
//! budget (as the warm-up's questions). Records merged on top of those snapshots by the load,
//! and conversions stored since the side snapshot, are then written to the change log
//! ([`Loaded`]): a restored total that read one of their customers is computed again, the
//! others are used (a tenant that wrote into its newest day since the totals were persisted
//! restores the rest of its month).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Weak, atomic::Ordering},
    time::Instant,
};

use chrono::NaiveDate;
use sha2::{Digest, Sha256};
use tokio::sync::OwnedMutexGuard;

use super::{Key, QueryCache, TenantEntry, TenantState, Value, WORKER, blocking, in_background};
use crate::domain::{
    Error,
    facts::ConversationFacts,
    tenant::TenantId,
    time::{Micros, micros},
};
use crate::engine::{
    intern::Interner,
    kpi::{
        partial::{Changes, KeptRows, Partial, PartialKey, Slot},
        stored::{self, Basis},
    },
    schedule::Scheduler,
    segment::{Bounds, Segment},
    source::{Source, SourceReads, StoredTotals},
};

/// Whether totals kept under `key` are of the kind persisted: a whole day's rows ending inside
/// or before a window (not a chunk's, not a window's edges).
pub(super) fn persistable(key: &PartialKey) -> bool {
    matches!(key.slot, Slot::Day(_)) && !matches!(key.rows, KeptRows::Edge { .. })
}

/// A stored snapshot as this process knows it: its `built_xmin`, and the version of the
/// tenant's change log whose state it holds (changes logged after it are not in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StoredAt {
    pub(super) xmin: i64,
    pub(super) log: u64,
}

/// What the basis of totals is read from: the tenant's days, the segments held, the side
/// snapshot presence and conversions are exactly (if any), the snapshots stored and the change
/// log.
struct Held<'a> {
    days: &'a BTreeMap<NaiveDate, Bounds>,
    segments: &'a HashMap<NaiveDate, Arc<Segment>>,
    side: Option<i64>,
    stored: &'a HashMap<NaiveDate, StoredAt>,
    side_stored: Option<StoredAt>,
    changes: &'a Changes,
}

impl Held<'_> {
    /// The basis of `p`, totals of `day`, as held now: `None` when its own day is not held
    /// exactly as its snapshot, or another day it reads (or the conversions, when it reads
    /// them) is neither held exactly as its snapshot nor has a stored snapshot for whose state
    /// `p` is as exact (a newest day that keeps receiving conversations is its snapshot only
    /// until its next write: the days that read it are persisted on its last snapshot).
    fn basis(&self, day: NaiveDate, p: &Partial) -> Option<Basis> {
        let span = p.openings_span();
        let mut days = Vec::new();
        for (d, bounds) in self.days {
            // `opened_in` is half-open; the span read is closed.
            if *d == day || bounds.opened_in(span.start, span.end.saturating_add(1)) {
                let seg = self.segments.get(d)?;
                let xmin = if seg.unpersisted.load(Ordering::Relaxed) == 0 {
                    seg.as_of
                } else if *d != day {
                    self.as_stored(self.stored.get(d)?, p)?
                } else {
                    return None;
                };
                days.push((*d, xmin));
            }
        }
        let side = match (stored::reads_conversions(p), self.side) {
            (false, _) => None,
            (true, Some(exact)) => Some(exact),
            (true, None) => Some(self.as_stored(self.side_stored.as_ref()?, p)?),
        };
        Some(Basis { days, side })
    }

    /// The snapshot `stored`'s xmin when `p` is as exact for its state as for its own.
    fn as_stored(&self, stored: &StoredAt, p: &Partial) -> Option<i64> {
        self.changes
            .untouched_between(p, stored.log)
            .then_some(stored.xmin)
    }

    /// Whether totals `p` of `day`, persisted on `basis`, are exact for what is held now once
    /// the changes `loaded` merged on top of their snapshots are in the change log (the caller
    /// checked that `day` itself is held exactly as its snapshot): every day whose openings they
    /// read then or would read now is held as the snapshot of their basis (exactly, or loaded
    /// from it now with records merged on top), and the conversions they read come from the
    /// side snapshot of their basis.
    fn restorable(&self, day: NaiveDate, p: &Partial, basis: &Basis, loaded: &Loaded) -> bool {
        let span = p.openings_span();
        let read_now = (self.days.iter())
            .filter(|(d, bounds)| **d == day || bounds.opened_in(span.start, span.end.saturating_add(1)))
            .map(|(d, _)| *d);
        let read_then = basis.days.iter().map(|(d, _)| *d);
        let days_hold = read_now.chain(read_then).all(|d| {
            let Some((_, xmin)) = basis.days.iter().find(|(e, _)| *e == d) else {
                return false;
            };
            self.segments.get(&d).is_some_and(|seg| {
                let exact = seg.as_of == *xmin && seg.unpersisted.load(Ordering::Relaxed) == 0;
                exact || loaded.days.get(&d) == Some(xmin)
            })
        });
        days_hold
            && match (stored::reads_conversions(p), basis.side) {
                (false, _) => true,
                (true, Some(side)) => {
                    self.side == Some(side) || loaded.side.as_ref().is_some_and(|l| l.xmin == side)
                }
                (true, None) => false,
            }
    }
}

/// What the running refresh loaded on top of persisted snapshots, for the kept totals it reads
/// back ([`QueryCache::restore_totals`] takes it; the end of the refresh drops it).
#[derive(Debug, Clone, Default)]
pub(super) struct Loaded {
    /// Each day loaded from its snapshot: the snapshot's `built_xmin`.
    pub(super) days: HashMap<NaiveDate, i64>,
    /// Openings (customer, time) added or removed by the records merged on top of them.
    pub(super) openings: Vec<(u32, Micros)>,
    /// The side snapshot read, and what was stored since it.
    pub(super) side: Option<SideLoaded>,
}

/// The side snapshot a first refresh read, and the conversions stored since it.
#[derive(Debug, Clone)]
pub(super) struct SideLoaded {
    pub(super) xmin: i64,
    /// (customer, time) of each conversion stored since.
    pub(super) conversions: Vec<(u32, Micros)>,
    /// For each of them, in list order, how many of the snapshot's conversions precede it
    /// (`stored::decode`).
    pub(super) inserted: Vec<u32>,
    /// One of them lies before a conversion of the snapshot: the places of the list held differ
    /// from the snapshot's.
    pub(super) moved: bool,
}

impl Loaded {
    /// Notes the openings that merging `facts` into `seg` moves, when `seg` is a day loaded
    /// from its snapshot (of a day built from records no totals are restored).
    pub(super) fn merging(&mut self, seg: &Segment, facts: &[ConversationFacts], customers: &mut Interner) {
        if !self.days.contains_key(&seg.day) {
            return;
        }
        for f in facts {
            let now = (
                customers.intern_opt(f.customer_id.as_deref()),
                micros(f.opened_at),
            );
            let before = (seg.find(&f.conversation_id)).map(|r| (seg.customer(r), seg.opened_at(r)));
            if before != Some(now) {
                self.openings.push(now);
                self.openings.extend(before);
            }
        }
    }
}

impl TenantState {
    /// What the basis of totals is read from, with `segments` the segments held.
    fn held<'a>(&'a self, segments: &'a HashMap<NaiveDate, Arc<Segment>>) -> Held<'a> {
        Held {
            days: &self.days,
            segments,
            side: self.side_identity(),
            stored: &self.stored,
            side_stored: self.side_stored,
            changes: &self.changes,
        }
    }

    /// The side snapshot presence and conversions are exactly, if any.
    fn side_identity(&self) -> Option<i64> {
        self.side_xmin.filter(|_| self.side_unpersisted == 0)
    }
}

/// A day's totals to persist. The totals and the segment are held weakly: the pass encodes one
/// at a time and may take seconds (a row written per body), and what the cache lets go
/// meanwhile is freed, not held outside its budget (a never-asked question evicts the totals of
/// the one before while they wait here); totals let go are not persisted.
struct ToPersist {
    key: PartialKey,
    day: NaiveDate,
    partial: Weak<Partial>,
    segment: Weak<Segment>,
    basis: Basis,
}

impl<S: Source> QueryCache<S> {
    /// Called when a computation of the tenant ended (on the tenant's worker, [`WORKER`]):
    /// persists the day totals it kept, if any (one pass waiting per tenant; passes run one at
    /// a time, after the snapshot writes).
    pub fn computed(self: &Arc<Self>, tenant: TenantId) {
        let Some(Value::Tenant(entry)) = self.entries.get(&Key::Tenant(tenant)) else {
            return;
        };
        let kept = self.day_totals_kept.load(Ordering::Relaxed);
        if entry.totals_seen.swap(kept, Ordering::Relaxed) == kept
            || entry.totals_pass.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.persist_totals(tenant, WORKER.try_with(Clone::clone).ok());
    }

    /// Persists, in the background, the tenant's kept day totals whose basis is held exactly
    /// as stored and that were not persisted on that basis yet.
    /// Encoding runs on `worker`'s bulk lane.
    pub(super) fn persist_totals(
        self: &Arc<Self>,
        tenant: TenantId,
        worker: Option<(Arc<Scheduler>, TenantId)>,
    ) {
        let cache = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = cache.snapshot_writes.clone().acquire_owned().await else {
                return;
            };
            if let Some(Value::Tenant(entry)) = cache.entries.get(&Key::Tenant(tenant)) {
                // Totals kept from now on are left to the next pass.
                entry.totals_pass.store(false, Ordering::Release);
            }
            match cache.persist_totals_now(tenant, worker).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(tenant = tenant.0, totals = n, "kept totals persisted"),
                Err(err) => tracing::warn!(tenant = tenant.0, error = %err, "could not persist kept totals"),
            }
        });
    }

    async fn persist_totals_now(
        self: &Arc<Self>,
        tenant: TenantId,
        worker: Option<(Arc<Scheduler>, TenantId)>,
    ) -> Result<usize, Error> {
        let Some(Value::Tenant(entry)) = self.entries.get(&Key::Tenant(tenant)) else {
            return Ok(0);
        };
        let (todo, symbols) = {
            let state = entry.state.lock().await;
            (self.to_persist(&state, &entry), state.symbols.clone())
        };
        let mut written = 0;
        for t in todo {
            let (Some(partial), Some(segment)) = (t.partial.upgrade(), t.segment.upgrade()) else {
                continue;
            };
            let (from, as_of) = (partial.from(), segment.as_of);
            let (basis, symbols, shape) = (t.basis.clone(), symbols.clone(), t.key.shape.clone());
            let body = in_background(worker.clone(), move || {
                stored::encode(&shape, &partial, &segment, &symbols, &basis)
            })
            .await?;
            let Some(body) = body else { continue };
            let totals = StoredTotals {
                day: t.day,
                shape_hash: Sha256::digest(t.key.shape.as_bytes()).to_vec(),
                kind: i16::from(matches!(t.key.rows, KeptRows::Before(_))),
                snapshot_xmin: as_of,
                body,
            };
            self.source.save_totals(tenant, totals).await?;
            entry
                .persisted_totals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(t.key, (from, t.basis));
            written += 1;
        }
        Ok(written)
    }

    /// The tenant's kept day totals held now whose basis is exactly as stored and that were not
    /// persisted on that basis; forgets, in `entry`, those no longer held.
    fn to_persist(&self, state: &TenantState, entry: &TenantEntry) -> Vec<ToPersist> {
        let segments: HashMap<NaiveDate, Arc<Segment>> = (state.days.keys())
            .filter_map(|d| self.cached(state, *d).map(|s| (*d, s)))
            .collect();
        let held = state.held(&segments);
        let mut todo = Vec::new();
        let mut persisted = entry.persisted_totals.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        for (key, value) in self.entries.iter() {
            let (Key::Partial(key), Value::Partial(p)) = (&*key, value) else {
                continue;
            };
            let Slot::Day(day) = key.slot else { continue };
            if key.tenant != state.generation || !persistable(key) {
                continue;
            }
            seen.insert(key.clone());
            let Some(segment) = segments.get(&day) else {
                continue;
            };
            if segment.version != p.from() || !state.changes.still_valid(&p) {
                continue;
            }
            let Some(basis) = held.basis(day, &p) else {
                continue;
            };
            if persisted.get(key) != Some(&(p.from(), basis.clone())) {
                todo.push(ToPersist {
                    key: key.clone(),
                    day,
                    partial: Arc::downgrade(&p),
                    segment: Arc::downgrade(segment),
                    basis,
                });
            }
        }
        persisted.retain(|k, _| seen.contains(k));
        todo
    }

    /// Notes, once its write ended, that `day`'s stored snapshot is `stored` (for the tenant's
    /// state of `generation`; a state started afresh since has its own ids and log).
    pub(super) async fn snapshot_stored(
        &self,
        tenant: TenantId,
        generation: u64,
        day: NaiveDate,
        stored: StoredAt,
    ) {
        if let Some(Value::Tenant(entry)) = self.entries.get(&Key::Tenant(tenant)) {
            let mut state = entry.state.lock().await;
            if state.generation == generation {
                state.stored.insert(day, stored);
            }
        }
    }

    /// Reads the persisted totals of the days just loaded (`days`), a day at a time (a 10 M
    /// tenant's day holds a few MB per question shape), and keeps those whose basis the state
    /// holds now. Derived data: a failure to read them is logged and the days are computed from
    /// their rows.
    pub(super) async fn restore_totals(
        self: &Arc<Self>,
        mut state: OwnedMutexGuard<TenantState>,
        db: &mut S::Reads,
        days: &[NaiveDate],
    ) -> Result<OwnedMutexGuard<TenantState>, Error> {
        let started = Instant::now();
        let (mut found, mut restored, mut read_ms) = (0, 0, 0.0);
        let loaded = Arc::new(std::mem::take(&mut state.loaded));
        for day in days {
            let reading = Instant::now();
            let read = db.totals(state.tenant, std::slice::from_ref(day)).await;
            read_ms += reading.elapsed().as_secs_f64() * 1e3;
            let rows = match read {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(tenant = state.tenant.0, error = %err, "could not read persisted kept totals");
                    break;
                }
            };
            if rows.is_empty() {
                continue;
            }
            found += rows.len();
            let (cache, loaded) = (self.clone(), loaded.clone());
            let (s, kept, full) = blocking(move || {
                let mut state = state;
                let (kept, full) = cache.restore(&mut state, rows, &loaded);
                Ok((state, kept, full))
            })
            .await?;
            state = s;
            restored += kept;
            if full {
                break;
            }
        }
        // The snapshots loaded hold the state before what was merged on top of them; that is
        // logged after every restored total (they were computed before it).
        let loaded = Arc::unwrap_or_clone(loaded);
        let (log, first) = (state.changes.version, state.xmin.is_none());
        for (day, xmin) in loaded.days {
            // The state at `log` is the snapshot's: on a first refresh nothing was logged before
            // and what was merged on top is logged next; later, only for a day nothing was
            // merged on (the log may hold what was, at any version).
            let exact = self
                .cached(&state, day)
                .is_some_and(|s| s.unpersisted.load(Ordering::Relaxed) == 0);
            match first || exact {
                true => state.stored.insert(day, StoredAt { xmin, log }),
                false => state.stored.remove(&day),
            };
        }
        let conversions = match loaded.side {
            Some(side) => {
                // Totals computed from now on name conversions by their places in the list held:
                // those of the snapshot only when none was placed before one of its own.
                state.side_stored = (!side.moved).then_some(StoredAt { xmin: side.xmin, log });
                side.conversions
            }
            None => Vec::new(),
        };
        Arc::make_mut(&mut state.changes).record(loaded.openings, conversions);
        if found > 0 {
            tracing::info!(
                tenant = state.tenant.0,
                found,
                restored,
                read_ms = read_ms as u64,
                ms = started.elapsed().as_millis() as u64,
                "persisted kept totals read"
            );
        }
        Ok(state)
    }

    /// Keeps the totals of `rows` that hold for the state once the changes `loaded` merged are
    /// logged; returns how many, and whether the cache reached fifteen sixteenths of its budget
    /// (then the rest are left).
    fn restore(&self, state: &mut TenantState, rows: Vec<StoredTotals>, loaded: &Loaded) -> (usize, bool) {
        let segments: HashMap<NaiveDate, Arc<Segment>> = (state.days.keys())
            .filter_map(|d| self.cached(state, *d).map(|s| (*d, s)))
            .collect();
        let room = self.budget / 16 * 15;
        let (mut bytes, mut restored) = (self.bytes(), 0);
        // Attributed conversions are moved past those inserted since the side snapshot.
        let inserted = loaded.side.as_ref().map_or(&[][..], |s| &s.inserted[..]);
        let conversions = (inserted, state.conversions.len());
        let entry = match self.entries.get(&Key::Tenant(state.tenant)) {
            Some(Value::Tenant(entry)) => Some(entry),
            _ => None,
        };
        let mut places: Option<(NaiveDate, stored::Places)> = None;
        for row in rows {
            let Some(seg) = segments.get(&row.day) else {
                continue;
            };
            if seg.as_of != row.snapshot_xmin || seg.unpersisted.load(Ordering::Relaxed) != 0 {
                continue;
            }
            if places.as_ref().is_none_or(|(day, _)| *day != row.day) {
                places = Some((row.day, stored::Places::of(seg)));
            }
            let Some((_, of_day)) = &places else { continue };
            let decoded = stored::decode(&row.body, seg, of_day, conversions, &mut |name| {
                state.symbol(name)
            });
            let totals = match decoded {
                Ok(totals) => totals,
                Err(err) => {
                    tracing::warn!(tenant = state.tenant.0, day = %row.day, error = %err, "ignoring persisted kept totals");
                    continue;
                }
            };
            let (shape, rows_kept, basis) = (totals.shape.clone(), totals.rows, totals.basis.clone());
            let partial = Arc::new(totals.into_partial(seg.version, state.changes.version));
            let held = state.held(&segments);
            if !held.restorable(row.day, &partial, &basis, loaded) {
                continue;
            }
            bytes += partial.heap_bytes() as u64;
            if bytes > room {
                return (restored, true);
            }
            let key = PartialKey {
                tenant: state.generation,
                shape,
                slot: Slot::Day(row.day),
                rows: rows_kept.slot(),
            };
            if let Some(entry) = &entry {
                (entry.persisted_totals.lock().unwrap_or_else(|p| p.into_inner()))
                    .insert(key.clone(), (partial.from(), basis));
            }
            self.entries.insert(Key::Partial(key), Value::Partial(partial));
            restored += 1;
        }
        (restored, false)
    }
}
