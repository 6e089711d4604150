//! Tenants in motion: dashboard questions asked at a steady pace while the same tenant streams
//! events into its newest days (`live`), or while another tenant floods the server with
//! questions never asked before (`neighbours`). Latency is measured at the client; every answer
//! of a live run is checked to include every batch acknowledged before the question was asked.

use std::{
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use chatkpi::{
    client::{self, authed},
    grpc::{convert::chrono_to_timestamp, pb},
};
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{metadata::MetadataValue, transport::Channel};

type Bearer = MetadataValue<tonic::metadata::Ascii>;

/// A live run.
pub struct LivePlan {
    pub server: String,
    pub api_key: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub time_zone: String,
    /// Events per second streamed into the window's last day (0: settled).
    pub rate: u64,
    pub seconds: u64,
    /// Time between two questions.
    pub interval: Duration,
    /// Sample label prefix (`settled`, `live100`, ...).
    pub label: String,
    pub samples: Option<PathBuf>,
    /// Distinguishes the conversation ids of runs on one data set.
    pub run: String,
}

/// The questions of a dashboard, asked in turn.
const KINDS: [&str; 3] = ["overview", "breakdown_agent", "series_day"];

/// Asks the window's overview, breakdown by agent and daily series in turn, one every
/// `interval`, while `rate` events per second stream into the window's last day; appends
/// `label:kind,ms` samples and prints the freshness count.
pub async fn live(plan: &LivePlan) -> anyhow::Result<()> {
    let channel = client::connect(&plan.server).await?;
    let bearer = client::bearer(&plan.api_key)?;
    crate::queries::wait_until_serving(&channel).await?;
    let base = overview(&channel, &bearer, plan, plan.from, plan.to, None)
        .await?
        .conversations;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = (plan.rate > 0).then(|| {
        tokio::spawn(write(
            channel.clone(),
            bearer.clone(),
            plan.to,
            plan.rate,
            plan.run.clone(),
            acked.clone(),
            stop.clone(),
        ))
    });
    let mut samples = open_samples(&plan.samples)?;
    let (mut asked, mut fresh, mut times) = (0u64, 0u64, Vec::new());
    let until = Instant::now() + Duration::from_secs(plan.seconds);
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = 0;
    while Instant::now() < until {
        tick.tick().await;
        let kind = KINDS[turn % KINDS.len()];
        turn += 1;
        let acked_before = acked.load(Ordering::Acquire);
        let started = Instant::now();
        let conversations = ask(&channel, &bearer, plan, kind).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        times.push(ms);
        if let Some(f) = samples.as_mut() {
            writeln!(f, "{}:{kind},{ms:.3}", plan.label)?;
        }
        if let Some(n) = conversations {
            asked += 1;
            // Every conversation acknowledged before the question was asked is counted.
            if n >= base + acked_before {
                fresh += 1;
            }
        }
    }
    stop.store(true, Ordering::Release);
    let written = match writer {
        Some(w) => w.await??,
        None => 0,
    };
    times.sort_by(f64::total_cmp);
    println!(
        "{}: questions={} p50={:.1} ms p95={:.1} ms; overviews fresh {fresh}/{asked}; events written={written} ({:.0}/s)",
        plan.label,
        times.len(),
        crate::queries::nearest_rank(&times, 0.5),
        crate::queries::nearest_rank(&times, 0.95),
        written as f64 / plan.seconds as f64,
    );
    anyhow::ensure!(
        fresh == asked,
        "{} answers missed acknowledged events",
        asked - fresh
    );
    Ok(())
}

fn open_samples(path: &Option<PathBuf>) -> anyhow::Result<Option<std::fs::File>> {
    path.as_ref()
        .map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))
        })
        .transpose()
}

fn query(plan: &LivePlan, from: DateTime<Utc>, to: DateTime<Utc>, filters: Option<pb::Filters>) -> pb::Query {
    pb::Query {
        from: Some(chrono_to_timestamp(from)),
        to: Some(chrono_to_timestamp(to)),
        time_zone: plan.time_zone.clone(),
        filters,
        ..Default::default()
    }
}

async fn overview(
    channel: &Channel,
    bearer: &Bearer,
    plan: &LivePlan,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    filters: Option<pb::Filters>,
) -> anyhow::Result<pb::Kpis> {
    let request = pb::GetOverviewRequest {
        query: Some(query(plan, from, to, filters)),
        compare_previous: false,
    };
    let answer = pb::metrics_service_client::MetricsServiceClient::new(channel.clone())
        .get_overview(authed(request, bearer))
        .await?;
    answer.into_inner().current.context("an overview without KPIs")
}

