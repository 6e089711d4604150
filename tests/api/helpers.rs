//! `TestApp`: a migrated database, a fresh tenant with its key, and a running server.

use std::time::Duration;

use chatkpi::{
    config::{AlertArgs, DatabaseArgs, Limits, ServeConfig, TlsArgs},
    domain::{event::Event, tenant::TenantId},
    grpc::{convert::event_to_proto, pb},
    startup::Application,
    store,
};
use sqlx::{PgPool, migrate::MigrateDatabase};
use tokio::sync::{OnceCell, oneshot};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/chatkpi_test";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

static MIGRATED: OnceCell<()> = OnceCell::const_new();

/// A pool on the test database, created and migrated once per test binary. Panics (fails the
/// test) when Postgres is unreachable: database tests never skip.
pub async fn pool() -> PgPool {
    let url = database_url();
    MIGRATED
        .get_or_init(|| async {
            if !sqlx::Postgres::database_exists(&url)
                .await
                .unwrap_or_else(|e| panic!("Postgres unreachable at {url}: {e}"))
            {
                // Several test threads may race here; "already exists" is fine.
                let _ = sqlx::Postgres::create_database(&url).await;
            }
            let pool = store::lazy_pool(&url, 2).expect("valid DATABASE_URL");
            store::migrate(&pool)
                .await
                .unwrap_or_else(|e| panic!("cannot migrate {url}: {e}"));
            pool.close().await;
        })
        .await;
    store::lazy_pool(&url, 8).expect("valid DATABASE_URL")
}

