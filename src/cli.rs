//! The non-server subcommands: migrate, tenant management and the simulator's outputs.

use std::{
    io::{BufWriter, Write},
    time::Instant,
};

use anyhow::{Context, bail};
use chrono::Utc;
use tonic::{metadata::MetadataValue, transport::Channel};

use crate::{
    config::{BenchQueriesArgs, BulkLoadArgs, DatabaseArgs, SimulateArgs, TenantCommand},
    domain::event::Event,
    grpc::{
        convert::{chrono_to_timestamp, event_to_proto},
        pb,
    },
    sim::{self, SimConfig},
    store,
};

async fn migrated_pool(database: &DatabaseArgs) -> anyhow::Result<sqlx::PgPool> {
    let pool = store::lazy_pool(&database.database_url, 2).map_err(|e| anyhow::anyhow!("{e}"))?;
    store::migrate(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("cannot migrate: {e}"))?;
    Ok(pool)
}

/// `chatkpi migrate`.
pub async fn migrate(database: &DatabaseArgs) -> anyhow::Result<()> {
    migrated_pool(database).await?;
    println!("migrations applied");
    Ok(())
}

/// `chatkpi reproject`.
pub async fn reproject(database: &DatabaseArgs, tenant: Option<i64>) -> anyhow::Result<()> {
    let pool = migrated_pool(database).await?;
    let tenants = match tenant {
        Some(t) => vec![t],
        None => store::events::tenants(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    for t in tenants {
        let started = Instant::now();
        let n = store::events::reproject(&pool, t, 2000)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "tenant {t}: {n} conversations recomputed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `chatkpi tenant ...`: prints `tenant_id=<id>` and `api_key=<key>` lines (easy to parse).
pub async fn tenant(command: &TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create { database, name } => {
            let pool = migrated_pool(database).await?;
            let (tenant, key) = store::tenants::create_tenant(&pool, name)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("tenant_id={tenant}");
            println!("api_key={}", key.plaintext);
        }
        TenantCommand::AddKey { database, tenant } => {
            let pool = migrated_pool(database).await?;
            let key = store::tenants::create_key(&pool, *tenant)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("tenant_id={tenant}");
            println!("api_key={}", key.plaintext);
        }
    }
    Ok(())
}

fn sim_config(args: &SimulateArgs) -> SimConfig {
    // Default start leaves room after the last day for late events (reopens, surveys and
    // conversions up to ~10 days later), which must not be in the future.
    let start = args
        .start
        .unwrap_or_else(|| Utc::now().date_naive() - chrono::Duration::days(args.days as i64 + 14));
    SimConfig {
        conversations: args.conversations,
        days: args.days,
        seed: args.seed,
        start,
        agents: args.agents,
    }
}

/// `chatkpi simulate`: JSON lines to a file / stdout, or a stream to a server.
pub async fn simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    let config = sim_config(args);
    match (&args.out, &args.server) {
        (Some(path), None) => write_jsonl(&config, path),
        (None, Some(server)) => {
            let key = args
                .api_key
                .as_deref()
                .context("--server needs --api-key (or CHATKPI_API_KEY)")?;
            stream_to_server(&config, server, key, args.batch, args.streams).await
        }
        _ => bail!("give either --out FILE (or -) or --server URL"),
    }
}

fn write_jsonl(config: &SimConfig, path: &std::path::Path) -> anyhow::Result<()> {
    let sink: Box<dyn Write> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?)
    };
    let mut out = BufWriter::new(sink);
    let mut result = Ok(());
    let mut count = 0u64;
    sim::for_each_day(config, |chunk| {
        for e in &chunk {
            if result.is_ok() {
                result = serde_json::to_writer(&mut out, &event_to_proto(e))
                    .map_err(anyhow::Error::from)
                    .and_then(|()| out.write_all(b"\n").map_err(anyhow::Error::from));
                count += 1;
            }
        }
    });
    result?;
    out.flush()?;
    eprintln!("wrote {count} events");
    Ok(())
}

/// Totals of a streaming run.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamTotals {
    pub events: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

async fn stream_to_server(
    config: &SimConfig,
    server: &str,
    api_key: &str,
    batch: usize,
    streams: usize,
) -> anyhow::Result<()> {
    let channel = Channel::from_shared(server.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    // The generator runs on a blocking thread and hands over batches through a bounded
    // channel: the simulator never runs far ahead of what the server has acknowledged.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Event>>(streams.max(1) * 4);
    let config = config.clone();
    let batch = batch.max(1);
    let generator = tokio::task::spawn_blocking(move || {
        sim::for_each_day(&config, |chunk| {
            for part in chunk.chunks(batch) {
                if tx.blocking_send(part.to_vec()).is_err() {
                    return;
                }
            }
        });
    });
    let started = Instant::now();
    let totals = send_batches(channel, api_key, rx, streams.max(1)).await?;
    generator.await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "events={} accepted={} duplicates={} rejected={} seconds={:.2} events_per_second={:.0}",
        totals.events,
        totals.accepted,
        totals.duplicates,
        totals.rejected,
        secs,
        totals.events as f64 / secs
    );
    if totals.rejected > 0 {
        bail!("{} events were rejected", totals.rejected);
    }
    Ok(())
}

