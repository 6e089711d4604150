//! The query engine: conversation records and their byte format, day segments (columns a scan
//! filters on plus one compact row per conversation) and their snapshots, the snapshot of a
//! tenant's presence and conversions, interned names, the scan that computes every KPI of
//! docs/metrics.md §5 over segments in parallel, kept partial totals, duration accumulators,
//! and the query cache that keeps each tenant's segments and
//! totals up to date within a byte budget, with the scheduler that runs its CPU work. It reads
//! the rules of `domain` (facts, calendars, SLA clocks, KPI answer types) and nothing above it:
//! the event store is behind [`source::Source`], which `store::segments` implements.

pub mod cache;
pub mod codec;
pub mod intern;
pub mod kpi;
pub mod record;
pub mod schedule;
pub mod segment;
pub mod side;
pub mod source;
pub mod stats;

#[cfg(test)]
pub(crate) mod testkit;
