//! Each docs/metrics.md §2 validation rule rejects just its event, with the field path; the rest of
//! the batch is stored. Oversized batches are rejected whole.

use chatkpi::grpc::{convert::chrono_to_timestamp, pb};
use chrono::{Duration, TimeZone, Utc};
use pb::event::Payload as P;
use tonic::Code;

use crate::helpers::{TestApp, outcomes};

fn valid(id: &str) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        conversation_id: "conv-1".into(),
        occurred_at: Some(chrono_to_timestamp(
            Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap(),
        )),
        payload: Some(P::Message(pb::Message {
            message_id: format!("m-{id}"),
            sender: pb::Sender::Customer as i32,
            agent_id: String::new(),
            private: false,
        })),
    }
}

fn with(id: &str, change: impl FnOnce(&mut pb::Event)) -> pb::Event {
    let mut e = valid(id);
    change(&mut e);
    e
}

fn survey(survey: pb::SurveyType, score: i32, min: Option<i32>, max: Option<i32>) -> Option<P> {
    Some(P::SurveyResponse(pb::SurveyResponse {
        survey: survey as i32,
        score,
        scale_min: min,
        scale_max: max,
        agent_id: None,
    }))
}

fn conversion(kind: &str, value: Option<i64>, currency: Option<&str>) -> Option<P> {
    Some(P::Conversion(pb::Conversion {
        customer_id: "cust".into(),
        kind: kind.into(),
        value_minor: value,
        currency: currency.map(str::to_owned),
    }))
}

#[tokio::test]
async fn each_validation_rule_rejects_only_its_event_with_the_field_path() {
    let app = TestApp::spawn().await;
    let cases: Vec<(pb::Event, &str)> = vec![
        (with("", |_| {}), "event_id"),
        (with(&"x".repeat(129), |_| {}), "event_id"),
        (with("v-conv", |e| e.conversation_id.clear()), "conversation_id"),
        (
            with("v-conv-long", |e| e.conversation_id = "c".repeat(129)),
            "conversation_id",
        ),
        (with("v-no-time", |e| e.occurred_at = None), "occurred_at"),
        (
            with("v-1999", |e| {
                e.occurred_at = Some(chrono_to_timestamp(
                    Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap(),
                ))
            }),
            "occurred_at",
        ),
        (
            with("v-future", |e| {
                e.occurred_at = Some(chrono_to_timestamp(Utc::now() + Duration::hours(25)))
            }),
            "occurred_at",
        ),
        (with("v-no-payload", |e| e.payload = None), "payload"),
        (
            with("v-sender", |e| {
                e.payload = Some(P::Message(pb::Message {
                    message_id: "m".into(),
                    sender: 0,
                    agent_id: String::new(),
                    private: false,
                }))
            }),
            "message.sender",
        ),
        (
            with("v-sender-unknown", |e| {
                e.payload = Some(P::Message(pb::Message {
                    message_id: "m".into(),
                    sender: 42,
                    agent_id: String::new(),
                    private: false,
                }))
            }),
            "message.sender",
        ),
        (
            with("v-agent", |e| {
                e.payload = Some(P::Message(pb::Message {
                    message_id: "m".into(),
                    sender: pb::Sender::Agent as i32,
                    agent_id: String::new(),
                    private: false,
                }))
            }),
            "message.agent_id",
        ),
        (
            with("v-channel", |e| {
                e.payload = Some(P::ConversationOpened(pb::ConversationOpened {
                    customer_id: "c".into(),
                    ..Default::default()
                }))
            }),
            "conversation_opened.channel",
        ),
        (
            with("v-status", |e| {
                e.payload = Some(P::MessageStatus(pb::MessageStatusChanged {
                    message_id: "m".into(),
                    status: 9,
                    ..Default::default()
                }))
            }),
            "message_status.status",
        ),
        (
            with("v-resolved", |e| {
                e.payload = Some(P::Resolved(pb::Resolved {
                    by: 0,
                    agent_id: None,
                }))
            }),
            "resolved.by",
        ),
        (
            with("v-presence", |e| {
                e.payload = Some(P::AgentStatus(pb::AgentStatus {
                    agent_id: "a".into(),
                    status: 0,
                }))
            }),
            "agent_status.status",
        ),
        (
            with("v-score", |e| {
                e.payload = survey(pb::SurveyType::Csat, 6, None, None)
            }),
            "survey_response.score",
        ),
        (
            with("v-scale", |e| {
                e.payload = survey(pb::SurveyType::Csat, 3, Some(5), Some(3))
            }),
            "survey_response.scale_min",
        ),
        (
            with("v-nps", |e| {
                e.payload = survey(pb::SurveyType::Nps, 3, None, Some(5))
            }),
            "survey_response.scale_max",
        ),
        (
            with("v-currency", |e| {
                e.payload = conversion("sale", Some(100), Some("eur"))
            }),
            "conversion.currency",
        ),
        (
            with("v-value", |e| {
                e.payload = conversion("sale", Some(-1), Some("EUR"))
            }),
            "conversion.value_minor",
        ),
        (
            with("v-kind", |e| e.payload = conversion("Big Sale", None, None)),
            "conversion.kind",
        ),
        (
            with("v-value-huge", |e| {
                e.payload = conversion("sale", Some(i64::MAX), Some("EUR"))
            }),
            "conversion.value_minor",
        ),
        (
            with("v-scale-wide", |e| {
                e.payload = survey(pb::SurveyType::Csat, 0, Some(i32::MIN), Some(i32::MAX))
            }),
            "survey_response.scale_min",
        ),
        (
            with("v-tag", |e| {
                e.payload = Some(P::TagsChanged(pb::TagsChanged {
                    added: vec!["ok".into(), String::new()],
                    removed: vec![],
                }))
            }),
            "tags_changed.added[1]",
        ),
    ];
    let mut cases = cases;
    cases.extend(nul_cases());
    // Valid events around the bad ones: they must be stored.
    let mut batch = vec![valid("ok-1")];
    batch.extend(cases.iter().map(|(e, _)| e.clone()));
    batch.push(valid("ok-2"));

    let response = app.ingest_proto(batch).await.unwrap();
    let mut expected = vec!["accepted"];
    expected.extend(std::iter::repeat_n("rejected", cases.len()));
    expected.push("accepted");
    assert_eq!(outcomes(&response.results), expected);
    for (i, (_, field)) in cases.iter().enumerate() {
        let result = &response.results[i + 1];
        assert_eq!(result.index as usize, i + 1);
        assert_eq!(
            result.field,
            format!("events[{}].{field}", i + 1),
            "reason: {}",
            result.reason
        );
        assert!(!result.reason.is_empty());
    }
    assert_eq!(response.rejected as usize, cases.len());
    assert_eq!(app.event_count().await, 2);
}

