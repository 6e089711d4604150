//! Scoped keys (every RPC refuses a key without its scope; another tenant's key sees nothing of
//! this one), listing and revocation, and customer erasure.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use chatkpi::{
    domain::{
        event::{Event, Payload},
        tenant::{Scope, key_id},
    },
    grpc::{convert::chrono_to_timestamp, pb},
    store,
};
use chatkpi_tools::sim::{SimConfig, simulate};
use tonic::{Code, Status};

use crate::{
    helpers::{Options, TestApp, t, with_key},
    metrics::answers,
};

/// Every RPC of the three services.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    IngestEvents,
    StreamEvents,
    GetOverview,
    GetBreakdown,
    GetTimeSeries,
    GetUtilization,
    GetBacklog,
    ListConversations,
    WatchOverview,
    GetSettings,
    UpdateSettings,
    GetScorecard,
    EraseCustomer,
}

const RPCS: [(Rpc, Scope); 13] = [
    (Rpc::IngestEvents, Scope::Ingest),
    (Rpc::StreamEvents, Scope::Ingest),
    (Rpc::GetOverview, Scope::Read),
    (Rpc::GetBreakdown, Scope::Read),
    (Rpc::GetTimeSeries, Scope::Read),
    (Rpc::GetUtilization, Scope::Read),
    (Rpc::GetBacklog, Scope::Read),
    (Rpc::ListConversations, Scope::Read),
    (Rpc::WatchOverview, Scope::Read),
    (Rpc::GetSettings, Scope::Read),
    (Rpc::UpdateSettings, Scope::Admin),
    (Rpc::GetScorecard, Scope::Read),
    (Rpc::EraseCustomer, Scope::Admin),
];

fn query() -> pb::Query {
    pb::Query {
        from: Some(chrono_to_timestamp(t(-86_400))),
        to: Some(chrono_to_timestamp(t(10 * 86_400))),
        ..Default::default()
    }
}

/// Calls `rpc` with `key`; the answer as text (streams: every message).
async fn call(app: &TestApp, rpc: Rpc, key: &str, customer: &str) -> Result<String, Status> {
    let (mut m, mut e, mut a) = (app.metrics(), app.events(), app.admin());
    let q = Some(query());
    Ok(match rpc {
        Rpc::IngestEvents => {
            let event = chatkpi::grpc::convert::event_to_proto(&Event {
                event_id: format!("scope-probe-{}", key.len()),
                conversation_id: Some("scope-probe".into()),
                occurred_at: t(0),
                payload: Payload::Reopened,
            });
            let r = e
                .ingest_events(with_key(pb::IngestEventsRequest { events: vec![event] }, key))
                .await?;
            format!("{:?}", r.into_inner())
        }
        Rpc::StreamEvents => {
            let batches = futures::stream::iter(vec![pb::StreamEventsRequest {
                batch_id: 1,
                events: vec![],
            }]);
            let mut acks = e.stream_events(with_key(batches, key)).await?.into_inner();
            let mut out = String::new();
            while let Some(ack) = acks.message().await? {
                out += &format!("{ack:?}");
            }
            out
        }
        Rpc::GetOverview => {
            let r = m
                .get_overview(with_key(
                    pb::GetOverviewRequest {
                        query: q,
                        compare_previous: true,
                    },
                    key,
                ))
                .await?;
            format!("{:?}", r.into_inner())
        }
        Rpc::GetBreakdown => {
            let request = pb::GetBreakdownRequest {
                limit: 0,
                query: q,
                dimension: pb::Dimension::Agent as i32,
            };
            format!(
                "{:?}",
                m.get_breakdown(with_key(request, key)).await?.into_inner()
            )
        }
        Rpc::GetTimeSeries => {
            let request = pb::GetTimeSeriesRequest {
                query: q,
                granularity: pb::Granularity::Day as i32,
            };
            format!(
                "{:?}",
                m.get_time_series(with_key(request, key)).await?.into_inner()
            )
        }
        Rpc::GetUtilization => {
            let request = pb::GetUtilizationRequest { query: q };
            format!(
                "{:?}",
                m.get_utilization(with_key(request, key)).await?.into_inner()
            )
        }
        Rpc::GetBacklog => {
            let request = pb::GetBacklogRequest {
                query: q,
                at: Some(chrono_to_timestamp(t(86_400))),
            };
            format!("{:?}", m.get_backlog(with_key(request, key)).await?.into_inner())
        }
        Rpc::ListConversations => {
            let request = pb::ListConversationsRequest {
                query: q,
                kpi: pb::DrillDown::Opened as i32,
                limit: 0,
            };
            let mut rows = m.list_conversations(with_key(request, key)).await?.into_inner();
            let mut n = 0;
            while rows.message().await?.is_some() {
                n += 1;
            }
            format!("{n} rows")
        }
        Rpc::WatchOverview => {
            let request = pb::WatchOverviewRequest {
                query: q,
                min_interval: None,
                sliding: false,
            };
            let mut updates = m.watch_overview(with_key(request, key)).await?.into_inner();
            format!("{:?}", updates.message().await?.map(|u| u.kpis))
        }
        Rpc::GetSettings => format!(
            "{:?}",
            m.get_settings(with_key(pb::GetSettingsRequest {}, key))
                .await?
                .into_inner()
        ),
        Rpc::UpdateSettings => {
            let request = pb::UpdateSettingsRequest {
                sla_policies: None,
                clear_business_hours: true,
                ..Default::default()
            };
            format!(
                "{:?}",
                m.update_settings(with_key(request, key)).await?.into_inner()
            )
        }
        Rpc::GetScorecard => {
            let request = pb::GetScorecardRequest { query: q };
            format!(
                "{:?}",
                m.get_scorecard(with_key(request, key)).await?.into_inner()
            )
        }
        Rpc::EraseCustomer => {
            let request = pb::EraseCustomerRequest {
                customer_id: customer.into(),
            };
            format!(
                "{:?}",
                a.erase_customer(with_key(request, key)).await?.into_inner()
            )
        }
    })
}

