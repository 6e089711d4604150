//! Command line and environment configuration (every flag has an env variable).

use std::net::SocketAddr;

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
    /// Days of recent data to load, before reporting SERVING, for every tenant queried in the
    /// last day (so the first dashboard query after a restart finds its data in memory); 0
    /// disables. Stops at half the cache budget or after --warmup-secs.
    #[arg(long, env = "CHATKPI_WARMUP_DAYS", default_value_t = 35)]
    pub warmup_days: u32,
    /// Longest warm-up before serving, in seconds.
    #[arg(long, env = "CHATKPI_WARMUP_SECS", default_value_t = 60)]
    pub warmup_secs: u64,
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
