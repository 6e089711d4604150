//! What a client sent, decoded from the wire but not checked: [`EventInput`], and
//! [`Event::parse`], the one place the docs/metrics.md §2 validation rules are applied. Every write
//! path (gRPC, the JSON-lines import, the benchmark loader) builds events through it.

use chrono::{DateTime, Utc};

use super::{
    AgentStatus, Assigned, Channel, ConversationOpened, ConversationUpdated, Conversion, DeliveryStatus,
    Event, FieldError, Initiator, MAX_TAGS_PER_EVENT, Message, MessageStatusChanged, Payload, Presence,
    Priority, Resolved, ResolvedBy, Sender, SurveyResponse, SurveySent, SurveyType, TagsChanged,
    check_category, check_conversion_kind, check_currency, check_id, check_occurred_at, check_optional_id,
    check_survey_scale, check_value_minor,
};

/// An enumerated value as received: not set, a value this version knows, or a number it does
/// not know (a newer client, or garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice<T> {
    Unset,
    Known(T),
    Unknown(i32),
}

impl<T> Choice<T> {
    /// A value that must be set.
    fn required(self, field: &str) -> Result<T, FieldError> {
        match self {
            Choice::Known(v) => Ok(v),
            Choice::Unset => Err(FieldError::new(field, "must be set")),
            Choice::Unknown(n) => Err(FieldError::new(field, format!("unknown enum value {n}"))),
        }
    }

    /// A value that may be unset (`None`).
    fn optional(self, field: &str) -> Result<Option<T>, FieldError> {
        match self {
            Choice::Known(v) => Ok(Some(v)),
            Choice::Unset => Ok(None),
            Choice::Unknown(n) => Err(FieldError::new(field, format!("unknown enum value {n}"))),
        }
    }
}

/// One event as received. Strings are as sent ("" = not set for required ids).
#[derive(Debug, Clone, PartialEq)]
pub struct EventInput {
    pub event_id: String,
    pub conversation_id: String,
    /// Seconds and nanoseconds since the epoch (a protobuf `Timestamp`); `None` = not set.
    pub occurred_at: Option<(i64, i32)>,
    pub payload: Option<PayloadInput>,
}

/// The type-specific fields as received.
#[derive(Debug, Clone, PartialEq)]
pub enum PayloadInput {
    ConversationOpened {
        customer_id: String,
        channel: Choice<Channel>,
        inbox: Option<String>,
        team: Option<String>,
        priority: Choice<Priority>,
        initiated_by: Choice<Initiator>,
    },
    Message {
        message_id: String,
        sender: Choice<Sender>,
        agent_id: String,
        private: bool,
    },
    MessageStatus {
        message_id: String,
        status: Choice<DeliveryStatus>,
        error_code: Option<i32>,
        category: Option<String>,
        implies_message: bool,
    },
    Assigned {
        /// "" = unassigned.
        agent_id: String,
        team: Option<String>,
    },
    ConversationUpdated {
        priority: Choice<Priority>,
        team: Option<String>,
    },
    TagsChanged {
        added: Vec<String>,
        removed: Vec<String>,
    },
    Handoff,
    Resolved {
        by: Choice<ResolvedBy>,
        agent_id: Option<String>,
    },
    Reopened,
    Abandoned,
    SurveyResponse {
        survey: Choice<SurveyType>,
        score: i32,
        scale_min: Option<i32>,
        scale_max: Option<i32>,
        agent_id: Option<String>,
    },
    SurveySent {
        survey: Choice<SurveyType>,
    },
    Conversion {
        customer_id: String,
        kind: String,
        value_minor: Option<i64>,
        currency: Option<String>,
    },
    AgentStatus {
        agent_id: String,
        status: Choice<Presence>,
    },
    WaitingOnCustomer {
        waiting: bool,
    },
}

/// A timestamp as microseconds: PostgreSQL keeps microseconds, so the validated event equals
/// the stored one and facts never depend on which of the two they were derived from.
pub fn timestamp(field: &str, seconds: i64, nanos: i32) -> Result<DateTime<Utc>, FieldError> {
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(FieldError::new(
            field,
            format!("nanos must be 0..999999999, got {nanos}"),
        ));
    }
    DateTime::from_timestamp(seconds, (nanos as u32 / 1000) * 1000)
        .ok_or_else(|| FieldError::new(field, format!("seconds out of range: {seconds}")))
}

