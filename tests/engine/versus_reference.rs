//! The segment engine against the exact reference computation (`reference/`, the straightforward
//! in-memory engine whose answers matched an independent implementation) on a simulated
//! helpdesk plus hand-made edge cases: every grouping, filters, time zones across DST changes,
//! business hours with holidays, windows that cut conversations in half, lookahead knobs,
//! backlog instants, utilization and drill-downs must give identical answers. Also: segment
//! rows and stored records keep exactly what the facts say.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use chatkpi::domain::{
    Error,
    calendar::{Granularity, Schedule},
    event::*,
    facts::{ConversationFacts, derive},
    query::{Filters as QueryFilters, Query, Window},
    sla::{Conditions, Policy, Target},
    time::micros,
};
use chatkpi::engine::{
    intern::Interner,
    kpi::{live::DrillDown, *},
    segment::{Conv, Parts, Segment},
};
use chatkpi_tools::sim::{SimConfig, simulate};

use crate::reference::{dataset::Dataset, kpis as reference, live as reference_live};

/// The same tenant in both engines.
struct World {
    /// The tenant's SLA policies (docs/metrics.md §10), judged by both.
    policies: Vec<Policy>,
    reference: Dataset,
    data: Data,
    /// The segments' customer table (names of customer ids).
    customers: Interner,
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 22, 0, 0, 0).unwrap()
}

fn at(hours: f64) -> DateTime<Utc> {
    start() + Duration::milliseconds((hours * 3_600_000.0) as i64)
}

fn ev(id: &str, conversation: Option<&str>, t: DateTime<Utc>, payload: Payload) -> Event {
    Event {
        event_id: id.into(),
        conversation_id: conversation.map(str::to_owned),
        occurred_at: t,
        payload,
    }
}

fn message(id: &str, conversation: &str, t: DateTime<Utc>, sender: Sender, agent: Option<&str>) -> Event {
    ev(
        id,
        Some(conversation),
        t,
        Payload::Message(Message {
            message_id: id.into(),
            sender,
            agent_id: agent.map(str::to_owned),
            private: false,
        }),
    )
}

fn opened(id: &str, conversation: &str, t: DateTime<Utc>, customer: &str) -> Event {
    ev(
        id,
        Some(conversation),
        t,
        Payload::ConversationOpened(ConversationOpened {
            customer_id: customer.into(),
            channel: Channel::Sms,
            inbox: None,
            team: Some("support".into()),
            priority: Some(Priority::High),
            initiated_by: Initiator::Customer,
        }),
    )
}

/// Conversations the simulator does not produce.
fn edge_cases() -> Vec<Event> {
    let resolved = |id: &str, c: &str, t| {
        ev(
            id,
            Some(c),
            t,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Agent,
                agent_id: Some("agent-001".into()),
            }),
        )
    };
    vec![
        // Its `conversation_opened` is stamped an hour after its resolution, and the same
        // customer comes back the next day: a repeat contact, but never its own.
        message("x1-m1", "edge-late", at(30.0), Sender::Customer, None),
        message("x1-m2", "edge-late", at(30.1), Sender::Agent, Some("agent-001")),
        resolved("x1-r", "edge-late", at(30.2)),
        opened("x1-o", "edge-late", at(31.2), "edge-customer"),
        opened("x2-o", "edge-next", at(50.0), "edge-customer"),
        message("x2-m1", "edge-next", at(50.0), Sender::Customer, None),
        // Open for good: assigned, never answered, never resolved.
        opened("x3-o", "edge-open", at(40.0), "edge-open-customer"),
        message("x3-m1", "edge-open", at(40.0), Sender::Customer, None),
        ev(
            "x3-a",
            Some("edge-open"),
            at(40.5),
            Payload::Assigned(Assigned {
                agent_id: Some("agent-002".into()),
                team: None,
            }),
        ),
        // A conversion exactly at the end of a one-day attribution window.
        ev(
            "x4-c",
            Some("edge-open"),
            at(64.0),
            Payload::Conversion(Conversion {
                customer_id: "edge-open-customer".into(),
                kind: "sale".into(),
                value_minor: Some(1_000_000_000_000_000),
                currency: Some("USD".into()),
            }),
        ),
        // Presence far before every window: it carries into them.
        ev(
            "x5-p",
            None,
            at(-200.0),
            Payload::AgentStatus(AgentStatus {
                agent_id: "agent-edge".into(),
                status: Presence::Away,
            }),
        ),
    ]
}

fn world() -> World {
    let mut events = simulate(&SimConfig {
        conversations: 1500,
        days: 14,
        seed: 17,
        start: start().date_naive(),
        agents: 12,
    });
    events.extend(edge_cases());
    build(&events)
}

