//! Warm restarts: the dashboard questions a tenant asks are noted (each shape at most once per
//! [`NOTE_INTERVAL`]) and asked again by a restarted server after its days are loaded and
//! before it reports SERVING, so that the first dashboard after a restart finds their totals
//! kept instead of computing every day again (README, "Restarts are quick").

use std::time::{Duration, Instant};

use chrono::Utc;
use moka::sync::Cache;
use sqlx::PgPool;

use super::KpiService;
use crate::{
    domain::{
        Error,
        query::{Asked, AskedKind, Query},
        tenant::TenantId,
    },
    store,
};

/// A shape asked again within this interval is not written again: a dashboard asks every few
/// seconds, and the row only needs to say it is still asked.
const NOTE_INTERVAL: Duration = Duration::from_secs(600);
/// Shapes remembered as noted (a cache entry of some hundred bytes each, a few MB at most):
/// beyond it the oldest are written again sooner, nothing else.
const NOTED_SHAPES: u64 = 50_000;
/// Questions asked within this time before a restart are asked again.
const ASKED_WITHIN: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Notes the questions asked, for the next warm-up.
pub(super) struct AskedLog {
    pool: PgPool,
    noted: Cache<(TenantId, u64), ()>,
}

impl AskedLog {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            noted: Cache::builder()
                .max_capacity(NOTED_SHAPES)
                .time_to_live(NOTE_INTERVAL)
                .build(),
        }
    }

    /// Notes in the background that `tenant` asked `query` as `kind` (a failed write is logged:
    /// it costs a warm restart, never an answer).
    pub fn note(&self, tenant: TenantId, query: &Query, kind: AskedKind) {
        let key = (tenant, Asked::shape_hash(query, kind));
        if self.noted.contains_key(&key) {
            return;
        }
        self.noted.insert(key, ());
        let pool = self.pool.clone();
        let asked = Asked {
            query: query.clone(),
            kind,
        };
        tokio::spawn(async move {
            match store::questions::note(&pool, tenant, &asked).await {
                Ok(()) => {}
                // A question asked as the server stops: its pool closed under the note (seen
                // in a `bench/query.sh` restart); the next warm-up asks those noted before.
                Err(err) if pool.is_closed() => {
                    tracing::debug!(tenant = tenant.0, error = %err, "question not noted: shutting down")
                }
                Err(err) => {
                    tracing::warn!(tenant = tenant.0, error = %err, "cannot note a question for the next warm-up")
                }
            }
        });
    }
}

impl KpiService {
    /// Loads the days of the tenants queried in the last day ([`super::QueryCache::warm_up`]),
    /// then asks their questions of the last day again ([`KpiService::ask_again_for`]), most
    /// recent tenant first, while the cache's entries hold under fifteen sixteenths of their
    /// budget (a full cache evicts the least recently used: the days and totals of the tenants
    /// warmed before) and `limit` has not passed since the start. Returns the questions
    /// answered.
    pub async fn warm_up(&self, days: u32, limit: Duration) -> usize {
        let started = Instant::now();
        let deadline = started + limit;
        let tenants = self.cache.warm_up(days, limit).await;
        let mut answered = 0;
        for tenant in tenants {
            if Instant::now() >= deadline || self.cache.bytes() > self.cache.budget() / 16 * 15 {
                break;
            }
            answered += self.ask_again_for(tenant, deadline).await;
        }
        tracing::info!(
            questions = answered,
            ms = started.elapsed().as_millis() as u64,
            cache_bytes = self.cache.bytes(),
            "questions asked before the restart answered again"
        );
        answered
    }

    /// Asks `tenant`'s questions of the last day again until `deadline`, the most recently
    /// asked last: when their totals do not all fit, the cache (least recently used first)
    /// keeps those of the newest, as it would have before the restart. Returns the questions
    /// answered.
    async fn ask_again_for(&self, tenant: TenantId, deadline: Instant) -> usize {
        let since = Utc::now() - ASKED_WITHIN;
        let questions = match store::questions::recent(&self.pool, tenant, since).await {
            Ok(q) => q,
            Err(err) => {
                tracing::warn!(tenant = tenant.0, error = %err, "cannot read the questions to warm up");
                return 0;
            }
        };
        let mut answered = 0;
        for asked in questions.iter().rev() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ask_again(tenant, asked)).await {
                Ok(Ok(())) => answered += 1,
                Ok(Err(err)) => {
                    tracing::warn!(tenant = tenant.0, error = %err, "a question asked before the restart failed")
                }
                Err(_) => break,
            }
        }
        answered
    }

    /// Computes `asked` as its RPC would, without noting it again (only clients' questions
    /// keep a question in the log).
    async fn ask_again(&self, tenant: TenantId, asked: &Asked) -> Result<(), Error> {
        let q = &asked.query;
        match asked.kind {
            AskedKind::Overview { compare_previous } => {
                self.overview_of(tenant, q, compare_previous).await.map(drop)
            }
            AskedKind::Breakdown { dimension, limit } => {
                self.breakdown_of(tenant, q, dimension, limit).await.map(drop)
            }
            AskedKind::Series(granularity) => self.time_series_of(tenant, q, granularity).await.map(drop),
        }
    }
}
