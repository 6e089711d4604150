//! Test support: a data set of hand-made conversations, presence and conversions as the engine
//! reads it (unit tests only; conversations come from `domain::testkit::Conv`).

use chrono::{DateTime, Utc};

use crate::domain::facts::ConversationFacts;

/// (event id, customer, time, kind, value, currency)
type TestConversion = (String, String, DateTime<Utc>, String, Option<i64>, Option<String>);

/// A tenant's query data built by hand (the unit tests' stand-in for the query cache): upsert
/// facts, add presence and conversions, then [`Dataset::finish`] builds day segments and the
/// tables a computation reads.
#[derive(Default)]
pub struct Dataset {
    facts: Vec<ConversationFacts>,
    /// (event id, agent, time, status)
    presence: Vec<(String, String, DateTime<Utc>, crate::domain::event::Presence)>,
    conversions: Vec<TestConversion>,
    data: super::kpi::Data,
    /// The customer ids of `data` (after [`Dataset::finish`]).
    pub customers: super::intern::Interner,
}

impl Dataset {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a conversation's facts.
    pub fn upsert(&mut self, f: &ConversationFacts) {
        self.facts.retain(|x| x.conversation_id != f.conversation_id);
        self.facts.push(f.clone());
    }

    pub fn add_presence(
        &mut self,
        id: &str,
        agent: &str,
        at: DateTime<Utc>,
        status: crate::domain::event::Presence,
    ) {
        self.presence.push((id.into(), agent.into(), at, status));
    }

    pub fn add_conversion(
        &mut self,
        id: &str,
        customer: &str,
        at: DateTime<Utc>,
        kind: &str,
        value_minor: Option<i64>,
        currency: Option<&str>,
    ) {
        self.conversions.push((
            id.into(),
            customer.into(),
            at,
            kind.into(),
            value_minor,
            currency.map(str::to_owned),
        ));
    }

    /// Builds the segments (one per UTC day of `opened_at`) and tables.
    pub fn finish(&mut self) {
        use std::{collections::BTreeMap, sync::Arc};

        use super::{
            intern::Interner,
            kpi::{ConversionRec, PresenceChange},
            segment::Segment,
        };
        use crate::domain::time::micros;
        let (mut symbols, mut customers) = (Interner::new(), Interner::new());
        let mut by_day: BTreeMap<chrono::NaiveDate, Vec<ConversationFacts>> = BTreeMap::new();
        for f in &self.facts {
            by_day
                .entry(f.opened_at.date_naive())
                .or_default()
                .push(f.clone());
        }
        let segments = by_day
            .iter()
            .map(|(day, facts)| {
                Arc::new(Segment::build(
                    *day,
                    facts,
                    0,
                    &mut |n| symbols.intern(n),
                    &mut customers,
                ))
            })
            .collect();
        let mut presence: Vec<(&str, PresenceChange)> = self
            .presence
            .iter()
            .map(|(id, agent, at, status)| {
                let change = PresenceChange {
                    agent: symbols.intern(agent),
                    at: micros(*at),
                    status: *status,
                };
                (id.as_str(), change)
            })
            .collect();
        presence.sort_by(|a, b| (a.1.agent, a.1.at, a.0).cmp(&(b.1.agent, b.1.at, b.0)));
        let mut conversions: Vec<ConversionRec> = self
            .conversions
            .iter()
            .map(|(_, customer, at, kind, value_minor, currency)| ConversionRec {
                at: micros(*at),
                customer: customers.intern(customer),
                kind: symbols.intern(kind),
                value_minor: *value_minor,
                currency: symbols.intern_opt(currency.as_deref()),
            })
            .collect();
        conversions.sort_by_key(|c| c.at);
        self.data = super::kpi::Data {
            segments,
            symbols: Arc::new(symbols),
            customers: customers.len(),
            presence: Arc::new(presence.into_iter().map(|(_, c)| c).collect()),
            conversions: Arc::new(conversions),
            ..Default::default()
        };
        self.customers = customers;
    }

    /// What computations read (after [`Dataset::finish`]).
    pub fn data(&self) -> &super::kpi::Data {
        &self.data
    }

    /// The tenant symbol of a name.
    pub fn lookup(&self, name: &str) -> Option<u32> {
        self.data.symbols.get(name)
    }
}
