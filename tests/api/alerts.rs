//! Alerts end to end (docs/metrics.md §12): rules through the JSON face, the evaluator and the
//! deliverer of real servers against PostgreSQL, and a receiver the test starts on 127.0.0.1
//! that records every POST and answers with the statuses it is told to.
//!
//! Test servers evaluate every second and retry after 200 ms (helpers::Options). Every server of
//! the test binary shares one database, so one of them (whichever holds the evaluation lock)
//! evaluates every test's rules: exactly what several replicas do.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use chatkpi::domain::{alert::sign, event::*};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp};

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    delivery: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP receiver on 127.0.0.1: answers the queued statuses in turn, then 200.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(answers: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/chatkpi", listener.local_addr().unwrap());
        let r = Receiver {
            url,
            got: Arc::default(),
            answers: Arc::new(Mutex::new(answers.iter().copied().collect())),
        };
        let served = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let r = served.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let r = r.clone();
                            async move {
                                let header = |n: &str| {
                                    req.headers()
                                        .get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_owned()
                                };
                                let (signature, delivery) =
                                    (header("x-chatkpi-signature"), header("x-chatkpi-delivery"));
                                let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                                r.got.lock().unwrap().push(Received {
                                    signature,
                                    delivery,
                                    body,
                                });
                                let status = r.answers.lock().unwrap().pop_front().unwrap_or(200);
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        r
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The states (`firing`, `resolved`, ...) of the notices received, in order.
    fn states(&self) -> Vec<String> {
        self.got()
            .iter()
            .map(|r| r.json()["state"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until `n` POSTs arrived (at most 30 s).
    async fn wait_for(&self, n: usize) {
        for _ in 0..300 {
            if self.got().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("expected {n} POSTs, got {:?}", self.states());
    }
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

fn event(id: &str, conv: &str, at: DateTime<Utc>, payload: Payload) -> Event {
    Event {
        event_id: id.into(),
        conversation_id: Some(conv.into()),
        occurred_at: at,
        payload,
    }
}

/// `n` open conversations with a customer message, opened two minutes ago.
fn open_conversations(prefix: &str, n: usize) -> Vec<Event> {
    let at = now() - chrono::Duration::seconds(120);
    (0..n)
        .flat_map(|i| {
            let c = format!("{prefix}-{i}");
            [
                event(
                    &format!("{c}-open"),
                    &c,
                    at,
                    Payload::ConversationOpened(ConversationOpened {
                        customer_id: format!("cust-{c}"),
                        channel: Channel::Webchat,
                        inbox: None,
                        team: None,
                        priority: None,
                        initiated_by: Initiator::Customer,
                    }),
                ),
                event(
                    &format!("{c}-m"),
                    &c,
                    at,
                    Payload::Message(Message {
                        message_id: format!("{c}-m"),
                        sender: Sender::Customer,
                        agent_id: None,
                        private: false,
                    }),
                ),
            ]
        })
        .collect()
}

fn resolve(prefix: &str, i: usize) -> Event {
    let c = format!("{prefix}-{i}");
    event(
        &format!("{c}-resolved"),
        &c,
        now() - chrono::Duration::seconds(1),
        Payload::Resolved(Resolved {
            by: ResolvedBy::Agent,
            agent_id: Some("ana".into()),
        }),
    )
}

/// Creates a rule through the JSON face; returns its id and signing secret.
async fn create_rule(app: &TestApp, rule: Value) -> (u64, String) {
    let answer = app
        .post_json("/chatkpi.v1.AdminService/CreateAlertRule", &json!({"rule": rule}))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let created = answer.json();
    (
        created["ruleId"].as_str().unwrap().parse().unwrap(),
        created["signingSecret"].as_str().unwrap().to_owned(),
    )
}

fn backlog_rule(url: &str, threshold: f64) -> Value {
    json!({
        "name": "backlog over threshold", "metric": "backlog", "comparison": "ALERT_COMPARISON_ABOVE",
        "threshold": threshold, "destinations": [url]
    })
}

#[tokio::test]
async fn a_backlog_rule_fires_once_and_resolves_once() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]).await;
    create_rule(&app, backlog_rule(&receiver.url, 2.0)).await;
    app.ingest(&open_conversations("b", 3)).await.unwrap(); // backlog 3 > 2
    receiver.wait_for(1).await;
    // Evaluated every second: three more evaluations while it holds send nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.states(), ["firing"]);
    let firing = receiver.got()[0].json();
    assert_eq!(
        (firing["value"].as_f64(), firing["episode"].as_u64()),
        (Some(3.0), Some(1))
    );
    app.ingest(&[resolve("b", 0), resolve("b", 1)]).await.unwrap(); // backlog 1
    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.states(), ["firing", "resolved"]);
    let resolved = receiver.got()[1].json();
    assert_eq!(
        (resolved["value"].as_f64(), resolved["episode"].as_u64()),
        (Some(1.0), Some(1))
    );
}

#[tokio::test]
async fn a_wrong_signing_secret_is_detectable_by_the_receiver() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]).await;
    let (_, secret) = create_rule(&app, backlog_rule(&receiver.url, 0.0)).await;
    app.ingest(&open_conversations("s", 1)).await.unwrap();
    receiver.wait_for(1).await;
    let got = &receiver.got()[0];
    // X-Chatkpi-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">.
    let t: i64 = got.signature["t=".len()..got.signature.find(',').unwrap()]
        .parse()
        .unwrap();
    let at = DateTime::from_timestamp(t, 0).unwrap();
    assert!((Utc::now() - at).num_seconds().abs() < 60, "a fresh timestamp");
    assert_eq!(sign(secret.as_bytes(), at, &got.body), got.signature);
    assert_ne!(sign(b"not the rule's secret", at, &got.body), got.signature);
}

