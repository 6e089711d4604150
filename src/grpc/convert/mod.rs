//! Every proto <-> domain conversion, with field paths in validation errors.
//!
//! Decoding applies the METRICS.md §2 validation rules (via `domain::event` helpers) and reports
//! the first problem of an event as a path relative to the event (`message.agent_id`); the
//! caller prefixes `events[i].`.

use chrono::{DateTime, Utc};

use super::pb;

pub mod metrics;
use crate::domain::event::{
    self as ev, Assigned, Channel, ConversationOpened, ConversationUpdated, Conversion, DeliveryStatus,
    Event, FieldError, Initiator, Message, MessageStatusChanged, Payload, Presence, Priority, Resolved,
    ResolvedBy, Sender, SurveyResponse, SurveySent, SurveyType, TagsChanged, check_id, check_optional_id,
};

/// Timestamp -> chrono (microsecond precision), rejecting out-of-range nanos.
pub fn timestamp_to_chrono(field: &str, ts: &pbjson_types::Timestamp) -> Result<DateTime<Utc>, FieldError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(FieldError::new(
            field,
            format!("nanos must be 0..999999999, got {}", ts.nanos),
        ));
    }
    // Postgres keeps microseconds: truncate here so the validated event equals the stored one
    // and facts never depend on which of the two they were derived from.
    DateTime::from_timestamp(ts.seconds, (ts.nanos as u32 / 1000) * 1000)
        .ok_or_else(|| FieldError::new(field, format!("seconds out of range: {}", ts.seconds)))
}

/// chrono -> Timestamp.
pub fn chrono_to_timestamp(t: DateTime<Utc>) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Decodes a required proto enum: unspecified and unknown values are errors.
pub(crate) fn required_enum<P, D>(
    field: &str,
    raw: i32,
    map: impl Fn(P) -> Option<D>,
) -> Result<D, FieldError>
where
    P: TryFrom<i32>,
{
    match P::try_from(raw) {
        Ok(p) => map(p).ok_or_else(|| FieldError::new(field, "must be set")),
        Err(_) => Err(FieldError::new(field, format!("unknown enum value {raw}"))),
    }
}

/// Decodes an optional proto enum: unspecified = `None`, unknown values are errors.
fn optional_enum<P, D>(field: &str, raw: i32, map: impl Fn(P) -> Option<D>) -> Result<Option<D>, FieldError>
where
    P: TryFrom<i32>,
{
    match P::try_from(raw) {
        Ok(p) => Ok(map(p)),
        Err(_) => Err(FieldError::new(field, format!("unknown enum value {raw}"))),
    }
}

pub(crate) fn channel(p: pb::Channel) -> Option<Channel> {
    use pb::Channel as C;
    Some(match p {
        C::Unspecified => return None,
        C::Whatsapp => Channel::Whatsapp,
        C::Webchat => Channel::Webchat,
        C::Email => Channel::Email,
        C::Sms => Channel::Sms,
        C::Messenger => Channel::Messenger,
        C::Instagram => Channel::Instagram,
        C::Telegram => Channel::Telegram,
        C::Voice => Channel::Voice,
        C::Other => Channel::Other,
    })
}

fn sender(p: pb::Sender) -> Option<Sender> {
    Some(match p {
        pb::Sender::Unspecified => return None,
        pb::Sender::Customer => Sender::Customer,
        pb::Sender::Agent => Sender::Agent,
        pb::Sender::Bot => Sender::Bot,
        pb::Sender::System => Sender::System,
    })
}

fn delivery(p: pb::MessageStatus) -> Option<DeliveryStatus> {
    Some(match p {
        pb::MessageStatus::Unspecified => return None,
        pb::MessageStatus::Sent => DeliveryStatus::Sent,
        pb::MessageStatus::Delivered => DeliveryStatus::Delivered,
        pb::MessageStatus::Read => DeliveryStatus::Read,
        pb::MessageStatus::Failed => DeliveryStatus::Failed,
    })
}

pub(crate) fn priority(p: pb::Priority) -> Option<Priority> {
    Some(match p {
        pb::Priority::Unspecified => return None,
        pb::Priority::Low => Priority::Low,
        pb::Priority::Normal => Priority::Normal,
        pb::Priority::High => Priority::High,
        pb::Priority::Urgent => Priority::Urgent,
    })
}

