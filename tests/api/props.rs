//! Property tests through the whole service: arbitrary strings, numbers, timestamps and query
//! values go through decoding, validation, storage and every query RPC. Whatever comes in, no
//! call panics or answers INTERNAL, every rejection names its field, and no KPI leaves its
//! possible range.
//!
//! `PROPTEST_CASES` sets the number of cases (the suite runs 1,000 batches and 2,000 query sets; a longer
//! run: `PROPTEST_CASES=5000 scripts/test.sh props`).

use chatkpi::grpc::pb;
use pb::event::Payload as P;
use pbjson_types::{Duration as PbDuration, Timestamp};
use proptest::{prelude::*, test_runner::TestRunner};
use tonic::Code;

use crate::helpers::{Options, TestApp};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-c]{1,3}",
        1 => Just(String::new()),
        1 => "\\PC{0,12}",
        1 => "[ab\\x00]{1,4}",
        1 => "[a-z]{127,131}",
    ]
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0i32..6, 1 => any::<i32>()]
}

fn timestamp() -> impl Strategy<Value = Option<Timestamp>> {
    prop_oneof![
        6 => (1_772_000_000i64..1_773_000_000, 0i32..1_000_000_000)
            .prop_map(|(seconds, nanos)| Some(Timestamp { seconds, nanos })),
        1 => (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Some(Timestamp { seconds, nanos })),
        1 => Just(None),
    ]
}

fn payload() -> impl Strategy<Value = Option<P>> {
    let opt_text = || proptest::option::of(text());
    prop_oneof![
        (text(), enum_value(), opt_text(), enum_value()).prop_map(
            |(customer_id, channel, inbox, priority)| {
                Some(P::ConversationOpened(pb::ConversationOpened {
                    customer_id,
                    channel,
                    inbox,
                    priority,
                    ..Default::default()
                }))
            }
        ),
        (text(), enum_value(), text()).prop_map(|(message_id, sender, agent_id)| {
            Some(P::Message(pb::Message {
                message_id,
                sender,
                agent_id,
                private: false,
            }))
        }),
        (text(), enum_value()).prop_map(|(message_id, status)| {
            Some(P::MessageStatus(pb::MessageStatusChanged {
                message_id,
                status,
                ..Default::default()
            }))
        }),
        text().prop_map(|agent_id| Some(P::Assigned(pb::Assigned { agent_id, team: None }))),
        (
            proptest::collection::vec(text(), 0..3),
            proptest::collection::vec(text(), 0..3)
        )
            .prop_map(|(added, removed)| Some(P::TagsChanged(pb::TagsChanged { added, removed }))),
        (enum_value(), opt_text())
            .prop_map(|(by, agent_id)| Some(P::Resolved(pb::Resolved { by, agent_id }))),
        Just(Some(P::Reopened(pb::Reopened {}))),
        (
            enum_value(),
            any::<i32>(),
            proptest::option::of(any::<i32>()),
            proptest::option::of(any::<i32>())
        )
            .prop_map(|(survey, score, scale_min, scale_max)| {
                Some(P::SurveyResponse(pb::SurveyResponse {
                    survey,
                    score,
                    scale_min,
                    scale_max,
                    agent_id: None,
                }))
            }),
        enum_value().prop_map(|survey| Some(P::SurveySent(pb::SurveySent { survey }))),
        (
            text(),
            text(),
            proptest::option::of(any::<i64>()),
            proptest::option::of("[A-Z]{2,4}")
        )
            .prop_map(|(customer_id, kind, value_minor, currency)| {
                Some(P::Conversion(pb::Conversion {
                    customer_id,
                    kind,
                    value_minor,
                    currency,
                }))
            }),
        (text(), enum_value())
            .prop_map(|(agent_id, status)| Some(P::AgentStatus(pb::AgentStatus { agent_id, status }))),
        Just(None),
    ]
}

fn event() -> impl Strategy<Value = pb::Event> {
    (
        text(),
        prop_oneof![3 => "c[1-4]", 1 => text()],
        timestamp(),
        payload(),
    )
        .prop_map(|(event_id, conversation_id, occurred_at, payload)| pb::Event {
            event_id,
            conversation_id,
            occurred_at,
            payload,
        })
}

fn duration() -> impl Strategy<Value = Option<PbDuration>> {
    prop_oneof![
        2 => Just(None),
        2 => (0i64..1_000_000).prop_map(|seconds| Some(PbDuration { seconds, nanos: 0 })),
        1 => (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Some(PbDuration { seconds, nanos })),
    ]
}