fn build(events: &[Event]) -> World {
    let mut by_conversation: HashMap<&str, Vec<Event>> = HashMap::new();
    for e in events {
        if let Some(c) = e.conversation_id.as_deref() {
            by_conversation.entry(c).or_default().push(e.clone());
        }
    }
    let facts: Vec<ConversationFacts> = by_conversation
        .iter()
        .filter_map(|(id, events)| derive(id, events))
        .collect();

    let mut reference = Dataset::new();
    for f in &facts {
        reference.upsert(f);
    }
    let (mut symbols, mut customers) = (Interner::new(), Interner::new());
    let mut by_day: BTreeMap<NaiveDate, Vec<ConversationFacts>> = BTreeMap::new();
    for f in facts {
        by_day.entry(f.opened_at.date_naive()).or_default().push(f);
    }
    let segments: Vec<Arc<Segment>> = by_day
        .iter()
        .map(|(day, facts)| {
            Arc::new(Segment::build(
                *day,
                facts,
                0,
                &mut |n: &str| symbols.intern(n),
                &mut customers,
            ))
        })
        .collect();
    let mut presence = Vec::new();
    let mut conversions = Vec::new();
    for e in events {
        match &e.payload {
            Payload::AgentStatus(p) => {
                reference.add_presence(&e.event_id, &p.agent_id, e.occurred_at, p.status);
                presence.push((
                    &e.event_id,
                    symbols.intern(&p.agent_id),
                    micros(e.occurred_at),
                    p.status,
                ));
            }
            Payload::Conversion(c) => {
                reference.add_conversion(
                    &e.event_id,
                    &c.customer_id,
                    e.occurred_at,
                    &c.kind,
                    c.value_minor,
                    c.currency.as_deref(),
                );
                let rec = ConversionRec {
                    at: micros(e.occurred_at),
                    customer: customers.intern(&c.customer_id),
                    kind: symbols.intern(&c.kind),
                    value_minor: c.value_minor,
                    currency: symbols.intern_opt(c.currency.as_deref()),
                };
                conversions.push((&e.event_id, rec));
            }
            _ => {}
        }
    }
    reference.finish();
    presence.sort_by(|a, b| (a.1, a.2, a.0).cmp(&(b.1, b.2, b.0)));
    conversions.sort_by(|a, b| (a.1.at, a.0).cmp(&(b.1.at, b.0)));
    World {
        policies: policies(),
        reference,
        customers: customers.clone(),
        data: Data {
            segments,
            symbols: Arc::new(symbols),
            customers: customers.len(),
            presence: Arc::new(
                presence
                    .into_iter()
                    .map(|(_, agent, at, status)| PresenceChange { agent, at, status })
                    .collect(),
            ),
            conversions: Arc::new(conversions.into_iter().map(|(_, c)| c).collect()),
            ..Default::default()
        },
    }
}

/// Five policies as a WhatsApp and live-chat team would set them, two in business hours; one
/// (`sales`) sets no first-response target, so the first responses it governs are not judged.
fn policies() -> Vec<Policy> {
    let target = |seconds, business_hours| {
        Some(Target {
            seconds,
            business_hours,
        })
    };
    let policy = |name: &str, conditions, targets| Policy {
        name: name.into(),
        conditions,
        targets,
    };
    vec![
        policy(
            "urgent whatsapp",
            Conditions {
                channels: vec![Channel::Whatsapp],
                priorities: vec![Priority::Urgent, Priority::High],
                ..Conditions::default()
            },
            [target(120, false), target(600, false), target(4 * 3600, true)],
        ),
        policy(
            "billing",
            Conditions {
                tags: vec!["billing".into(), "refund".into()],
                ..Conditions::default()
            },
            [target(300, true), None, target(86_400, false)],
        ),
        policy(
            "sales",
            Conditions {
                teams: vec!["sales".into()],
                inboxes: vec!["wa-sales".into(), "support@".into()],
                ..Conditions::default()
            },
            [None, target(300, false), None],
        ),
        policy(
            "email",
            Conditions {
                channels: vec![Channel::Email],
                ..Conditions::default()
            },
            [
                target(3600, false),
                target(7200, false),
                target(2 * 86_400, false),
            ],
        ),
        policy(
            "everyone",
            Conditions::default(),
            [target(180, false), target(240, false), target(8 * 3600, false)],
        ),
    ]
}

/// Mon-Fri 09:00-17:00 and Saturday mornings in New York, with a holiday inside the data.
fn schedule() -> Schedule {
    let mut weekly: [Vec<(u32, u32)>; 7] = Default::default();
    for day in weekly.iter_mut().take(5) {
        day.push((9 * 3600, 17 * 3600));
    }
    weekly[5].push((9 * 3600, 12 * 3600));
    let holidays = [NaiveDate::from_ymd_opt(2026, 3, 27).unwrap()]
        .into_iter()
        .collect();
    Schedule::new("America/New_York".parse().unwrap(), weekly, holidays).unwrap()
}

/// One question asked of both engines.
struct Case {
    name: &'static str,
    query: Query,
}

fn query(from: DateTime<Utc>, to: DateTime<Utc>, tz: &str) -> Query {
    let mut q = Query::new(Window::new(from, to).unwrap());
    q.time_zone = tz.parse::<Tz>().unwrap();
    q
}

