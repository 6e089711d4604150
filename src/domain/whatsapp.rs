//! The WhatsApp Cloud API webhook (docs/metrics.md §11): the signature check, the body read as
//! what it says (customer messages and receipts of business messages), which conversation each
//! belongs to, and the chatkpi events that stand for it. Pure: the store keeps the contacts, the
//! application orders the steps.

use chrono::{DateTime, Duration, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::event::{
    Channel, DeliveryStatus, Initiator, ResolvedBy, Sender, check_category,
    input::{Choice, EventInput, PayloadInput},
};

/// Largest webhook body accepted (Meta's bodies are a few kB; a forwarding CRM may batch).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Longest part of an id taken from a `wamid` as it is; a longer one is hashed (event ids and
/// message ids are at most 128 characters, docs/metrics.md §2).
const MAX_WAMID_CHARS: usize = 100;

/// Whether `header` (`X-Hub-Signature-256: sha256=<hex>`) is the HMAC-SHA256 of `body` with
/// `secret`, compared in constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_digest) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(claimed) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&claimed).is_ok()
}

/// The header value a sender computes: `sha256=` and the hex HMAC-SHA256 of `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What one webhook item says.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A customer message (`messages[]`).
    Inbound {
        contact: Contact,
        wamid: String,
        at: DateTime<Utc>,
    },
    /// A receipt of a business message (`statuses[]`).
    Status {
        contact: Contact,
        wamid: String,
        status: DeliveryStatus,
        at: DateTime<Utc>,
        category: Option<String>,
        error_code: Option<i32>,
    },
}

impl Item {
    pub fn contact(&self) -> &Contact {
        match self {
            Item::Inbound { contact, .. } | Item::Status { contact, .. } => contact,
        }
    }

    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Item::Inbound { at, .. } | Item::Status { at, .. } => *at,
        }
    }
}

/// A customer on one of the business's phone numbers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Contact {
    /// `metadata.phone_number_id` ("" when absent).
    pub phone_number_id: String,
    pub wa_id: String,
    /// `metadata.display_phone_number` (the default inbox).
    pub display_phone_number: Option<String>,
}

/// A body read: the items in body order, and how many were ignored (unknown types or statuses,
/// items without the fields they need).
#[derive(Debug, Default)]
pub struct Parsed {
    pub items: Vec<Item>,
    pub ignored: usize,
}

/// Why a body is not a WhatsApp webhook (answered 400).
#[derive(Debug, thiserror::Error)]
#[error("not a WhatsApp Business webhook: {0}")]
pub struct NotAWebhook(String);

/// Message types that are a customer writing (docs/metrics.md §11); any other type (reaction,
/// system, unsupported, a type newer than this list) is ignored.
const MESSAGE_TYPES: [&str; 11] = [
    "text",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "button",
    "order",
];

#[derive(Deserialize)]
struct Body {
    object: Option<String>,
    entry: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    value: Option<Value>,
}

#[derive(Deserialize)]
struct Value {
    metadata: Option<Metadata>,
    #[serde(default)]
    messages: Vec<InMessage>,
    #[serde(default)]
    statuses: Vec<InStatus>,
}

#[derive(Deserialize)]
struct Metadata {
    phone_number_id: Option<String>,
    display_phone_number: Option<String>,
}

