//! The KPI use case: a tenant's question, answered from an up-to-date [`View`] of its data.
//!
//! Each call reads the tenant's settings (business hours, targets), checks the preconditions,
//! asks the cache for the day segments the computation reads, and computes on the blocking pool
//! with a cancellation flag that is raised when the caller goes away (the gRPC future is dropped
//! when the client cancels or its deadline passes). Streams (drill-down, watch) hold only
//! immutable segments while they wait for a slow reader, never a lock.

mod kept;
mod warm;
mod watch;

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::mpsc;

/// The engine's query cache over the event store.
pub type QueryCache = crate::engine::cache::QueryCache<crate::store::segments::PgSource>;

use crate::{
    domain::{
        Error,
        calendar::{self, Granularity},
        query::{Asked, AskedKind, Query},
        scorecard::{self, Line},
        settings::{Settings, SettingsUpdate},
        tenant::TenantId,
        time::{Micros, Span, micros},
    },
    engine::kpi::{
        Cancel, Computation, Dimension, GroupKey, Grouping, Kpis, MAX_ROWS, Reads, keep_ranked,
        live::{AgentUtilization, Backlog, ConversationRow, DrillDown, SlaStatus},
    },
    engine::{
        cache::{View, WORKER},
        schedule::Scheduler,
    },
    store,
};

/// Most buckets a time series may return.
pub const MAX_BUCKETS: usize = 10_000;
/// Drill-down rows rendered ahead of a slow reader.
const DRILL_DOWN_AHEAD: usize = 256;

/// Whether a call whose data took `waited` to be ready (of a cache that waits `patience`, four
/// fifths of the request timeout, for a tenant's load) still has the time to compute: over three
/// quarters of the patience, the tenant's days were loading (a large history: minutes), and the
/// two fifths of the request's time left may not cover the first computation over them (10 M
/// conversations: 5-15 s, BENCHMARKS.md; 1 M: about 1 s after a 12 s load, which half the
/// patience refused in `bench/live.sh`). Then the call says so (UNAVAILABLE, retry now: the data
/// stays in memory) instead of running out of time.
fn loaded_in_time(waited: Duration, patience: Duration) -> Result<(), Error> {
    if waited <= patience / 4 * 3 {
        return Ok(());
    }
    Err(Error::Unavailable(format!(
        "the tenant's data was brought into memory while this call waited {} s; retry now for the answer",
        waited.as_secs()
    )))
}