fn query() -> impl Strategy<Value = pb::Query> {
    (
        timestamp(),
        timestamp(),
        prop_oneof![
            Just("UTC".to_owned()),
            Just("Europe/Berlin".to_owned()),
            Just(String::new()),
            text()
        ],
        any::<bool>(),
        duration(),
        duration(),
        proptest::collection::vec(enum_value(), 0..2),
        proptest::collection::vec(text(), 0..2),
    )
        .prop_map(
            |(from, to, time_zone, business_hours, repeat_window, attribution_window, channels, agents)| {
                pb::Query {
                    from,
                    to,
                    time_zone,
                    business_hours,
                    repeat_window,
                    attribution_window,
                    filters: Some(pb::Filters {
                        channels,
                        agents,
                        ..Default::default()
                    }),
                    conversion_kinds: vec![],
                }
            },
        )
}

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A status a client may get for what it sent: never INTERNAL or UNKNOWN, and an
/// INVALID_ARGUMENT names its field (`field: reason`).
fn acceptable(status: &tonic::Status) -> Result<(), TestCaseError> {
    match status.code() {
        Code::InvalidArgument => {
            let (field, reason) = status
                .message()
                .split_once(": ")
                .ok_or_else(|| TestCaseError::fail(format!("no field in {status:?}")))?;
            prop_assert!(!field.is_empty() && !reason.is_empty(), "{status:?}");
            Ok(())
        }
        Code::FailedPrecondition => Ok(()),
        _ => Err(TestCaseError::fail(format!("unexpected status {status:?}"))),
    }
}

fn rate(value: Option<f64>, name: &str) -> Result<(), TestCaseError> {
    if let Some(v) = value {
        prop_assert!((0.0..=100.0).contains(&v), "{name} = {v}");
    }
    Ok(())
}

fn durations(d: &Option<pb::DurationStats>, name: &str) -> Result<(), TestCaseError> {
    let Some(d) = d else { return Ok(()) };
    let ordered = [d.min, d.p50, d.p90, d.p95, d.p99, d.max];
    let known: Vec<f64> = ordered.iter().flatten().copied().collect();
    prop_assert!(known.iter().all(|v| *v >= 0.0 && v.is_finite()), "{name}: {d:?}");
    prop_assert!(
        known.windows(2).all(|w| w[0] <= w[1] * (1.0 + 1e-9)),
        "{name} not ordered: {d:?}"
    );
    if let (Some(mean), Some(min), Some(max)) = (d.mean, d.min, d.max) {
        prop_assert!(
            min <= mean * (1.0 + 1e-9) && mean <= max * (1.0 + 1e-9),
            "{name}: {d:?}"
        );
    }
    rate(d.within_target, name)
}

/// Every KPI within its possible range (docs/metrics.md §5; survey response rates may pass 100 %,
/// docs/metrics.md).
fn kpis_in_range(k: &pb::Kpis) -> Result<(), TestCaseError> {
    for (v, name) in [
        (k.delivery_rate, "delivery_rate"),
        (k.read_rate, "read_rate"),
        (k.fcr_rate, "fcr_rate"),
        (k.repeat_contact_rate, "repeat_contact_rate"),
        (k.reopen_rate, "reopen_rate"),
        (k.missed_rate, "missed_rate"),
        (k.automation_rate, "automation_rate"),
        (k.bot_handoff_rate, "bot_handoff_rate"),
        (k.conversion.as_ref().and_then(|c| c.rate), "conversion.rate"),
        (k.retention.as_ref().and_then(|r| r.rate), "retention.rate"),
        (k.csat.as_ref().and_then(|c| c.csat_percent), "csat_percent"),
    ] {
        rate(v, name)?;
    }
    for (d, name) in [
        (&k.first_response, "first_response"),
        (&k.bot_first_response, "bot_first_response"),
        (&k.human_first_response, "human_first_response"),
        (&k.reply, "reply"),
        (&k.wait, "wait"),
        (&k.resolution, "resolution"),
        (&k.duration, "duration"),
    ] {
        durations(d, name)?;
    }
    if let Some(mean) = k.csat.as_ref().and_then(|c| c.mean_score) {
        prop_assert!((1.0..=5.0).contains(&mean), "csat mean {mean}");
    }
    if let Some(nps) = k.nps.as_ref().and_then(|n| n.nps) {
        prop_assert!((-100.0..=100.0).contains(&nps), "nps {nps}");
    }
    if let Some(mean) = k.ces.as_ref().and_then(|c| c.mean_score) {
        prop_assert!((1.0..=7.0).contains(&mean), "ces mean {mean}");
    }
    for v in [
        k.messages_per_chat,
        k.customer_messages_per_chat,
        k.agent_messages_per_chat,
        k.bot_messages_per_chat,
    ]
    .into_iter()
    .flatten()
    {
        prop_assert!(v >= 0.0 && v.is_finite(), "messages per chat {v}");
    }
    prop_assert!(k.messages_delivered <= k.messages_sent, "{k:?}");
    prop_assert!(k.resolved <= k.resolutions.max(k.resolved), "{k:?}");
    for share in k.tags.iter().chain(&k.channels) {
        rate(share.share, "share")?;
    }
    if let Some(c) = &k.conversion {
        prop_assert!(c.converted <= c.customers, "{c:?}");
    }
    Ok(())
}

