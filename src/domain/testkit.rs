//! Test support: a builder for hand-made conversations (unit tests only).

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::{
    event::*,
    facts::{ConversationFacts, derive},
};

/// 2026-03-02 09:00:00 UTC (a Monday) plus `seconds`.
pub fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap() + Duration::seconds(seconds)
}

/// A tiny builder so each test reads like the conversation it describes.
pub struct Conv {
    pub id: String,
    pub customer: String,
    pub events: Vec<Event>,
}

impl Conv {
    /// Conversation `c1` of customer `cust`.
    pub fn new() -> Self {
        Self::of("c1", "cust")
    }

    /// Conversation `id` of `customer`; event ids are prefixed with the conversation id.
    pub fn of(id: &str, customer: &str) -> Self {
        Conv {
            id: id.to_owned(),
            customer: customer.to_owned(),
            events: Vec::new(),
        }
    }
    pub fn push(mut self, id: &str, at: i64, payload: Payload) -> Self {
        self.events.push(Event {
            event_id: format!("{}/{id}", self.id),
            conversation_id: Some(self.id.clone()),
            occurred_at: t(at),
            payload,
        });
        self
    }
    pub fn opened(self, id: &str, at: i64, channel: Channel) -> Self {
        let customer_id = self.customer.clone();
        self.push(
            id,
            at,
            Payload::ConversationOpened(ConversationOpened {
                customer_id,
                channel,
                inbox: Some("wa-1".into()),
                team: None,
                priority: None,
                initiated_by: Initiator::Customer,
            }),
        )
    }
    pub fn msg(self, id: &str, at: i64, sender: Sender, agent: Option<&str>) -> Self {
        self.push(
            id,
            at,
            Payload::Message(Message {
                message_id: format!("m-{id}"),
                sender,
                agent_id: agent.map(str::to_owned),
                private: false,
            }),
        )
    }
    pub fn customer(self, id: &str, at: i64) -> Self {
        self.msg(id, at, Sender::Customer, None)
    }
    pub fn agent(self, id: &str, at: i64, agent: &str) -> Self {
        self.msg(id, at, Sender::Agent, Some(agent))
    }
    pub fn bot(self, id: &str, at: i64) -> Self {
        self.msg(id, at, Sender::Bot, None)
    }
    pub fn assigned(self, id: &str, at: i64, agent: Option<&str>) -> Self {
        self.push(
            id,
            at,
            Payload::Assigned(Assigned {
                agent_id: agent.map(str::to_owned),
                team: None,
            }),
        )
    }
    pub fn resolved(self, id: &str, at: i64) -> Self {
        self.push(
            id,
            at,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Agent,
                agent_id: Some("ann".into()),
            }),
        )
    }
    pub fn facts(&self) -> ConversationFacts {
        derive(&self.id, &self.events).expect("conversation has events")
    }
}