fn cases() -> Vec<Case> {
    let whole = || query(at(0.0), at(15.0 * 24.0), "UTC");
    let mut out = vec![
        Case {
            name: "whole range",
            query: whole(),
        },
        Case {
            name: "window cutting conversations in half, Berlin",
            query: query(at(3.0 * 24.0 + 12.5), at(7.0 * 24.0 + 5.25), "Europe/Berlin"),
        },
        Case {
            // 2026-03-29 in Berlin is 23 hours long.
            name: "the Berlin DST day",
            query: query(
                Utc.with_ymd_and_hms(2026, 3, 28, 23, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 3, 29, 22, 0, 0).unwrap(),
                "Europe/Berlin",
            ),
        },
        Case {
            name: "one hour, Kolkata",
            query: query(at(50.0), at(51.0), "Asia/Kolkata"),
        },
    ];
    let filtered = |name, change: fn(&mut QueryFilters)| {
        let mut q = query(at(24.0), at(10.0 * 24.0), "America/New_York");
        change(&mut q.filters);
        Case { name, query: q }
    };
    out.push(filtered("channels", |f| {
        f.channels = vec![Channel::Whatsapp, Channel::Webchat]
    }));
    out.push(filtered("agents with an unknown one", |f| {
        f.agents = vec!["agent-001".into(), "agent-005".into(), "nobody".into()]
    }));
    out.push(filtered("tags", |f| {
        f.tags = vec!["billing".into(), "followup".into()]
    }));
    out.push(filtered("team, priority and inbox", |f| {
        f.teams = vec!["support".into(), "sales".into()];
        f.priorities = vec![Priority::High, Priority::Urgent];
        f.inboxes = vec!["wa-sales".into(), "wa-support".into()];
    }));
    out.push(filtered("only unknown values", |f| {
        f.agents = vec!["nobody".into()]
    }));
    let mut bh = query(at(24.0), at(12.0 * 24.0), "America/New_York");
    bh.business_hours = true;
    out.push(Case {
        name: "business hours",
        query: bh,
    });
    let mut knobs = whole();
    knobs.repeat_window = Duration::zero();
    knobs.attribution_window = Duration::days(1);
    knobs.conversion_kinds = vec!["sale".into(), "signup".into()];
    out.push(Case {
        name: "repeat check off, one-day attribution, two kinds",
        query: knobs,
    });
    let mut long = query(at(2.0 * 24.0), at(6.0 * 24.0), "UTC");
    long.repeat_window = Duration::days(30);
    long.attribution_window = Duration::days(366);
    out.push(Case {
        name: "long lookaheads",
        query: long,
    });
    out
}

fn groupings() -> Vec<Grouping> {
    let mut out = vec![Grouping::All];
    out.extend(Dimension::ALL.map(Grouping::By));
    out.extend(Granularity::ALL.map(Grouping::Series));
    out
}

impl World {
    fn reference_rows(&self, q: &Query, schedule: Option<&Schedule>, g: Grouping) -> Vec<String> {
        let targets = Targets::default();
        reference::Computation {
            dataset: &self.reference,
            query: q,
            schedule,
            targets: &targets,
            sla: &self.policies,
        }
        .run(g)
        .into_iter()
        .map(|(key, k)| {
            let label = match key {
                GroupKey::Value(s) => self.reference.symbols.name(s).to_owned(),
                other => format!("{other:?}"),
            };
            format!("{label}: {k:?}")
        })
        .collect()
    }

    fn rows(&self, q: &Query, schedule: Option<&Schedule>, g: Grouping) -> Vec<String> {
        let (targets, cancel) = (Targets::default(), Cancel::default());
        self.computation(q, schedule, &targets, &cancel)
            .run(g)
            .unwrap()
            .into_iter()
            .map(|(key, k)| {
                let label = match key {
                    GroupKey::Value(s) => self.data.symbols.name(s).to_owned(),
                    other => format!("{other:?}"),
                };
                format!("{label}: {k:?}")
            })
            .collect()
    }

    fn computation<'a>(
        &'a self,
        q: &'a Query,
        schedule: Option<&'a Schedule>,
        targets: &'a Targets,
        cancel: &'a Cancel,
    ) -> Computation<'a> {
        Computation {
            data: &self.data,
            query: q,
            schedule,
            targets,
            sla: &self.policies,
            cancel,
            partials: None,
        }
    }
}