fn initiator(p: pb::Initiator) -> Option<Initiator> {
    match p {
        // Unspecified = customer (METRICS.md §2 default).
        pb::Initiator::Unspecified | pb::Initiator::Customer => Some(Initiator::Customer),
        pb::Initiator::Business => Some(Initiator::Business),
    }
}

fn survey(p: pb::SurveyType) -> Option<SurveyType> {
    Some(match p {
        pb::SurveyType::Unspecified => return None,
        pb::SurveyType::Csat => SurveyType::Csat,
        pb::SurveyType::Nps => SurveyType::Nps,
        pb::SurveyType::Ces => SurveyType::Ces,
    })
}

fn resolved_by(p: pb::ResolvedBy) -> Option<ResolvedBy> {
    Some(match p {
        pb::ResolvedBy::Unspecified => return None,
        pb::ResolvedBy::Agent => ResolvedBy::Agent,
        pb::ResolvedBy::Bot => ResolvedBy::Bot,
        pb::ResolvedBy::Customer => ResolvedBy::Customer,
        pb::ResolvedBy::System => ResolvedBy::System,
    })
}

fn presence(p: pb::Presence) -> Option<Presence> {
    Some(match p {
        pb::Presence::Unspecified => return None,
        pb::Presence::Online => Presence::Online,
        pb::Presence::Busy => Presence::Busy,
        pb::Presence::Away => Presence::Away,
        pb::Presence::Offline => Presence::Offline,
    })
}

/// Prefixes a payload-level error with the payload's field name.
fn within(prefix: &'static str) -> impl Fn(FieldError) -> FieldError {
    move |e| FieldError::new(format!("{prefix}.{}", e.field), e.reason)
}

fn optional_string(s: &Option<String>) -> Option<String> {
    s.clone()
}

/// Validates and converts one proto event (METRICS.md §2). `now` bounds `occurred_at`.
pub fn event_from_proto(e: &pb::Event, now: DateTime<Utc>) -> Result<Event, FieldError> {
    check_id("event_id", &e.event_id)?;
    let occurred_at = match &e.occurred_at {
        Some(ts) => timestamp_to_chrono("occurred_at", ts)?,
        None => return Err(FieldError::new("occurred_at", "must be set")),
    };
    ev::check_occurred_at("occurred_at", occurred_at, now)?;
    let Some(payload) = &e.payload else {
        return Err(FieldError::new(
            "payload",
            "must be set (one of conversation_opened, message, ...)",
        ));
    };
    let payload = payload_from_proto(payload)?;

    let conversation_id = if !payload.belongs_to_conversation() && e.conversation_id.is_empty() {
        None
    } else if matches!(payload, Payload::AgentStatus(_)) {
        // Presence belongs to an agent, not a conversation: the id is ignored (documented in
        // the proto and docs/metrics-notes.md).
        None
    } else {
        check_id("conversation_id", &e.conversation_id)?;
        Some(e.conversation_id.clone())
    };
    Ok(Event {
        event_id: e.event_id.clone(),
        conversation_id,
        occurred_at,
        payload,
    })
}

