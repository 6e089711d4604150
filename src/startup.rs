//! Builds the server (listener, pool, services, health, reflection) and runs it until a
//! shutdown signal, with a bounded drain.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    app::{App, AppConfig, alerts::AlertConfig, limits::LimitSettings},
    config::{Limits, ServeConfig},
    edge::{
        MAX_MESSAGE_BYTES,
        conn::{self, ConnLimits},
        rpc::{self, RpcLimits},
        serve::{self, HttpSettings},
    },
    grpc::{admin::AdminApi, events::EventsApi, metrics::MetricsApi, pb},
    store, telemetry, web,
};

/// How often the health task checks that the database still answers: health follows a refused
/// connection within about a second, a silent database within about two.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the health check waits for the database before calling it unreachable.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(800);
/// A failed check is tried once more after this pause before the server stops serving: one
/// ping slowed past the timeout by a busy machine (seen at 10 M conversations while both
/// cores computed) must not refuse every request for a second.
const HEALTH_RETRY: Duration = Duration::from_millis(200);

/// What the server loads before it reports SERVING (`--warmup-days`, `--warmup-secs`).
#[derive(Debug, Clone, Copy)]
struct Warmup {
    days: u32,
    limit: Duration,
}

/// A bound, not yet running server.
pub struct Application {
    listener: TcpListener,
    pool: PgPool,
    app: Arc<App>,
    grace: Duration,
    warmup: Warmup,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    metrics_listen: Option<SocketAddr>,
}

