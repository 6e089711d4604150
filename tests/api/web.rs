//! JSON over HTTP (Connect unary) and the CSV drill-down, end to end over HTTP/1.1: the same
//! answers as gRPC, the same key, validation and limits, Connect's error shape and statuses.

use std::fmt::Debug;

use chatkpi::{
    config::Limits,
    domain::tenant::Scope,
    grpc::{convert::chrono_to_timestamp, pb},
    store,
};
use chatkpi_tools::sim::{SimConfig, simulate};
use chrono::{Duration, NaiveDate};
use serde::{Serialize, de::DeserializeOwned};

use crate::helpers::{Options, TestApp, http, t};

const DAYS: i64 = 3;

fn start() -> NaiveDate {
    t(0).date_naive()
}

/// A tenant with 150 simulated conversations over three days.
async fn simulated_app(options: Options) -> TestApp {
    let app = TestApp::spawn_with(options).await;
    let events = simulate(&SimConfig {
        conversations: 150,
        days: DAYS as u32,
        seed: 11,
        start: start(),
        agents: 5,
    });
    for chunk in events.chunks(500) {
        app.ingest(chunk).await.unwrap();
    }
    app
}

fn window(time_zone: &str) -> pb::Query {
    let from = start().and_hms_opt(0, 0, 0).unwrap().and_utc();
    pb::Query {
        from: Some(chrono_to_timestamp(from)),
        to: Some(chrono_to_timestamp(from + Duration::days(DAYS))),
        time_zone: time_zone.into(),
        ..Default::default()
    }
}

/// POSTs `request` as JSON to `method` and checks the answer equals the gRPC one.
async fn same_answer<Req, Resp>(app: &TestApp, method: &str, request: &Req, grpc: Resp)
where
    Req: Serialize,
    Resp: DeserializeOwned + PartialEq + Debug,
{
    let path = format!("/chatkpi.v1.MetricsService/{method}");
    let answer = app
        .post_json(&path, &serde_json::to_value(request).unwrap())
        .await;
    assert_eq!(answer.status, 200, "{method}: {}", answer.text());
    assert_eq!(answer.headers["content-type"], "application/json");
    let json: Resp = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json, grpc, "{method}");
}

