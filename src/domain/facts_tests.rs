//! Unit tests of docs/metrics.md §3 fact derivation on hand-built conversations.

use chrono::{DateTime, Utc};
use rand::{SeedableRng, seq::SliceRandom};

use super::*;
use crate::domain::{
    event::*,
    testkit::{Conv, t},
};

/// (agent, start, end) of a handling interval.
type Span<'a> = (&'a str, DateTime<Utc>, Option<DateTime<Utc>>);

#[test]
fn opened_at_is_the_first_conversation_opened_and_later_ones_change_nothing() {
    let f = Conv::new()
        .customer("a", 5)
        .opened("b", 10, Channel::Whatsapp)
        .opened("c", 20, Channel::Email)
        .facts();
    assert_eq!(f.opened_at, t(10));
    assert!(f.has_opened_event);
    assert_eq!(f.channel, Channel::Whatsapp);
    assert_eq!(f.inbox.as_deref(), Some("wa-1"));
    assert_eq!(f.customer_id.as_deref(), Some("cust"));
}

#[test]
fn without_conversation_opened_the_earliest_event_opens_and_defaults_apply() {
    let mut c = Conv::new().customer("a", 30).agent("b", 40, "ann");
    // A conversion carrying the conversation id never belongs to its facts.
    c.events.push(Event {
        event_id: "conv".into(),
        conversation_id: Some("c1".into()),
        occurred_at: t(1),
        payload: Payload::Conversion(Conversion {
            customer_id: "cust".into(),
            kind: "sale".into(),
            value_minor: None,
            currency: None,
        }),
    });
    let f = c.facts();
    assert_eq!(f.opened_at, t(30));
    assert!(!f.has_opened_event);
    assert_eq!(f.channel, Channel::Other);
    assert_eq!(f.initiated_by, Initiator::Customer);
    assert_eq!(f.priority, Priority::Normal);
    assert_eq!(f.customer_id, None);
}

#[test]
fn a_conversation_of_only_conversions_has_no_facts() {
    let events = vec![Event {
        event_id: "x".into(),
        conversation_id: Some("c1".into()),
        occurred_at: t(0),
        payload: Payload::Conversion(Conversion {
            customer_id: "c".into(),
            kind: "sale".into(),
            value_minor: None,
            currency: None,
        }),
    }];
    assert_eq!(derive("c1", &events), None);
}

#[test]
fn team_and_priority_are_the_last_value_set() {
    let f = Conv::new()
        .push(
            "o",
            0,
            Payload::ConversationOpened(ConversationOpened {
                customer_id: "cust".into(),
                channel: Channel::Webchat,
                inbox: None,
                team: Some("tier1".into()),
                priority: Some(Priority::High),
                initiated_by: Initiator::Business,
            }),
        )
        .push(
            "u",
            10,
            Payload::ConversationUpdated(ConversationUpdated {
                priority: Some(Priority::Urgent),
                team: None,
            }),
        )
        .push(
            "a",
            20,
            Payload::Assigned(Assigned {
                agent_id: Some("ann".into()),
                team: Some("tier2".into()),
            }),
        )
        // A later conversation_opened changes nothing, not even team or priority.
        .push(
            "o2",
            30,
            Payload::ConversationOpened(ConversationOpened {
                customer_id: "other".into(),
                channel: Channel::Email,
                inbox: None,
                team: Some("ignored".into()),
                priority: Some(Priority::Low),
                initiated_by: Initiator::Customer,
            }),
        )
        .push(
            "u2",
            40,
            Payload::ConversationUpdated(ConversationUpdated {
                priority: None,
                team: None,
            }),
        )
        .facts();
    assert_eq!(f.team.as_deref(), Some("tier2"));
    assert_eq!(f.priority, Priority::Urgent);
    assert_eq!(f.initiated_by, Initiator::Business);
    assert_eq!(f.customer_id.as_deref(), Some("cust"));
}

