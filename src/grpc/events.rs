//! `chatkpi.v1.EventService`: decode a batch, call the ingest use case, encode one result per
//! event.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{Guarded, auth, convert, pb};
use crate::{
    app::{
        App,
        ingest::{BatchOutcome, Outcome},
        limits::StreamKind,
    },
    domain::{Error, event::input::EventInput, tenant::Scope},
};

/// Batches of one stream being committed at the same time: enough to overlap decoding with the
/// previous batch's commit, few enough that one client cannot take the whole pool.
const STREAM_IN_FLIGHT: usize = 4;

/// The EventService implementation.
#[derive(Clone)]
pub struct EventsApi {
    app: Arc<App>,
}

impl EventsApi {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

fn inputs(events: &[pb::Event]) -> Vec<EventInput> {
    events.iter().map(convert::event_input).collect()
}

/// Per-event results in batch order, with `events[i].` field paths.
fn results(events: &[pb::Event], outcome: BatchOutcome) -> Vec<pb::EventResult> {
    events
        .iter()
        .zip(outcome.outcomes)
        .enumerate()
        .map(|(i, (e, outcome))| {
            let mut r = pb::EventResult {
                index: i as u32,
                event_id: e.event_id.clone(),
                ..Default::default()
            };
            r.outcome = match outcome {
                Outcome::Accepted => pb::EventOutcome::Accepted,
                Outcome::Duplicate => pb::EventOutcome::Duplicate,
                Outcome::Rejected(err) => {
                    r.field = format!("events[{i}].{}", err.field);
                    r.reason = err.reason;
                    pb::EventOutcome::Rejected
                }
            } as i32;
            r
        })
        .collect()
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::StreamEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventsApi {
    async fn ingest_events(
        &self,
        request: Request<pb::IngestEventsRequest>,
    ) -> Result<Response<pb::IngestEventsResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Ingest).await?;
        let events = &request.get_ref().events;
        tracing::Span::current().record("events", events.len() as i64);
        self.app.limits.events(tenant, events.len())?;
        let outcome = self.app.ingest.ingest(tenant, &inputs(events)).await?;
        let (accepted, duplicates, rejected) = (outcome.accepted, outcome.duplicates, outcome.rejected);
        Ok(Response::new(pb::IngestEventsResponse {
            results: results(events, outcome),
            accepted,
            duplicates,
            rejected,
        }))
    }

    type StreamEventsStream = AckStream;

    async fn stream_events(
        &self,
        request: Request<Streaming<pb::StreamEventsRequest>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let key = auth::authorize_key(&self.app, &request, Scope::Ingest).await?;
        let tenant = key.tenant;
        let slot = self.app.limits.open_stream(tenant, StreamKind::Ingest)?;
        let revoked = self.app.keys.watch(&key);
        let guard_watch = revoked.clone();
        let app = self.app.clone();
        // `buffered` pulls a new batch only when fewer than STREAM_IN_FLIGHT are pending, which
        // is the backpressure: unread batches stay in HTTP/2 flow control. Acks keep send order.
        let acks = request
            .into_inner()
            .map(move |batch| {
                let (app, revoked) = (app.clone(), revoked.clone());
                async move {
                    let batch = batch?;
                    // A batch that arrives after its key was revoked is not stored.
                    if revoked.is_revoked() {
                        return Err(Status::unauthenticated("the API key was revoked"));
                    }
                    // A batch's error names the batch, so the client knows which one failed.
                    let in_batch = |err: Error| err.in_batch(batch.batch_id);
                    app.limits.events(tenant, batch.events.len()).map_err(in_batch)?;
                    let outcome = app
                        .ingest
                        .ingest(tenant, &inputs(&batch.events))
                        .await
                        .map_err(in_batch)?;
                    let (accepted, duplicates, rejected) =
                        (outcome.accepted, outcome.duplicates, outcome.rejected);
                    Ok(pb::StreamEventsResponse {
                        batch_id: batch.batch_id,
                        results: results(&batch.events, outcome),
                        accepted,
                        duplicates,
                        rejected,
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
        let stall = self.app.limits.stream_stall();
        Ok(Response::new(Box::pin(Guarded::new(
            acks,
            slot,
            guard_watch,
            stall,
        ))))
    }

    async fn find_whats_app_conversation(
        &self,
        request: Request<pb::FindWhatsAppConversationRequest>,
    ) -> Result<Response<pb::FindWhatsAppConversationResponse>, Status> {
        let tenant = auth::authorize(&self.app, &request, Scope::Ingest).await?;
        let r = request.get_ref();
        let (found, idle) = self
            .app
            .whatsapp
            .current(
                tenant,
                &r.source_id,
                r.phone_number_id.as_deref(),
                &r.wa_id,
                chrono::Utc::now(),
            )
            .await?;
        Ok(Response::new(pb::FindWhatsAppConversationResponse {
            conversation_id: found.conversation_id,
            opened_at: Some(convert::chrono_to_timestamp(found.opened_at)),
            last_activity_at: Some(convert::chrono_to_timestamp(found.last_at)),
            idle,
        }))
    }
}