/// Streams batches from `rx` over `streams` parallel StreamEvents calls; returns the totals of
/// the acknowledgements.
pub async fn send_batches(
    channel: Channel,
    api_key: &str,
    rx: tokio::sync::mpsc::Receiver<Vec<Event>>,
    streams: usize,
) -> anyhow::Result<StreamTotals> {
    let bearer: MetadataValue<_> = format!("Bearer {api_key}")
        .parse()
        .context("api key is not valid metadata")?;
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = Vec::new();
    for stream_no in 0..streams {
        let rx = rx.clone();
        let bearer = bearer.clone();
        let mut client = pb::event_service_client::EventServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let (req_tx, req_rx) = tokio::sync::mpsc::channel::<pb::StreamEventsRequest>(4);
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(req_rx));
            request.metadata_mut().insert("authorization", bearer);
            let feeder = tokio::spawn(async move {
                let mut batch_id = stream_no as u64 * 1_000_000_000;
                let mut sent = 0u64;
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(events) = next else { break };
                    batch_id += 1;
                    sent += events.len() as u64;
                    let events = events.iter().map(event_to_proto).collect();
                    if req_tx
                        .send(pb::StreamEventsRequest { batch_id, events })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                sent
            });
            let mut acks = client.stream_events(request).await?.into_inner();
            let mut totals = StreamTotals::default();
            while let Some(ack) = acks.message().await? {
                totals.events += ack.results.len() as u64;
                totals.accepted += ack.accepted as u64;
                totals.duplicates += ack.duplicates as u64;
                totals.rejected += ack.rejected as u64;
            }
            let sent = feeder.await.unwrap_or(0);
            if sent != totals.events {
                anyhow::bail!(
                    "stream {stream_no}: sent {sent} events but {} were acknowledged",
                    totals.events
                );
            }
            Ok::<_, anyhow::Error>(totals)
        }));
    }
    let mut totals = StreamTotals::default();
    for task in tasks {
        let t = task.await??;
        totals.events += t.events;
        totals.accepted += t.accepted;
        totals.duplicates += t.duplicates;
        totals.rejected += t.rejected;
    }
    Ok(totals)
}

/// `chatkpi bench-queries`: latency of the main dashboard queries, measured from the client.
pub async fn bench_queries(args: &BenchQueriesArgs) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.server.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;
    let mut client = pb::metrics_service_client::MetricsServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024);
    let bearer: MetadataValue<_> = format!("Bearer {}", args.api_key).parse()?;
    let query = pb::Query {
        from: Some(chrono_to_timestamp(args.from)),
        to: Some(chrono_to_timestamp(args.to)),
        time_zone: args.time_zone.clone(),
        ..Default::default()
    };
    let request = |message| authed(message, &bearer);
    for kind in ["overview", "breakdown_agent", "series_day"] {
        let mut times = Vec::with_capacity(args.iterations);
        for i in 0..=args.iterations {
            let started = Instant::now();
            let size = match kind {
                "overview" => {
                    let r = client
                        .get_overview(request(pb::GetOverviewRequest {
                            query: Some(query.clone()),
                            compare_previous: false,
                        }))
                        .await?;
                    r.into_inner().current.map_or(0, |k| k.conversations)
                }
                "breakdown_agent" => {
                    let r = client
                        .get_breakdown(authed(
                            pb::GetBreakdownRequest {
                                query: Some(query.clone()),
                                dimension: pb::Dimension::Agent as i32,
                            },
                            &bearer,
                        ))
                        .await?;
                    r.into_inner().rows.len() as u64
                }
                _ => {
                    let r = client
                        .get_time_series(authed(
                            pb::GetTimeSeriesRequest {
                                query: Some(query.clone()),
                                granularity: pb::Granularity::Day as i32,
                            },
                            &bearer,
                        ))
                        .await?;
                    r.into_inner().points.len() as u64
                }
            };
            // The first call loads the tenant's dataset (cold); it is reported separately.
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if i == 0 {
                println!("{kind}: first call {ms:.1} ms (size {size})");
            } else {
                times.push(ms);
            }
        }
        times.sort_by(f64::total_cmp);
        let pick = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        println!(
            "{kind}: n={} p50={:.1} ms p95={:.1} ms max={:.1} ms",
            times.len(),
            pick(0.5),
            pick(0.95),
            times.last().copied().unwrap_or_default()
        );
    }
    Ok(())
}