fn small_helpdesk() -> Vec<Event> {
    simulate(&SimConfig {
        conversations: 40,
        days: 2,
        seed: 3,
        start: t(0).date_naive(),
        agents: 4,
    })
}

/// The customer of the first conversation opened in `events`.
fn first_customer(events: &[Event]) -> String {
    events
        .iter()
        .find_map(|e| match &e.payload {
            Payload::ConversationOpened(o) => Some(o.customer_id.clone()),
            _ => None,
        })
        .expect("a conversation")
}

#[tokio::test]
async fn every_rpc_refuses_keys_without_its_scope_and_other_tenants_see_nothing() {
    let app = TestApp::spawn().await;
    let events = small_helpdesk();
    for chunk in events.chunks(500) {
        app.ingest(chunk).await.unwrap();
    }
    let customer = first_customer(&events);
    let stored = app.event_count().await;
    let mut scoped = Vec::new();
    for scope in Scope::ALL {
        let key = store::tenants::create_key(&app.pool, app.tenant, &[scope], "test")
            .await
            .unwrap();
        scoped.push((scope, key.plaintext));
    }
    for (rpc, needs) in RPCS {
        for (scope, key) in &scoped {
            if *scope == needs {
                continue;
            }
            let err = call(&app, rpc, key, &customer)
                .await
                .expect_err(&format!("{rpc:?} answered a {scope:?} key"));
            assert_eq!(
                err.code(),
                Code::PermissionDenied,
                "{rpc:?} with {scope:?}: {err:?}"
            );
            assert!(err.message().contains(needs.as_str()), "{}", err.message());
        }
    }
    assert_eq!(
        app.event_count().await,
        stored,
        "nothing was written with a wrong scope"
    );

    // Another tenant's key works, on that tenant only: nothing of this tenant shows.
    let (other, other_key) = store::tenants::create_tenant(&app.pool, "other").await.unwrap();
    let before = answers(&app).await;
    for (rpc, _) in RPCS {
        let answer = call(&app, rpc, &other_key.plaintext, &customer)
            .await
            .unwrap_or_else(|e| panic!("{rpc:?} with the other tenant's key: {e:?}"));
        for name in [&customer, "conversations: 40"] {
            assert!(
                !answer.contains(name),
                "{rpc:?} showed {name} to another tenant: {answer}"
            );
        }
    }
    assert_eq!(
        answers(&app).await,
        before,
        "the other tenant changed nothing here"
    );
    assert_eq!(app.event_count().await, stored);
    assert_eq!(store::events::count_events(&app.pool, other).await.unwrap(), 1);

    // A key that names this tenant with the other tenant's secret is refused.
    let secret = other_key.plaintext.rsplit('_').next().unwrap();
    let forged = format!("ck_{}_{secret}", app.tenant);
    for (rpc, _) in RPCS {
        let err = call(&app, rpc, &forged, &customer).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{rpc:?}");
    }
}

