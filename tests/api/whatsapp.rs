//! The WhatsApp Cloud API webhook end to end (docs/metrics.md §11): bodies shaped like the
//! examples of Meta's webhook reference, signed with the source's app secret, posted to the real
//! server; the CRM's agent replies sent over gRPC into the conversations the webhook opened; the
//! KPIs computed by hand; replays and shuffles; every refusal with nothing stored.
//!
//! Times: `T` = 2026-03-02 09:00 UTC (`t(0)`), business number 106540352242922 (display
//! 15550783881). What happens:
//! - contact A (16505551234) writes a text at T and an image at T+30; the CRM's agent ana replies
//!   with wamid R1 at T+120 (sent over gRPC); its receipts: sent T+120, delivered T+125, read
//!   T+200, category `service`;
//! - contact B (16505550000) answers an interactive list at T+60 and reacts at T+70 (a reaction
//!   is not a message); agent bo replies with R2 at T+240; its only receipt is `read` at T+300
//!   (delivered skipped); B presses a template button at T+500;
//! - contact C (16505559999) gets a marketing template M1 the CRM never reports: `sent` at
//!   T+390, `failed` with error 131047 at T+400.
//!
//! By hand, window [T-1h, T+1d): conversations A, B (customer-initiated) and C
//! (business-initiated, opened at its first receipt) = 3. Received: A 2, B 2 = 4 (the reaction
//! ignored). Sent: R1, R2 (agent) and M1 (known from its receipts only) = 3; delivered R1, R2 =
//! 2 (R2 read implies delivered); read 2; failed 1 (M1). Delivery rate 2/3 = 66.67 %, read rate
//! 2/2 = 100 %. First response: A 120 - 0 = 120 s, B 240 - 60 = 180 s (C has no customer
//! message): mean 150 s. Tags: A `message_category:service`, C `message_category:marketing`
//! and `message_error:131047`.

use chatkpi::{
    domain::{event::*, whatsapp::signature},
    grpc::{convert::chrono_to_timestamp, pb},
};
use serde_json::{Value, json};

use crate::helpers::{HttpAnswer, Options, TestApp, ev, http, t};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const PHONE_ID: &str = "106540352242922";
const A: &str = "16505551234";
const B: &str = "16505550000";
const C: &str = "16505559999";

fn ts(at: i64) -> String {
    t(at).timestamp().to_string()
}

fn metadata() -> Value {
    json!({"display_phone_number": "15550783881", "phone_number_id": PHONE_ID})
}

/// One `messages` change of a body.
fn change(contacts: Value, messages: Value, statuses: Value) -> Value {
    let mut value = json!({"messaging_product": "whatsapp", "metadata": metadata()});
    if !contacts.is_null() {
        value["contacts"] = contacts;
    }
    if !messages.is_null() {
        value["messages"] = messages;
    }
    if !statuses.is_null() {
        value["statuses"] = statuses;
    }
    json!({"value": value, "field": "messages"})
}

fn body(entries: Vec<Vec<Value>>) -> Vec<u8> {
    let entry: Vec<Value> = entries
        .into_iter()
        .map(|changes| json!({"id": "102290129340398", "changes": changes}))
        .collect();
    serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": entry})).unwrap()
}

fn contact(wa_id: &str, name: &str) -> Value {
    json!([{"profile": {"name": name}, "wa_id": wa_id}])
}

fn receipt(wamid: &str, status: &str, at: i64, to: &str, category: &str) -> Value {
    json!({
        "id": wamid, "status": status, "timestamp": ts(at), "recipient_id": to,
        "conversation": {"id": "8a1f6dbc3b4d", "origin": {"type": category}},
        "pricing": {"billable": true, "pricing_model": "CBP", "category": category}
    })
}

