//! KPI computation on small hand-made datasets; every expectation is worked out in the comments.

use chrono::{Duration, NaiveDate};
use chrono_tz::Tz;

use super::*;
use crate::domain::{
    calendar::Schedule,
    event::*,
    query::{Query, Window},
    testkit::{Conv, t},
    time::micros,
};
use crate::engine::{kpi::live::DrillDown, testkit::Dataset};

/// The backlog, utilization and drill-down calls of these tests, on the segment engine.
mod live {
    use super::*;

    /// A listed conversation.
    pub struct Listed {
        pub id: String,
    }

    fn run<R>(
        ds: &Dataset,
        q: &Query,
        schedule: Option<&Schedule>,
        f: impl FnOnce(&Computation<'_>) -> R,
    ) -> R {
        let (targets, cancel) = (Targets::default(), Cancel::default());
        f(&Computation {
            data: ds.data(),
            query: q,
            schedule,
            targets: &targets,
            sla: &[],
            cancel: &cancel,
            partials: None,
        })
    }

    fn listed(ds: &Dataset, rows: Vec<(usize, usize)>) -> Vec<Listed> {
        rows.into_iter()
            .map(|(s, row)| Listed {
                id: ds.data().segments[s].id(row).to_owned(),
            })
            .collect()
    }

    pub fn utilization(
        ds: &Dataset,
        q: &Query,
    ) -> (
        Vec<super::live_kpis::AgentUtilization>,
        super::live_kpis::AgentUtilization,
    ) {
        run(ds, q, None, |c| c.utilization().unwrap())
    }

    pub fn backlog(
        ds: &Dataset,
        q: &Query,
        schedule: Option<&Schedule>,
        at: i64,
    ) -> super::live_kpis::Backlog {
        run(ds, q, schedule, |c| c.backlog(at).unwrap())
    }

    pub fn backlog_conversations(ds: &Dataset, q: &Query, at: i64) -> impl Iterator<Item = Listed> {
        listed(ds, run(ds, q, None, |c| c.backlog_rows(at).unwrap())).into_iter()
    }

    pub fn drill_down(ds: &Dataset, q: &Query, kind: DrillDown) -> Vec<Listed> {
        listed(ds, run(ds, q, None, |c| c.drill_down(kind).unwrap()))
    }
}
use super::live as live_kpis;

const DAY: i64 = 86_400;

fn resolved(by: ResolvedBy, agent: Option<&str>) -> Payload {
    Payload::Resolved(Resolved {
        by,
        agent_id: agent.map(str::to_owned),
    })
}

fn survey(kind: SurveyType, score: i32, min: i32, max: i32) -> Payload {
    Payload::SurveyResponse(SurveyResponse {
        survey: kind,
        score,
        scale: Scale { min, max },
        agent_id: None,
    })
}

fn tags(added: &[&str]) -> Payload {
    Payload::TagsChanged(TagsChanged {
        added: added.iter().map(|s| s.to_string()).collect(),
        removed: vec![],
    })
}

/// The five conversations of the module doc, all opened on 2026-03-02 (UTC).
fn fixture() -> Vec<Conv> {
    vec![
        // c1, customer A, WhatsApp: bot first (2 s), handoff, ann assigned and answers.
        Conv::of("c1", "A")
            .opened("o", 0, Channel::Whatsapp)
            .push("tg", 1, tags(&["billing"]))
            .customer("m1", 10)
            .bot("m2", 12)
            .push("h", 20, Payload::Handoff)
            .customer("m3", 25)
            .assigned("as", 30, Some("ann"))
            .agent("m4", 40, "ann")
            .push(
                "st",
                41,
                Payload::MessageStatus(MessageStatusChanged {
                    message_id: "m-m4".into(),
                    status: DeliveryStatus::Read,
                    error_code: None,
                    category: None,
                    implies_message: false,
                }),
            )
            .push("r", 100, resolved(ResolvedBy::Agent, Some("ann")))
            .push("sv", 200, survey(SurveyType::Csat, 5, 1, 5)),
        // c2, customer B, webchat: bob; resolved, reopened, resolved again.
        Conv::of("c2", "B")
            .opened("o", 1000, Channel::Webchat)
            .push("tg", 1000, tags(&["billing", "refund"]))
            .customer("m1", 1000)
            .assigned("as", 1060, Some("bob"))
            .agent("m2", 1120, "bob")
            .push("r1", 1500, resolved(ResolvedBy::Agent, Some("bob")))
            .push("re", 2000, Payload::Reopened)
            .customer("m3", 2100)
            .agent("m4", 2200, "bob")
            .push("r2", 3000, resolved(ResolvedBy::Agent, Some("bob")))
            .push("sv", 3100, survey(SurveyType::Nps, 9, 0, 10)),
        // c3, customer A again (a repeat contact for c1): nobody answers, the customer leaves.
        Conv::of("c3", "A")
            .opened("o", 5000, Channel::Webchat)
            .customer("m1", 5000)
            .push("ab", 5600, Payload::Abandoned),
        // c4, customer C, email: auto-ack and a private note only; still open and waiting.
        Conv::of("c4", "C")
            .opened("o", 7000, Channel::Email)
            .customer("m1", 7000)
            .msg("m2", 7001, Sender::System, None)
            .push(
                "n",
                7100,
                Payload::Message(Message {
                    message_id: "n".into(),
                    sender: Sender::Agent,
                    agent_id: Some("carl".into()),
                    private: true,
                }),
            ),
        // c5, customer D, WhatsApp: the bot answers in 5 s and resolves. Its "failed" receipt is
        // stamped (and sorts) before the message itself.
        Conv::of("c5", "D")
            .opened("o", 8000, Channel::Whatsapp)
            .push(
                "st",
                8004,
                Payload::MessageStatus(MessageStatusChanged {
                    message_id: "m-m2".into(),
                    status: DeliveryStatus::Failed,
                    error_code: None,
                    category: None,
                    implies_message: false,
                }),
            )
            .customer("m1", 8000)
            .bot("m2", 8005)
            .push("r", 8010, resolved(ResolvedBy::Bot, None))
            .push("sv", 8020, survey(SurveyType::Ces, 7, 1, 7)),
    ]
}

fn dataset(convs: &[Conv]) -> Dataset {
    let mut ds = Dataset::new();
    for c in convs {
        ds.upsert(&c.facts());
    }
    // B buys 3 days after opening c2 (inside the 7-day attribution); D signs up after 8 days.
    ds.add_conversion("x1", "B", t(1000 + 3 * DAY), "sale", Some(5000), Some("EUR"));
    ds.add_conversion("x2", "D", t(8000 + 8 * DAY), "signup", None, None);
    // ann online 0-200; bob online 1000-4000 with a busy stretch (still logged in).
    ds.add_presence("p1", "ann", t(0), Presence::Online);
    ds.add_presence("p2", "ann", t(200), Presence::Offline);
    ds.add_presence("p3", "bob", t(1000), Presence::Online);
    ds.add_presence("p4", "bob", t(2500), Presence::Busy);
    ds.add_presence("p5", "bob", t(4000), Presence::Offline);
    ds.finish();
    ds
}

fn day_query() -> Query {
    Query::new(Window::new(t(0), t(DAY)).unwrap())
}

fn compute(ds: &Dataset, q: &Query, grouping: Grouping) -> Vec<(GroupKey, Kpis)> {
    Computation {
        data: ds.data(),
        cancel: &Cancel::default(),
        partials: None,
        query: q,
        schedule: None,
        targets: &Targets::default(),
        sla: &[],
    }
    .run(grouping)
    .expect("not cancelled")
}

fn overview(ds: &Dataset, q: &Query) -> Kpis {
    compute(ds, q, Grouping::All)
        .pop()
        .map(|(_, k)| k)
        .unwrap_or_default()
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn overview_matches_the_hand_computed_fixture() {
    let ds = dataset(&fixture());
    let k = overview(&ds, &day_query());
    assert_eq!(k.conversations, 5);
    // Customer messages: 2 + 2 + 1 + 1 + 1. Outbound: bot+agent (c1), 2 agent (c2), the
    // system auto-ack (c4), bot (c5); the private note is not outbound.
    assert_eq!(
        (
            k.messages_received,
            k.messages_sent,
            k.messages_delivered,
            k.messages_read
        ),
        (7, 6, 1, 1)
    );
    assert!(close(k.delivery_rate, 100.0 / 6.0) && close(k.read_rate, 100.0));
    // FRT: 2 (bot, c1), 120 (bob, c2), 5 (bot, c5).
    let frt = &k.first_response;
    assert_eq!(
        (frt.count, frt.min, frt.p50, frt.max),
        (3, Some(2.0), Some(5.0), Some(120.0))
    );
    assert!(close(frt.mean, 127.0 / 3.0));
    assert!(
        close(frt.p90, 5.0 + 0.8 * 115.0),
        "percentile_cont: {:?}",
        frt.p90
    );
    assert_eq!(k.bot_first_response.count, 2);
    assert_eq!(
        k.bot_first_response.within_target,
        Some(100.0),
        "2 s and 5 s are within 15 s"
    );
    // Human FRT: 40 - 20 (handoff) for c1, 120 for c2; one of two within 60 s.
    assert_eq!(
        (k.human_first_response.min, k.human_first_response.max),
        (Some(20.0), Some(120.0))
    );
    assert_eq!(k.human_first_response.within_target, Some(50.0));
    // Replies: 15 (c1, customer waited 25 -> 40) and 100 (c2, 2100 -> 2200).
    assert_eq!(
        (k.reply.count, k.reply.min, k.reply.max),
        (2, Some(15.0), Some(100.0))
    );
    // Wait: 10 (handoff 20 -> assigned 30) and 60 (1000 -> 1060).
    assert_eq!((k.wait.count, k.wait.mean), (2, Some(35.0)));
    // Resolution: 100, 2000 (c2 final resolve at 3000), 10.
    assert_eq!((k.resolution.count, k.resolution.p50), (3, Some(100.0)));
    assert_eq!((k.resolved, k.resolutions), (3, 4));
    // FCR: c1 has a repeat contact (c3), c2 was reopened, c5 is clean.
    assert!(
        close(k.fcr_rate, 100.0 / 3.0)
            && close(k.repeat_contact_rate, 100.0 / 3.0)
            && close(k.reopen_rate, 100.0 / 3.0)
    );
    assert_eq!((k.missed, k.abandoned), (1, 1));
    assert!(close(k.missed_rate, 20.0));
    // Ended: c1, c2, c3, c5. Durations 30, 1200, 0, 5; messages 4 + 4 + 1 + 2.
    assert_eq!(k.ended, 4);
    assert_eq!(
        (k.duration.count, k.duration.min, k.duration.max),
        (4, Some(0.0), Some(1200.0))
    );
    assert!(close(k.messages_per_chat, 2.75) && close(k.customer_messages_per_chat, 1.5));
    assert!(close(k.agent_messages_per_chat, 0.75) && close(k.bot_messages_per_chat, 0.5));
    assert_eq!(
        (k.csat.responses, k.csat.mean_score, k.csat.satisfied_percent),
        (1, Some(5.0), Some(100.0))
    );
    assert_eq!(k.csat.response_rate, None, "no survey_sent: no rate");
    assert_eq!((k.nps.promoters, k.nps.score), (1, Some(100.0)));
    assert_eq!((k.ces.responses, k.ces.mean_score), (1, Some(7.0)));
    assert!(close(k.automation_rate, 100.0 / 3.0));
    assert_eq!(k.bot_resolutions, 1);
    assert!(
        close(k.bot_handoff_rate, 50.0),
        "bot in c1 and c5, a human only in c1"
    );
    assert_eq!((k.conversion.customers, k.conversion.converted), (4, 1));
    assert!(close(k.conversion.rate, 25.0));
    assert_eq!(k.conversion.revenue, vec![("EUR".to_string(), 5000)]);
    assert_eq!(k.retention.previous_customers, 0);
    assert_eq!(k.retention.rate, None);
    assert_eq!(k.tags[0], ("billing".to_string(), 2, Some(40.0)));
    assert_eq!(k.tags[1], ("refund".to_string(), 1, Some(20.0)));
    assert_eq!(
        k.channels,
        vec![
            (Channel::Whatsapp, 2, Some(40.0)),
            (Channel::Webchat, 2, Some(40.0)),
            (Channel::Email, 1, Some(20.0))
        ]
    );
}

#[test]
fn an_empty_window_has_zero_counts_and_absent_means() {
    let ds = dataset(&fixture());
    let q = Query::new(Window::new(t(-10 * DAY), t(-9 * DAY)).unwrap());
    let k = overview(&ds, &q);
    assert_eq!((k.conversations, k.resolved, k.first_response.count), (0, 0, 0));
    assert_eq!(
        (k.first_response.mean, k.fcr_rate, k.nps.score),
        (None, None, None)
    );
}

#[test]
fn breakdown_by_agent_credits_responses_to_the_responder() {
    let ds = dataset(&fixture());
    let rows = compute(&ds, &day_query(), Grouping::By(Dimension::Agent));
    let row = |name: &str| {
        let sym = ds.lookup(name).unwrap();
        rows.iter()
            .find(|(k, _)| *k == GroupKey::Value(sym))
            .map(|(_, k)| k.clone())
            .unwrap()
    };
    let ann = row("ann");
    assert_eq!(ann.conversations, 1);
    assert_eq!(ann.first_response.count, 0, "c1's first response was the bot's");
    assert_eq!(
        (ann.human_first_response.mean, ann.reply.mean),
        (Some(20.0), Some(15.0))
    );
    assert_eq!(ann.csat.responses, 1, "credited to the conversation's agent");
    let bob = row("bob");
    assert_eq!(
        (bob.conversations, bob.first_response.mean, bob.resolutions),
        (1, Some(120.0), 2)
    );
    assert_eq!(bob.nps.promoters, 1);
    // Bot responses and agent-less conversations land in the "" row.
    let none = row("");
    assert_eq!((none.conversations, none.first_response.count), (3, 2));
}

#[test]
fn breakdown_by_tag_counts_a_conversation_under_each_tag() {
    let ds = dataset(&fixture());
    let rows = compute(&ds, &day_query(), Grouping::By(Dimension::Tag));
    let count = |name: &str| {
        let sym = ds.lookup(name).unwrap();
        rows.iter()
            .find(|(k, _)| *k == GroupKey::Value(sym))
            .map(|(_, k)| k.conversations)
    };
    assert_eq!(
        (count("billing"), count("refund"), count("")),
        (Some(2), Some(1), Some(3))
    );
}

#[test]
fn breakdowns_by_channel_priority_inbox_team_hour_and_weekday() {
    let ds = dataset(&fixture());
    let q = day_query();
    let by = |d| compute(&ds, &q, Grouping::By(d));
    let channels: Vec<(GroupKey, u64)> = by(Dimension::Channel)
        .into_iter()
        .map(|(k, v)| (k, v.conversations))
        .collect();
    assert!(channels.contains(&(GroupKey::Channel(Channel::Webchat), 2)));
    let priorities = by(Dimension::Priority);
    assert_eq!(priorities.len(), 1);
    assert_eq!(
        (priorities[0].0, priorities[0].1.conversations),
        (GroupKey::Priority(Priority::Normal), 5)
    );
    // Inbox "wa-1" (the builder's) on every conversation; no team.
    assert_eq!(by(Dimension::Inbox)[0].1.conversations, 5);
    assert_eq!(
        by(Dimension::Team)[0].0,
        GroupKey::Value(crate::engine::intern::NONE)
    );
    // Opened at 09:00, 09:16, 10:23, 10:56, 11:13 UTC on a Monday.
    let hours: Vec<(GroupKey, u64)> = by(Dimension::HourOfDay)
        .into_iter()
        .map(|(k, v)| (k, v.conversations))
        .collect();
    assert_eq!(
        hours,
        vec![
            (GroupKey::Number(9), 2),
            (GroupKey::Number(10), 2),
            (GroupKey::Number(11), 1)
        ]
    );
    // Resolved is placed by the resolution's hour: c1 at 09:01 and c2 at 09:50, c5 at 11:13.
    let resolved: Vec<u64> = by(Dimension::HourOfDay)
        .into_iter()
        .map(|(_, v)| v.resolved)
        .collect();
    assert_eq!(resolved, vec![2, 0, 1]);
    let weekdays = by(Dimension::DayOfWeek);
    assert_eq!(
        (weekdays[0].0, weekdays[0].1.conversations),
        (GroupKey::Number(1), 5)
    );
}

#[test]
fn filters_combine_with_and_and_responses_filter_by_the_responder() {
    let ds = dataset(&fixture());
    let mut q = day_query();
    q.filters.channels = vec![Channel::Webchat];
    assert_eq!(overview(&ds, &q).conversations, 2);
    q.filters.tags = vec!["refund".into()];
    assert_eq!(overview(&ds, &q).conversations, 1, "webchat AND refund");
    let mut q = day_query();
    q.filters.agents = vec!["ann".into()];
    let k = overview(&ds, &q);
    assert_eq!(k.conversations, 1);
    assert_eq!(
        k.first_response.count, 0,
        "the bot's first response does not match agent ann"
    );
    assert_eq!(k.human_first_response.count, 1);
    q.filters.agents = vec!["nobody".into()];
    assert_eq!(
        overview(&ds, &q).conversations,
        0,
        "an unknown value matches nothing"
    );
    let mut q = day_query();
    q.filters.inboxes = vec!["wa-1".into()];
    q.filters.priorities = vec![Priority::High];
    assert_eq!(overview(&ds, &q).conversations, 0);
    q.filters.priorities = vec![Priority::Normal, Priority::High];
    assert_eq!(overview(&ds, &q).conversations, 5);
    q.filters.teams = vec!["support".into()];
    assert_eq!(overview(&ds, &q).conversations, 0);
}

#[test]
fn repeat_contact_just_inside_and_just_outside_the_window() {
    let at = |extra: i64| {
        vec![
            Conv::of("a", "X")
                .opened("o", 0, Channel::Sms)
                .customer("m", 1)
                .agent("r", 2, "ann")
                .push("z", 10, resolved(ResolvedBy::Agent, None)),
            Conv::of("b", "X").opened("o", 10 + 7 * DAY + extra, Channel::Sms),
        ]
    };
    let q = day_query();
    let inside = overview(&dataset(&at(0)), &q);
    assert_eq!(
        (inside.repeat_contact_rate, inside.fcr_rate),
        (Some(100.0), Some(0.0))
    );
    let outside = overview(&dataset(&at(1)), &q);
    assert_eq!(
        (outside.repeat_contact_rate, outside.fcr_rate),
        (Some(0.0), Some(100.0))
    );
    let mut disabled = q.clone();
    disabled.repeat_window = Duration::zero();
    assert_eq!(overview(&dataset(&at(0)), &disabled).fcr_rate, Some(100.0));
}

#[test]
fn conversion_at_the_edge_of_the_attribution_window() {
    let convs = [Conv::of("a", "X").opened("o", 0, Channel::Sms)];
    let with = |offset: i64| {
        let mut ds = Dataset::new();
        ds.upsert(&convs[0].facts());
        ds.add_conversion("x", "X", t(offset), "sale", Some(100), Some("USD"));
        ds.add_conversion("y", "X", t(-1), "sale", Some(1), Some("USD")); // before opening
        ds.finish();
        overview(&ds, &day_query()).conversion
    };
    let edge = with(7 * DAY);
    assert_eq!(
        (edge.converted, edge.revenue.clone()),
        (1, vec![("USD".to_string(), 100)])
    );
    assert_eq!(with(7 * DAY + 1).converted, 0);
    let mut q = day_query();
    q.conversion_kinds = vec!["signup".into()];
    let mut ds = Dataset::new();
    ds.upsert(&convs[0].facts());
    ds.add_conversion("x", "X", t(5), "sale", Some(100), Some("USD"));
    ds.finish();
    assert_eq!(overview(&ds, &q).conversion.converted, 0, "only signups count");
}

#[test]
fn csat_on_1_to_10_and_a_replaced_answer() {
    let convs = vec![
        // 8 on 1-10: (8-1)/9 = 0.78 >= 0.75, satisfied; maps to 1 + 4 * 7/9 on 1-5.
        Conv::of("a", "X")
            .opened("o", 0, Channel::Sms)
            .push("s", 5, survey(SurveyType::Csat, 8, 1, 10)),
        // 7 on 1-10: 0.67, not satisfied.
        Conv::of("b", "Y")
            .opened("o", 0, Channel::Sms)
            .push("s", 5, survey(SurveyType::Csat, 7, 1, 10)),
        // 2 replaced by 4 on 1-5: only the 4 counts.
        Conv::of("c", "Z")
            .opened("o", 0, Channel::Sms)
            .push("s1", 5, survey(SurveyType::Csat, 2, 1, 5))
            .push("s2", 6, survey(SurveyType::Csat, 4, 1, 5))
            .push(
                "ss",
                1,
                Payload::SurveySent(SurveySent {
                    survey: SurveyType::Csat,
                }),
            ),
    ];
    let k = overview(&dataset(&convs), &day_query());
    assert_eq!(k.csat.responses, 3);
    assert!(close(k.csat.satisfied_percent, 200.0 / 3.0));
    let expected_mean = ((1.0 + 4.0 * 7.0 / 9.0) + (1.0 + 4.0 * 6.0 / 9.0) + 4.0) / 3.0;
    assert!(close(k.csat.mean_score, expected_mean));
    assert_eq!(
        k.csat.distribution,
        vec![(4, 1, 5, 1), (7, 1, 10, 1), (8, 1, 10, 1)]
    );
    assert_eq!((k.csat.sent, k.csat.response_rate), (1, Some(300.0)));
}

#[test]
fn nps_and_ces_scales() {
    let convs = vec![
        Conv::of("a", "X")
            .opened("o", 0, Channel::Sms)
            .push("s", 5, survey(SurveyType::Nps, 10, 0, 10)),
        Conv::of("b", "Y")
            .opened("o", 0, Channel::Sms)
            .push("s", 5, survey(SurveyType::Nps, 7, 0, 10)),
        Conv::of("c", "Z")
            .opened("o", 0, Channel::Sms)
            .push("s", 5, survey(SurveyType::Nps, 3, 0, 10)),
        Conv::of("d", "W")
            .opened("o", 0, Channel::Sms)
            .push("s", 5, survey(SurveyType::Nps, 6, 0, 10)),
        // CES 3 on 1-5 maps to 1 + 6 * 2/4 = 4 on 1-7.
        Conv::of("e", "V")
            .opened("o", 0, Channel::Sms)
            .push("s", 5, survey(SurveyType::Ces, 3, 1, 5)),
    ];
    let k = overview(&dataset(&convs), &day_query());
    assert_eq!((k.nps.promoters, k.nps.passives, k.nps.detractors), (1, 1, 2));
    assert_eq!(k.nps.score, Some(-25.0));
    assert_eq!(k.ces.mean_score, Some(4.0));
}

#[test]
fn utilization_counts_handling_inside_logged_in_time() {
    let ds = dataset(&fixture());
    let (agents, team) = live::utilization(&ds, &day_query());
    // ann: logged in 200 s, handling 30..100 = 70 s. bob: 3000 s logged in (busy counts),
    // handling 1060..1500 and 2000..3000 = 1440 s.
    assert_eq!(agents.len(), 2);
    assert_eq!(
        (
            agents[0].agent.as_str(),
            agents[0].logged_in_seconds,
            agents[0].handling_seconds
        ),
        ("ann", 200.0, 70.0)
    );
    assert_eq!(agents[0].utilization, Some(35.0));
    assert_eq!(
        (agents[1].logged_in_seconds, agents[1].handling_seconds),
        (3000.0, 1440.0)
    );
    assert!(close(team.utilization, 100.0 * 1510.0 / 3200.0));
}

#[test]
fn utilization_merges_overlapping_conversations_and_clips_to_presence_and_window() {
    let convs = vec![
        Conv::of("a", "X")
            .opened("o", 0, Channel::Sms)
            .assigned("as", 100, Some("ann"))
            .push("r", 400, resolved(ResolvedBy::Agent, None)),
        Conv::of("b", "Y")
            .opened("o", 0, Channel::Sms)
            .assigned("as", 300, Some("ann"))
            .push("r", 600, resolved(ResolvedBy::Agent, None)),
        // Still open and assigned at the end of the window: counts until ann logs off.
        Conv::of("c", "Z")
            .opened("o", 0, Channel::Sms)
            .assigned("as", 900, Some("ann")),
    ];
    let mut ds = Dataset::new();
    for c in &convs {
        ds.upsert(&c.facts());
    }
    ds.add_presence("p1", "ann", t(200), Presence::Online);
    ds.add_presence("p2", "ann", t(500), Presence::Away);
    ds.add_presence("p3", "ann", t(1000), Presence::Offline);
    ds.finish();
    let (agents, _) = live::utilization(&ds, &day_query());
    // Logged in 200..1000 = 800 s. Handling union 100..600 and 900..: inside presence
    // 200..600 + 900..1000 = 500 s.
    assert_eq!(
        (agents[0].logged_in_seconds, agents[0].handling_seconds),
        (800.0, 500.0)
    );
    // A window cutting through: [300, 950) -> logged in 650 s, handling 300..600 + 900..950.
    let q = Query::new(Window::new(t(300), t(950)).unwrap());
    let (agents, _) = live::utilization(&ds, &q);
    assert_eq!(
        (agents[0].logged_in_seconds, agents[0].handling_seconds),
        (650.0, 350.0)
    );
}

#[test]
fn backlog_at_an_instant_between_resolve_and_reopen() {
    let ds = dataset(&fixture());
    let q = day_query();
    let open_ids = |at: i64| -> Vec<String> {
        live::backlog_conversations(&ds, &q, micros(t(at)))
            .map(|c| c.id.to_string())
            .collect()
    };
    // At 1700 c2 is resolved (1500) and not yet reopened (2000).
    assert_eq!(open_ids(1700), Vec::<String>::new());
    assert_eq!(open_ids(2500), vec!["c2".to_string()]);
    let b = live::backlog(&ds, &q, None, micros(t(7500)));
    // c4 only: opened 7000, unassigned, the customer waiting since 7000; age 500 s.
    assert_eq!(
        (b.open, b.unassigned, b.unanswered, b.age.mean),
        (1, 1, 1, Some(500.0))
    );
    let b = live::backlog(&ds, &q, None, micros(t(1010)));
    assert_eq!(
        (b.open, b.unassigned, b.unanswered),
        (1, 1, 1),
        "c2 before bob took it"
    );
}

#[test]
fn drill_down_lists_the_conversations_behind_a_kpi() {
    let ds = dataset(&fixture());
    let q = day_query();
    let ids = |kind| {
        live::drill_down(&ds, &q, kind)
            .iter()
            .map(|c| c.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(DrillDown::Opened), vec!["c1", "c2", "c3", "c4", "c5"]);
    assert_eq!(ids(DrillDown::Resolved), vec!["c1", "c2", "c5"]);
    assert_eq!(ids(DrillDown::NotFcr), vec!["c1", "c2"]);
    assert_eq!(ids(DrillDown::Missed), vec!["c3"]);
    assert_eq!(ids(DrillDown::Abandoned), vec!["c3"]);
    assert_eq!(ids(DrillDown::Backlog), vec!["c4"]);
    assert_eq!(ids(DrillDown::Ended), vec!["c1", "c2", "c3", "c5"]);
}

#[test]
fn daily_series_in_berlin_puts_items_on_local_days_across_the_dst_change() {
    // 2026-03-29 is 23 hours long in Berlin. 23:30 UTC on the 28th is 00:30 on the 29th;
    // 22:30 UTC on the 29th is already 00:30 on the 30th.
    let base = micros(t(0)); // 2026-03-02 09:00 UTC
    let day_29 = chrono::DateTime::parse_from_rfc3339("2026-03-28T23:30:00Z")
        .unwrap()
        .timestamp()
        - base / 1_000_000;
    let day_30 = chrono::DateTime::parse_from_rfc3339("2026-03-29T22:30:00Z")
        .unwrap()
        .timestamp()
        - base / 1_000_000;
    let convs = vec![
        Conv::of("a", "X").opened("o", day_29, Channel::Sms),
        Conv::of("b", "Y").opened("o", day_30, Channel::Sms),
    ];
    let ds = dataset(&convs);
    let from = chrono::DateTime::parse_from_rfc3339("2026-03-28T00:00:00+01:00")
        .unwrap()
        .to_utc();
    let to = chrono::DateTime::parse_from_rfc3339("2026-03-31T00:00:00+02:00")
        .unwrap()
        .to_utc();
    let mut q = Query::new(Window::new(from, to).unwrap());
    q.time_zone = "Europe/Berlin".parse::<Tz>().unwrap();
    let series = compute(
        &ds,
        &q,
        Grouping::Series(crate::domain::calendar::Granularity::Day),
    );
    let counts: Vec<u64> = series.iter().map(|(_, k)| k.conversations).collect();
    assert_eq!(counts, vec![0, 1, 1], "28th, 29th, 30th local");
    // Retention in a series looks at the previous bucket: Y is new, X was not seen before.
    assert_eq!(series[2].1.retention.previous_customers, 1);
    assert_eq!(series[2].1.retention.retained, 0);
}

#[test]
fn business_hours_measure_only_open_time_over_a_weekend_and_a_holiday() {
    // Friday 2026-03-06 17:30 Berlin: the customer writes; Tuesday 09:30 the agent answers.
    // Monday the 9th is a holiday. Open Mon-Fri 09:00-18:00: 30 min Friday + 30 min Tuesday.
    let fri = chrono::DateTime::parse_from_rfc3339("2026-03-06T17:30:00+01:00")
        .unwrap()
        .timestamp()
        - micros(t(0)) / 1_000_000;
    let tue = chrono::DateTime::parse_from_rfc3339("2026-03-10T09:30:00+01:00")
        .unwrap()
        .timestamp()
        - micros(t(0)) / 1_000_000;
    let convs = vec![
        Conv::of("a", "X")
            .opened("o", fri, Channel::Email)
            .customer("m", fri)
            .agent("r", tue, "ann"),
    ];
    let ds = dataset(&convs);
    let mut weekly: [Vec<(u32, u32)>; 7] = Default::default();
    for day in weekly.iter_mut().take(5) {
        day.push((9 * 3600, 18 * 3600));
    }
    let holidays = [NaiveDate::from_ymd_opt(2026, 3, 9).unwrap()]
        .into_iter()
        .collect();
    let schedule = Schedule::new("Europe/Berlin".parse().unwrap(), weekly, holidays).unwrap();
    let mut q = Query::new(Window::new(t(0), t(10 * DAY)).unwrap());
    let targets = Targets::default();
    let plain = Computation {
        data: ds.data(),
        cancel: &Cancel::default(),
        partials: None,
        query: &q,
        schedule: Some(&schedule),
        targets: &targets,
        sla: &[],
    }
    .run(Grouping::All)
    .unwrap();
    assert_eq!(
        plain[0].1.first_response.mean,
        Some((tue - fri) as f64),
        "business_hours off: wall-clock"
    );
    q.business_hours = true;
    let open = Computation {
        data: ds.data(),
        cancel: &Cancel::default(),
        partials: None,
        query: &q,
        schedule: Some(&schedule),
        targets: &targets,
        sla: &[],
    }
    .run(Grouping::All)
    .unwrap();
    assert_eq!(open[0].1.first_response.mean, Some(3600.0));
    assert_eq!(open[0].1.human_first_response.mean, Some(3600.0));
}

#[test]
fn retention_is_the_share_of_last_windows_customers_who_came_back() {
    // Window = day 2. Day 1: A, B, C. Day 2: A again and a new customer D.
    let convs = vec![
        Conv::of("a1", "A").opened("o", 0, Channel::Sms),
        Conv::of("b1", "B").opened("o", 10, Channel::Sms),
        Conv::of("c1", "C").opened("o", 20, Channel::Sms),
        Conv::of("a2", "A").opened("o", DAY + 5, Channel::Sms),
        Conv::of("d2", "D").opened("o", DAY + 6, Channel::Sms),
    ];
    let q = Query::new(Window::new(t(DAY), t(2 * DAY)).unwrap());
    let k = overview(&dataset(&convs), &q);
    assert_eq!((k.retention.previous_customers, k.retention.retained), (3, 1));
    assert!(close(k.retention.rate, 100.0 / 3.0));
}

/// Kept totals in a map (the query cache's stand-in), counting what is put.
#[derive(Default)]
struct MapStore {
    kept: std::sync::Mutex<std::collections::HashMap<PartialKey, Arc<Partial>>>,
    puts: std::sync::atomic::AtomicUsize,
}

impl PartialStore for MapStore {
    fn get(&self, key: &PartialKey) -> Option<Arc<Partial>> {
        self.kept.lock().unwrap().get(key).cloned()
    }

    fn put(&self, key: PartialKey, partial: Arc<Partial>) {
        self.puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.kept.lock().unwrap().insert(key, partial);
    }
}

fn compute_with(data: &Data, q: &Query, store: &MapStore) -> Vec<(GroupKey, Kpis)> {
    Computation {
        data,
        cancel: &Cancel::default(),
        partials: Some(store),
        query: q,
        schedule: None,
        targets: &Targets::default(),
        sla: &[],
    }
    .run(Grouping::By(Dimension::Agent))
    .expect("not cancelled")
}

/// A conversation of `customer` opened at `at`, answered by `agent` and resolved.
fn served(id: &str, customer: &str, at: i64, agent: &str) -> crate::domain::facts::ConversationFacts {
    Conv::of(id, customer)
        .opened("o", at, Channel::Webchat)
        .customer("c", at + 5)
        .agent("a", at + 65, agent)
        .push("r", at + 600, resolved(ResolvedBy::Agent, Some(agent)))
        .facts()
}

/// `days` days of `per_day` served conversations each, 300 s apart from midnight, of
/// `customers` customers in turn (so customers come back: repeat contacts) and three agents.
fn served_days(days: i64, per_day: i64, customers: i64) -> Dataset {
    let mut ds = Dataset::new();
    for i in 0..days * per_day {
        ds.upsert(&served(
            &format!("c{i:03}"),
            &format!("cust{}", i % customers),
            (i / per_day) * DAY + (i % per_day) * 300,
            &format!("ann{}", i % 3),
        ));
    }
    ds.finish();
    ds
}

#[test]
fn a_changed_day_computes_its_changed_chunks_again_and_reuses_the_others() {
    // 3 days of 150 conversations (3 chunks of 64 rows each, in tests), customers reused so
    // repeat contacts exist.
    let ds = served_days(3, 150, 40);
    let q = Query::new(Window::new(t(-DAY), t(5 * DAY)).unwrap());
    let store = MapStore::default();
    let mut data = ds.data().clone();
    assert_eq!(
        compute_with(&data, &q, &store),
        compute(&ds, &q, Grouping::By(Dimension::Agent))
    );
    // Day 2 changes: its 10th conversation gets a second agent reply, and a new conversation of
    // a new customer is appended (after the day's 150 rows: its third chunk).
    let s = data
        .segments
        .iter()
        .position(|seg| seg.day == t(DAY).date_naive())
        .unwrap();
    let mut changed = served("c159", "cust39", DAY + 9 * 300, "ann0");
    changed.last_event_at += Duration::seconds(1);
    let new = served("c999", "newcomer", DAY + 1_000, "ann1");
    let mut symbols = (*data.symbols).clone();
    let mut customers = ds.customers.clone();
    let merged = data.segments[s].merge(&[changed, new], 1, &mut |n| symbols.intern(n), &mut customers);
    data.segments[s] = Arc::new(merged);
    data.symbols = Arc::new(symbols);
    data.customers = customers.len();
    let mut changes = (*data.changes).clone();
    changes.record(
        vec![(customers.get("newcomer").unwrap(), micros(t(DAY + 1_000)))],
        Vec::new(),
    );
    data.changes = Arc::new(changes);

    let puts = || store.puts.load(std::sync::atomic::Ordering::Relaxed);
    let reference = |data: &Data| {
        let (targets, cancel) = (Targets::default(), Cancel::default());
        Computation {
            data,
            query: &q,
            schedule: None,
            targets: &targets,
            sla: &[],
            cancel: &cancel,
            partials: None,
        }
        .run(Grouping::By(Dimension::Agent))
        .unwrap()
    };
    let before = puts();
    assert_eq!(compute_with(&data, &q, &store), reference(&data));
    // The first chunk (the changed reply) and the third (the new row) are computed again and
    // kept, then the day: the second chunk and the other days are reused.
    assert_eq!(puts() - before, 3);

    // The day changes again: one more conversation, in its third chunk.
    let another = served("c998", "latecomer", DAY + 2_000, "ann2");
    let mut symbols = (*data.symbols).clone();
    let merged = data.segments[s].merge(&[another], 2, &mut |n| symbols.intern(n), &mut customers);
    data.symbols = Arc::new(symbols);
    data.segments[s] = Arc::new(merged);
    data.customers = customers.len();
    let mut changes = (*data.changes).clone();
    changes.record(
        vec![(customers.get("latecomer").unwrap(), micros(t(DAY + 2_000)))],
        Vec::new(),
    );
    data.changes = Arc::new(changes);
    let before = puts();
    assert_eq!(compute_with(&data, &q, &store), reference(&data));
    // Only that chunk is computed again, then the day: the first two chunks are reused.
    assert_eq!(puts() - before, 2);
}

#[test]
fn a_day_that_keeps_receiving_conversations_leaves_no_stale_totals_behind() {
    // 2 days of 100 conversations; new conversations stream into the second one.
    let ds = served_days(2, 100, 30);
    let q = Query::new(Window::new(t(-DAY), t(3 * DAY)).unwrap());
    let store = MapStore::default();
    let mut data = ds.data().clone();
    compute_with(&data, &q, &store);
    let slots = store.kept.lock().unwrap().len();
    let s = data
        .segments
        .iter()
        .position(|seg| seg.day == t(DAY).date_naive())
        .unwrap();
    let mut customers = ds.customers.clone();
    for n in 0..5 {
        let new = served(
            &format!("new{n}"),
            &format!("cust{n}"),
            DAY + 70_000 + n * 60,
            "ann1",
        );
        stream_in(&mut data, &mut customers, s, &[new], 1 + n);
        let fresh = MapStore::default();
        assert_eq!(compute_with(&data, &q, &store), compute_with(&data, &q, &fresh));
        // Totals of the day's newer versions (and of more of its rows) replaced the older ones.
        assert_eq!(store.kept.lock().unwrap().len(), slots, "after change {n}");
    }
}

/// Streams `facts` into day segment `s` as of store position `as_of` and logs their openings.
fn stream_in(
    data: &mut Data,
    customers: &mut crate::engine::intern::Interner,
    s: usize,
    facts: &[crate::domain::facts::ConversationFacts],
    as_of: i64,
) {
    let mut symbols = (*data.symbols).clone();
    let merged = data.segments[s].merge(facts, as_of, &mut |n| symbols.intern(n), customers);
    data.segments[s] = Arc::new(merged);
    data.symbols = Arc::new(symbols);
    data.customers = customers.len();
    let mut changes = (*data.changes).clone();
    let openings = facts
        .iter()
        .map(|f| {
            (
                customers.get(f.customer_id.as_deref().unwrap_or("")).unwrap_or(0),
                micros(f.opened_at),
            )
        })
        .collect();
    changes.record(openings, Vec::new());
    data.changes = Arc::new(changes);
}

#[test]
fn a_returning_customer_corrects_the_kept_totals_that_counted_them_instead_of_computing_them_again() {
    // 3 days of 150 served conversations (chunks of 64 rows in tests), and two loyal customers
    // served once: at the end of day 0 and early on day 2. Both come back late on day 2, so
    // their first conversations become repeat contacts (default repeat window: 7 days).
    let mut ds = Dataset::new();
    for i in 0..450 {
        let at = (i / 150) * DAY + (i % 150) * 300;
        ds.upsert(&served(
            &format!("c{i:03}"),
            &format!("cust{}", i % 40),
            at,
            "ann0",
        ));
    }
    ds.upsert(&served("loyal1-first", "loyal1", 50_000, "ann1"));
    ds.upsert(&served("loyal2-first", "loyal2", 2 * DAY + 100, "ann2"));
    ds.finish();
    let q = Query::new(Window::new(t(-DAY), t(5 * DAY)).unwrap());
    let store = MapStore::default();
    let mut data = ds.data().clone();
    let before = compute_with(&data, &q, &store);
    let day0 = t(0).date_naive();
    let kept_of_day0 = |store: &MapStore| -> Vec<(Slot, Arc<Partial>)> {
        let kept = store.kept.lock().unwrap();
        kept.iter()
            .filter(|(k, _)| matches!(k.slot, Slot::Day(d) | Slot::Chunk(d, _) if d == day0))
            .map(|(k, p)| (k.slot, p.clone()))
            .collect()
    };
    // Day 0 lies more than a day before the newest opening: it keeps its totals with their
    // verdicts, not its chunks' totals.
    let Ok([(Slot::Day(_), day0_before)]) = <[_; 1]>::try_from(kept_of_day0(&store)) else {
        panic!("day 0 keeps one set of totals");
    };
    assert!(day0_before.ledgers.is_some());

    let s = data
        .segments
        .iter()
        .position(|seg| seg.day == t(2 * DAY).date_naive())
        .unwrap();
    let mut customers = ds.customers.clone();
    let back = [
        served("loyal1-back", "loyal1", 2 * DAY + 80_000, "ann1"),
        served("loyal2-back", "loyal2", 2 * DAY + 80_060, "ann2"),
    ];
    stream_in(&mut data, &mut customers, s, &back, 1);
    let after = compute_with(&data, &q, &MapStore::default());
    assert_ne!(
        before, after,
        "the loyal customers' first conversations became repeat contacts"
    );
    assert_eq!(compute_with(&data, &q, &store), after);

    // Day 0's totals were corrected (same rows, verdicts moved), not computed again.
    let Ok([(Slot::Day(_), day0_after)]) = <[_; 1]>::try_from(kept_of_day0(&store)) else {
        panic!("day 0 keeps one set of totals");
    };
    assert!(!Arc::ptr_eq(&day0_before, &day0_after));
    assert!(
        Arc::ptr_eq(&day0_before.groups, &day0_after.groups),
        "a correction carries the verdicts it moved, not a copy of the day's groups"
    );
    assert!(!day0_after.moved.is_empty());
    assert!(day0_after.is_of(day0_before.from, day0_before.rows));
    assert_eq!(day0_after.at, data.changes.version);
    // Its 151 rows were judged in two pieces (97 rows in tests): the piece without loyal1 kept
    // its very ledger, the other got one with loyal1's verdict moved.
    let (before, after) = (
        day0_before.ledgers.as_ref().unwrap(),
        day0_after.ledgers.as_ref().unwrap(),
    );
    let same: Vec<bool> = before.iter().zip(after).map(|(b, a)| Arc::ptr_eq(b, a)).collect();
    assert_eq!(same.len(), 2);
    assert_eq!(same.iter().filter(|s| **s).count(), 1, "{same:?}");
}

/// The day totals `store` kept, written (`stored::encode`) and read back (`stored::decode`)
/// into a new store.
fn written_and_read_back(data: &Data, store: &MapStore) -> MapStore {
    let restored = MapStore::default();
    for (key, p) in store.kept.lock().unwrap().iter() {
        let Slot::Day(day) = key.slot else { continue };
        if matches!(key.rows, KeptRows::Edge { .. }) {
            continue;
        }
        let seg = data.segments.iter().find(|s| s.day == day).unwrap();
        let basis = stored::Basis {
            days: vec![(day, seg.as_of)],
            side: Some(7),
        };
        let body =
            stored::encode(&key.shape, p, seg, &data.symbols, &basis).expect("the day's own customers");
        let places = stored::Places::of(seg);
        let back = stored::decode(&body, seg, &places, (&[], data.conversions.len()), &mut |name| {
            data.symbols.get(name).unwrap()
        })
        .unwrap();
        assert_eq!(
            (&*back.shape, back.rows, &back.basis),
            (&*key.shape, p.rows, &basis)
        );
        restored.kept.lock().unwrap().insert(
            key.clone(),
            Arc::new(back.into_partial(seg.version, data.changes.version)),
        );
    }
    restored
}

#[test]
fn kept_totals_written_and_read_back_answer_as_those_computed_and_are_reused() {
    let ds = served_days(3, 150, 40);
    let q = Query::new(Window::new(t(-DAY), t(5 * DAY)).unwrap());
    let store = MapStore::default();
    let expected = compute_with(ds.data(), &q, &store);
    let restored = written_and_read_back(ds.data(), &store);
    assert_eq!(restored.kept.lock().unwrap().len(), 3, "one per day");
    assert_eq!(compute_with(ds.data(), &q, &restored), expected);
    assert_eq!(
        restored.puts.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing computed again"
    );
}

#[test]
fn kept_totals_of_more_rows_than_their_body_has_bytes_are_read_back() {
    let ds = served_days(1, 10, 10);
    let data = ds.data();
    let seg = &data.segments[0];
    let p = Partial {
        groups: Arc::default(),
        moved: Vec::new(),
        from: seg.version,
        rows: KeptRows::Inside(10_000_000),
        at: 0,
        openings: partial::Read::nothing(),
        conversions: partial::Read::nothing(),
        ledgers: None,
    };
    let basis = stored::Basis {
        days: Vec::new(),
        side: None,
    };
    let body = stored::encode("shape", &p, seg, &data.symbols, &basis).unwrap();
    assert!(body.len() < 100);
    let back = stored::decode(&body, seg, &stored::Places::of(seg), (&[], 0), &mut |_| 0).unwrap();
    assert_eq!(back.rows, KeptRows::Inside(10_000_000));
}