#[tokio::test]
async fn a_percentile_rule_below_its_minimum_items_does_not_fire() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]).await;
    let rule = json!({
        "name": "slow first responses", "metric": "first_response.p90", "windowSeconds": 3600,
        "comparison": "ALERT_COMPARISON_ABOVE", "threshold": 60, "minItems": 5,
        "destinations": [receiver.url]
    });
    create_rule(&app, rule).await;
    // Two conversations answered after 100 s: p90 = 100 > 60, but 2 items < 5.
    let mut events = open_conversations("p", 2);
    for i in 0..2 {
        let c = format!("p-{i}");
        events.push(event(
            &format!("{c}-reply"),
            &c,
            now() - chrono::Duration::seconds(20),
            Payload::Message(Message {
                message_id: format!("{c}-reply"),
                sender: Sender::Agent,
                agent_id: Some("ana".into()),
                private: false,
            }),
        ));
    }
    app.ingest(&events).await.unwrap();
    // Evaluated (the value is known) yet not firing.
    let mut evaluated = None;
    for _ in 0..100 {
        let rules = app
            .post_json("/chatkpi.v1.AdminService/ListAlertRules", &json!({}))
            .await
            .json();
        let state = rules["rules"][0]["state"].clone();
        if state["value"].as_f64().is_some() {
            evaluated = Some(state);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = evaluated.expect("the rule was evaluated");
    assert_eq!(state["value"].as_f64(), Some(100.0));
    assert_eq!(
        state["firing"].as_bool(),
        None,
        "proto3 JSON omits false: not firing"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.got().is_empty());
}

#[tokio::test]
async fn a_receiver_answering_500_twice_gets_the_third_attempt_and_every_attempt_is_listed() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[500, 500]).await;
    let (rule_id, _) = create_rule(&app, backlog_rule(&receiver.url, 0.0)).await;
    app.ingest(&open_conversations("r", 1)).await.unwrap();
    receiver.wait_for(3).await;
    let got = receiver.got();
    assert!(
        got.iter().all(|g| g.delivery == got[0].delivery),
        "one delivery, three attempts"
    );
    assert!(
        got.iter().all(|g| g.body == got[0].body),
        "the same document each time"
    );
    let mut listed = Value::Null;
    for _ in 0..50 {
        listed = app
            .post_json(
                "/chatkpi.v1.AdminService/ListAlertDeliveries",
                &json!({"ruleId": rule_id.to_string()}),
            )
            .await
            .json();
        if listed["deliveries"][0]["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivery = &listed["deliveries"][0];
    assert_eq!(delivery["status"], "delivered");
    let codes: Vec<u64> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["httpStatus"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 200]);
}

