//! `chatkpi-bench`: load, benchmark and simulation tools for chatkpi (not part of the service).

use std::path::PathBuf;

use anyhow::{Context, bail};
use chatkpi_tools::{bulk, export, live, queries, sim::SimConfig, stream};
use chrono::{NaiveDate, Utc};
use clap::{Args, Parser, Subcommand};

/// Load, benchmark and simulation tools for chatkpi.
#[derive(Debug, Parser)]
#[command(name = "chatkpi-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a realistic helpdesk event stream; write JSON lines or stream it to a server.
    Simulate(SimulateArgs),
    /// Load a simulated helpdesk into the database directly (benchmark data sets): a new tenant,
    /// its events validated like the service does, and either every event through the service's
    /// write path or, with --facts-only, the derived facts plus presence and conversions.
    BulkLoad(BulkLoadArgs),
    /// Time overview, breakdown by agent and daily series queries against a running server.
    BenchQueries(BenchQueriesArgs),
    /// Write a tenant's conversation facts as CSV (the DuckDB anchor of the query benchmark).
    ExportFacts(ExportArgs),
    /// Hold sliding WatchOverview streams open and report pushes, errors and push latency (load
    /// for bench/soak.sh).
    Watch(WatchArgs),
    /// Ask a dashboard's questions at a steady pace while the tenant streams events into its
    /// newest day; check every answer is fresh (bench/live.sh).
    Live(LiveArgs),
    /// Time one tenant's overview alone and while another floods the server with questions
    /// never asked before (bench/neighbours.sh).
    Neighbours(NeighboursArgs),
}

/// The simulated helpdesk's size and seed.
#[derive(Debug, Clone, Args)]
struct Shape {
    /// Number of conversations.
    #[arg(long, default_value_t = 1000)]
    conversations: u64,
    /// Days the conversations are spread over.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Seed: the same seed and settings give the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First simulated day (UTC), YYYY-MM-DD. Default: `days + 14` days before today, so late
    /// events (reopens, surveys, conversions up to ~10 days later) are not in the future.
    #[arg(long)]
    start: Option<NaiveDate>,
    /// Number of agents.
    #[arg(long, default_value_t = 20)]
    agents: u32,
}

impl Shape {
    fn config(&self) -> SimConfig {
        SimConfig {
            conversations: self.conversations,
            days: self.days,
            seed: self.seed,
            start: self
                .start
                .unwrap_or_else(|| Utc::now().date_naive() - chrono::Duration::days(self.days as i64 + 14)),
            agents: self.agents,
        }
    }
}

#[derive(Debug, Args)]
struct SimulateArgs {
    #[command(flatten)]
    shape: Shape,
    /// Write JSON lines (proto3 JSON mapping of chatkpi.v1.Event) to this file; `-` = stdout.
    #[arg(long, conflicts_with = "server")]
    out: Option<PathBuf>,
    /// Stream to this server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    server: Option<String>,
    /// API key for --server.
    #[arg(long, env = "CHATKPI_API_KEY")]
    api_key: Option<String>,
    /// Events per streamed batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Parallel streams to the server.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Send at most this many events per second (default: as fast as the server acknowledges).
    #[arg(long)]
    rate: Option<u64>,
    /// Leave out events of this kind (e.g. `waiting_on_customer` for a server older than it);
    /// repeatable.
    #[arg(long = "leave-out")]
    leave_out: Vec<String>,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    server: String,
    /// API key of the tenant to watch.
    #[arg(long, env = "CHATKPI_API_KEY")]
    api_key: String,
    /// Parallel WatchOverview streams (sliding 30-day windows).
    #[arg(long, default_value_t = 4)]
    watchers: usize,
    /// Seconds between pushes of each watcher.
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// How long to watch, in seconds.
    #[arg(long)]
    seconds: u64,
}

#[derive(Debug, Args)]
struct BulkLoadArgs {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Name of the tenant created for the data.
    #[arg(long, default_value = "bulk")]
    tenant_name: String,
    #[command(flatten)]
    shape: Shape,
    /// Store the derived facts, presence and conversions, not the message-level events (for
    /// data sets larger than the disk holds in full).
    #[arg(long)]
    facts_only: bool,
    /// Leave out the events that have not happened yet (late replies, surveys and conversions
    /// of the last days), so the helpdesk can run up to today.
    #[arg(long)]
    until_now: bool,
}

#[derive(Debug, Args)]
struct BenchQueriesArgs {
    /// Server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    server: String,
    /// API key of the tenant to query.
    #[arg(long, env = "CHATKPI_API_KEY")]
    api_key: String,
    /// Window start (RFC 3339).
    #[arg(long)]
    from: chrono::DateTime<Utc>,
    /// Window end (RFC 3339).
    #[arg(long)]
    to: chrono::DateTime<Utc>,
    /// Timed calls per query kind (after one untimed first call).
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Time zone of the queries.
    #[arg(long, default_value = "Europe/Berlin")]
    time_zone: String,
    /// Query kinds, comma-separated: overview, overview_1d, breakdown_agent, series_day.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "overview,breakdown_agent,series_day"
    )]
    queries: Vec<queries::Kind>,
    /// Append every timing as `kind,milliseconds` to this file.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Time the first call too (a cold start).
    #[arg(long)]
    no_warmup: bool,
    /// Retry a call answered UNAVAILABLE (its tenant's data still loading) every 250 ms,
    /// printing the server's status; the time recorded runs from the first attempt.
    #[arg(long)]
    retry_while_loading: bool,
    /// Ask at once, without waiting for the server to report SERVING (a client that does not
    /// check health: the first call's time runs from the connection).
    #[arg(long)]
    no_wait_for_serving: bool,
}

