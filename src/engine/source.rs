//! What the query cache reads and writes, as the engine sees it: the rows it is handed (day
//! bounds, conversation records, snapshots, presence and conversion events, the erasure log)
//! and the two traits the event store implements (`store::segments`). The engine names what it
//! needs; it does not know it is PostgreSQL.
//!
//! Consistency: every read of one refresh runs in one [`SourceReads`], a read-only view of one
//! database snapshot; [`SourceReads::export`] and [`Source::begin_at`] open more views of the
//! same snapshot on other connections (days load in parallel). Change tracking: a view's
//! [`SourceReads::xmin`] is the oldest transaction still running when it was taken; rows written
//! by transactions at or after it are read again by the next refresh, whatever the commit order.

use std::future::Future;

use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{Error, event::Payload, tenant::TenantId};

/// One conversation record of a day segment.
pub struct StoredConversation {
    pub day: NaiveDate,
    pub conversation_id: String,
    pub record: Vec<u8>,
}

/// What the rows of one day span (see `segment::Bounds`).
pub struct DayRows {
    pub day: NaiveDate,
    pub rows: i64,
    pub opened_from: DateTime<Utc>,
    pub opened_to: DateTime<Utc>,
    pub active_from: DateTime<Utc>,
    pub active_to: DateTime<Utc>,
    /// `None`: a conversation of the day is still open.
    pub live_until: Option<DateTime<Utc>>,
}

/// A persisted segment.
pub struct StoredSnapshot {
    pub day: NaiveDate,
    pub built_xmin: i64,
    pub body: Vec<u8>,
}

/// Kept totals persisted beside a day's snapshot (`engine::kpi::stored`).
pub struct StoredTotals {
    pub day: NaiveDate,
    /// SHA-256 of the question shape (the shape itself is in the body).
    pub shape_hash: Vec<u8>,
    /// 0: rows ending inside the window; 1: rows ending before it.
    pub kind: i16,
    /// The `built_xmin` of the day's snapshot the totals are of.
    pub snapshot_xmin: i64,
    pub body: Vec<u8>,
}

/// A part of a snapshot's body being written; the body is its parts' bytes in order.
pub struct SnapshotPart {
    pub bytes: Vec<u8>,
    /// The body's last part: a snapshot whose encoding stopped before it is not stored.
    pub last: bool,
}

/// What a snapshot is of.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub day: NaiveDate,
    /// The segment holds every change of transactions older than this xmin.
    pub built_xmin: i64,
    /// The tenant's erasure counter the segment was read under.
    pub erasures: i64,
}

/// A presence or conversion event.
pub struct SideEvent {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: Payload,
    pub ingest_xid: i64,
}

/// A tenant's persisted presence and conversions (`engine::side`).
pub struct StoredSide {
    /// The tenant's erasure counter when it was written: a snapshot of an older counter may
    /// hold an erased customer and is not loaded.
    pub erasures: i64,
    /// The xmin its body says it is complete for.
    pub built_xmin: i64,
    pub body: Vec<u8>,
}

/// One logged erasure: its number, the days that lost conversations, and how many conversions
/// went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureLog {
    pub erasure: i64,
    pub days: Vec<NaiveDate>,
    pub conversions: i64,
}

/// Most kept totals (question shapes and kinds of rows) persisted per day: a restart reads them
/// all for the days it loads.
pub const MAX_KEPT_TOTALS: i64 = 16;

