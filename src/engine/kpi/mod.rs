//! KPI computation (docs/metrics.md §4-§8) over a tenant's day segments.
//!
//! A computation reads [`Data`]: the segments a query needs (chosen by their [`Bounds`]), the
//! tenant's symbol names, presence and conversions. Overview, breakdowns and time series share
//! one scan ([`scan`]) that places every item by its docs/metrics.md §4 time, filters it by the §6
//! rules and routes it ([`route`]) to its group; the segments are split into parts scanned in
//! parallel ([`acc`] totals merge in any order), and each group's totals become KPIs in
//! [`finish`]. Repeat contacts and conversion attribution need a customer's other days; they
//! come from per-query lookups by customer ([`joins`]). Backlog, utilization and drill-down are
//! in [`live`].
//!
//! Counts and sums are integers and means are sums of whole microseconds, so they are exact in
//! any merge order; percentiles are exact up to [`EXACT_PERCENTILES_UP_TO`] values per group and
//! within 1 % above (docs/metrics.md §9, [`stats`]).
//!
//! [`EXACT_PERCENTILES_UP_TO`]: crate::engine::stats::EXACT_PERCENTILES_UP_TO
//! [`stats`]: crate::engine::stats
//!
//! [`Bounds`]: crate::engine::segment::Bounds

mod acc;
mod filter;
pub mod finish;
mod joins;
mod ledger;
pub mod live;
pub mod partial;
mod route;
mod scan;
mod sla;
pub mod stored;

use std::{
    collections::HashSet,
    sync::{
        Arc, LazyLock, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use rayon::prelude::*;

use self::{
    acc::{Budget, Groups},
    filter::Compiled,
    joins::Joins,
    partial::{Changes, KeptRows, Partial, PartialKey, PartialStore, Slot},
    route::Router,
    scan::{LazyJoins, Scan, Select},
};
use super::{intern::Interner, segment::Segment};
pub use crate::domain::kpi::*;
use crate::domain::{
    Error,
    calendar::{self, Schedule},
    event::Presence,
    query::Query,
    time::{Micros, Span, micros},
};

/// Most bytes one computation spends on groups and their tag counts (README, Limits), summed
/// over the parts it scans in parallel; merged totals add at most as much again.
pub const QUERY_GROUP_BYTES: usize = 64 << 20;

/// A day in microseconds.
const DAY_MICROS: i64 = 86_400_000_000;

/// Rows scanned by one parallel part: small enough to spread a day over both cores, large
/// enough that merging the parts' totals costs nothing.
/// (Tests use small parts so that merging parts is exercised.)
const PART_ROWS: usize = if cfg!(test) { 97 } else { 16_384 };

/// An `agent_status` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceChange {
    pub agent: Sym,
    pub at: Micros,
    pub status: Presence,
}

/// A `conversion` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversionRec {
    pub at: Micros,
    /// Tenant customer id.
    pub customer: u32,
    pub kind: Sym,
    pub value_minor: Option<i64>,
    pub currency: Sym,
}

/// A consistent snapshot of what a tenant's computations read.
#[derive(Clone, Default)]
pub struct Data {
    /// The segments the query needs (any order); a conversation is in exactly one segment.
    pub segments: Vec<Arc<Segment>>,
    /// Names of the tenant's symbols.
    pub symbols: Arc<Interner>,
    /// Number of tenant customer ids (every customer id is below it).
    pub customers: usize,
    /// Presence changes, sorted by (agent, time, event id).
    pub presence: Arc<Vec<PresenceChange>>,
    /// Conversions, sorted by (time, event id).
    pub conversions: Arc<Vec<ConversionRec>>,
    /// Which customers' openings and conversions changed, version by version: kept totals
    /// are reused while none they read changed ([`partial`]).
    pub changes: Arc<Changes>,
    /// The tenant's identity in the cache (partial totals of different tenants never mix).
    pub tenant: u64,
}

impl Data {
    /// The text of a group key: a dimension value's name ("" = not set), a channel or priority
    /// name, an hour (0-23) or ISO weekday (1-7), or a bucket's start in RFC 3339.
    pub fn label(&self, key: GroupKey) -> String {
        match key {
            GroupKey::All => String::new(),
            GroupKey::Value(sym) => self.symbols.name(sym).to_owned(),
            GroupKey::Channel(c) => c.as_str().to_owned(),
            GroupKey::Priority(p) => p.as_str().to_owned(),
            GroupKey::Number(n) => n.to_string(),
            GroupKey::Bucket(start) => crate::domain::time::to_datetime(start).to_rfc3339(),
            // Named by the computation that knows the policies ([`Computation::label`]).
            GroupKey::Policy(i) => format!("policy {i}"),
        }
    }
}