#[test]
fn assignee_is_the_live_owner_and_agent_keeps_the_credit() {
    let f = Conv::new()
        .opened("o", 0, Channel::Whatsapp)
        .assigned("a1", 10, Some("ann"))
        .assigned("a2", 20, Some("bob"))
        .assigned("a3", 30, None)
        .facts();
    assert_eq!(f.assignee, None, "the last assignment was empty");
    assert_eq!(
        f.agent.as_deref(),
        Some("bob"),
        "an unassign does not erase the credit"
    );
}

#[test]
fn agent_falls_back_to_the_last_agent_who_sent_a_message() {
    let f = Conv::new()
        .customer("c", 0)
        .agent("a", 10, "ann")
        .agent("b", 20, "bob")
        .push(
            "note",
            30,
            Payload::Message(Message {
                message_id: "n".into(),
                sender: Sender::Agent,
                agent_id: Some("carl".into()),
                private: true,
            }),
        )
        .facts();
    assert_eq!(
        f.agent.as_deref(),
        Some("bob"),
        "a private note is not a sent message"
    );
}

#[test]
fn tags_apply_added_then_removed_in_event_order() {
    let tags = |added: &[&str], removed: &[&str]| {
        Payload::TagsChanged(TagsChanged {
            added: added.iter().map(|s| s.to_string()).collect(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
        })
    };
    let f = Conv::new()
        .push("t1", 0, tags(&["billing", "vip"], &[]))
        // Within one event: add, then remove, so `refund` ends up absent.
        .push("t2", 10, tags(&["refund"], &["refund", "vip"]))
        .push("t3", 20, tags(&["urgent"], &[]))
        .facts();
    assert_eq!(f.tags, vec!["billing".to_string(), "urgent".to_string()]);
}

#[test]
fn responses_track_waiting_since_and_ignore_system_and_private_messages() {
    let f = Conv::new()
        .opened("o", 0, Channel::Whatsapp)
        .customer("c1", 10)
        .customer("c2", 15) // still waiting since 10
        .msg("s", 12, Sender::System, None) // auto-ack: never a response
        .push(
            "p",
            14,
            Payload::Message(Message {
                message_id: "p".into(),
                sender: Sender::Agent,
                agent_id: Some("ann".into()),
                private: true,
            }),
        )
        .agent("a1", 40, "ann") // response 30 s
        .agent("a2", 50, "ann") // nobody waiting: not a response
        .customer("c3", 100)
        .bot("b1", 103) // reply 3 s, by the bot
        .customer("c4", 200) // unanswered at the end
        .facts();
    let seconds: Vec<f64> = f.responses.iter().map(|r| r.seconds).collect();
    assert_eq!(seconds, vec![30.0, 3.0]);
    assert_eq!(f.first_response().unwrap().agent_id.as_deref(), Some("ann"));
    assert_eq!(f.replies().len(), 1);
    assert_eq!(f.replies()[0].responder, Sender::Bot);
    assert_eq!(f.replies()[0].agent_id, None);
    assert_eq!(f.replies()[0].at, t(103));
    assert_eq!(f.waiting_since, Some(t(200)));
    assert_eq!(
        f.message_counts,
        MessageCounts {
            customer: 4,
            agent: 2,
            bot: 1
        }
    );
    assert_eq!(
        f.messages.len(),
        8,
        "system messages are outbound, private notes are not"
    );
}

#[test]
fn a_bot_first_then_handoff_charges_humans_from_the_handoff() {
    let f = Conv::new()
        .opened("o", 0, Channel::Webchat)
        .push("h0", 1, Payload::Handoff) // before any customer message: ignored
        .customer("c1", 10)
        .bot("b1", 12) // FRT 2 s, by the bot
        .customer("c2", 20)
        .push("h1", 60, Payload::Handoff)
        .assigned("as", 90, Some("ann"))
        .agent("a1", 100, "ann")
        .facts();
    assert_eq!(f.first_response().unwrap().seconds, 2.0);
    assert_eq!(f.first_response().unwrap().responder, Sender::Bot);
    assert_eq!(f.human_queue_start, Some(t(60)));
    let human = f.first_human_response.as_ref().unwrap();
    assert_eq!((human.agent_id.as_str(), human.seconds), ("ann", 40.0));
    assert_eq!(f.first_assigned_at, Some(t(90)));
    assert_eq!(f.wait_seconds, Some(30.0));
    // The reply to c2 (waiting since 20) came at 100.
    assert_eq!(f.replies()[0].seconds, 80.0);
    assert!(f.bot_involved && f.human_involved);
}

#[test]
fn without_handoff_the_human_queue_starts_at_the_first_customer_message() {
    let f = Conv::new()
        .opened("o", 0, Channel::Email)
        .customer("c1", 10)
        .agent("a1", 70, "ann")
        .facts();
    assert_eq!(f.human_queue_start, Some(t(10)));
    assert_eq!(f.first_human_response.as_ref().unwrap().seconds, 60.0);
    // No assignment: wait time ends at the first human response.
    assert_eq!(f.first_assigned_at, Some(t(70)));
    assert_eq!(f.wait_seconds, Some(60.0));
}

#[test]
fn assignments_before_the_human_queue_start_do_not_end_the_wait() {
    let f = Conv::new()
        .assigned("a0", 0, Some("ann"))
        .customer("c1", 10)
        .assigned("a1", 25, Some("bob"))
        .facts();
    assert_eq!(f.first_assigned_at, Some(t(25)));
    assert_eq!(f.wait_seconds, Some(15.0));
    assert_eq!(f.first_human_response, None);
}

#[test]
fn bot_only_conversations_have_no_wait_and_no_human_response() {
    let f = Conv::new()
        .customer("c1", 0)
        .bot("b1", 1)
        .resolved("r", 5)
        .facts();
    assert_eq!(f.wait_seconds, None);
    assert_eq!(f.first_human_response, None);
    assert!(!f.human_involved);
    assert!(f.bot_involved);
}

#[test]
fn state_walks_resolved_reopened_abandoned() {
    let f = Conv::new()
        .opened("o", 0, Channel::Whatsapp)
        .customer("c1", 10)
        .agent("a1", 20, "ann")
        .resolved("r1", 100)
        .customer("c2", 150) // a message does not reopen
        .push("re", 200, Payload::Reopened)
        .resolved("r2", 300)
        .facts();
    assert_eq!(f.state, State::Resolved);
    assert_eq!(f.resolved_at, Some(t(300)));
    assert_eq!(f.resolution_seconds, Some(300.0));
    assert_eq!(f.reopen_count, 1);
    assert_eq!(f.resolutions, vec![t(100), t(300)]);
    assert_eq!(f.ended_at, Some(t(300)));
    assert_eq!(f.resolved_by, Some(ResolvedBy::Agent));
    assert_eq!(f.resolving_agent.as_deref(), Some("ann"));
    assert_eq!(
        f.state_changes,
        vec![
            StateChange {
                at: t(100),
                state: State::Resolved
            },
            StateChange {
                at: t(200),
                state: State::Open
            },
            StateChange {
                at: t(300),
                state: State::Resolved
            },
        ]
    );
}

#[test]
fn a_message_after_resolved_does_not_reopen_and_a_reopened_conversation_has_no_resolved_at() {
    let still_resolved = Conv::new()
        .customer("c1", 0)
        .resolved("r", 10)
        .customer("c2", 20)
        .facts();
    assert_eq!(still_resolved.state, State::Resolved);
    assert_eq!(still_resolved.resolved_at, Some(t(10)));

    let reopened = Conv::new()
        .customer("c1", 0)
        .resolved("r", 10)
        .push("re", 20, Payload::Reopened)
        .facts();
    assert_eq!(reopened.state, State::Open);
    assert_eq!(reopened.resolved_at, None);
    assert_eq!(reopened.ended_at, None);
    assert_eq!(reopened.reopen_count, 1);
    assert_eq!(
        reopened.duration_seconds, None,
        "duration only for ended conversations"
    );
}

#[test]
fn reopen_count_only_counts_reopens_that_follow_a_resolved() {
    let f = Conv::new()
        .customer("c1", 0)
        .push("re0", 5, Payload::Reopened) // open already: nothing
        .push("ab", 10, Payload::Abandoned)
        .push("re1", 20, Payload::Reopened) // follows an abandon, not a resolve
        .facts();
    assert_eq!(f.reopen_count, 0);
    assert_eq!(f.state, State::Open);
}

#[test]
fn abandoned_ends_the_conversation_without_resolving_it() {
    let f = Conv::new()
        .opened("o", 0, Channel::Webchat)
        .customer("c1", 10)
        .customer("c2", 70)
        .msg("s", 80, Sender::System, None)
        .push("ab", 90, Payload::Abandoned)
        .facts();
    assert_eq!(f.state, State::Abandoned);
    assert_eq!(f.ended_at, Some(t(90)));
    assert_eq!(f.resolved_at, None);
    assert_eq!(f.resolution_seconds, None);
    // Duration spans counted messages only: 10..70, not the system message at 80.
    assert_eq!(f.duration_seconds, Some(60.0));
    assert!(
        f.responses.is_empty(),
        "missed: a customer message and no response"
    );
}

#[test]
fn ties_follow_the_metrics_precedence_then_event_id() {
    // All at the same instant: the customer message sorts before the agent message (a 0 s
    // response), resolved sorts after reopened, and abandoned after resolved.
    let f = Conv::new()
        .agent("a", 10, "ann")
        .customer("z", 10)
        .push("ab", 20, Payload::Abandoned)
        .resolved("r", 20)
        .push("re", 20, Payload::Reopened)
        .facts();
    assert_eq!(f.responses.len(), 1);
    assert_eq!(f.responses[0].seconds, 0.0);
    assert_eq!(f.state, State::Abandoned);
    assert_eq!(
        f.reopen_count, 0,
        "reopened sorts before resolved at the same instant"
    );
    // Two resolved at the same instant: event_id decides which is last.
    let g = Conv::new()
        .push(
            "r-b",
            5,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Bot,
                agent_id: None,
            }),
        )
        .push(
            "r-a",
            5,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Customer,
                agent_id: None,
            }),
        )
        .facts();
    assert_eq!(g.resolved_by, Some(ResolvedBy::Bot));
}