/// Where the query cache reads tenants' data and persists segment snapshots.
pub trait Source: Clone + Send + Sync + 'static {
    type Reads: SourceReads;

    /// A read-only view of the database as of now.
    fn begin(&self) -> impl Future<Output = Result<Self::Reads, Error>> + Send;

    /// A view of the snapshot another view exported ([`SourceReads::export`]), with its xmin.
    fn begin_at(&self, snapshot: &str, xmin: i64) -> impl Future<Output = Result<Self::Reads, Error>> + Send;

    /// Tenants whose snapshots were written since `since` (queried recently), with their latest
    /// snapshot day, most recently written first.
    fn recently_queried(
        &self,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<(TenantId, NaiveDate)>, Error>> + Send;

    /// Persists a segment's snapshot from its parts, received in order as they are encoded
    /// (`segment::snapshot::PartEncoder`), unless a later one is stored or a customer of the
    /// tenant was erased since the segment was read. Nothing is stored unless the last part
    /// arrives: a day snapshot is tens of MB, and is never held whole to be written.
    fn save_snapshot(
        &self,
        tenant: TenantId,
        snapshot: &Snapshot,
        parts: tokio::sync::mpsc::Receiver<SnapshotPart>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Persists kept totals of a day unless the day's stored snapshot is no longer the one they
    /// are of; keeps the [`MAX_KEPT_TOTALS`] most recently written of the day.
    fn save_totals(
        &self,
        tenant: TenantId,
        totals: StoredTotals,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Persists a tenant's presence and conversions complete for `built_xmin` (`engine::side`),
    /// unless a later one is stored or a customer of the tenant was erased since `erasures`.
    fn save_side_snapshot(
        &self,
        tenant: TenantId,
        built_xmin: i64,
        erasures: i64,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// A read-only view of one database snapshot (see the module doc).
pub trait SourceReads: Send + 'static {
    /// The xmin of the view's snapshot.
    fn xmin(&self) -> i64;

    /// Names the view's snapshot, for [`Source::begin_at`] while this view is open.
    fn export(&mut self) -> impl Future<Output = Result<String, Error>> + Send;

    /// Ends the view.
    fn finish(self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The tenant's erasure counter.
    fn erasures(&mut self, tenant: TenantId) -> impl Future<Output = Result<i64, Error>> + Send;

    /// The erasures of `tenant` after the `seen`-th, in order.
    fn erasures_after(
        &mut self,
        tenant: TenantId,
        seen: i64,
    ) -> impl Future<Output = Result<Vec<ErasureLog>, Error>> + Send;

    /// Where each of the days `only` (every day when `None`) lies in time.
    fn days_among(
        &mut self,
        tenant: TenantId,
        only: Option<&[NaiveDate]>,
    ) -> impl Future<Output = Result<Vec<DayRows>, Error>> + Send;

    /// Conversations written by transactions at or after `xmin`.
    fn changed_since(
        &mut self,
        tenant: TenantId,
        xmin: i64,
    ) -> impl Future<Output = Result<Vec<StoredConversation>, Error>> + Send;

    /// The persisted segments of `days`.
    fn snapshots(
        &mut self,
        tenant: TenantId,
        days: &[NaiveDate],
    ) -> impl Future<Output = Result<Vec<StoredSnapshot>, Error>> + Send;

    /// The kept totals persisted for the stored snapshots of `days`, most recently written
    /// first.
    fn totals(
        &mut self,
        tenant: TenantId,
        days: &[NaiveDate],
    ) -> impl Future<Output = Result<Vec<StoredTotals>, Error>> + Send;

    /// Opens the conversations of `day` written at or after `since` (0 = every conversation) to
    /// be read [`SourceReads::next_rows`] at a time: a load takes a day in batches instead of
    /// holding its records at once. One day is open at a time.
    fn open_day(
        &mut self,
        tenant: TenantId,
        day: NaiveDate,
        since: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The open day's next `n` conversations (fewer: the last ones, and the day is closed).
    fn next_rows(&mut self, n: usize) -> impl Future<Output = Result<Vec<StoredConversation>, Error>> + Send;

    /// The tenant's persisted presence and conversions, if any.
    fn side_snapshot(
        &mut self,
        tenant: TenantId,
    ) -> impl Future<Output = Result<Option<StoredSide>, Error>> + Send;

    /// Presence and conversion events written at or after `xmin` (0 = all).
    fn side_events(
        &mut self,
        tenant: TenantId,
        xmin: i64,
    ) -> impl Future<Output = Result<Vec<SideEvent>, Error>> + Send;
}