/// Prefixes a payload-level error with the payload's field name.
fn within(prefix: &'static str) -> impl Fn(FieldError) -> FieldError {
    move |e| FieldError::new(format!("{prefix}.{}", e.field), e.reason)
}

impl Event {
    /// Validates an event (docs/metrics.md §2; docs/metrics.md where it is silent). `now` bounds
    /// `occurred_at`. The first problem is reported with its path below the event
    /// (`message.agent_id`); the caller prefixes `events[i].`.
    pub fn parse(e: &EventInput, now: DateTime<Utc>) -> Result<Event, FieldError> {
        check_id("event_id", &e.event_id)?;
        let Some((seconds, nanos)) = e.occurred_at else {
            return Err(FieldError::new("occurred_at", "must be set"));
        };
        let occurred_at = timestamp("occurred_at", seconds, nanos)?;
        check_occurred_at("occurred_at", occurred_at, now)?;
        let Some(payload) = &e.payload else {
            return Err(FieldError::new(
                "payload",
                "must be set (one of conversation_opened, message, ...)",
            ));
        };
        let payload = payload.parse()?;
        let conversation_id = if !payload.belongs_to_conversation() && e.conversation_id.is_empty() {
            None
        } else if matches!(payload, Payload::AgentStatus(_)) {
            // Presence belongs to an agent, not a conversation: the id is ignored
            // (docs/metrics.md).
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
}

impl PayloadInput {
    fn parse(&self) -> Result<Payload, FieldError> {
        Ok(match self {
            PayloadInput::ConversationOpened {
                customer_id,
                channel,
                inbox,
                team,
                priority,
                initiated_by,
            } => parse_opened(customer_id, channel, inbox, team, priority, initiated_by)?,
            PayloadInput::Message {
                message_id,
                sender,
                agent_id,
                private,
            } => parse_message(message_id, sender, agent_id, *private)?,
            PayloadInput::MessageStatus {
                message_id,
                status,
                error_code,
                category,
                implies_message,
            } => parse_status(message_id, status, *error_code, category, *implies_message)?,
            PayloadInput::Assigned { agent_id, team } => parse_assigned(agent_id, team)?,
            PayloadInput::ConversationUpdated { priority, team } => {
                let f = within("conversation_updated");
                check_optional_id("team", team.as_deref()).map_err(&f)?;
                Payload::ConversationUpdated(ConversationUpdated {
                    priority: priority.optional("priority").map_err(&f)?,
                    team: team.clone(),
                })
            }
            PayloadInput::TagsChanged { added, removed } => parse_tags(added, removed)?,
            PayloadInput::Handoff => Payload::Handoff,
            PayloadInput::WaitingOnCustomer { waiting } => {
                Payload::WaitingOnCustomer(super::WaitingOnCustomer { waiting: *waiting })
            }
            PayloadInput::Resolved { by, agent_id } => {
                let f = within("resolved");
                check_optional_id("agent_id", agent_id.as_deref()).map_err(&f)?;
                Payload::Resolved(Resolved {
                    by: by.required("by").map_err(&f)?,
                    agent_id: agent_id.clone(),
                })
            }
            PayloadInput::Reopened => Payload::Reopened,
            PayloadInput::Abandoned => Payload::Abandoned,
            PayloadInput::SurveyResponse {
                survey,
                score,
                scale_min,
                scale_max,
                agent_id,
            } => parse_survey(survey, *score, *scale_min, *scale_max, agent_id)?,
            PayloadInput::SurveySent { survey } => Payload::SurveySent(SurveySent {
                survey: survey.required("survey").map_err(within("survey_sent"))?,
            }),
            PayloadInput::Conversion {
                customer_id,
                kind,
                value_minor,
                currency,
            } => parse_conversion(customer_id, kind, *value_minor, currency)?,
            PayloadInput::AgentStatus { agent_id, status } => {
                let f = within("agent_status");
                check_id("agent_id", agent_id).map_err(&f)?;
                Payload::AgentStatus(AgentStatus {
                    agent_id: agent_id.clone(),
                    status: status.required("status").map_err(&f)?,
                })
            }
        })
    }
}

/// `message_status`: the message id checked, the status required, the pricing category checked.
fn parse_status(
    message_id: &str,
    status: &Choice<DeliveryStatus>,
    error_code: Option<i32>,
    category: &Option<String>,
    implies_message: bool,
) -> Result<Payload, FieldError> {
    let f = within("message_status");
    check_id("message_id", message_id).map_err(&f)?;
    if let Some(c) = category {
        check_category("category", c).map_err(&f)?;
    }
    Ok(Payload::MessageStatus(MessageStatusChanged {
        message_id: message_id.to_owned(),
        status: status.required("status").map_err(&f)?,
        error_code,
        category: category.clone(),
        implies_message,
    }))
}

/// `assigned`: an empty agent id unassigns (docs/metrics.md §2).
fn parse_assigned(agent_id: &str, team: &Option<String>) -> Result<Payload, FieldError> {
    let f = within("assigned");
    let agent_id = if agent_id.is_empty() {
        None
    } else {
        check_id("agent_id", agent_id).map_err(&f)?;
        Some(agent_id.to_owned())
    };
    check_optional_id("team", team.as_deref()).map_err(&f)?;
    Ok(Payload::Assigned(Assigned {
        agent_id,
        team: team.clone(),
    }))
}

/// `tags_changed`: at most [`MAX_TAGS_PER_EVENT`] tags added and removed, each an id.
fn parse_tags(added: &[String], removed: &[String]) -> Result<Payload, FieldError> {
    let f = within("tags_changed");
    for (field, list) in [("added", added), ("removed", removed)] {
        if list.len() > MAX_TAGS_PER_EVENT {
            return Err(f(FieldError::new(
                field,
                format!(
                    "at most {MAX_TAGS_PER_EVENT} tags per event, got {}; send several events",
                    list.len()
                ),
            )));
        }
        for (i, tag) in list.iter().enumerate() {
            check_id(&format!("{field}[{i}]"), tag).map_err(&f)?;
        }
    }
    Ok(Payload::TagsChanged(TagsChanged {
        added: added.to_vec(),
        removed: removed.to_vec(),
    }))
}

/// `survey_response`: the survey kind required, the score within the survey's scale.
fn parse_survey(
    survey: &Choice<SurveyType>,
    score: i32,
    scale_min: Option<i32>,
    scale_max: Option<i32>,
    agent_id: &Option<String>,
) -> Result<Payload, FieldError> {
    let f = within("survey_response");
    let kind = survey.required("survey").map_err(&f)?;
    let scale = check_survey_scale(kind, score, scale_min, scale_max).map_err(&f)?;
    check_optional_id("agent_id", agent_id.as_deref()).map_err(&f)?;
    Ok(Payload::SurveyResponse(SurveyResponse {
        survey: kind,
        score,
        scale,
        agent_id: agent_id.clone(),
    }))
}

/// `conversation_opened`: ids checked, channel required, unset priority = not set, unset
/// initiator = customer (docs/metrics.md §2).
fn parse_opened(
    customer_id: &str,
    channel: &Choice<Channel>,
    inbox: &Option<String>,
    team: &Option<String>,
    priority: &Choice<Priority>,
    initiated_by: &Choice<Initiator>,
) -> Result<Payload, FieldError> {
    let f = within("conversation_opened");
    check_id("customer_id", customer_id).map_err(&f)?;
    check_optional_id("inbox", inbox.as_deref()).map_err(&f)?;
    check_optional_id("team", team.as_deref()).map_err(&f)?;
    Ok(Payload::ConversationOpened(ConversationOpened {
        customer_id: customer_id.to_owned(),
        channel: channel.required("channel").map_err(&f)?,
        inbox: inbox.clone(),
        team: team.clone(),
        priority: priority.optional("priority").map_err(&f)?,
        initiated_by: initiated_by
            .optional("initiated_by")
            .map_err(&f)?
            .unwrap_or(Initiator::Customer),
    }))
}

/// `message`: `agent_id` required when the sender is an agent, ignored otherwise
/// (docs/metrics.md §2).
fn parse_message(
    message_id: &str,
    sender: &Choice<Sender>,
    agent_id: &str,
    private: bool,
) -> Result<Payload, FieldError> {
    let f = within("message");
    check_id("message_id", message_id).map_err(&f)?;
    let sender = sender.required("sender").map_err(&f)?;
    let agent_id = if sender == Sender::Agent {
        check_id("agent_id", agent_id)
            .map_err(|e| FieldError::new(e.field, format!("{} when sender is SENDER_AGENT", e.reason)))
            .map_err(&f)?;
        Some(agent_id.to_owned())
    } else {
        None
    };
    Ok(Payload::Message(Message {
        message_id: message_id.to_owned(),
        sender,
        agent_id,
        private,
    }))
}

/// `conversion`: a lowercase kind, a bounded non-negative value, and a currency whenever there
/// is a value (revenue is reported per currency: a value without one cannot be attributed).
fn parse_conversion(
    customer_id: &str,
    kind: &str,
    value_minor: Option<i64>,
    currency: &Option<String>,
) -> Result<Payload, FieldError> {
    let f = within("conversion");
    check_id("customer_id", customer_id).map_err(&f)?;
    check_conversion_kind("kind", kind).map_err(&f)?;
    if let Some(v) = value_minor {
        check_value_minor("value_minor", v).map_err(&f)?;
    }
    match (currency, value_minor) {
        (Some(cur), _) => check_currency("currency", cur).map_err(&f)?,
        (None, Some(_)) => {
            return Err(f(FieldError::new(
                "currency",
                "must be set when value_minor is set",
            )));
        }
        (None, None) => {}
    }
    Ok(Payload::Conversion(Conversion {
        customer_id: customer_id.to_owned(),
        kind: kind.to_owned(),
        value_minor,
        currency: currency.clone(),
    }))
}

impl From<&Event> for EventInput {
    /// The input that parses back to `e` (the benchmark loader validates what it generates).
    fn from(e: &Event) -> Self {
        let payload = match &e.payload {
            Payload::ConversationOpened(o) => PayloadInput::ConversationOpened {
                customer_id: o.customer_id.clone(),
                channel: Choice::Known(o.channel),
                inbox: o.inbox.clone(),
                team: o.team.clone(),
                priority: o.priority.map_or(Choice::Unset, Choice::Known),
                initiated_by: Choice::Known(o.initiated_by),
            },
            Payload::Message(m) => PayloadInput::Message {
                message_id: m.message_id.clone(),
                sender: Choice::Known(m.sender),
                agent_id: m.agent_id.clone().unwrap_or_default(),
                private: m.private,
            },
            Payload::MessageStatus(s) => PayloadInput::MessageStatus {
                message_id: s.message_id.clone(),
                status: Choice::Known(s.status),
                error_code: s.error_code,
                category: s.category.clone(),
                implies_message: s.implies_message,
            },
            Payload::Assigned(a) => PayloadInput::Assigned {
                agent_id: a.agent_id.clone().unwrap_or_default(),
                team: a.team.clone(),
            },
            Payload::ConversationUpdated(u) => PayloadInput::ConversationUpdated {
                priority: u.priority.map_or(Choice::Unset, Choice::Known),
                team: u.team.clone(),
            },
            Payload::TagsChanged(t) => PayloadInput::TagsChanged {
                added: t.added.clone(),
                removed: t.removed.clone(),
            },
            Payload::Handoff => PayloadInput::Handoff,
            Payload::WaitingOnCustomer(w) => PayloadInput::WaitingOnCustomer { waiting: w.waiting },
            Payload::Resolved(r) => PayloadInput::Resolved {
                by: Choice::Known(r.by),
                agent_id: r.agent_id.clone(),
            },
            Payload::Reopened => PayloadInput::Reopened,
            Payload::Abandoned => PayloadInput::Abandoned,
            Payload::SurveyResponse(s) => PayloadInput::SurveyResponse {
                survey: Choice::Known(s.survey),
                score: s.score,
                scale_min: Some(s.scale.min),
                scale_max: Some(s.scale.max),
                agent_id: s.agent_id.clone(),
            },
            Payload::SurveySent(s) => PayloadInput::SurveySent {
                survey: Choice::Known(s.survey),
            },
            Payload::Conversion(c) => PayloadInput::Conversion {
                customer_id: c.customer_id.clone(),
                kind: c.kind.clone(),
                value_minor: c.value_minor,
                currency: c.currency.clone(),
            },
            Payload::AgentStatus(a) => PayloadInput::AgentStatus {
                agent_id: a.agent_id.clone(),
                status: Choice::Known(a.status),
            },
        };
        EventInput {
            event_id: e.event_id.clone(),
            conversation_id: e.conversation_id.clone().unwrap_or_default(),
            occurred_at: Some((
                e.occurred_at.timestamp(),
                e.occurred_at.timestamp_subsec_nanos() as i32,
            )),
            payload: Some(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
    }

    fn input(payload: PayloadInput) -> EventInput {
        EventInput {
            event_id: "e1".into(),
            conversation_id: "c1".into(),
            occurred_at: Some((now().timestamp(), 0)),
            payload: Some(payload),
        }
    }

    #[test]
    fn agent_messages_need_an_agent_id() {
        let e = input(PayloadInput::Message {
            message_id: "m".into(),
            sender: Choice::Known(Sender::Agent),
            agent_id: String::new(),
            private: false,
        });
        let err = Event::parse(&e, now()).unwrap_err();
        assert_eq!(err.field, "message.agent_id");
        assert!(err.reason.contains("SENDER_AGENT"), "{}", err.reason);
    }

    #[test]
    fn unknown_and_unspecified_enums_are_rejected() {
        let e = input(PayloadInput::AgentStatus {
            agent_id: "a".into(),
            status: Choice::Unknown(99),
        });
        let err = Event::parse(&e, now()).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("agent_status.status", "unknown enum value 99")
        );
        let e = input(PayloadInput::ConversationOpened {
            customer_id: "c".into(),
            channel: Choice::Unset,
            inbox: None,
            team: None,
            priority: Choice::Unset,
            initiated_by: Choice::Unset,
        });
        let err = Event::parse(&e, now()).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("conversation_opened.channel", "must be set")
        );
    }

    #[test]
    fn agent_status_ignores_conversation_and_conversion_may_omit_it() {
        let mut e = input(PayloadInput::AgentStatus {
            agent_id: "a".into(),
            status: Choice::Known(Presence::Online),
        });
        assert_eq!(Event::parse(&e, now()).unwrap().conversation_id, None);
        e.conversation_id.clear();
        e.payload = Some(PayloadInput::Handoff);
        assert_eq!(Event::parse(&e, now()).unwrap_err().field, "conversation_id");
        e.payload = Some(PayloadInput::Conversion {
            customer_id: "c".into(),
            kind: "sale".into(),
            value_minor: Some(100),
            currency: None,
        });
        assert_eq!(Event::parse(&e, now()).unwrap_err().field, "conversion.currency");
    }

    #[test]
    fn timestamps_keep_microseconds_and_refuse_bad_nanos() {
        let t = timestamp("t", 1_700_000_000, 123_456_789).unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(timestamp("t", 1, -1).unwrap_err().field, "t");
        assert!(
            timestamp("t", i64::MAX, 0)
                .unwrap_err()
                .reason
                .starts_with("seconds out of range")
        );
    }

    #[test]
    fn every_event_type_round_trips_through_its_input() {
        let t = now();
        let events = [
            Payload::Handoff,
            Payload::Reopened,
            Payload::Abandoned,
            Payload::Assigned(Assigned {
                agent_id: None,
                team: Some("t".into()),
            }),
            Payload::SurveyResponse(SurveyResponse {
                survey: SurveyType::Csat,
                score: 9,
                scale: super::super::Scale { min: 1, max: 10 },
                agent_id: Some("ann".into()),
            }),
            Payload::Conversion(Conversion {
                customer_id: "c".into(),
                kind: "sale".into(),
                value_minor: Some(5),
                currency: Some("EUR".into()),
            }),
        ];
        for payload in events {
            let e = Event {
                event_id: "e".into(),
                conversation_id: Some("c".into()),
                occurred_at: t,
                payload,
            };
            assert_eq!(Event::parse(&EventInput::from(&e), t).unwrap(), e);
        }
    }
}
