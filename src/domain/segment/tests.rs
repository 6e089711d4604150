//! Segments keep exactly what the facts say: every row decodes to the view computed directly
//! from its facts, through merges and snapshots.

use std::collections::HashMap;

use chrono::NaiveDate;

use super::*;
use crate::{
    domain::{
        event::{Event, Sender},
        facts::{ConversationFacts, derive},
        time::micros,
    },
    sim::{SimConfig, simulate},
};

fn simulated(conversations: u64, seed: u64) -> Vec<ConversationFacts> {
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
                        h.end.map_or(crate::domain::time::OPEN_END, t)
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
                (c.reopen_count, c.counts[0], c.counts[1], c.counts[2]),
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

fn day() -> NaiveDate {
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

#[test]
fn every_row_decodes_to_its_facts() {
    let facts = simulated(300, 4);
    let (mut symbols, mut customers) = (Interner::new(), Interner::new());
    let s = Segment::build(
        day(),
        &facts,
        42,
        &mut |n: &str| symbols.intern(n),
        &mut customers,
    );
    assert!(s.check());
    assert_rows_match(&s, &facts, &symbols, &customers);
    assert_eq!(s.bounds.rows, 300);
    let first_opened = facts.iter().map(|f| micros(f.opened_at)).min().unwrap();
    assert_eq!(s.bounds.opened.start, first_opened);
}

#[test]
fn merging_replaces_and_adds_rows_in_id_order() {
    let facts = simulated(200, 5);
    let (old, new) = facts.split_at(120);
    let (mut symbols, mut customers) = (Interner::new(), Interner::new());
    // Start from stale versions of half of the first 120 (their last event missing).
    let s = Segment::build(day(), old, 1, &mut |n: &str| symbols.intern(n), &mut customers);
    let mut changed: Vec<ConversationFacts> = new.to_vec();
    changed.extend(old.iter().step_by(2).cloned());
    let merged = s.merge(&changed, 2, &mut |n: &str| symbols.intern(n), &mut customers);
    assert_eq!(merged.as_of, 2);
    assert!(merged.check());
    assert_rows_match(&merged, &facts, &symbols, &customers);
    let ids: Vec<&str> = (0..merged.len()).map(|r| merged.id(r)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "rows stay sorted by id");
}

#[test]
fn snapshots_load_in_another_tenant_table_and_refuse_damage() {
    let facts = simulated(150, 6);
    let (mut symbols, mut customers) = (Interner::new(), Interner::new());
    let s = Segment::build(day(), &facts, 9, &mut |n: &str| symbols.intern(n), &mut customers);
    let bytes = snapshot::encode(&s, &customers);
    // Another process: its tables already hold other names, so ids differ.
    let (mut symbols2, mut customers2) = (Interner::new(), Interner::new());
    symbols2.intern("someone-else");
    customers2.intern("other-customer");
    let loaded = snapshot::decode(day(), &bytes, &mut |n: &str| symbols2.intern(n), &mut customers2).unwrap();
    assert_eq!((loaded.as_of, loaded.bounds), (9, s.bounds));
    assert_rows_match(&loaded, &facts, &symbols2, &customers2);
    assert!(
        snapshot::decode(
            day().succ_opt().unwrap(),
            &bytes,
            &mut |n: &str| symbols2.intern(n),
            &mut customers2
        )
        .is_err()
    );
    for cut in [0, 3, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            snapshot::decode(
                day(),
                &bytes[..cut],
                &mut |n: &str| symbols2.intern(n),
                &mut customers2
            )
            .is_err()
        );
    }
}

#[test]
#[ignore]
fn print_sizes() {
    let facts = simulated(20_000, 7);
    let (mut symbols, mut customers) = (Interner::new(), Interner::new());
    let s = Segment::build(day(), &facts, 1, &mut |n: &str| symbols.intern(n), &mut customers);
    let record: usize = facts.iter().map(|f| crate::domain::record::encode(f).len()).sum();
    println!(
        "rows {} heap {} per row {} blob/row {} record/row {} customers heap {}",
        s.len(),
        s.heap_bytes(),
        s.heap_bytes() / s.len(),
        s.blob.len() / s.len(),
        record / s.len(),
        customers.heap_bytes()
    );
}