#[derive(Deserialize)]
struct InMessage {
    from: Option<String>,
    id: Option<String>,
    timestamp: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct InStatus {
    id: Option<String>,
    status: Option<String>,
    timestamp: Option<serde_json::Value>,
    recipient_id: Option<String>,
    pricing: Option<Pricing>,
    conversation: Option<PricedConversation>,
    #[serde(default)]
    errors: Vec<WaError>,
}

#[derive(Deserialize)]
struct Pricing {
    category: Option<String>,
}

#[derive(Deserialize)]
struct PricedConversation {
    origin: Option<Origin>,
}

#[derive(Deserialize)]
struct Origin {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct WaError {
    code: Option<i64>,
}

/// Reads a webhook body (docs/metrics.md §11). Unknown fields, changes other than `messages`,
/// and unknown message types and statuses are ignored, not errors.
pub fn parse(body: &[u8]) -> Result<Parsed, NotAWebhook> {
    let body: Body = serde_json::from_slice(body).map_err(|e| NotAWebhook(e.to_string()))?;
    if body.object.as_deref() != Some("whatsapp_business_account") {
        return Err(NotAWebhook(
            "`object` must be \"whatsapp_business_account\"".into(),
        ));
    }
    let entries = body
        .entry
        .ok_or_else(|| NotAWebhook("`entry` must be a list".into()))?;
    let mut parsed = Parsed::default();
    for change in entries.into_iter().flat_map(|e| e.changes) {
        let Some(value) = change.value.filter(|_| change.field == "messages") else {
            parsed.ignored += 1;
            continue;
        };
        let (phone_number_id, display) = value
            .metadata
            .map(|m| (m.phone_number_id.unwrap_or_default(), m.display_phone_number))
            .unwrap_or_default();
        let contact = |wa_id: String| Contact {
            phone_number_id: phone_number_id.clone(),
            wa_id,
            display_phone_number: display.clone(),
        };
        for m in value.messages {
            match inbound(m, &contact) {
                Some(item) => parsed.items.push(item),
                None => parsed.ignored += 1,
            }
        }
        for s in value.statuses {
            match status(s, &contact) {
                Some(item) => parsed.items.push(item),
                None => parsed.ignored += 1,
            }
        }
    }
    Ok(parsed)
}

fn inbound(m: InMessage, contact: &impl Fn(String) -> Contact) -> Option<Item> {
    if !MESSAGE_TYPES.contains(&m.kind.as_deref()?) {
        return None;
    }
    Some(Item::Inbound {
        contact: contact(non_empty(m.from)?),
        wamid: non_empty(m.id)?,
        at: unix_time(m.timestamp.as_ref()?)?,
    })
}

fn status(s: InStatus, contact: &impl Fn(String) -> Contact) -> Option<Item> {
    let status = match s.status.as_deref()? {
        "sent" => DeliveryStatus::Sent,
        "delivered" => DeliveryStatus::Delivered,
        "read" => DeliveryStatus::Read,
        "failed" => DeliveryStatus::Failed,
        _ => return None,
    };
    let category = s
        .pricing
        .and_then(|p| p.category)
        .or_else(|| s.conversation.and_then(|c| c.origin).and_then(|o| o.kind))
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| check_category("category", c).is_ok());
    let error_code = match status {
        DeliveryStatus::Failed => s
            .errors
            .first()
            .and_then(|e| e.code)
            .and_then(|c| i32::try_from(c).ok()),
        _ => None,
    };
    Some(Item::Status {
        contact: contact(non_empty(s.recipient_id)?),
        wamid: non_empty(s.id)?,
        status,
        at: unix_time(s.timestamp.as_ref()?)?,
        category,
        error_code,
    })
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty() && !s.contains('\0'))
}

/// Meta's `timestamp`: Unix seconds, as a string (or a number).
fn unix_time(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    let seconds = match v {
        serde_json::Value::String(s) => s.parse::<i64>().ok()?,
        serde_json::Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    Utc.timestamp_opt(seconds, 0).single()
}

/// A `wamid` as it goes into an id: itself, or `#` and 32 hex digits of its SHA-256 when longer
/// than 100 characters.
pub fn id_part(wamid: &str) -> String {
    if wamid.chars().count() <= MAX_WAMID_CHARS {
        wamid.to_owned()
    } else {
        format!("#{}", &hex::encode(Sha256::digest(wamid.as_bytes()))[..32])
    }
}

/// Where a contact's conversation stands, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Thread {
    pub conversation_id: String,
    /// Earliest and latest item time seen in it.
    pub opened_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// The inactivity close was stored.
    pub closed: bool,
    /// When the conversation was resolved or abandoned, if it is not open now.
    pub ended_at: Option<DateTime<Utc>>,
}

/// Where one item goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub conversation_id: String,
    /// The item is the earliest seen of its conversation: it carries an opening.
    pub opens: bool,
    /// A previous conversation closed for inactivity: its id and when it ended.
    pub closes: Option<(String, DateTime<Utc>)>,
}

