//! Kept totals persisted beside the day snapshots, and read back by a restarted replica
//! (`kpi::stored` says what they are and when they hold).
//!
//! Persisting: after a day's snapshot or the side snapshot is written, and after computations
//! kept new day totals (at most once per [`PERSIST_TOTALS_INTERVAL`] per tenant), a background
//! pass writes every kept day total whose basis is held exactly as stored: its own day and
//! every day whose openings it reads are their snapshots with nothing merged since, and the side
//! snapshot when it reads conversions. Restoring: a refresh that loaded days reads their
//! persisted totals and keeps those whose basis is what it holds now, most recently written
//! first, while the cache is under three quarters of its budget.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use chrono::NaiveDate;
use sha2::{Digest, Sha256};
use tokio::sync::OwnedMutexGuard;

use super::{Key, QueryCache, TenantState, Value, WORKER, blocking, in_background};
use crate::domain::{Error, tenant::TenantId};
use crate::engine::{
    kpi::{
        partial::{KeptRows, Partial, PartialKey, Slot},
        stored::{self, Basis},
    },
    schedule::Scheduler,
    segment::{Bounds, Segment},
    source::{Source, SourceReads, StoredTotals},
};

/// Kept day totals computed by queries are persisted at most this often per tenant.
const PERSIST_TOTALS_INTERVAL: Duration = Duration::from_secs(10);

/// Whether totals kept under `key` are of the kind persisted: a whole day's rows ending inside
/// or before a window (not a chunk's, not a window's edges).
pub(super) fn persistable(key: &PartialKey) -> bool {
    matches!(key.slot, Slot::Day(_)) && !matches!(key.rows, KeptRows::Edge { .. })
}

/// What the basis of totals is read from: the tenant's days, the segments held, the side
/// snapshot presence and conversions are exactly (if any).
struct Held<'a> {
    days: &'a BTreeMap<NaiveDate, Bounds>,
    segments: &'a HashMap<NaiveDate, Arc<Segment>>,
    side: Option<i64>,
}

impl Held<'_> {
    /// The basis of `p`, totals of `day`, as held now: `None` when a day it reads (its own
    /// included) is not held exactly as its snapshot, or it reads conversions and they are not
    /// exactly the side snapshot.
    fn basis(&self, day: NaiveDate, p: &Partial) -> Option<Basis> {
        let span = p.openings_span();
        let mut days = Vec::new();
        for (d, bounds) in self.days {
            // `opened_in` is half-open; the span read is closed.
            if *d == day || bounds.opened_in(span.start, span.end.saturating_add(1)) {
                let seg = self.segments.get(d)?;
                if seg.unpersisted.load(Ordering::Relaxed) != 0 {
                    return None;
                }
                days.push((*d, seg.as_of));
            }
        }
        let side = match stored::reads_conversions(p) {
            true => Some(self.side?),
            false => None,
        };
        Some(Basis { days, side })
    }
}

impl TenantState {
    /// The side snapshot presence and conversions are exactly, if any.
    fn side_identity(&self) -> Option<i64> {
        self.side_xmin.filter(|_| self.side_unpersisted == 0)
    }
}

/// A day's totals to persist.
struct ToPersist {
    key: PartialKey,
    day: NaiveDate,
    partial: Arc<Partial>,
    segment: Arc<Segment>,
    basis: Basis,
}

impl<S: Source> QueryCache<S> {
    /// Persists the tenant's new kept day totals when computations kept some since the last
    /// time, at most once per [`PERSIST_TOTALS_INTERVAL`].
    pub(super) fn persist_new_totals(self: &Arc<Self>, state: &mut TenantState) {
        let kept = self.day_totals_kept.load(Ordering::Relaxed);
        let recent = state
            .totals_persisted_at
            .is_some_and(|at| at.elapsed() < PERSIST_TOTALS_INTERVAL);
        if kept == state.totals_seen || recent {
            return;
        }
        state.totals_seen = kept;
        state.totals_persisted_at = Some(Instant::now());
        self.persist_totals(state.tenant);
    }

