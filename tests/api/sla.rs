//! Service levels end to end (docs/metrics.md §10): policies through the settings, clocks judged
//! by hand on four conversations, the same answers for the events shuffled and duplicated, the
//! running clocks at an instant, the drill-down of breaches, the JSON face and every bad value of
//! a policy named.
//!
//! The tenant's business hours: Mon-Fri 09:00-17:00 UTC, Friday 2026-03-06 a holiday. `t(s)` is
//! Monday 2026-03-02 09:00 UTC + s. Policies, in order:
//! - "urgent chats": urgent WhatsApp or web chat; first response 120 s, next response 600 s,
//!   resolution 14,400 business seconds;
//! - "everyone": first response 300 s, next response 900 s, resolution 28,800 business seconds.
//!
//! The conversations and their clocks (E = elapsed, T = target):
//! - c1, web chat, normal priority, assigned to a1 at 100, escalated to urgent at 100. The
//!   customer writes at 0, the bot answers at 30, handoff at 60 (human queue start). a1 answers
//!   at 400: first response governed by "everyone" (normal at 60): E = 340 > T = 300, breached by
//!   40. The customer writes at 500, 520 and 540 (one burst, one clock), a1 leaves a private note
//!   at 600 (stops nothing) and answers at 1300: next response governed by "urgent chats" (urgent
//!   at 500): E = 800 > 600, breached by 200. a1 marks it waiting at 1400; the customer answers
//!   at 5000 (ending the wait and starting a next response), a1 answers at 5100: E = 100,
//!   achieved. a1 resolves at 6000: resolution governed by "everyone" (normal at 0): E = 6000
//!   business seconds - 3600 waiting = 2400 <= 28,800, achieved.
//! - c2, web chat, urgent, assigned to a2: the customer writes at 7200 (queue start), a2 resolves
//!   at 7260 before any reply: the first response is closed after 60 < 120 s: not counted. It is
//!   reopened at 21,600; the customer writes at 21,610 and a2 answers at 22,300: next response
//!   E = 690 > 600, breached by 90. The customer writes at 22,400 and a2 resolves at 22,500: that
//!   next response is closed after 100 < 600: not counted. Resolution ("urgent chats"): 7200 to
//!   the final resolution 22,500, the reopen cycle included, all inside Monday's hours: E =
//!   15,300 > 14,400, breached by 900.
//! - c3, email, normal, assigned to a3: opened Thursday 16:00 (t = 284,400) with a customer
//!   message; a3 answers at 16:02 (284,520): first response E = 120 <= 300, achieved. The
//!   customer writes on Friday 12:00 (356,400) and nobody answers before a3 resolves on Tuesday
//!   2026-03-10 10:00 (694,800): the next response is closed by the resolution after 338,400 s,
//!   past its 900 s target: breached by 337,500. Resolution ("everyone", business seconds):
//!   Thursday 16:00-17:00 = 3600, Friday a holiday, the weekend closed, Monday 28,800, Tuesday
//!   09:00-10:00 = 3600: E = 36,000 > 28,800, breached by 7200.
//! - c4, WhatsApp, urgent, never resolved: the customer writes at 600, handoff at 605 (queue
//!   start), the bot answers at 610 (stops nothing), a2 is assigned at 700 and answers at 800:
//!   first response ("urgent chats") E = 195 > 120, breached by 75. Its resolution clock runs.
//!
//! In the week from t = 0: first response achieved 1 (c3), breached 2 (c1 by 40, c4 by 75); next
//! response achieved 1 (c1), breached 3 (c1 by 200, c2 by 90, c3 by 337,500); resolution
//! achieved 1 (c1), breached 2 (c2 by 900, c3 by 7200); overall achieved 3, breached 7.

use chatkpi::{
    domain::event::*,
    grpc::{convert::chrono_to_timestamp, pb},
};
use rand::{SeedableRng, seq::SliceRandom};
use tonic::Code;