fn payload_from_proto(p: &pb::event::Payload) -> Result<Payload, FieldError> {
    use pb::event::Payload as P;
    Ok(match p {
        P::ConversationOpened(o) => {
            let f = within("conversation_opened");
            check_id("customer_id", &o.customer_id).map_err(&f)?;
            check_optional_id("inbox", o.inbox.as_deref()).map_err(&f)?;
            check_optional_id("team", o.team.as_deref()).map_err(&f)?;
            Payload::ConversationOpened(ConversationOpened {
                customer_id: o.customer_id.clone(),
                channel: required_enum("channel", o.channel, channel).map_err(&f)?,
                inbox: optional_string(&o.inbox),
                team: optional_string(&o.team),
                priority: optional_enum("priority", o.priority, priority).map_err(&f)?,
                initiated_by: required_enum("initiated_by", o.initiated_by, initiator).map_err(&f)?,
            })
        }
        P::Message(m) => {
            let f = within("message");
            check_id("message_id", &m.message_id).map_err(&f)?;
            let sender = required_enum("sender", m.sender, sender).map_err(&f)?;
            let agent_id = if sender == Sender::Agent {
                // METRICS.md §2: agent_id is required when sender = agent.
                check_id("agent_id", &m.agent_id)
                    .map_err(|e| {
                        FieldError::new(e.field, format!("{} when sender is SENDER_AGENT", e.reason))
                    })
                    .map_err(&f)?;
                Some(m.agent_id.clone())
            } else {
                None
            };
            Payload::Message(Message {
                message_id: m.message_id.clone(),
                sender,
                agent_id,
                private: m.private,
            })
        }
        P::MessageStatus(s) => {
            let f = within("message_status");
            check_id("message_id", &s.message_id).map_err(&f)?;
            Payload::MessageStatus(MessageStatusChanged {
                message_id: s.message_id.clone(),
                status: required_enum("status", s.status, delivery).map_err(&f)?,
            })
        }
        P::Assigned(a) => {
            let f = within("assigned");
            let agent_id = if a.agent_id.is_empty() {
                None
            } else {
                check_id("agent_id", &a.agent_id).map_err(&f)?;
                Some(a.agent_id.clone())
            };
            check_optional_id("team", a.team.as_deref()).map_err(&f)?;
            Payload::Assigned(Assigned {
                agent_id,
                team: optional_string(&a.team),
            })
        }
        P::ConversationUpdated(u) => {
            let f = within("conversation_updated");
            check_optional_id("team", u.team.as_deref()).map_err(&f)?;
            Payload::ConversationUpdated(ConversationUpdated {
                priority: optional_enum("priority", u.priority, priority).map_err(&f)?,
                team: optional_string(&u.team),
            })
        }
        P::TagsChanged(t) => {
            let f = within("tags_changed");
            for (i, tag) in t.added.iter().enumerate() {
                check_id(&format!("added[{i}]"), tag).map_err(&f)?;
            }
            for (i, tag) in t.removed.iter().enumerate() {
                check_id(&format!("removed[{i}]"), tag).map_err(&f)?;
            }
            Payload::TagsChanged(TagsChanged {
                added: t.added.clone(),
                removed: t.removed.clone(),
            })
        }
        P::Handoff(_) => Payload::Handoff,
        P::Resolved(r) => {
            let f = within("resolved");
            check_optional_id("agent_id", r.agent_id.as_deref()).map_err(&f)?;
            Payload::Resolved(Resolved {
                by: required_enum("by", r.by, resolved_by).map_err(&f)?,
                agent_id: optional_string(&r.agent_id),
            })
        }
        P::Reopened(_) => Payload::Reopened,
        P::Abandoned(_) => Payload::Abandoned,
        P::SurveyResponse(s) => {
            let f = within("survey_response");
            let kind = required_enum("survey", s.survey, survey).map_err(&f)?;
            let scale = ev::check_survey_scale(kind, s.score, s.scale_min, s.scale_max).map_err(&f)?;
            check_optional_id("agent_id", s.agent_id.as_deref()).map_err(&f)?;
            Payload::SurveyResponse(SurveyResponse {
                survey: kind,
                score: s.score,
                scale,
                agent_id: optional_string(&s.agent_id),
            })
        }
        P::SurveySent(s) => Payload::SurveySent(SurveySent {
            survey: required_enum("survey", s.survey, survey).map_err(within("survey_sent"))?,
        }),
        P::Conversion(c) => {
            let f = within("conversion");
            check_id("customer_id", &c.customer_id).map_err(&f)?;
            ev::check_conversion_kind("kind", &c.kind).map_err(&f)?;
            if let Some(v) = c.value_minor {
                ev::check_value_minor("value_minor", v).map_err(&f)?;
            }
            match (&c.currency, c.value_minor) {
                (Some(cur), _) => ev::check_currency("currency", cur).map_err(&f)?,
                (None, Some(_)) => {
                    return Err(f(FieldError::new(
                        "currency",
                        "must be set when value_minor is set",
                    )));
                }
                (None, None) => {}
            }
            Payload::Conversion(Conversion {
                customer_id: c.customer_id.clone(),
                kind: c.kind.clone(),
                value_minor: c.value_minor,
                currency: optional_string(&c.currency),
            })
        }
        P::AgentStatus(a) => {
            let f = within("agent_status");
            check_id("agent_id", &a.agent_id).map_err(&f)?;
            Payload::AgentStatus(ev::AgentStatus {
                agent_id: a.agent_id.clone(),
                status: required_enum("status", a.status, presence).map_err(&f)?,
            })
        }
    })
}