/// The three bodies of the module doc, in the order Meta would send them.
fn bodies() -> Vec<Vec<u8>> {
    let first = body(vec![
        vec![
            change(
                contact(A, "Sheena Nelson"),
                json!([
                    {"from": A, "id": "wamid.A1", "timestamp": ts(0), "type": "text",
                     "text": {"body": "Does it come in another color?"}},
                    {"from": A, "id": "wamid.A2", "timestamp": ts(30), "type": "image",
                     "image": {"caption": "this one", "mime_type": "image/jpeg",
                               "sha256": "b1d5f4c5e5", "id": "1003383421387256"}}
                ]),
                Value::Null,
            ),
            // Statuses before the CRM reports its message R1.
            change(
                Value::Null,
                Value::Null,
                json!([
                    receipt("wamid.R1", "sent", 120, A, "service"),
                    receipt("wamid.R1", "delivered", 125, A, "service"),
                    receipt("wamid.R1", "read", 200, A, "service")
                ]),
            ),
            // Another field of the same app: not about messages, ignored.
            json!({"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}),
        ],
        vec![change(
            contact(B, "Bo Customer"),
            json!([
                {"context": {"from": "15550783881", "id": "wamid.L1"},
                 "from": B, "id": "wamid.B1", "timestamp": ts(60), "type": "interactive",
                 "interactive": {"type": "list_reply",
                                 "list_reply": {"id": "shipping", "title": "Shipping"}}},
                {"from": B, "id": "wamid.B-react", "timestamp": ts(70), "type": "reaction",
                 "reaction": {"message_id": "wamid.L1", "emoji": "\u{1F44D}"}}
            ]),
            json!([{"id": "wamid.R2", "status": "read", "timestamp": ts(300), "recipient_id": B}]),
        )],
    ]);
    let second = body(vec![vec![change(
        Value::Null,
        Value::Null,
        json!([
            receipt("wamid.M1", "sent", 390, C, "marketing"),
            {"id": "wamid.M1", "status": "failed", "timestamp": ts(400), "recipient_id": C,
             "errors": [{"code": 131047, "title": "Re-engagement message",
                         "message": "Re-engagement message",
                         "error_data": {"details": "More than 24 hours have passed since the customer last replied."},
                         "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}]}
        ]),
    )]]);
    let third = body(vec![vec![change(
        contact(B, "Bo Customer"),
        json!([{"context": {"from": "15550783881", "id": "wamid.T1"},
                "from": B, "id": "wamid.B2", "timestamp": ts(500), "type": "button",
                "button": {"payload": "TRACK", "text": "Track my order"}}]),
        Value::Null,
    )]]);
    vec![first, second, third]
}

/// Creates a source through the JSON face; returns its webhook path and verify token.
async fn create_source(app: &TestApp, extra: Value) -> (String, String) {
    let mut request = json!({"name": "support line", "appSecret": SECRET});
    if let (Some(r), Some(e)) = (request.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    let answer = app
        .post_json("/chatkpi.v1.AdminService/CreateWhatsAppSource", &request)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let created = answer.json();
    (
        created["path"].as_str().unwrap().to_owned(),
        created["verifyToken"].as_str().unwrap().to_owned(),
    )
}

/// The path of a source that does not exist: `path` with its last hex digit changed.
fn other_source(path: &str) -> String {
    let other = if path.ends_with('0') { '1' } else { '0' };
    format!("{}{other}", &path[..path.len() - 1])
}

async fn post(app: &TestApp, path: &str, body: &[u8], signature: Option<&str>) -> HttpAnswer {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(s) = signature {
        headers.push(("x-hub-signature-256", s));
    }
    http(app.addr, "POST", path, &headers, body.to_vec()).await
}

async fn deliver(app: &TestApp, path: &str, body: &[u8]) -> Value {
    let answer = post(app, path, body, Some(&signature(SECRET.as_bytes(), body))).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()
}

async fn conversation_of(app: &TestApp, path: &str, wa_id: &str) -> String {
    let source_id = path.rsplit('/').next().unwrap().to_owned();
    app.events()
        .find_whats_app_conversation(app.authed(pb::FindWhatsAppConversationRequest {
            source_id,
            wa_id: wa_id.into(),
            phone_number_id: Some(PHONE_ID.into()),
        }))
        .await
        .unwrap()
        .into_inner()
        .conversation_id
}

/// The CRM's agent replies, into the conversations the webhook opened.
async fn crm_replies(app: &TestApp, path: &str) {
    let reply = |conversation: &str, wamid: &str, at: i64, agent: &str| {
        ev(
            &format!("crm-{wamid}"),
            Some(conversation),
            at,
            Payload::Message(Message {
                message_id: wamid.into(),
                sender: Sender::Agent,
                agent_id: Some(agent.into()),
                private: false,
            }),
        )
    };
    let a = conversation_of(app, path, A).await;
    let b = conversation_of(app, path, B).await;
    let r = app
        .ingest(&[
            reply(&a, "wamid.R1", 120, "ana"),
            reply(&b, "wamid.R2", 240, "bo"),
        ])
        .await
        .unwrap();
    assert_eq!(r.rejected, 0);
}

fn day() -> pb::Query {
    pb::Query {
        from: Some(chrono_to_timestamp(t(-3600))),
        to: Some(chrono_to_timestamp(t(86_400))),
        ..Default::default()
    }
}

async fn overview(app: &TestApp) -> pb::Kpis {
    app.metrics()
        .get_overview(app.authed(pb::GetOverviewRequest {
            query: Some(day()),
            compare_previous: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .current
        .unwrap()
}

/// (tag, conversations, messages sent, failed) of the breakdown by tag.
async fn by_tag(app: &TestApp) -> Vec<(String, u64, u64, u64)> {
    let rows = app
        .metrics()
        .get_breakdown(app.authed(pb::GetBreakdownRequest {
            query: Some(day()),
            dimension: pb::Dimension::Tag as i32,
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .rows;
    let mut rows: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let k = r.kpis.unwrap();
            (r.value, k.conversations, k.messages_sent, k.messages_failed)
        })
        .collect();
    rows.sort();
    rows
}

/// The figures of the module doc.
fn assert_hand_computed(k: &pb::Kpis) {
    assert_eq!(k.conversations, 3);
    assert_eq!(k.messages_received, 4);
    assert_eq!(
        (
            k.messages_sent,
            k.messages_delivered,
            k.messages_read,
            k.messages_failed
        ),
        (3, 2, 2, 1)
    );
    assert!((k.delivery_rate.unwrap() - 200.0 / 3.0).abs() < 1e-9);
    assert_eq!(k.read_rate, Some(100.0));
    let frt = k.first_response.as_ref().unwrap();
    assert_eq!((frt.count, frt.mean), (2, Some(150.0)));
}

#[tokio::test]
async fn webhook_bodies_and_crm_replies_give_the_hand_computed_kpis() {
    let app = TestApp::spawn().await;
    let (path, _) = create_source(&app, json!({})).await;
    let answers: Vec<Value> = {
        let mut out = Vec::new();
        for b in bodies() {
            out.push(deliver(&app, &path, &b).await);
        }
        out
    };
    // Body 1: A1, A2, three receipts of R1, B1, one of R2 = 7 items; the reaction and the
    // account_update change ignored.
    assert_eq!(
        (answers[0]["items"].as_u64(), answers[0]["ignored"].as_u64()),
        (Some(7), Some(2))
    );
    crm_replies(&app, &path).await;
    assert_hand_computed(&overview(&app).await);
    assert_eq!(
        by_tag(&app).await,
        vec![
            // B: R2's receipt carried no pricing, so no tag.
            ("".into(), 1, 1, 0),
            ("message_category:marketing".into(), 1, 1, 1),
            ("message_category:service".into(), 1, 1, 0),
            ("message_error:131047".into(), 1, 1, 1),
        ]
    );
}

#[tokio::test]
async fn replayed_and_shuffled_bodies_give_the_same_kpis() {
    let app = TestApp::spawn().await;
    let (path, _) = create_source(&app, json!({})).await;
    // Meta retries: every body twice, the last first.
    let mut bodies = bodies();
    bodies.reverse();
    for b in bodies.iter().chain(bodies.iter()) {
        deliver(&app, &path, b).await;
    }
    let stored = app.event_count().await;
    let again = deliver(&app, &path, &bodies[2]).await;
    assert_eq!(
        again["accepted"].as_u64(),
        Some(0),
        "a replay stores nothing: {again}"
    );
    assert_eq!(app.event_count().await, stored);
    crm_replies(&app, &path).await;
    assert_hand_computed(&overview(&app).await);
}

#[tokio::test]
async fn the_crm_message_and_the_receipts_of_the_same_wamid_count_once() {
    let app = TestApp::spawn().await;
    let (path, _) = create_source(&app, json!({})).await;
    for b in bodies() {
        deliver(&app, &path, &b).await;
    }
    // Before the CRM reports R1 and R2 they are known from their receipts only: still sent.
    let before = overview(&app).await;
    assert_eq!((before.messages_sent, before.messages_delivered), (3, 2));
    crm_replies(&app, &path).await;
    let after = overview(&app).await;
    assert_eq!((after.messages_sent, after.messages_delivered), (3, 2));
}

#[tokio::test]
async fn a_contact_idle_past_the_window_starts_a_new_conversation_and_the_old_one_is_closed() {
    let app = TestApp::spawn().await;
    let (path, _) = create_source(&app, json!({"inactivitySeconds": 600})).await;
    let text = |id: &str, at: i64| {
        body(vec![vec![change(
            contact(A, "Sheena Nelson"),
            json!([{"from": A, "id": id, "timestamp": ts(at), "type": "text", "text": {"body": "hi"}}]),
            Value::Null,
        )]])
    };
    deliver(&app, &path, &text("wamid.D1", 0)).await;
    deliver(&app, &path, &text("wamid.D2", 500)).await; // 500 <= 600 idle: the same one
    let first = conversation_of(&app, &path, A).await;
    deliver(&app, &path, &text("wamid.D3", 1_200)).await; // 700 s after D2: a new one
    let second = conversation_of(&app, &path, A).await;
    assert_ne!(first, second);
    let k = overview(&app).await;
    // Two conversations; the first resolved by the system at 500 + 600 = 1,100 s.
    assert_eq!((k.conversations, k.messages_received, k.resolved), (2, 3, 1));
    let facts = app
        .metrics()
        .get_conversation(app.authed(pb::GetConversationRequest {
            conversation_id: first,
            query: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(facts.resolved_at, Some(chrono_to_timestamp(t(1_100))));
}

#[tokio::test]
async fn meta_verification_answers_the_challenge_only_with_the_verify_token() {
    let app = TestApp::spawn().await;
    let (path, token) = create_source(&app, json!({})).await;
    let get = |query: String| {
        let uri = format!("{path}?{query}");
        async move { http(app.addr, "GET", &uri, &[], Vec::new()).await }
    };
    let ok = get(format!(
        "hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
    ))
    .await;
    assert_eq!((ok.status, ok.text()), (200, "1158201444".to_owned()));
    let wrong = get("hub.mode=subscribe&hub.verify_token=not-the-token&hub.challenge=1".into()).await;
    assert_eq!(wrong.status, 403);
    let mode = get(format!(
        "hub.mode=unsubscribe&hub.verify_token={token}&hub.challenge=1"
    ))
    .await;
    assert_eq!(mode.status, 403);
    let unknown = http(app.addr, "GET", &other_source(&path), &[], Vec::new()).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn unsigned_wrongly_signed_oversized_and_foreign_bodies_are_refused_with_nothing_stored() {
    let app = TestApp::spawn().await;
    let (path, _) = create_source(&app, json!({})).await;
    let good = bodies().remove(0);
    assert_eq!(post(&app, &path, &good, None).await.status, 401);
    let wrong = signature(b"not the app secret", &good);
    assert_eq!(post(&app, &path, &good, Some(&wrong)).await.status, 401);
    // A signature of another body.
    let other = signature(SECRET.as_bytes(), b"{}");
    assert_eq!(post(&app, &path, &good, Some(&other)).await.status, 401);
    let huge = vec![b' '; (1 << 20) + 1];
    let signed = signature(SECRET.as_bytes(), &huge);
    assert_eq!(post(&app, &path, &huge, Some(&signed)).await.status, 413);
    for foreign in [
        br#"{"object": "page", "entry": []}"#.to_vec(),
        br#"{"hello": "world"}"#.to_vec(),
        b"not json".to_vec(),
    ] {
        let answer = post(
            &app,
            &path,
            &foreign,
            Some(&signature(SECRET.as_bytes(), &foreign)),
        )
        .await;
        assert_eq!(answer.status, 400, "{}", answer.text());
    }
    let unknown_source = other_source(&path);
    let answer = post(
        &app,
        &unknown_source,
        &good,
        Some(&signature(SECRET.as_bytes(), &good)),
    )
    .await;
    assert_eq!(answer.status, 404);
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn a_body_is_answered_503_while_the_database_is_unreachable() {
    let app = TestApp::spawn_unready("postgres://postgres:postgres@127.0.0.1:1/none").await;
    let body = bodies().remove(0);
    let answer = post(
        &app,
        "/v1/whatsapp/1/0123456789abcdef0123456789abcdef",
        &body,
        Some(&signature(SECRET.as_bytes(), &body)),
    )
    .await;
    assert_eq!(answer.status, 503, "{}", answer.text());
}

#[tokio::test]
async fn sources_are_listed_without_secrets_and_removed() {
    let app = TestApp::spawn().await;
    let (path, token) = create_source(&app, json!({"inbox": "wa-support"})).await;
    let listed = app
        .post_json("/chatkpi.v1.AdminService/ListWhatsAppSources", &json!({}))
        .await;
    assert_eq!(listed.status, 200);
    let text = listed.text();
    assert!(!text.contains(SECRET) && !text.contains(&token), "{text}");
    let sources = listed.json()["sources"].as_array().unwrap().clone();
    assert_eq!(sources.len(), 1);
    assert_eq!(
        (sources[0]["path"].as_str(), sources[0]["inbox"].as_str()),
        (Some(path.as_str()), Some("wa-support"))
    );
    let id = sources[0]["sourceId"].as_str().unwrap();
    let removed = app
        .post_json(
            "/chatkpi.v1.AdminService/DeleteWhatsAppSource",
            &json!({"sourceId": id}),
        )
        .await;
    assert_eq!(removed.status, 200);
    let body = bodies().remove(0);
    let answer = post(&app, &path, &body, Some(&signature(SECRET.as_bytes(), &body))).await;
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn bad_source_settings_are_named() {
    let app = TestApp::spawn().await;
    for (request, field) in [
        (json!({"name": "x", "appSecret": "short"}), "app_secret"),
        (json!({"name": "", "appSecret": SECRET}), "name"),
        (
            json!({"name": "x", "appSecret": SECRET, "inactivitySeconds": 5}),
            "inactivity_seconds",
        ),
        (
            json!({"name": "x", "appSecret": SECRET, "verifyToken": "tiny"}),
            "verify_token",
        ),
    ] {
        let answer = app
            .post_json("/chatkpi.v1.AdminService/CreateWhatsAppSource", &request)
            .await;
        assert_eq!(answer.status, 400, "{request}");
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with(field), "{message}");
    }
}

#[tokio::test]
async fn the_conversation_lookup_needs_an_ingest_key_of_the_tenant() {
    let app = TestApp::spawn().await;
    let (path, _) = create_source(&app, json!({})).await;
    deliver(&app, &path, &bodies().remove(0)).await;
    let other = TestApp::spawn_with(Options::default()).await;
    let source_id = path.rsplit('/').next().unwrap().to_owned();
    let refused = other
        .events()
        .find_whats_app_conversation(other.authed(pb::FindWhatsAppConversationRequest {
            source_id,
            wa_id: A.into(),
            phone_number_id: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_body_naming_hundreds_of_contacts_opens_one_conversation_each() {
    let app = TestApp::spawn().await;
    let (path, _) = create_source(&app, json!({})).await;
    // 250 contacts: placed 100 per transaction (each contact is locked until its commit).
    let messages: Vec<Value> = (0..250)
        .map(|i| {
            json!({"from": format!("1650555{i:04}"), "id": format!("wamid.many.{i}"),
                   "timestamp": ts(i), "type": "text", "text": {"body": "hello"}})
        })
        .collect();
    let many = body(vec![vec![change(
        Value::Null,
        Value::Array(messages),
        Value::Null,
    )]]);
    let answer = deliver(&app, &path, &many).await;
    assert_eq!(
        (answer["items"].as_u64(), answer["accepted"].as_u64()),
        (Some(250), Some(500))
    );
    let k = overview(&app).await;
    assert_eq!((k.conversations, k.messages_received), (250, 250));
}