use crate::helpers::{TestApp, ev, t, with_key};

fn opened(conv: &str, at: i64, channel: Channel, priority: Option<Priority>) -> Event {
    ev(
        &format!("{conv}-open"),
        Some(conv),
        at,
        Payload::ConversationOpened(ConversationOpened {
            customer_id: format!("customer-{conv}"),
            channel,
            inbox: None,
            team: None,
            priority,
            initiated_by: Initiator::Customer,
        }),
    )
}

fn message(conv: &str, n: u32, at: i64, sender: Sender, agent: Option<&str>, private: bool) -> Event {
    let id = format!("{conv}-m{n}");
    ev(
        &id,
        Some(conv),
        at,
        Payload::Message(Message {
            message_id: id.clone(),
            sender,
            agent_id: agent.map(str::to_owned),
            private,
        }),
    )
}

fn customer(conv: &str, n: u32, at: i64) -> Event {
    message(conv, n, at, Sender::Customer, None, false)
}

fn agent(conv: &str, n: u32, at: i64, who: &str) -> Event {
    message(conv, n, at, Sender::Agent, Some(who), false)
}

fn other(conv: &str, name: &str, at: i64, payload: Payload) -> Event {
    ev(&format!("{conv}-{name}"), Some(conv), at, payload)
}

fn assigned(conv: &str, at: i64, who: &str) -> Event {
    other(
        conv,
        "assigned",
        at,
        Payload::Assigned(Assigned {
            agent_id: Some(who.into()),
            team: None,
        }),
    )
}

fn resolved(conv: &str, name: &str, at: i64, who: &str) -> Event {
    other(
        conv,
        name,
        at,
        Payload::Resolved(Resolved {
            by: ResolvedBy::Agent,
            agent_id: Some(who.into()),
        }),
    )
}

/// The four conversations of the module comment.
fn fixture() -> Vec<Event> {
    vec![
        // c1
        opened("c1", 0, Channel::Webchat, None),
        customer("c1", 1, 0),
        message("c1", 2, 30, Sender::Bot, None, false),
        other("c1", "handoff", 60, Payload::Handoff),
        assigned("c1", 100, "a1"),
        other(
            "c1",
            "escalated",
            100,
            Payload::ConversationUpdated(ConversationUpdated {
                priority: Some(Priority::Urgent),
                team: None,
            }),
        ),
        agent("c1", 3, 400, "a1"),
        customer("c1", 4, 500),
        customer("c1", 5, 520),
        customer("c1", 6, 540),
        message("c1", 7, 600, Sender::Agent, Some("a1"), true),
        agent("c1", 8, 1300, "a1"),
        other(
            "c1",
            "waiting",
            1400,
            Payload::WaitingOnCustomer(WaitingOnCustomer { waiting: true }),
        ),
        customer("c1", 9, 5000),
        agent("c1", 10, 5100, "a1"),
        resolved("c1", "resolved", 6000, "a1"),
        // c2
        opened("c2", 7200, Channel::Webchat, Some(Priority::Urgent)),
        assigned("c2", 7200, "a2"),
        customer("c2", 1, 7200),
        resolved("c2", "resolved-1", 7260, "a2"),
        other("c2", "reopened", 21_600, Payload::Reopened),
        customer("c2", 2, 21_610),
        agent("c2", 3, 22_300, "a2"),
        customer("c2", 4, 22_400),
        resolved("c2", "resolved-2", 22_500, "a2"),
        // c3
        opened("c3", 284_400, Channel::Email, None),
        assigned("c3", 284_400, "a3"),
        customer("c3", 1, 284_400),
        agent("c3", 2, 284_520, "a3"),
        customer("c3", 3, 356_400),
        resolved("c3", "resolved", 694_800, "a3"),
        // c4
        opened("c4", 600, Channel::Whatsapp, Some(Priority::Urgent)),
        customer("c4", 1, 600),
        other("c4", "handoff", 605, Payload::Handoff),
        message("c4", 2, 610, Sender::Bot, None, false),
        assigned("c4", 700, "a2"),
        agent("c4", 3, 800, "a2"),
    ]
}