#[tokio::test]
async fn two_replicas_deliver_one_episode() {
    let app = TestApp::spawn().await;
    let replica = app.replica(Options::default()).await;
    let receiver = Receiver::start(&[]).await;
    create_rule(&app, backlog_rule(&receiver.url, 0.0)).await;
    app.ingest(&open_conversations("two", 1)).await.unwrap();
    receiver.wait_for(1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(receiver.states(), ["firing"]);
    drop(replica);
}

#[tokio::test]
async fn a_restart_between_firing_and_resolving_sends_exactly_one_resolved_notice() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]).await;
    create_rule(&app, backlog_rule(&receiver.url, 0.0)).await;
    app.ingest(&open_conversations("restart", 1)).await.unwrap();
    receiver.wait_for(1).await;
    // Another server on the same database takes over; the first one stops.
    let next = app.replica(Options::default()).await;
    app.shutdown().await.unwrap();
    next.ingest(&[resolve("restart", 0)]).await.unwrap();
    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.states(), ["firing", "resolved"]);
}

#[tokio::test]
async fn bad_rules_are_named_field_by_field() {
    let app = TestApp::spawn().await;
    for (rule, field) in [
        (
            json!({"name": "x", "metric": "nope", "comparison": "ALERT_COMPARISON_ABOVE", "destinations": ["https://example.com"]}),
            "rule.metric",
        ),
        (
            json!({"name": "x", "metric": "backlog", "windowSeconds": 60, "comparison": "ALERT_COMPARISON_ABOVE", "destinations": ["https://example.com"]}),
            "rule.window_seconds",
        ),
        (
            json!({"name": "x", "metric": "missed_rate", "comparison": "ALERT_COMPARISON_ABOVE", "destinations": ["https://example.com"]}),
            "rule.window_seconds",
        ),
        (
            json!({"name": "x", "metric": "backlog", "destinations": ["https://example.com"]}),
            "rule.comparison",
        ),
        (
            json!({"name": "x", "metric": "backlog", "comparison": "ALERT_COMPARISON_ABOVE", "destinations": []}),
            "rule.destinations",
        ),
        (
            json!({"name": "x", "metric": "backlog", "comparison": "ALERT_COMPARISON_ABOVE", "destinations": ["ftp://example.com"]}),
            "rule.destinations[0]",
        ),
        (
            json!({"name": "x", "metric": "backlog", "comparison": "ALERT_COMPARISON_ABOVE", "remindEverySeconds": 5, "destinations": ["https://example.com"]}),
            "rule.remind_every_seconds",
        ),
        (
            json!({"name": "", "metric": "backlog", "comparison": "ALERT_COMPARISON_ABOVE", "destinations": ["https://example.com"]}),
            "rule.name",
        ),
        (
            json!({"name": "x", "metric": "backlog", "comparison": "ALERT_COMPARISON_ABOVE", "filters": {"tags": vec!["t"; 101]}, "destinations": ["https://example.com"]}),
            "rule.filters.tags",
        ),
    ] {
        let answer = app
            .post_json("/chatkpi.v1.AdminService/CreateAlertRule", &json!({"rule": rule}))
            .await;
        assert_eq!(answer.status, 400, "{rule}: {}", answer.text());
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with(&format!("{field}:")), "{field}: {message}");
    }
}

#[tokio::test]
async fn watch_alerts_streams_the_firing_notice() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(&[]).await;
    let mut stream = app
        .metrics()
        .watch_alerts(app.authed(chatkpi::grpc::pb::WatchAlertsRequest {}))
        .await
        .unwrap()
        .into_inner();
    let (rule_id, _) = create_rule(&app, backlog_rule(&receiver.url, 1.0)).await;
    app.ingest(&open_conversations("w", 2)).await.unwrap(); // backlog 2 > 1
    let notice = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a notice within 30 s")
        .unwrap()
        .expect("the stream is open");
    assert_eq!(
        (
            notice.rule_id,
            notice.state.as_str(),
            notice.value,
            notice.episode
        ),
        (rule_id, "firing", Some(2.0), 1)
    );
    // The same document the destination got.
    receiver.wait_for(1).await;
    let posted = receiver.got()[0].json();
    assert_eq!(serde_json::from_str::<Value>(&notice.document).unwrap(), posted);
}