/// Domain event -> proto event (the simulator's output and client examples).
pub fn event_to_proto(e: &Event) -> pb::Event {
    use pb::event::Payload as P;
    let payload = match &e.payload {
        Payload::ConversationOpened(o) => P::ConversationOpened(pb::ConversationOpened {
            customer_id: o.customer_id.clone(),
            channel: channel_to_proto(o.channel) as i32,
            inbox: o.inbox.clone(),
            team: o.team.clone(),
            priority: o.priority.map_or(pb::Priority::Unspecified, priority_to_proto) as i32,
            initiated_by: match o.initiated_by {
                Initiator::Customer => pb::Initiator::Customer,
                Initiator::Business => pb::Initiator::Business,
            } as i32,
        }),
        Payload::Message(m) => P::Message(pb::Message {
            message_id: m.message_id.clone(),
            sender: match m.sender {
                Sender::Customer => pb::Sender::Customer,
                Sender::Agent => pb::Sender::Agent,
                Sender::Bot => pb::Sender::Bot,
                Sender::System => pb::Sender::System,
            } as i32,
            agent_id: m.agent_id.clone().unwrap_or_default(),
            private: m.private,
        }),
        Payload::MessageStatus(s) => P::MessageStatus(pb::MessageStatusChanged {
            message_id: s.message_id.clone(),
            status: match s.status {
                DeliveryStatus::Sent => pb::MessageStatus::Sent,
                DeliveryStatus::Delivered => pb::MessageStatus::Delivered,
                DeliveryStatus::Read => pb::MessageStatus::Read,
                DeliveryStatus::Failed => pb::MessageStatus::Failed,
            } as i32,
        }),
        Payload::Assigned(a) => P::Assigned(pb::Assigned {
            agent_id: a.agent_id.clone().unwrap_or_default(),
            team: a.team.clone(),
        }),
        Payload::ConversationUpdated(u) => P::ConversationUpdated(pb::ConversationUpdated {
            priority: u.priority.map_or(pb::Priority::Unspecified, priority_to_proto) as i32,
            team: u.team.clone(),
        }),
        Payload::TagsChanged(t) => P::TagsChanged(pb::TagsChanged {
            added: t.added.clone(),
            removed: t.removed.clone(),
        }),
        Payload::Handoff => P::Handoff(pb::Handoff {}),
        Payload::Resolved(r) => P::Resolved(pb::Resolved {
            by: match r.by {
                ResolvedBy::Agent => pb::ResolvedBy::Agent,
                ResolvedBy::Bot => pb::ResolvedBy::Bot,
                ResolvedBy::Customer => pb::ResolvedBy::Customer,
                ResolvedBy::System => pb::ResolvedBy::System,
            } as i32,
            agent_id: r.agent_id.clone(),
        }),
        Payload::Reopened => P::Reopened(pb::Reopened {}),
        Payload::Abandoned => P::Abandoned(pb::Abandoned {}),
        Payload::SurveyResponse(s) => P::SurveyResponse(pb::SurveyResponse {
            survey: survey_to_proto(s.survey) as i32,
            score: s.score,
            scale_min: Some(s.scale.min),
            scale_max: Some(s.scale.max),
            agent_id: s.agent_id.clone(),
        }),
        Payload::SurveySent(s) => P::SurveySent(pb::SurveySent {
            survey: survey_to_proto(s.survey) as i32,
        }),
        Payload::Conversion(c) => P::Conversion(pb::Conversion {
            customer_id: c.customer_id.clone(),
            kind: c.kind.clone(),
            value_minor: c.value_minor,
            currency: c.currency.clone(),
        }),
        Payload::AgentStatus(a) => P::AgentStatus(pb::AgentStatus {
            agent_id: a.agent_id.clone(),
            status: match a.status {
                Presence::Online => pb::Presence::Online,
                Presence::Busy => pb::Presence::Busy,
                Presence::Away => pb::Presence::Away,
                Presence::Offline => pb::Presence::Offline,
            } as i32,
        }),
    };
    pb::Event {
        event_id: e.event_id.clone(),
        conversation_id: e.conversation_id.clone().unwrap_or_default(),
        occurred_at: Some(chrono_to_timestamp(e.occurred_at)),
        payload: Some(payload),
    }
}