fn target(seconds: u32, business_hours: bool) -> Option<pb::SlaTarget> {
    Some(pb::SlaTarget {
        seconds,
        business_hours,
    })
}

fn policies() -> pb::SlaPolicies {
    pb::SlaPolicies {
        policies: vec![
            pb::SlaPolicy {
                name: "urgent chats".into(),
                conditions: Some(pb::SlaConditions {
                    channels: vec![pb::Channel::Whatsapp as i32, pb::Channel::Webchat as i32],
                    priorities: vec![pb::Priority::Urgent as i32],
                    ..Default::default()
                }),
                first_response: target(120, false),
                next_response: target(600, false),
                resolution: target(14_400, true),
            },
            pb::SlaPolicy {
                name: "everyone".into(),
                // Every conversation (the server answers an absent list as an empty one).
                conditions: Some(pb::SlaConditions::default()),
                first_response: target(300, false),
                next_response: target(900, false),
                resolution: target(28_800, true),
            },
        ],
    }
}

fn business_hours() -> pb::BusinessHours {
    pb::BusinessHours {
        time_zone: "UTC".into(),
        days: (1..=5)
            .map(|weekday| pb::DayHours {
                weekday,
                intervals: vec![pb::OpenInterval {
                    open: "09:00".into(),
                    close: "17:00".into(),
                }],
            })
            .collect(),
        holidays: vec!["2026-03-06".into()],
    }
}

