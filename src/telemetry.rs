//! Logs, traces and metrics.
//!
//! - Logs: `tracing` to stderr, text or JSON, filtered by `RUST_LOG`; ANSI colours only when
//!   stderr is a terminal.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//!   spans go through `tracing-opentelemetry` to an OTLP/gRPC collector, configured by the
//!   standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, ...); unset,
//!   nothing is exported and nothing fails. W3C `traceparent` is always understood (the `rpc`
//!   span of [`crate::edge::rpc`] continues the caller's trace).
//! - Metrics: Prometheus text at `GET /metrics` on `--metrics-listen` ([`serve_metrics`]).

use std::{io::IsTerminal, net::SocketAddr};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Keeps the trace exporter alive; dropping it flushes the spans not yet sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

impl Telemetry {
    /// Sends the spans not yet exported.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

/// Where traces go.
#[derive(Debug, Clone)]
pub enum Traces {
    /// Nowhere.
    Off,
    /// OTLP/gRPC configured by the standard `OTEL_*` variables.
    FromEnv,
    /// OTLP/gRPC to this endpoint (tests).
    To(String),
}

impl Traces {
    /// `FromEnv` when the standard variables ask for an OTLP exporter, else `Off`.
    pub fn from_env() -> Self {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        if !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            Traces::FromEnv
        } else {
            Traces::Off
        }
    }
}

/// Installs the global subscriber with traces as the environment says.
pub fn init(format: LogFormat) -> Telemetry {
    init_with(format, Traces::from_env())
}

/// Installs the global subscriber (a second call, in tests, keeps the first). Must run inside
/// the Tokio runtime (the OTLP exporter's channel lives there).
pub fn init_with(format: LogFormat, traces: Traces) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,chatkpi=info"));
    let ansi = std::io::stderr().is_terminal();
    let logs = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .boxed(),
    };
    let provider = match traces {
        Traces::Off => None,
        Traces::FromEnv => Some(otlp_provider(None)),
        Traces::To(endpoint) => Some(otlp_provider(Some(endpoint))),
    };
    let (provider, traces) = match provider {
        Some(Ok(provider)) => {
            let tracer = provider.tracer("chatkpi");
            (
                Some(provider),
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            )
        }
        Some(Err(err)) => {
            eprintln!("chatkpi: OpenTelemetry export disabled: {err:#}");
            (None, None)
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
    Telemetry { provider }
}

fn otlp_provider(endpoint: Option<String>) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let exporter = match endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint).build()?,
        None => builder.build()?,
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "chatkpi".into());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Serves Prometheus metrics at `GET /metrics` on `addr` (the recorder is process-wide: a
/// second call in one process fails and is reported).
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
        ])?
        .install()?;
    describe();
    Ok(())
}

/// Help texts of chatkpi's metrics.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "chatkpi_rpc_requests_total",
        "Finished calls by method and gRPC status code"
    );
    describe_histogram!(
        "chatkpi_rpc_duration_seconds",
        "Call duration by method (streams: until they end)"
    );
    describe_counter!(
        "chatkpi_events_total",
        "Ingested events by outcome (accepted, duplicate, rejected) and rejection field"
    );
    describe_counter!(
        "chatkpi_limit_rejections_total",
        "Calls refused by a limit (concurrency, timeout, events, queries, streams, watchers, auth_failures)"
    );
    describe_counter!(
        "chatkpi_connections_closed_total",
        "Connections closed by a limit (too_many, handshake_timeout, idle)"
    );
    describe_gauge!("chatkpi_connections_open", "Open client connections");
    describe_gauge!(
        "chatkpi_write_queue_batches",
        "Batches waiting in the per-tenant write queues"
    );
    describe_gauge!("chatkpi_query_cache_bytes", "Bytes held by the query cache");
    describe_gauge!(
        "chatkpi_query_cache_bytes_by_kind",
        "Bytes held by the query cache per kind: tenant tables, day segments, kept totals"
    );
    describe_counter!(
        "chatkpi_query_cache_hits_total",
        "Day segments a query found in the cache"
    );
    describe_counter!(
        "chatkpi_query_cache_misses_total",
        "Day segments a query had to read from PostgreSQL"
    );
    describe_counter!(
        "chatkpi_kept_answers_served_total",
        "Dashboard questions answered from their kept answer (docs/metrics.md §9)"
    );
    describe_gauge!(
        "chatkpi_db_pool_connections",
        "Database pool connections by state (idle, in_use)"
    );
    describe_gauge!(
        "chatkpi_memory_bytes",
        "Process memory: resident (RSS, what a container limit counts), and the allocator's allocated and resident bytes"
    );
}

/// Sets the memory gauges: the process's resident set (Linux), and jemalloc's own counts (zero
/// where chatkpi is not the program that installed jemalloc as its allocator).
pub fn sample_memory() {
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("chatkpi_memory_bytes", "kind" => "process_resident").set(rss as f64);
    }
    // jemalloc's statistics are a snapshot refreshed by advancing its epoch.
    if tikv_jemalloc_ctl::epoch::advance().is_ok() {
        use tikv_jemalloc_ctl::stats;
        for (kind, value) in [
            ("allocated", stats::allocated::read()),
            ("allocator_resident", stats::resident::read()),
        ] {
            if let Ok(v) = value {
                metrics::gauge!("chatkpi_memory_bytes", "kind" => kind).set(v as f64);
            }
        }
    }
}

/// The process's resident set size, from `/proc/self/statm` (Linux; `None` elsewhere).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