#[test]
fn every_grouping_of_every_case_equals_the_reference() {
    let w = world();
    let schedule = schedule();
    let mut compared = 0;
    for case in cases() {
        let s = Some(&schedule);
        for g in groupings() {
            let expected = w.reference_rows(&case.query, s, g);
            let actual = w.rows(&case.query, s, g);
            assert_eq!(expected.len(), actual.len(), "{} / {g:?}: row count", case.name);
            for (e, a) in expected.iter().zip(&actual) {
                assert_eq!(e, a, "{} / {g:?}", case.name);
            }
            compared += actual.len();
        }
    }
    assert!(compared > 1000, "{compared} rows compared");
    // The data exercises what the cases are about.
    let whole = w.rows(&cases()[0].query, None, Grouping::All).join("");
    for wanted in ["resolutions: ", "reopen_rate: Some", "revenue: [(\"EUR\""] {
        assert!(whole.contains(wanted), "{wanted} missing");
    }
    let (targets, cancel) = (Targets::default(), Cancel::default());
    let sla = &w
        .computation(&cases()[0].query, Some(&schedule), &targets, &cancel)
        .run(Grouping::All)
        .unwrap()[0]
        .1
        .sla;
    for (metric, s) in [
        ("first response", &sla.first_response),
        ("next response", &sla.next_response),
        ("resolution", &sla.resolution),
    ] {
        assert!(s.achieved > 0 && s.breached > 0, "{metric}: {s:?}");
    }
}

#[test]
fn backlog_utilization_and_drill_downs_equal_the_reference() {
    let w = world();
    let schedule = schedule();
    // (breached conversations listed, clocks active, clocks active and breached)
    let mut exercised = (0, 0, 0);
    for case in cases() {
        let q = &case.query;
        let s = Some(&schedule);
        let (targets, cancel) = (Targets::default(), Cancel::default());
        let comp = w.computation(q, s, &targets, &cancel);
        for instant in [at(-1.0), at(20.0), at(41.0), at(7.0 * 24.0), at(40.0 * 24.0)] {
            let expected = reference_live::backlog(&w.reference, q, s, micros(instant));
            let actual = comp.backlog(micros(instant)).unwrap();
            assert_eq!(
                format!("{expected:?}"),
                format!("{actual:?}"),
                "{} at {instant}",
                case.name
            );
        }
        let (agents, team) = reference_live::utilization(&w.reference, q);
        let (new_agents, new_team) = comp.utilization().unwrap();
        assert_eq!(
            format!("{agents:?} {team:?}"),
            format!("{new_agents:?} {new_team:?}"),
            "{}",
            case.name
        );
        let mut sla_breached = 0;
        for kind in [
            DrillDown::Opened,
            DrillDown::Resolved,
            DrillDown::Ended,
            DrillDown::Missed,
            DrillDown::Abandoned,
            DrillDown::Backlog,
            DrillDown::NotFcr,
            DrillDown::SlaBreached,
        ] {
            let expected: Vec<String> = reference_live::drill_down(&w.reference, q, s, &w.policies, kind)
                .iter()
                .map(|c| c.id.to_string())
                .collect();
            let actual: Vec<String> = comp
                .drill_down(kind)
                .unwrap()
                .iter()
                .map(|(s, row)| w.data.segments[*s].id(*row).to_owned())
                .collect();
            assert_eq!(expected, actual, "{} / {kind:?}", case.name);
            if kind == DrillDown::SlaBreached {
                sla_breached = actual.len();
            }
        }
        exercised.0 += sla_breached;
        for instant in [at(20.0), at(41.0), at(7.0 * 24.0 + 10.0), at(40.0 * 24.0)] {
            let (active, breached, running) =
                reference_live::sla_status(&w.reference, q, s, &w.policies, micros(instant));
            let status = comp.sla_status(micros(instant), 20).unwrap();
            assert_eq!(
                (active, breached),
                (status.active, status.active_breached),
                "{} at {instant}",
                case.name
            );
            let expected: Vec<String> = running
                .iter()
                .take(20)
                .map(|(id, metric, policy, left)| {
                    format!("{id} {metric:?} {} {left:.3}", w.policies[*policy as usize].name)
                })
                .collect();
            let actual: Vec<String> = status
                .at_risk
                .iter()
                .map(|r| {
                    let id = w.data.segments[r.segment].id(r.row);
                    format!("{id} {:?} {} {:.3}", r.metric, r.policy, r.time_left_seconds)
                })
                .collect();
            assert_eq!(expected, actual, "{} at {instant}", case.name);
            exercised.1 += status.active.iter().sum::<u64>();
            exercised.2 += status.active_breached.iter().sum::<u64>();
        }
    }
    assert!(
        exercised.0 > 0 && exercised.1 > 0 && exercised.2 > 0,
        "{exercised:?}"
    );
}

#[test]
fn a_conversation_opened_after_its_resolution_is_not_its_own_repeat_contact() {
    let events = vec![
        message("m1", "late", at(1.0), Sender::Customer, None),
        ev(
            "r",
            Some("late"),
            at(2.0),
            Payload::Resolved(Resolved {
                by: ResolvedBy::Agent,
                agent_id: None,
            }),
        ),
        opened("o", "late", at(3.0), "solo"),
    ];
    let w = build(&events);
    let q = query(at(0.0), at(24.0), "UTC");
    let (targets, cancel) = (Targets::default(), Cancel::default());
    let k = w
        .computation(&q, None, &targets, &cancel)
        .run(Grouping::All)
        .unwrap();
    assert_eq!((k[0].1.resolved, k[0].1.repeat_contact_rate), (1, Some(0.0)));
}