    /// Persists, in the background, the tenant's kept day totals whose basis is held exactly
    /// as stored and that were not persisted on that basis yet.
    pub(super) fn persist_totals(self: &Arc<Self>, tenant: TenantId) {
        let cache = self.clone();
        let worker = WORKER.try_with(Clone::clone).ok();
        tokio::spawn(async move {
            let Ok(_permit) = cache.snapshot_writes.clone().acquire_owned().await else {
                return;
            };
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
            let segments: HashMap<NaiveDate, Arc<Segment>> = (state.days.keys())
                .filter_map(|d| self.cached(&state, *d).map(|s| (*d, s)))
                .collect();
            let held = Held {
                days: &state.days,
                segments: &segments,
                side: state.side_identity(),
            };
            let mut todo = Vec::new();
            let mut persisted = entry.persisted_totals.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = Vec::new();
            for (key, value) in self.entries.iter() {
                let (Key::Partial(key), Value::Partial(p)) = (&*key, value) else {
                    continue;
                };
                let Slot::Day(day) = key.slot else { continue };
                if key.tenant != state.generation || !persistable(key) {
                    continue;
                }
                seen.push(key.clone());
                let Some(segment) = segments.get(&day) else {
                    continue;
                };
                if segment.version != p.from() || !state.changes.still_valid(&p) {
                    continue;
                }
                let Some(basis) = held.basis(day, &p) else {
                    continue;
                };
                if persisted.get(key) == Some(&(p.from(), basis.clone())) {
                    continue;
                }
                todo.push(ToPersist {
                    key: key.clone(),
                    day,
                    partial: p,
                    segment: segment.clone(),
                    basis,
                });
            }
            // Totals no longer held are forgotten here too.
            let seen: std::collections::HashSet<PartialKey> = seen.into_iter().collect();
            persisted.retain(|k, _| seen.contains(k));
            (todo, state.symbols.clone())
        };
        let mut written = 0;
        for t in todo {
            let (partial, segment, basis, symbols) = (
                t.partial.clone(),
                t.segment.clone(),
                t.basis.clone(),
                symbols.clone(),
            );
            let shape = t.key.shape.clone();
            let body = in_background(worker.clone(), move || {
                stored::encode(&shape, &partial, &segment, &symbols, &basis)
            })
            .await?;
            let Some(body) = body else { continue };
            let totals = StoredTotals {
                day: t.day,
                shape_hash: Sha256::digest(t.key.shape.as_bytes()).to_vec(),
                kind: i16::from(matches!(t.key.rows, KeptRows::Before(_))),
                snapshot_xmin: t.segment.as_of,
                body,
            };
            self.source.save_totals(tenant, totals).await?;
            entry
                .persisted_totals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(t.key, (t.partial.from(), t.basis));
            written += 1;
        }
        Ok(written)
    }

    /// Reads the persisted totals of the days just loaded (`days`) and keeps those whose basis
    /// the state holds now. Derived data: a failure to read them is logged and the days are
    /// computed from their rows.
    pub(super) async fn restore_totals(
        self: &Arc<Self>,
        state: OwnedMutexGuard<TenantState>,
        db: &mut S::Reads,
        days: &[NaiveDate],
    ) -> Result<OwnedMutexGuard<TenantState>, Error> {
        let started = Instant::now();
        let rows = match db.totals(state.tenant, days).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(tenant = state.tenant.0, error = %err, "could not read persisted kept totals");
                return Ok(state);
            }
        };
        if rows.is_empty() {
            return Ok(state);
        }
        let cache = self.clone();
        blocking(move || {
            let mut state = state;
            let (found, restored) = (rows.len(), cache.restore(&mut state, rows));
            tracing::info!(
                tenant = state.tenant.0,
                found,
                restored,
                ms = started.elapsed().as_millis() as u64,
                "persisted kept totals read"
            );
            Ok(state)
        })
        .await
    }

    /// Keeps the totals of `rows` that hold for the state; returns how many.
    fn restore(&self, state: &mut TenantState, rows: Vec<StoredTotals>) -> usize {
        let segments: HashMap<NaiveDate, Arc<Segment>> = (state.days.keys())
            .filter_map(|d| self.cached(state, *d).map(|s| (*d, s)))
            .collect();
        let room = self.budget / 4 * 3;
        let (mut bytes, mut restored) = (self.bytes(), 0);
        let entry = match self.entries.get(&Key::Tenant(state.tenant)) {
            Some(Value::Tenant(entry)) => Some(entry),
            _ => None,
        };
        for row in rows {
            let Some(seg) = segments.get(&row.day) else {
                continue;
            };
            if seg.as_of != row.snapshot_xmin || seg.unpersisted.load(Ordering::Relaxed) != 0 {
                continue;
            }
            let decoded = stored::decode(&row.body, seg, &mut |name| state.symbol(name));
            let totals = match decoded {
                Ok(totals) => totals,
                Err(err) => {
                    tracing::warn!(tenant = state.tenant.0, day = %row.day, error = %err, "ignoring persisted kept totals");
                    continue;
                }
            };
            let (shape, rows_kept, basis) = (totals.shape.clone(), totals.rows, totals.basis.clone());
            let partial = Arc::new(totals.into_partial(seg.version, state.changes.version));
            let held = Held {
                days: &state.days,
                segments: &segments,
                side: state.side_identity(),
            };
            if held.basis(row.day, &partial).as_ref() != Some(&basis) {
                continue;
            }
            bytes += partial.heap_bytes() as u64;
            if bytes > room {
                break;
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
        restored
    }
}
