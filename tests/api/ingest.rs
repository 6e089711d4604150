//! Ingest end to end: every event type, duplicates, late and shuffled events, streaming acks.

use chatkpi::{
    domain::{
        event::*,
        facts::{ConversationFacts, DERIVATION, State},
    },
    grpc::{convert::event_to_proto, pb},
    store,
};
use chatkpi_tools::sim::{SimConfig, simulate};
use rand::{Rng, SeedableRng, seq::SliceRandom};

use crate::helpers::{TestApp, ev, outcomes, t};

/// A message of the conversation `c-all`.
fn msg(id: &str, at: i64, sender: Sender, agent: Option<&str>) -> Event {
    crate::helpers::msg(id, "c-all", at, sender, agent)
}

/// One conversation using every conversation event type, one abandoned chat, a conversion
/// and a presence change: all 14 types.
fn every_type() -> Vec<Event> {
    let c = Some("c-all");
    vec![
        ev(
            "e01",
            Some("c-all"),
            0,
            Payload::ConversationOpened(ConversationOpened {
                customer_id: "cust-1".into(),
                channel: Channel::Whatsapp,
                inbox: Some("wa-1".into()),
                team: Some("support".into()),
                priority: None,
                initiated_by: Initiator::Customer,
            }),
        ),
        msg("e02", 10, Sender::Customer, None),
        msg("e03", 12, Sender::Bot, None),
        ev(
            "e04",
            c,
            14,
            Payload::MessageStatus(MessageStatusChanged {
                message_id: "e03".into(),
                status: DeliveryStatus::Read,
                error_code: None,
                category: None,
                implies_message: false,
            }),
        ),
        ev("e05", c, 20, Payload::Handoff),
        ev(
            "e06",
            c,
            30,
            Payload::Assigned(Assigned {
                agent_id: Some("ann".into()),
                team: Some("billing".into()),
            }),
        ),
        ev(
            "e07",
            c,
            31,
            Payload::ConversationUpdated(ConversationUpdated {
                priority: Some(Priority::High),
                team: None,
            }),
        ),
        ev(
            "e08",
            c,
            32,
            Payload::TagsChanged(TagsChanged {
                added: vec!["billing".into(), "vip".into()],
                removed: vec!["vip".into()],
            }),
        ),
        msg("e09", 40, Sender::Agent, Some("ann")),
        ev(
            "e10",
            c,
            100,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Agent,
                agent_id: Some("ann".into()),
            }),
        ),
        ev("e11", c, 200, Payload::Reopened),
        ev(
            "e12",
            c,
            300,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Agent,
                agent_id: Some("ann".into()),
            }),
        ),
        ev(
            "e13",
            c,
            310,
            Payload::SurveySent(SurveySent {
                survey: SurveyType::Csat,
            }),
        ),
        ev(
            "e14",
            c,
            320,
            Payload::SurveyResponse(SurveyResponse {
                survey: SurveyType::Csat,
                score: 4,
                scale: Scale { min: 1, max: 5 },
                agent_id: None,
            }),
        ),
        ev(
            "e15",
            None,
            400,
            Payload::Conversion(Conversion {
                customer_id: "cust-1".into(),
                kind: "sale".into(),
                value_minor: Some(4999),
                currency: Some("EUR".into()),
            }),
        ),
        ev(
            "e16",
            None,
            0,
            Payload::AgentStatus(AgentStatus {
                agent_id: "ann".into(),
                status: Presence::Online,
            }),
        ),
        ev(
            "e17",
            Some("c-ab"),
            50,
            Payload::Message(Message {
                message_id: "ab-1".into(),
                sender: Sender::Customer,
                agent_id: None,
                private: false,
            }),
        ),
        ev("e18", Some("c-ab"), 170, Payload::Abandoned),
    ]
}

async fn facts(app: &TestApp, conversation: &str) -> ConversationFacts {
    store::events::conversation_facts(&app.pool, app.tenant, conversation)
        .await
        .unwrap()
        .expect("facts stored")
}

