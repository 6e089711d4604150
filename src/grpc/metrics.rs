//! `chatkpi.v1.MetricsService`: decode the query, refresh the tenant's dataset, compute on the
//! blocking pool (KPI passes are CPU work), encode the answer.

use std::{pin::Pin, sync::Arc, time::Duration};

use chrono::Utc;
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    AppState,
    convert::{chrono_to_timestamp, metrics as conv, timestamp_to_chrono},
    pb,
};
use crate::{
    domain::{
        Error,
        calendar::{self, Granularity},
        dataset::{Dataset, micros, to_datetime},
        kpis::{Computation, Dimension, GroupKey, Grouping, Kpis},
        live,
        query::Query,
        scorecard,
        tenant::TenantId,
    },
    store::{self, settings::Settings},
};

/// Most buckets a time series may return.
const MAX_BUCKETS: usize = 10_000;
/// Drill-down rows buffered ahead of the client.
const DRILL_DOWN_BUFFER: usize = 256;

/// The MetricsService implementation.
#[derive(Clone)]
pub struct MetricsApi {
    state: Arc<AppState>,
}

impl MetricsApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Authenticates and checks readiness; returns the tenant.
    async fn tenant<T>(&self, request: &Request<T>) -> Result<TenantId, Status> {
        let tenant = self.state.auth.tenant(request.metadata()).await?;
        self.state.ensure_ready()?;
        Ok(tenant)
    }

    /// Loads settings, refreshes the dataset and runs `f` on the blocking pool.
    async fn compute<R, F>(&self, tenant: TenantId, query: Option<&Query>, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: FnOnce(&Dataset, &Settings) -> Result<R, Error> + Send + 'static,
    {
        let computed = self.compute_if_changed(tenant, query, None, f).await?;
        computed
            .map(|(result, _)| result)
            .ok_or_else(|| Status::internal("internal error"))
    }

    /// Like [`MetricsApi::compute`], but returns `None` without computing when the refreshed
    /// dataset still has version `seen` (watchers); else the result and the version used.
    async fn compute_if_changed<R, F>(
        &self,
        tenant: TenantId,
        query: Option<&Query>,
        seen: Option<u64>,
        f: F,
    ) -> Result<Option<(R, u64)>, Status>
    where
        R: Send + 'static,
        F: FnOnce(&Dataset, &Settings) -> Result<R, Error> + Send + 'static,
    {
        let settings = store::settings::get(&self.state.pool, tenant).await?;
        if query.is_some_and(|q| q.business_hours) && settings.business_hours.is_none() {
            return Err(Error::FailedPrecondition(
                "query.business_hours: the tenant has no business hours; set them with UpdateSettings".into(),
            )
            .into());
        }
        let data = self.state.cache.fresh(tenant).await?;
        let version = data.version;
        if seen == Some(version) {
            return Ok(None);
        }
        let result = tokio::task::spawn_blocking(move || f(&data.dataset, &settings))
            .await
            .map_err(|e| Error::Internal(anyhow::Error::new(e)))??;
        Ok(Some((result, version)))
    }
}

/// KPIs of one grouping over the query.
fn run(ds: &Dataset, settings: &Settings, query: &Query, grouping: Grouping) -> Vec<(GroupKey, Kpis)> {
    Computation {
        dataset: ds,
        query,
        schedule: settings.business_hours.as_ref(),
        targets: &settings.targets,
    }
    .run(grouping)
}

fn single(mut groups: Vec<(GroupKey, Kpis)>) -> Kpis {
    groups.pop().map(|(_, k)| k).unwrap_or_default()
}

