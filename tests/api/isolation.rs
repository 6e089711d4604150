//! One client cannot take the others down: each test is a defect a hostile or careless client
//! found, and the bound that holds now (README, Limits; RELIABILITY.md lists each bound).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use chatkpi::{
    config::Limits,
    domain::tenant::key_id,
    grpc::{convert::chrono_to_timestamp, pb},
    store,
};
use http_body_util::BodyExt;
use pb::event::Payload as P;
use prost::Message;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpSocket, TcpStream},
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    hardening::closed_within,
    helpers::{Options, TestApp, http, t, with_key},
};

fn opened(id: &str, conversation: &str, at: i64) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        conversation_id: conversation.into(),
        occurred_at: Some(chrono_to_timestamp(t(at))),
        payload: Some(P::ConversationOpened(pb::ConversationOpened {
            customer_id: format!("cust-{conversation}"),
            channel: pb::Channel::Webchat as i32,
            ..Default::default()
        })),
    }
}

fn tags_added(id: &str, conversation: &str, at: i64, tags: Vec<String>) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        conversation_id: conversation.into(),
        occurred_at: Some(chrono_to_timestamp(t(at))),
        payload: Some(P::TagsChanged(pb::TagsChanged {
            added: tags,
            removed: Vec::new(),
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

fn overview() -> pb::GetOverviewRequest {
    pb::GetOverviewRequest {
        query: Some(window()),
        compare_previous: false,
    }
}

fn tag_breakdown() -> pb::GetBreakdownRequest {
    pb::GetBreakdownRequest {
        query: Some(window()),
        dimension: pb::Dimension::Tag as i32,
        limit: 0,
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

#[tokio::test]
async fn an_event_with_60000_tags_is_rejected_naming_the_field_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let huge: Vec<String> = (0..60_000).map(|i| format!("tag-{i}")).collect();
    let answer = app
        .ingest_proto(vec![
            opened("t-open", "t-c", 0),
            tags_added("t-huge", "t-c", 1, huge),
        ])
        .await
        .unwrap();
    let rejected = &answer.results[1];
    assert_eq!(rejected.outcome, pb::EventOutcome::Rejected as i32);
    assert_eq!(rejected.field, "events[1].tags_changed.added");
    assert!(
        rejected.reason.contains("at most 100 tags"),
        "{}",
        rejected.reason
    );
    assert_eq!((answer.accepted, answer.rejected), (1, 1));
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn a_conversation_keeps_its_first_100_tags_and_a_tag_breakdown_is_cut_to_1000_rows() {
    let app = TestApp::spawn().await;
    // 21 conversations with 100 tags of their own each, and one that is sent 300 tags in three
    // events: it keeps the first event's 100 (docs/metrics.md §3).
    let mut events = Vec::new();
    for c in 0..21 {
        let conversation = format!("c{c:02}");
        events.push(opened(&format!("{conversation}-open"), &conversation, c));
        let tags = (0..100).map(|j| format!("t{c:02}-{j:03}")).collect();
        events.push(tags_added(
            &format!("{conversation}-tags"),
            &conversation,
            100 + c,
            tags,
        ));
    }
    events.push(opened("x-open", "x", 50));
    for e in 0..3 {
        let tags = (0..100).map(|j| format!("x{e}-{j:03}")).collect();
        events.push(tags_added(&format!("x-tags-{e}"), "x", 200 + e, tags));
    }
    assert_eq!(app.ingest_proto(events).await.unwrap().accepted, 21 * 2 + 4);

    let started = Instant::now();
    let answer = app
        .metrics()
        .get_breakdown(app.authed(tag_breakdown()))
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();
    // 21 x 100 tags plus x's first 100.
    assert_eq!(answer.total_rows, 2_200);
    assert!(answer.truncated);
    assert_eq!(answer.rows.len(), 1_000);
    // Every conversation has one row per tag and carries 100 tags: each row lists 100 shares.
    for row in &answer.rows {
        let kpis = row.kpis.as_ref().unwrap();
        assert_eq!(kpis.conversations, 1, "{}", row.value);
        assert_eq!(kpis.tags.len(), 100, "{}", row.value);
        assert_eq!(kpis.tags_omitted, 0, "{}", row.value);
    }
    // All rows tie at one conversation: the first 1000 values (t00-000 .. t09-099) are kept.
    assert_eq!(answer.rows[0].value, "t00-000");
    assert_eq!(answer.rows[999].value, "t09-099");
    // Rows x 100 shares: about 2 MB of protobuf at most, never 2,200^2 entries.
    let bytes = answer.encoded_len();
    assert!(bytes < 3_000_000, "{bytes} bytes");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    let overview = app
        .metrics()
        .get_overview(app.authed(overview()))
        .await
        .unwrap()
        .into_inner()
        .current
        .unwrap();
    // The overview lists the 100 most frequent of 2,200 tags (all with one conversation: by
    // name) and counts the rest.
    assert_eq!(overview.tags.len(), 100);
    assert_eq!(overview.tags_omitted, 2_100);
    assert_eq!(overview.tags[0].value, "t00-000");

    let mut x_tags = Vec::new();
    let mut rows = app
        .metrics()
        .list_conversations(app.authed(pb::ListConversationsRequest {
            query: Some(window()),
            kpi: pb::DrillDown::Opened as i32,
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    while let Some(row) = rows.message().await.unwrap() {
        if row.conversation_id == "x" {
            x_tags = row.tags;
        }
    }
    let first_event: Vec<String> = (0..100).map(|j| format!("x0-{j:03}")).collect();
    assert_eq!(x_tags, first_event);
}

#[tokio::test]
async fn a_breakdown_whose_groups_would_outgrow_the_query_budget_is_refused_and_others_answer() {
    let app = TestApp::spawn().await;
    let other = TestApp::spawn().await;
    // 400 conversations x 100 tags of their own: a tag breakdown needs 40,000 groups with 100
    // tag counts each, about 190 MB, beyond the 64 MiB a question may use.
    for part in 0..4 {
        let mut events = Vec::new();
        for c in part * 100..(part + 1) * 100 {
            let conversation = format!("b{c:03}");
            events.push(opened(&format!("{conversation}-o"), &conversation, c));
            let tags = (0..100).map(|j| format!("b{c:03}-{j:02}")).collect();
            events.push(tags_added(
                &format!("{conversation}-t"),
                &conversation,
                500 + c,
                tags,
            ));
        }
        assert_eq!(app.ingest_proto(events).await.unwrap().accepted, 200);
    }
    let started = Instant::now();
    let err = app
        .metrics()
        .get_breakdown(app.authed(tag_breakdown()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("64 MiB"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(20));
    // The same tenant's overview, and another tenant, are unaffected.
    let current = app
        .metrics()
        .get_overview(app.authed(overview()))
        .await
        .unwrap()
        .into_inner()
        .current
        .unwrap();
    assert_eq!(current.conversations, 400);
    other
        .metrics()
        .get_overview(other.authed(overview()))
        .await
        .expect("another tenant answers");
}

/// A TCP connection to `server` from the loopback address `from` (127.0.0.2, ... are all this
/// host on Linux): another client address.
async fn connect_from(from: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(server).await
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn one_address_holding_many_half_open_connections_stops_neither_other_clients_nor_health() {
    let app = spawn_limited(|l| {
        l.max_connections = 300;
        l.max_connections_per_address = 100;
        l.handshake_timeout_secs = 2;
    })
    .await;
    // A hostile client: 1,000 connections from 127.0.0.2, each sending one byte, the HTTP/2
    // preface, or half an HTTP/1.1 request head. Beyond its 100, they are closed at once.
    let mut hostile = Vec::new();
    for i in 0..1_000 {
        let Ok(mut s) = connect_from("127.0.0.2", app.addr).await else {
            continue;
        };
        let _ = match i % 3 {
            0 => s.write_all(b"P").await,
            1 => s.write_all(PREFACE).await,
            _ => s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await,
        };
        hostile.push(s);
    }
    // Everyone else (127.0.0.1) still gets calls and health answered.
    assert_eq!(app.health().await, ServingStatus::Serving);
    app.metrics()
        .get_overview(app.authed(overview()))
        .await
        .expect("another address is served");
    let answer = http(app.addr, "GET", "/", &[], Vec::new()).await;
    assert_eq!(answer.status, 200);
    // The half-open ones are closed after the handshake timeout: the address can connect again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(hostile);
    let mut again = connect_from("127.0.0.2", app.addr).await.unwrap();
    again.write_all(PREFACE).await.unwrap();
    let stream = connect_from("127.0.0.2", app.addr).await.unwrap();
    let answer = http_on(stream, "GET", "/").await;
    assert_eq!(
        answer, 200,
        "the address is served again once its half-open connections are gone"
    );
}

#[tokio::test]
async fn silent_connections_from_many_addresses_give_way_to_clients_that_speak() {
    let app = spawn_limited(|l| {
        l.max_connections = 200;
        l.max_connections_per_address = 50;
        l.handshake_timeout_secs = 60;
    })
    .await;
    // Ten addresses, 50 connections each: 500 silent connections for 200 slots, all within the
    // handshake time. Every slot is held by one of them.
    let mut hostile = Vec::new();
    for a in 2..12 {
        for _ in 0..50 {
            if let Ok(mut s) = connect_from(&format!("127.0.0.{a}"), app.addr).await {
                let _ = s.write_all(b"P").await;
                hostile.push(s);
            }
        }
    }
    // A new client and the health check take the places of the oldest silent ones.
    assert_eq!(app.health().await, ServingStatus::Serving);
    app.metrics()
        .get_overview(app.authed(overview()))
        .await
        .expect("a client that speaks is served");
    let answer = http(app.addr, "GET", "/", &[], Vec::new()).await;
    assert_eq!(answer.status, 200);
    // At most 200 + 50 + 1 of the silent ones are still open.
    let mut open = 0;
    for s in &mut hostile {
        if closed_within(s, Duration::from_millis(1)).await.is_none() {
            open += 1;
        }
    }
    assert!(open <= 251, "{open} silent connections still open");
}

/// The status of one HTTP/1.1 request on `stream`.
async fn http_on(stream: TcpStream, method: &str, path: &str) -> u16 {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "chatkpi")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    sender
        .send_request(request)
        .await
        .expect("an answer")
        .status()
        .as_u16()
}

async fn revoke(app: &TestApp, key: &str) {
    let id = key_id(&chatkpi::domain::tenant::hash_key(key));
    store::tenants::revoke_key(&app.pool, app.tenant, &id)
        .await
        .expect("revoke");
}

#[tokio::test]
async fn a_revoked_key_ends_its_open_watch_and_ingest_streams_within_five_seconds() {
    let app = TestApp::spawn().await;
    let key = store::tenants::create_key(
        &app.pool,
        app.tenant,
        &chatkpi::domain::tenant::Scope::ALL,
        "doomed",
    )
    .await
    .unwrap()
    .plaintext;
    let mut watch = app
        .metrics()
        .watch_overview(with_key(
            pb::WatchOverviewRequest {
                query: Some(window()),
                min_interval: None,
                sliding: false,
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("a first overview");
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::StreamEventsRequest>(4);
    let mut acks = app
        .events()
        .stream_events(with_key(tokio_stream::wrappers::ReceiverStream::new(rx), &key))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::StreamEventsRequest {
        batch_id: 1,
        events: vec![opened("rv-1", "rv-c1", 0)],
    })
    .await
    .unwrap();
    assert_eq!(acks.message().await.unwrap().unwrap().accepted, 1);

    revoke(&app, &key).await;
    let revoked_at = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the watch ends within 5 s");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("revoked"), "{}", err.message());

    let _ = tx
        .send(pb::StreamEventsRequest {
            batch_id: 2,
            events: vec![opened("rv-2", "rv-c2", 1)],
        })
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(5), acks.message())
        .await
        .expect("the ingest stream ends within 5 s");
    assert_eq!(ended.unwrap_err().code(), Code::Unauthenticated);
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    assert_eq!(
        app.event_count().await,
        1,
        "no batch is stored after the revocation"
    );
    let err = app
        .metrics()
        .get_overview(with_key(overview(), &key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_drill_down_its_client_stops_reading_is_ended_and_its_slot_freed() {
    let app = spawn_limited(|l| {
        l.max_read_streams_per_tenant = 1;
        l.stream_stall_secs = 1;
    })
    .await;
    // 3,000 rows (about 450 KB) do not fit HTTP/2's window (64 KB), the stream's send buffer
    // (64 KB) and the server's read-ahead (256 rows).
    for part in 0..3 {
        let events: Vec<pb::Event> = (part * 1000..(part + 1) * 1000)
            .map(|i| opened(&format!("st-{i}"), &format!("st-c{i:04}"), i))
            .collect();
        assert_eq!(app.ingest_proto(events).await.unwrap().accepted, 1000);
    }
    let list = || pb::ListConversationsRequest {
        query: Some(window()),
        kpi: pb::DrillDown::Opened as i32,
        limit: 0,
    };
    // Never read, by a client with HTTP/2's smallest window (64 KB; tonic's is 2 MB): its rows
    // fill that window, the stream's send buffer and the server's read-ahead.
    let small_window = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let unread = pb::metrics_service_client::MetricsServiceClient::new(small_window)
        .list_conversations(app.authed(list()))
        .await
        .unwrap();
    let err = app
        .metrics()
        .list_conversations(app.authed(list()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // After the stall time (1 s, checked every second) the slot is free again.
    let started = Instant::now();
    let mut second = loop {
        match app.metrics().list_conversations(app.authed(list())).await {
            Ok(s) => break s.into_inner(),
            Err(e) if started.elapsed() < Duration::from_secs(6) => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the stalled stream kept its slot: {e:?}"),
        }
    };
    let mut n = 0;
    while second.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3000, "a client that reads gets every row");
    // The stalled one ends with DEADLINE_EXCEEDED once its client reads again.
    let mut unread = unread.into_inner();
    let mut rows = 0;
    let err = loop {
        match unread.message().await {
            Ok(Some(_)) => rows += 1,
            Ok(None) => panic!("the stalled stream ended without an error after {rows} rows"),
            Err(status) => break status,
        }
    };
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(rows < 3000);
}

/// One gRPC call over a plain HTTP/2 connection with `headers`: the grpc-status, its message and
/// how long the answer took. (A tonic client enforces the deadline itself; this asks the server.)
async fn raw_grpc(
    app: &TestApp,
    path: &str,
    message: Vec<u8>,
    headers: &[(&str, &str)],
) -> (String, String, Duration) {
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", app.api_key));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = sender
        .send_request(request.body(http_body_util::Full::new(frame.freeze())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let elapsed = started.elapsed();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let get = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (get("grpc-status"), get("grpc-message"), elapsed)
}

/// Holds the ingest lock of `conversation` until the transaction ends: an IngestEvents of it
/// waits.
async fn hold(app: &TestApp, conversation: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{}/{conversation}", app.tenant))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

#[tokio::test]
async fn an_expired_grpc_deadline_is_answered_deadline_exceeded_every_time() {
    let app = TestApp::spawn().await;
    let lock = hold(&app, "dl-c").await;
    let request = pb::IngestEventsRequest {
        events: vec![opened("dl-1", "dl-c", 0)],
    }
    .encode_to_vec();
    for attempt in 0..5 {
        let (status, message, elapsed) = raw_grpc(
            &app,
            "/chatkpi.v1.EventService/IngestEvents",
            request.clone(),
            &[("grpc-timeout", "200m")],
        )
        .await;
        assert_eq!(
            status,
            (Code::DeadlineExceeded as i32).to_string(),
            "attempt {attempt}: {message}"
        );
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }
    lock.rollback().await.unwrap();
}

#[tokio::test]
async fn connect_timeout_is_enforced_and_grpc_headers_never_reach_a_json_answer() {
    let app = TestApp::spawn().await;
    let lock = hold(&app, "ct-c").await;
    let auth = format!("Bearer {}", app.api_key);
    let body = serde_json::json!({"events": [{"eventId": "ct-1", "conversationId": "ct-c",
        "occurredAt": "2026-03-02T09:00:00Z",
        "conversationOpened": {"customerId": "x", "channel": "CHANNEL_WEBCHAT"}}]});
    let started = Instant::now();
    let answer = http(
        app.addr,
        "POST",
        "/chatkpi.v1.EventService/IngestEvents",
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
            ("connect-timeout-ms", "20"),
        ],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(answer.json()["code"], "deadline_exceeded");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    lock.rollback().await.unwrap();

    // A gRPC deadline header on a JSON call is not part of Connect: the answer is JSON.
    let answer = http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/GetOverview",
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
            ("grpc-timeout", "1n"),
        ],
        serde_json::json!({"query": {"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"}})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.headers["content-type"], "application/json");
    assert!(answer.json()["current"].is_object());
}

/// Connect's streaming envelopes of a body: (flags, message) in order.
fn envelopes(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "a partial envelope");
    out
}

fn enveloped(json: serde_json::Value) -> Vec<u8> {
    let message = json.to_string().into_bytes();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

#[tokio::test]
async fn server_streaming_methods_stream_over_connect_and_bidi_ones_answer_unimplemented() {
    let app = TestApp::spawn().await;
    let events: Vec<pb::Event> = (0..3)
        .map(|i| opened(&format!("cs-{i}"), &format!("cs-c{i}"), i))
        .collect();
    assert_eq!(app.ingest_proto(events).await.unwrap().accepted, 3);
    let auth = format!("Bearer {}", app.api_key);
    let headers = [
        ("content-type", "application/connect+json"),
        ("authorization", auth.as_str()),
    ];
    let query = serde_json::json!({"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"});
    let answer = http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/ListConversations",
        &headers,
        enveloped(serde_json::json!({"query": query, "kpi": "DRILL_DOWN_OPENED"})),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "application/connect+json");
    let frames = envelopes(&answer.body);
    assert_eq!(frames.len(), 4, "three rows and the end of the stream");
    let ids: Vec<String> = frames[..3]
        .iter()
        .map(|(flags, m)| {
            assert_eq!(*flags, 0);
            serde_json::from_slice::<serde_json::Value>(m).unwrap()["conversationId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, ["cs-c0", "cs-c1", "cs-c2"]);
    assert_eq!(frames[3], (2, b"{}".to_vec()));

    // A watch: the first overview arrives, then the client's deadline ends the stream.
    let mut watch_headers = headers.to_vec();
    watch_headers.push(("connect-timeout-ms", "1500"));
    let answer = http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/WatchOverview",
        &watch_headers,
        enveloped(serde_json::json!({"query": query})),
    )
    .await;
    let frames = envelopes(&answer.body);
    let first: serde_json::Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(first["kpis"]["conversations"], "3");
    let (flags, end) = frames.last().unwrap();
    assert_eq!(*flags, 2);
    let end: serde_json::Value = serde_json::from_slice(end).unwrap();
    assert_eq!(end["error"]["code"], "deadline_exceeded");

    // An error before the first message is the end of the stream, with HTTP 200.
    let answer = http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/ListConversations",
        &headers,
        enveloped(serde_json::json!({"query": query})),
    )
    .await;
    assert_eq!(answer.status, 200);
    let frames = envelopes(&answer.body);
    let end: serde_json::Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(
        (frames[0].0, end["error"]["code"].as_str()),
        (2, Some("invalid_argument"))
    );

    let answer = http(
        app.addr,
        "POST",
        "/chatkpi.v1.EventService/StreamEvents",
        &headers,
        enveloped(serde_json::json!({"batchId": 1, "events": []})),
    )
    .await;
    assert_eq!(answer.status, 200);
    let frames = envelopes(&answer.body);
    let end: serde_json::Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(end["error"]["code"], "unimplemented");
    assert!(end["error"]["message"].as_str().unwrap().contains("HTTP/2"));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::spawn().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let mut request = tonic::Request::new(overview());
        request.metadata_mut().insert(
            "authorization",
            format!("{scheme} {}", app.api_key).parse().unwrap(),
        );
        app.metrics()
            .get_overview(request)
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e:?}"));
    }
    let mut request = tonic::Request::new(overview());
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {}", app.api_key).parse().unwrap());
    assert_eq!(
        app.metrics().get_overview(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn erasure_finds_a_customer_named_only_by_a_later_opening_and_keeps_other_days_snapshots() {
    let app = TestApp::spawn().await;
    let opened_by = |id: &str, conversation: &str, customer: &str, at: i64| pb::Event {
        event_id: id.into(),
        conversation_id: conversation.into(),
        occurred_at: Some(chrono_to_timestamp(t(at))),
        payload: Some(P::ConversationOpened(pb::ConversationOpened {
            customer_id: customer.into(),
            channel: pb::Channel::Whatsapp as i32,
            ..Default::default()
        })),
    };
    // Day 1: someone else. Day 2: a conversation first opened for cust-a, later for cust-b.
    let events = vec![
        opened_by("e-x", "c-x", "cust-x", -80_000),
        opened_by("e-a", "c-1", "cust-a", 60),
        opened_by("e-b", "c-1", "cust-b", 120),
    ];
    assert_eq!(app.ingest_proto(events).await.unwrap().accepted, 3);
    let counted = |app: &TestApp| {
        let mut client = app.metrics();
        let request = app.authed(overview());
        async move {
            client
                .get_overview(request)
                .await
                .unwrap()
                .into_inner()
                .current
                .unwrap()
                .conversations
        }
    };
    assert_eq!(counted(&app).await, 2);
    // The query persisted both days' snapshots in the background.
    let snapshots = |app: &TestApp| {
        let (pool, tenant) = (app.pool.clone(), app.tenant);
        async move {
            let days: Vec<(chrono::NaiveDate,)> =
                sqlx::query_as("select segment_day from segments where tenant_id = $1 order by 1")
                    .bind(tenant)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            days.into_iter().map(|(d,)| d).collect::<Vec<_>>()
        }
    };
    let (day1, day2) = (t(-80_000).date_naive(), t(60).date_naive());
    let started = Instant::now();
    while snapshots(&app).await != [day1, day2] {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "snapshots were never written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let erased = app
        .admin()
        .erase_customer(app.authed(pb::EraseCustomerRequest {
            customer_id: "cust-b".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (erased.conversations, erased.events, erased.conversions),
        (1, 2, 0)
    );
    let (named,): (i64,) =
        sqlx::query_as("select count(*) from events where tenant_id = $1 and payload::text like '%cust-b%'")
            .bind(app.tenant)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(named, 0, "no event names the customer");
    // Only the day that held the conversation lost its snapshot.
    assert_eq!(snapshots(&app).await, [day1]);
    assert_eq!(counted(&app).await, 1);
}

#[tokio::test]
async fn a_call_that_stops_waiting_for_its_tenants_load_gets_its_progress_and_the_load_goes_on() {
    // A 1 s request timeout: calls wait 0.8 s for their tenant's data.
    let app = spawn_limited(|l| l.request_timeout_secs = 1).await;
    app.ingest_proto(vec![opened("pl-1", "pl-c", 0)]).await.unwrap();
    // The day's snapshot read waits behind this lock: the tenant's first load cannot finish.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("lock table segments in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    for attempt in 0..2 {
        let started = Instant::now();
        let err = app
            .metrics()
            .get_overview(app.authed(overview()))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unavailable,
            "attempt {attempt}: {}",
            err.message()
        );
        assert!(
            err.message().contains("0 of 1 days") && err.message().contains("retry"),
            "attempt {attempt}: {}",
            err.message()
        );
        assert!(
            started.elapsed() < Duration::from_millis(990),
            "answered before the timeout"
        );
    }
    lock.rollback().await.unwrap();
    // The load went on without the calls: one finds the day.
    let started = Instant::now();
    let counted = loop {
        match app.metrics().get_overview(app.authed(overview())).await {
            Ok(answer) => break answer.into_inner().current.unwrap().conversations,
            Err(err) => assert_eq!(err.code(), Code::Unavailable, "{}", err.message()),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(counted, 1);
}