#[tokio::test]
async fn every_event_type_is_accepted_stored_and_derived() {
    let app = TestApp::spawn().await;
    let events = every_type();
    let kinds: std::collections::BTreeSet<&str> = events.iter().map(|e| e.payload.kind()).collect();
    assert_eq!(kinds.len(), 14);

    let response = app.ingest(&events).await.unwrap();
    assert_eq!(outcomes(&response.results), vec!["accepted"; 18]);
    assert_eq!(
        (response.accepted, response.duplicates, response.rejected),
        (18, 0, 0)
    );
    assert_eq!(app.event_count().await, 18);

    let f = facts(&app, "c-all").await;
    assert_eq!(f.opened_at, t(0));
    assert_eq!(f.channel, Channel::Whatsapp);
    assert_eq!(f.customer_id.as_deref(), Some("cust-1"));
    assert_eq!(
        f.first_response().unwrap().seconds,
        2.0,
        "the bot answered 2 s after the customer"
    );
    assert_eq!(
        f.first_human_response.as_ref().unwrap().seconds,
        20.0,
        "ann answered 20 s after the handoff"
    );
    assert_eq!(f.wait_seconds, Some(10.0), "assigned 10 s after the handoff");
    assert_eq!((f.team.as_deref(), f.priority), (Some("billing"), Priority::High));
    assert_eq!(f.tags, vec!["billing".to_string()]);
    assert_eq!(
        (f.state, f.resolved_at, f.reopen_count),
        (State::Resolved, Some(t(300)), 1)
    );
    assert_eq!(f.resolution_seconds, Some(300.0));
    assert_eq!(f.surveys.len(), 1);
    assert_eq!(
        (f.surveys[0].score, f.surveys[0].agent_id.as_deref()),
        (4, Some("ann"))
    );
    assert_eq!(f.surveys_sent.len(), 1);
    let bot_message = f.messages.iter().find(|m| m.message_id == "e03").unwrap();
    assert!(bot_message.delivered && bot_message.read);

    let abandoned = facts(&app, "c-ab").await;
    assert_eq!(
        (abandoned.state, abandoned.ended_at),
        (State::Abandoned, Some(t(170)))
    );
    assert_eq!(
        store::events::all_conversation_facts(&app.pool, app.tenant)
            .await
            .unwrap()
            .len(),
        2,
        "conversion and presence create no conversation"
    );
}

#[tokio::test]
async fn a_repeated_event_id_is_a_duplicate_whatever_its_content() {
    let app = TestApp::spawn().await;
    let events = every_type();
    app.ingest(&events[..5]).await.unwrap();

    // Same ids again, one with different content, plus a repeat inside the batch.
    let mut again = events[..3].to_vec();
    again[1].occurred_at = t(999);
    again.push(events[5].clone());
    again.push(events[5].clone());
    let response = app.ingest(&again).await.unwrap();
    assert_eq!(
        outcomes(&response.results),
        vec!["duplicate", "duplicate", "duplicate", "accepted", "duplicate"]
    );
    assert_eq!((response.accepted, response.duplicates), (1, 4));
    assert_eq!(app.event_count().await, 6);
    assert_eq!(
        facts(&app, "c-all").await.first_customer_message_at,
        Some(t(10)),
        "the duplicate's content was ignored"
    );
}

#[tokio::test]
async fn late_events_in_later_batches_update_the_facts() {
    let app = TestApp::spawn().await;
    let events = every_type();
    let by_id = |id: &str| events.iter().find(|e| e.event_id == id).unwrap().clone();
    // The read receipt arrives first, alone; then the rest without the agent's message; then
    // the agent's message after the resolution was already stored.
    app.ingest(&[by_id("e04")]).await.unwrap();
    let rest: Vec<Event> = events
        .iter()
        .filter(|e| !["e04", "e09"].contains(&e.event_id.as_str()))
        .cloned()
        .collect();
    app.ingest(&rest).await.unwrap();
    assert_eq!(facts(&app, "c-all").await.first_human_response, None);
    app.ingest(&[by_id("e09")]).await.unwrap();

    let fresh = TestApp::spawn().await;
    fresh.ingest(&events).await.unwrap();
    assert_eq!(facts(&app, "c-all").await, facts(&fresh, "c-all").await);
    assert!(
        facts(&app, "c-all")
            .await
            .messages
            .iter()
            .any(|m| m.message_id == "e03" && m.read)
    );
}