/// A NUL character (which PostgreSQL text cannot store) in every string field an event can carry,
/// with the path each must be rejected under.
fn nul_cases() -> Vec<(pb::Event, &'static str)> {
    const NUL: &str = "x\u{0}y";
    let opened = |change: fn(&mut pb::ConversationOpened)| {
        let mut o = pb::ConversationOpened {
            customer_id: "c".into(),
            channel: pb::Channel::Sms as i32,
            ..Default::default()
        };
        change(&mut o);
        Some(P::ConversationOpened(o))
    };
    vec![
        (with(NUL, |_| {}), "event_id"),
        (
            with("n-conv", |e| e.conversation_id = NUL.into()),
            "conversation_id",
        ),
        (
            with("n-customer", |e| {
                e.payload = opened(|o| o.customer_id = NUL.into())
            }),
            "conversation_opened.customer_id",
        ),
        (
            with("n-inbox", |e| e.payload = opened(|o| o.inbox = Some(NUL.into()))),
            "conversation_opened.inbox",
        ),
        (
            with("n-team", |e| e.payload = opened(|o| o.team = Some(NUL.into()))),
            "conversation_opened.team",
        ),
        (
            with("n-message", |e| {
                e.payload = Some(P::Message(pb::Message {
                    message_id: NUL.into(),
                    sender: pb::Sender::Customer as i32,
                    agent_id: String::new(),
                    private: false,
                }))
            }),
            "message.message_id",
        ),
        (
            with("n-agent", |e| {
                e.payload = Some(P::Message(pb::Message {
                    message_id: "m".into(),
                    sender: pb::Sender::Agent as i32,
                    agent_id: NUL.into(),
                    private: false,
                }))
            }),
            "message.agent_id",
        ),
        (
            with("n-assigned", |e| {
                e.payload = Some(P::Assigned(pb::Assigned {
                    agent_id: NUL.into(),
                    team: None,
                }))
            }),
            "assigned.agent_id",
        ),
        (
            with("n-tag", |e| {
                e.payload = Some(P::TagsChanged(pb::TagsChanged {
                    added: vec![],
                    removed: vec![NUL.into()],
                }))
            }),
            "tags_changed.removed[0]",
        ),
        (
            with("n-status", |e| {
                e.payload = Some(P::AgentStatus(pb::AgentStatus {
                    agent_id: NUL.into(),
                    status: pb::Presence::Online as i32,
                }))
            }),
            "agent_status.agent_id",
        ),
        (
            with("n-conversion", |e| {
                e.payload = Some(P::Conversion(pb::Conversion {
                    customer_id: NUL.into(),
                    kind: "sale".into(),
                    value_minor: None,
                    currency: None,
                }))
            }),
            "conversion.customer_id",
        ),
    ]
}

#[tokio::test]
async fn an_oversized_batch_is_rejected_whole_with_invalid_argument() {
    let app = TestApp::spawn_with(crate::helpers::Options {
        max_batch: 5,
        ..Default::default()
    })
    .await;
    let batch: Vec<pb::Event> = (0..6).map(|i| valid(&format!("big-{i}"))).collect();
    let status = app.ingest_proto(batch.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "events: batch of 6 events exceeds the limit of 5; split it"
    );
    assert_eq!(app.event_count().await, 0);

    // On a stream, the acked batch stays; the oversized one ends the stream naming its batch.
    let requests = vec![
        pb::StreamEventsRequest {
            batch_id: 1,
            events: batch[..5].to_vec(),
        },
        pb::StreamEventsRequest {
            batch_id: 2,
            events: batch.clone(),
        },
    ];
    let mut acks = app
        .events()
        .stream_events(app.authed(tokio_stream::iter(requests)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acks.message().await.unwrap().unwrap().accepted, 5);
    let status = acks.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("batch_id 2: events: batch of 6 events"),
        "{}",
        status.message()
    );
    assert_eq!(app.event_count().await, 5);
}
