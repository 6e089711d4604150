//! A tenant's facts in compact in-memory form, the input of every KPI computation.
//!
//! Strings (agents, teams, inboxes, tags, customers, conversion kinds, currencies) are interned
//! to `Sym`s and instants are microseconds since the epoch, so a conversation costs a few
//! hundred bytes and scanning a million of them takes milliseconds. The dataset is built from
//! stored conversation facts, presence and conversion events, and can be refreshed
//! incrementally (a conversation upserted again replaces its old record).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use chatkpi::domain::{
    event::{Channel, Initiator, Presence, Priority, ResolvedBy, Sender, SurveyType},
    facts::{ConversationFacts, State},
};

/// An interned string; `NONE` = absent.
pub type Sym = u32;
pub const NONE: Sym = 0;
pub use chatkpi::domain::time::{Micros, OPEN_END, Span, micros};

/// String interner: `Sym` 0 is the empty string (absent).
#[derive(Debug, Default)]
pub struct Symbols {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, Sym>,
}

impl Symbols {
    pub fn new() -> Self {
        Self {
            names: vec!["".into()],
            index: HashMap::new(),
        }
    }

    pub fn intern(&mut self, s: &str) -> Sym {
        if s.is_empty() {
            return NONE;
        }
        if let Some(&sym) = self.index.get(s) {
            return sym;
        }
        let sym = self.names.len() as Sym;
        self.names.push(s.into());
        self.index.insert(s.into(), sym);
        sym
    }

    pub fn intern_opt(&mut self, s: Option<&str>) -> Sym {
        s.map_or(NONE, |s| self.intern(s))
    }

    /// The symbol of `s` if it was ever interned (filters on unknown values match nothing).
    pub fn lookup(&self, s: &str) -> Option<Sym> {
        if s.is_empty() {
            Some(NONE)
        } else {
            self.index.get(s).copied()
        }
    }

    /// Number of symbols (the largest `Sym` + 1).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.len() <= 1
    }

    pub fn name(&self, sym: Sym) -> &str {
        self.names.get(sym as usize).map_or("", |s| s)
    }
}

/// A response: the customer waited from `waiting_since` until `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resp {
    pub waiting_since: Micros,
    pub at: Micros,
    /// Responding agent; `NONE` for a bot.
    pub agent: Sym,
}

impl Resp {
    pub fn span(&self) -> Span {
        Span {
            start: self.waiting_since,
            end: self.at,
        }
    }
}

/// A non-private message with its delivery flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg {
    pub at: Micros,
    pub sender: Sender,
    /// The sending agent of an agent message.
    pub agent: Sym,
    pub delivered: bool,
    pub read: bool,
    pub failed: bool,
}

/// The attributes SLA policies match by, from `from` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub from: Micros,
    pub priority: Priority,
    pub team: Sym,
    pub tags: Box<[Sym]>,
}

/// The counting survey answer of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Survey {
    pub kind: SurveyType,
    pub score: i32,
    pub min: i32,
    pub max: i32,
    pub at: Micros,
    /// Credited agent (the answer's, else the conversation's).
    pub agent: Sym,
}

impl Msg {
    /// Adds this message to `[received, sent, delivered, read, failed]` (docs/metrics.md §5: sent
    /// = outbound agent, bot and system messages; read implies delivered).
    pub fn count_into(&self, totals: &mut [u64; 5]) {
        if self.sender == Sender::Customer {
            totals[0] += 1;
        } else {
            totals[1] += 1;
            totals[2] += self.delivered as u64;
            totals[3] += self.read as u64;
            totals[4] += self.failed as u64;
        }
    }
}

impl Survey {
    /// `(score - min) / (max - min)` in [0, 1].
    pub fn normalized(&self) -> f64 {
        (self.score - self.min) as f64 / (self.max - self.min) as f64
    }
}