/// One dashboard question; the overview's conversation count.
async fn ask(channel: &Channel, bearer: &Bearer, plan: &LivePlan, kind: &str) -> anyhow::Result<Option<u64>> {
    let mut client = pb::metrics_service_client::MetricsServiceClient::new(channel.clone());
    let q = || Some(query(plan, plan.from, plan.to, None));
    match kind {
        "overview" => Ok(Some(
            overview(channel, bearer, plan, plan.from, plan.to, None)
                .await?
                .conversations,
        )),
        "breakdown_agent" => {
            let request = pb::GetBreakdownRequest {
                query: q(),
                dimension: pb::Dimension::Agent as i32,
                limit: 0,
            };
            client.get_breakdown(authed(request, bearer)).await?;
            Ok(None)
        }
        _ => {
            let request = pb::GetTimeSeriesRequest {
                query: q(),
                granularity: pb::Granularity::Day as i32,
            };
            client.get_time_series(authed(request, bearer)).await?;
            Ok(None)
        }
    }
}

/// Streams `rate` events per second (in ten batches a second) into the day before `to`: each
/// new conversation is opened (by a new customer, or three times in ten by one of the
/// simulated tenant's), gets a customer message, an agent reply and a resolution. Counts the
/// conversations whose opening was acknowledged.
async fn write(
    channel: Channel,
    bearer: Bearer,
    to: DateTime<Utc>,
    rate: u64,
    run: String,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let mut client = pb::event_service_client::EventServiceClient::new(channel);
    let per_batch = (rate / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut rng = StdRng::seed_from_u64(11);
    let (mut n, mut written) = (0u64, 0u64);
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        let mut events = Vec::with_capacity(per_batch);
        let mut opened = 0;
        while events.len() < per_batch {
            let conversation = format!("live-{run}-{n}");
            // Mostly new customers; three in ten from the simulated tenant's own customers
            // (`chatkpi-bench` seed 7, half as many customers as conversations), some of whom
            // come back within a week of an earlier conversation: repeat contacts.
            let customer = if rng.random_ratio(3, 10) {
                let pool = 500_000;
                format!(
                    "cust-7-{}",
                    rng.random_range(0..pool).min(rng.random_range(0..pool))
                )
            } else {
                format!("live-cust-{run}-{n}")
            };
            let at = to - chrono::Duration::seconds(rng.random_range(700..86_000));
            for (i, (offset, payload)) in lifecycle(&conversation, &customer, rng.random_range(0..60))
                .into_iter()
                .enumerate()
            {
                opened += u64::from(i == 0);
                events.push(pb::Event {
                    event_id: format!("{conversation}-{i}"),
                    conversation_id: conversation.clone(),
                    occurred_at: Some(chrono_to_timestamp(at + chrono::Duration::seconds(offset))),
                    payload: Some(payload),
                });
            }
            n += 1;
        }
        let answer = client
            .ingest_events(authed(pb::IngestEventsRequest { events }, &bearer))
            .await?
            .into_inner();
        anyhow::ensure!(answer.rejected == 0, "live events were rejected");
        written += u64::from(answer.accepted);
        acked.fetch_add(opened, Ordering::AcqRel);
    }
    Ok(written)
}

/// A conversation's events: opened, a customer message, an agent reply after `reply` s, resolved.
fn lifecycle(conversation: &str, customer: &str, reply: i64) -> Vec<(i64, pb::event::Payload)> {
    use pb::event::Payload as P;
    vec![
        (
            0,
            P::ConversationOpened(pb::ConversationOpened {
                customer_id: customer.to_owned(),
                channel: pb::Channel::Whatsapp as i32,
                ..Default::default()
            }),
        ),
        (
            5,
            P::Message(pb::Message {
                message_id: format!("{conversation}-m1"),
                sender: pb::Sender::Customer as i32,
                ..Default::default()
            }),
        ),
        (
            5 + reply,
            P::Message(pb::Message {
                message_id: format!("{conversation}-m2"),
                sender: pb::Sender::Agent as i32,
                agent_id: format!("agent-{}", reply % 7),
                ..Default::default()
            }),
        ),
        (
            600,
            P::Resolved(pb::Resolved {
                by: pb::ResolvedBy::Agent as i32,
                agent_id: None,
            }),
        ),
    ]
}

