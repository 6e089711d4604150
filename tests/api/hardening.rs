//! Hostile and heavy clients: poison batches on concurrent streams, unread streams, every limit
//! of the server (timeouts, load shedding, tenant rates, stream counts, connection rules,
//! failed-authentication throttling), TLS, metrics, traces and log hygiene.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chatkpi::{
    config::Limits,
    grpc::{convert::chrono_to_timestamp, pb},
};
use pb::event::Payload as P;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{Code, metadata::MetadataValue};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{Options, TestApp, outcomes, t, with_key};

fn opened(id: &str, conversation: &str, customer: &str, at: i64) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        conversation_id: conversation.into(),
        occurred_at: Some(chrono_to_timestamp(t(at))),
        payload: Some(P::ConversationOpened(pb::ConversationOpened {
            customer_id: customer.into(),
            channel: pb::Channel::Whatsapp as i32,
            ..Default::default()
        })),
    }
}

fn window() -> pb::Query {
    pb::Query {
        from: Some(chrono_to_timestamp(t(-86_400))),
        to: Some(chrono_to_timestamp(t(86_400))),
        ..Default::default()
    }
}

fn overview_request() -> pb::GetOverviewRequest {
    pb::GetOverviewRequest {
        query: Some(window()),
        compare_previous: false,
    }
}

async fn spawn_limited(change: impl FnOnce(&mut Limits)) -> TestApp {
    let mut limits = Limits::default();
    change(&mut limits);
    TestApp::spawn_with(Options {
        limits,
        ..Options::default()
    })
    .await
}