/// One conversation's facts, compact.
#[derive(Debug, Clone)]
pub struct Conv {
    pub id: Box<str>,
    pub opened_at: Micros,
    pub channel: Channel,
    pub priority: Priority,
    pub state: State,
    pub initiated_by: Initiator,
    pub inbox: Sym,
    pub team: Sym,
    pub agent: Sym,
    pub assignee: Sym,
    pub customer: Sym,
    pub tags: Box<[Sym]>,
    pub has_customer_message: bool,
    /// Every response; the first is the first response.
    pub responses: Box<[Resp]>,
    /// First human response, `waiting_since` = the human queue start.
    pub human_first: Option<Resp>,
    pub human_queue_start: Option<Micros>,
    /// Priority, team and tags from an instant on (docs/metrics.md §10).
    pub attributes: Box<[Attr]>,
    /// Stretches of waiting on the customer; `end = OPEN_END` while it waits.
    pub waits: Box<[Span]>,
    pub wait: Option<Span>,
    /// Still waiting at the end of the events.
    pub waiting_since: Option<Micros>,
    pub resolved_at: Option<Micros>,
    pub resolved_by: Option<ResolvedBy>,
    pub resolving_agent: Sym,
    pub reopen_count: u32,
    pub ended_at: Option<Micros>,
    /// First to last counted message, for ended conversations.
    pub duration: Option<Span>,
    pub counts: [u32; 3],
    pub human_involved: bool,
    pub bot_involved: bool,
    pub resolutions: Box<[Micros]>,
    pub state_changes: Box<[(Micros, State)]>,
    pub assignments: Box<[(Micros, Sym)]>,
    pub handling: Box<[(Sym, Span)]>,
    pub messages: Box<[Msg]>,
    pub surveys: Box<[Survey]>,
    pub surveys_sent: Box<[(SurveyType, Micros)]>,
    /// `[first event, last event]`: every item of the conversation lies inside.
    pub active: Span,
    /// Messages `[received, sent, delivered, read, failed]` over all time: a conversation whose
    /// `active` span lies inside a query window needs no walk over its messages.
    pub message_totals: [u64; 5],
    /// The first `opened_at` of another conversation of the same customer after this one's
    /// `resolved_at` (repeat contacts, docs/metrics.md §5 FCR); set by [`Dataset::finish`].
    pub next_contact: Option<Micros>,
}

impl Conv {
    /// State as of instant `t` (a change at `t` counts).
    pub fn state_at(&self, t: Micros) -> State {
        self.state_changes
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(State::Open, |(_, s)| *s)
    }

    /// Assignee as of instant `t`.
    pub fn assignee_at(&self, t: Micros) -> Sym {
        self.assignments
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(NONE, |(_, a)| *a)
    }

    /// Whether a customer message was waiting for a response at instant `t`.
    pub fn waiting_at(&self, t: Micros) -> bool {
        self.responses.iter().any(|r| r.waiting_since <= t && t < r.at)
            || self.waiting_since.is_some_and(|w| w <= t)
    }

    pub fn first_response(&self) -> Option<&Resp> {
        self.responses.first()
    }

    pub fn replies(&self) -> &[Resp] {
        self.responses.get(1..).unwrap_or(&[])
    }
}

/// An `agent_status` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceChange {
    pub agent: Sym,
    pub at: Micros,
    pub status: Presence,
}

/// A `conversion` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversionRec {
    pub customer: Sym,
    pub at: Micros,
    pub kind: Sym,
    pub value_minor: Option<i64>,
    pub currency: Sym,
}

/// A tenant's data, ready for KPI computation.
#[derive(Debug, Default)]
pub struct Dataset {
    pub symbols: Symbols,
    pub conversations: Vec<Conv>,
    positions: HashMap<Box<str>, usize>,
    /// Presence changes, sorted by (agent, at, event id) after [`Dataset::finish`].
    pub presence: Vec<(Box<str>, PresenceChange)>,
    pub conversions: Vec<(Box<str>, ConversionRec)>,
    event_ids: std::collections::HashSet<Box<str>>,
    /// Opened times of each customer's conversations, sorted (repeat contact, retention).
    pub customer_opens: HashMap<Sym, Vec<Micros>>,
    /// `conversion_order[conversion_ranges[customer]]` are indexes into `conversions` of that
    /// customer's conversions, by time (a dense table indexed by `Sym`: no hashing per lookup).
    conversion_ranges: Vec<(u32, u32)>,
    conversion_order: Vec<u32>,
}

impl Dataset {
    pub fn new() -> Self {
        Self {
            symbols: Symbols::new(),
            ..Default::default()
        }
    }

    /// Inserts or replaces a conversation's facts.
    pub fn upsert(&mut self, f: &ConversationFacts) {
        let conv = self.compact(f);
        match self.positions.get(conv.id.as_ref()) {
            Some(&i) => self.conversations[i] = conv,
            None => {
                self.positions.insert(conv.id.clone(), self.conversations.len());
                self.conversations.push(conv);
            }
        }
    }