#[tokio::test]
async fn every_unary_metrics_rpc_answers_json_exactly_as_grpc() {
    let app = simulated_app(Options::default()).await;
    let mut m = app.metrics();
    let query = window("Europe/Berlin");

    let overview = pb::GetOverviewRequest {
        query: Some(query.clone()),
        compare_previous: true,
    };
    let grpc = m
        .get_overview(app.authed(overview.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grpc.current.as_ref().unwrap().conversations, 150);
    same_answer(&app, "GetOverview", &overview, grpc).await;

    let breakdown = pb::GetBreakdownRequest {
        limit: 0,
        query: Some(query.clone()),
        dimension: pb::Dimension::Agent as i32,
    };
    let grpc = m
        .get_breakdown(app.authed(breakdown.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(grpc.rows.len() >= 5);
    same_answer(&app, "GetBreakdown", &breakdown, grpc).await;

    let series = pb::GetTimeSeriesRequest {
        query: Some(query.clone()),
        granularity: pb::Granularity::Day as i32,
    };
    let grpc = m
        .get_time_series(app.authed(series.clone()))
        .await
        .unwrap()
        .into_inner();
    same_answer(&app, "GetTimeSeries", &series, grpc).await;

    let utilization = pb::GetUtilizationRequest {
        query: Some(query.clone()),
    };
    let grpc = m
        .get_utilization(app.authed(utilization.clone()))
        .await
        .unwrap()
        .into_inner();
    same_answer(&app, "GetUtilization", &utilization, grpc).await;

    let backlog = pb::GetBacklogRequest {
        query: Some(query.clone()),
        at: Some(chrono_to_timestamp(t(3600))),
    };
    let grpc = m
        .get_backlog(app.authed(backlog.clone()))
        .await
        .unwrap()
        .into_inner();
    same_answer(&app, "GetBacklog", &backlog, grpc).await;

    let scorecard = pb::GetScorecardRequest {
        query: Some(query.clone()),
    };
    let grpc = m
        .get_scorecard(app.authed(scorecard.clone()))
        .await
        .unwrap()
        .into_inner();
    same_answer(&app, "GetScorecard", &scorecard, grpc).await;

    // Written by hand as a curl user would: lowerCamelCase names, enum names, RFC 3339.
    let answer = app
        .post_json(
            "/chatkpi.v1.MetricsService/GetOverview",
            &serde_json::json!({"query": {
                "from": "2026-03-02T00:00:00Z", "to": "2026-03-05T00:00:00Z",
                "filters": {"channels": ["CHANNEL_WHATSAPP"]}}}),
        )
        .await;
    let whatsapp = pb::GetOverviewRequest {
        query: Some(pb::Query {
            filters: Some(pb::Filters {
                channels: vec![pb::Channel::Whatsapp as i32],
                ..Default::default()
            }),
            ..window("")
        }),
        compare_previous: false,
    };
    let grpc = m.get_overview(app.authed(whatsapp)).await.unwrap().into_inner();
    let conversations = grpc.current.as_ref().unwrap().conversations;
    assert!(conversations > 0 && conversations < 150);
    assert_eq!(
        answer.json()["current"]["conversations"],
        conversations.to_string()
    );
}

#[tokio::test]
async fn ingest_settings_and_erasure_work_over_json_with_per_event_results() {
    let app = TestApp::spawn().await;
    let answer = app
        .post_json(
            "/chatkpi.v1.EventService/IngestEvents",
            &serde_json::json!({"events": [
                {"eventId": "ev-1", "conversationId": "conv-1", "occurredAt": "2026-11-02T09:00:00Z",
                 "conversationOpened": {"customerId": "cust-42", "channel": "CHANNEL_WHATSAPP"}},
                {"eventId": "ev-2", "conversationId": "conv-1", "occurredAt": "2026-11-02T09:00:05Z",
                 "message": {"messageId": "m-1", "sender": "SENDER_CUSTOMER"}},
                {"eventId": "ev-3", "conversationId": "conv-1", "occurredAt": "2026-11-02T09:00:47Z",
                 "message": {"messageId": "m-2", "sender": "SENDER_AGENT"}}
            ]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let results = answer.json()["results"].as_array().unwrap().clone();
    let outcomes: Vec<&str> = results.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(
        outcomes,
        [
            "EVENT_OUTCOME_ACCEPTED",
            "EVENT_OUTCOME_ACCEPTED",
            "EVENT_OUTCOME_REJECTED"
        ]
    );
    assert_eq!(results[2]["field"], "events[2].message.agent_id");
    assert_eq!(app.event_count().await, 2);

    let answer = app
        .post_json(
            "/chatkpi.v1.MetricsService/UpdateSettings",
            &serde_json::json!({"targets": {"csatPercent": 91.5}}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let settings = app
        .metrics()
        .get_settings(app.authed(pb::GetSettingsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(settings.targets.unwrap().csat_percent, Some(91.5));
    // An empty body is the empty request message.
    let answer = crate::helpers::http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/GetSettings",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {}", app.api_key)),
        ],
        Vec::new(),
    )
    .await;
    assert_eq!(answer.json()["targets"]["csatPercent"], 91.5);

    let answer = app
        .post_json(
            "/chatkpi.v1.AdminService/EraseCustomer",
            &serde_json::json!({"customerId": "cust-42"}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["conversations"], "1");
    assert_eq!(answer.json()["events"], "2");
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn errors_follow_connect_codes_and_statuses() {
    let app = TestApp::spawn().await;
    let overview = "/chatkpi.v1.MetricsService/GetOverview";
    let error = |status: u16, code: &str, answer: &crate::helpers::HttpAnswer| {
        assert_eq!(answer.status, status, "{}", answer.text());
        assert_eq!(answer.headers["content-type"], "application/json");
        assert_eq!(answer.json()["code"], code, "{}", answer.text());
        answer.json()["message"].as_str().unwrap().to_owned()
    };
    let json = |auth: &str| {
        vec![("content-type", "application/json"), ("authorization", auth)]
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect::<Vec<_>>()
    };
    let send = |headers: Vec<(&'static str, String)>, body: &str| {
        let body = body.as_bytes().to_vec();
        let addr = app.addr;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(addr, "POST", overview, &headers, body).await
        }
    };
    let key = format!("Bearer {}", app.api_key);
    let valid = r#"{"query": {"from": "2026-03-02T00:00:00Z", "to": "2026-03-03T00:00:00Z"}}"#;

    let message = error(
        401,
        "unauthenticated",
        &send(json("Bearer ck_1_wrong"), valid).await,
    );
    assert!(message.contains("invalid api key"), "{message}");
    let missing = vec![("content-type", "application/json".to_owned())];
    error(401, "unauthenticated", &send(missing, valid).await);

    let message = error(
        400,
        "invalid_argument",
        &send(json(&key), r#"{"query": {"from": "yesterday"}}"#).await,
    );
    assert!(message.starts_with("request body: query.from: "), "{message}");
    let message = error(
        400,
        "invalid_argument",
        &send(json(&key), r#"{"qurey": {}}"#).await,
    );
    assert!(message.contains("unknown field `qurey`"), "{message}");
    let reversed = r#"{"query": {"from": "2026-03-03T00:00:00Z", "to": "2026-03-02T00:00:00Z"}}"#;
    let message = error(400, "invalid_argument", &send(json(&key), reversed).await);
    assert!(message.starts_with("query.to: must be after from"), "{message}");

    let wrong_type = vec![
        ("content-type", "text/plain".to_owned()),
        ("authorization", key.clone()),
    ];
    let answer = send(wrong_type, valid).await;
    error(415, "unimplemented", &answer);
    assert_eq!(
        answer.headers["accept-post"],
        "application/json, application/proto, application/connect+json, application/connect+proto"
    );

    let auth = [
        ("content-type", "application/json"),
        ("authorization", key.as_str()),
    ];
    let answer = http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/GetOverveiw",
        &auth,
        b"{}".to_vec(),
    )
    .await;
    error(404, "unimplemented", &answer);
    let answer = http(
        app.addr,
        "POST",
        "/chatkpi.v1.MetricsService/WatchOverview",
        &auth,
        b"{}".to_vec(),
    )
    .await;
    // A streaming method takes Connect's streaming content types (see isolation.rs).
    let message = error(415, "unimplemented", &answer);
    assert!(message.contains("streaming method"), "{message}");
    assert!(message.contains("application/connect+json"), "{message}");
    let answer = http(app.addr, "GET", "/nothing/here/at/all", &[], Vec::new()).await;
    error(404, "not_found", &answer);

    // Connect's timeout header becomes the call's deadline; a malformed one is named.
    let mut timed = json(&key);
    timed.push(("connect-timeout-ms", "soon".to_owned()));
    let message = error(400, "invalid_argument", &send(timed, valid).await);
    assert!(message.starts_with("connect-timeout-ms:"), "{message}");
    let mut timed = json(&key);
    timed.push(("connect-timeout-ms", "20000".to_owned()));
    assert_eq!(send(timed, valid).await.status, 200);

    // A body beyond the 16 MiB message limit is refused before it is parsed.
    let huge = format!(r#"{{"events": [], "pad": "{}"}}"#, "x".repeat(17 << 20));
    let answer = send(json(&key), &huge).await;
    error(429, "resource_exhausted", &answer);

    // Binary protobuf, Connect's other unary encoding.
    use prost::Message;
    let request = pb::GetOverviewRequest {
        query: Some(window("")),
        compare_previous: false,
    };
    let proto = [
        ("content-type", "application/proto"),
        ("authorization", key.as_str()),
    ];
    let answer = http(app.addr, "POST", overview, &proto, request.encode_to_vec()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "application/proto");
    let decoded = pb::GetOverviewResponse::decode(&answer.body[..]).unwrap();
    let grpc = app
        .metrics()
        .get_overview(app.authed(request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decoded, grpc);
}

#[tokio::test]
async fn json_calls_share_the_tenants_query_rate_and_key_scopes() {
    let app = TestApp::spawn_with(Options {
        limits: Limits {
            tenant_queries_per_sec: 1,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let body = serde_json::json!({"query": {"from": "2026-03-02T00:00:00Z", "to": "2026-03-03T00:00:00Z"}});
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let answer = app
            .post_json("/chatkpi.v1.MetricsService/GetOverview", &body)
            .await;
        if answer.status == 429 {
            let seconds: u64 = answer.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&seconds), "retry-after {seconds}");
        }
        statuses.push((answer.status, answer.json()["code"].as_str().map(str::to_owned)));
    }
    // Bursts of twice the rate pass; the rest are refused as gRPC refuses them.
    assert!(statuses[..2].iter().all(|(s, _)| *s == 200), "{statuses:?}");
    assert!(
        statuses[2..]
            .iter()
            .any(|(s, c)| *s == 429 && c.as_deref() == Some("resource_exhausted")),
        "{statuses:?}"
    );

    // A read-only key may ask but not erase.
    let read = store::tenants::create_key(&app.pool, app.tenant, &[Scope::Read], "reader")
        .await
        .unwrap();
    let auth = format!("Bearer {}", read.plaintext);
    let answer = http(
        app.addr,
        "POST",
        "/chatkpi.v1.AdminService/EraseCustomer",
        &[("content-type", "application/json"), ("authorization", &auth)],
        br#"{"customerId": "c"}"#.to_vec(),
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.json()["code"], "permission_denied");
}

#[tokio::test]
async fn the_drill_down_downloads_as_csv_one_row_per_conversation() {
    let app = simulated_app(Options::default()).await;
    let query = window("UTC");
    let list = pb::ListConversationsRequest {
        query: Some(query.clone()),
        kpi: pb::DrillDown::Resolved as i32,
        limit: 0,
    };
    let mut stream = app
        .metrics()
        .list_conversations(app.authed(list))
        .await
        .unwrap()
        .into_inner();
    let mut expected = Vec::new();
    while let Some(facts) = stream.message().await.unwrap() {
        expected.push(facts);
    }
    assert!(expected.len() > 50, "{}", expected.len());

    let auth = format!("Bearer {}", app.api_key);
    let path =
        "/v1/conversations.csv?kpi=resolved&from=2026-03-02T00:00:00Z&to=2026-03-05T00:00:00Z&time_zone=UTC";
    let answer = http(app.addr, "GET", path, &[("authorization", &auth)], Vec::new()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.headers["content-type"], "text/csv; charset=utf-8");
    assert!(
        answer.headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    // Streamed: no length known in advance.
    assert!(!answer.headers.contains_key("content-length"));
    let mut reader = csv::Reader::from_reader(answer.body.as_slice());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header, chatkpi::web::csv::COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), expected.len());
    let column = |name: &str| header.iter().position(|c| c == name).unwrap();
    for (row, facts) in rows.iter().zip(&expected) {
        assert_eq!(&row[column("conversation_id")], facts.conversation_id);
        assert_eq!(&row[column("agent")], facts.agent);
        assert_eq!(&row[column("tags")], facts.tags.join(";"));
        let resolution: f64 = row[column("resolution_seconds")].parse().unwrap();
        assert_eq!(Some(resolution), facts.resolution_seconds);
        assert_eq!(&row[column("state")], "resolved");
    }

    // Filters and the limit apply as in ListConversations.
    let answer = http(
        app.addr,
        "GET",
        &format!("{path}&channel=whatsapp&limit=3"),
        &[("authorization", &auth)],
        Vec::new(),
    )
    .await;
    let text = answer.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1..].iter().all(|l| l.split(',').nth(2) == Some("whatsapp")),
        "{text}"
    );

    // Errors before the first row are Connect errors with their HTTP status.
    let answer = http(
        app.addr,
        "GET",
        path,
        &[("authorization", "Bearer ck_1_wrong")],
        Vec::new(),
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["code"], "unauthenticated");
    let answer = http(
        app.addr,
        "GET",
        "/v1/conversations.csv?kpi=resolved&from=2026-03-02",
        &[("authorization", &auth)],
        Vec::new(),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("from: expected an RFC 3339")
    );
    let answer = http(
        app.addr,
        "GET",
        "/v1/conversations.csv?from=2026-03-02T00:00:00Z&to=2026-03-05T00:00:00Z",
        &[("authorization", &auth)],
        Vec::new(),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(
        answer.json()["message"].as_str().unwrap().starts_with("kpi"),
        "{}",
        answer.text()
    );
}