#[test]
fn delivery_receipts_count_whenever_they_arrive_and_read_implies_delivered() {
    let status = |m: &str, s: DeliveryStatus| {
        Payload::MessageStatus(MessageStatusChanged {
            message_id: m.into(),
            status: s,
            error_code: None,
            category: None,
            implies_message: false,
        })
    };
    let f = Conv::new()
        .push("s0", 5, status("m-a1", DeliveryStatus::Read)) // before its message
        .customer("c1", 8)
        .agent("a1", 10, "ann")
        .agent("a2", 11, "ann")
        .bot("b1", 12)
        .push("s1", 20, status("m-a2", DeliveryStatus::Delivered))
        .push("s2", 30, status("m-b1", DeliveryStatus::Failed))
        .push("s3", 40, status("m-unknown", DeliveryStatus::Read))
        .facts();
    let flags: Vec<(&str, bool, bool, bool)> = f
        .messages
        .iter()
        .map(|m| (m.message_id.as_str(), m.delivered, m.read, m.failed))
        .collect();
    assert_eq!(
        flags,
        vec![
            ("m-c1", false, false, false),
            ("m-a1", true, true, false),
            ("m-a2", true, false, false),
            ("m-b1", false, false, true),
        ]
    );
}

#[test]
fn the_last_survey_answer_per_type_counts_and_is_credited() {
    let survey = |s: SurveyType, score: i32, agent: Option<&str>| {
        Payload::SurveyResponse(SurveyResponse {
            survey: s,
            score,
            scale: s.default_scale(),
            agent_id: agent.map(str::to_owned),
        })
    };
    let f = Conv::new()
        .assigned("as", 0, Some("ann"))
        .push("s1", 10, survey(SurveyType::Csat, 2, None))
        .push("s2", 20, survey(SurveyType::Csat, 5, None)) // replaces the 2
        .push("s3", 30, survey(SurveyType::Nps, 9, Some("bob")))
        .push(
            "ss",
            5,
            Payload::SurveySent(SurveySent {
                survey: SurveyType::Csat,
            }),
        )
        .facts();
    assert_eq!(f.surveys.len(), 2);
    assert_eq!(
        (f.surveys[0].survey, f.surveys[0].score, f.surveys[0].at),
        (SurveyType::Csat, 5, t(20))
    );
    assert_eq!(
        f.surveys[0].agent_id.as_deref(),
        Some("ann"),
        "credited to the conversation's agent"
    );
    assert_eq!(
        f.surveys[1].agent_id.as_deref(),
        Some("bob"),
        "credited to the answer's agent"
    );
    assert_eq!(
        f.surveys_sent,
        vec![SurveySend {
            survey: SurveyType::Csat,
            at: t(5)
        }]
    );
}