#[test]
fn arbitrary_events_and_queries_never_break_the_service() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Rate limits out of the way: this test is about values, not volume.
    let limits = chatkpi::config::Limits {
        tenant_queries_per_sec: 1_000_000,
        tenant_events_per_sec: 1_000_000,
        ..Default::default()
    };
    let app = rt.block_on(TestApp::spawn_with(Options {
        limits,
        ..Options::default()
    }));

    // Batches: every event gets an outcome; a rejection names a field of its own event.
    let mut runner = TestRunner::new(config(1000));
    runner
        .run(&proptest::collection::vec(event(), 1..20), |events| {
            rt.block_on(async {
                let n = events.len();
                match app.ingest_proto(events).await {
                    Ok(r) => {
                        prop_assert_eq!(r.results.len(), n);
                        for (i, result) in r.results.iter().enumerate() {
                            if result.outcome == pb::EventOutcome::Rejected as i32 {
                                prop_assert!(
                                    result.field.starts_with(&format!("events[{i}]."))
                                        && !result.reason.is_empty(),
                                    "{result:?}"
                                );
                            }
                        }
                        Ok(())
                    }
                    Err(status) => acceptable(&status),
                }
            })
        })
        .unwrap();

    // Queries over what was stored: an answer within range, or a clear refusal.
    let mut runner = TestRunner::new(config(2000));
    runner
        .run(&(query(), any::<bool>()), |(q, compare_previous)| {
            rt.block_on(async {
                let mut metrics = app.metrics();
                match metrics
                    .get_overview(app.authed(pb::GetOverviewRequest {
                        query: Some(q.clone()),
                        compare_previous,
                    }))
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        for k in r.current.iter().chain(r.previous.iter()) {
                            kpis_in_range(k)?;
                        }
                    }
                    Err(status) => acceptable(&status)?,
                }
                match metrics
                    .get_breakdown(app.authed(pb::GetBreakdownRequest {
                        limit: 0,
                        query: Some(q.clone()),
                        dimension: pb::Dimension::Agent as i32,
                    }))
                    .await
                {
                    Ok(r) => {
                        for row in r.into_inner().rows {
                            kpis_in_range(row.kpis.as_ref().expect("kpis"))?;
                        }
                    }
                    Err(status) => acceptable(&status)?,
                }
                match metrics
                    .get_time_series(app.authed(pb::GetTimeSeriesRequest {
                        query: Some(q.clone()),
                        granularity: pb::Granularity::Day as i32,
                    }))
                    .await
                {
                    Ok(r) => {
                        for p in r.into_inner().points {
                            kpis_in_range(p.kpis.as_ref().expect("kpis"))?;
                        }
                    }
                    Err(status) => acceptable(&status)?,
                }
                for (name, result) in [
                    (
                        "backlog",
                        metrics
                            .get_backlog(app.authed(pb::GetBacklogRequest {
                                query: Some(q.clone()),
                                at: q.to,
                            }))
                            .await
                            .map(|r| durations(&r.into_inner().age, "backlog age")),
                    ),
                    (
                        "utilization",
                        metrics
                            .get_utilization(app.authed(pb::GetUtilizationRequest {
                                query: Some(q.clone()),
                            }))
                            .await
                            .map(|_| Ok(())),
                    ),
                    (
                        "scorecard",
                        metrics
                            .get_scorecard(app.authed(pb::GetScorecardRequest {
                                query: Some(q.clone()),
                            }))
                            .await
                            .map(|_| Ok(())),
                    ),
                ] {
                    match result {
                        Ok(check) => check.map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?,
                        Err(status) => acceptable(&status)?,
                    }
                }
                match metrics
                    .list_conversations(app.authed(pb::ListConversationsRequest {
                        query: Some(q),
                        kpi: pb::DrillDown::Opened as i32,
                        limit: 50,
                    }))
                    .await
                {
                    Ok(rows) => {
                        let mut rows = rows.into_inner();
                        loop {
                            match rows.message().await {
                                Ok(Some(_)) => {}
                                Ok(None) => break,
                                Err(status) => return acceptable(&status),
                            }
                        }
                    }
                    Err(status) => acceptable(&status)?,
                }
                Ok(())
            })
        })
        .unwrap();
}