fn authed<T>(message: T, bearer: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", bearer.clone());
    r
}

/// Appends `value` as a CSV field (quoted, quotes doubled); `None` is an unquoted empty field,
/// which COPY reads as NULL.
fn csv_field(out: &mut String, value: Option<&str>) {
    if let Some(v) = value {
        out.push('"');
        for c in v.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    }
}

fn csv_row(out: &mut String, fields: &[Option<&str>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, *f);
    }
    out.push('\n');
}

/// `chatkpi bulk-load`: the bulk path for benchmark data sets. Events and facts are written with
/// COPY, one transaction per simulated day; the facts are derived with the same
/// `domain::facts::derive` the service uses, from each conversation's complete event set.
pub async fn bulk_load(args: &BulkLoadArgs) -> anyhow::Result<()> {
    use std::collections::HashMap;
    let pool = migrated_pool(&args.database).await?;
    let (tenant, key) = store::tenants::create_tenant(&pool, &args.tenant_name)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("tenant_id={tenant}");
    println!("api_key={}", key.plaintext);
    let config = SimConfig {
        conversations: args.sim.conversations,
        days: args.sim.days,
        seed: args.sim.seed,
        start: args.sim.start,
        agents: args.sim.agents,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String, u64, u64)>(2);
    let tenant_text = tenant.to_string();
    let facts_only = args.facts_only;
    // Generation, derivation and CSV encoding on a blocking thread, COPY on this one.
    let producer = tokio::task::spawn_blocking(move || {
        sim::for_each_day(&config, |chunk| {
            let mut events_csv = String::with_capacity(chunk.len() * 220);
            let mut by_conversation: HashMap<&str, Vec<Event>> = HashMap::new();
            for e in &chunk {
                if facts_only && e.payload.belongs_to_conversation() {
                    if let Some(c) = e.conversation_id.as_deref() {
                        by_conversation.entry(c).or_default().push(e.clone());
                    }
                    continue;
                }
                let payload = serde_json::to_string(&e.payload).expect("payload serializes");
                let at = e.occurred_at.to_rfc3339();
                csv_row(
                    &mut events_csv,
                    &[
                        Some(&tenant_text),
                        Some(&e.event_id),
                        e.conversation_id.as_deref(),
                        Some(&at),
                        Some(e.payload.kind()),
                        Some(&payload),
                    ],
                );
                if let (Some(c), true) = (e.conversation_id.as_deref(), e.payload.belongs_to_conversation()) {
                    by_conversation.entry(c).or_default().push(e.clone());
                }
            }
            let mut facts_csv = String::with_capacity(by_conversation.len() * 1500);
            let conversations = by_conversation.len() as u64;
            for (id, events) in &by_conversation {
                let Some(f) = crate::domain::facts::derive(id, events) else {
                    continue;
                };
                let json = serde_json::to_string(&f).expect("facts serialize");
                let time = |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.to_rfc3339());
                let (opened, resolved, ended, last) = (
                    time(Some(f.opened_at)),
                    time(f.resolved_at),
                    time(f.ended_at),
                    time(Some(f.last_event_at)),
                );
                csv_row(
                    &mut facts_csv,
                    &[
                        Some(&tenant_text),
                        Some(id),
                        opened.as_deref(),
                        Some(f.channel.as_str()),
                        f.customer_id.as_deref(),
                        f.agent.as_deref(),
                        Some(f.state.as_str()),
                        resolved.as_deref(),
                        ended.as_deref(),
                        last.as_deref(),
                        Some(&json),
                    ],
                );
            }
            // A closed channel means the loader stopped on an error: the rest is not needed.
            let _ = tx.blocking_send((events_csv, facts_csv, chunk.len() as u64, conversations));
        });
    });
    let started = Instant::now();
    let (mut events, mut conversations) = (0u64, 0u64);
    while let Some((events_csv, facts_csv, n_events, n_conversations)) = rx.recv().await {
        let mut conn = pool.begin().await?;
        let mut copy = conn
            .copy_in_raw("copy events (tenant_id, event_id, conversation_id, occurred_at, kind, payload) from stdin (format csv)")
            .await?;
        copy.send(events_csv.as_bytes()).await?;
        copy.finish().await?;
        let mut copy = conn
            .copy_in_raw(
                "copy conversations (tenant_id, conversation_id, opened_at, channel, customer_id, agent, state, \
                 resolved_at, ended_at, last_event_at, facts) from stdin (format csv)",
            )
            .await?;
        copy.send(facts_csv.as_bytes()).await?;
        copy.finish().await?;
        conn.commit().await?;
        events += n_events;
        conversations += n_conversations;
        eprintln!(
            "loaded {conversations} conversations, {events} events, {:.0} events/s",
            events as f64 / started.elapsed().as_secs_f64()
        );
    }
    producer.await?;
    println!(
        "events={events} conversations={conversations} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