#[derive(Debug, Args)]
struct LiveArgs {
    #[arg(long)]
    server: String,
    #[arg(long, env = "CHATKPI_API_KEY")]
    api_key: String,
    /// Window start (RFC 3339).
    #[arg(long)]
    from: chrono::DateTime<Utc>,
    /// Window end (RFC 3339); events stream into the day before it.
    #[arg(long)]
    to: chrono::DateTime<Utc>,
    #[arg(long, default_value = "Europe/Berlin")]
    time_zone: String,
    /// Events per second (0: settled).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Milliseconds between questions.
    #[arg(long, default_value_t = 250)]
    interval_ms: u64,
    /// Sample label prefix.
    #[arg(long)]
    label: String,
    /// Append `label:kind,ms` samples to this file.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Run name, part of the written conversations' ids (distinct per run on one data set).
    #[arg(long)]
    run: String,
}

#[derive(Debug, Args)]
struct NeighboursArgs {
    #[arg(long)]
    server: String,
    /// Key of the tenant whose overview is timed.
    #[arg(long)]
    quiet_key: String,
    /// Key of the tenant that floods the server.
    #[arg(long)]
    noisy_key: String,
    #[arg(long)]
    from: chrono::DateTime<Utc>,
    #[arg(long)]
    to: chrono::DateTime<Utc>,
    #[arg(long, default_value_t = 250)]
    interval_ms: u64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Quiet and noisy phases, alternated.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Parallel clients of the noisy tenant.
    #[arg(long, default_value_t = 8)]
    noisy_clients: usize,
    #[arg(long)]
    samples: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The tenant id.
    #[arg(long)]
    tenant: i64,
    /// Path prefix of the CSV files (`<prefix>.conversations.csv`, `<prefix>.replies.csv`).
    #[arg(long)]
    out: PathBuf,
}

async fn pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    let pool = chatkpi::store::lazy_pool(url, 4).context("invalid database url")?;
    chatkpi::store::migrate(&pool)
        .await
        .context("cannot migrate the database")?;
    Ok(pool)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Warnings of the clients (a stream reopened after a failure) on stderr; no traces exported.
    let _telemetry =
        chatkpi::telemetry::init_with(chatkpi::config::LogFormat::Text, chatkpi::telemetry::Traces::Off);
    match Cli::parse().command {
        Command::Simulate(a) => {
            let config = a.shape.config();
            match (&a.out, &a.server) {
                (Some(path), None) => {
                    let n = stream::write_jsonl(&config, path)?;
                    eprintln!("wrote {n} events");
                    Ok(())
                }
                (None, Some(server)) => {
                    let key = a
                        .api_key
                        .as_deref()
                        .context("--server needs --api-key (or CHATKPI_API_KEY)")?;
                    stream::to_server(
                        &config,
                        server,
                        key,
                        a.batch,
                        a.streams,
                        a.rate,
                        a.leave_out.clone(),
                    )
                    .await
                }
                _ => bail!("give either --out FILE (or -) or --server URL"),
            }
        }
        Command::BulkLoad(a) => {
            let pool = pool(&a.database_url).await?;
            bulk::load(&pool, &a.tenant_name, a.shape.config(), a.facts_only, a.until_now).await
        }
        Command::BenchQueries(a) => {
            queries::run(&queries::Plan {
                server: a.server,
                api_key: a.api_key,
                from: a.from,
                to: a.to,
                time_zone: a.time_zone,
                kinds: a.queries,
                iterations: a.iterations,
                samples: a.samples,
                no_warmup: a.no_warmup,
                retry_while_loading: a.retry_while_loading,
                wait_for_serving: !a.no_wait_for_serving,
            })
            .await
        }
        Command::Watch(a) => {
            let plan = queries::WatchPlan {
                server: a.server,
                api_key: a.api_key,
                watchers: a.watchers,
                interval: std::time::Duration::from_secs(a.interval),
                duration: std::time::Duration::from_secs(a.seconds),
            };
            queries::watch(&plan).await
        }
        Command::Live(a) => {
            live::live(&live::LivePlan {
                server: a.server,
                api_key: a.api_key,
                from: a.from,
                to: a.to,
                time_zone: a.time_zone,
                rate: a.rate,
                seconds: a.seconds,
                interval: std::time::Duration::from_millis(a.interval_ms),
                label: a.label,
                samples: a.samples,
                run: a.run,
            })
            .await
        }
        Command::Neighbours(a) => {
            live::neighbours(&live::NeighboursPlan {
                server: a.server,
                quiet_key: a.quiet_key,
                noisy_key: a.noisy_key,
                from: a.from,
                to: a.to,
                interval: std::time::Duration::from_millis(a.interval_ms),
                seconds: a.seconds,
                rounds: a.rounds,
                noisy_clients: a.noisy_clients,
                samples: a.samples,
            })
            .await
        }
        Command::ExportFacts(a) => {
            let pool = pool(&a.database_url).await?;
            let n = export::export(&pool, a.tenant, &a.out).await?;
            eprintln!("exported {n} conversations");
            Ok(())
        }
    }
}