/// A noisy-neighbour run: tenant `quiet` asks its overview every `interval` for `seconds`,
/// first alone (`quiet` samples), then while tenant `noisy` asks questions never asked before
/// (windows of 1 hour to 30 days at random offsets, half with a filter) as fast as its query
/// rate allows, on `noisy_clients` connections (`noisy` samples).
pub struct NeighboursPlan {
    pub server: String,
    pub quiet_key: String,
    pub noisy_key: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub interval: Duration,
    pub seconds: u64,
    pub rounds: usize,
    pub noisy_clients: usize,
    pub samples: Option<PathBuf>,
}

pub async fn neighbours(plan: &NeighboursPlan) -> anyhow::Result<()> {
    let channel = client::connect(&plan.server).await?;
    crate::queries::wait_until_serving(&channel).await?;
    let quiet = client::bearer(&plan.quiet_key)?;
    let noisy = client::bearer(&plan.noisy_key)?;
    let live = LivePlan {
        server: plan.server.clone(),
        api_key: plan.quiet_key.clone(),
        from: plan.from,
        to: plan.to,
        time_zone: "Europe/Berlin".into(),
        rate: 0,
        seconds: plan.seconds,
        interval: plan.interval,
        label: String::new(),
        samples: None,
        run: String::new(),
    };
    let mut samples = open_samples(&plan.samples)?;
    // Warm both tenants' data.
    overview(&channel, &quiet, &live, plan.from, plan.to, None).await?;
    overview(&channel, &noisy, &live, plan.from, plan.to, None).await?;
    for round in 0..plan.rounds {
        for label in ["quiet", "noisy"] {
            let stop = Arc::new(AtomicBool::new(false));
            let counts = Arc::new(AtomicU64::new(0));
            let flood: Vec<_> = (0..if label == "noisy" { plan.noisy_clients } else { 0 })
                .map(|c| {
                    let (channel, noisy, stop, counts) =
                        (channel.clone(), noisy.clone(), stop.clone(), counts.clone());
                    let (from, to) = (plan.from, plan.to);
                    tokio::spawn(async move {
                        flood(channel, noisy, from, to, (round * 100 + c) as u64, stop, counts).await
                    })
                })
                .collect();
            let until = Instant::now() + Duration::from_secs(plan.seconds);
            let mut tick = tokio::time::interval(plan.interval);
            let mut times = Vec::new();
            while Instant::now() < until {
                tick.tick().await;
                let started = Instant::now();
                overview(&channel, &quiet, &live, plan.from, plan.to, None).await?;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                times.push(ms);
                if let Some(f) = samples.as_mut() {
                    writeln!(f, "{label}:overview,{ms:.3}")?;
                }
            }
            stop.store(true, Ordering::Release);
            for f in flood {
                f.await?;
            }
            times.sort_by(f64::total_cmp);
            println!(
                "round {round} {label}: overview p50={:.1} ms p95={:.1} ms; noisy questions answered={} ({:.0}/s)",
                crate::queries::nearest_rank(&times, 0.5),
                crate::queries::nearest_rank(&times, 0.95),
                counts.load(Ordering::Acquire),
                counts.load(Ordering::Acquire) as f64 / plan.seconds as f64,
            );
        }
    }
    Ok(())
}

/// Questions never asked before, one after another, until `stop`; counts the answered ones
/// (refusals for the rate limit are waited out).
async fn flood(
    channel: Channel,
    bearer: Bearer,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    seed: u64,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = pb::metrics_service_client::MetricsServiceClient::new(channel);
    let span = (to - from).num_seconds();
    while !stop.load(Ordering::Acquire) {
        let length = rng.random_range(3_600..=30 * 86_400).min(span);
        let start = from + chrono::Duration::seconds(rng.random_range(0..=span - length));
        let filters = match rng.random_range(0..6) {
            0 => Some(pb::Filters {
                channels: vec![rng.random_range(1..=4)],
                ..Default::default()
            }),
            1 => Some(pb::Filters {
                agents: vec![format!("agent-{:03}", rng.random_range(0..60))],
                ..Default::default()
            }),
            2 => Some(pb::Filters {
                priorities: vec![rng.random_range(1..=4)],
                ..Default::default()
            }),
            _ => None,
        };
        let request = pb::GetOverviewRequest {
            query: Some(pb::Query {
                from: Some(chrono_to_timestamp(start)),
                to: Some(chrono_to_timestamp(start + chrono::Duration::seconds(length))),
                time_zone: "UTC".into(),
                filters,
                ..Default::default()
            }),
            compare_previous: rng.random_bool(0.5),
        };
        match client.get_overview(authed(request, &bearer)).await {
            Ok(_) => {
                answered.fetch_add(1, Ordering::AcqRel);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