/// Blocks ingest of `conversation` of `app`'s tenant (its write lock) until the returned
/// transaction ends.
async fn hold_conversation(app: &TestApp, conversation: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{}/{conversation}", app.tenant))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

#[tokio::test]
async fn a_poisoned_batch_on_one_stream_does_not_fail_a_clean_batch_on_another() {
    let app = TestApp::spawn().await;
    let poisoned = vec![
        opened("p-1", "pc-1", "cust-1", 0),
        opened("p-2", "pc-2", "cust\u{0}2", 0),
        opened("p-3", "pc-3", "cust-3", 0),
    ];
    let clean: Vec<pb::Event> = (0..3)
        .map(|i| opened(&format!("c-{i}"), &format!("cc-{i}"), "cust-c", i))
        .collect();
    let stream = |events: Vec<pb::Event>, batch_id: u64| {
        let mut client = app.events();
        let request = app.authed(futures::stream::iter(vec![pb::StreamEventsRequest {
            batch_id,
            events,
        }]));
        async move {
            let mut acks = client.stream_events(request).await.unwrap().into_inner();
            let ack = acks.message().await.unwrap().expect("one ack");
            assert!(acks.message().await.unwrap().is_none());
            ack
        }
    };
    let (a, b) = tokio::join!(stream(poisoned, 1), stream(clean, 2));
    assert_eq!(outcomes(&a.results), ["accepted", "rejected", "accepted"]);
    assert_eq!(a.results[1].field, "events[1].conversation_opened.customer_id");
    assert!(a.results[1].reason.contains("NUL"), "{}", a.results[1].reason);
    assert_eq!(outcomes(&b.results), ["accepted"; 3]);
    assert_eq!(app.event_count().await, 5);
}

#[tokio::test]
async fn an_unread_drill_down_does_not_delay_another_clients_overview() {
    let app = TestApp::spawn().await;
    let events: Vec<pb::Event> = (0..3000)
        .map(|i| {
            opened(
                &format!("o-{i}"),
                &format!("conv-{i}"),
                &format!("cust-{i}"),
                i % 3600,
            )
        })
        .collect();
    for chunk in events.chunks(1000) {
        app.ingest_proto(chunk.to_vec()).await.unwrap();
    }
    // Opened and never read: its rows fill the HTTP/2 window and the server's buffer.
    let unread = app
        .metrics()
        .list_conversations(app.authed(pb::ListConversationsRequest {
            query: Some(window()),
            kpi: pb::DrillDown::Opened as i32,
            limit: 0,
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut request = app.authed(overview_request());
    request.set_timeout(Duration::from_secs(3));
    let overview = app.metrics().get_overview(request).await.unwrap().into_inner();
    assert_eq!(overview.current.unwrap().conversations, 3000);
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(unread);
}

#[tokio::test]
async fn a_call_past_the_request_timeout_gets_deadline_exceeded_and_a_retry_is_safe() {
    let app = spawn_limited(|l| l.request_timeout_secs = 1).await;
    let lock = hold_conversation(&app, "slow-1").await;
    let batch = vec![opened("slow-e1", "slow-1", "cust", 0)];
    let started = Instant::now();
    let err = app.ingest_proto(batch.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("request timeout"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(5));
    lock.rollback().await.unwrap();
    // A batch the client was told failed is stored whole or not at all: the retry finds it
    // stored once (duplicate) or stores it (accepted).
    let retry = app.ingest_proto(batch).await.unwrap();
    assert_eq!(retry.accepted + retry.duplicates, 1);
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn beyond_the_concurrency_limit_calls_are_shed_and_health_still_answers() {
    let app = spawn_limited(|l| l.max_concurrent_requests = 1).await;
    let lock = hold_conversation(&app, "busy-1").await;
    let mut events = app.events();
    let first = app.authed(pb::IngestEventsRequest {
        events: vec![opened("busy-e1", "busy-1", "cust", 0)],
    });
    let slow = tokio::spawn(async move { events.ingest_events(first).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let err = app
        .metrics()
        .get_overview(app.authed(overview_request()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shed at once, not queued"
    );
    assert_eq!(app.health().await, ServingStatus::Serving);
    lock.rollback().await.unwrap();
    assert_eq!(slow.await.unwrap().unwrap().into_inner().accepted, 1);
    assert!(
        app.metrics()
            .get_overview(app.authed(overview_request()))
            .await
            .is_ok()
    );
}

fn pushback_ms(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("a retry hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_tenant_over_its_query_rate_gets_resource_exhausted_with_a_retry_hint() {
    let app = spawn_limited(|l| l.tenant_queries_per_sec = 1).await;
    let mut client = app.metrics();
    // A burst of two, then the third within the same second is refused.
    for _ in 0..2 {
        client.get_overview(app.authed(overview_request())).await.unwrap();
    }
    let err = client
        .get_overview(app.authed(overview_request()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let wait = pushback_ms(&err);
    assert!((1..=1000).contains(&wait), "{wait}");
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    assert!(client.get_overview(app.authed(overview_request())).await.is_ok());
}

#[tokio::test]
async fn a_tenant_over_its_event_rate_gets_resource_exhausted_and_nothing_is_stored() {
    let app = spawn_limited(|l| l.tenant_events_per_sec = 5).await;
    let batch = |from: usize, n: usize| -> Vec<pb::Event> {
        (from..from + n)
            .map(|i| opened(&format!("r-{i}"), &format!("rc-{i}"), "cust", 0))
            .collect()
    };
    let too_big = app.ingest_proto(batch(0, 11)).await.unwrap_err();
    assert_eq!(too_big.code(), Code::ResourceExhausted);
    assert!(too_big.message().contains("burst of 10"), "{}", too_big.message());
    assert_eq!(app.ingest_proto(batch(0, 10)).await.unwrap().accepted, 10);
    let over = app.ingest_proto(batch(10, 10)).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted);
    assert!(pushback_ms(&over) > 0);
    assert_eq!(app.event_count().await, 10);
}

async fn watch(app: &TestApp) -> Result<tonic::Streaming<pb::WatchOverviewResponse>, tonic::Status> {
    app.metrics()
        .watch_overview(app.authed(pb::WatchOverviewRequest {
            query: Some(window()),
            min_interval: None,
            sliding: false,
        }))
        .await
        .map(|r| r.into_inner())
}

/// Enough conversations that a drill-down of them does not fit HTTP/2's flow-control window and
/// the server's read-ahead: an unread drill-down stays open.
async fn seed_conversations(app: &TestApp) {
    let events: Vec<pb::Event> = (0..1000)
        .map(|i| {
            opened(
                &format!("seed-{i}"),
                &format!("seed-c{i}"),
                &format!("seed-cust-{i}"),
                i,
            )
        })
        .collect();
    assert_eq!(app.ingest_proto(events).await.unwrap().accepted, 1000);
}

async fn drill_down(app: &TestApp) -> Result<tonic::Streaming<pb::ConversationFacts>, tonic::Status> {
    app.metrics()
        .list_conversations(app.authed(pb::ListConversationsRequest {
            query: Some(window()),
            kpi: pb::DrillDown::Opened as i32,
            limit: 0,
        }))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn open_watchers_and_read_streams_of_a_tenant_are_limited_and_freed_when_closed() {
    let app = spawn_limited(|l| {
        l.max_watchers_per_tenant = 1;
        l.max_read_streams_per_tenant = 2;
    })
    .await;
    seed_conversations(&app).await;
    let mut first = watch(&app).await.unwrap();
    first.message().await.unwrap().expect("a first overview");
    let err = watch(&app).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("WatchOverview"), "{}", err.message());
    // One drill-down (unread: it stays open) fits beside the watcher; a second does not.
    let open = drill_down(&app).await.unwrap();
    let err = drill_down(&app).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    drop((open, first));
    // Closing frees the slots (the server learns of it from the stream reset).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match watch(&app).await {
            Ok(_) => break,
            Err(err) if Instant::now() < deadline => {
                assert_eq!(err.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("slot never freed: {err:?}"),
        }
    }
}

#[tokio::test]
async fn readers_holding_every_read_stream_do_not_keep_the_tenant_from_streaming_ingest() {
    let app = spawn_limited(|l| {
        l.max_read_streams_per_tenant = 1;
        l.max_ingest_streams_per_tenant = 1;
    })
    .await;
    seed_conversations(&app).await;
    let _unread = drill_down(&app).await.unwrap();
    assert_eq!(
        drill_down(&app).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::StreamEventsRequest>(1);
    let mut acks = app
        .events()
        .stream_events(app.authed(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect("the ingest stream opens while the read streams are taken")
        .into_inner();
    tx.send(pb::StreamEventsRequest {
        batch_id: 1,
        events: vec![opened("rs-1", "rs-c1", "rs-cust", 0)],
    })
    .await
    .unwrap();
    let ack = acks.message().await.unwrap().expect("an ack");
    assert_eq!(ack.accepted, 1);
    // A second ingest stream is over the ingest limit of one.
    let (_tx2, rx2) = tokio::sync::mpsc::channel::<pb::StreamEventsRequest>(1);
    let err = app
        .events()
        .stream_events(app.authed(tokio_stream::wrappers::ReceiverStream::new(rx2)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("StreamEvents"), "{}", err.message());
}

#[tokio::test]
async fn calls_beyond_a_connections_stream_limit_wait_for_a_free_stream() {
    let app = spawn_limited(|l| l.max_streams_per_connection = 1).await;
    let mut open = watch(&app).await.unwrap();
    open.message().await.unwrap().expect("a first overview");
    let mut client = app.metrics();
    let call = tokio::spawn({
        let request = app.authed(overview_request());
        async move { client.get_overview(request).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !call.is_finished(),
        "the second stream of the connection had to wait"
    );
    drop(open);
    let answered = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap();
    assert!(answered.is_ok(), "{answered:?}");
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// How long until the server closes `stream` (reads until end of stream), if within `limit`.
pub(crate) async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

fn server_addr(app: &TestApp) -> SocketAddr {
    app.addr
}

#[tokio::test]
async fn silent_idle_and_surplus_connections_are_closed() {
    let app = spawn_limited(|l| {
        l.handshake_timeout_secs = 1;
        l.idle_timeout_secs = 1;
        l.max_connections = 3;
    })
    .await;
    let addr = server_addr(&app);
    // Nothing sent: closed after the handshake timeout.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let waited = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    // A preface and then no call: closed after the idle timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(PREFACE).await.unwrap();
    let waited = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");

    // The health client's connection (it has made a call) is one of three; two silent ones
    // fit; a fourth takes the place of the oldest silent one, which is closed at once.
    assert_eq!(app.health().await, ServingStatus::Serving);
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(PREFACE).await.unwrap();
        kept.push(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut newest = TcpStream::connect(addr).await.unwrap();
    let _ = newest.write_all(PREFACE).await;
    let waited = closed_within(&mut kept[0], Duration::from_millis(800))
        .await
        .expect("the oldest silent connection is closed at once");
    assert!(waited < Duration::from_millis(800), "{waited:?}");
    assert!(
        closed_within(&mut kept[1], Duration::from_millis(100))
            .await
            .is_none(),
        "the younger silent connection stays"
    );
    assert_eq!(app.health().await, ServingStatus::Serving);
}

#[tokio::test]
async fn a_wrong_key_repeated_from_an_address_is_refused_unchecked_while_valid_keys_keep_working() {
    let app = spawn_limited(|l| l.auth_failures_per_minute = 3).await;
    let wrong = format!("ck_{}_{}", app.tenant, "0".repeat(64));
    for _ in 0..3 {
        let err = app
            .metrics()
            .get_overview(with_key(overview_request(), &wrong))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.message(), "invalid api key");
    }
    // The same wrong key is now refused without a look-up ...
    let err = app
        .metrics()
        .get_overview(with_key(overview_request(), &wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message()
            .contains("too many failed authentications with this key"),
        "{}",
        err.message()
    );
    // ... while the tenant's valid key, never used before from this address, still works.
    app.metrics()
        .get_overview(app.authed(overview_request()))
        .await
        .expect("a valid key from the same address is not locked out");
    assert_eq!(app.health().await, ServingStatus::Serving);
}

#[tokio::test]
async fn an_address_guessing_many_keys_of_a_tenant_has_them_refused_but_known_and_other_tenants_keys_work() {
    let app = spawn_limited(|l| l.auth_failures_per_minute = 2).await;
    // Another tenant behind the same address (a NAT), whose key has never been used.
    let (_, neighbour) = chatkpi::store::tenants::create_tenant(&app.pool, "neighbour")
        .await
        .unwrap();
    // Known before the guessing starts.
    app.metrics()
        .get_overview(app.authed(overview_request()))
        .await
        .unwrap();
    // Ten times the per-key limit, each key different.
    for i in 0..20 {
        let guess = format!("ck_{}_{:064x}", app.tenant, i);
        let err = app
            .metrics()
            .get_overview(with_key(overview_request(), &guess))
            .await
            .unwrap_err();
        assert_eq!(err.message(), "invalid api key", "guess {i}");
    }
    let err = app
        .metrics()
        .get_overview(with_key(
            overview_request(),
            &format!("ck_{}_{:064x}", app.tenant, 99),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("different keys of this tenant"),
        "{}",
        err.message()
    );
    app.metrics()
        .get_overview(app.authed(overview_request()))
        .await
        .expect("a key validated before keeps working");
    app.metrics()
        .get_overview(with_key(overview_request(), &neighbour.plaintext))
        .await
        .expect("another tenant's key from the same address is not locked out");
}

#[tokio::test]
async fn tls_serves_every_call_and_refuses_plaintext() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("chatkpi-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let app = TestApp::spawn_with(Options {
        tls: Some((cert_path, key_path, key.cert.pem().into_bytes())),
        ..Options::default()
    })
    .await;
    let r = app
        .ingest_proto(vec![opened("tls-1", "tls-c", "cust", 0)])
        .await
        .unwrap();
    assert_eq!(r.accepted, 1);
    let overview = app
        .metrics()
        .get_overview(app.authed(overview_request()))
        .await
        .unwrap();
    assert_eq!(overview.into_inner().current.unwrap().conversations, 1);
    // A plaintext client gets no answer.
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(plain);
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    request.set_timeout(Duration::from_secs(3));
    assert!(health.check(request).await.is_err());
}

/// A free local port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test]
async fn the_metrics_endpoint_counts_calls_events_limits_and_resources() {
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let app = TestApp::spawn_with(Options {
        metrics_listen: Some(metrics_addr),
        ..Options::default()
    })
    .await;
    let r = app
        .ingest_proto(vec![
            opened("m-1", "mc-1", "cust", 0),
            opened("m-2", "", "cust", 0),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes(&r.results), ["accepted", "rejected"]);
    app.metrics()
        .get_overview(app.authed(overview_request()))
        .await
        .unwrap();
    let _ = app
        .metrics()
        .get_overview(with_key(overview_request(), "nonsense"))
        .await;
    // Web calls refused before they become gRPC calls are counted too: a body that is not the
    // message (by its method) and a content type the API does not speak.
    let bearer = format!("Bearer {}", app.api_key);
    let malformed = crate::helpers::http(
        app.addr,
        "POST",
        "/chatkpi.v1.AdminService/ListWhatsAppSources",
        &[("content-type", "application/json"), ("authorization", &bearer)],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(malformed.status, 400);
    let unsupported = crate::helpers::http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/GetOverview",
        &[("content-type", "text/plain"), ("authorization", &bearer)],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(unsupported.status, 415);
    // Web calls refused before they became gRPC calls are counted too.
    let refused = crate::helpers::http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/GetScorecard",
        &[("content-type", "application/json")],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(refused.status, 400);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = http_get(metrics_addr, "/metrics").await;
    let line = |parts: &[&str]| {
        text.lines()
            .any(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    for parts in [
        &[
            "chatkpi_rpc_requests_total{",
            "/chatkpi.v1.EventService/IngestEvents",
            "code=\"Ok\"",
        ][..],
        &[
            "chatkpi_rpc_requests_total{",
            "/chatkpi.v1.MetricsService/GetOverview",
            "code=\"Unauthenticated\"",
        ],
        &[
            "chatkpi_rpc_requests_total{",
            "/chatkpi.v1.MetricsService/GetScorecard",
            "code=\"InvalidArgument\"",
        ],
        &[
            "chatkpi_rpc_requests_total{",
            "/chatkpi.v1.AdminService/ListWhatsAppSources",
            "code=\"InvalidArgument\"",
        ],
        &[
            "chatkpi_rpc_requests_total{",
            "method=\"unknown\"",
            "code=\"Unimplemented\"",
        ],
        &[
            "chatkpi_rpc_duration_seconds_bucket{",
            "/chatkpi.v1.MetricsService/GetOverview",
        ],
        &["chatkpi_events_total{", "outcome=\"accepted\""],
        &[
            "chatkpi_events_total{",
            "outcome=\"rejected\"",
            "field=\"conversation_id\"",
        ],
        &["chatkpi_query_cache_bytes"],
        &["chatkpi_query_cache_misses_total"],
        &["chatkpi_write_queue_batches"],
        &["chatkpi_db_pool_connections{", "state=\"idle\""],
        &["chatkpi_connections_open"],
    ] {
        assert!(line(parts), "no metric line with {parts:?} in:\n{text}");
    }
}

/// An OTLP trace receiver: every exported span, by name.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test]
async fn grpc_and_json_calls_are_traced_over_otlp_with_their_tenant_in_the_callers_trace() {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::trace_service_server::TraceServiceServer, common::v1::any_value::Value,
    };
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = chatkpi::telemetry::init_with(
        chatkpi::config::LogFormat::Text,
        chatkpi::telemetry::Traces::To(format!("http://{otlp}")),
    );
    let app = TestApp::spawn().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = app.authed(pb::IngestEventsRequest {
        events: vec![opened("otel-1", "otel-c", "cust", 0)],
    });
    let parent: MetadataValue<_> = format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap();
    request.metadata_mut().insert("traceparent", parent);
    app.events().ingest_events(request).await.unwrap();

    let span = receiver.span_of(&telemetry, trace_id).await;
    let attribute = |key: &str| span_attribute(&span, key);
    assert_eq!(span.name, "/chatkpi.v1.EventService/IngestEvents");
    assert_eq!(attribute("tenant"), Some(Value::IntValue(app.tenant.0)));
    assert_eq!(attribute("events"), Some(Value::IntValue(1)));
    assert_eq!(attribute("outcome"), Some(Value::StringValue("Ok".into())));
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(attribute("rpc.system"), Some(Value::StringValue("grpc".into())));

    // The same call as JSON over HTTP is traced the same way, marked as Connect.
    let json_trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{json_trace}-b7ad6b7169203331-01");
    let auth = format!("Bearer {}", app.api_key);
    let answer = crate::helpers::http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/GetSettings",
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
            ("traceparent", &traceparent),
        ],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let span = receiver.span_of(&telemetry, json_trace).await;
    let attribute = |key: &str| span_attribute(&span, key);
    assert_eq!(span.name, "/chatkpi.v1.MetricsService/GetSettings");
    assert_eq!(
        attribute("rpc.system"),
        Some(Value::StringValue("connect_rpc".into()))
    );
    assert_eq!(attribute("tenant"), Some(Value::IntValue(app.tenant.0)));
    assert_eq!(hex(&span.parent_span_id), "b7ad6b7169203331");
}

impl Receiver {
    /// The first span of trace `trace_id` the collector receives (within 20 s).
    async fn span_of(
        &self,
        telemetry: &chatkpi::telemetry::Telemetry,
        trace_id: &str,
    ) -> opentelemetry_proto::tonic::trace::v1::Span {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            telemetry.flush();
            let found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| hex(&s.trace_id) == trace_id)
                .cloned();
            if let Some(span) = found {
                return span;
            }
            assert!(Instant::now() < deadline, "no span of trace {trace_id} received");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A span's attribute value.
fn span_attribute(
    span: &opentelemetry_proto::tonic::trace::v1::Span,
    key: &str,
) -> Option<opentelemetry_proto::tonic::common::v1::any_value::Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the real binary with `args` for `seconds`, returning what it wrote to stderr.
async fn binary_stderr(args: &[&str], seconds: u64) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chatkpi"))
            .args(&args)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(seconds));
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn logs_written_to_a_pipe_have_no_colour_codes_and_one_line_per_error() {
    let log = binary_stderr(
        &[
            "serve",
            "--database-url",
            "postgres://postgres:postgres@127.0.0.1:1/none",
            "--listen",
            "127.0.0.1:0",
        ],
        7,
    )
    .await;
    assert!(log.contains("database not ready"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI codes in a pipe: {log:?}");
    for line in log.lines() {
        assert!(
            line.contains("chatkpi"),
            "a log record spread over lines: {line:?}"
        );
    }
}

/// A TCP proxy to the test database that can be cut and restored (a database outage).
struct Proxy {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(addr: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accepting = tokio::spawn({
            let tasks = tasks.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let forward = tokio::spawn(async move {
                        if let Ok(mut db) = TcpStream::connect("127.0.0.1:5432").await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut db).await;
                        }
                    });
                    tasks.lock().unwrap().push(forward);
                }
            }
        });
        tasks.lock().unwrap().push(accepting);
        Proxy { addr, tasks }
    }

    /// Drops the listener and every forwarded connection.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test]
async fn health_follows_the_database_within_about_a_second() {
    let proxy = Proxy::start("127.0.0.1:0".parse().unwrap()).await;
    let url = crate::helpers::database_url().replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(
        url,
        crate::helpers::database_url(),
        "the test database is on 127.0.0.1:5432"
    );
    let app = TestApp::spawn_with(Options {
        database_url: url,
        ..Options::default()
    })
    .await;
    proxy.cut();
    let cut = Instant::now();
    app.wait_until(ServingStatus::NotServing).await;
    let noticed = cut.elapsed();
    assert!(
        noticed < Duration::from_millis(2500),
        "NOT_SERVING after {noticed:?}"
    );
    let err = app
        .ingest_proto(vec![opened("h-1", "hc", "cust", 0)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let back = Proxy::start(proxy.addr).await;
    app.wait_until(ServingStatus::Serving).await;
    assert_eq!(
        app.ingest_proto(vec![opened("h-1", "hc", "cust", 0)])
            .await
            .unwrap()
            .accepted,
        1
    );
    back.cut();
}
