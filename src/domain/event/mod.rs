//! The validated conversation events of docs/metrics.md §2, independent of the wire format.
//!
//! Values of these types have passed validation: [`Event::parse`] ([`input`]) builds them from
//! what a client sent, with field paths in its errors, and every write path goes through it.

pub mod input;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Longest id (event, conversation, message, customer, agent, team, inbox, tag), in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Most tags one `tags_changed` event may add, and most it may remove (docs/metrics.md §2).
pub const MAX_TAGS_PER_EVENT: usize = 100;
/// Most tags a conversation carries at once; an add beyond it is ignored (docs/metrics.md §3).
pub const MAX_TAGS_PER_CONVERSATION: usize = 100;
/// Longest conversion kind, in characters.
pub const MAX_KIND_CHARS: usize = 64;
/// Largest `conversion.value_minor` (10^15 minor units, e.g. ten trillion EUR): revenue sums of
/// millions of such values still fit in a signed 64-bit integer, so no KPI can overflow.
pub const MAX_VALUE_MINOR: i64 = 1_000_000_000_000_000;
/// Survey scale bounds must lie in `[-MAX_SCALE_ABS, MAX_SCALE_ABS]` (a 0-100 scale is the widest
/// in use; this keeps every normalisation free of integer overflow).
pub const MAX_SCALE_ABS: i32 = 1000;

/// One validated event of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Idempotency key, unique within the tenant.
    pub event_id: String,
    /// The conversation; `None` for `agent_status`, and for a `conversion` sent without one.
    pub conversation_id: Option<String>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The type-specific fields.
    pub payload: Payload,
}

/// The 15 event types of docs/metrics.md §2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    ConversationOpened(ConversationOpened),
    Message(Message),
    MessageStatus(MessageStatusChanged),
    Assigned(Assigned),
    ConversationUpdated(ConversationUpdated),
    TagsChanged(TagsChanged),
    Handoff,
    Resolved(Resolved),
    Reopened,
    Abandoned,
    SurveyResponse(SurveyResponse),
    SurveySent(SurveySent),
    Conversion(Conversion),
    AgentStatus(AgentStatus),
    WaitingOnCustomer(WaitingOnCustomer),
}

impl Payload {
    /// The event type's name as stored in `events.kind` (docs/metrics.md §2 spelling).
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::ConversationOpened(_) => "conversation_opened",
            Payload::Message(_) => "message",
            Payload::MessageStatus(_) => "message_status",
            Payload::Assigned(_) => "assigned",
            Payload::ConversationUpdated(_) => "conversation_updated",
            Payload::TagsChanged(_) => "tags_changed",
            Payload::Handoff => "handoff",
            Payload::Resolved(_) => "resolved",
            Payload::Reopened => "reopened",
            Payload::Abandoned => "abandoned",
            Payload::SurveyResponse(_) => "survey_response",
            Payload::SurveySent(_) => "survey_sent",
            Payload::Conversion(_) => "conversion",
            Payload::AgentStatus(_) => "agent_status",
            Payload::WaitingOnCustomer(_) => "waiting_on_customer",
        }
    }

    /// The customer the event names, if any (erasure finds events by it).
    pub fn customer_id(&self) -> Option<&str> {
        match self {
            Payload::ConversationOpened(o) => Some(&o.customer_id),
            Payload::Conversion(c) => Some(&c.customer_id),
            _ => None,
        }
    }

    /// Whether the event feeds its conversation's derived facts. docs/metrics.md §3: `conversion`
    /// events never belong to a conversation's facts, even when they carry its id; presence
    /// belongs to an agent.
    pub fn belongs_to_conversation(&self) -> bool {
        !matches!(self, Payload::Conversion(_) | Payload::AgentStatus(_))
    }

    /// Whether the event type must carry a `conversation_id` (docs/metrics.md §2).
    pub fn requires_conversation(&self) -> bool {
        self.belongs_to_conversation()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationOpened {
    pub customer_id: String,
    pub channel: Channel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// `None` = not set (the conversation stays `normal` until changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    pub initiated_by: Initiator,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub message_id: String,
    pub sender: Sender,
    /// Set exactly when `sender` is `Agent` (validation guarantees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub private: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageStatusChanged {
    pub message_id: String,
    pub status: DeliveryStatus,
    /// The channel's error code of a failure (docs/metrics.md §5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i32>,
    /// The pricing category, [`check_category`]d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The receipt stands for its message when no `message` event has its id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implies_message: bool,
}

impl MessageStatusChanged {
    /// The conversation tags this receipt adds (docs/metrics.md §5): `message_category:<c>` and,
    /// for a failure with a code, `message_error:<code>`.
    pub fn tags(&self) -> impl Iterator<Item = String> + '_ {
        let category = self.category.as_ref().map(|c| format!("message_category:{c}"));
        let error = match (self.status, self.error_code) {
            (DeliveryStatus::Failed, Some(code)) => Some(format!("message_error:{code}")),
            _ => None,
        };
        category.into_iter().chain(error)
    }
}

