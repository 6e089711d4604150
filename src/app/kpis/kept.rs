//! Kept answers: the answers of the dashboard questions (overview, breakdown, time series)
//! persisted with the database state they hold for (store/answers.rs), so that a server that
//! does not hold the tenant's data in memory (just restarted, loading its days, or its cache
//! let the tenant go) answers a question asked before in one read, while nothing the answer
//! read has changed (docs/metrics.md §9, "Kept answers"; README, "Restarts are quick").
//!
//! A restart of a 10 M-conversation tenant loads 2.2 GB of day snapshots before it can compute
//! anything (15-19 s, BENCHMARKS.md); a settled tenant's dashboard asks what it asked before.

use std::{
    io::Read,
    time::{Duration, Instant},
};

use moka::sync::Cache;
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::{
    domain::{query::Asked, settings::Settings, tenant::TenantId},
    engine::cache::AsOf,
    store::{self, answers::Basis},
};

/// A question's answer is written again at most this often (a live tenant's dashboard asks
/// every few seconds, each time of a new state).
const REWRITE_AFTER: Duration = Duration::from_secs(5);
/// Larger answers (a breakdown of hundreds of rows) are not kept.
const MAX_BODY: usize = 1 << 20;
/// Questions whose last write this process remembers (a few hundred bytes each).
const WRITTEN: u64 = 50_000;

/// The SHA-256 of the running executable, once per process: an answer is only read back by
/// the build that computed it (another build may compute another answer).
static BUILD: OnceCell<Option<[u8; 32]>> = OnceCell::const_new();

async fn build() -> Option<[u8; 32]> {
    *BUILD
        .get_or_init(|| async {
            match tokio::task::spawn_blocking(hash_executable).await {
                Ok(Ok(hash)) => Some(hash),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot read the executable: answers are not kept");
                    None
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot hash the executable: answers are not kept");
                    None
                }
            }
        })
        .await
}

