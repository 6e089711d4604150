//! The query engine: conversation records and their byte format, day segments (columns a scan
//! filters on plus one compact row per conversation) and their snapshots, interned names, the
//! scan that computes every KPI of docs/metrics.md §5 over segments in parallel, kept partial
//! totals, and duration accumulators. It reads the rules of `domain` (facts, calendars, SLA
//! clocks, KPI answer types) and nothing above it; the application feeds it segments
//! (`app::cache`).

pub mod codec;
pub mod intern;
pub mod kpi;
pub mod record;
pub mod segment;
pub mod stats;

#[cfg(test)]
pub(crate) mod testkit;
