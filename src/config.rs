//! Command line and environment configuration (every flag has an env variable).

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::tenant::Scope;

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
    /// Import a history of events (JSON lines of chatkpi.v1.Event in the proto3 JSON mapping,
    /// one per line; .gz is decompressed; - reads stdin) into a running server, with progress,
    /// a checkpoint to resume from and a rejects file.
    Import(ImportArgs),
}

/// `chatkpi import` settings.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The file to import (`.gz` is decompressed), or `-` for stdin.
    pub input: std::path::PathBuf,
    /// The server, e.g. http://127.0.0.1:50051 (https:// for TLS).
    #[arg(long, env = "CHATKPI_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// An API key of the tenant with the `ingest` scope.
    #[arg(long, env = "CHATKPI_API_KEY")]
    pub api_key: String,
    /// Events per batch (at most the server's --max-batch).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Parallel streams.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: u32,
    /// Checkpoint file: the last line before which everything was acknowledged; a rerun
    /// continues after it. Default: <input>.checkpoint (none for stdin).
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Where rejected lines are appended as JSON lines (line, event_id, field, reason).
    /// Default: <input>.rejects.jsonl (rejects.jsonl for stdin).
    #[arg(long)]
    pub rejects: Option<std::path::PathBuf>,
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
    /// Memory for query data (day segments, kept totals, names, presence, conversions of every
    /// tenant) and the work on it, in bytes or with a unit (512MiB, 2GiB). The cache's entries
    /// take all but 80 MiB or a sixteenth of it, whichever is more (at most a quarter), left to
    /// computations in flight; what does not fit is evicted and read again from PostgreSQL
    /// when a query needs it. The process's resident set stays within it plus 96 MiB or a
    /// sixteenth of it, whichever is more (BENCHMARKS.md).
    #[arg(long, env = "CHATKPI_CACHE_BYTES", default_value = "512MiB", value_parser = parse_bytes)]
    pub cache_bytes: u64,
    /// Days of recent data to load, before reporting SERVING, for every tenant queried in the
    /// last day (so the first dashboard query after a restart finds its data in memory), then
    /// ask their recent dashboard questions again (so it finds their totals too); 0 disables.
    /// Loading stops at half the cache budget, asking at fifteen sixteenths, both at --warmup-secs.
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
    /// Address of the Prometheus metrics endpoint (`GET /metrics`), on its own port; none when
    /// unset.
    #[arg(long, env = "CHATKPI_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub alerts: AlertArgs,
}

/// Alert evaluation and delivery (docs/metrics.md §12).
#[derive(Debug, Clone, Args)]
pub struct AlertArgs {
    /// How often the alert rules are evaluated (by one replica at a time), in seconds.
    #[arg(long, env = "CHATKPI_ALERT_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub alert_interval_secs: u64,
    /// Delay before the first retry of a failed delivery, in milliseconds; each next retry waits
    /// twice as long, at most an hour.
    #[arg(long, env = "CHATKPI_ALERT_RETRY_BASE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub alert_retry_base_ms: u64,
    /// A delivery still failing this long after its notice is given up, in seconds.
    #[arg(long, env = "CHATKPI_ALERT_GIVE_UP_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub alert_give_up_secs: u64,
    /// Allow destinations on this host (loopback, link-local, unspecified addresses; refused by
    /// default so a rule cannot reach services only the server can reach).
    #[arg(long, env = "CHATKPI_ALERT_ALLOW_LOCAL_DESTINATIONS")]
    pub alert_allow_local_destinations: bool,
}

impl Default for AlertArgs {
    fn default() -> Self {
        Self {
            alert_interval_secs: 30,
            alert_retry_base_ms: 10_000,
            alert_give_up_secs: 86_400,
            alert_allow_local_destinations: false,
        }
    }
}

/// Optional TLS for the gRPC listener (plaintext when neither is given).
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain of the server.
    #[arg(long, env = "CHATKPI_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of the server.
    #[arg(long, env = "CHATKPI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// What one client, connection or tenant may use (README, Limits).
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Longest a unary call may run, in seconds (DEADLINE_EXCEEDED after it; its work stops).
    #[arg(long, env = "CHATKPI_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,
    /// Calls served at the same time, all clients together; more are refused at once with
    /// RESOURCE_EXHAUSTED (health and reflection are not counted).
    #[arg(long, env = "CHATKPI_MAX_CONCURRENT_REQUESTS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_requests: u32,
    /// Open TCP connections; when all are taken, a new one replaces the oldest connection that
    /// has not sent a request head yet, or is closed when there is none.
    #[arg(long, env = "CHATKPI_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Open TCP connections from one client address (behind a proxy or NAT every client shares
    /// one: raise it there); more from that address are closed as they arrive.
    #[arg(long, env = "CHATKPI_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_address: u32,
    /// Seconds a new connection has to complete its first request head (TLS handshake, HTTP/2
    /// preface and headers, or an HTTP/1.1 request line and headers) before it is closed; also
    /// the longest wait for each later HTTP/1.1 request head.
    #[arg(long, env = "CHATKPI_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub handshake_timeout_secs: u64,
    /// Seconds a connection may stay open without any call in progress before it is closed.
    #[arg(long, env = "CHATKPI_IDLE_TIMEOUT_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,
    /// Concurrent calls and streams on one HTTP/2 connection.
    #[arg(long, env = "CHATKPI_MAX_STREAMS_PER_CONNECTION", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_connection: u32,
    /// Open StreamEvents streams of one tenant.
    #[arg(long, env = "CHATKPI_MAX_INGEST_STREAMS_PER_TENANT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_ingest_streams_per_tenant: u32,
    /// Open ListConversations and WatchOverview streams of one tenant (apart from its ingest
    /// streams: readers never starve writers).
    #[arg(long, env = "CHATKPI_MAX_READ_STREAMS_PER_TENANT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_read_streams_per_tenant: u32,
    /// Seconds a server stream may wait for its client to read before it is ended
    /// (DEADLINE_EXCEEDED) and its slot freed.
    #[arg(long, env = "CHATKPI_STREAM_STALL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stream_stall_secs: u64,
    /// Open WatchOverview streams of one tenant (part of its read streams).
    #[arg(long, env = "CHATKPI_MAX_WATCHERS_PER_TENANT", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_watchers_per_tenant: u32,
    /// Events one tenant may send per second (bursts up to twice as many).
    #[arg(long, env = "CHATKPI_TENANT_EVENTS_PER_SEC", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub tenant_events_per_sec: u32,
    /// KPI calls one tenant may make per second (bursts up to twice as many).
    #[arg(long, env = "CHATKPI_TENANT_QUERIES_PER_SEC", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub tenant_queries_per_sec: u32,
    /// Failed look-ups of one key one client address may make per minute; beyond, that key is
    /// refused from that address without a look-up (10x for different keys of one tenant, 100x
    /// for keys of any tenants; keys known valid keep working)
    #[arg(long, env = "CHATKPI_AUTH_FAILURES_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failures_per_minute: u32,
}