/// Raises a [`Cancel`] flag when dropped: computations of a request that went away stop.
struct CancelOnDrop(Arc<Cancel>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Scorecards of the whole tenant, each agent and each team.
pub struct Scorecards {
    pub overall: Vec<Line>,
    pub agents: Vec<(String, Vec<Line>)>,
    pub teams: Vec<(String, Vec<Line>)>,
    /// Agents and teams with items beyond the [`MAX_ROWS`] listed.
    pub agents_omitted: u64,
    pub teams_omitted: u64,
}

/// One push of a watched overview.
#[derive(Clone)]
pub struct WatchUpdate {
    pub kpis: Kpis,
    pub window: Span,
}

/// Answers KPI questions.
#[derive(Clone)]
pub struct KpiService {
    pool: PgPool,
    cache: Arc<QueryCache>,
    scheduler: Arc<Scheduler>,
    /// The dashboard questions asked, noted for the next restart's warm-up.
    asked: Arc<warm::AskedLog>,
    /// The watched overviews being computed, shared by the watches of one question.
    watches: Arc<watch::Watches>,
    /// The dashboard questions' answers, kept for a server that does not hold the tenant.
    kept: Arc<kept::KeptAnswers>,
}

impl KpiService {
    pub fn new(pool: PgPool, cache: Arc<QueryCache>, scheduler: Arc<Scheduler>) -> Self {
        Self {
            asked: Arc::new(warm::AskedLog::new(pool.clone())),
            watches: Arc::default(),
            kept: Arc::new(kept::KeptAnswers::new(pool.clone())),
            pool,
            cache,
            scheduler,
        }
    }

    /// The query cache (its size is exported as a metric).
    pub fn cache(&self) -> &Arc<QueryCache> {
        &self.cache
    }

    /// The settings a query needs; business hours without a schedule is a precondition failure.
    async fn settings_for(&self, tenant: TenantId, query: &Query) -> Result<Settings, Error> {
        let settings = store::settings::get(&self.pool, tenant).await?;
        if query.business_hours && settings.business_hours.is_none() {
            return Err(Error::FailedPrecondition(
                "query.business_hours: the tenant has no business hours; set them with UpdateSettings".into(),
            ));
        }
        Ok(settings)
    }

    /// Computes `f` over the tenant's data for `query`; `Ok(None)` without computing when the
    /// data still has version `seen` (watchers).
    async fn compute<R, F>(
        &self,
        tenant: TenantId,
        query: &Query,
        reads: Reads,
        seen: Option<u64>,
        f: F,
    ) -> Result<Option<(R, u64)>, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Computation<'_>, &View) -> Result<R, Error> + Send + 'static,
    {
        let settings = self.settings_for(tenant, query).await?;
        self.compute_under(settings, tenant, query, reads, seen, f).await
    }

    /// [`Self::compute`] under `settings`, read for the question.
    async fn compute_under<R, F>(
        &self,
        settings: Settings,
        tenant: TenantId,
        query: &Query,
        reads: Reads,
        seen: Option<u64>,
        f: F,
    ) -> Result<Option<(R, u64)>, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Computation<'_>, &View) -> Result<R, Error> + Send + 'static,
    {
        // One of the tenant's computation slots, for the refresh and the computation.
        let _slot = self.scheduler.admit(tenant).await?;
        let asked = std::time::Instant::now();
        let view = WORKER
            .scope((self.scheduler.clone(), tenant), self.cache.view(tenant, &reads))
            .await?;
        if seen.is_none() {
            loaded_in_time(asked.elapsed(), self.cache.patience())?;
        }
        if seen == Some(view.version) {
            return Ok(None);
        }
        let cancel = Arc::new(Cancel::default());
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let query = query.clone();
        let version = view.version;
        let (cache, scheduler) = (self.cache.clone(), self.scheduler.clone());
        let lane = scheduler.lane(tenant);
        let result = tokio::task::spawn_blocking(move || {
            scheduler.run(tenant, lane, || {
                let computation = Computation {
                    data: &view.data,
                    query: &query,
                    schedule: settings.business_hours.as_ref(),
                    targets: &settings.targets,
                    sla: &settings.sla_policies,
                    cancel: &cancel,
                    partials: Some(cache.as_ref()),
                };
                f(&computation, &view)
            })
        })
        .await
        .map_err(|e| Error::Internal(anyhow::Error::new(e).context("KPI computation failed")))??;
        WORKER.sync_scope((self.scheduler.clone(), tenant), || self.cache.computed(tenant));
        Ok(Some((result, version)))
    }

    async fn compute_now<R, F>(&self, tenant: TenantId, query: &Query, reads: Reads, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Computation<'_>, &View) -> Result<R, Error> + Send + 'static,
    {
        let settings = self.settings_for(tenant, query).await?;
        self.compute_now_under(settings, tenant, query, reads, f).await
    }

    /// [`Self::compute_now`] under `settings`, read for the question.
    async fn compute_now_under<R, F>(
        &self,
        settings: Settings,
        tenant: TenantId,
        query: &Query,
        reads: Reads,
        f: F,
    ) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&Computation<'_>, &View) -> Result<R, Error> + Send + 'static,
    {
        let computed = self
            .compute_under(settings, tenant, query, reads, None, f)
            .await?;
        computed.map(|(r, _)| r).ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "a computation without a version check returned nothing"
            ))
        })
    }

    /// The answer of a dashboard question (`kind`, computed by `f` from `reads`): its kept
    /// answer when the cache does not hold the tenant's data and the kept answer still holds
    /// (docs/metrics.md §9, "Kept answers"), else computed, and kept.
    async fn answer<R, F>(
        &self,
        tenant: TenantId,
        query: &Query,
        kind: AskedKind,
        reads: Reads,
        f: F,
    ) -> Result<R, Error>
    where
        R: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Send + 'static,
        F: FnOnce(&Computation<'_>) -> Result<R, Error> + Send + 'static,
    {
        let settings = self.settings_for(tenant, query).await?;
        let asked = Asked {
            query: query.clone(),
            kind,
        };
        let kept = self.kept.question(tenant, &asked, &settings).await;
        if let Some(k) = &kept
            && !self.cache.holds(tenant)
            && let Some(answer) = self.kept.read(k).await
        {
            return Ok(answer);
        }
        let (answer, as_of) = self
            .compute_now_under(settings, tenant, query, reads, move |c, view| {
                Ok((f(c)?, view.as_of))
            })
            .await?;
        if let Some(k) = kept {
            self.kept.keep(k, as_of, &answer);
        }
        Ok(answer)
    }

    /// Every KPI of the window, and of the window before when asked.
    pub async fn overview(
        &self,
        tenant: TenantId,
        query: &Query,
        compare_previous: bool,
    ) -> Result<(Kpis, Option<Kpis>), Error> {
        let answer = self.overview_of(tenant, query, compare_previous).await?;
        self.asked
            .note(tenant, query, AskedKind::Overview { compare_previous });
        Ok(answer)
    }

    async fn overview_of(
        &self,
        tenant: TenantId,
        query: &Query,
        compare_previous: bool,
    ) -> Result<(Kpis, Option<Kpis>), Error> {
        let mut reads = Reads::summary(query, Grouping::All);
        let previous = compare_previous.then(|| {
            let mut p = query.clone();
            p.window = query.window.previous();
            p
        });
        if let Some(p) = &previous {
            reads = reads.and(Reads::summary(p, Grouping::All));
        }
        let kind = AskedKind::Overview { compare_previous };
        self.answer(tenant, query, kind, reads, move |c| {
            let current = single(c.run(Grouping::All)?);
            let previous = match previous {
                Some(p) => Some(single(Computation { query: &p, ..*c }.run(Grouping::All)?)),
                None => None,
            };
            Ok((current, previous))
        })
        .await
    }

    /// The KPIs per value of `dimension`, by value: at most `limit` rows (those with the most
    /// conversations), and how many values had items (docs/metrics.md §6).
    pub async fn breakdown(
        &self,
        tenant: TenantId,
        query: &Query,
        dimension: Dimension,
        limit: usize,
    ) -> Result<(Vec<(String, Kpis)>, usize), Error> {
        let answer = self.breakdown_of(tenant, query, dimension, limit).await?;
        self.asked
            .note(tenant, query, AskedKind::Breakdown { dimension, limit });
        Ok(answer)
    }

    async fn breakdown_of(
        &self,
        tenant: TenantId,
        query: &Query,
        dimension: Dimension,
        limit: usize,
    ) -> Result<(Vec<(String, Kpis)>, usize), Error> {
        let grouping = Grouping::By(dimension);
        let kind = AskedKind::Breakdown { dimension, limit };
        self.answer(tenant, query, kind, Reads::summary(query, grouping), move |c| {
            let mut rows: Vec<(String, Kpis)> = c
                .run(grouping)?
                .into_iter()
                .map(|(key, k)| (c.label(key), k))
                .collect();
            let total = rows.len();
            keep_ranked(&mut rows, limit, by_conversations);
            Ok((rows, total))
        })
        .await
    }

    /// The KPIs per calendar bucket of the window, empty buckets included.
    pub async fn time_series(
        &self,
        tenant: TenantId,
        query: &Query,
        granularity: Granularity,
    ) -> Result<Vec<(Span, Kpis)>, Error> {
        let answer = self.time_series_of(tenant, query, granularity).await?;
        self.asked.note(tenant, query, AskedKind::Series(granularity));
        Ok(answer)
    }

    async fn time_series_of(
        &self,
        tenant: TenantId,
        query: &Query,
        granularity: Granularity,
    ) -> Result<Vec<(Span, Kpis)>, Error> {
        let buckets = calendar::buckets(
            query.time_zone,
            granularity,
            micros(query.window.from),
            micros(query.window.to),
        );
        if buckets.len() > MAX_BUCKETS {
            return Err(Error::invalid(
                "granularity",
                format!(
                    "{} buckets exceed the limit of {MAX_BUCKETS}; use a coarser granularity",
                    buckets.len()
                ),
            ));
        }
        let grouping = Grouping::Series(granularity);
        let kind = AskedKind::Series(granularity);
        self.answer(tenant, query, kind, Reads::summary(query, grouping), move |c| {
            let groups = c.run(grouping)?;
            Ok(groups
                .into_iter()
                .zip(buckets)
                .map(|((_, k), span)| (span, k))
                .collect())
        })
        .await
    }

    /// Utilization per agent (at most [`MAX_ROWS`], those with the most time), the number of
    /// agents left out, and the team. Business hours do not apply (docs/metrics.md).
    pub async fn utilization(
        &self,
        tenant: TenantId,
        query: &Query,
    ) -> Result<(Vec<AgentUtilization>, u64, AgentUtilization), Error> {
        let mut query = query.clone();
        query.business_hours = false;
        self.compute_now(tenant, &query, Reads::utilization(&query), |c, _| {
            let (mut agents, team) = c.utilization()?;
            let omitted = keep_ranked(&mut agents, MAX_ROWS, |a, b| {
                b.logged_in_seconds
                    .total_cmp(&a.logged_in_seconds)
                    .then(b.handling_seconds.total_cmp(&a.handling_seconds))
            });
            Ok((agents, omitted, team))
        })
        .await
    }

    /// Backlog and live counts at `at`.
    pub async fn backlog(&self, tenant: TenantId, query: &Query, at: Micros) -> Result<Backlog, Error> {
        self.compute_now(tenant, query, Reads::backlog(at), move |c, _| c.backlog(at))
            .await
    }

    /// SLA clocks running at `at`, and the `limit` that breach soonest (docs/metrics.md §10), with
    /// the conversation ids, channels and priorities of those.
    pub async fn sla_status(
        &self,
        tenant: TenantId,
        query: &Query,
        at: Micros,
        limit: usize,
    ) -> Result<(SlaStatus, Vec<(String, &'static str, &'static str)>), Error> {
        self.compute_now(tenant, query, Reads::backlog(at), move |c, _| {
            let status = c.sla_status(at, limit)?;
            let mut conv = crate::engine::segment::Conv::default();
            let named = status
                .at_risk
                .iter()
                .map(|r| {
                    let seg = &c.data.segments[r.segment];
                    seg.decode(r.row, crate::engine::segment::Parts::Head, &mut conv);
                    (
                        seg.id(r.row).to_owned(),
                        conv.channel.as_str(),
                        conv.priority.as_str(),
                    )
                })
                .collect();
            Ok((status, named))
        })
        .await
    }

    /// One conversation's drill-down row (its facts, durations measured as `query` asks, the SLA
    /// clocks that breached in `query`'s window); `NotFound` for an id the tenant never used.
    pub async fn conversation(
        &self,
        tenant: TenantId,
        query: &Query,
        id: &str,
    ) -> Result<ConversationRow, Error> {
        let facts = store::events::conversation_facts(&self.pool, tenant, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("conversation {id:?}")))?;
        let opened = micros(facts.opened_at);
        let reads = Reads::opened_in(Span {
            start: opened,
            end: opened + 1,
        });
        let id = id.to_owned();
        self.compute_now(tenant, query, reads, move |c, view| {
            let customers = view.customers.read().unwrap_or_else(|p| p.into_inner());
            c.data
                .segments
                .iter()
                .find_map(|seg| seg.find(&id).map(|row| c.drill_row(seg, row, &customers)))
                // Stored but not yet in the segments (erased meanwhile): as if unknown.
                .ok_or_else(|| Error::NotFound(format!("conversation {id:?}")))
        })
        .await
    }

    /// Each targeted KPI against its target: overall, per agent and per team (docs/metrics.md §8).
    pub async fn scorecard(&self, tenant: TenantId, query: &Query) -> Result<Scorecards, Error> {
        let reads = Reads::summary(query, Grouping::All).and(Reads::utilization(query));
        self.compute_now(tenant, query, reads, |c, _| {
            let targets = c.targets;
            let overall = single(c.run(Grouping::All)?);
            let (agent_util, team_util) = c.utilization()?;
            let agent_util: HashMap<&str, &AgentUtilization> =
                agent_util.iter().map(|u| (u.agent.as_str(), u)).collect();
            // docs/metrics.md §6: at most MAX_ROWS agents and teams, those with the most
            // conversations.
            let named = |grouping| -> Result<(Vec<(String, Kpis)>, u64), Error> {
                let mut rows: Vec<(String, Kpis)> = c
                    .run(grouping)?
                    .into_iter()
                    .filter(|(key, _)| *key != GroupKey::Value(0))
                    .map(|(key, k)| (c.label(key), k))
                    .collect();
                let omitted = keep_ranked(&mut rows, MAX_ROWS, by_conversations);
                Ok((rows, omitted))
            };
            let (agents, agents_omitted) = named(Grouping::By(Dimension::Agent))?;
            let agents = agents
                .into_iter()
                .map(|(name, k)| {
                    let util = agent_util.get(name.as_str()).copied();
                    let lines = scorecard::lines(&k, util, targets);
                    (name, lines)
                })
                .collect();
            let (teams, teams_omitted) = named(Grouping::By(Dimension::Team))?;
            let teams = teams
                .into_iter()
                .map(|(name, k)| {
                    let lines = scorecard::lines(&k, None, targets);
                    (name, lines)
                })
                .collect();
            Ok(Scorecards {
                overall: scorecard::lines(&overall, Some(&team_util), targets),
                agents,
                teams,
                agents_omitted,
                teams_omitted,
            })
        })
        .await
    }

    /// The conversations behind a KPI, streamed: at most `limit` (0 = all) rows, rendered a
    /// few hundred ahead of the reader. The stream ends early when the reader goes away.
    pub async fn drill_down(
        &self,
        tenant: TenantId,
        query: &Query,
        kind: DrillDown,
        limit: usize,
    ) -> Result<mpsc::Receiver<Result<ConversationRow, Error>>, Error> {
        let reads = match kind {
            DrillDown::Backlog => Reads::backlog(micros(query.window.to)),
            _ => Reads::summary(query, Grouping::All),
        };
        let settings = self.settings_for(tenant, query).await?;
        let slot = self.scheduler.admit(tenant).await?;
        let view = self.cache.view(tenant, &reads).await?;
        let (tx, rx) = mpsc::channel(DRILL_DOWN_AHEAD);
        let query = query.clone();
        let scheduler = self.scheduler.clone();
        tokio::spawn(async move {
            let cancel = Arc::new(Cancel::default());
            let _cancel_on_drop = CancelOnDrop(cancel.clone());
            let view = Arc::new(view);
            let (settings, q, c) = (Arc::new(settings), Arc::new(query), cancel.clone());
            let selected = {
                let (view, settings, q) = (view.clone(), settings.clone(), q.clone());
                let lane = scheduler.lane(tenant);
                tokio::task::spawn_blocking(move || {
                    scheduler.run(tenant, lane, || {
                        computation(&view, &q, &settings, &c).drill_down(kind)
                    })
                })
                .await
            };
            // The rows are rendered a chunk at a time as the reader takes them: no slot held.
            drop(slot);
            let refs = match selected {
                Ok(Ok(refs)) => refs,
                Ok(Err(err)) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                Err(err) => {
                    let _ = tx.send(Err(Error::Internal(anyhow::Error::new(err)))).await;
                    return;
                }
            };
            let limit = if limit == 0 { usize::MAX } else { limit };
            for chunk in refs[..refs.len().min(limit)].chunks(64) {
                // Names are read in short bursts: a refresh adding customers never waits long.
                let rows: Vec<ConversationRow> = {
                    let comp = computation(&view, &q, &settings, &cancel);
                    let customers = view.customers.read().unwrap_or_else(|p| p.into_inner());
                    chunk
                        .iter()
                        .map(|(s, row)| comp.drill_row(&view.data.segments[*s], *row, &customers))
                        .collect()
                };
                for row in rows {
                    if tx.send(Ok(row)).await.is_err() {
                        return; // the reader went away
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Pushes a fresh overview at most every `interval` while the tenant's data changes (every
    /// tick when `sliding`, the window moving with the clock). Ends when the reader goes away.
    /// Watches of the same question share one computation ([`watch`]).
    pub fn watch(
        &self,
        tenant: TenantId,
        query: Query,
        interval: Duration,
        sliding: bool,
    ) -> mpsc::Receiver<Result<WatchUpdate, Error>> {
        self.watches.watch(self, tenant, query, interval, sliding)
    }

    pub async fn settings(&self, tenant: TenantId) -> Result<Settings, Error> {
        store::settings::get(&self.pool, tenant).await
    }

    /// Applies a settings change atomically; queries use it from their next call.
    pub async fn update_settings(&self, tenant: TenantId, update: SettingsUpdate) -> Result<Settings, Error> {
        let settings = store::settings::update(&self.pool, tenant, update).await?;
        self.cache.forget_totals(tenant).await;
        Ok(settings)
    }
}

fn computation<'a>(
    view: &'a View,
    query: &'a Query,
    settings: &'a Settings,
    cancel: &'a Cancel,
) -> Computation<'a> {
    Computation {
        data: &view.data,
        query,
        schedule: settings.business_hours.as_ref(),
        targets: &settings.targets,
        sla: &settings.sla_policies,
        cancel,
        // A drill-down lists conversations: no totals to reuse.
        partials: None,
    }
}

/// Breakdown rows ranked for [`keep_ranked`]: the most conversations first.
fn by_conversations(a: &(String, Kpis), b: &(String, Kpis)) -> std::cmp::Ordering {
    b.1.conversations.cmp(&a.1.conversations)
}

fn single(mut groups: Vec<(GroupKey, Kpis)>) -> Kpis {
    groups.pop().map(|(_, k)| k).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_whose_data_was_ready_within_three_quarters_of_the_patience_computes() {
        let patience = Duration::from_secs(24);
        assert!(loaded_in_time(Duration::from_secs(18), patience).is_ok());
    }

    #[test]
    fn a_call_that_waited_over_three_quarters_of_the_patience_for_a_load_is_told_to_retry() {
        let patience = Duration::from_secs(24);
        let err = loaded_in_time(Duration::from_millis(18_001), patience).unwrap_err();
        assert!(
            matches!(&err, Error::Unavailable(m) if m.contains("retry now")),
            "{err:?}"
        );
    }
}
