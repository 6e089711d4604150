//! The ingest use case: validate each event of a batch (docs/metrics.md §2), drop repeats within the
//! batch, store the valid ones through the tenant's write queue and report one outcome per
//! event.

use std::{collections::HashSet, sync::Arc};

use chrono::Utc;

use super::{
    Readiness,
    writer::{EventStore, Writer},
};
use crate::{
    domain::{
        Error,
        event::{Event, FieldError, input::EventInput},
        tenant::TenantId,
    },
    store,
};

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Accepted,
    /// Stored before (or earlier in the same batch).
    Duplicate,
    /// Invalid: the path below the event and the reason.
    Rejected(FieldError),
}

/// The outcomes of a batch, in batch order, with their counts.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    pub outcomes: Vec<Outcome>,
    pub accepted: u32,
    pub duplicates: u32,
    pub rejected: u32,
}

/// Stores events in PostgreSQL (the production [`EventStore`]).
pub struct PgEvents(pub sqlx::PgPool);

impl EventStore for PgEvents {
    async fn store_batch(&self, tenant: TenantId, events: &[&Event]) -> Result<HashSet<String>, Error> {
        store::events::store_batch(&self.0, tenant, events).await
    }
}

/// Ingests batches of events.
pub struct IngestService<S = PgEvents> {
    writer: Arc<Writer<S>>,
    max_batch: usize,
    ready: Readiness,
}

impl<S: EventStore> IngestService<S> {
    pub fn new(store: S, writers: usize, max_batch: usize, ready: Readiness) -> Self {
        Self {
            writer: Writer::new(store, writers),
            max_batch,
            ready,
        }
    }

    /// Largest accepted batch, in events.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Batches waiting to be written, over all tenants (a metric).
    pub fn queued(&self) -> usize {
        self.writer.queued()
    }

    /// Validates and stores one batch; answers after its transaction committed.
    pub async fn ingest(&self, tenant: TenantId, inputs: &[EventInput]) -> Result<BatchOutcome, Error> {
        if inputs.len() > self.max_batch {
            return Err(Error::invalid(
                "events",
                format!(
                    "batch of {} events exceeds the limit of {}; split it",
                    inputs.len(),
                    self.max_batch
                ),
            ));
        }
        self.ready.check()?;
        let now = Utc::now();
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(inputs.len());
        let mut valid: Vec<Event> = Vec::with_capacity(inputs.len());
        let mut seen: HashSet<&str> = HashSet::with_capacity(inputs.len());
        for input in inputs {
            outcomes.push(match Event::parse(input, now) {
                Err(err) => Some(Outcome::Rejected(err)),
                // A repeat of an id earlier in the same batch is a duplicate of it
                // (docs/metrics.md).
                Ok(_) if !seen.insert(input.event_id.as_str()) => Some(Outcome::Duplicate),
                Ok(event) => {
                    valid.push(event);
                    None
                }
            });
        }
        let inserted = self.writer.store(tenant, valid).await?;
        let mut out = BatchOutcome::default();
        for (input, outcome) in inputs.iter().zip(outcomes) {
            let outcome = outcome.unwrap_or_else(|| {
                if inserted.contains(&input.event_id) {
                    Outcome::Accepted
                } else {
                    Outcome::Duplicate
                }
            });
            match &outcome {
                Outcome::Accepted => out.accepted += 1,
                Outcome::Duplicate => out.duplicates += 1,
                Outcome::Rejected(err) => {
                    out.rejected += 1;
                    metrics::counter!("chatkpi_events_total", "outcome" => "rejected", "field" => field_label(&err.field))
                        .increment(1);
                }
            }
            out.outcomes.push(outcome);
        }
        metrics::counter!("chatkpi_events_total", "outcome" => "accepted", "field" => "")
            .increment(u64::from(out.accepted));
        metrics::counter!("chatkpi_events_total", "outcome" => "duplicate", "field" => "")
            .increment(u64::from(out.duplicates));
        tracing::debug!(
            tenant = tenant.0,
            events = inputs.len(),
            accepted = out.accepted,
            duplicates = out.duplicates,
            rejected = out.rejected,
            "batch stored"
        );
        Ok(out)
    }
}

/// A rejection's field as a metric label: indexes dropped (`tags_changed.added[3]` ->
/// `tags_changed.added[]`), so the label set stays small.
fn field_label(field: &str) -> String {
    let mut label = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                label.push('[');
            }
            ']' => {
                in_index = false;
                label.push(']');
            }
            _ if in_index => {}
            c => label.push(c),
        }
    }
    label
}

#[cfg(test)]
mod tests {
    #[test]
    fn field_labels_drop_indexes() {
        assert_eq!(
            super::field_label("tags_changed.added[12]"),
            "tags_changed.added[]"
        );
        assert_eq!(super::field_label("occurred_at"), "occurred_at");
    }
}