impl Application {
    /// Binds the listener (port 0 picks a free port) and prepares a lazily connecting pool, so
    /// the server starts even while the database is down (health says NOT_SERVING meanwhile).
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let pool = store::lazy_pool(&config.database.database_url, config.db_max_connections)
            .context("cannot configure the database pool")?;
        let l = &config.limits;
        let app = Arc::new(App::new(
            pool.clone(),
            &AppConfig {
                max_batch: config.max_batch as usize,
                writers_per_tenant: config.writers_per_tenant as usize,
                cache_bytes: config.cache_bytes,
                // A call answers before its timeout cuts it, with time left for the computation.
                load_patience: Duration::from_secs(l.request_timeout_secs) * 4 / 5,
                limits: LimitSettings {
                    events_per_sec: l.tenant_events_per_sec,
                    queries_per_sec: l.tenant_queries_per_sec,
                    ingest_streams_per_tenant: l.max_ingest_streams_per_tenant as usize,
                    read_streams_per_tenant: l.max_read_streams_per_tenant as usize,
                    watchers_per_tenant: l.max_watchers_per_tenant as usize,
                    stream_stall: Duration::from_secs(l.stream_stall_secs),
                    auth_failures_per_minute: l.auth_failures_per_minute,
                },
                alerts: AlertConfig {
                    interval: Duration::from_secs(config.alerts.alert_interval_secs),
                    retry_base: Duration::from_millis(config.alerts.alert_retry_base_ms),
                    give_up_after: Duration::from_secs(config.alerts.alert_give_up_secs),
                    allow_local: config.alerts.alert_allow_local_destinations,
                    ..AlertConfig::default()
                },
            },
        )?);
        let tls = match (&config.tls.tls_cert, &config.tls.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |path: &std::path::Path| {
                    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
                };
                Some(serve::tls_acceptor(&read(cert)?, &read(key)?)?)
            }
            _ => None,
        };
        Ok(Self {
            listener,
            pool,
            app,
            grace: Duration::from_secs(config.shutdown_grace_secs),
            warmup: Warmup {
                days: config.warmup_days,
                limit: Duration::from_secs(config.warmup_secs),
            },
            limits: config.limits.clone(),
            tls,
            metrics_listen: config.metrics_listen,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish for at most the
    /// grace period and closes the pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        set_status(&reporter, ServingStatus::NotServing).await;
        let routes = self.routes(health_service)?;
        if let Some(addr) = self.metrics_listen {
            telemetry::serve_metrics(addr).context("cannot serve metrics")?;
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
        }
        let background = self.spawn_background(&reporter);

        // The signal future is shared: it stops accepting and starts the drain.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let mut draining = stop_rx.clone();
        tokio::spawn(async move {
            let _ = draining.wait_for(|stop| *stop).await;
            set_status(&reporter, ServingStatus::NotServing).await;
        });
        let l = &self.limits;
        let conns = conn::accept(
            self.listener,
            ConnLimits {
                max_connections: l.max_connections as usize,
                max_per_address: l.max_connections_per_address as usize,
                handshake_timeout: Duration::from_secs(l.handshake_timeout_secs),
                idle_timeout: Duration::from_secs(l.idle_timeout_secs),
            },
        );
        let request_timeout = Duration::from_secs(l.request_timeout_secs);
        let grpc = rpc::stack(
            routes,
            &RpcLimits {
                max_concurrent: l.max_concurrent_requests as usize,
                timeout: request_timeout,
            },
        );
        let settings = HttpSettings {
            max_streams_per_connection: l.max_streams_per_connection,
            handshake_timeout: Duration::from_secs(l.handshake_timeout_secs),
        };
        tracing::info!(%addr, "chatkpi listening");
        serve::serve(
            conns,
            self.tls,
            settings,
            web::service(grpc, request_timeout, self.app.clone()),
            stop_rx,
            self.grace,
        )
        .await;
        for task in background {
            task.abort();
        }
        self.pool.close().await;
        tracing::info!("chatkpi stopped");
        Ok(())
    }

    /// The gRPC services: the three of chatkpi, health, and reflection (v1 and v1alpha).
    fn routes(
        &self,
        health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) -> anyhow::Result<Routes> {
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8.6 and grpcio-reflection speak only v1alpha, newer tools v1: serve both.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let events = pb::event_service_server::EventServiceServer::new(EventsApi::new(self.app.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let metrics =
            pb::metrics_service_server::MetricsServiceServer::new(MetricsApi::new(self.app.clone()));
        let admin = pb::admin_service_server::AdminServiceServer::new(AdminApi::new(self.app.clone()));
        Ok(Routes::new(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(events)
            .add_service(metrics)
            .add_service(admin)
            .prepare())
    }

    /// The tasks that run beside the calls until shutdown: gauges, the WhatsApp idle sweeper,
    /// the alert evaluator and deliverer, the revocation watch and the database watch that
    /// drives health.
    fn spawn_background(&self, reporter: &HealthReporter) -> Vec<tokio::task::JoinHandle<()>> {
        let (app, pool) = (&self.app, &self.pool);
        vec![
            tokio::spawn(sample_gauges(app.clone(), pool.clone())),
            tokio::spawn(close_idle_whatsapp(app.clone())),
            tokio::spawn(crate::app::alerts::run_evaluator(app.clone(), pool.clone())),
            tokio::spawn(crate::app::alerts::run_deliverer(app.clone(), pool.clone())),
            app.keys.watch_revocations(),
            tokio::spawn(watch_database(
                pool.clone(),
                app.clone(),
                self.warmup,
                reporter.clone(),
            )),
        ]
    }
}

/// Closes WhatsApp conversations idle past their source's window (docs/metrics.md §11), every
/// minute. Every replica does it; the close's event id makes a repeat a duplicate.
async fn close_idle_whatsapp(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if !app.ready.is_ready() {
            continue;
        }
        match app.whatsapp.close_idle(&app.ingest, chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(closed = n, "idle WhatsApp conversations closed"),
            Err(err) => {
                tracing::warn!(error = %err, "closing idle WhatsApp conversations failed; retrying in a minute")
            }
        }
    }
}

/// Sets the gauges the metrics endpoint shows, every second.
async fn sample_gauges(app: Arc<App>, pool: PgPool) {
    loop {
        metrics::gauge!("chatkpi_write_queue_batches").set(app.ingest.queued() as f64);
        metrics::gauge!("chatkpi_query_cache_bytes").set(app.kpis.cache().bytes() as f64);
        for (kind, bytes) in app.kpis.cache().bytes_by_kind() {
            metrics::gauge!("chatkpi_query_cache_bytes_by_kind", "kind" => kind).set(bytes as f64);
        }
        let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
        metrics::gauge!("chatkpi_db_pool_connections", "state" => "idle").set(idle);
        metrics::gauge!("chatkpi_db_pool_connections", "state" => "in_use").set(size - idle);
        crate::telemetry::sample_memory();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in [
        "chatkpi.v1.EventService",
        "chatkpi.v1.MetricsService",
        "chatkpi.v1.AdminService",
    ] {
        reporter.set_service_status(service, status).await;
    }
}

/// Migrates as soon as the database answers, then keeps health in step with reachability.
async fn watch_database(pool: PgPool, app: Arc<App>, warmup: Warmup, reporter: HealthReporter) {
    let ready = app.ready.clone();
    let mut delay = Duration::from_millis(200);
    loop {
        match store::migrate(&pool).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "database not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(HEALTH_INTERVAL);
            }
        }
    }
    upgrade_projection(&pool).await;
    // Queries read the database directly while warming (the readiness flag guards requests,
    // not the cache): set it, but report SERVING only once warm.
    ready.set(true);
    app.kpis.warm_up(warmup.days, warmup.limit).await;
    tracing::info!("database migrated, serving");
    ready.set(true);
    set_status(&reporter, ServingStatus::Serving).await;
    let mut serving = true;
    let mut probe = store::Probe::new(&pool);
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        let mut up = probe.ping(HEALTH_TIMEOUT).await;
        if !up && serving {
            tokio::time::sleep(HEALTH_RETRY).await;
            up = probe.ping(HEALTH_TIMEOUT).await;
        }
        if up != serving {
            serving = up;
            ready.set(up);
            if up {
                tracing::info!("database reachable again, serving");
                set_status(&reporter, ServingStatus::Serving).await;
            } else {
                tracing::warn!("database unreachable, not serving");
                set_status(&reporter, ServingStatus::NotServing).await;
            }
        }
    }
}

/// Derives again, from their events, the conversations stored by an older fact derivation
/// (their facts or record layout changed); queries wait (NOT_SERVING) until it is done, so no
/// answer mixes two derivations.
async fn upgrade_projection(pool: &PgPool) {
    let mut delay = Duration::from_millis(200);
    loop {
        match store::events::reproject_outdated(pool).await {
            Ok(0) => return,
            Ok(n) => {
                tracing::info!(conversations = n, "conversations derived again after an upgrade");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot derive outdated conversations yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(HEALTH_INTERVAL);
            }
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
