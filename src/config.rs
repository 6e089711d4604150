//! Command line and environment configuration (every flag has an env variable).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// chatkpi: helpdesk KPIs from customer-support conversation events, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "chatkpi", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = "CHATKPI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (applies migrations first).
    Serve(ServeConfig),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Recompute every conversation's derived facts from the stored events (after an upgrade
    /// that changes fact derivation). Safe while the service runs.
    Reproject {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Only this tenant (default: all).
        #[arg(long)]
        tenant: Option<i64>,
    },
    /// Manage tenants and their API keys.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Generate a realistic helpdesk event stream; write JSON lines or stream it to a server.
    Simulate(SimulateArgs),
    /// Bulk path for benchmark data sets (not for production ingest): simulate a helpdesk,
    /// derive the facts in-process and COPY events and facts straight into Postgres.
    BulkLoad(BulkLoadArgs),
    /// Benchmark client (not a test): time overview, breakdown by agent and daily series
    /// queries against a running server and print latency percentiles.
    BenchQueries(BenchQueriesArgs),
}

/// Bulk loader settings.
#[derive(Debug, Clone, Args)]
pub struct BulkLoadArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Name of the tenant created for the data.
    #[arg(long, default_value = "bulk")]
    pub tenant_name: String,
    #[command(flatten)]
    pub sim: SimShape,
    /// Store only what KPI queries read (derived facts, presence and conversion events), not
    /// the message-level conversation events the facts were derived from: for data sets larger
    /// than the disk can hold in full.
    #[arg(long)]
    pub facts_only: bool,
}

/// The simulated helpdesk's size and seed.
#[derive(Debug, Clone, Args)]
pub struct SimShape {
    /// Number of conversations.
    #[arg(long, default_value_t = 1000)]
    pub conversations: u64,
    /// Days the conversations are spread over.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First simulated day (UTC), YYYY-MM-DD.
    #[arg(long)]
    pub start: chrono::NaiveDate,
    /// Number of agents.
    #[arg(long, default_value_t = 60)]
    pub agents: u32,
}

/// Query benchmark settings.
#[derive(Debug, Clone, Args)]
pub struct BenchQueriesArgs {
    /// Server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    pub server: String,
    /// API key of the tenant to query.
    #[arg(long, env = "CHATKPI_API_KEY")]
    pub api_key: String,
    /// Window start (RFC 3339).
    #[arg(long)]
    pub from: chrono::DateTime<chrono::Utc>,
    /// Window end (RFC 3339).
    #[arg(long)]
    pub to: chrono::DateTime<chrono::Utc>,
    /// Timed calls per query kind (after one warm-up call).
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// Time zone of the queries.
    #[arg(long, default_value = "Europe/Berlin")]
    pub time_zone: String,
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL, e.g. postgres://postgres@127.0.0.1:5432/chatkpi.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
}

/// Server settings.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address the gRPC server listens on (port 0 = any free port).
    #[arg(long, env = "CHATKPI_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Largest batch IngestEvents / StreamEvents accept, in events.
    #[arg(long, env = "CHATKPI_MAX_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch: u32,
    /// Most database connections the server opens.
    #[arg(long, env = "CHATKPI_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Memory for query data (day segments, names, presence, conversions of every tenant), in
    /// bytes or with a unit (512MiB, 2GiB). What does not fit is evicted and read again from
    /// PostgreSQL when a query needs it.
    #[arg(long, env = "CHATKPI_CACHE_BYTES", default_value = "512MiB", value_parser = parse_bytes)]
    pub cache_bytes: u64,
    /// Writer tasks per tenant: each stores whole batches in its own transactions, several
    /// waiting batches at a time.
    #[arg(long, env = "CHATKPI_WRITERS_PER_TENANT", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub writers_per_tenant: u32,
    /// On SIGTERM / Ctrl-C, how long in-flight requests and streams may take to finish, in
    /// seconds, before the server stops anyway.
    #[arg(long, env = "CHATKPI_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its id and a new API key (shown once).
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Display name of the tenant.
        #[arg(long)]
        name: String,
    },
    /// Print a new API key for an existing tenant (key rotation).
    AddKey {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The tenant id.
        #[arg(long)]
        tenant: i64,
    },
}

/// Simulator settings.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Number of conversations.
    #[arg(long, default_value_t = 1000)]
    pub conversations: u64,
    /// Days the conversations are spread over.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Seed: the same seed and settings give the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First simulated day (UTC), YYYY-MM-DD. Default: `days` days before today.
    #[arg(long)]
    pub start: Option<chrono::NaiveDate>,
    /// Number of agents.
    #[arg(long, default_value_t = 20)]
    pub agents: u32,
    /// Write JSON lines (proto3 JSON mapping of chatkpi.v1.Event) to this file; `-` = stdout.
    #[arg(long, conflicts_with = "server")]
    pub out: Option<PathBuf>,
    /// Stream to this server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    pub server: Option<String>,
    /// API key for --server.
    #[arg(long, env = "CHATKPI_API_KEY")]
    pub api_key: Option<String>,
    /// Events per streamed batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Parallel streams to the server.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
}

/// Parses a size: a number of bytes, optionally followed by a unit (KiB, MiB, GiB, TiB; KB,
/// MB, GB, TB are powers of 1000).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a size such as 512MiB, got {text:?}"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB, TiB)")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("3GB"), Ok(3_000_000_000));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }
}