fn channel_to_proto(c: Channel) -> pb::Channel {
    match c {
        Channel::Whatsapp => pb::Channel::Whatsapp,
        Channel::Webchat => pb::Channel::Webchat,
        Channel::Email => pb::Channel::Email,
        Channel::Sms => pb::Channel::Sms,
        Channel::Messenger => pb::Channel::Messenger,
        Channel::Instagram => pb::Channel::Instagram,
        Channel::Telegram => pb::Channel::Telegram,
        Channel::Voice => pb::Channel::Voice,
        Channel::Other => pb::Channel::Other,
    }
}

fn priority_to_proto(p: Priority) -> pb::Priority {
    match p {
        Priority::Low => pb::Priority::Low,
        Priority::Normal => pb::Priority::Normal,
        Priority::High => pb::Priority::High,
        Priority::Urgent => pb::Priority::Urgent,
    }
}

fn survey_to_proto(s: SurveyType) -> pb::SurveyType {
    match s {
        SurveyType::Csat => pb::SurveyType::Csat,
        SurveyType::Nps => pb::SurveyType::Nps,
        SurveyType::Ces => pb::SurveyType::Ces,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
    }

    fn base(payload: pb::event::Payload) -> pb::Event {
        pb::Event {
            event_id: "e1".into(),
            conversation_id: "c1".into(),
            occurred_at: Some(chrono_to_timestamp(now())),
            payload: Some(payload),
        }
    }

    #[test]
    fn agent_messages_need_an_agent_id() {
        let e = base(pb::event::Payload::Message(pb::Message {
            message_id: "m".into(),
            sender: pb::Sender::Agent as i32,
            agent_id: String::new(),
            private: false,
        }));
        let err = event_from_proto(&e, now()).unwrap_err();
        assert_eq!(err.field, "message.agent_id");
        assert!(err.reason.contains("SENDER_AGENT"), "{}", err.reason);
    }

    #[test]
    fn unknown_and_unspecified_enums_are_rejected() {
        let mut e = base(pb::event::Payload::AgentStatus(pb::AgentStatus {
            agent_id: "a".into(),
            status: 99,
        }));
        assert_eq!(
            event_from_proto(&e, now()).unwrap_err().field,
            "agent_status.status"
        );
        e.payload = Some(pb::event::Payload::ConversationOpened(pb::ConversationOpened {
            customer_id: "c".into(),
            ..Default::default()
        }));
        let err = event_from_proto(&e, now()).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("conversation_opened.channel", "must be set")
        );
    }

    #[test]
    fn agent_status_ignores_conversation_and_conversion_may_omit_it() {
        let mut e = base(pb::event::Payload::AgentStatus(pb::AgentStatus {
            agent_id: "a".into(),
            status: pb::Presence::Online as i32,
        }));
        assert_eq!(event_from_proto(&e, now()).unwrap().conversation_id, None);
        e.conversation_id.clear();
        e.payload = Some(pb::event::Payload::Handoff(pb::Handoff {}));
        assert_eq!(event_from_proto(&e, now()).unwrap_err().field, "conversation_id");
        e.payload = Some(pb::event::Payload::Conversion(pb::Conversion {
            customer_id: "c".into(),
            kind: "sale".into(),
            value_minor: Some(100),
            currency: None,
        }));
        assert_eq!(
            event_from_proto(&e, now()).unwrap_err().field,
            "conversion.currency"
        );
    }

    #[test]
    fn every_event_round_trips_through_the_proto() {
        use crate::sim::{SimConfig, simulate};
        let events = simulate(&SimConfig {
            conversations: 50,
            days: 2,
            seed: 3,
            ..SimConfig::default()
        });
        let mut kinds = std::collections::BTreeSet::new();
        for e in &events {
            kinds.insert(e.payload.kind());
            let back =
                event_from_proto(&event_to_proto(e), e.occurred_at).expect("simulated events are valid");
            assert_eq!(&back, e);
        }
        assert_eq!(
            kinds.len(),
            14,
            "the simulator produces every event type: {kinds:?}"
        );
    }
}