#[tokio::test]
async fn a_batch_completing_several_conversations_derives_each_from_its_own_earlier_events() {
    // Event ids sort against the conversation ids (the `c-a` events last), so earlier events
    // read back in any order but the conversations' own would be matched to the wrong one.
    let conversations = ["c-a", "c-B", "c-b", "c-é"];
    let opened = |i: usize, c: &str| {
        ev(
            &format!("{}-open", 9 - i),
            Some(c),
            i as i64,
            Payload::ConversationOpened(ConversationOpened {
                customer_id: format!("cust-{i}"),
                channel: Channel::Webchat,
                inbox: None,
                team: None,
                priority: None,
                initiated_by: Initiator::Customer,
            }),
        )
    };
    let asked = |i: usize, c: &str| {
        crate::helpers::msg(
            &format!("{}-ask", 9 - i),
            c,
            10 + i as i64,
            Sender::Customer,
            None,
        )
    };
    // Agent replies 60 s, 120 s, ... after each question: every conversation its own time.
    let reply = |i: usize, c: &str| {
        crate::helpers::msg(
            &format!("{}-reply", 9 - i),
            c,
            70 + 61 * i as i64,
            Sender::Agent,
            Some("ann"),
        )
    };
    let first: Vec<Event> = conversations
        .iter()
        .enumerate()
        .flat_map(|(i, c)| [opened(i, c), asked(i, c)])
        .collect();
    let second: Vec<Event> = conversations
        .iter()
        .enumerate()
        .map(|(i, c)| reply(i, c))
        .collect();

    let app = TestApp::spawn().await;
    app.ingest(&first).await.unwrap();
    let r = app.ingest(&second).await.unwrap();
    assert_eq!(r.accepted, 4);

    let whole = TestApp::spawn().await;
    whole.ingest(&[first, second].concat()).await.unwrap();
    for (i, c) in conversations.iter().enumerate() {
        let in_two = facts(&app, c).await;
        assert_eq!(in_two, facts(&whole, c).await, "{c}");
        let response = in_two
            .first_human_response
            .expect("the reply answered the question");
        assert_eq!(
            response.at,
            t(70 + 61 * i as i64),
            "{c} answered by its own reply"
        );
        assert_eq!(in_two.messages.len(), 2, "{c}: its question and its reply");
    }
}

#[tokio::test]
async fn a_shuffled_duplicated_stream_in_concurrent_batches_gives_the_same_facts_as_the_ordered_one() {
    let events = simulate(&SimConfig {
        conversations: 150,
        days: 2,
        seed: 11,
        ..SimConfig::default()
    });
    assert!(
        events.len() > 1500,
        "a meaningful stream: {} events",
        events.len()
    );

    let ordered = TestApp::spawn().await;
    for chunk in events.chunks(500) {
        let r = ordered.ingest(chunk).await.unwrap();
        assert_eq!(r.rejected, 0);
    }

    let shuffled = TestApp::spawn().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut mixed = events.clone();
    // 20 % of events sent twice (possibly in different batches), then everything shuffled.
    for e in &events {
        if rng.random_ratio(1, 5) {
            mixed.push(e.clone());
        }
    }
    mixed.shuffle(&mut rng);
    // Uneven batches sent by three concurrent clients, so batches of one conversation race.
    let mut batches = Vec::new();
    let mut rest = mixed.as_slice();
    while !rest.is_empty() {
        let n = rng.random_range(1..=300).min(rest.len());
        batches.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    let mut tasks = Vec::new();
    for lane in 0..3 {
        let mine: Vec<Vec<Event>> = batches.iter().skip(lane).step_by(3).cloned().collect();
        let client = shuffled.events();
        let key = shuffled.api_key.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let (mut accepted, mut duplicates) = (0u32, 0u32);
            for batch in mine {
                let request = pb::IngestEventsRequest {
                    events: batch.iter().map(event_to_proto).collect(),
                };
                let r = client
                    .ingest_events(crate::helpers::with_key(request, &key))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.rejected, 0);
                accepted += r.accepted;
                duplicates += r.duplicates;
            }
            (accepted, duplicates)
        }));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for task in tasks {
        let (a, d) = task.await.unwrap();
        accepted += a;
        duplicates += d;
    }
    assert_eq!(
        accepted as usize,
        events.len(),
        "every distinct event accepted exactly once"
    );
    assert_eq!(duplicates as usize, mixed.len() - events.len());

    let expected = store::events::all_conversation_facts(&ordered.pool, ordered.tenant)
        .await
        .unwrap();
    let actual = store::events::all_conversation_facts(&shuffled.pool, shuffled.tenant)
        .await
        .unwrap();
    assert_eq!(expected.len(), 150);
    assert!(
        expected == actual,
        "facts differ between ordered and shuffled ingest"
    );
}