#[test]
fn a_cancelled_computation_stops_with_an_error() {
    let w = world();
    let q = cases().remove(0).query;
    let (targets, cancel) = (Targets::default(), Cancel::default());
    cancel.cancel();
    let comp = w.computation(&q, None, &targets, &cancel);
    assert!(matches!(comp.run(Grouping::All), Err(Error::Cancelled)));
    assert!(matches!(comp.backlog(micros(at(20.0))), Err(Error::Cancelled)));
}

// Segment rows and stored records.

fn simulated_facts(conversations: u64, seed: u64) -> Vec<ConversationFacts> {
    let events = simulate(&SimConfig {
        conversations,
        days: 2,
        seed,
        ..SimConfig::default()
    });
    let mut by_conversation: HashMap<&str, Vec<Event>> = HashMap::new();
    for e in &events {
        if let Some(c) = e.conversation_id.as_deref() {
            by_conversation.entry(c).or_default().push(e.clone());
        }
    }
    let mut facts: Vec<ConversationFacts> = by_conversation
        .iter()
        .filter_map(|(id, events)| derive(id, events))
        .collect();
    facts.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
    facts
}

/// The query view of `f`, computed field by field from the facts (names, not ids).
fn expected(f: &ConversationFacts) -> String {
    let t = |d: chrono::DateTime<chrono::Utc>| micros(d);
    let counted: Vec<i64> = f
        .messages
        .iter()
        .filter(|m| m.sender != Sender::System)
        .map(|m| t(m.at))
        .collect();
    let duration = f
        .ended_at
        .and(counted.first().zip(counted.last()))
        .map(|(a, b)| (*a, *b));
    let mut tags = f.tags.clone();
    tags.sort();
    format!(
        "{:?}",
        (
            (
                (
                    t(f.opened_at),
                    t(f.first_event_at),
                    t(f.last_event_at),
                    &f.customer_id
                ),
                (f.channel, f.priority, f.state, f.initiated_by),
                (&f.inbox, &f.team, &f.agent, &f.assignee),
                (
                    f.first_customer_message_at.is_some(),
                    f.human_involved,
                    f.bot_involved
                ),
                (
                    f.resolved_at.map(t),
                    f.resolved_by,
                    &f.resolving_agent,
                    f.ended_at.map(t)
                ),
                (
                    f.first_human_response.as_ref().map(|h| (
                        t(f.human_queue_start.unwrap()),
                        t(h.at),
                        &h.agent_id
                    )),
                    f.human_queue_start
                        .zip(f.first_assigned_at)
                        .map(|(a, b)| (t(a), t(b))),
                    duration,
                    f.waiting_since.map(t),
                ),
                (
                    f.reopen_count,
                    f.message_counts.customer,
                    f.message_counts.agent,
                    f.message_counts.bot
                ),
            ),
            (
                f.responses
                    .iter()
                    .map(|r| (
                        t(r.waiting_since),
                        t(r.at),
                        r.agent_id.clone().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>(),
                tags,
                f.resolutions.iter().map(|x| t(*x)).collect::<Vec<_>>(),
                f.surveys
                    .iter()
                    .map(|a| (
                        a.survey,
                        a.score,
                        a.scale.min,
                        a.scale.max,
                        t(a.at),
                        a.agent_id.clone().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>(),
                f.surveys_sent
                    .iter()
                    .map(|s| (s.survey, t(s.at)))
                    .collect::<Vec<_>>(),
                f.messages
                    .iter()
                    .map(|m| (t(m.at), m.sender, m.delivered, m.read, m.failed))
                    .collect::<Vec<_>>(),
                f.state_changes
                    .iter()
                    .map(|c| (t(c.at), c.state))
                    .collect::<Vec<_>>(),
                f.assignments
                    .iter()
                    .map(|a| (t(a.at), a.agent_id.clone().unwrap_or_default()))
                    .collect::<Vec<_>>(),
                f.handling
                    .iter()
                    .map(|h| (
                        h.agent_id.clone(),
                        t(h.start),
                        h.end.map_or(chatkpi::domain::time::OPEN_END, t)
                    ))
                    .collect::<Vec<_>>(),
            ),
        )
    )
}

/// The same view read back from a segment row.
fn decoded(s: &Segment, row: usize, symbols: &Interner, customers: &Interner) -> String {
    let mut c = Conv::default();
    s.decode(row, Parts::All, &mut c);
    let name = |sym: u32| symbols.name(sym).to_owned();
    let opt = |sym: u32| (sym != 0).then(|| name(sym));
    let mut tags: Vec<String> = c.tags.iter().map(|x| name(*x)).collect();
    tags.sort();
    let customer = (c.customer != 0).then(|| customers.name(c.customer).to_owned());
    format!(
        "{:?}",
        (
            (
                (c.opened_at, c.active.start, c.active.end, &customer),
                (c.channel, c.priority, c.state, c.initiated_by),
                (opt(c.inbox), opt(c.team), opt(c.agent), opt(c.assignee)),
                (c.has_customer_message, c.human_involved, c.bot_involved),
                (c.resolved_at, c.resolved_by, opt(c.resolving_agent), c.ended_at),
                (
                    c.human_first.map(|h| (h.waiting_since, h.at, name(h.agent))),
                    c.wait.map(|w| (w.start, w.end)),
                    c.duration.map(|d| (d.start, d.end)),
                    c.waiting_since,
                ),
                (c.reopen_count, c.counts.customer, c.counts.agent, c.counts.bot),
            ),
            (
                c.responses
                    .iter()
                    .map(|r| (r.waiting_since, r.at, name(r.agent)))
                    .collect::<Vec<_>>(),
                tags,
                c.resolutions.clone(),
                c.surveys
                    .iter()
                    .map(|a| (a.kind, a.score, a.min, a.max, a.at, name(a.agent)))
                    .collect::<Vec<_>>(),
                c.surveys_sent.clone(),
                c.messages
                    .iter()
                    .map(|m| (m.at, m.sender, m.delivered, m.read, m.failed))
                    .collect::<Vec<_>>(),
                c.state_changes.clone(),
                c.assignments
                    .iter()
                    .map(|(at, a)| (*at, name(*a)))
                    .collect::<Vec<_>>(),
                c.handling
                    .iter()
                    .map(|(a, span)| (name(*a), span.start, span.end))
                    .collect::<Vec<_>>(),
            ),
        )
    )
}

fn segment_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 5).unwrap()
}

fn assert_rows_match(s: &Segment, facts: &[ConversationFacts], symbols: &Interner, customers: &Interner) {
    assert_eq!(s.len(), facts.len());
    for f in facts {
        let row = s.find(&f.conversation_id).expect("every conversation has a row");
        assert_eq!(
            decoded(s, row, symbols, customers),
            expected(f),
            "{}",
            f.conversation_id
        );
    }
}

/// A segment of `conversations` simulated conversations (simulation seed `seed`) as of xmin
/// `as_of`, with its facts and the symbol and customer tables it was built with.
fn simulated_segment(
    conversations: u64,
    seed: u64,
    as_of: i64,
) -> (Vec<ConversationFacts>, Interner, Interner, Segment) {
    let facts = simulated_facts(conversations, seed);
    let (mut symbols, mut customers) = (Interner::new(), Interner::new());
    let s = Segment::build(
        segment_day(),
        &facts,
        as_of,
        &mut |n: &str| symbols.intern(n),
        &mut customers,
    );
    (facts, symbols, customers, s)
}

#[test]
fn every_row_decodes_to_its_facts() {
    let (facts, symbols, customers, s) = simulated_segment(300, 4, 42);
    assert!(s.check());
    assert_rows_match(&s, &facts, &symbols, &customers);
    assert_eq!(s.bounds.rows, 300);
    let first_opened = facts.iter().map(|f| micros(f.opened_at)).min().unwrap();
    assert_eq!(s.bounds.opened.start, first_opened);
}

#[test]
fn merging_replaces_rows_in_place_and_appends_new_ones() {
    let facts = simulated_facts(200, 5);
    let (old, new) = facts.split_at(120);
    let (mut symbols, mut customers) = (Interner::new(), Interner::new());
    // Start from stale versions of half of the first 120 (their last event missing).
    let s = Segment::build(
        segment_day(),
        old,
        1,
        &mut |n: &str| symbols.intern(n),
        &mut customers,
    );
    let mut changed: Vec<ConversationFacts> = new.to_vec();
    changed.extend(old.iter().step_by(2).cloned());
    let merged = s.merge(&changed, 2, &mut |n: &str| symbols.intern(n), &mut customers);
    assert_eq!(merged.as_of, 2);
    assert!(merged.check());
    assert_rows_match(&merged, &facts, &symbols, &customers);
    // The built rows keep their places (by id), the new conversations follow (by id), and
    // every conversation is found by its id.
    let ids: Vec<&str> = (0..merged.len()).map(|r| merged.id(r)).collect();
    let mut built: Vec<&str> = old.iter().map(|f| f.conversation_id.as_str()).collect();
    built.sort_unstable();
    let mut added: Vec<&str> = new.iter().map(|f| f.conversation_id.as_str()).collect();
    added.sort_unstable();
    assert_eq!(ids[..old.len()], built[..]);
    assert_eq!(ids[old.len()..], added[..]);
    for (row, id) in ids.iter().enumerate() {
        assert_eq!(merged.find(id), Some(row));
    }
    assert_eq!(merged.find("no-such-conversation"), None);
}

/// A snapshot is written a part at a time (`segment_parts`): the parts' bytes in order are the
/// body encoded whole, only the last says so, and each but the last reached the size asked for.
#[test]
fn a_snapshot_encoded_in_parts_is_the_body_encoded_whole() {
    use chatkpi::engine::segment::snapshot;
    let (_, _, customers, s) = simulated_segment(150, 6, 9);
    let whole = snapshot::encode(&s, &customers);
    let mut encoder = snapshot::PartEncoder::default();
    let mut parts = Vec::new();
    while let Some(part) = encoder.next_part(&s, &customers, 1_000) {
        parts.push(part);
    }
    assert!(parts.len() > 3, "{} parts of {} bytes", parts.len(), whole.len());
    let (last, rest) = parts.split_last().unwrap();
    assert!(last.1 && rest.iter().all(|(bytes, last)| !last && bytes.len() >= 1_000));
    let joined: Vec<u8> = parts
        .iter()
        .flat_map(|(bytes, _)| bytes.iter().copied())
        .collect();
    assert_eq!(joined, whole);
    // Parts smaller than the header: the header is written once, then a row per part.
    let mut encoder = snapshot::PartEncoder::default();
    let mut joined = Vec::new();
    while let Some((bytes, _)) = encoder.next_part(&s, &customers, 1) {
        joined.extend_from_slice(&bytes);
    }
    assert_eq!(joined, whole);
}

#[test]
fn snapshots_load_in_another_tenant_table_and_refuse_damage() {
    let (facts, _, customers, s) = simulated_segment(150, 6, 9);
    let bytes = chatkpi::engine::segment::snapshot::encode(&s, &customers);
    // Another process: its tables already hold other names, so ids differ.
    let (mut symbols2, mut customers2) = (Interner::new(), Interner::new());
    symbols2.intern("someone-else");
    customers2.intern("other-customer");
    let loaded = chatkpi::engine::segment::snapshot::decode(
        segment_day(),
        &bytes,
        &mut |n: &str| symbols2.intern(n),
        &mut customers2,
    )
    .unwrap();
    assert_eq!((loaded.as_of, loaded.bounds), (9, s.bounds));
    assert_rows_match(&loaded, &facts, &symbols2, &customers2);
    assert!(
        chatkpi::engine::segment::snapshot::decode(
            segment_day().succ_opt().unwrap(),
            &bytes,
            &mut |n: &str| symbols2.intern(n),
            &mut customers2
        )
        .is_err()
    );
    for cut in [0, 3, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            chatkpi::engine::segment::snapshot::decode(
                segment_day(),
                &bytes[..cut],
                &mut |n: &str| symbols2.intern(n),
                &mut customers2
            )
            .is_err()
        );
    }
}

#[test]
fn every_simulated_conversation_round_trips_exactly_and_compactly() {
    let events = simulate(&SimConfig {
        conversations: 400,
        days: 3,
        seed: 21,
        ..SimConfig::default()
    });
    let mut by_conversation: HashMap<&str, Vec<Event>> = HashMap::new();
    for e in &events {
        if let Some(c) = e.conversation_id.as_deref() {
            by_conversation.entry(c).or_default().push(e.clone());
        }
    }
    let (mut record_bytes, mut json_bytes) = (0, 0);
    for (id, events) in &by_conversation {
        let Some(f) = derive(id, events) else {
            continue;
        };
        let bytes = chatkpi::engine::record::encode(&f);
        record_bytes += bytes.len();
        json_bytes += serde_json::to_vec(&f).unwrap().len();
        assert_eq!(chatkpi::engine::record::decode(id, &bytes).unwrap(), f, "{id}");
    }
    assert!(
        record_bytes * 4 < json_bytes,
        "records {record_bytes} bytes vs JSON {json_bytes} bytes"
    );
}

/// Partial totals kept in a map, counting reuses.
#[derive(Default)]
struct MapStore {
    partials: std::sync::Mutex<HashMap<partial::PartialKey, Arc<partial::Partial>>>,
    hits: std::sync::atomic::AtomicUsize,
}

impl partial::PartialStore for MapStore {
    fn get(&self, key: &partial::PartialKey) -> Option<Arc<partial::Partial>> {
        let found = self.partials.lock().unwrap().get(key).cloned();
        if found.is_some() {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        found
    }

    fn put(&self, key: partial::PartialKey, partial: Arc<partial::Partial>) {
        self.partials.lock().unwrap().insert(key, partial);
    }
}

impl World {
    fn rows_with(
        &self,
        q: &Query,
        schedule: Option<&Schedule>,
        g: Grouping,
        store: &MapStore,
    ) -> Vec<String> {
        let (targets, cancel) = (Targets::default(), Cancel::default());
        Computation {
            partials: Some(store),
            ..self.computation(q, schedule, &targets, &cancel)
        }
        .run(g)
        .unwrap()
        .into_iter()
        .map(|(key, k)| format!("{}: {k:?}", self.data.label(key)))
        .collect()
    }
}

#[test]
fn kept_partial_totals_give_the_same_answers_and_follow_what_they_depend_on() {
    let mut w = world();
    w.data.tenant = 1;
    let store = MapStore::default();
    let schedule = schedule();
    let plain = |w: &World, q: &Query, s, g| -> Vec<String> {
        let (targets, cancel) = (Targets::default(), Cancel::default());
        w.computation(q, s, &targets, &cancel)
            .run(g)
            .unwrap()
            .into_iter()
            .map(|(key, k)| format!("{}: {k:?}", w.data.label(key)))
            .collect()
    };
    for case in cases() {
        let s = Some(&schedule);
        for g in groupings() {
            let expected = plain(&w, &case.query, s, g);
            assert_eq!(
                w.rows_with(&case.query, s, g, &store),
                expected,
                "{} / {g:?} filling",
                case.name
            );
            assert_eq!(
                w.rows_with(&case.query, s, g, &store),
                expected,
                "{} / {g:?} reusing",
                case.name
            );
        }
    }
    let hits = store.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(hits > 100, "partials were reused {hits} times");

    // A new conversation, a day and more after a customer's resolution (a repeat contact for
    // an interior day, stored in another day's segment): the kept totals that read that
    // customer's openings are not reused.
    let q = query(at(0.0), at(15.0 * 24.0), "UTC");
    let before = w.rows_with(&q, None, Grouping::All, &store);
    // The victim: a first-contact resolution (not reopened, no opening of its customer within
    // a week after it) of the third day.
    let openings: Vec<(u32, i64)> = w
        .data
        .segments
        .iter()
        .flat_map(|seg| seg.openings().map(|(opened, customer)| (customer, opened)))
        .collect();
    let victim_segment = w
        .data
        .segments
        .iter()
        .position(|seg| seg.day == (start() + Duration::days(2)).date_naive())
        .unwrap();
    let week = Duration::days(7).num_microseconds().unwrap();
    let mut c = Conv::default();
    let seg = w.data.segments[victim_segment].clone();
    (0..seg.len())
        .find(|row| {
            seg.decode(*row, Parts::All, &mut c);
            c.customer != 0
                && c.reopen_count == 0
                && c.resolved_at.is_some_and(|r| {
                    !openings
                        .iter()
                        .any(|(cu, o)| *cu == c.customer && r < *o && *o <= r + week)
                })
        })
        .expect("a first-contact resolution on the third day");
    let customer = w.customers.name(c.customer).to_owned();
    let resolved_at = chatkpi::domain::time::to_datetime(c.resolved_at.unwrap());
    let repeat = derive(
        "edge-repeat",
        &[opened(
            "xr-o",
            "edge-repeat",
            resolved_at + Duration::hours(30),
            &customer,
        )],
    )
    .unwrap();
    let opened_day = (resolved_at + Duration::hours(30)).date_naive();
    assert_ne!(opened_day, w.data.segments[victim_segment].day);
    let target = w.data.segments.iter().position(|s| s.day == opened_day).unwrap();
    let mut symbols = (*w.data.symbols).clone();
    let mut customers = w.customers.clone();
    let merged = w.data.segments[target].merge(&[repeat], 1, &mut |n| symbols.intern(n), &mut customers);
    w.data.segments[target] = Arc::new(merged);
    w.data.symbols = Arc::new(symbols);
    w.data.customers = customers.len();
    // As the query cache does: the new conversation's customer is logged as changed.
    let mut changes = (*w.data.changes).clone();
    let opened_at = chatkpi::domain::time::micros(resolved_at + Duration::hours(30));
    changes.record(vec![(c.customer, opened_at)], Vec::new());
    w.data.changes = Arc::new(changes);
    let after = w.rows_with(&q, None, Grouping::All, &store);
    assert_eq!(after, plain(&w, &q, None, Grouping::All));
    let rate = |rows: &[String]| rows[0].split("repeat_contact_rate: ").nth(1).unwrap()[..20].to_owned();
    assert_ne!(
        rate(&after),
        rate(&before),
        "the repeat contact changed the repeat rate"
    );
}

#[test]
fn kept_totals_stay_reused_when_only_customers_they_did_not_read_changed() {
    let mut w = world();
    w.data.tenant = 2;
    let store = MapStore::default();
    let q = query(at(0.0), at(15.0 * 24.0), "UTC");
    let first = w.rows_with(&q, None, Grouping::All, &store);
    let hits = |s: &MapStore| s.hits.load(std::sync::atomic::Ordering::Relaxed);
    let reused = {
        let before = hits(&store);
        assert_eq!(w.rows_with(&q, None, Grouping::All, &store), first);
        hits(&store) - before
    };
    assert!(reused > 0);
    // A customer id no conversation has: every kept total is still valid.
    let mut changes = (*w.data.changes).clone();
    let now = chatkpi::domain::time::micros(at(24.0));
    changes.record(
        vec![(w.data.customers as u32 + 10, now)],
        vec![(w.data.customers as u32 + 11, now)],
    );
    w.data.changes = Arc::new(changes);
    let before = hits(&store);
    assert_eq!(w.rows_with(&q, None, Grouping::All, &store), first);
    assert_eq!(hits(&store) - before, reused, "nothing had to be computed again");
}
