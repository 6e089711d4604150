//! Filters of docs/metrics.md §6 resolved to the tenant's symbols once per computation.

use std::collections::HashSet;

use crate::domain::{
    event::{Channel, Priority},
    query::Filters,
};
use crate::engine::{
    intern::{Interner, NONE},
    segment::{Conv, Sym},
};

/// Filters resolved to symbols. `None` = no filter; an empty set matches nothing (a filter
/// naming only unknown values matches nothing, docs/metrics.md).
pub struct Compiled {
    channels: Option<HashSet<Channel>>,
    inboxes: Option<HashSet<Sym>>,
    teams: Option<HashSet<Sym>>,
    agents: Option<HashSet<Sym>>,
    tags: Option<HashSet<Sym>>,
    priorities: Option<HashSet<Priority>>,
}

fn syms(symbols: &Interner, names: &[String]) -> Option<HashSet<Sym>> {
    (!names.is_empty()).then(|| {
        names
            .iter()
            .filter_map(|n| symbols.get(n))
            .filter(|s| *s != NONE)
            .collect()
    })
}

impl Compiled {
    pub fn new(symbols: &Interner, f: &Filters) -> Self {
        Self {
            channels: (!f.channels.is_empty()).then(|| f.channels.iter().copied().collect()),
            inboxes: syms(symbols, &f.inboxes),
            teams: syms(symbols, &f.teams),
            agents: syms(symbols, &f.agents),
            tags: syms(symbols, &f.tags),
            priorities: (!f.priorities.is_empty()).then(|| f.priorities.iter().copied().collect()),
        }
    }

    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.channels.is_none()
            && self.inboxes.is_none()
            && self.teams.is_none()
            && self.agents.is_none()
            && self.tags.is_none()
            && self.priorities.is_none()
    }

    /// Conversation-level match, every filter (agent = the conversation's agent).
    pub fn conversation(&self, c: &Conv) -> bool {
        self.conversation_except_agent(c) && self.agent(c.agent)
    }

    /// Conversation-level match, except the agent filter (responses and surveys match the agent
    /// filter by their own agent, docs/metrics.md §6).
    pub fn conversation_except_agent(&self, c: &Conv) -> bool {
        self.channels.as_ref().is_none_or(|s| s.contains(&c.channel))
            && self.inboxes.as_ref().is_none_or(|s| s.contains(&c.inbox))
            && self.teams.as_ref().is_none_or(|s| s.contains(&c.team))
            && self
                .tags
                .as_ref()
                .is_none_or(|s| c.tags.iter().any(|t| s.contains(t)))
            && self.priorities.as_ref().is_none_or(|s| s.contains(&c.priority))
    }

    pub fn agent(&self, agent: Sym) -> bool {
        self.agents.as_ref().is_none_or(|s| s.contains(&agent))
    }
}
