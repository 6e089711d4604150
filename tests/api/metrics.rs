//! MetricsService end to end: KPIs over ingested events, validation, settings, drill-down,
//! watch across replicas, and identical answers for shuffled duplicated input.

use chatkpi_tools::sim::{SimConfig, simulate};
use std::time::Duration as StdDuration;

use chatkpi::{
    domain::event::*,
    grpc::{convert::chrono_to_timestamp, pb},
};
use rand::{SeedableRng, seq::SliceRandom};
use tonic::{Code, Request, transport::Channel as GrpcChannel};

use crate::helpers::{Options, TestApp, ev, msg, t, with_key};

fn opened(id: &str, conv: &str, at: i64, customer: &str, channel: Channel) -> Event {
    ev(
        id,
        Some(conv),
        at,
        Payload::ConversationOpened(ConversationOpened {
            customer_id: customer.into(),
            channel,
            inbox: None,
            team: Some("support".into()),
            priority: None,
            initiated_by: Initiator::Customer,
        }),
    )
}

/// e1: A on WhatsApp, ann answers after 60 s, resolved at 100, CSAT 4.
/// e2: B on webchat, the bot answers in 3 s and resolves at 60.
/// e3: A again by email at 200 (a repeat contact for e1), still waiting.
/// ann is online 0-1000; B buys for 10.00 EUR at 500.
fn fixture() -> Vec<Event> {
    vec![
        opened("e1-o", "e1", 0, "A", Channel::Whatsapp),
        ev(
            "e1-a",
            Some("e1"),
            5,
            Payload::Assigned(Assigned {
                agent_id: Some("ann".into()),
                team: None,
            }),
        ),
        msg("e1-m1", "e1", 10, Sender::Customer, None),
        msg("e1-m2", "e1", 70, Sender::Agent, Some("ann")),
        ev(
            "e1-r",
            Some("e1"),
            100,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Agent,
                agent_id: Some("ann".into()),
            }),
        ),
        ev(
            "e1-s",
            Some("e1"),
            110,
            Payload::SurveyResponse(SurveyResponse {
                survey: SurveyType::Csat,
                score: 4,
                scale: Scale { min: 1, max: 5 },
                agent_id: None,
            }),
        ),
        opened("e2-o", "e2", 50, "B", Channel::Webchat),
        msg("e2-m1", "e2", 50, Sender::Customer, None),
        msg("e2-m2", "e2", 53, Sender::Bot, None),
        ev(
            "e2-r",
            Some("e2"),
            60,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Bot,
                agent_id: None,
            }),
        ),
        opened("e3-o", "e3", 200, "A", Channel::Email),
        msg("e3-m1", "e3", 200, Sender::Customer, None),
        ev(
            "p1",
            None,
            0,
            Payload::AgentStatus(AgentStatus {
                agent_id: "ann".into(),
                status: Presence::Online,
            }),
        ),
        ev(
            "p2",
            None,
            1000,
            Payload::AgentStatus(AgentStatus {
                agent_id: "ann".into(),
                status: Presence::Offline,
            }),
        ),
        ev(
            "x1",
            None,
            500,
            Payload::Conversion(Conversion {
                customer_id: "B".into(),
                kind: "sale".into(),
                value_minor: Some(1000),
                currency: Some("EUR".into()),
            }),
        ),
    ]
}

fn query(from: i64, to: i64) -> pb::Query {
    pb::Query {
        from: Some(chrono_to_timestamp(t(from))),
        to: Some(chrono_to_timestamp(t(to))),
        ..Default::default()
    }
}

fn metrics(channel: &GrpcChannel) -> pb::metrics_service_client::MetricsServiceClient<GrpcChannel> {
    pb::metrics_service_client::MetricsServiceClient::new(channel.clone())
}