/// Hashes the file the process runs (on Linux `/proc/self/exe`: the file mapped, even if a
/// new build replaced it on disk since).
fn hash_executable() -> std::io::Result<[u8; 32]> {
    let mut file = match std::fs::File::open("/proc/self/exe") {
        Ok(f) => f,
        Err(_) => std::fs::File::open(std::env::current_exe()?)?,
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// A tenant's question as its answer is kept: the key (the build and the whole question) and
/// the settings it is asked under.
pub(super) struct Kept {
    tenant: TenantId,
    question: [u8; 32],
    settings: [u8; 32],
}

/// Reads and writes kept answers.
pub(super) struct KeptAnswers {
    pool: PgPool,
    /// The state each question's answer was last written of by this process, and when.
    written: Cache<(TenantId, [u8; 32]), (i64, Instant)>,
}

impl KeptAnswers {
    pub fn new(pool: PgPool) -> Self {
        // Hash the executable now, not when the first question waits for it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(build());
        }
        Self {
            pool,
            written: Cache::builder().max_capacity(WRITTEN).build(),
        }
    }

    /// `asked` of `tenant` under `settings` as kept; `None` when answers cannot be kept (the
    /// executable could not be read).
    pub async fn question(&self, tenant: TenantId, asked: &Asked, settings: &Settings) -> Option<Kept> {
        let build = build().await?;
        let keyed = store::questions::document(asked)
            .and_then(|doc| Ok((doc, store::settings::fingerprint(settings)?)));
        match keyed {
            Ok((doc, settings)) => Some(Kept {
                tenant,
                question: Sha256::new()
                    .chain_update(build)
                    .chain_update(doc)
                    .finalize()
                    .into(),
                settings,
            }),
            Err(err) => {
                tracing::warn!(tenant = tenant.0, error = %err, "a question cannot be kept");
                None
            }
        }
    }

    /// The kept answer of `kept` if it still holds (docs/metrics.md §9); a failed read is
    /// logged and answered by computing.
    pub async fn read<R: DeserializeOwned>(&self, kept: &Kept) -> Option<R> {
        let tenant = kept.tenant;
        let body = match store::answers::holding(&self.pool, tenant, &kept.question, &kept.settings).await {
            Ok(body) => body?,
            Err(err) => {
                tracing::warn!(tenant = tenant.0, error = %err, "cannot read a kept answer");
                return None;
            }
        };
        match serde_json::from_slice(&body) {
            Ok(answer) => {
                metrics::counter!("chatkpi_kept_answers_served_total").increment(1);
                Some(answer)
            }
            Err(err) => {
                tracing::warn!(tenant = tenant.0, error = %err, "a kept answer does not decode");
                None
            }
        }
    }

    /// Keeps `answer`, computed from the data `as_of`, in the background: unless this process
    /// wrote the question's answer of the same state, or any in the last [`REWRITE_AFTER`];
    /// unless it is over [`MAX_BODY`] or does not read back equal (a float JSON cannot carry).
    pub fn keep<R>(&self, kept: Kept, as_of: AsOf, answer: &R)
    where
        R: Serialize + DeserializeOwned + PartialEq,
    {
        let key = (kept.tenant, kept.question);
        if let Some((xmin, at)) = self.written.get(&key)
            && (xmin == as_of.xmin || at.elapsed() < REWRITE_AFTER)
        {
            return;
        }
        let Some(body) = encode(answer) else {
            return;
        };
        self.written.insert(key, (as_of.xmin, Instant::now()));
        let pool = self.pool.clone();
        let basis = Basis {
            xmin: as_of.xmin,
            erasures: as_of.erasures,
            settings: kept.settings,
        };
        tokio::spawn(async move {
            if let Err(err) = store::answers::keep(&pool, kept.tenant, &kept.question, &basis, &body).await
                && !pool.is_closed()
            {
                tracing::warn!(tenant = kept.tenant.0, error = %err, "cannot keep an answer");
            }
        });
    }
}

/// `answer` as JSON, if it is at most [`MAX_BODY`] and reads back equal.
fn encode<R: Serialize + DeserializeOwned + PartialEq>(answer: &R) -> Option<Vec<u8>> {
    let body = serde_json::to_vec(answer).ok()?;
    if body.len() > MAX_BODY {
        return None;
    }
    let back: R = serde_json::from_slice(&body).ok()?;
    (back == *answer).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{kpi::Kpis, stats::DurationStats};

    #[test]
    fn an_answer_reads_back_equal_to_the_last_bit_of_its_floats() {
        let mut kpis = Kpis {
            conversations: 3,
            delivery_rate: Some(2.0 / 3.0),
            ..Kpis::default()
        };
        kpis.first_response = DurationStats {
            count: 3,
            mean: Some(0.1 + 0.2),
            p95: Some(1e-300 * 3.0),
            ..DurationStats::default()
        };
        kpis.tags = vec![("vip".into(), 2, Some(200.0 / 3.0))];
        let answer = (kpis, None::<Kpis>);
        let body = encode(&answer).expect("kept");
        let back: (Kpis, Option<Kpis>) = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            back.0.first_response.mean.map(f64::to_bits),
            Some((0.1f64 + 0.2).to_bits())
        );
        assert_eq!(back, answer);
    }

    #[test]
    fn an_answer_with_a_float_json_cannot_carry_is_not_kept() {
        let kpis = Kpis {
            read_rate: Some(f64::NAN),
            ..Kpis::default()
        };
        assert!(encode(&kpis).is_none());
    }

    #[test]
    fn an_answer_over_a_mebibyte_is_not_kept() {
        let rows: Vec<(String, Kpis)> = (0..2_000)
            .map(|i| (format!("agent {i}"), Kpis::default()))
            .collect();
        assert!(serde_json::to_vec(&rows).unwrap().len() > MAX_BODY);
        assert!(encode(&rows).is_none());
    }
}