/// A running server with its own tenant.
pub struct TestApp {
    pub pool: PgPool,
    pub tenant: TenantId,
    pub api_key: String,
    pub channel: Channel,
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Options {
    pub max_batch: u32,
    pub database_url: String,
    pub grace_secs: u64,
    pub limits: Limits,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Server certificate and key files, and the CA certificate the client trusts.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf, Vec<u8>)>,
    /// Alerts: evaluated every second, retried after 200 ms, receivers on 127.0.0.1 allowed.
    pub alerts: AlertArgs,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            database_url: database_url(),
            grace_secs: 5,
            limits: Limits::default(),
            metrics_listen: None,
            tls: None,
            alerts: AlertArgs {
                alert_interval_secs: 1,
                alert_retry_base_ms: 200,
                alert_give_up_secs: 60,
                alert_allow_local_destinations: true,
            },
        }
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> TestApp {
        let pool = pool().await;
        let (tenant, key) = store::tenants::create_tenant(&pool, "test")
            .await
            .expect("create tenant");
        let app = Self::start(options, pool, tenant, key.plaintext).await;
        app.wait_until(ServingStatus::Serving).await;
        app
    }

    /// A second server on the same database and tenant (another replica).
    pub async fn replica(&self, options: Options) -> TestApp {
        let app = Self::start(options, self.pool.clone(), self.tenant, self.api_key.clone()).await;
        app.wait_until(ServingStatus::Serving).await;
        app
    }

    /// A server whose database may be unreachable (no readiness wait, no tenant in it).
    pub async fn spawn_unready(database_url: &str) -> TestApp {
        let pool = store::lazy_pool(database_url, 1).expect("valid url");
        let options = Options {
            database_url: database_url.to_owned(),
            ..Options::default()
        };
        Self::start(options, pool, TenantId(1), format!("ck_1_{}", "a".repeat(64))).await
    }

    async fn start(options: Options, pool: PgPool, tenant: TenantId, api_key: String) -> TestApp {
        let config = ServeConfig {
            database: DatabaseArgs {
                database_url: options.database_url,
            },
            listen: "127.0.0.1:0".parse().unwrap(),
            max_batch: options.max_batch,
            db_max_connections: 8,
            cache_bytes: 256 << 20,
            writers_per_tenant: 2,
            warmup_days: 35,
            warmup_secs: 10,
            shutdown_grace_secs: options.grace_secs,
            metrics_listen: options.metrics_listen,
            tls: TlsArgs {
                tls_cert: options.tls.as_ref().map(|t| t.0.clone()),
                tls_key: options.tls.as_ref().map(|t| t.1.clone()),
            },
            limits: options.limits,
            alerts: options.alerts,
        };
        let app = Application::build(&config).await.expect("build server");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        let channel = match &options.tls {
            None => Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy(),
            Some((_, _, ca)) => Channel::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(ca))
                        .domain_name("localhost"),
                )
                .expect("client TLS config")
                .connect_lazy(),
        };
        TestApp {
            pool,
            tenant,
            api_key,
            channel,
            addr,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub async fn health(&self) -> ServingStatus {
        let mut client = HealthClient::new(self.channel.clone());
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        ServingStatus::try_from(status).expect("known status")
    }

    pub async fn wait_until(&self, wanted: ServingStatus) {
        for _ in 0..300 {
            if self.health().await == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "server never reported {wanted:?} (is Postgres at {} reachable?)",
            database_url()
        );
    }

    /// An EventService client; calls carry this app's key.
    pub fn events(&self) -> pb::event_service_client::EventServiceClient<Channel> {
        pb::event_service_client::EventServiceClient::new(self.channel.clone())
    }

    pub fn metrics(&self) -> pb::metrics_service_client::MetricsServiceClient<Channel> {
        pb::metrics_service_client::MetricsServiceClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> pb::admin_service_client::AdminServiceClient<Channel> {
        pb::admin_service_client::AdminServiceClient::new(self.channel.clone())
    }

    pub fn authed<T>(&self, message: T) -> Request<T> {
        with_key(message, &self.api_key)
    }

    /// Sends one IngestEvents batch of domain events.
    pub async fn ingest(&self, events: &[Event]) -> Result<pb::IngestEventsResponse, Status> {
        self.ingest_proto(events.iter().map(event_to_proto).collect())
            .await
    }

    pub async fn ingest_proto(&self, events: Vec<pb::Event>) -> Result<pb::IngestEventsResponse, Status> {
        self.events()
            .ingest_events(self.authed(pb::IngestEventsRequest { events }))
            .await
            .map(|r| r.into_inner())
    }

    pub async fn event_count(&self) -> i64 {
        store::events::count_events(&self.pool, self.tenant)
            .await
            .expect("count events")
    }

    /// Stops the server (as on SIGTERM) and waits for it to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.take().expect("running").await?
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// 2026-03-02 09:00:00 UTC plus `seconds`.
pub fn t(seconds: i64) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    chrono::Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

/// An event at `t(at)`.
pub fn ev(id: &str, conversation: Option<&str>, at: i64, payload: chatkpi::domain::event::Payload) -> Event {
    Event {
        event_id: id.into(),
        conversation_id: conversation.map(str::to_owned),
        occurred_at: t(at),
        payload,
    }
}

pub fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// Outcomes of a response as short words, for readable assertions.
pub fn outcomes(results: &[pb::EventResult]) -> Vec<&'static str> {
    results
        .iter()
        .map(|r| match pb::EventOutcome::try_from(r.outcome) {
            Ok(pb::EventOutcome::Accepted) => "accepted",
            Ok(pb::EventOutcome::Duplicate) => "duplicate",
            Ok(pb::EventOutcome::Rejected) => "rejected",
            _ => "unspecified",
        })
        .collect()
}

/// An HTTP/1.1 answer: status, headers, body.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

/// One HTTP/1.1 request to the server, as curl or a browser would send it.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> HttpAnswer {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("valid request");
    let response = sender.send_request(request).await.expect("HTTP answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes().to_vec();
    HttpAnswer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

impl TestApp {
    /// `POST /<path>` with a JSON body and this tenant's key, as Connect's unary protocol.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> HttpAnswer {
        let auth = format!("Bearer {}", self.api_key);
        http(
            self.addr,
            "POST",
            path,
            &[("content-type", "application/json"), ("authorization", &auth)],
            body.to_string().into_bytes(),
        )
        .await
    }
}

/// A message of `conv` at `at` seconds from [`t`]`(0)`, by `sender` (agent `agent`), not private.
pub fn msg(
    id: &str,
    conv: &str,
    at: i64,
    sender: chatkpi::domain::event::Sender,
    agent: Option<&str>,
) -> Event {
    use chatkpi::domain::event::{Message, Payload};
    ev(
        id,
        Some(conv),
        at,
        Payload::Message(Message {
            message_id: id.into(),
            sender,
            agent_id: agent.map(str::to_owned),
            private: false,
        }),
    )
}
