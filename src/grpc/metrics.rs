//! `chatkpi.v1.MetricsService`: decode the question, call the KPI use case, encode the answer.

use std::{pin::Pin, sync::Arc, time::Duration};

use chrono::Utc;
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    Guarded, auth,
    convert::{chrono_to_timestamp, metrics as conv, timestamp_to_chrono},
    pb,
};
use crate::{
    app::{
        App,
        keys::Authorized,
        limits::{StreamKind, StreamSlot},
    },
    domain::{
        Error,
        query::{self, Query},
        settings::SettingsUpdate,
        tenant::{Scope, TenantId},
        time::{micros, to_datetime},
    },
    engine::kpi::MAX_ROWS,
};

/// The MetricsService implementation.
#[derive(Clone)]
pub struct MetricsApi {
    app: Arc<App>,
}

impl MetricsApi {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }

    /// The caller's tenant for a call that needs `scope`, within the tenant's query rate.
    async fn tenant<T>(&self, request: &Request<T>, scope: Scope) -> Result<TenantId, Status> {
        Ok(self.key(request, scope).await?.tenant)
    }

    /// [`MetricsApi::tenant`], with the key (a stream follows its revocation).
    async fn key<T>(&self, request: &Request<T>, scope: Scope) -> Result<Authorized, Status> {
        let key = auth::authorize_key(&self.app, request, scope).await?;
        self.app.limits.query(key.tenant)?;
        Ok(key)
    }

    /// The guard of an open stream of `key` (see [`Guarded`]).
    fn guard<T: Send + 'static>(
        &self,
        answers: impl Stream<Item = Result<T, Status>> + Send + 'static,
        slot: StreamSlot,
        key: &Authorized,
    ) -> Guarded<T> {
        Guarded::new(
            answers,
            slot,
            self.app.keys.watch(key),
            self.app.limits.stream_stall(),
        )
    }
}