async fn overview(app: &TestApp, q: pb::Query, compare: bool) -> pb::GetOverviewResponse {
    metrics(&app.channel)
        .get_overview(app.authed(pb::GetOverviewRequest {
            query: Some(q),
            compare_previous: compare,
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn loaded() -> TestApp {
    let app = TestApp::spawn().await;
    let r = app.ingest(&fixture()).await.unwrap();
    assert_eq!(r.accepted, 15);
    app
}

#[tokio::test]
async fn overview_answers_the_hand_computed_kpis() {
    let app = loaded().await;
    let r = overview(&app, query(0, 86_400), true).await;
    let k = r.current.unwrap();
    assert_eq!(k.conversations, 3);
    let frt = k.first_response.unwrap();
    assert_eq!(
        (frt.count, frt.mean, frt.min, frt.max),
        (2, Some(31.5), Some(3.0), Some(60.0))
    );
    let resolution = k.resolution.unwrap();
    assert_eq!(
        (k.resolved, resolution.p50),
        (2, Some(55.0)),
        "median of 100 s and 10 s"
    );
    assert_eq!(
        k.fcr_rate,
        Some(50.0),
        "e1 has a repeat contact (e3), e2 does not"
    );
    assert_eq!(k.automation_rate, Some(50.0));
    let csat = k.csat.unwrap();
    assert_eq!((csat.responses, csat.csat_percent), (1, Some(100.0)));
    let conversion = k.conversion.unwrap();
    assert_eq!(
        (conversion.customers, conversion.converted, conversion.rate),
        (2, 1, Some(50.0))
    );
    assert_eq!(
        conversion.revenue,
        vec![pb::Money {
            currency: "EUR".into(),
            value_minor: 1000,
            overflow: false,
        }]
    );
    assert_eq!(k.human_first_response.unwrap().count, 1);
    assert!(k.wait.unwrap().mean.is_some());
    // The previous day is empty: counts 0, means absent.
    let previous = r.previous.unwrap();
    assert_eq!(previous.conversations, 0);
    assert_eq!(previous.first_response.unwrap().mean, None);
}

#[tokio::test]
async fn breakdown_series_backlog_and_utilization_answer() {
    let app = loaded().await;
    let mut client = metrics(&app.channel);
    let rows = client
        .get_breakdown(app.authed(pb::GetBreakdownRequest {
            limit: 0,
            query: Some(query(0, 86_400)),
            dimension: pb::Dimension::Channel as i32,
        }))
        .await
        .unwrap()
        .into_inner()
        .rows;
    let channels: Vec<(String, u64)> = rows
        .iter()
        .map(|r| (r.value.clone(), r.kpis.as_ref().unwrap().conversations))
        .collect();
    assert_eq!(
        channels,
        vec![("whatsapp".into(), 1), ("webchat".into(), 1), ("email".into(), 1)]
    );

    let mut q = query(-3600, 7200);
    q.time_zone = "Europe/Berlin".into();
    let points = client
        .get_time_series(app.authed(pb::GetTimeSeriesRequest {
            query: Some(q),
            granularity: pb::Granularity::Hour as i32,
        }))
        .await
        .unwrap()
        .into_inner()
        .points;
    // 08:00, 09:00, 10:00 UTC buckets (09:00-11:00 Berlin); all three conversations in 09:00 UTC.
    let counts: Vec<u64> = points
        .iter()
        .map(|p| p.kpis.as_ref().unwrap().conversations)
        .collect();
    assert_eq!(counts, vec![0, 3, 0]);
    assert_eq!(points[1].start, Some(chrono_to_timestamp(t(0))));

    let backlog = client
        .get_backlog(app.authed(pb::GetBacklogRequest {
            query: None,
            at: Some(chrono_to_timestamp(t(300))),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((backlog.open, backlog.unassigned, backlog.unanswered), (1, 1, 1));
    assert_eq!(backlog.age.unwrap().mean, Some(100.0));

    let util = client
        .get_utilization(app.authed(pb::GetUtilizationRequest {
            query: Some(query(0, 86_400)),
        }))
        .await
        .unwrap()
        .into_inner();
    // ann: online 1000 s, assignee of open e1 from 5 to 100.
    assert_eq!(util.agents.len(), 1);
    assert_eq!(
        (util.agents[0].logged_in_seconds, util.agents[0].handling_seconds),
        (1000.0, 95.0)
    );
    assert_eq!(util.team.unwrap().utilization, Some(9.5));
}

#[tokio::test]
async fn invalid_queries_are_rejected_with_the_field() {
    let app = loaded().await;
    let mut client = metrics(&app.channel);
    let mut bad_zone = query(0, 10);
    bad_zone.time_zone = "Mars/Olympus".into();
    let cases: Vec<(pb::GetOverviewRequest, &str)> = vec![
        (
            pb::GetOverviewRequest {
                query: None,
                compare_previous: false,
            },
            "query:",
        ),
        (
            pb::GetOverviewRequest {
                query: Some(bad_zone),
                compare_previous: false,
            },
            "query.time_zone:",
        ),
        (
            pb::GetOverviewRequest {
                query: Some(query(10, 10)),
                compare_previous: false,
            },
            "query.to: must be after from",
        ),
        (
            pb::GetOverviewRequest {
                query: Some(query(0, 800 * 86_400)),
                compare_previous: false,
            },
            "query.to: window of 800 days",
        ),
        (
            pb::GetOverviewRequest {
                query: Some(pb::Query {
                    filters: Some(pb::Filters {
                        channels: vec![42],
                        ..Default::default()
                    }),
                    ..query(0, 10)
                }),
                compare_previous: false,
            },
            "query.filters.channels[0]: unknown enum value 42",
        ),
    ];
    for (request, prefix) in cases {
        let status = client.get_overview(app.authed(request)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{prefix}");
        assert!(
            status.message().starts_with(prefix),
            "{} does not start with {prefix}",
            status.message()
        );
    }
    let status = client
        .get_breakdown(app.authed(pb::GetBreakdownRequest {
            limit: 0,
            query: Some(query(0, 10)),
            dimension: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "dimension: must be set")
    );
    let status = client
        .get_time_series(app.authed(pb::GetTimeSeriesRequest {
            query: Some(query(0, 10)),
            granularity: 9,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut business = query(0, 10);
    business.business_hours = true;
    let status = client
        .get_overview(app.authed(pb::GetOverviewRequest {
            query: Some(business),
            compare_previous: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "no business hours set yet"
    );
    let status = client
        .get_overview(Request::new(pb::GetOverviewRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn hostile_query_values_are_invalid_arguments_not_panics() {
    let app = loaded().await;
    let mut client = metrics(&app.channel);
    let ts = |seconds: i64| Some(pbjson_types::Timestamp { seconds, nanos: 0 });
    // Near the ends of what chrono can represent (years -262143 and +262142).
    let ancient = pb::Query {
        from: ts(-8_000_000_000_000),
        to: ts(-7_999_999_000_000),
        ..Default::default()
    };
    let status = client
        .get_overview(app.authed(pb::GetOverviewRequest {
            query: Some(ancient),
            compare_previous: true,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("query.from: must be between"),
        "{}",
        status.message()
    );
    let remote = pb::Query {
        to: ts(8_000_000_000_000),
        ..query(0, 10)
    };
    let status = client
        .get_time_series(app.authed(pb::GetTimeSeriesRequest {
            query: Some(remote),
            granularity: pb::Granularity::Month as i32,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("query.to: must be between"),
        "{}",
        status.message()
    );
    let mut huge_lookahead = query(0, 10);
    huge_lookahead.repeat_window = Some(pbjson_types::Duration {
        seconds: 10_000_000_000_000_000,
        nanos: 0,
    });
    let status = client
        .get_overview(app.authed(pb::GetOverviewRequest {
            query: Some(huge_lookahead),
            compare_previous: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "query.repeat_window: must be between 0 and 366 days"
        )
    );
    // A backlog instant in year 9999 is refused at once (its age would be unbounded).
    let status = client
        .get_backlog(app.authed(pb::GetBacklogRequest {
            query: None,
            at: ts(253_402_300_000),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("at: must be between"),
        "{}",
        status.message()
    );
    // Business hours that only look like times or dates.
    for (open, holiday, field) in [
        ("+9:00", "2026-12-25", "business_hours.days[0].intervals[0].open"),
        ("09:00", "0000-01-01", "business_hours.holidays[0]"),
        ("09:00", "+12345-01-01", "business_hours.holidays[0]"),
    ] {
        let status = client
            .update_settings(app.authed(pb::UpdateSettingsRequest {
                sla_policies: None,
                business_hours: Some(pb::BusinessHours {
                    time_zone: "UTC".into(),
                    days: vec![pb::DayHours {
                        weekday: 1,
                        intervals: vec![pb::OpenInterval {
                            open: open.into(),
                            close: "18:00".into(),
                        }],
                    }],
                    holidays: vec![holiday.into()],
                }),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{open} {holiday}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
}

#[tokio::test]
async fn settings_round_trip_and_drive_business_hours_and_the_scorecard() {
    let app = loaded().await;
    let mut client = metrics(&app.channel);
    let defaults = client
        .get_settings(app.authed(pb::GetSettingsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(defaults.business_hours, None);
    assert_eq!(defaults.targets.unwrap().human_frt_seconds, Some(60.0));

    // Open Monday 09:00-09:01 only (UTC): e1's 60 s first response (10 -> 70) has 50 s inside.
    let hours = pb::BusinessHours {
        time_zone: "UTC".into(),
        days: vec![pb::DayHours {
            weekday: 1,
            intervals: vec![pb::OpenInterval {
                open: "09:00".into(),
                close: "09:01".into(),
            }],
        }],
        holidays: vec!["2026-12-25".into()],
    };
    let targets = pb::Targets {
        csat_percent: Some(95.0),
        ..Default::default()
    };
    let updated = client
        .update_settings(app.authed(pb::UpdateSettingsRequest {
            sla_policies: None,
            business_hours: Some(hours.clone()),
            targets: Some(targets),
            clear_business_hours: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    assert_eq!(updated.business_hours, Some(hours));
    assert_eq!(updated.targets.unwrap().csat_percent, Some(95.0));

    let mut q = query(0, 86_400);
    q.business_hours = true;
    let k = overview(&app, q.clone(), false).await.current.unwrap();
    let frt = k.first_response.unwrap();
    // e1: 10..70 -> 50 s inside 09:00-09:01; e2: 50..53 -> 3 s.
    assert_eq!((frt.min, frt.max), (Some(3.0), Some(50.0)));

    let bad = client
        .update_settings(app.authed(pb::UpdateSettingsRequest {
            sla_policies: None,
            business_hours: Some(pb::BusinessHours {
                time_zone: "UTC".into(),
                days: vec![pb::DayHours {
                    weekday: 8,
                    intervals: vec![],
                }],
                holidays: vec![],
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (bad.code(), bad.message()),
        (
            Code::InvalidArgument,
            "business_hours.days[0].weekday: must be 1 (Monday) to 7 (Sunday)"
        )
    );

    let card = client
        .get_scorecard(app.authed(pb::GetScorecardRequest {
            query: Some(query(0, 86_400)),
        }))
        .await
        .unwrap()
        .into_inner();
    let overall = card.overall.unwrap();
    let line = |name: &str| overall.lines.iter().find(|l| l.kpi == name).unwrap().clone();
    // One human first response (60 s): within the 60 s target, 100 % >= 90 %.
    assert_eq!(
        (line("human_frt").value, line("human_frt").met),
        (Some(100.0), Some(true))
    );
    // CSAT 100 % >= 95 %; FCR 50 % < 70 %; utilization 9.5 % outside 85-90 %.
    assert_eq!(line("csat").met, Some(true));
    assert_eq!((line("fcr").value, line("fcr").met), (Some(50.0), Some(false)));
    assert_eq!(
        (line("utilization").value, line("utilization").met),
        (Some(9.5), Some(false))
    );
    assert_eq!(
        card.agents.iter().map(|a| a.scope.as_str()).collect::<Vec<_>>(),
        vec!["ann"]
    );
    assert_eq!(
        card.teams.iter().map(|a| a.scope.as_str()).collect::<Vec<_>>(),
        vec!["support"]
    );
}

#[tokio::test]
async fn drill_down_streams_every_conversation_behind_a_kpi() {
    let app = TestApp::spawn().await;
    // 600 conversations: more than the stream buffer, so the producer must wait for the reader.
    let events: Vec<Event> = (0..600)
        .map(|i| opened(&format!("o{i}"), &format!("c{i:03}"), i, "Z", Channel::Sms))
        .collect();
    app.ingest(&events).await.unwrap();
    app.ingest(&fixture()).await.unwrap();
    let mut client = metrics(&app.channel);
    let mut stream = client
        .list_conversations(app.authed(pb::ListConversationsRequest {
            query: Some(query(0, 86_400)),
            kpi: pb::DrillDown::Opened as i32,
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(row) = stream.message().await.unwrap() {
        n += 1;
        if row.conversation_id == "e1" {
            assert_eq!(
                (row.first_response_seconds, row.first_responder.as_str()),
                (Some(60.0), "ann")
            );
            assert_eq!((row.csat_score, row.state.as_str()), (Some(4), "resolved"));
        }
    }
    assert_eq!(n, 603);
    let mut stream = client
        .list_conversations(app.authed(pb::ListConversationsRequest {
            query: Some(query(0, 86_400)),
            kpi: pb::DrillDown::NotFcr as i32,
            limit: 10,
        }))
        .await
        .unwrap()
        .into_inner();
    let row = stream.message().await.unwrap().unwrap();
    assert_eq!(row.conversation_id, "e1");
    assert!(stream.message().await.unwrap().is_none());
}

#[tokio::test]
async fn watch_pushes_a_new_overview_when_another_replica_ingests() {
    let app = loaded().await;
    // A second server on the same database: the watch runs there, ingest goes to the first.
    let replica = app.replica(Options::default()).await;
    let mut client = metrics(&replica.channel);
    let mut stream = client
        .watch_overview(with_key(
            pb::WatchOverviewRequest {
                query: Some(query(0, 86_400)),
                min_interval: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }),
                sliding: false,
            },
            &app.api_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.kpis.unwrap().conversations, 3);
    app.ingest(&[opened("late", "e4", 300, "C", Channel::Sms)])
        .await
        .unwrap();
    let second = tokio::time::timeout(StdDuration::from_secs(20), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.kpis.unwrap().conversations, 4);
}

/// A sliding watch of `q` pushing every second.
async fn sliding_watch(app: &TestApp, q: pb::Query) -> tonic::Streaming<pb::WatchOverviewResponse> {
    metrics(&app.channel)
        .watch_overview(with_key(
            pb::WatchOverviewRequest {
                query: Some(q),
                min_interval: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }),
                sliding: true,
            },
            &app.api_key,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// The end of the window of each of the next `n` pushes (a sliding window ends at the instant
/// its overview was computed).
async fn window_ends(
    stream: &mut tonic::Streaming<pb::WatchOverviewResponse>,
    n: usize,
) -> Vec<pbjson_types::Timestamp> {
    let mut ends = Vec::new();
    for _ in 0..n {
        let push = tokio::time::timeout(StdDuration::from_secs(20), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        ends.push(push.to.unwrap());
    }
    ends
}

#[tokio::test]
async fn watches_of_the_same_question_share_one_computation_per_tick() {
    let app = loaded().await;
    let mut first = sliding_watch(&app, query(0, 86_400)).await;
    let mut second = sliding_watch(&app, query(0, 86_400)).await;
    // The second joins the first's computation: its first push is the first's latest, then
    // both receive every tick's. Two computations would end their windows at different
    // instants.
    let (a, b) = tokio::join!(window_ends(&mut first, 3), window_ends(&mut second, 3));
    let shared = a.iter().filter(|end| b.contains(end)).count();
    assert!(shared >= 2, "first {a:?}, second {b:?}");
    let mut other_zone = query(0, 86_400);
    other_zone.time_zone = "Europe/Berlin".into();
    let mut third = sliding_watch(&app, other_zone).await;
    let (c, d) = tokio::join!(window_ends(&mut third, 2), window_ends(&mut first, 2));
    assert!(
        c.iter().all(|end| !d.contains(end)),
        "another question is computed apart"
    );
}

#[tokio::test]
async fn a_watch_that_is_not_read_does_not_delay_the_others_of_its_question() {
    let app = loaded().await;
    let _unread = sliding_watch(&app, query(0, 86_400)).await;
    let mut read = sliding_watch(&app, query(0, 86_400)).await;
    let started = std::time::Instant::now();
    let ends = window_ends(&mut read, 4).await;
    let distinct: std::collections::HashSet<_> = ends.iter().map(|t| (t.seconds, t.nanos)).collect();
    assert_eq!(distinct.len(), 4, "a new overview every tick: {ends:?}");
    assert!(started.elapsed() < StdDuration::from_secs(10));
}

/// Every query RPC over the same events, as comparable text.
pub(crate) async fn answers(app: &TestApp) -> Vec<String> {
    let mut client = metrics(&app.channel);
    let mut q = query(-86_400, 30 * 86_400);
    q.time_zone = "Europe/Berlin".into();
    let mut out = vec![format!("{:?}", overview(app, q.clone(), true).await)];
    for dimension in [pb::Dimension::Agent, pb::Dimension::Tag, pb::Dimension::HourOfDay] {
        let r = client
            .get_breakdown(app.authed(pb::GetBreakdownRequest {
                limit: 0,
                query: Some(q.clone()),
                dimension: dimension as i32,
            }))
            .await
            .unwrap();
        out.push(format!("{:?}", r.into_inner()));
    }
    let r = client
        .get_time_series(app.authed(pb::GetTimeSeriesRequest {
            query: Some(q.clone()),
            granularity: pb::Granularity::Day as i32,
        }))
        .await
        .unwrap();
    out.push(format!("{:?}", r.into_inner()));
    let r = client
        .get_utilization(app.authed(pb::GetUtilizationRequest {
            query: Some(q.clone()),
        }))
        .await
        .unwrap();
    out.push(format!("{:?}", r.into_inner()));
    let r = client
        .get_backlog(app.authed(pb::GetBacklogRequest {
            query: Some(q.clone()),
            at: Some(chrono_to_timestamp(t(3 * 86_400))),
        }))
        .await
        .unwrap();
    out.push(format!("{:?}", r.into_inner()));
    let mut rows = client
        .list_conversations(app.authed(pb::ListConversationsRequest {
            query: Some(q),
            kpi: pb::DrillDown::Resolved as i32,
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    while let Some(row) = rows.message().await.unwrap() {
        out.push(format!("{row:?}"));
    }
    out
}

#[tokio::test]
async fn shuffled_duplicated_ingest_gives_identical_query_responses() {
    let start = t(0).date_naive();
    let events = simulate(&SimConfig {
        conversations: 120,
        days: 3,
        seed: 5,
        start,
        agents: 6,
    });
    let ordered = TestApp::spawn().await;
    for chunk in events.chunks(400) {
        ordered.ingest(chunk).await.unwrap();
    }
    let shuffled = TestApp::spawn().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut mixed = events.clone();
    mixed.extend(events.iter().step_by(4).cloned());
    mixed.shuffle(&mut rng);
    for chunk in mixed.chunks(137) {
        shuffled.ingest(chunk).await.unwrap();
    }
    let expected = answers(&ordered).await;
    assert!(
        expected[0].contains("conversations: 120"),
        "{}",
        &expected[0][..200]
    );
    let actual = answers(&shuffled).await;
    assert_eq!(expected.len(), actual.len());
    for (i, (e, a)) in expected.iter().zip(&actual).enumerate() {
        if e != a {
            let at = e.chars().zip(a.chars()).position(|(x, y)| x != y).unwrap_or(0);
            let from = at.saturating_sub(300);
            panic!(
                "answer {i} differs at {at}: expected ...{} but got ...{}",
                &e[from..(at + 100).min(e.len())],
                &a[from..(at + 100).min(a.len())]
            );
        }
    }
}

#[tokio::test]
async fn a_later_day_opening_turns_a_kept_first_contact_resolution_into_a_repeat_contact() {
    let app = TestApp::spawn().await;
    let day = 86_400;
    // Day 1: x opens and is resolved within the hour. Day 4 holds someone else.
    let first = vec![
        opened("r-1", "r-a", 0, "x", Channel::Webchat),
        ev(
            "r-2",
            Some("r-a"),
            3_600,
            Payload::Resolved(chatkpi::domain::event::Resolved {
                by: chatkpi::domain::event::ResolvedBy::Agent,
                agent_id: None,
            }),
        ),
        opened("r-3", "r-other", 3 * day, "y", Channel::Webchat),
    ];
    app.ingest(&first).await.unwrap();
    // A window from day 0 to day 10 (UTC days): the first day's totals are kept by this call.
    let q = || query(-3_600 * 9, 10 * day);
    let kpis = overview(&app, q(), false).await.current.unwrap();
    assert_eq!(
        (kpis.resolved, kpis.fcr_rate, kpis.repeat_contact_rate),
        (1, Some(100.0), Some(0.0))
    );
    // Two days later x is back, in another day's segment: the kept totals of day 1 read x's
    // openings, so they are computed again and the resolution is a repeat contact now.
    app.ingest(&[opened("r-4", "r-b", 2 * day, "x", Channel::Email)])
        .await
        .unwrap();
    let kpis = overview(&app, q(), false).await.current.unwrap();
    assert_eq!(kpis.conversations, 3);
    assert_eq!(
        (kpis.resolved, kpis.fcr_rate, kpis.repeat_contact_rate),
        (1, Some(0.0), Some(100.0))
    );
}

/// Rows of the tenant's presence and conversions snapshot (0 or 1).
async fn side_snapshot_rows(app: &TestApp) -> i64 {
    let (rows,): (i64,) = sqlx::query_as("select count(*) from side_snapshots where tenant_id = $1")
        .bind(app.tenant)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    rows
}

/// Runs `sql` with the tenant's id as `$1`, behind the service's back.
async fn execute_for_tenant(app: &TestApp, sql: &'static str) {
    sqlx::query(sql)
        .bind(app.tenant)
        .execute(&app.pool)
        .await
        .unwrap();
}

/// What [`side_answers`] gives for the fixture and [`later_side_events`]: A and B both
/// converted (10.00 + 2.50 EUR); ann online 0-1000, bo 100-700.
fn with_later_events_expected() -> SideAnswers {
    (
        (2, 2, 2, 1250),
        vec![("ann".to_owned(), 1000.0), ("bo".to_owned(), 600.0)],
    )
}

/// The fixture's app after its first query wrote the tenant's presence and conversions snapshot
/// (in the background: waited for).
async fn with_side_snapshot() -> TestApp {
    let app = loaded().await;
    overview(&app, query(0, 86_400), false).await;
    let started = std::time::Instant::now();
    loop {
        if side_snapshot_rows(&app).await == 1 {
            return app;
        }
        assert!(
            started.elapsed() < StdDuration::from_secs(10),
            "the snapshot was never written"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

/// bo online 100-700; A buys for 2.50 EUR at 300 (after e1 opened at 0: attributed).
fn later_side_events() -> Vec<Event> {
    let status = |id: &str, at, status| {
        ev(
            id,
            None,
            at,
            Payload::AgentStatus(AgentStatus {
                agent_id: "bo".into(),
                status,
            }),
        )
    };
    vec![
        status("p3", 100, Presence::Online),
        status("p4", 700, Presence::Offline),
        ev(
            "x2",
            None,
            300,
            Payload::Conversion(Conversion {
                customer_id: "A".into(),
                kind: "sale".into(),
                value_minor: Some(250),
                currency: Some("EUR".into()),
            }),
        ),
    ]
}

/// (customers, converted, conversions, EUR revenue) and each agent's logged-in seconds.
type SideAnswers = ((u64, u64, u64, i64), Vec<(String, f64)>);

/// [`SideAnswers`] of the fixture's day.
async fn side_answers(app: &TestApp) -> SideAnswers {
    let k = overview(app, query(0, 86_400), false).await.current.unwrap();
    let c = k.conversion.unwrap();
    let eur = c
        .revenue
        .iter()
        .find(|m| m.currency == "EUR")
        .map_or(0, |m| m.value_minor);
    let util = metrics(&app.channel)
        .get_utilization(app.authed(pb::GetUtilizationRequest {
            query: Some(query(0, 86_400)),
        }))
        .await
        .unwrap()
        .into_inner();
    let agents = util
        .agents
        .into_iter()
        .map(|a| (a.agent_id, a.logged_in_seconds))
        .collect();
    ((c.customers, c.converted, c.conversions, eur), agents)
}

#[tokio::test]
async fn a_replica_loading_the_side_snapshot_adds_the_events_written_after_it() {
    let app = with_side_snapshot().await;
    assert_eq!(app.ingest(&later_side_events()).await.unwrap().accepted, 3);
    let replica = app.replica(Options::default()).await;
    let expected = with_later_events_expected();
    assert_eq!(side_answers(&replica).await, expected, "the replica");
    assert_eq!(side_answers(&app).await, expected, "the writing server");
}

#[tokio::test]
async fn a_replica_reads_presence_and_conversions_from_the_snapshot_not_the_events() {
    let app = with_side_snapshot().await;
    // Deleted behind the service's back (never done by the product): only the snapshot still
    // has them, so a replica that counts them read it.
    execute_for_tenant(
        &app,
        "delete from events where tenant_id = $1 and event_id in ('p1', 'p2', 'x1')",
    )
    .await;
    let replica = app.replica(Options::default()).await;
    assert_eq!(
        side_answers(&replica).await,
        ((2, 1, 1, 1000), vec![("ann".to_owned(), 1000.0)])
    );
}

#[tokio::test]
async fn a_damaged_side_snapshot_is_ignored_and_the_events_read() {
    let app = with_side_snapshot().await;
    execute_for_tenant(
        &app,
        "update side_snapshots set body = '\\x00'::bytea where tenant_id = $1",
    )
    .await;
    assert_eq!(app.ingest(&later_side_events()).await.unwrap().accepted, 3);
    let replica = app.replica(Options::default()).await;
    assert_eq!(side_answers(&replica).await, with_later_events_expected());
}

#[tokio::test]
async fn erasing_a_customer_deletes_the_side_snapshot_that_names_them() {
    let app = with_side_snapshot().await;
    app.admin()
        .erase_customer(app.authed(pb::EraseCustomerRequest {
            customer_id: "B".into(),
        }))
        .await
        .unwrap();
    assert_eq!(side_snapshot_rows(&app).await, 0);
    // B's conversation and purchase went: A alone, not converted.
    let replica = app.replica(Options::default()).await;
    assert_eq!(
        side_answers(&replica).await,
        ((1, 0, 0, 0), vec![("ann".to_owned(), 1000.0)])
    );
}