/// The conversation of `item` (docs/metrics.md §11): the contact's current one, unless there is
/// none, it has been idle longer than `inactivity`, or (for a customer message) it was resolved
/// or abandoned by then; then a new one, and an idle previous one is closed at its last activity
/// plus `inactivity`. Updates `thread` to the contact's state after the item.
pub fn place(source_id: &str, item: &Item, thread: &mut Option<Thread>, inactivity: Duration) -> Placement {
    let at = item.at();
    let inbound = matches!(item, Item::Inbound { .. });
    if let Some(t) = thread.as_mut() {
        let idle = at > t.last_at + inactivity;
        let ended = inbound && t.ended_at.is_some_and(|e| e <= at);
        if !idle && !ended {
            let opens = at <= t.opened_at;
            t.opened_at = t.opened_at.min(at);
            t.last_at = t.last_at.max(at);
            return Placement {
                conversation_id: t.conversation_id.clone(),
                opens,
                closes: None,
            };
        }
    }
    let closes = thread
        .as_ref()
        .filter(|t| !t.closed && t.ended_at.is_none() && at > t.last_at + inactivity)
        .map(|t| (t.conversation_id.clone(), t.last_at + inactivity));
    let conversation_id = conversation_id(source_id, item.contact(), at);
    *thread = Some(Thread {
        conversation_id: conversation_id.clone(),
        opened_at: at,
        last_at: at,
        closed: false,
        ended_at: None,
    });
    Placement {
        conversation_id,
        opens: true,
        closes,
    }
}

/// `wa:<source>:<16 hex digits of SHA-256(phone_number_id "/" wa_id)>:<unix seconds>`: unique per
/// contact and opening, without the phone number in it.
pub fn conversation_id(source_id: &str, contact: &Contact, at: DateTime<Utc>) -> String {
    let who = Sha256::digest(format!("{}/{}", contact.phone_number_id, contact.wa_id).as_bytes());
    format!("wa:{source_id}:{}:{}", &hex::encode(who)[..16], at.timestamp())
}

/// The events that stand for `item` placed at `placement` (docs/metrics.md §11 mapping table).
/// `inbox`: the source's inbox name, or `None` for the item's phone number.
pub fn events(item: &Item, placement: &Placement, inbox: Option<&str>) -> Vec<EventInput> {
    let conversation = placement.conversation_id.clone();
    let at = item.at();
    let contact = item.contact();
    let mut out = Vec::with_capacity(3);
    let (key, message_id, opener) = match item {
        Item::Inbound { wamid, .. } => (id_part(wamid), id_part(wamid), Initiator::Customer),
        Item::Status { wamid, status, .. } => (
            format!("{}:{}", id_part(wamid), status.as_str()),
            id_part(wamid),
            Initiator::Business,
        ),
    };
    if placement.opens {
        let inbox = inbox
            .map(str::to_owned)
            .or_else(|| contact.display_phone_number.clone())
            .or_else(|| Some(contact.phone_number_id.clone()).filter(|p| !p.is_empty()));
        out.push(event(
            format!("wa-open:{key}"),
            &conversation,
            at,
            PayloadInput::ConversationOpened {
                customer_id: contact.wa_id.clone(),
                channel: Choice::Known(Channel::Whatsapp),
                inbox,
                team: None,
                priority: Choice::Unset,
                initiated_by: Choice::Known(opener),
            },
        ));
    }
    out.push(match item {
        Item::Inbound { .. } => event(
            format!("wa-msg:{key}"),
            &conversation,
            at,
            PayloadInput::Message {
                message_id,
                sender: Choice::Known(Sender::Customer),
                agent_id: String::new(),
                private: false,
            },
        ),
        Item::Status {
            status,
            category,
            error_code,
            ..
        } => event(
            format!("wa-status:{key}"),
            &conversation,
            at,
            PayloadInput::MessageStatus {
                message_id,
                status: Choice::Known(*status),
                error_code: *error_code,
                category: category.clone(),
                implies_message: true,
            },
        ),
    });
    out
}

/// The inactivity close of `conversation_id` at `at`: resolved by the system.
pub fn close(conversation_id: &str, at: DateTime<Utc>) -> EventInput {
    event(
        format!("wa-close:{conversation_id}"),
        conversation_id,
        at,
        PayloadInput::Resolved {
            by: Choice::Known(ResolvedBy::System),
            agent_id: None,
        },
    )
}