    /// Adds an `agent_status` event (ignored when its id was added before).
    pub fn add_presence(&mut self, event_id: &str, agent: &str, at: DateTime<Utc>, status: Presence) {
        if self.event_ids.insert(event_id.into()) {
            let agent = self.symbols.intern(agent);
            self.presence.push((
                event_id.into(),
                PresenceChange {
                    agent,
                    at: micros(at),
                    status,
                },
            ));
        }
    }

    /// Adds a `conversion` event (ignored when its id was added before).
    pub fn add_conversion(
        &mut self,
        event_id: &str,
        customer: &str,
        at: DateTime<Utc>,
        kind: &str,
        value_minor: Option<i64>,
        currency: Option<&str>,
    ) {
        if self.event_ids.insert(event_id.into()) {
            let rec = ConversionRec {
                customer: self.symbols.intern(customer),
                at: micros(at),
                kind: self.symbols.intern(kind),
                value_minor,
                currency: self.symbols.intern_opt(currency),
            };
            self.conversions.push((event_id.into(), rec));
        }
    }

    /// Rebuilds the derived indexes; call after a round of upserts and adds.
    pub fn finish(&mut self) {
        self.presence
            .sort_by(|a, b| (a.1.agent, a.1.at, &a.0).cmp(&(b.1.agent, b.1.at, &b.0)));
        self.conversions
            .sort_by(|a, b| (a.1.at, &a.0).cmp(&(b.1.at, &b.0)));
        self.customer_opens.clear();
        for c in &self.conversations {
            if c.customer != NONE {
                self.customer_opens
                    .entry(c.customer)
                    .or_default()
                    .push(c.opened_at);
            }
        }
        for opens in self.customer_opens.values_mut() {
            opens.sort_unstable();
        }
        // Precomputed once per refresh so queries need no per-conversation lookups.
        let opens = &self.customer_opens;
        for c in &mut self.conversations {
            c.next_contact = match (c.resolved_at, opens.get(&c.customer)) {
                (Some(resolved_at), Some(list)) if c.customer != NONE => {
                    // The conversation itself is never its own repeat contact (it opens after
                    // its resolution only when its `conversation_opened` is stamped late).
                    let i = list.partition_point(|t| *t <= resolved_at);
                    let skip_self = c.opened_at > resolved_at && list.get(i) == Some(&c.opened_at);
                    list.get(i + usize::from(skip_self)).copied()
                }
                _ => None,
            };
        }
        let mut order: Vec<u32> = (0..self.conversions.len() as u32).collect();
        order.sort_by_key(|i| (self.conversions[*i as usize].1.customer, *i));
        self.conversion_ranges = vec![(0, 0); self.symbols.len()];
        let mut start = 0;
        while start < order.len() {
            let customer = self.conversions[order[start] as usize].1.customer;
            let mut end = start;
            while end < order.len() && self.conversions[order[end] as usize].1.customer == customer {
                end += 1;
            }
            self.conversion_ranges[customer as usize] = (start as u32, end as u32);
            start = end;
        }
        self.conversion_order = order;
    }

