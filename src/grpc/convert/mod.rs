//! Every proto <-> domain conversion, with field paths in validation errors.
//!
//! Decoding applies the docs/metrics.md §2 validation rules (via `domain::event` helpers) and reports
//! the first problem of an event as a path relative to the event (`message.agent_id`); the
//! caller prefixes `events[i].`.

use chrono::{DateTime, Utc};

use super::pb;

pub mod alerts;
pub mod metrics;
use crate::domain::event::{
    Channel, DeliveryStatus, Event, FieldError, Initiator, Payload, Presence, Priority, ResolvedBy, Sender,
    SurveyType,
    input::{self, Choice, EventInput, PayloadInput},
};

/// Timestamp -> chrono (microsecond precision), rejecting out-of-range values.
pub fn timestamp_to_chrono(field: &str, ts: &pbjson_types::Timestamp) -> Result<DateTime<Utc>, FieldError> {
    input::timestamp(field, ts.seconds, ts.nanos)
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

/// A proto enum as received: unspecified (`map` gives `None`), known, or a number this version
/// does not know. Whether it must be set is the domain's rule.
fn choice<P, D>(raw: i32, map: impl Fn(P) -> Option<D>) -> Choice<D>
where
    P: TryFrom<i32>,
{
    match P::try_from(raw) {
        Ok(p) => map(p).map_or(Choice::Unset, Choice::Known),
        Err(_) => Choice::Unknown(raw),
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
        pb::Initiator::Unspecified => None,
        pb::Initiator::Customer => Some(Initiator::Customer),
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

/// Proto event -> the domain's unchecked input ([`Event::parse`] validates it).
pub fn event_input(e: &pb::Event) -> EventInput {
    EventInput {
        event_id: e.event_id.clone(),
        conversation_id: e.conversation_id.clone(),
        occurred_at: e.occurred_at.as_ref().map(|t| (t.seconds, t.nanos)),
        payload: e.payload.as_ref().map(payload_input),
    }
}

fn payload_input(p: &pb::event::Payload) -> PayloadInput {
    use pb::event::Payload as P;
    match p {
        P::ConversationOpened(o) => PayloadInput::ConversationOpened {
            customer_id: o.customer_id.clone(),
            channel: choice(o.channel, channel),
            inbox: o.inbox.clone(),
            team: o.team.clone(),
            priority: choice(o.priority, priority),
            initiated_by: choice(o.initiated_by, initiator),
        },
        P::Message(m) => PayloadInput::Message {
            message_id: m.message_id.clone(),
            sender: choice(m.sender, sender),
            agent_id: m.agent_id.clone(),
            private: m.private,
        },
        P::MessageStatus(s) => PayloadInput::MessageStatus {
            message_id: s.message_id.clone(),
            status: choice(s.status, delivery),
            error_code: s.error_code,
            category: s.category.clone(),
            implies_message: s.implies_message,
        },
        P::Assigned(a) => PayloadInput::Assigned {
            agent_id: a.agent_id.clone(),
            team: a.team.clone(),
        },
        P::ConversationUpdated(u) => PayloadInput::ConversationUpdated {
            priority: choice(u.priority, priority),
            team: u.team.clone(),
        },
        P::TagsChanged(t) => PayloadInput::TagsChanged {
            added: t.added.clone(),
            removed: t.removed.clone(),
        },
        P::Handoff(_) => PayloadInput::Handoff,
        P::WaitingOnCustomer(w) => PayloadInput::WaitingOnCustomer { waiting: w.waiting },
        P::Resolved(r) => PayloadInput::Resolved {
            by: choice(r.by, resolved_by),
            agent_id: r.agent_id.clone(),
        },
        P::Reopened(_) => PayloadInput::Reopened,
        P::Abandoned(_) => PayloadInput::Abandoned,
        P::SurveyResponse(s) => PayloadInput::SurveyResponse {
            survey: choice(s.survey, survey),
            score: s.score,
            scale_min: s.scale_min,
            scale_max: s.scale_max,
            agent_id: s.agent_id.clone(),
        },
        P::SurveySent(s) => PayloadInput::SurveySent {
            survey: choice(s.survey, survey),
        },
        P::Conversion(c) => PayloadInput::Conversion {
            customer_id: c.customer_id.clone(),
            kind: c.kind.clone(),
            value_minor: c.value_minor,
            currency: c.currency.clone(),
        },
        P::AgentStatus(a) => PayloadInput::AgentStatus {
            agent_id: a.agent_id.clone(),
            status: choice(a.status, presence),
        },
    }
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
            initiated_by: initiator_to_proto(o.initiated_by) as i32,
        }),
        Payload::Message(m) => P::Message(pb::Message {
            message_id: m.message_id.clone(),
            sender: sender_to_proto(m.sender) as i32,
            agent_id: m.agent_id.clone().unwrap_or_default(),
            private: m.private,
        }),
        Payload::MessageStatus(s) => P::MessageStatus(pb::MessageStatusChanged {
            message_id: s.message_id.clone(),
            status: delivery_to_proto(s.status) as i32,
            error_code: s.error_code,
            category: s.category.clone(),
            implies_message: s.implies_message,
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
        Payload::WaitingOnCustomer(w) => P::WaitingOnCustomer(pb::WaitingOnCustomer { waiting: w.waiting }),
        Payload::Resolved(r) => P::Resolved(pb::Resolved {
            by: resolved_by_to_proto(r.by) as i32,
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
            status: presence_to_proto(a.status) as i32,
        }),
    };
    pb::Event {
        event_id: e.event_id.clone(),
        conversation_id: e.conversation_id.clone().unwrap_or_default(),
        occurred_at: Some(chrono_to_timestamp(e.occurred_at)),
        payload: Some(payload),
    }
}

fn initiator_to_proto(i: Initiator) -> pb::Initiator {
    match i {
        Initiator::Customer => pb::Initiator::Customer,
        Initiator::Business => pb::Initiator::Business,
    }
}

fn sender_to_proto(s: Sender) -> pb::Sender {
    match s {
        Sender::Customer => pb::Sender::Customer,
        Sender::Agent => pb::Sender::Agent,
        Sender::Bot => pb::Sender::Bot,
        Sender::System => pb::Sender::System,
    }
}

fn delivery_to_proto(s: DeliveryStatus) -> pb::MessageStatus {
    match s {
        DeliveryStatus::Sent => pb::MessageStatus::Sent,
        DeliveryStatus::Delivered => pb::MessageStatus::Delivered,
        DeliveryStatus::Read => pb::MessageStatus::Read,
        DeliveryStatus::Failed => pb::MessageStatus::Failed,
    }
}

fn resolved_by_to_proto(by: ResolvedBy) -> pb::ResolvedBy {
    match by {
        ResolvedBy::Agent => pb::ResolvedBy::Agent,
        ResolvedBy::Bot => pb::ResolvedBy::Bot,
        ResolvedBy::Customer => pb::ResolvedBy::Customer,
        ResolvedBy::System => pb::ResolvedBy::System,
    }
}

fn presence_to_proto(p: Presence) -> pb::Presence {
    match p {
        Presence::Online => pb::Presence::Online,
        Presence::Busy => pb::Presence::Busy,
        Presence::Away => pb::Presence::Away,
        Presence::Offline => pb::Presence::Offline,
    }
}

pub(crate) fn channel_to_proto(c: Channel) -> pb::Channel {
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

pub(crate) fn priority_to_proto(p: Priority) -> pb::Priority {
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

    #[test]
    fn every_proto_enum_number_maps_to_unset_known_or_unknown() {
        assert_eq!(choice(0, channel), Choice::Unset);
        assert_eq!(
            choice(pb::Channel::Sms as i32, channel),
            Choice::Known(Channel::Sms)
        );
        assert_eq!(choice(42, channel), Choice::Unknown(42));
        assert_eq!(choice(0, initiator), Choice::Unset);
    }

    #[test]
    fn domain_events_survive_the_proto_both_ways() {
        let e = Event {
            event_id: "e".into(),
            conversation_id: Some("c".into()),
            occurred_at: chrono::DateTime::from_timestamp(1_780_000_000, 123_456_000).unwrap(),
            payload: Payload::Message(crate::domain::event::Message {
                message_id: "m".into(),
                sender: Sender::Agent,
                agent_id: Some("ann".into()),
                private: true,
            }),
        };
        let back = Event::parse(&event_input(&event_to_proto(&e)), e.occurred_at).unwrap();
        assert_eq!(back, e);
    }
}