fn event(event_id: String, conversation_id: &str, at: DateTime<Utc>, payload: PayloadInput) -> EventInput {
    EventInput {
        event_id,
        conversation_id: conversation_id.to_owned(),
        occurred_at: Some((at.timestamp(), 0)),
        payload: Some(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_made_with_the_secret_is_valid_and_any_other_is_not() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let header = signature(b"s3cret", body);
        assert!(signature_valid(b"s3cret", body, Some(&header)));
        assert!(!signature_valid(b"other", body, Some(&header)));
        assert!(!signature_valid(b"s3cret", b"{}", Some(&header)));
        assert!(!signature_valid(b"s3cret", body, None));
        assert!(!signature_valid(
            b"s3cret",
            body,
            Some(header.trim_start_matches("sha256="))
        ));
    }

    #[test]
    fn a_known_hmac_sha256_vector_is_accepted() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let header = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(signature_valid(
            b"Jefe",
            b"what do ya want for nothing?",
            Some(header)
        ));
    }

    fn contact(wa_id: &str) -> Contact {
        Contact {
            phone_number_id: "106540352242922".into(),
            wa_id: wa_id.into(),
            display_phone_number: Some("15550783881".into()),
        }
    }

    fn inbound(at: i64) -> Item {
        Item::Inbound {
            contact: contact("16505551234"),
            wamid: format!("wamid.{at}"),
            at: Utc.timestamp_opt(at, 0).unwrap(),
        }
    }

    #[test]
    fn a_message_after_the_inactivity_window_opens_a_new_conversation_and_closes_the_old() {
        let day = Duration::seconds(86_400);
        let mut thread = None;
        let first = place("src", &inbound(1_000), &mut thread, day);
        assert!(first.opens && first.closes.is_none());
        let same = place("src", &inbound(1_000 + 86_400), &mut thread, day);
        assert_eq!(
            (same.conversation_id.as_str(), same.opens),
            (first.conversation_id.as_str(), false)
        );
        let next = place("src", &inbound(1_001 + 2 * 86_400), &mut thread, day);
        assert_ne!(next.conversation_id, first.conversation_id);
        // Closed at the last activity (1,000 + 86,400) plus the window.
        let closed_at = Utc.timestamp_opt(1_000 + 2 * 86_400, 0).unwrap();
        assert_eq!(next.closes, Some((first.conversation_id, closed_at)));
    }

    #[test]
    fn an_earlier_message_arriving_late_carries_the_opening() {
        let mut thread = None;
        place("src", &inbound(2_000), &mut thread, Duration::seconds(86_400));
        let late = place("src", &inbound(1_500), &mut thread, Duration::seconds(86_400));
        assert!(late.opens);
        assert_eq!(thread.unwrap().opened_at.timestamp(), 1_500);
    }

    #[test]
    fn a_customer_message_after_a_resolution_opens_a_new_conversation_but_a_receipt_does_not() {
        let mut thread = Some(Thread {
            conversation_id: "c1".into(),
            opened_at: Utc.timestamp_opt(1_000, 0).unwrap(),
            last_at: Utc.timestamp_opt(1_100, 0).unwrap(),
            closed: false,
            ended_at: Some(Utc.timestamp_opt(1_200, 0).unwrap()),
        });
        let receipt = Item::Status {
            contact: contact("16505551234"),
            wamid: "wamid.x".into(),
            status: DeliveryStatus::Read,
            at: Utc.timestamp_opt(1_300, 0).unwrap(),
            category: None,
            error_code: None,
        };
        let day = Duration::seconds(86_400);
        assert_eq!(place("src", &receipt, &mut thread, day).conversation_id, "c1");
        let next = place("src", &inbound(1_400), &mut thread, day);
        assert_ne!(next.conversation_id, "c1");
        assert_eq!(next.closes, None, "a resolved conversation is not closed again");
    }

    #[test]
    fn long_wamids_are_hashed_into_ids_of_bounded_length() {
        let long = "w".repeat(300);
        let part = id_part(&long);
        assert_eq!(part.len(), 33);
        assert_eq!(id_part("wamid.short"), "wamid.short");
    }
}
