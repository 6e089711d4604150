//! `chatkpi.v1.EventService`: decode a batch, validate each event, store the valid ones in one
//! transaction and answer with one result per event.

use std::{collections::HashSet, pin::Pin, sync::Arc};

use chrono::Utc;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{AppState, convert, pb};
use crate::domain::{Error, event::Event, tenant::TenantId};

/// Batches of one stream being committed at the same time: enough to overlap decoding with
/// the previous batch's commit, few enough that one client cannot take the whole pool.
const STREAM_IN_FLIGHT: usize = 4;

/// The EventService implementation.
#[derive(Clone)]
pub struct EventsApi {
    state: Arc<AppState>,
}

impl EventsApi {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// Per-event results and their counts.
struct BatchOutcome {
    results: Vec<pb::EventResult>,
    accepted: u32,
    duplicates: u32,
    rejected: u32,
}

impl AppState {
    /// Validates, deduplicates and stores one batch; the answer is ready only after commit.
    async fn ingest(&self, tenant: TenantId, events: &[pb::Event]) -> Result<BatchOutcome, Error> {
        if events.len() > self.max_batch {
            return Err(Error::invalid(
                "events",
                format!(
                    "batch of {} events exceeds the limit of {}; split it",
                    events.len(),
                    self.max_batch
                ),
            ));
        }
        self.ensure_ready()?;
        let now = Utc::now();
        let mut results = Vec::with_capacity(events.len());
        let mut valid: Vec<Event> = Vec::with_capacity(events.len());
        let mut seen_in_batch: HashSet<&str> = HashSet::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let mut result = pb::EventResult {
                index: i as u32,
                event_id: e.event_id.clone(),
                ..Default::default()
            };
            match convert::event_from_proto(e, now) {
                Err(err) => {
                    result.outcome = pb::EventOutcome::Rejected as i32;
                    result.field = format!("events[{i}].{}", err.field);
                    result.reason = err.reason;
                }
                // A repeat of an id earlier in the same batch is a duplicate of it.
                Ok(_) if !seen_in_batch.insert(e.event_id.as_str()) => {
                    result.outcome = pb::EventOutcome::Duplicate as i32;
                }
                Ok(event) => valid.push(event),
            }
            results.push(result);
        }

        let inserted = self.ingest.store(tenant, valid).await?;

        let (mut accepted, mut duplicates, mut rejected) = (0, 0, 0);
        for r in &mut results {
            if r.outcome == pb::EventOutcome::Unspecified as i32 {
                r.outcome = if inserted.contains(&r.event_id) {
                    pb::EventOutcome::Accepted as i32
                } else {
                    pb::EventOutcome::Duplicate as i32
                };
            }
            match pb::EventOutcome::try_from(r.outcome) {
                Ok(pb::EventOutcome::Accepted) => accepted += 1,
                Ok(pb::EventOutcome::Duplicate) => duplicates += 1,
                _ => rejected += 1,
            }
        }
        tracing::debug!(
            tenant,
            events = events.len(),
            accepted,
            duplicates,
            rejected,
            "batch stored"
        );
        Ok(BatchOutcome {
            results,
            accepted,
            duplicates,
            rejected,
        })
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::StreamEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventsApi {
    #[tracing::instrument(skip_all, fields(tenant, events = request.get_ref().events.len()))]
    async fn ingest_events(
        &self,
        request: Request<pb::IngestEventsRequest>,
    ) -> Result<Response<pb::IngestEventsResponse>, Status> {
        let tenant = self.state.auth.tenant(request.metadata()).await?;
        tracing::Span::current().record("tenant", tenant);
        let out = self.state.ingest(tenant, &request.get_ref().events).await?;
        Ok(Response::new(pb::IngestEventsResponse {
            results: out.results,
            accepted: out.accepted,
            duplicates: out.duplicates,
            rejected: out.rejected,
        }))
    }

    type StreamEventsStream = AckStream;

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn stream_events(
        &self,
        request: Request<Streaming<pb::StreamEventsRequest>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let tenant = self.state.auth.tenant(request.metadata()).await?;
        tracing::Span::current().record("tenant", tenant);
        let state = self.state.clone();
        // `buffered` pulls a new batch only when fewer than STREAM_IN_FLIGHT are pending, which
        // is the backpressure: unread batches stay in HTTP/2 flow control. Acks keep send order.
        let acks = request
            .into_inner()
            .map(move |batch| {
                let state = state.clone();
                async move {
                    let batch = batch?;
                    let out = state
                        .ingest(tenant, &batch.events)
                        .await
                        .map_err(|err| match err {
                            Error::InvalidArgument { field, reason } => Status::invalid_argument(format!(
                                "batch_id {}: {field}: {reason}",
                                batch.batch_id
                            )),
                            other => Status::from(other),
                        })?;
                    Ok(pb::StreamEventsResponse {
                        batch_id: batch.batch_id,
                        results: out.results,
                        accepted: out.accepted,
                        duplicates: out.duplicates,
                        rejected: out.rejected,
                    })
                }
            })
            .buffered(STREAM_IN_FLIGHT)
            // The first error ends the stream: later batches are not processed.
            .scan(false, |failed, item: Result<pb::StreamEventsResponse, Status>| {
                let out = if *failed { None } else { Some(item) };
                if matches!(out, Some(Err(_))) {
                    *failed = true;
                }
                futures::future::ready(out)
            });
        Ok(Response::new(Box::pin(acks)))
    }
}
