//! Query benchmark client: latency of the dashboard queries, measured at the gRPC client.

use std::{io::Write, path::PathBuf, str::FromStr, time::Instant};

use anyhow::Context;
use chatkpi::{
    client::{self, authed},
    grpc::{convert::chrono_to_timestamp, pb},
};
use chrono::{DateTime, Duration, Utc};
use tonic::transport::Channel;

/// A query the benchmark times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GetOverview over the window.
    Overview,
    /// GetOverview over the window's last day.
    Overview1d,
    /// GetBreakdown by agent over the window.
    BreakdownAgent,
    /// GetTimeSeries by day over the window, in the benchmark's time zone.
    SeriesDay,
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "overview" => Kind::Overview,
            "overview_1d" => Kind::Overview1d,
            "breakdown_agent" => Kind::BreakdownAgent,
            "series_day" => Kind::SeriesDay,
            other => {
                return Err(format!(
                    "unknown query kind {other:?} (overview, overview_1d, breakdown_agent, series_day)"
                ));
            }
        })
    }
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Overview => "overview",
            Kind::Overview1d => "overview_1d",
            Kind::BreakdownAgent => "breakdown_agent",
            Kind::SeriesDay => "series_day",
        }
    }
}

/// What to time.
pub struct Plan {
    pub server: String,
    pub api_key: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub time_zone: String,
    pub kinds: Vec<Kind>,
    pub iterations: usize,
    /// Append every timing as `kind,milliseconds` lines to this file.
    pub samples: Option<PathBuf>,
    /// Time no untimed first call (measure a cold start).
    pub no_warmup: bool,
    /// Retry UNAVAILABLE answers (a tenant still loading) every 250 ms.
    pub retry_while_loading: bool,
    /// Wait until the server reports SERVING before the first call.
    pub wait_for_serving: bool,
}