fn window_query(q: Option<&pb::Query>) -> Result<Query, Error> {
    conv::query_from_proto(q, true, Utc::now())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::metrics_service_server::MetricsService for MetricsApi {
    async fn get_overview(
        &self,
        request: Request<pb::GetOverviewRequest>,
    ) -> Result<Response<pb::GetOverviewResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let r = request.into_inner();
        let query = window_query(r.query.as_ref())?;
        let (current, previous) = self.app.kpis.overview(tenant, &query, r.compare_previous).await?;
        Ok(Response::new(pb::GetOverviewResponse {
            current: Some(conv::kpis_to_proto(&current)),
            previous: previous.as_ref().map(conv::kpis_to_proto),
        }))
    }

    async fn get_breakdown(
        &self,
        request: Request<pb::GetBreakdownRequest>,
    ) -> Result<Response<pb::GetBreakdownResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let r = request.into_inner();
        let query = window_query(r.query.as_ref())?;
        let dimension = conv::dimension_from_proto(r.dimension)?;
        let limit = match r.limit {
            0 => MAX_ROWS,
            n if n as usize <= MAX_ROWS => n as usize,
            n => {
                return Err(
                    Error::invalid("limit", format!("must be between 1 and {MAX_ROWS}, got {n}")).into(),
                );
            }
        };
        let (rows, total) = self.app.kpis.breakdown(tenant, &query, dimension, limit).await?;
        Ok(Response::new(pb::GetBreakdownResponse {
            truncated: total > rows.len(),
            total_rows: total as u64,
            rows: rows
                .iter()
                .map(|(value, k)| pb::BreakdownRow {
                    value: value.clone(),
                    kpis: Some(conv::kpis_to_proto(k)),
                })
                .collect(),
        }))
    }

    async fn get_time_series(
        &self,
        request: Request<pb::GetTimeSeriesRequest>,
    ) -> Result<Response<pb::GetTimeSeriesResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let r = request.into_inner();
        let query = window_query(r.query.as_ref())?;
        let granularity = conv::granularity_from_proto(r.granularity)?;
        let points = self.app.kpis.time_series(tenant, &query, granularity).await?;
        Ok(Response::new(pb::GetTimeSeriesResponse {
            points: points
                .iter()
                .map(|(span, k)| pb::TimeSeriesPoint {
                    start: Some(chrono_to_timestamp(to_datetime(span.start))),
                    end: Some(chrono_to_timestamp(to_datetime(span.end))),
                    kpis: Some(conv::kpis_to_proto(k)),
                })
                .collect(),
        }))
    }

    async fn get_utilization(
        &self,
        request: Request<pb::GetUtilizationRequest>,
    ) -> Result<Response<pb::GetUtilizationResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let query = window_query(request.get_ref().query.as_ref())?;
        let (agents, agents_omitted, team) = self.app.kpis.utilization(tenant, &query).await?;
        Ok(Response::new(pb::GetUtilizationResponse {
            agents: agents.iter().map(conv::utilization_to_proto).collect(),
            team: Some(conv::utilization_to_proto(&team)),
            agents_omitted,
        }))
    }

    async fn get_backlog(
        &self,
        request: Request<pb::GetBacklogRequest>,
    ) -> Result<Response<pb::GetBacklogResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let r = request.into_inner();
        let (query, at) = instant_query(r.query.as_ref(), r.at.as_ref())?;
        let backlog = self.app.kpis.backlog(tenant, &query, micros(at)).await?;
        Ok(Response::new(pb::GetBacklogResponse {
            at: Some(chrono_to_timestamp(at)),
            open: backlog.open,
            unassigned: backlog.unassigned,
            unanswered: backlog.unanswered,
            age: Some(conv::duration_stats(&backlog.age)),
        }))
    }

    async fn get_sla_status(
        &self,
        request: Request<pb::GetSlaStatusRequest>,
    ) -> Result<Response<pb::GetSlaStatusResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let r = request.into_inner();
        let (query, at) = instant_query(r.query.as_ref(), r.at.as_ref())?;
        let limit = match r.limit {
            0 => 20,
            n if n <= 1000 => n as usize,
            n => return Err(Error::invalid("limit", format!("must be between 1 and 1000, got {n}")).into()),
        };
        let (status, named) = self
            .app
            .kpis
            .sla_status(tenant, &query, micros(at), limit)
            .await?;
        let active = |m: usize| pb::SlaActive {
            active: status.active[m],
            active_breached: status.active_breached[m],
        };
        Ok(Response::new(pb::GetSlaStatusResponse {
            at: Some(chrono_to_timestamp(at)),
            first_response: Some(active(0)),
            next_response: Some(active(1)),
            resolution: Some(active(2)),
            overall: Some(pb::SlaActive {
                active: status.active.iter().sum(),
                active_breached: status.active_breached.iter().sum(),
            }),
            at_risk: status
                .at_risk
                .iter()
                .zip(named)
                .map(|(r, (id, channel, priority))| pb::AtRiskClock {
                    conversation_id: id,
                    metric: r.metric.as_str().to_owned(),
                    policy: r.policy.clone(),
                    target_seconds: r.target_seconds,
                    started_at: Some(chrono_to_timestamp(to_datetime(r.started_at))),
                    elapsed_seconds: r.elapsed_seconds,
                    time_left_seconds: r.time_left_seconds,
                    assignee: r.assignee.clone(),
                    channel: channel.to_owned(),
                    priority: priority.to_owned(),
                })
                .collect(),
        }))
    }

    type ListConversationsStream = BoxStream<pb::ConversationFacts>;

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<Self::ListConversationsStream>, Status> {
        let key = self.key(&request, Scope::Read).await?;
        let tenant = key.tenant;
        let r = request.into_inner();
        let query = window_query(r.query.as_ref())?;
        let kind = conv::drill_down_from_proto(r.kpi)?;
        let slot = self.app.limits.open_stream(tenant, StreamKind::Read)?;
        let rows = self
            .app
            .kpis
            .drill_down(tenant, &query, kind, r.limit as usize)
            .await?;
        let stream = ReceiverStream::new(rows).map(|row| match row {
            Ok(row) => Ok(conv::conversation_to_proto(row)),
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(self.guard(stream, slot, &key))))
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let r = request.into_inner();
        crate::domain::event::check_id("conversation_id", &r.conversation_id).map_err(Error::from)?;
        let query = match &r.query {
            Some(q) => window_query(Some(q))?,
            // Every breach: a window no clock can lie outside of (it only selects breaches; no
            // day is read for it).
            None => Query::new(query::Window {
                from: query::earliest_instant(),
                to: query::latest_instant(),
            }),
        };
        let row = self
            .app
            .kpis
            .conversation(tenant, &query, &r.conversation_id)
            .await?;
        Ok(Response::new(pb::GetConversationResponse {
            conversation: Some(conv::conversation_to_proto(row)),
        }))
    }

    type WatchOverviewStream = BoxStream<pb::WatchOverviewResponse>;

    async fn watch_overview(
        &self,
        request: Request<pb::WatchOverviewRequest>,
    ) -> Result<Response<Self::WatchOverviewStream>, Status> {
        let key = self.key(&request, Scope::Read).await?;
        let tenant = key.tenant;
        let r = request.into_inner();
        let query = window_query(r.query.as_ref())?;
        let interval = match &r.min_interval {
            None => Duration::from_secs(5),
            Some(d) if (1..=3600).contains(&d.seconds) => Duration::from_secs(d.seconds as u64),
            Some(_) => {
                return Err(Error::invalid("min_interval", "must be between 1 and 3600 seconds").into());
            }
        };
        let slot = self.app.limits.open_stream(tenant, StreamKind::Watcher)?;
        let updates = self.app.kpis.watch(tenant, query, interval, r.sliding);
        let stream = ReceiverStream::new(updates).map(|update| match update {
            Ok(u) => Ok(pb::WatchOverviewResponse {
                computed_at: Some(chrono_to_timestamp(Utc::now())),
                kpis: Some(conv::kpis_to_proto(&u.kpis)),
                from: Some(chrono_to_timestamp(to_datetime(u.window.start))),
                to: Some(chrono_to_timestamp(to_datetime(u.window.end))),
            }),
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(self.guard(stream, slot, &key))))
    }

    type WatchAlertsStream = BoxStream<pb::AlertNotice>;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let key = self.key(&request, Scope::Read).await?;
        let slot = self.app.limits.open_stream(key.tenant, StreamKind::Watcher)?;
        let notices = self.app.alerts.watch(key.tenant);
        let stream = ReceiverStream::new(notices).map(|n| match n {
            Ok(doc) => Ok(crate::grpc::convert::alerts::notice_to_proto(&doc)),
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(self.guard(stream, slot, &key))))
    }

    async fn get_firing_alerts(
        &self,
        request: Request<pb::GetFiringAlertsRequest>,
    ) -> Result<Response<pb::GetFiringAlertsResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let rules = self.app.alerts.rules(tenant).await?;
        let alerts = rules
            .iter()
            .filter(|r| r.state.is_firing())
            .map(|r| {
                let since = match r.state.phase {
                    crate::domain::alert::Phase::Firing(t) | crate::domain::alert::Phase::Resolving(t) => {
                        Some(chrono_to_timestamp(t))
                    }
                    _ => None,
                };
                pb::FiringAlert {
                    rule_id: r.rule_id as u64,
                    name: r.spec.name.clone(),
                    metric: r.spec.metric.clone(),
                    value: r.state.value,
                    threshold: r.spec.threshold,
                    comparison: crate::grpc::convert::alerts::comparison_name(r.spec.comparison).to_owned(),
                    episode: r.state.episodes,
                    since,
                }
            })
            .collect();
        Ok(Response::new(pb::GetFiringAlertsResponse { alerts }))
    }

    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let settings = self.app.kpis.settings(tenant).await?;
        Ok(Response::new(conv::settings_to_proto(&settings)))
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::UpdateSettingsResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Admin).await?;
        let r = request.into_inner();
        if r.clear_business_hours && r.business_hours.is_some() {
            return Err(Error::invalid(
                "clear_business_hours",
                "cannot be set together with business_hours",
            )
            .into());
        }
        let update = SettingsUpdate {
            business_hours: match (&r.business_hours, r.clear_business_hours) {
                (Some(b), _) => Some(Some(conv::schedule_from_proto(b)?)),
                (None, true) => Some(None),
                (None, false) => None,
            },
            targets: r.targets.as_ref().map(conv::targets_from_proto).transpose()?,
            sla_policies: r
                .sla_policies
                .as_ref()
                .map(conv::policies_from_proto)
                .transpose()?,
        };
        let settings = self.app.kpis.update_settings(tenant, update).await?;
        Ok(Response::new(pb::UpdateSettingsResponse {
            settings: Some(conv::settings_to_proto(&settings)),
        }))
    }

    async fn get_scorecard(
        &self,
        request: Request<pb::GetScorecardRequest>,
    ) -> Result<Response<pb::GetScorecardResponse>, Status> {
        let tenant = self.tenant(&request, Scope::Read).await?;
        let query = window_query(request.get_ref().query.as_ref())?;
        let cards = self.app.kpis.scorecard(tenant, &query).await?;
        Ok(Response::new(pb::GetScorecardResponse {
            overall: Some(conv::scorecard_to_proto("", &cards.overall)),
            agents: cards
                .agents
                .iter()
                .map(|(name, lines)| conv::scorecard_to_proto(name, lines))
                .collect(),
            teams: cards
                .teams
                .iter()
                .map(|(name, lines)| conv::scorecard_to_proto(name, lines))
                .collect(),
            agents_omitted: cards.agents_omitted,
            teams_omitted: cards.teams_omitted,
        }))
    }
}

/// The query and instant of a question asked at an instant (backlog, SLA status): `at`, by
/// default the query's `to`, by default now.
fn instant_query(
    query: Option<&pb::Query>,
    at: Option<&pbjson_types::Timestamp>,
) -> Result<(crate::domain::query::Query, chrono::DateTime<Utc>), Error> {
    let default_at = match query.and_then(|q| q.to.as_ref()) {
        Some(to) => timestamp_to_chrono("query.to", to).map_err(Error::from)?,
        None => Utc::now(),
    };
    let q = conv::query_from_proto(query, false, default_at)?;
    let at = match at {
        Some(at) => timestamp_to_chrono("at", at).map_err(Error::from)?,
        None => default_at,
    };
    // Ages are measured up to `at`: a far-future instant would make every age (and, in
    // business hours, every calendar walk) unbounded.
    query::check_instant("at", at)?;
    Ok((q, at))
}