#[test]
fn handling_intervals_follow_assignment_and_open_state() {
    let f = Conv::new()
        .opened("o", 0, Channel::Whatsapp)
        .assigned("a1", 10, Some("ann"))
        .resolved("r", 100)
        .push("re", 200, Payload::Reopened)
        .assigned("a2", 250, Some("bob"))
        .assigned("a3", 300, None)
        .assigned("a4", 400, Some("ann"))
        .facts();
    let spans: Vec<Span> = f
        .handling
        .iter()
        .map(|h| (h.agent_id.as_str(), h.start, h.end))
        .collect();
    assert_eq!(
        spans,
        vec![
            ("ann", t(10), Some(t(100))),
            ("ann", t(200), Some(t(250))),
            ("bob", t(250), Some(t(300))),
            ("ann", t(400), None),
        ]
    );
    assert_eq!(f.assignments.len(), 4);
}

#[test]
fn resolution_time_is_never_negative() {
    // The opened event is stamped after the resolution (a late, mis-stamped import).
    let f = Conv::new()
        .resolved("r", 10)
        .opened("o", 50, Channel::Email)
        .facts();
    assert_eq!(f.resolution_seconds, Some(0.0));
}

#[test]
fn facts_are_a_function_of_the_event_set_not_its_order() {
    let c = Conv::new()
        .opened("o", 0, Channel::Whatsapp)
        .customer("c1", 10)
        .bot("b1", 11)
        .customer("c2", 20)
        .push("h", 30, Payload::Handoff)
        .assigned("as", 30, Some("ann"))
        .agent("a1", 30, "ann")
        .push(
            "st",
            25,
            Payload::MessageStatus(MessageStatusChanged {
                message_id: "m-a1".into(),
                status: DeliveryStatus::Read,
                error_code: None,
                category: None,
                implies_message: false,
            }),
        )
        .resolved("r1", 60)
        .push("re", 70, Payload::Reopened)
        .agent("a2", 70, "bob")
        .resolved("r2", 90)
        .push(
            "sv",
            95,
            Payload::SurveyResponse(SurveyResponse {
                survey: SurveyType::Csat,
                score: 4,
                scale: Scale { min: 1, max: 5 },
                agent_id: None,
            }),
        );
    let expected = c.facts();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..50 {
        let mut shuffled = c.events.clone();
        shuffled.shuffle(&mut rng);
        assert_eq!(derive("c1", &shuffled).unwrap(), expected);
    }
}