#[tokio::test]
async fn keys_are_listed_without_secrets_and_a_revoked_key_is_refused_within_seconds() {
    let app = TestApp::spawn().await;
    let key = store::tenants::create_key(&app.pool, app.tenant, &[Scope::Read], "dashboard")
        .await
        .unwrap();
    let id = key_id(&key.hash);
    assert!(call(&app, Rpc::GetOverview, &key.plaintext, "").await.is_ok());
    let listed = store::tenants::list_keys(&app.pool, app.tenant).await.unwrap();
    let row = listed.iter().find(|k| k.key_id == id).expect("listed");
    assert_eq!(
        (row.scopes.clone(), row.label.as_str()),
        (vec!["read".to_owned()], "dashboard")
    );
    assert!(row.revoked_at.is_none());
    assert_eq!(listed.len(), 2, "the tenant's first key and this one");
    let secret = key.plaintext.rsplit('_').next().unwrap();
    assert!(!format!("{listed:?}").contains(secret));

    store::tenants::revoke_key(&app.pool, app.tenant, &id)
        .await
        .unwrap();
    let revoked = Instant::now();
    loop {
        match call(&app, Rpc::GetOverview, &key.plaintext, "").await {
            Err(err) if err.code() == Code::Unauthenticated => break,
            _ => {
                assert!(
                    revoked.elapsed() < Duration::from_secs(7),
                    "still accepted after 7 s"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    assert!(
        call(&app, Rpc::GetOverview, &app.api_key, "").await.is_ok(),
        "other keys still work"
    );
    let again = store::tenants::revoke_key(&app.pool, app.tenant, &id)
        .await
        .unwrap_err();
    assert!(matches!(again, chatkpi::domain::Error::NotFound(_)), "{again:?}");
}

/// The events of `customer`: their conversations' events and their conversions.
fn of_customer(events: &[Event], customer: &str) -> HashSet<String> {
    let conversations: HashSet<&str> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::ConversationOpened(o) if o.customer_id == customer => e.conversation_id.as_deref(),
            _ => None,
        })
        .collect();
    events
        .iter()
        .filter(|e| match &e.payload {
            Payload::Conversion(c) => c.customer_id == customer,
            _ => e
                .conversation_id
                .as_deref()
                .is_some_and(|c| conversations.contains(c)),
        })
        .map(|e| e.event_id.clone())
        .collect()
}

#[tokio::test]
async fn erasing_a_customer_leaves_every_kpi_as_if_they_had_never_been_sent() {
    let events = simulate(&SimConfig {
        conversations: 120,
        days: 3,
        seed: 5,
        start: t(0).date_naive(),
        agents: 6,
    });
    // The customer with the most events who also converted.
    let converted: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Conversion(c) => Some(c.customer_id.clone()),
            _ => None,
        })
        .collect();
    let customer = converted
        .iter()
        .max_by_key(|c| (of_customer(&events, c).len(), c.to_string()))
        .expect("the simulation has conversions")
        .clone();
    let erased_ids = of_customer(&events, &customer);
    assert!(erased_ids.len() > 3, "{customer}: {}", erased_ids.len());

    let app = TestApp::spawn().await;
    for chunk in events.chunks(400) {
        app.ingest(chunk).await.unwrap();
    }
    let replica = app.replica(Options::default()).await;
    let before = answers(&app).await;
    assert_eq!(answers(&replica).await, before, "both replicas hold the data");

    let erased = app
        .admin()
        .erase_customer(app.authed(pb::EraseCustomerRequest {
            customer_id: customer.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.events + erased.conversions, erased_ids.len() as u64);
    assert!(erased.conversations > 0 && erased.conversions > 0, "{erased:?}");

    let never_sent = TestApp::spawn().await;
    let kept: Vec<Event> = events
        .iter()
        .filter(|e| !erased_ids.contains(&e.event_id))
        .cloned()
        .collect();
    for chunk in kept.chunks(400) {
        never_sent.ingest(chunk).await.unwrap();
    }
    let expected = answers(&never_sent).await;
    assert_ne!(expected, before, "the customer mattered to the answers");
    assert_eq!(answers(&app).await, expected, "the erasing replica");
    assert_eq!(answers(&replica).await, expected, "the other replica");
    let restarted = app.replica(Options::default()).await;
    assert_eq!(
        answers(&restarted).await,
        expected,
        "a replica started afterwards"
    );

    let bad = app
        .admin()
        .erase_customer(app.authed(pb::EraseCustomerRequest {
            customer_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("customer_id:"), "{}", bad.message());
}