/// Business hours and the policies for the tenant of `key`.
async fn configure(app: &TestApp, key: &str) {
    let settings = app
        .metrics()
        .update_settings(with_key(
            pb::UpdateSettingsRequest {
                business_hours: Some(business_hours()),
                sla_policies: Some(policies()),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    assert_eq!(settings.sla_policies, policies().policies);
}

fn week() -> pb::Query {
    pb::Query {
        from: Some(chrono_to_timestamp(t(0))),
        to: Some(chrono_to_timestamp(t(10 * 86_400))),
        ..Default::default()
    }
}

async fn loaded() -> TestApp {
    let app = TestApp::spawn().await;
    configure(&app, &app.api_key.clone()).await;
    let r = app.ingest(&fixture()).await.unwrap();
    assert_eq!(r.accepted as usize, fixture().len());
    app
}

/// (achieved, breached, breach rate, mean seconds over target) of one metric.
fn figures(s: &Option<pb::SlaStats>) -> (u64, u64, Option<f64>, Option<f64>) {
    let s = s.unwrap();
    (s.achieved, s.breached, s.breach_rate, s.over_target.unwrap().mean)
}

async fn sla_of(app: &TestApp, key: &str, q: pb::Query) -> pb::SlaKpis {
    app.metrics()
        .get_overview(with_key(
            pb::GetOverviewRequest {
                query: Some(q),
                compare_previous: false,
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .current
        .unwrap()
        .sla
        .unwrap()
}

async fn breakdown(app: &TestApp, key: &str, dimension: pb::Dimension) -> Vec<(String, pb::SlaKpis)> {
    app.metrics()
        .get_breakdown(with_key(
            pb::GetBreakdownRequest {
                query: Some(week()),
                dimension: dimension as i32,
                limit: 0,
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .rows
        .into_iter()
        .map(|r| (r.value, r.kpis.unwrap().sla.unwrap()))
        .collect()
}

async fn status(app: &TestApp, key: &str, at: i64, agents: &[&str]) -> pb::GetSlaStatusResponse {
    let mut q = week();
    q.filters = Some(pb::Filters {
        agents: agents.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    });
    app.metrics()
        .get_sla_status(with_key(
            pb::GetSlaStatusRequest {
                query: Some(q),
                at: Some(chrono_to_timestamp(t(at))),
                limit: 0,
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// (conversation, metric, policy, time left) of each at-risk clock.
fn at_risk(s: &pb::GetSlaStatusResponse) -> Vec<(String, String, String, f64)> {
    s.at_risk
        .iter()
        .map(|r| {
            (
                r.conversation_id.clone(),
                r.metric.clone(),
                r.policy.clone(),
                r.time_left_seconds,
            )
        })
        .collect()
}

async fn breached_rows(app: &TestApp, key: &str) -> Vec<pb::ConversationFacts> {
    let mut stream = app
        .metrics()
        .list_conversations(with_key(
            pb::ListConversationsRequest {
                query: Some(week()),
                kpi: pb::DrillDown::SlaBreached as i32,
                limit: 0,
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut rows = Vec::new();
    while let Some(row) = stream.message().await.unwrap() {
        rows.push(row);
    }
    rows
}

#[tokio::test]
async fn every_clock_of_the_week_is_judged_as_computed_by_hand() {
    let app = loaded().await;
    let sla = sla_of(&app, &app.api_key, week()).await;
    // First response: c3 achieved; c1 over by 40, c4 by 75: mean (40 + 75) / 2 = 57.5.
    assert_eq!(
        figures(&sla.first_response),
        (1, 2, Some(200.0 / 3.0), Some(57.5))
    );
    // Next response: c1's second achieved; c1 by 200, c2 by 90, c3 by 337,500:
    // mean 337,790 / 3.
    assert_eq!(
        figures(&sla.next_response),
        (1, 3, Some(75.0), Some(337_790.0 / 3.0))
    );
    // Resolution: c1 achieved; c2 by 900, c3 by 7200: mean 4050.
    assert_eq!(figures(&sla.resolution), (1, 2, Some(200.0 / 3.0), Some(4050.0)));
    // Overall: 3 achieved, 7 breached; over-target mean (115 + 337,790 + 8100) / 7.
    assert_eq!(figures(&sla.overall), (3, 7, Some(70.0), Some(346_005.0 / 7.0)));
    // p90 of c1's 200, c2's 90 and c3's 337,500 over target (sorted 90, 200, 337,500):
    // position 0.9 * 2 = 1.8 -> 200 + 0.8 * (337,500 - 200) = 270,040.
    let p90 = sla.next_response.unwrap().over_target.unwrap().p90.unwrap();
    assert!((p90 - 270_040.0).abs() < 1e-6, "{p90}");
}

#[tokio::test]
async fn clocks_are_placed_by_their_stop() {
    let app = loaded().await;
    // Thursday 00:00 to the next Wednesday: only c3's clocks stopped then (its first response
    // Thursday, the rest on Tuesday).
    let q = pb::Query {
        from: Some(chrono_to_timestamp(t(3 * 86_400 - 9 * 3600))),
        to: Some(chrono_to_timestamp(t(9 * 86_400))),
        ..Default::default()
    };
    let sla = sla_of(&app, &app.api_key, q).await;
    assert_eq!(figures(&sla.first_response), (1, 0, Some(0.0), None));
    assert_eq!(figures(&sla.next_response), (0, 1, Some(100.0), Some(337_500.0)));
    assert_eq!(figures(&sla.resolution), (0, 1, Some(100.0), Some(7200.0)));
}

#[tokio::test]
async fn breakdowns_by_policy_and_agent_split_the_clocks() {
    let app = loaded().await;
    let count = |s: &pb::SlaKpis| {
        [&s.first_response, &s.next_response, &s.resolution, &s.overall].map(|m| {
            let m = m.unwrap();
            (m.achieved, m.breached)
        })
    };
    let by_policy: Vec<(String, [(u64, u64); 4])> = breakdown(&app, &app.api_key, pb::Dimension::SlaPolicy)
        .await
        .iter()
        .map(|(name, s)| (name.clone(), count(s)))
        .collect();
    assert_eq!(
        by_policy,
        vec![
            // c4's first response; c1's two next responses and c2's; c2's resolution.
            ("urgent chats".to_owned(), [(0, 1), (1, 2), (0, 1), (1, 4)]),
            // c3's and c1's first responses; c3's next response; c1's and c3's resolutions.
            ("everyone".to_owned(), [(1, 1), (0, 1), (1, 1), (2, 3)]),
        ]
    );
    // Rows of agents with other KPIs only (the bot's first responses: agent "") have no clocks.
    let by_agent: Vec<(String, [(u64, u64); 4])> = breakdown(&app, &app.api_key, pb::Dimension::Agent)
        .await
        .iter()
        .map(|(name, s)| (name.clone(), count(s)))
        .filter(|(_, c)| c[3] != (0, 0))
        .collect();
    assert_eq!(
        by_agent,
        vec![
            // a1 answered or resolved every clock of c1.
            ("a1".to_owned(), [(0, 1), (1, 1), (1, 0), (2, 2)]),
            // a2: c4's first response, c2's next response and resolution.
            ("a2".to_owned(), [(0, 1), (0, 1), (0, 1), (0, 3)]),
            // a3: c3's clocks; its closed next response goes to the conversation's agent, a3.
            ("a3".to_owned(), [(1, 0), (0, 1), (0, 1), (1, 2)]),
        ]
    );
}

#[tokio::test]
async fn running_clocks_at_an_instant_are_listed_by_time_left() {
    let app = loaded().await;
    // At 1200: c1's next response has run 700 s of its 600 (-100 left); c4's resolution 600
    // business seconds of 14,400 (13,800 left); c1's resolution 1200 of 28,800 (27,600 left).
    let s = status(&app, &app.api_key, 1200, &[]).await;
    let pair = |a: &Option<pb::SlaActive>| a.map(|a| (a.active, a.active_breached));
    assert_eq!(pair(&s.first_response), Some((0, 0)));
    assert_eq!(pair(&s.next_response), Some((1, 1)));
    assert_eq!(pair(&s.resolution), Some((2, 0)));
    assert_eq!(pair(&s.overall), Some((3, 1)));
    assert_eq!(
        at_risk(&s),
        vec![
            ("c1".into(), "next_response".into(), "urgent chats".into(), -100.0),
            ("c4".into(), "resolution".into(), "urgent chats".into(), 13_800.0),
            ("c1".into(), "resolution".into(), "everyone".into(), 27_600.0),
        ]
    );
    let c1 = &s.at_risk[0];
    assert_eq!(
        (c1.assignee.as_str(), c1.channel.as_str(), c1.priority.as_str()),
        ("a1", "webchat", "urgent")
    );
    assert_eq!(c1.elapsed_seconds, 700.0);
    // The agent filter picks clocks by the assignee at the instant: a2 has only c4's.
    let s = status(&app, &app.api_key, 1200, &["a2"]).await;
    assert_eq!(
        at_risk(&s),
        vec![("c4".into(), "resolution".into(), "urgent chats".into(), 13_800.0)]
    );
}

#[tokio::test]
async fn the_resolution_clock_pauses_while_waiting_on_the_customer() {
    let app = loaded().await;
    // c1 waits from 1400 to 5000. At 3000 its resolution ran 3000 - 1600 waiting = 1400 s
    // (27,400 left), at 4000 still 1400 s; c4's ran on: 2400 then 3400 s of 14,400.
    let left = |s: &pb::GetSlaStatusResponse, conv: &str| {
        s.at_risk
            .iter()
            .find(|r| r.conversation_id == conv && r.metric == "resolution")
            .map(|r| r.time_left_seconds)
    };
    let at_3000 = status(&app, &app.api_key, 3000, &[]).await;
    let at_4000 = status(&app, &app.api_key, 4000, &[]).await;
    assert_eq!(
        (left(&at_3000, "c1"), left(&at_4000, "c1")),
        (Some(27_400.0), Some(27_400.0))
    );
    assert_eq!(
        (left(&at_3000, "c4"), left(&at_4000, "c4")),
        (Some(12_000.0), Some(11_000.0))
    );
}

/// One listed breach: metric, policy, target seconds, actual seconds.
type Breach = (String, String, u32, f64);

#[tokio::test]
async fn the_drill_down_lists_each_breach_with_its_policy_target_and_time() {
    let app = loaded().await;
    let rows = breached_rows(&app, &app.api_key).await;
    let listed: Vec<(String, Vec<Breach>)> = rows
        .iter()
        .map(|r| {
            let breaches = r
                .sla_breaches
                .iter()
                .map(|b| {
                    (
                        b.metric.clone(),
                        b.policy.clone(),
                        b.target_seconds,
                        b.actual_seconds,
                    )
                })
                .collect();
            (r.conversation_id.clone(), breaches)
        })
        .collect();
    let b = |metric: &str, policy: &str, target: u32, actual: f64| {
        (metric.to_owned(), policy.to_owned(), target, actual)
    };
    // By opened_at: c1 (0), c4 (600), c2 (7200), c3 (284,400).
    assert_eq!(
        listed,
        vec![
            (
                "c1".into(),
                vec![
                    b("first_response", "everyone", 300, 340.0),
                    b("next_response", "urgent chats", 600, 800.0)
                ]
            ),
            ("c4".into(), vec![b("first_response", "urgent chats", 120, 195.0)]),
            (
                "c2".into(),
                vec![
                    b("next_response", "urgent chats", 600, 690.0),
                    b("resolution", "urgent chats", 14_400, 15_300.0)
                ]
            ),
            (
                "c3".into(),
                vec![
                    b("next_response", "everyone", 900, 338_400.0),
                    b("resolution", "everyone", 28_800, 36_000.0)
                ]
            ),
        ]
    );
    // The CSV carries them as metric:policy:actual/target.
    let csv = crate::helpers::http(
        app.addr,
        "GET",
        "/v1/conversations.csv?kpi=sla_breached&from=2026-03-02T09:00:00Z&to=2026-03-12T09:00:00Z",
        &[("authorization", &format!("Bearer {}", app.api_key))],
        Vec::new(),
    )
    .await;
    assert_eq!(csv.status, 200, "{}", csv.text());
    let text = csv.text();
    assert!(text.lines().next().unwrap().ends_with(",sla_breaches"), "{text}");
    assert!(
        text.contains("c3,")
            && text.contains("next_response:everyone:338400/900;resolution:everyone:36000/28800"),
        "{text}"
    );
}

#[tokio::test]
async fn shuffled_and_duplicated_events_give_the_same_clocks() {
    let app = loaded().await;
    let (_, other) = chatkpi::store::tenants::create_tenant(&app.pool, "shuffled")
        .await
        .unwrap();
    let other = other.plaintext;
    configure(&app, &other).await;
    let mut events = fixture();
    events.extend(fixture().into_iter().step_by(2));
    events.shuffle(&mut rand::rngs::StdRng::seed_from_u64(18));
    for batch in events.chunks(7) {
        let request = with_key(
            pb::IngestEventsRequest {
                events: batch.iter().map(chatkpi::grpc::convert::event_to_proto).collect(),
            },
            &other,
        );
        app.events().ingest_events(request).await.unwrap();
    }
    let answers = |key: String| {
        let app = &app;
        async move {
            let mut out = vec![format!("{:?}", sla_of(app, &key, week()).await)];
            for d in [
                pb::Dimension::SlaPolicy,
                pb::Dimension::Agent,
                pb::Dimension::Priority,
            ] {
                out.push(format!("{:?}", breakdown(app, &key, d).await));
            }
            for at in [1200, 3000, 22_000, 400_000] {
                out.push(format!("{:?}", status(app, &key, at, &[]).await));
            }
            for row in breached_rows(app, &key).await {
                out.push(format!("{:?}", row.sla_breaches));
            }
            out
        }
    };
    let (mine, theirs) = (answers(app.api_key.clone()).await, answers(other).await);
    assert_eq!(mine.len(), theirs.len());
    for (a, b) in mine.iter().zip(&theirs) {
        assert_eq!(a, b);
    }
}

#[tokio::test]
async fn the_json_face_answers_the_sla_status() {
    let app = loaded().await;
    let answer = app
        .post_json(
            "/chatkpi.v1.MetricsService/GetSlaStatus",
            &serde_json::json!({ "at": "2026-03-02T09:20:00Z" }),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    // At 1200 (09:20): the same three clocks as over gRPC; the first breached by 100 s.
    assert_eq!(json["atRisk"][0]["conversationId"], "c1");
    assert_eq!(json["atRisk"][0]["timeLeftSeconds"].as_f64(), Some(-100.0));
    assert_eq!(json["overall"]["active"], "3");
    let settings = app
        .post_json("/chatkpi.v1.MetricsService/GetSettings", &serde_json::json!({}))
        .await;
    assert_eq!(settings.json()["slaPolicies"][0]["name"], "urgent chats");
}

#[tokio::test]
async fn every_bad_value_of_a_policy_is_named() {
    let app = TestApp::spawn().await;
    let update = |policies: Vec<pb::SlaPolicy>| pb::UpdateSettingsRequest {
        sla_policies: Some(pb::SlaPolicies { policies }),
        ..Default::default()
    };
    let good = policies().policies[1].clone();
    let with = |change: fn(&mut pb::SlaPolicy)| {
        let mut p = good.clone();
        change(&mut p);
        vec![p]
    };
    let cases: Vec<(Vec<pb::SlaPolicy>, &str)> = vec![
        (
            with(|p| p.name.clear()),
            "sla_policies.policies[0].name: must be set",
        ),
        (
            with(|p| {
                p.first_response = None;
                p.next_response = None;
                p.resolution = None;
            }),
            "sla_policies.policies[0].first_response: a policy needs at least one target",
        ),
        (
            with(|p| p.first_response = target(0, false)),
            "sla_policies.policies[0].first_response.seconds: must be between 1 and 31536000",
        ),
        (
            with(|p| p.resolution = target(31_536_001, false)),
            "sla_policies.policies[0].resolution.seconds: must be between 1 and 31536000",
        ),
        (
            with(|p| {
                p.conditions = Some(pb::SlaConditions {
                    channels: vec![99],
                    ..Default::default()
                })
            }),
            "sla_policies.policies[0].conditions.channels[0]:",
        ),
        (
            with(|p| {
                p.conditions = Some(pb::SlaConditions {
                    priorities: vec![0],
                    ..Default::default()
                })
            }),
            "sla_policies.policies[0].conditions.priorities[0]:",
        ),
        (
            (0..101)
                .map(|i| {
                    let mut p = good.clone();
                    p.name = format!("p{i}");
                    p
                })
                .collect(),
            "sla_policies.policies: at most 100 policies, got 101",
        ),
        (vec![good.clone(), good.clone()], "sla_policies.policies[1].name:"),
        // A business-hours target needs the tenant's business hours.
        (
            vec![good.clone()],
            "sla_policies.policies[0].resolution.business_hours: measures in business hours",
        ),
    ];
    for (policies, wanted) in cases {
        let status = app
            .metrics()
            .update_settings(app.authed(update(policies)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{wanted}");
        assert!(
            status.message().starts_with(wanted),
            "{wanted} <- {}",
            status.message()
        );
    }
    // Nothing was stored.
    let settings = app
        .metrics()
        .get_settings(app.authed(pb::GetSettingsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(settings.sla_policies.is_empty());
}