/// Longest pricing category.
pub const MAX_CATEGORY_CHARS: usize = 64;

/// docs/metrics.md §2: a message category is 1-64 characters of `a-z`, `0-9` and `_`.
pub fn check_category(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > MAX_CATEGORY_CHARS {
        return Err(FieldError::new(field, "must be 1-64 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(FieldError::new(field, "must contain only a-z, 0-9 and _"));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assigned {
    /// `None` = unassigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagsChanged {
    #[serde(default)]
    pub added: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    pub by: ResolvedBy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurveyResponse {
    pub survey: SurveyType,
    pub score: i32,
    /// The effective scale (defaults applied at validation).
    pub scale: Scale,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurveySent {
    pub survey: SurveyType,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    pub customer_id: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// The conversation waits on the customer (`waiting`), or is back with the team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingOnCustomer {
    pub waiting: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub agent_id: String,
    pub status: Presence,
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The docs/metrics.md spelling, used in storage and docs.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the docs/metrics.md spelling.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// docs/metrics.md §1 channels.
    Channel {
        Whatsapp => "whatsapp",
        Webchat => "webchat",
        Email => "email",
        Sms => "sms",
        Messenger => "messenger",
        Instagram => "instagram",
        Telegram => "telegram",
        Voice => "voice",
        Other => "other",
    }
);

named_enum!(
    /// Who wrote a message.
    Sender { Customer => "customer", Agent => "agent", Bot => "bot", System => "system" }
);

named_enum!(
    /// Delivery receipt status of an outbound message.
    DeliveryStatus { Sent => "sent", Delivered => "delivered", Read => "read", Failed => "failed" }
);

named_enum!(
    /// Conversation priority (docs/metrics.md §1, default `normal`).
    Priority { Low => "low", Normal => "normal", High => "high", Urgent => "urgent" }
);

named_enum!(
    /// Who wrote first.
    Initiator { Customer => "customer", Business => "business" }
);

named_enum!(
    /// Survey types.
    SurveyType { Csat => "csat", Nps => "nps", Ces => "ces" }
);

named_enum!(
    /// Who resolved a conversation.
    ResolvedBy { Agent => "agent", Bot => "bot", Customer => "customer", System => "system" }
);

named_enum!(
    /// Agent presence.
    Presence { Online => "online", Busy => "busy", Away => "away", Offline => "offline" }
);

impl Default for Channel {
    /// docs/metrics.md §3: a conversation without `conversation_opened` is on channel `other`.
    fn default() -> Self {
        Channel::Other
    }
}

impl Default for Priority {
    /// docs/metrics.md §1: priority `normal` until set.
    fn default() -> Self {
        Priority::Normal
    }
}

impl Default for Initiator {
    /// docs/metrics.md §2: `initiated_by` defaults to the customer.
    fn default() -> Self {
        Initiator::Customer
    }
}

/// An inclusive score scale `[min, max]` with `min < max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale {
    pub min: i32,
    pub max: i32,
}

impl SurveyType {
    /// docs/metrics.md §2 default scales: CSAT 1-5, CES 1-7, NPS 0-10.
    pub fn default_scale(self) -> Scale {
        match self {
            SurveyType::Csat => Scale { min: 1, max: 5 },
            SurveyType::Ces => Scale { min: 1, max: 7 },
            SurveyType::Nps => Scale { min: 0, max: 10 },
        }
    }
}

/// A validation failure of one field, relative to the event (the adapter prefixes the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path below the event, e.g. `occurred_at` or `survey_response.score`.
    pub field: String,
    /// Human-readable reason.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks an id of docs/metrics.md §2: 1-128 characters, none of them NUL (PostgreSQL text and
/// jsonb cannot store U+0000, so such an event could never be stored: it is rejected here, alone,
/// instead of failing the batch it travels in).
pub fn check_id(field: &str, value: &str) -> Result<(), FieldError> {
    let chars = value.chars().count();
    if value.contains('\0') {
        Err(FieldError::new(field, "must not contain NUL (U+0000)"))
    } else if chars == 0 {
        Err(FieldError::new(field, "must be set (1-128 characters)"))
    } else if chars > MAX_ID_CHARS {
        Err(FieldError::new(
            field,
            format!("must be at most {MAX_ID_CHARS} characters, got {chars}"),
        ))
    } else {
        Ok(())
    }
}

/// Checks an optional id: absent is fine, present must be 1-128 characters.
pub fn check_optional_id(field: &str, value: Option<&str>) -> Result<(), FieldError> {
    value.map_or(Ok(()), |v| check_id(field, v))
}

/// Earliest accepted `occurred_at` (docs/metrics.md §2).
pub fn earliest_occurred_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .expect("valid constant date")
}

/// docs/metrics.md §2: `occurred_at` between 2000-01-01 and now + 24 h.
pub fn check_occurred_at(field: &str, value: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), FieldError> {
    let latest = now + chrono::Duration::hours(24);
    if value < earliest_occurred_at() || value > latest {
        Err(FieldError::new(
            field,
            format!(
                "must be between 2000-01-01T00:00:00Z and now + 24h ({}), got {}",
                latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                value.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
        ))
    } else {
        Ok(())
    }
}

/// docs/metrics.md §2: the effective scale of a survey answer, and the score inside it. NPS is always
/// 0-10; a missing bound takes the survey's default.
pub fn check_survey_scale(
    survey: SurveyType,
    score: i32,
    scale_min: Option<i32>,
    scale_max: Option<i32>,
) -> Result<Scale, FieldError> {
    let default = survey.default_scale();
    let scale = Scale {
        min: scale_min.unwrap_or(default.min),
        max: scale_max.unwrap_or(default.max),
    };
    for (field, bound) in [("scale_min", scale.min), ("scale_max", scale.max)] {
        if !(-MAX_SCALE_ABS..=MAX_SCALE_ABS).contains(&bound) {
            return Err(FieldError::new(
                field,
                format!("must be between -{MAX_SCALE_ABS} and {MAX_SCALE_ABS}, got {bound}"),
            ));
        }
    }
    if survey == SurveyType::Nps && scale != default {
        let field = if scale.min != default.min {
            "scale_min"
        } else {
            "scale_max"
        };
        return Err(FieldError::new(
            field,
            format!("NPS is always on 0-10, got {}-{}", scale.min, scale.max),
        ));
    }
    if scale.min >= scale.max {
        return Err(FieldError::new(
            "scale_min",
            format!("must be less than scale_max, got {} >= {}", scale.min, scale.max),
        ));
    }
    if score < scale.min || score > scale.max {
        return Err(FieldError::new(
            "score",
            format!(
                "must be inside the scale {}-{}, got {score}",
                scale.min, scale.max
            ),
        ));
    }
    Ok(scale)
}

/// Conversion kind: a lowercase word `[a-z][a-z0-9_]*` of 1-64 characters.
pub fn check_conversion_kind(field: &str, kind: &str) -> Result<(), FieldError> {
    let mut chars = kind.chars();
    let valid_start = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let valid_rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if kind.is_empty() {
        Err(FieldError::new(
            field,
            "must be set (a lowercase word such as sale or signup)",
        ))
    } else if !valid_start || !valid_rest || kind.len() > MAX_KIND_CHARS {
        Err(FieldError::new(
            field,
            format!(
                "must be a lowercase word [a-z][a-z0-9_]* of at most {MAX_KIND_CHARS} characters, got {kind:?}"
            ),
        ))
    } else {
        Ok(())
    }
}

/// docs/metrics.md §2 `value_minor >= 0`, and at most [`MAX_VALUE_MINOR`] so revenue sums stay exact.
pub fn check_value_minor(field: &str, value: i64) -> Result<(), FieldError> {
    if (0..=MAX_VALUE_MINOR).contains(&value) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be between 0 and {MAX_VALUE_MINOR}, got {value}"),
        ))
    }
}

/// ISO 4217 shape: three uppercase ASCII letters.
pub fn check_currency(field: &str, currency: &str) -> Result<(), FieldError> {
    if currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be three uppercase letters (ISO 4217), got {currency:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_have_one_to_128_characters() {
        assert!(check_id("event_id", "").is_err());
        assert!(check_id("event_id", "a").is_ok());
        assert!(
            check_id("event_id", &"é".repeat(128)).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(
            check_id("event_id", &"a".repeat(129)).unwrap_err().field,
            "event_id"
        );
        let nul = check_id("agent_id", "ann\0").unwrap_err();
        assert_eq!(
            (nul.field.as_str(), nul.reason.as_str()),
            ("agent_id", "must not contain NUL (U+0000)")
        );
    }

    #[test]
    fn values_and_scales_stay_in_ranges_the_kpis_can_sum() {
        assert!(check_value_minor("v", 0).is_ok());
        assert!(check_value_minor("v", MAX_VALUE_MINOR).is_ok());
        assert!(check_value_minor("v", MAX_VALUE_MINOR + 1).is_err());
        assert!(check_value_minor("v", -1).is_err());
        assert!(check_survey_scale(SurveyType::Csat, 50, Some(0), Some(100)).is_ok());
        let wide = check_survey_scale(SurveyType::Csat, 0, Some(i32::MIN), Some(i32::MAX)).unwrap_err();
        assert_eq!(wide.field, "scale_min");
        assert_eq!(
            check_survey_scale(SurveyType::Csat, 5, Some(1), Some(1001))
                .unwrap_err()
                .field,
            "scale_max"
        );
    }

    #[test]
    fn occurred_at_window_is_2000_to_now_plus_a_day() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert!(check_occurred_at("t", earliest_occurred_at(), now).is_ok());
        assert!(check_occurred_at("t", earliest_occurred_at() - chrono::Duration::seconds(1), now).is_err());
        assert!(check_occurred_at("t", now + chrono::Duration::hours(24), now).is_ok());
        assert!(check_occurred_at("t", now + chrono::Duration::hours(25), now).is_err());
    }

    #[test]
    fn survey_scales_default_and_bound_scores() {
        assert_eq!(
            check_survey_scale(SurveyType::Csat, 5, None, None),
            Ok(Scale { min: 1, max: 5 })
        );
        assert_eq!(
            check_survey_scale(SurveyType::Csat, 6, None, None)
                .unwrap_err()
                .field,
            "score"
        );
        assert_eq!(
            check_survey_scale(SurveyType::Csat, 10, None, Some(10)),
            Ok(Scale { min: 1, max: 10 })
        );
        assert_eq!(
            check_survey_scale(SurveyType::Ces, 7, None, None),
            Ok(Scale { min: 1, max: 7 })
        );
        assert_eq!(
            check_survey_scale(SurveyType::Nps, 0, None, None),
            Ok(Scale { min: 0, max: 10 })
        );
        assert_eq!(
            check_survey_scale(SurveyType::Nps, 3, Some(1), Some(5))
                .unwrap_err()
                .field,
            "scale_min"
        );
        assert_eq!(
            check_survey_scale(SurveyType::Nps, 3, None, Some(5))
                .unwrap_err()
                .field,
            "scale_max"
        );
        assert_eq!(
            check_survey_scale(SurveyType::Csat, 3, Some(3), Some(3))
                .unwrap_err()
                .field,
            "scale_min"
        );
    }

    #[test]
    fn conversion_kind_and_currency_shapes() {
        assert!(check_conversion_kind("k", "repeat_purchase").is_ok());
        assert!(check_conversion_kind("k", "Sale").is_err());
        assert!(check_conversion_kind("k", "_x").is_err());
        assert!(check_conversion_kind("k", "").is_err());
        assert!(check_currency("c", "EUR").is_ok());
        assert!(check_currency("c", "eur").is_err());
        assert!(check_currency("c", "EURO").is_err());
    }
}