#[tokio::test]
async fn stream_events_acks_each_batch_in_order_after_commit() {
    let app = TestApp::spawn().await;
    let events = every_type();
    let batches: Vec<pb::StreamEventsRequest> = events
        .chunks(7)
        .enumerate()
        .map(|(i, chunk)| pb::StreamEventsRequest {
            batch_id: 100 + i as u64,
            events: chunk.iter().map(event_to_proto).collect(),
        })
        .collect();
    let sent = batches.len();
    let mut acks = app
        .events()
        .stream_events(app.authed(tokio_stream::iter(batches)))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        // Committed before the ack: the events are visible to another connection now.
        assert!(app.event_count().await >= ack.accepted as i64);
        assert_eq!(
            ack.results.len() as u32,
            ack.accepted + ack.duplicates + ack.rejected
        );
        ids.push(ack.batch_id);
    }
    assert_eq!(ids, (100..100 + sent as u64).collect::<Vec<_>>());
    assert_eq!(app.event_count().await, 18);
    assert_eq!(facts(&app, "c-all").await.reopen_count, 1);
}

#[tokio::test]
async fn reproject_rebuilds_the_same_facts_from_the_events() {
    let app = TestApp::spawn().await;
    let events = simulate(&SimConfig {
        conversations: 40,
        days: 1,
        seed: 3,
        ..SimConfig::default()
    });
    app.ingest(&events).await.unwrap();
    let before = store::events::all_conversation_facts(&app.pool, app.tenant)
        .await
        .unwrap();
    // Damage the projection: an unreadable record for every conversation.
    sqlx::query("update conversations set record = '\\x00'::bytea where tenant_id = $1")
        .bind(app.tenant)
        .execute(&app.pool)
        .await
        .unwrap();
    let recomputed = store::events::reproject(&app.pool, app.tenant, 7).await.unwrap();
    assert_eq!(recomputed, 40);
    assert!(
        before
            == store::events::all_conversation_facts(&app.pool, app.tenant)
                .await
                .unwrap()
    );
}

/// The derivation that wrote `conversation` of the test's tenant.
async fn derivation_of(app: &TestApp, conversation: &str) -> i16 {
    sqlx::query_scalar("select derivation from conversations where tenant_id = $1 and conversation_id = $2")
        .bind(app.tenant)
        .bind(conversation)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_start_derives_again_what_an_older_derivation_wrote_since_the_last_check() {
    let app = TestApp::spawn().await;
    let events = simulate(&SimConfig {
        conversations: 5,
        days: 1,
        seed: 4,
        ..SimConfig::default()
    });
    app.ingest(&events).await.unwrap();
    // A first start checks every conversation of the tenant: none is outdated.
    store::events::reproject_outdated(&app.pool).await.unwrap();
    // Then a server of the derivation before writes one (as an upsert does: a new change_xid).
    let written: String = sqlx::query_scalar(
        "update conversations set derivation = derivation - 1, change_xid = pg_current_xact_id() \
         where tenant_id = $1 and conversation_id = (select min(conversation_id) from conversations \
         where tenant_id = $1) returning conversation_id",
    )
    .bind(app.tenant)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(derivation_of(&app, &written).await, DERIVATION - 1);
    // The next start finds it among the rows changed since its check.
    let derived = store::events::reproject_outdated(&app.pool).await.unwrap();
    assert!(
        derived >= 5,
        "the tenant's 5 conversations derived again: {derived}"
    );
    assert_eq!(derivation_of(&app, &written).await, DERIVATION);
}
