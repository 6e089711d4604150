//! Builds the server (listener, pool, services, health, reflection) and runs it until a
//! shutdown signal, with a bounded drain.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    app::{App, AppConfig},
    config::ServeConfig,
    grpc::{events::EventsApi, metrics::MetricsApi, pb},
    store,
};

/// How often the health task checks that the database still answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Largest accepted request message (a 1000-event batch is well under 1 MiB).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A bound, not yet running server.
pub struct Application {
    listener: TcpListener,
    pool: PgPool,
    app: Arc<App>,
    grace: Duration,
    warmup: (u32, Duration),
}

impl Application {
    /// Binds the listener (port 0 picks a free port) and prepares a lazily connecting pool, so
    /// the server starts even while the database is down (health says NOT_SERVING meanwhile).
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let pool = store::lazy_pool(&config.database.database_url, config.db_max_connections)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let app = Arc::new(App::new(
            pool.clone(),
            &AppConfig {
                max_batch: config.max_batch as usize,
                writers_per_tenant: config.writers_per_tenant as usize,
                cache_bytes: config.cache_bytes,
            },
        ));
        Ok(Self {
            listener,
            pool,
            app,
            grace: Duration::from_secs(config.shutdown_grace_secs),
            warmup: (config.warmup_days, Duration::from_secs(config.warmup_secs)),
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

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8.6 and grpcio-reflection speak only v1alpha (TOOLCHAIN.md).
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let events = pb::event_service_server::EventServiceServer::new(EventsApi::new(self.app.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);

        let metrics =
            pb::metrics_service_server::MetricsServiceServer::new(MetricsApi::new(self.app.clone()));

        let readiness = tokio::spawn(watch_database(
            self.pool.clone(),
            self.app.clone(),
            self.warmup,
            reporter.clone(),
        ));

        // The signal future is shared: it starts the drain, and the grace timer starts with it.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let mut drain_signal = stop_rx.clone();
        let incoming = TcpIncoming::from(self.listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let server = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(events)
            .add_service(metrics)
            // TCP_NODELAY: small answers go out at once, not after the peer's delayed ACK (40 ms).
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = drain_signal.wait_for(|stop| *stop).await;
            });
        tracing::info!(%addr, "chatkpi listening");

        let mut grace_signal = stop_rx;
        let grace = self.grace;
        let result = tokio::select! {
            result = server => result.context("server failed"),
            _ = async {
                let _ = grace_signal.wait_for(|stop| *stop).await;
                tracing::info!(grace_secs = grace.as_secs(), "shutting down, draining in-flight requests");
                set_status(&reporter, ServingStatus::NotServing).await;
                tokio::time::sleep(grace).await;
            } => {
                // Open streams (health Watch, long ingest streams) would otherwise hold the
                // server forever (TOOLCHAIN.md).
                tracing::warn!("drain deadline reached, stopping with requests still open");
                Ok(())
            }
        };
        readiness.abort();
        self.pool.close().await;
        tracing::info!("chatkpi stopped");
        result
    }
}

async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status("chatkpi.v1.EventService", status)
        .await;
}

/// Migrates as soon as the database answers, then keeps health in step with reachability.
async fn watch_database(pool: PgPool, app: Arc<App>, warmup: (u32, Duration), reporter: HealthReporter) {
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
    app.kpis.cache().warm_up(warmup.0, warmup.1).await;
    tracing::info!("database migrated, serving");
    ready.set(true);
    set_status(&reporter, ServingStatus::Serving).await;
    let mut serving = true;
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        let up = store::ping(&pool).await;
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