fn key_label(ds: &Dataset, key: GroupKey) -> String {
    match key {
        GroupKey::All => String::new(),
        GroupKey::Value(sym) => ds.symbols.name(sym).to_owned(),
        GroupKey::Channel(c) => c.as_str().to_owned(),
        GroupKey::Priority(p) => p.as_str().to_owned(),
        GroupKey::Number(n) => n.to_string(),
        GroupKey::Bucket(start) => to_datetime(start).to_rfc3339(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::metrics_service_server::MetricsService for MetricsApi {
    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_overview(
        &self,
        request: Request<pb::GetOverviewRequest>,
    ) -> Result<Response<pb::GetOverviewResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let r = request.into_inner();
        let query = conv::query_from_proto(r.query.as_ref(), true, Utc::now())?;
        let q = query.clone();
        let (current, previous) = self
            .compute(tenant, Some(&query), move |ds, settings| {
                let current = single(run(ds, settings, &q, Grouping::All));
                let previous = r.compare_previous.then(|| {
                    let mut p = q.clone();
                    p.window = q.window.previous();
                    single(run(ds, settings, &p, Grouping::All))
                });
                Ok((current, previous))
            })
            .await?;
        Ok(Response::new(pb::GetOverviewResponse {
            current: Some(conv::kpis_to_proto(&current)),
            previous: previous.as_ref().map(conv::kpis_to_proto),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_breakdown(
        &self,
        request: Request<pb::GetBreakdownRequest>,
    ) -> Result<Response<pb::GetBreakdownResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let r = request.into_inner();
        let query = conv::query_from_proto(r.query.as_ref(), true, Utc::now())?;
        let dimension: Dimension = conv::dimension_from_proto(r.dimension)?;
        let q = query.clone();
        let rows = self
            .compute(tenant, Some(&query), move |ds, settings| {
                let groups = run(ds, settings, &q, Grouping::By(dimension));
                Ok(groups
                    .into_iter()
                    .map(|(key, k)| pb::BreakdownRow {
                        value: key_label(ds, key),
                        kpis: Some(conv::kpis_to_proto(&k)),
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(Response::new(pb::GetBreakdownResponse { rows }))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_time_series(
        &self,
        request: Request<pb::GetTimeSeriesRequest>,
    ) -> Result<Response<pb::GetTimeSeriesResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let r = request.into_inner();
        let query = conv::query_from_proto(r.query.as_ref(), true, Utc::now())?;
        let granularity: Granularity = conv::granularity_from_proto(r.granularity)?;
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
            )
            .into());
        }
        let q = query.clone();
        let points = self
            .compute(tenant, Some(&query), move |ds, settings| {
                let groups = run(ds, settings, &q, Grouping::Series(granularity));
                Ok(groups
                    .into_iter()
                    .zip(buckets)
                    .map(|((_, k), span)| pb::TimeSeriesPoint {
                        start: Some(chrono_to_timestamp(to_datetime(span.start))),
                        end: Some(chrono_to_timestamp(to_datetime(span.end))),
                        kpis: Some(conv::kpis_to_proto(&k)),
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(Response::new(pb::GetTimeSeriesResponse { points }))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_utilization(
        &self,
        request: Request<pb::GetUtilizationRequest>,
    ) -> Result<Response<pb::GetUtilizationResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let r = request.into_inner();
        let mut query = conv::query_from_proto(r.query.as_ref(), true, Utc::now())?;
        // Utilization is presence time, not a duration of an item: business hours do not apply.
        query.business_hours = false;
        let q = query.clone();
        let (agents, team) = self
            .compute(tenant, None, move |ds, _| Ok(live::utilization(ds, &q)))
            .await?;
        Ok(Response::new(pb::GetUtilizationResponse {
            agents: agents.iter().map(conv::utilization_to_proto).collect(),
            team: Some(conv::utilization_to_proto(&team)),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_backlog(
        &self,
        request: Request<pb::GetBacklogRequest>,
    ) -> Result<Response<pb::GetBacklogResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let r = request.into_inner();
        let default_at = match r.query.as_ref().and_then(|q| q.to.as_ref()) {
            Some(to) => timestamp_to_chrono("query.to", to).map_err(|e| Error::invalid(e.field, e.reason))?,
            None => Utc::now(),
        };
        let query = conv::query_from_proto(r.query.as_ref(), false, default_at)?;
        let at = match &r.at {
            Some(at) => timestamp_to_chrono("at", at).map_err(|e| Error::invalid(e.field, e.reason))?,
            None => default_at,
        };
        // The backlog age is measured up to `at`: a far-future instant would make every age
        // (and, in business hours, every calendar walk) unbounded.
        crate::domain::query::check_instant("at", at)?;
        let q = query.clone();
        let backlog = self
            .compute(tenant, Some(&query), move |ds, settings| {
                Ok(live::backlog(
                    ds,
                    &q,
                    settings.business_hours.as_ref(),
                    micros(at),
                ))
            })
            .await?;
        Ok(Response::new(pb::GetBacklogResponse {
            at: Some(chrono_to_timestamp(at)),
            open: backlog.open,
            unassigned: backlog.unassigned,
            unanswered: backlog.unanswered,
            age: Some(conv::duration_stats(&backlog.age)),
        }))
    }

    type ListConversationsStream = BoxStream<pb::ConversationFacts>;

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<Self::ListConversationsStream>, Status> {
        let tenant = self.tenant(&request).await?;
        let r = request.into_inner();
        let query = conv::query_from_proto(r.query.as_ref(), true, Utc::now())?;
        let kind = conv::drill_down_from_proto(r.kpi)?;
        let limit = if r.limit == 0 {
            usize::MAX
        } else {
            r.limit as usize
        };
        let (tx, rx) = tokio::sync::mpsc::channel(DRILL_DOWN_BUFFER);
        let errors = tx.clone();
        let api = self.clone();
        // Rows are produced on the blocking pool and sent as the client reads them: memory stays
        // bounded by the buffer whatever the number of conversations.
        tokio::spawn(async move {
            let q = query.clone();
            let produced = api
                .compute(tenant, Some(&query), move |ds, settings| {
                    let computation = Computation {
                        dataset: ds,
                        query: &q,
                        schedule: settings.business_hours.as_ref(),
                        targets: &settings.targets,
                    };
                    for c in live::drill_down(ds, &q, kind).into_iter().take(limit) {
                        let row = conv::conversation_to_proto(ds, c, &|span| computation.measure(span));
                        if tx.blocking_send(Ok(row)).is_err() {
                            break; // the client went away
                        }
                    }
                    Ok(())
                })
                .await;
            if let Err(status) = produced {
                let _ = errors.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchOverviewStream = BoxStream<pb::WatchOverviewResponse>;

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn watch_overview(
        &self,
        request: Request<pb::WatchOverviewRequest>,
    ) -> Result<Response<Self::WatchOverviewStream>, Status> {
        let tenant = self.tenant(&request).await?;
        let r = request.into_inner();
        let query = conv::query_from_proto(r.query.as_ref(), true, Utc::now())?;
        let interval = match &r.min_interval {
            None => Duration::from_secs(5),
            Some(d) if (1..=3600).contains(&d.seconds) => Duration::from_secs(d.seconds as u64),
            Some(_) => {
                return Err(Error::invalid("min_interval", "must be between 1 and 3600 seconds").into());
            }
        };
        let sliding = r.sliding;
        let api = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut last_version: Option<u64> = None;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if tx.is_closed() {
                    break;
                }
                let mut q = query.clone();
                if sliding {
                    let length = q.window.length();
                    q.window.to = Utc::now();
                    q.window.from = q.window.to - length;
                }
                // Debounce: compute and push only when the tenant's data changed (a sliding
                // window moves with the clock, so it is recomputed every tick).
                let seen = if sliding { None } else { last_version };
                let window = q.window;
                let computed = api
                    .compute_if_changed(tenant, Some(&q), seen, {
                        let q = q.clone();
                        move |ds, settings| Ok(single(run(ds, settings, &q, Grouping::All)))
                    })
                    .await;
                let message = match computed {
                    Ok(None) => continue,
                    Ok(Some((k, version))) => {
                        last_version = Some(version);
                        Ok(pb::WatchOverviewResponse {
                            computed_at: Some(chrono_to_timestamp(Utc::now())),
                            kpis: Some(conv::kpis_to_proto(&k)),
                            from: Some(chrono_to_timestamp(window.from)),
                            to: Some(chrono_to_timestamp(window.to)),
                        })
                    }
                    Err(status) => Err(status),
                };
                let failed = message.is_err();
                if tx.send(message).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let settings = store::settings::get(&self.state.pool, tenant).await?;
        Ok(Response::new(settings_to_proto(&settings)))
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::UpdateSettingsResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let r = request.into_inner();
        let mut settings = store::settings::get(&self.state.pool, tenant).await?;
        if r.clear_business_hours && r.business_hours.is_some() {
            return Err(Error::invalid(
                "clear_business_hours",
                "cannot be set together with business_hours",
            )
            .into());
        }
        if r.clear_business_hours {
            settings.business_hours = None;
        }
        if let Some(b) = &r.business_hours {
            settings.business_hours = Some(conv::schedule_from_proto(b)?);
        }
        if let Some(t) = &r.targets {
            settings.targets = conv::targets_from_proto(t)?;
        }
        store::settings::put(&self.state.pool, tenant, &settings).await?;
        Ok(Response::new(pb::UpdateSettingsResponse {
            settings: Some(settings_to_proto(&settings)),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_scorecard(
        &self,
        request: Request<pb::GetScorecardRequest>,
    ) -> Result<Response<pb::GetScorecardResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let r = request.into_inner();
        let query = conv::query_from_proto(r.query.as_ref(), true, Utc::now())?;
        let q = query.clone();
        let response = self
            .compute(tenant, Some(&query), move |ds, settings| {
                let targets = &settings.targets;
                let overall = single(run(ds, settings, &q, Grouping::All));
                let (agent_util, team_util) = live::utilization(ds, &q);
                let agents = run(ds, settings, &q, Grouping::By(Dimension::Agent))
                    .into_iter()
                    .filter(|(key, _)| *key != GroupKey::Value(crate::domain::dataset::NONE))
                    .map(|(key, k)| {
                        let name = key_label(ds, key);
                        let util = agent_util.iter().find(|u| u.agent == name);
                        conv::scorecard_to_proto(&name, &scorecard::lines(&k, util, targets))
                    })
                    .collect();
                let teams = run(ds, settings, &q, Grouping::By(Dimension::Team))
                    .into_iter()
                    .filter(|(key, _)| *key != GroupKey::Value(crate::domain::dataset::NONE))
                    .map(|(key, k)| {
                        conv::scorecard_to_proto(&key_label(ds, key), &scorecard::lines(&k, None, targets))
                    })
                    .collect();
                Ok(pb::GetScorecardResponse {
                    overall: Some(conv::scorecard_to_proto(
                        "",
                        &scorecard::lines(&overall, Some(&team_util), targets),
                    )),
                    agents,
                    teams,
                })
            })
            .await?;
        Ok(Response::new(response))
    }
}

fn settings_to_proto(s: &Settings) -> pb::GetSettingsResponse {
    pb::GetSettingsResponse {
        business_hours: s.business_hours.as_ref().map(conv::schedule_to_proto),
        targets: Some(conv::targets_to_proto(&s.targets)),
    }
}