/// Set when the client went away or its deadline passed: computations stop at the next part.
#[derive(Debug, Default)]
pub struct Cancel(AtomicBool);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), Error> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// One question over one tenant's data.
pub struct Computation<'a> {
    pub data: &'a Data,
    pub query: &'a Query,
    /// The tenant's schedule, used when `query.business_hours`.
    pub schedule: Option<&'a Schedule>,
    pub targets: &'a Targets,
    /// The tenant's SLA policies, in order (docs/metrics.md §10).
    pub sla: &'a [crate::domain::sla::Policy],
    pub cancel: &'a Cancel,
    /// Where interior segments' totals are kept between computations (none: computed every
    /// time).
    pub partials: Option<&'a dyn PartialStore>,
}

impl Computation<'_> {
    /// The text of a group key ([`Data::label`]; an SLA policy by its name).
    pub fn label(&self, key: GroupKey) -> String {
        match key {
            GroupKey::Policy(i) => self
                .sla
                .get(i as usize)
                .map_or_else(|| self.data.label(key), |p| p.name.clone()),
            other => self.data.label(other),
        }
    }

    /// A duration as the query measures it: whole, or inside business hours (docs/metrics.md §7).
    pub fn measure(&self, span: Span) -> f64 {
        match (self.query.business_hours, self.schedule) {
            (true, Some(s)) => s.open_seconds(span),
            _ => span.seconds().max(0.0),
        }
    }

    fn window(&self) -> Span {
        Span {
            start: micros(self.query.window.from),
            end: micros(self.query.window.to),
        }
    }

    /// KPIs per group of `grouping` (docs/metrics.md §6). Groups without items are not returned,
    /// except every bucket of a time series, which is always present.
    pub fn run(&self, grouping: Grouping) -> Result<Vec<(GroupKey, Kpis)>, Error> {
        let scan = self.scan(grouping);
        let mut groups = self.scan_parts(&scan, grouping)?;
        let buckets = match grouping {
            Grouping::Series(g) => {
                calendar::buckets(self.query.time_zone, g, scan.window.start, scan.window.end)
            }
            _ => Vec::new(),
        };
        for b in &buckets {
            groups.get(GroupKey::Bucket(b.start));
        }
        self.cancel.check()?;
        let d = self.data;
        let series = matches!(grouping, Grouping::Series(_));
        let mut out: Vec<(GroupKey, finish::Finished)> = groups
            .into_sorted()
            .into_par_iter()
            .map(|(key, acc)| (key, finish::finish(acc, &d.symbols, &d.conversions, series)))
            .collect();
        if series {
            series_retention(&mut out);
        }
        // Rows by value name, not by id (ids depend on arrival order).
        if let Grouping::By(_) = grouping {
            out.sort_by(|(a, _), (b, _)| match (a, b) {
                (GroupKey::Value(x), GroupKey::Value(y)) => d.symbols.name(*x).cmp(d.symbols.name(*y)),
                _ => a.cmp(b),
            });
        }
        Ok(out.into_iter().map(|(key, f)| (key, f.kpis)).collect())
    }

    /// Everything the scan of `grouping` shares: filters, routing, the previous window and the
    /// customer lookups.
    fn scan(&self, grouping: Grouping) -> Scan<'_> {
        let q = self.query;
        let window = self.window();
        let (previous, first_bucket) = previous_window(q, grouping);
        // Hour-of-day and weekday rows also place the previous window's customers by their own
        // local hour and weekday.
        let router = Router::new(
            grouping,
            q.time_zone,
            previous.start.min(window.start),
            window.end,
        );
        let kinds: Option<HashSet<Sym>> = (!q.conversion_kinds.is_empty()).then(|| {
            q.conversion_kinds
                .iter()
                .filter_map(|k| self.data.symbols.get(k))
                .collect()
        });
        let repeat_window = q.repeat_window.num_microseconds().unwrap_or(i64::MAX);
        let attribution = q.attribution_window.num_microseconds().unwrap_or(i64::MAX);
        // Built on first use: when every row comes from kept totals, no lookup is needed.
        let data = self.data;
        let asked: Arc<OnceLock<joins::Asked>> = Arc::default();
        let asked_later = asked.clone();
        let joins: LazyJoins<'_> = LazyLock::new(Box::new(move || {
            Joins::new(
                &data.segments,
                data.customers,
                Span {
                    start: window.start,
                    end: window.end.saturating_add(repeat_window),
                },
                repeat_window,
                &data.conversions,
                Span {
                    start: window.start,
                    end: window.end.saturating_add(attribution),
                },
                kinds.as_ref(),
                attribution,
                asked_later.get(),
            )
        }));
        Scan {
            comp: self,
            repeat_window,
            attribution_window: attribution,
            budget: Arc::new(Budget::new(QUERY_GROUP_BYTES)),
            policies: sla::Policies::new(&self.data.symbols, self.sla),
            grouping,
            filters: Compiled::new(&self.data.symbols, &q.filters),
            router,
            joins,
            asked,
            window,
            previous,
            first_bucket,
        }
    }

    /// Everything about the question that changes a segment's totals, except the window.
    fn shape(&self, grouping: Grouping) -> Arc<str> {
        let q = self.query;
        let mut kinds = q.conversion_kinds.clone();
        kinds.sort();
        let business = q.business_hours || self.sla.iter().any(|p| p.uses_business_hours());
        let schedule = if business {
            format!("{:?}", self.schedule)
        } else {
            String::new()
        };
        format!(
            "{grouping:?}|{:?}|{}|{schedule}|{:?}|{:?}|{kinds:?}|{}|{:?}|{:?}",
            q.filters,
            q.business_hours,
            q.repeat_window,
            q.attribution_window,
            q.time_zone.name(),
            self.targets,
            self.sla
        )
        .into()
    }

    fn partial_key(&self, day: chrono::NaiveDate, shape: &Arc<str>, rows: KeptRows) -> PartialKey {
        PartialKey {
            tenant: self.data.tenant,
            shape: shape.clone(),
            slot: Slot::Day(day),
            rows: rows.slot(),
        }
    }

    /// Totals of every relevant segment, merged: what [`Computation::plan`] found kept is
    /// reused, the rest is computed (and kept) or scanned in parts. Work runs in parallel; each
    /// worker folds the parts it takes into one set of groups, so value lists are merged once
    /// per worker, not once per part.
    fn scan_parts(&self, scan: &Scan<'_>, grouping: Grouping) -> Result<Groups, Error> {
        // Milliseconds since planning began at the end of each phase, logged at debug.
        let started = std::time::Instant::now();
        let plan = self.plan(scan, grouping);
        let _ = scan.asked.set(self.asked(&plan));
        let Plan {
            cached,
            corrections,
            days,
            parts,
        } = plan;
        let chunks = || days.iter().flat_map(|d| &d.chunks).filter_map(ChunkTotals::task);
        tracing::debug!(
            ?grouping,
            kept = cached.len(),
            corrected = corrections.len(),
            rebuilt = days.len(),
            computed_chunks = chunks().count(),
            computed_rows = chunks().map(|c| c.rows.len()).sum::<usize>(),
            scanned_parts = parts.len(),
            "computation plan"
        );
        let planned_ms = started.elapsed().as_secs_f64() * 1e3;
        let corrected = self.correct(scan, &corrections);
        let corrected_ms = started.elapsed().as_secs_f64() * 1e3;
        let computed = self.keep_totals(scan, days, &corrected)?;
        let scanned = self.scan_in_parts(scan, parts)?;
        let computed_ms = started.elapsed().as_secs_f64() * 1e3;
        if scan.budget.exceeded() {
            return Err(Error::ResourceExhausted {
                limit: "query_memory",
                message: format!(
                    "this question's groups and tag counts need more than {} MiB; ask for a shorter window, add filters or break down by another dimension",
                    scan.budget.limit() >> 20
                ),
                retry_after: None,
            });
        }
        let whole_days = corrected
            .iter()
            .zip(&corrections)
            .filter(|(_, c)| c.whole_day)
            .map(|(p, _)| p);
        let kept: Vec<&Partial> = cached
            .iter()
            .chain(&computed)
            .chain(whole_days)
            .map(|p| p.as_ref())
            .collect();
        self.cancel.check()?;
        let merged = Partial::merged_groups(&scanned, &kept);
        tracing::debug!(
            planned_ms,
            corrected_ms,
            computed_ms,
            merged_ms = started.elapsed().as_secs_f64() * 1e3,
            "computation phases"
        );
        Ok(merged)
    }

    /// What the computation of `plan` asks the lookups: the customers of the rows it scans (with
    /// kept totals, the window's edges and the chunks that changed, not the whole lookahead; a
    /// new window, such as a sliding one, computes its edge totals and still gets small
    /// lookups) and of the verdicts it corrects.
    fn asked(&self, plan: &Plan) -> joins::Asked {
        let chunks = plan
            .days
            .iter()
            .flat_map(|d| &d.chunks)
            .filter_map(ChunkTotals::task);
        let scanned = (plan.parts.iter())
            .map(|(s, rows, select)| (*s, rows.clone(), *select))
            .chain(chunks.map(|c| (c.segment, c.rows.clone(), c.select)));
        let mut asked = asked_of(&self.data.segments, scanned, self.data.customers);
        for c in &plan.corrections {
            for customer in &c.stale.customers {
                set_bit(&mut asked.customers, *customer);
            }
            // The corrected verdicts' resolutions (and their repeat windows) lie in the span
            // their totals read.
            let read = c.stale.partial.openings.span;
            widen(&mut asked.resolutions, read.start, read.end);
        }
        asked
    }

    /// Where each relevant segment's totals come from ([`partial`]). A segment that begins
    /// inside the window keeps the totals of its rows that also end inside it, and one opened
    /// in the window before those of its rows that end before the window; its other rows (at
    /// the window's edges) are kept too, for exactly this window. A segment's totals that are
    /// not kept (or no longer valid) are built from its chunks' totals, of which only the
    /// chunks that changed are computed again. Without a partial store every relevant segment
    /// is scanned in parts.
    fn plan(&self, scan: &Scan<'_>, grouping: Grouping) -> Plan {
        let (w, previous) = (scan.window, scan.previous);
        let shape = self.shape(grouping);
        let mut plan = Plan::default();
        for (s, seg) in self.data.segments.iter().enumerate() {
            let b = &seg.bounds;
            if !(b.active_in(w.start, w.end) || b.opened_in(previous.start, previous.end)) {
                continue;
            }
            let mut rest = Select::All;
            if let Some(Keepable { rows, end }) = self.keepable(seg, scan, grouping) {
                let ending_before = if b.active.end < end {
                    seg.len()
                } else {
                    seg.active_ends().filter(|e| *e < end).count()
                };
                if ending_before > 0 {
                    let kept = rows(ending_before);
                    let key = self.partial_key(seg.day, &shape, kept);
                    let select = Select::EndingBefore(end);
                    self.reuse_or_build(&mut plan, s, (key, kept), select, rows);
                }
                if ending_before == seg.len() {
                    continue;
                }
                rest = Select::EndingFrom(end);
            }
            if self.partials.is_some() {
                let edge = KeptRows::Edge {
                    from: w.start,
                    to: w.end,
                };
                let key = self.partial_key(seg.day, &shape, edge);
                self.reuse_or_build(&mut plan, s, (key, edge), rest, |_| edge);
                continue;
            }
            plan.parts.extend(
                (0..seg.len())
                    .step_by(PART_ROWS)
                    .map(|start| (s, start..(start + PART_ROWS).min(seg.len()), rest)),
            );
        }
        plan
    }

    /// The kept totals of `key` (segment `s`'s rows `kept`, those `select` takes) when the store
    /// has them for the segment's version and no customer they read changed since; else a build
    /// from the segment's chunks.
    fn reuse_or_build(
        &self,
        plan: &mut Plan,
        s: usize,
        (key, kept): (PartialKey, KeptRows),
        select: Select,
        rows: impl Fn(usize) -> KeptRows,
    ) {
        let seg = &self.data.segments[s];
        match self.kept(&key, seg.version, kept) {
            Kept::Current(p) => return plan.cached.push(p),
            Kept::Stale(stale) => return plan.corrections.push(stale.into_correction(key, true)),
            Kept::No => {}
        }
        let mut build = DayBuild {
            key,
            from: seg.version,
            rows: kept,
            chunks: Vec::new(),
        };
        match self.what_to_keep(seg) {
            KeepOf::Chunks => self.chunks_of(plan, &mut build, s, select, rows),
            // Nothing else of an older day is kept: computed in pieces of several chunks (fewer
            // sets of groups in flight, fewer to merge).
            keep => {
                for start in (0..seg.len()).step_by(PART_ROWS) {
                    build.chunks.push(ChunkTotals::Compute(ChunkTask {
                        segment: s,
                        rows: start..(start + PART_ROWS).min(seg.len()),
                        version: seg.version,
                        kept,
                        select,
                        key: None,
                        judge: keep == KeepOf::Verdicts,
                    }));
                }
            }
        }
        plan.days.push(build);
    }

    /// Each chunk's totals of the rows `select` takes, kept under `rows(number taken)`: reused
    /// or computed now (and kept).
    fn chunks_of(
        &self,
        plan: &mut Plan,
        build: &mut DayBuild,
        s: usize,
        select: Select,
        rows: impl Fn(usize) -> KeptRows,
    ) {
        let seg = &self.data.segments[s];
        for (index, (range, version)) in seg.chunks().enumerate() {
            let taken = range.clone().filter(|row| select.takes(seg, *row)).count();
            if taken == 0 {
                continue;
            }
            let kept = rows(taken);
            let key = PartialKey {
                slot: Slot::Chunk(seg.day, index as u32),
                rows: kept.slot(),
                ..build.key.clone()
            };
            match self.kept(&key, version, kept) {
                Kept::Current(p) => build.chunks.push(ChunkTotals::Kept(p)),
                Kept::Stale(stale) => {
                    build.chunks.push(ChunkTotals::Corrected(plan.corrections.len()));
                    plan.corrections.push(stale.into_correction(key, false));
                }
                Kept::No => {
                    build.chunks.push(ChunkTotals::Compute(ChunkTask {
                        segment: s,
                        rows: range,
                        version,
                        kept,
                        select,
                        key: Some(key),
                        judge: true,
                    }));
                }
            }
        }
    }

    /// The totals kept under `key`, when they are of version `from` of the rows `kept`: current
    /// when no customer they read changed since, to correct when only returning customers'
    /// openings did and their verdicts were kept ([`ledger`]).
    fn kept(&self, key: &PartialKey, from: u64, kept: KeptRows) -> Kept {
        let Some(p) = self
            .partials
            .and_then(|store| store.get(key))
            .filter(|p| p.is_of(from, kept))
        else {
            return Kept::No;
        };
        match (self.data.changes.stale_openings(&p), &p.ledgers) {
            (Some(customers), _) if customers.is_empty() => Kept::Current(p),
            (Some(customers), Some(ledgers)) => Kept::Stale(Stale {
                ledgers: ledgers.clone(),
                partial: p,
                customers,
            }),
            _ => Kept::No,
        }
    }

    /// Judges the corrections' verdicts again (the lookups hold their customers) and keeps the
    /// corrected totals.
    fn correct(&self, scan: &Scan<'_>, corrections: &[Correction]) -> Vec<Arc<Partial>> {
        let repeat =
            |customer, resolved_at, own_inside| scan.joins.repeat_given(customer, resolved_at, own_inside);
        corrections
            .par_iter()
            .map(|c| {
                let stale = &c.stale;
                let partial = Arc::new(stale.partial.corrected(
                    &stale.ledgers,
                    &stale.customers,
                    repeat,
                    self.data.changes.version,
                ));
                self.keep(c.key.clone(), &partial, scan);
                partial
            })
            .collect()
    }

    /// What is kept of a segment besides its totals. Its rows change while its conversations
    /// still receive events: a day opened within a day of the tenant's newest opening keeps
    /// its chunks' totals, so a change computes only the chunks it touches. What its totals
    /// read (a repeat or attribution window after its items) changes while that window
    /// reaches the newest opening: such a day keeps its repeat-contact verdicts ([`ledger`]),
    /// so a returning customer corrects its totals. An older day keeps its totals alone (its
    /// rare change, such as a conversation resolved late, computes the day again).
    fn what_to_keep(&self, seg: &Segment) -> KeepOf {
        let q = self.query;
        let reach = q
            .repeat_window
            .max(q.attribution_window)
            .num_microseconds()
            .unwrap_or(i64::MAX)
            .saturating_add(DAY_MICROS);
        let newest = self
            .data
            .segments
            .iter()
            .map(|s| s.bounds.opened.end)
            .max()
            .unwrap_or(0);
        if seg.bounds.opened.end.saturating_add(DAY_MICROS) >= newest {
            KeepOf::Chunks
        } else if seg.bounds.active.end.saturating_add(reach) >= newest {
            KeepOf::Verdicts
        } else {
            KeepOf::Totals
        }
    }

    /// The rows of `seg` whose totals do not depend on the window's exact bounds, if any.
    fn keepable(&self, seg: &Segment, scan: &Scan<'_>, grouping: Grouping) -> Option<Keepable> {
        let (w, previous, b) = (scan.window, scan.previous, &seg.bounds);
        if b.active.start >= w.start {
            Some(Keepable {
                rows: KeptRows::Inside,
                end: w.end,
            })
        } else if !matches!(grouping, Grouping::Series(_))
            && b.opened.start >= previous.start
            && b.opened.end < w.start
        {
            // (A series keys previous customers to its first bucket: not kept.)
            Some(Keepable {
                rows: KeptRows::Before,
                end: w.start,
            })
        } else {
            None
        }
    }

    /// Builds (and keeps) the segments' totals from their chunks', computing those a plan
    /// needs, in parallel. A day's computed chunk totals are dropped once merged into its own
    /// (unless kept for themselves), so beside the cache only the days in flight hold theirs:
    /// computing every chunk first held them all at once, up to 955 MiB beyond the cache for a
    /// breakdown by agent at 10 M conversations (BENCHMARKS.md, "Memory outside the cache").
    fn keep_totals(
        &self,
        scan: &Scan<'_>,
        days: Vec<DayBuild>,
        corrected: &[Arc<Partial>],
    ) -> Result<Vec<Arc<Partial>>, Error> {
        days.into_par_iter()
            .map(|day| {
                let parts = day
                    .chunks
                    .into_par_iter()
                    .map(|c| match c {
                        ChunkTotals::Kept(p) => Ok(p),
                        ChunkTotals::Corrected(i) => Ok(corrected[i].clone()),
                        ChunkTotals::Compute(task) => self.chunk_totals(scan, task),
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                // (Even one chunk's totals are copied: the day's are of the segment's version.)
                let mut partial = Partial::merged(&parts, day.from, day.rows, self.data.changes.version);
                // (Freshly merged: not shared, nothing is copied.)
                Arc::make_mut(&mut partial.groups).shrink(crate::engine::stats::BIN_FROM);
                scan.budget.charge(partial.groups.budgeted_bytes());
                let partial = Arc::new(partial);
                self.keep(day.key, &partial, scan);
                Ok(partial)
            })
            .collect()
    }

    /// One chunk's totals (kept under the task's key, if any).
    fn chunk_totals(&self, scan: &Scan<'_>, task: ChunkTask) -> Result<Arc<Partial>, Error> {
        self.cancel.check()?;
        let seg = &self.data.segments[task.segment];
        let mut groups = Groups::charging(&scan.budget);
        let mut scratch = if task.judge {
            scan::Scratch::judging()
        } else {
            scan::Scratch::default()
        };
        scan.part(seg, task.rows, task.select, &mut groups, &mut scratch);
        groups.shrink(crate::engine::stats::BIN_CHUNK_FROM);
        // Complete: the day's totals merged from it are charged instead.
        groups.settle();
        let (openings, conversions, ledger) = scratch.customers_read();
        let partial = Arc::new(Partial {
            groups: Arc::new(groups),
            moved: Vec::new(),
            from: task.version,
            rows: task.kept,
            at: self.data.changes.version,
            openings,
            conversions,
            ledgers: ledger.map(|l| vec![l]),
        });
        if let Some(key) = task.key {
            self.keep(key, &partial, scan);
        }
        Ok(partial)
    }

    /// Keeps `partial` under `key`, unless the budget cut it short (incomplete totals are never
    /// kept).
    fn keep(&self, key: PartialKey, partial: &Arc<Partial>, scan: &Scan<'_>) {
        if let Some(store) = self.partials
            && !scan.budget.exceeded()
        {
            store.put(key, partial.clone());
        }
    }

    /// Scans parts of segments in parallel, one set of groups per worker.
    fn scan_in_parts(
        &self,
        scan: &Scan<'_>,
        parts: Vec<(usize, std::ops::Range<usize>, Select)>,
    ) -> Result<Vec<Groups>, Error> {
        parts
            .into_par_iter()
            .try_fold(
                || (Groups::charging(&scan.budget), scan::Scratch::default()),
                |(mut groups, mut scratch), (s, rows, select)| {
                    self.cancel.check()?;
                    scan.part(&self.data.segments[s], rows, select, &mut groups, &mut scratch);
                    Ok((groups, scratch))
                },
            )
            .map(|folded: Result<_, Error>| folded.map(|(groups, _)| groups))
            .collect()
    }
}

/// What is kept of a segment ([`Computation::what_to_keep`]): its totals, and with them...
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepOf {
    /// ...its chunks' totals (with their verdicts),
    Chunks,
    /// ...its repeat-contact verdicts,
    Verdicts,
    /// ...nothing else.
    Totals,
}

/// A segment's rows whose totals can be kept: those ending before `end`, named by their number.
struct Keepable {
    rows: fn(usize) -> KeptRows,
    end: Micros,
}

/// What the partial store holds for a slot ([`Computation::kept`]).
enum Kept {
    Current(Arc<Partial>),
    Stale(Stale),
    No,
}

/// Kept totals that returning customers' openings made stale, with their verdicts.
struct Stale {
    partial: Arc<Partial>,
    ledgers: Vec<Arc<ledger::Ledger>>,
    /// Whose openings changed (sorted).
    customers: Vec<u32>,
}

impl Stale {
    fn into_correction(self, key: PartialKey, whole_day: bool) -> Correction {
        Correction {
            stale: self,
            key,
            whole_day,
        }
    }
}

/// Kept totals to correct and keep again under `key`.
struct Correction {
    stale: Stale,
    key: PartialKey,
    /// A segment's totals (used as they are), not a chunk's (merged into its day's).
    whole_day: bool,
}

/// Where one computation's totals come from, segment by segment.
#[derive(Default)]
struct Plan {
    /// Kept totals found in the partial store.
    cached: Vec<Arc<Partial>>,
    /// Kept totals to correct for returning customers.
    corrections: Vec<Correction>,
    /// Segments' totals to build from their chunks and keep.
    days: Vec<DayBuild>,
    /// Rows to scan in parts, nothing kept: (segment, rows, selection).
    parts: Vec<(usize, std::ops::Range<usize>, Select)>,
}

/// A segment's totals to build from its chunks' and keep under `key`.
struct DayBuild {
    key: PartialKey,
    /// The segment's version and the rows built.
    from: u64,
    rows: KeptRows,
    chunks: Vec<ChunkTotals>,
}

/// One chunk's totals: kept, corrected by [`Plan::corrections`]`[i]` or to compute.
enum ChunkTotals {
    Kept(Arc<Partial>),
    Corrected(usize),
    Compute(ChunkTask),
}

impl ChunkTotals {
    fn task(&self) -> Option<&ChunkTask> {
        match self {
            ChunkTotals::Compute(task) => Some(task),
            _ => None,
        }
    }
}

/// A chunk's totals to compute: the rows `select` takes of `rows` of `segment`, kept under
/// `key` when the segment's rows still change (then a change computes only the chunks it
/// touches again; [`Computation::what_to_keep`]).
struct ChunkTask {
    segment: usize,
    rows: std::ops::Range<usize>,
    /// The chunk's version and the rows taken.
    version: u64,
    kept: KeptRows,
    select: Select,
    key: Option<PartialKey>,
    /// Note the repeat-contact verdicts counted ([`ledger`]).
    judge: bool,
}

/// What the scan of the rows `parts` (segment, rows, selection) select asks the lookups: their
/// customers, at resolutions between their first and last events.
fn asked_of(
    segments: &[Arc<Segment>],
    parts: impl Iterator<Item = (usize, std::ops::Range<usize>, Select)>,
    customers: usize,
) -> joins::Asked {
    let mut asked = joins::Asked {
        customers: vec![0u64; customers.div_ceil(64).max(1)],
        resolutions: Span {
            start: Micros::MAX,
            end: Micros::MIN,
        },
    };
    for (s, rows, select) in parts {
        let seg = &segments[s];
        for row in rows.filter(|row| select.takes(seg, *row)) {
            // Every scanned customer must be in the set (a lookup leaves the others out).
            set_bit(&mut asked.customers, seg.customer(row));
            widen(&mut asked.resolutions, seg.active_start(row), seg.active_end(row));
        }
    }
    asked
}

/// Widens `span` to hold `[start, end]`.
fn widen(span: &mut Span, start: Micros, end: Micros) {
    span.start = span.start.min(start);
    span.end = span.end.max(end);
}

/// Adds customer `c` to a set of one bit per customer id.
fn set_bit(bits: &mut Vec<u64>, c: u32) {
    let c = c as usize;
    if c / 64 >= bits.len() {
        bits.resize(c / 64 + 1, 0);
    }
    bits[c / 64] |= 1 << (c % 64);
}

/// The window whose customers retention compares with (docs/metrics.md §5: the window of the same
/// length ending at `from`; for a time series, one bucket length before its first bucket,
/// docs/metrics.md), and a series' first bucket.
fn previous_window(q: &Query, grouping: Grouping) -> (Span, Option<Micros>) {
    let window = Span {
        start: micros(q.window.from),
        end: micros(q.window.to),
    };
    match grouping {
        Grouping::Series(g) => {
            let first = calendar::buckets(q.time_zone, g, window.start, window.end)
                .first()
                .copied();
            let start = first.map_or(window.start, |b| b.start - (b.end - b.start));
            (
                Span {
                    start,
                    end: window.start,
                },
                first.map(|b| b.start),
            )
        }
        _ => (
            Span {
                start: window.start - (window.end - window.start),
                end: window.start,
            },
            None,
        ),
    }
}

/// Which day segments a computation reads, by what their [`Bounds`] must overlap: the cache
/// loads exactly those.
///
/// [`Bounds`]: crate::engine::segment::Bounds
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reads {
    /// Items placed in these spans (any item of a conversation lies in its active span).
    active: Vec<Span>,
    /// Conversations opened in these spans (retention's window before, repeat lookahead).
    opened: Vec<Span>,
    /// Conversations open at these instants (backlog).
    open_at: Vec<Micros>,
    /// Conversations that can be handled in these spans (utilization).
    handled: Vec<Span>,
}

impl Reads {
    /// What a summary (overview, breakdown, series, drill-down) of `q` grouped by `grouping`
    /// reads.
    pub fn summary(q: &Query, grouping: Grouping) -> Reads {
        let window = Span {
            start: micros(q.window.from),
            end: micros(q.window.to),
        };
        let (previous, _) = previous_window(q, grouping);
        let repeat = q.repeat_window.num_microseconds().unwrap_or(i64::MAX);
        let mut opened = vec![previous];
        if repeat > 0 {
            opened.push(Span {
                start: window.start,
                end: window.end.saturating_add(repeat),
            });
        }
        Reads {
            active: vec![window],
            opened,
            ..Reads::default()
        }
    }

    /// Every conversation with an item in `span` (a warm-up of recent days).
    pub fn active(span: Span) -> Reads {
        Reads {
            active: vec![span],
            ..Reads::default()
        }
    }

    /// The conversations opened in `span` (one conversation looked up by its opening).
    pub fn opened_in(span: Span) -> Reads {
        Reads {
            opened: vec![span],
            ..Reads::default()
        }
    }

    /// What a backlog at `at` reads.
    pub fn backlog(at: Micros) -> Reads {
        Reads {
            open_at: vec![at],
            ..Reads::default()
        }
    }

    /// What utilization over `q`'s window reads.
    pub fn utilization(q: &Query) -> Reads {
        Reads {
            handled: vec![Span {
                start: micros(q.window.from),
                end: micros(q.window.to),
            }],
            ..Reads::default()
        }
    }

    /// Both.
    pub fn and(mut self, other: Reads) -> Reads {
        self.active.extend(other.active);
        self.opened.extend(other.opened);
        self.open_at.extend(other.open_at);
        self.handled.extend(other.handled);
        self
    }

    /// Whether a segment with these bounds is read.
    pub fn wants(&self, b: &crate::engine::segment::Bounds) -> bool {
        self.active.iter().any(|w| b.active_in(w.start, w.end))
            || self.opened.iter().any(|w| b.opened_in(w.start, w.end))
            || self.open_at.iter().any(|at| b.open_at(*at))
            || self.handled.iter().any(|w| b.handled_in(w.start, w.end))
    }
}

/// Series retention: the previous bucket's customers (the first bucket's were collected from
/// the window before it).
fn series_retention(out: &mut [(GroupKey, finish::Finished)]) {
    let mut previous: Option<Vec<u32>> = None;
    for (_, f) in out.iter_mut() {
        if let Some(prev) = previous.take() {
            f.kpis.retention = finish::retention(prev, &f.customers);
        }
        previous = Some(std::mem::take(&mut f.customers));
    }
}

#[cfg(test)]
mod tests;