impl Default for Limits {
    /// The defaults of the flags (and the `CHATKPI_*` variables that are set).
    fn default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            limits: Limits,
        }
        Only::parse_from(["chatkpi"]).limits
    }
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
    /// Print a new API key for an existing tenant (key rotation, or a key limited to some
    /// scopes).
    AddKey {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The tenant id.
        #[arg(long)]
        tenant: i64,
        /// What the key may do: ingest (EventService), read (MetricsService), admin
        /// (AdminService, UpdateSettings). Repeat or separate with commas; default: all three.
        #[arg(long = "scope", value_delimiter = ',', value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// A note shown by list-keys (who the key is for).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a tenant's keys: id, scopes, label, created, revoked (never the secret).
    ListKeys {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        tenant: i64,
    },
    /// Revoke a key by the id list-keys shows; servers refuse it within 5 seconds.
    RevokeKey {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        tenant: i64,
        /// The key's id (12 hex digits).
        #[arg(long)]
        key_id: String,
    },
    /// Erase one customer of a tenant: their conversations, events and conversions are deleted
    /// (the same as AdminService.EraseCustomer).
    EraseCustomer {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        tenant: i64,
        /// The customer id as sent in the events.
        #[arg(long)]
        customer: String,
    },
    /// Add a WhatsApp Cloud API source (README "WhatsApp"; the same as
    /// AdminService.CreateWhatsAppSource): prints its id, webhook path and verify token (shown
    /// once).
    AddWhatsapp {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        tenant: i64,
        /// What the source is (a phone number, an app).
        #[arg(long)]
        name: String,
        /// The Meta app secret (bodies are signed with it).
        #[arg(long, env = "WHATSAPP_APP_SECRET")]
        app_secret: String,
        /// The inbox of its conversations (default: the business phone number of each message).
        #[arg(long, default_value = "")]
        inbox: String,
        /// The token Meta's verification request carries (default: generated).
        #[arg(long, default_value = "")]
        verify_token: String,
        /// Idle seconds after which a conversation is closed (default 86400).
        #[arg(long, default_value_t = 0)]
        inactivity_seconds: u32,
    },
    /// Add an alert rule (docs/metrics.md §12; the same as AdminService.CreateAlertRule): prints
    /// its id and signing secret (shown once).
    AddAlert {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        tenant: i64,
        /// The rule as chatkpi.v1.AlertRule in the proto3 JSON mapping, e.g.
        /// '{"name": "backlog", "metric": "backlog", "comparison": "ALERT_COMPARISON_ABOVE",
        /// "threshold": 50, "destinations": ["https://hooks.example.com/x"]}'.
        #[arg(long)]
        rule: String,
        /// Allow destinations on this host (as the server's flag of that name).
        #[arg(long)]
        alert_allow_local_destinations: bool,
    },
    /// List a tenant's alert rules with their state, as JSON lines.
    ListAlerts {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        tenant: i64,
    },
    /// Remove an alert rule.
    RemoveAlert {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        tenant: i64,
        #[arg(long)]
        rule_id: i64,
    },
    /// List a tenant's WhatsApp sources (never their secrets).
    ListWhatsapp {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        tenant: i64,
    },
    /// Remove a WhatsApp source: its URL answers 404 from then on.
    RemoveWhatsapp {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        tenant: i64,
        #[arg(long)]
        source_id: String,
    },
}

impl TenantCommand {
    /// The database every tenant subcommand works on.
    pub fn database(&self) -> &DatabaseArgs {
        use TenantCommand as C;
        match self {
            C::Create { database, .. }
            | C::AddKey { database, .. }
            | C::ListKeys { database, .. }
            | C::RevokeKey { database, .. }
            | C::EraseCustomer { database, .. }
            | C::AddWhatsapp { database, .. }
            | C::ListWhatsapp { database, .. }
            | C::RemoveWhatsapp { database, .. }
            | C::AddAlert { database, .. }
            | C::ListAlerts { database, .. }
            | C::RemoveAlert { database, .. } => database,
        }
    }
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::parse(text.trim()).ok_or_else(|| format!("unknown scope {text:?} (ingest, read, admin)"))
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