    /// The conversions of `customer` with their index in `conversions`, by time.
    pub fn conversions_of(&self, customer: Sym) -> impl Iterator<Item = (usize, &ConversionRec)> + '_ {
        let (start, end) = self
            .conversion_ranges
            .get(customer as usize)
            .copied()
            .unwrap_or((0, 0));
        self.conversion_order[start as usize..end as usize]
            .iter()
            .map(|i| (*i as usize, &self.conversions[*i as usize].1))
    }

    /// Whether another conversation of `c`'s customer was opened in `(resolved_at,
    /// resolved_at + window]` (docs/metrics.md §5 FCR and repeat contact). A zero window disables
    /// the check.
    pub fn repeat_contact(c: &Conv, window: Micros) -> bool {
        match (c.resolved_at, c.next_contact) {
            (Some(resolved_at), Some(next)) => window > 0 && next <= resolved_at.saturating_add(window),
            _ => false,
        }
    }

    fn compact(&mut self, f: &ConversationFacts) -> Conv {
        let s = &mut self.symbols;
        let mut tags: Vec<Sym> = f.tags.iter().map(|t| s.intern(t)).collect();
        tags.sort_unstable();
        let resp = |s: &mut Symbols, r: &chatkpi::domain::facts::Response| Resp {
            waiting_since: micros(r.waiting_since),
            at: micros(r.at),
            agent: s.intern_opt(r.agent_id.as_deref()),
        };
        let responses: Vec<Resp> = f.responses.iter().map(|r| resp(s, r)).collect();
        let human_first = match (&f.first_human_response, f.human_queue_start) {
            (Some(h), Some(start)) => Some(Resp {
                waiting_since: micros(start),
                at: micros(h.at),
                agent: s.intern(&h.agent_id),
            }),
            _ => None,
        };
        let wait = match (f.human_queue_start, f.first_assigned_at) {
            (Some(start), Some(end)) => Some(Span {
                start: micros(start),
                end: micros(end),
            }),
            _ => None,
        };
        let counted: Vec<Micros> = f
            .messages
            .iter()
            .filter(|m| m.sender != Sender::System)
            .map(|m| micros(m.at))
            .collect();
        let duration = match (f.ended_at, counted.first(), counted.last()) {
            (Some(_), Some(&start), Some(&end)) => Some(Span { start, end }),
            _ => None,
        };
        let messages: Vec<Msg> = f
            .messages
            .iter()
            .map(|m| Msg {
                at: micros(m.at),
                sender: m.sender,
                agent: s.intern_opt(m.agent_id.as_deref()),
                delivered: m.delivered,
                read: m.read,
                failed: m.failed,
            })
            .collect();
        Conv {
            id: f.conversation_id.as_str().into(),
            opened_at: micros(f.opened_at),
            channel: f.channel,
            priority: f.priority,
            state: f.state,
            initiated_by: f.initiated_by,
            inbox: s.intern_opt(f.inbox.as_deref()),
            team: s.intern_opt(f.team.as_deref()),
            agent: s.intern_opt(f.agent.as_deref()),
            assignee: s.intern_opt(f.assignee.as_deref()),
            customer: s.intern_opt(f.customer_id.as_deref()),
            tags: tags.into(),
            has_customer_message: f.first_customer_message_at.is_some(),
            responses: responses.into(),
            human_first,
            human_queue_start: f.human_queue_start.map(micros),
            attributes: f
                .attributes
                .iter()
                .map(|a| Attr {
                    from: micros(a.from),
                    priority: a.priority,
                    team: s.intern_opt(a.team.as_deref()),
                    tags: a.tags.iter().map(|t| s.intern(t)).collect(),
                })
                .collect(),
            waits: f
                .waits
                .iter()
                .map(|w| Span {
                    start: micros(w.start),
                    end: w.end.map_or(OPEN_END, micros),
                })
                .collect(),
            wait,
            waiting_since: f.waiting_since.map(micros),
            resolved_at: f.resolved_at.map(micros),
            resolved_by: f.resolved_by,
            resolving_agent: s.intern_opt(f.resolving_agent.as_deref()),
            reopen_count: f.reopen_count,
            ended_at: f.ended_at.map(micros),
            duration,
            counts: [
                f.message_counts.customer,
                f.message_counts.agent,
                f.message_counts.bot,
            ],
            human_involved: f.human_involved,
            bot_involved: f.bot_involved,
            resolutions: f.resolutions.iter().map(|t| micros(*t)).collect(),
            state_changes: f.state_changes.iter().map(|c| (micros(c.at), c.state)).collect(),
            assignments: f
                .assignments
                .iter()
                .map(|a| (micros(a.at), s.intern_opt(a.agent_id.as_deref())))
                .collect(),
            handling: f
                .handling
                .iter()
                .map(|h| {
                    let span = Span {
                        start: micros(h.start),
                        end: h.end.map_or(OPEN_END, micros),
                    };
                    (s.intern(&h.agent_id), span)
                })
                .collect(),
            messages: messages.clone().into(),
            surveys: f
                .surveys
                .iter()
                .map(|a| Survey {
                    kind: a.survey,
                    score: a.score,
                    min: a.scale.min,
                    max: a.scale.max,
                    at: micros(a.at),
                    agent: s.intern_opt(a.agent_id.as_deref()),
                })
                .collect(),
            surveys_sent: f.surveys_sent.iter().map(|x| (x.survey, micros(x.at))).collect(),
            next_contact: None,
            // Unknown start (older stored facts): a span no window contains.
            active: Span {
                start: micros(f.first_event_at),
                end: micros(f.last_event_at),
            },
            message_totals: {
                let mut totals = [0u64; 5];
                for m in &messages {
                    m.count_into(&mut totals);
                }
                totals
            },
        }
    }
}