/// Times every kind `iterations` times after one untimed first call (reported separately: on a
/// fresh server it includes loading the tenant), and prints percentiles.
pub async fn run(plan: &Plan) -> anyhow::Result<()> {
    let channel = client::connect(&plan.server).await?;
    let bearer = client::bearer(&plan.api_key)?;
    let waited = Instant::now();
    if !plan.wait_for_serving {
        println!("asking at once, not waiting for SERVING");
    } else {
        wait_until_serving(&channel).await?;
        if plan.no_warmup {
            // A cold start: how long the server took to report SERVING (its warm-up) after
            // this client first asked.
            println!("serving after {:.1} ms", waited.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut samples = match &plan.samples {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => None,
    };
    for kind in &plan.kinds {
        let mut times = Vec::with_capacity(plan.iterations);
        let first = usize::from(!plan.no_warmup);
        for i in 0..plan.iterations + first {
            let started = Instant::now();
            let size = answered(&channel, &bearer, plan, *kind).await?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if i < first {
                println!("{}: first call {ms:.1} ms (size {size})", kind.name());
                continue;
            }
            times.push(ms);
            if let Some(f) = samples.as_mut() {
                writeln!(f, "{},{ms:.3}", kind.name())?;
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{}: n={} p50={:.1} ms p95={:.1} ms max={:.1} ms",
            kind.name(),
            times.len(),
            nearest_rank(&times, 0.50),
            nearest_rank(&times, 0.95),
            times.last().copied().unwrap_or_default()
        );
    }
    Ok(())
}

/// Waits (up to three minutes) until the server's health says SERVING: a restarted server
/// accepts connections before its database check and its warm-up (`--warmup-secs`) are done.
pub async fn wait_until_serving(channel: &Channel) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(channel.clone());
    for _ in 0..1800 {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.ok() == Some(ServingStatus::Serving as i32) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("the server did not report SERVING within three minutes")
}

/// Watchers for [`watch`].
pub struct WatchPlan {
    pub server: String,
    pub api_key: String,
    pub watchers: usize,
    pub interval: std::time::Duration,
    pub duration: std::time::Duration,
}

/// Holds `watchers` sliding 30-day WatchOverview streams for `duration` and prints, per
/// watcher summed: pushes, errors and the largest gap between pushes (a push is due every
/// interval). A watcher whose stream fails reopens it.
pub async fn watch(plan: &WatchPlan) -> anyhow::Result<()> {
    let channel = client::connect(&plan.server).await?;
    let bearer = client::bearer(&plan.api_key)?;
    wait_until_serving(&channel).await?;
    let until = Instant::now() + plan.duration;
    let mut tasks = Vec::new();
    for _ in 0..plan.watchers {
        let (channel, bearer, interval) = (channel.clone(), bearer.clone(), plan.interval);
        tasks.push(tokio::spawn(async move {
            one_watcher(channel, bearer, interval, until).await
        }));
    }
    let (mut pushes, mut errors, mut gap) = (0u64, 0u64, 0f64);
    for task in tasks {
        let w = task.await?;
        pushes += w.pushes;
        errors += w.errors;
        gap = gap.max(w.max_gap_secs);
    }
    println!(
        "watchers={} pushes={pushes} errors={errors} max_gap_seconds={gap:.1}",
        plan.watchers
    );
    Ok(())
}

#[derive(Default)]
struct Watched {
    pushes: u64,
    errors: u64,
    max_gap_secs: f64,
}

async fn one_watcher(
    channel: Channel,
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    interval: std::time::Duration,
    until: Instant,
) -> Watched {
    let mut client = pb::metrics_service_client::MetricsServiceClient::new(channel);
    let mut seen = Watched::default();
    while Instant::now() < until {
        let to = Utc::now();
        let request = pb::WatchOverviewRequest {
            query: Some(pb::Query {
                from: Some(chrono_to_timestamp(to - Duration::days(30))),
                to: Some(chrono_to_timestamp(to)),
                ..Default::default()
            }),
            min_interval: Some(pbjson_types::Duration {
                seconds: interval.as_secs() as i64,
                nanos: 0,
            }),
            sliding: true,
        };
        let mut stream = match client.watch_overview(authed(request, &bearer)).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                seen.errors += 1;
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        let mut last = Instant::now();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Err(_) => return seen,
                Ok(Ok(Some(_))) => {
                    seen.pushes += 1;
                    seen.max_gap_secs = seen.max_gap_secs.max(last.elapsed().as_secs_f64());
                    last = Instant::now();
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    seen.errors += 1;
                    break;
                }
            }
        }
    }
    seen
}

/// The `p` percentile of sorted samples, by nearest rank.
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// [`call`], retried while the server answers UNAVAILABLE when the plan says so (the tenant's
/// data is loading: the server's message says how far).
async fn answered(
    channel: &Channel,
    bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    plan: &Plan,
    kind: Kind,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        match call(channel, bearer, plan, kind).await {
            Err(err) if plan.retry_while_loading => match err.downcast_ref::<tonic::Status>() {
                Some(status) if status.code() == tonic::Code::Unavailable => {
                    println!(
                        "{}: UNAVAILABLE after {:.1} s: {}",
                        kind.name(),
                        started.elapsed().as_secs_f64(),
                        status.message()
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                _ => return Err(err),
            },
            answer => return answer,
        }
    }
}

/// One call; returns a size of the answer (conversations, rows or points).
async fn call(
    channel: &Channel,
    bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    plan: &Plan,
    kind: Kind,
) -> anyhow::Result<u64> {
    let mut client = pb::metrics_service_client::MetricsServiceClient::new(channel.clone())
        .max_decoding_message_size(64 * 1024 * 1024);
    let from = match kind {
        Kind::Overview1d => plan.to - Duration::days(1),
        _ => plan.from,
    };
    let query = pb::Query {
        from: Some(chrono_to_timestamp(from)),
        to: Some(chrono_to_timestamp(plan.to)),
        time_zone: plan.time_zone.clone(),
        ..Default::default()
    };
    Ok(match kind {
        Kind::Overview | Kind::Overview1d => {
            let r = client
                .get_overview(authed(
                    pb::GetOverviewRequest {
                        query: Some(query),
                        compare_previous: false,
                    },
                    bearer,
                ))
                .await?;
            r.into_inner().current.map_or(0, |k| k.conversations)
        }
        Kind::BreakdownAgent => {
            let r = client
                .get_breakdown(authed(
                    pb::GetBreakdownRequest {
                        query: Some(query),
                        dimension: pb::Dimension::Agent as i32,
                        ..Default::default()
                    },
                    bearer,
                ))
                .await?;
            r.into_inner().rows.len() as u64
        }
        Kind::SeriesDay => {
            let r = client
                .get_time_series(authed(
                    pb::GetTimeSeriesRequest {
                        query: Some(query),
                        granularity: pb::Granularity::Day as i32,
                    },
                    bearer,
                ))
                .await?;
            r.into_inner().points.len() as u64
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.5), 10.0);
        assert_eq!(nearest_rank(&v, 0.95), 19.0);
        assert_eq!(nearest_rank(&[7.0], 0.95), 7.0);
    }
}
