//! Derived conversation facts (docs/metrics.md §3): a pure function of a conversation's event set.
//!
//! [`derive`] sorts the events by the docs/metrics.md §2 tie order and walks them once. Because the
//! input is a set and the order is total (`occurred_at`, type precedence, `event_id`), the facts
//! do not depend on arrival order, batching or duplicates: the store recomputes them from all
//! stored events of a conversation whenever one of its events is accepted.
//!
//! Besides the scalar facts of §3, the result keeps the per-item timelines the KPI queries need
//! (responses with their waiting start, messages with delivery flags, state and assignment
//! changes, handling intervals, survey answers and sends), so every KPI of docs/metrics.md §5 can be
//! computed from facts without re-reading events.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::event::{
    Channel, ConversationUpdated, DeliveryStatus, Event, Initiator, MAX_TAGS_PER_CONVERSATION, Payload,
    Priority, ResolvedBy, Scale, Sender, SurveyResponse, SurveyType, TagsChanged,
};

/// The version of the derivation rules and of the stored record layout. A stored conversation
/// written by an older one is derived again from its events (`chatkpi reproject`, or at startup).
pub const DERIVATION: i16 = 3;

/// Where a conversation stands after its `resolved` / `reopened` / `abandoned` events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Open,
    Resolved,
    Abandoned,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Resolved => "resolved",
            State::Abandoned => "abandoned",
        }
    }

    /// Resolved and abandoned both end a conversation (docs/metrics.md §2).
    pub fn is_ended(self) -> bool {
        self != State::Open
    }
}

/// A response (docs/metrics.md §3): an agent or bot message while a customer was waiting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// `Agent` or `Bot`.
    pub responder: Sender,
    /// The responding agent; `None` for bot responses.
    pub agent_id: Option<String>,
    /// When the customer started waiting (`waiting_since`).
    pub waiting_since: DateTime<Utc>,
    /// When the response was sent; places reply times in a window (docs/metrics.md §4).
    pub at: DateTime<Utc>,
    /// `at - waiting_since`.
    pub seconds: f64,
}

/// The first human response (docs/metrics.md §3), measured from the human queue start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HumanResponse {
    pub agent_id: String,
    pub at: DateTime<Utc>,
    /// `at - human queue start`.
    pub seconds: f64,
}

/// One counted or outbound message (non-private), with its delivery receipts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageFact {
    pub message_id: String,
    pub sender: Sender,
    /// The sending agent (agent messages only).
    pub agent_id: Option<String>,
    pub at: DateTime<Utc>,
    /// A `delivered` or `read` receipt exists (read implies delivered), whenever it arrived.
    pub delivered: bool,
    pub read: bool,
    pub failed: bool,
}

/// A change of state caused by a `resolved`, `reopened` or `abandoned` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub at: DateTime<Utc>,
    pub state: State,
}

/// An `assigned` event: the assignee from `at` on (`None` = unassigned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignmentChange {
    pub at: DateTime<Utc>,
    pub agent_id: Option<String>,
}

/// A stretch during which `agent_id` was the assignee and the conversation was open
/// (docs/metrics.md §5 agent utilization, handling time). `end = None` = still going.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlingInterval {
    pub agent_id: String,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

/// The answer that counts for one survey type: the last one (docs/metrics.md §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurveyAnswer {
    pub survey: SurveyType,
    pub score: i32,
    pub scale: Scale,
    pub at: DateTime<Utc>,
    /// The agent credited: the answer's `agent_id`, else the conversation's `agent`.
    pub agent_id: Option<String>,
}

/// A `survey_sent` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurveySend {
    pub survey: SurveyType,
    pub at: DateTime<Utc>,
}

/// A stretch in which the conversation waited on the customer (docs/metrics.md §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wait {
    pub start: DateTime<Utc>,
    /// `None` while it still waits.
    pub end: Option<DateTime<Utc>>,
}

/// The attributes SLA policies match by, from `from` on (docs/metrics.md §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    pub from: DateTime<Utc>,
    pub priority: Priority,
    pub team: Option<String>,
    /// Sorted.
    pub tags: Vec<String>,
}

/// What an SLA clock measures (docs/metrics.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaMetric {
    FirstResponse,
    NextResponse,
    Resolution,
}

impl SlaMetric {
    pub const ALL: [SlaMetric; 3] = [
        SlaMetric::FirstResponse,
        SlaMetric::NextResponse,
        SlaMetric::Resolution,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SlaMetric::FirstResponse => "first_response",
            SlaMetric::NextResponse => "next_response",
            SlaMetric::Resolution => "resolution",
        }
    }
}

/// One SLA clock of a conversation, whatever policy will apply to it (docs/metrics.md §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlaClock {
    pub metric: SlaMetric,
    pub start: DateTime<Utc>,
    /// How it stopped; `None` while it runs.
    pub stop: Option<ClockStop>,
}

/// The end of an SLA clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockStop {
    pub at: DateTime<Utc>,
    /// True: the clock was completed (the response came, the conversation was resolved); false:
    /// it was closed by the conversation's end before that.
    pub completed: bool,
    /// The agent who completed it (the responder; for the resolution the resolving agent, else
    /// the conversation's agent).
    pub agent_id: Option<String>,
}

/// Counted messages per sender (customer, agent, bot; docs/metrics.md §3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCounts {
    pub customer: u32,
    pub agent: u32,
    pub bot: u32,
}

impl MessageCounts {
    pub fn total(&self) -> u32 {
        self.customer + self.agent + self.bot
    }
}

/// Every derived fact of one conversation (docs/metrics.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationFacts {
    pub conversation_id: String,
    /// First `conversation_opened`, else the earliest event.
    pub opened_at: DateTime<Utc>,
    /// Whether a `conversation_opened` was received (channel etc. are defaults otherwise).
    pub has_opened_event: bool,
    pub channel: Channel,
    pub inbox: Option<String>,
    pub customer_id: Option<String>,
    pub initiated_by: Initiator,
    pub team: Option<String>,
    pub priority: Priority,
    /// The live owner: the last `assigned.agent_id` (`None` if the last was empty).
    pub assignee: Option<String>,
    /// The credited agent: last non-empty assignee, else the last agent who sent a message.
    pub agent: Option<String>,
    /// Sorted tag set.
    pub tags: Vec<String>,
    pub first_customer_message_at: Option<DateTime<Utc>>,
    /// Every response in order; the first is the first response (FRT), the rest are reply times.
    pub responses: Vec<Response>,
    pub human_queue_start: Option<DateTime<Utc>>,
    pub first_human_response: Option<HumanResponse>,
    pub first_assigned_at: Option<DateTime<Utc>>,
    /// `first_assigned_at - human queue start`.
    pub wait_seconds: Option<f64>,
    /// A customer still waiting for a response at the end of the events (unanswered).
    pub waiting_since: Option<DateTime<Utc>>,
    pub state: State,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<ResolvedBy>,
    pub resolving_agent: Option<String>,
    pub reopen_count: u32,
    pub ended_at: Option<DateTime<Utc>>,
    /// `resolved_at - opened_at`, never negative.
    pub resolution_seconds: Option<f64>,
    /// Last - first counted message time, for ended conversations with a counted message.
    pub duration_seconds: Option<f64>,
    pub message_counts: MessageCounts,
    pub human_involved: bool,
    pub bot_involved: bool,
    /// Time of every `resolved` event (resolutions, docs/metrics.md §5).
    pub resolutions: Vec<DateTime<Utc>>,
    pub state_changes: Vec<StateChange>,
    pub assignments: Vec<AssignmentChange>,
    pub handling: Vec<HandlingInterval>,
    /// Non-private messages of every sender, in order, with delivery flags.
    pub messages: Vec<MessageFact>,
    /// The last answer per survey type, in survey-type order.
    pub surveys: Vec<SurveyAnswer>,
    pub surveys_sent: Vec<SurveySend>,
    /// Stretches of waiting on the customer, in order (docs/metrics.md §10).
    pub waits: Vec<Wait>,
    /// Priority, team and tags over time, in order: the first from the first event on.
    pub attributes: Vec<Attributes>,
    /// SLA clocks: first response, each next response (in order), resolution.
    pub sla_clocks: Vec<SlaClock>,
    /// The earliest `occurred_at` among the conversation's events: every item of the
    /// conversation lies in `[first_event_at, last_event_at]`.
    pub first_event_at: DateTime<Utc>,
    /// The latest `occurred_at` among the conversation's events.
    pub last_event_at: DateTime<Utc>,
}

impl ConversationFacts {
    /// The first response (FRT), if any.
    pub fn first_response(&self) -> Option<&Response> {
        self.responses.first()
    }

    /// Responses after the first (reply times).
    pub fn replies(&self) -> &[Response] {
        self.responses.get(1..).unwrap_or(&[])
    }

    /// When the conversation stopped being open for good: the time of its final ending state
    /// change, or `None` while it is open (no backlog membership or handling after it).
    pub fn live_until(&self) -> Option<DateTime<Utc>> {
        if self.state == State::Open {
            None
        } else {
            Some(self.state_changes.last().map_or(self.last_event_at, |c| c.at))
        }
    }

    /// Sets the durations that follow from the instants (docs/metrics.md §3): wait (human queue start
    /// to first assignment), resolution (`resolved_at - opened_at`, never negative: a
    /// late-stamped `conversation_opened` may follow the resolution, docs/metrics.md) and
    /// duration (first to last counted message of an ended conversation).
    pub(crate) fn fill_derived_durations(&mut self) {
        self.wait_seconds = match (self.human_queue_start, self.first_assigned_at) {
            (Some(start), Some(assigned)) => Some(seconds_between(start, assigned)),
            _ => None,
        };
        self.resolution_seconds = self
            .resolved_at
            .map(|at| seconds_between(self.opened_at, at).max(0.0));
        self.duration_seconds = None;
        if self.ended_at.is_some() {
            let mut counted = self
                .messages
                .iter()
                .filter(|m| m.sender != Sender::System)
                .map(|m| m.at);
            if let Some(first_at) = counted.next() {
                let last_at = counted.next_back().unwrap_or(first_at);
                self.duration_seconds = Some(seconds_between(first_at, last_at));
            }
        }
    }
}

/// docs/metrics.md §2 tie order for events of one conversation with equal `occurred_at`.
fn precedence(payload: &Payload) -> u8 {
    match payload {
        Payload::ConversationOpened(_) => 0,
        Payload::Assigned(_) => 1,
        Payload::ConversationUpdated(_) => 2,
        Payload::TagsChanged(_) => 3,
        Payload::Message(m) if m.sender == Sender::Customer => 4,
        Payload::Message(_) => 5,
        Payload::Handoff => 6,
        Payload::WaitingOnCustomer(_) => 7,
        Payload::MessageStatus(_) => 8,
        Payload::Reopened => 9,
        Payload::Resolved(_) => 10,
        Payload::Abandoned => 11,
        Payload::SurveyResponse(_) | Payload::SurveySent(_) => 12,
        // Never part of a conversation's facts; sorted last so they cannot shift anything.
        Payload::Conversion(_) | Payload::AgentStatus(_) => 13,
    }
}

/// Sorts events into the order every derived value is computed in (docs/metrics.md §2 ties).
pub fn sort_events(events: &mut [&Event]) {
    events.sort_by(|a, b| {
        a.occurred_at
            .cmp(&b.occurred_at)
            .then_with(|| precedence(&a.payload).cmp(&precedence(&b.payload)))
            .then_with(|| a.event_id.cmp(&b.event_id))
    });
}

/// `to - from` in seconds, exact to the microsecond.
pub(crate) fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let d = to - from;
    match d.num_microseconds() {
        Some(us) => us as f64 / 1e6,
        None => d.num_milliseconds() as f64 / 1e3,
    }
}

/// Derives the facts of one conversation from its stored events (distinct `event_id`s, any
/// order). Events that never belong to a conversation's facts (`conversion`, `agent_status`) are
/// ignored. Returns `None` when no event belongs to the conversation.
pub fn derive<'a>(
    conversation_id: &str,
    events: impl IntoIterator<Item = &'a Event>,
) -> Option<ConversationFacts> {
    let mut ordered: Vec<&Event> = events
        .into_iter()
        .filter(|e| e.payload.belongs_to_conversation())
        .collect();
    sort_events(&mut ordered);
    let mut walk = Walk::new(conversation_id, ordered.first()?.occurred_at);
    for e in &ordered {
        walk.apply(e);
    }
    let mut facts = walk.finish();
    attach_receipts(&mut facts, &ordered);
    Some(facts)
}

/// Delivery flags of one message, from its receipts.
#[derive(Debug, Clone, Copy, Default)]
struct Receipt {
    delivered: bool,
    read: bool,
    failed: bool,
}

/// Attaches delivery receipts to their messages, whenever they arrived (docs/metrics.md §5: a receipt
/// may arrive, and sort, before its message; read implies delivered). A receipt that implies
/// its message stands for one system message at the earliest such receipt while no `message`
/// event has the id.
fn attach_receipts(f: &mut ConversationFacts, ordered: &[&Event]) {
    let mut receipts: HashMap<&str, Receipt> = HashMap::new();
    let mut implied: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for e in ordered {
        if let Payload::MessageStatus(s) = &e.payload {
            if s.implies_message {
                // `ordered` is in time order: the first one seen is the earliest.
                implied.entry(s.message_id.as_str()).or_insert(e.occurred_at);
            }
            let flags = receipts.entry(s.message_id.as_str()).or_default();
            match s.status {
                DeliveryStatus::Sent => {}
                DeliveryStatus::Delivered => flags.delivered = true,
                DeliveryStatus::Read => {
                    flags.delivered = true;
                    flags.read = true;
                }
                DeliveryStatus::Failed => flags.failed = true,
            }
        }
    }
    if !implied.is_empty() {
        // Only a conversation with implying receipts (WhatsApp) looks for their messages.
        let sent: HashSet<&str> = ordered
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Message(m) => Some(m.message_id.as_str()),
                _ => None,
            })
            .collect();
        let mut implied: Vec<(&str, DateTime<Utc>)> =
            implied.into_iter().filter(|(id, _)| !sent.contains(id)).collect();
        implied.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        f.messages.extend(implied.into_iter().map(|(id, at)| MessageFact {
            message_id: id.to_owned(),
            sender: Sender::System,
            agent_id: None,
            at,
            delivered: false,
            read: false,
            failed: false,
        }));
        // Stable: messages of the same instant keep their order, implied ones after them.
        f.messages.sort_by_key(|m| m.at);
    }
    for m in &mut f.messages {
        if let Some(r) = receipts.get(m.message_id.as_str()) {
            m.delivered = r.delivered;
            m.read = r.read;
            m.failed = r.failed;
        }
    }
}

/// The walk over a conversation's ordered events (docs/metrics.md §3): the facts so far and what the
/// rules that look back need to remember.
struct Walk {
    f: ConversationFacts,
    tags: BTreeSet<String>,
    last_assigned_agent: Option<String>,
    last_message_agent: Option<String>,
    handoffs: Vec<DateTime<Utc>>,
    /// (time, agent) of every non-private agent message.
    agent_messages: Vec<(DateTime<Utc>, String)>,
    /// Times of `assigned` events with an agent.
    assigned_at: Vec<DateTime<Utc>>,
    last_resolved: Option<(DateTime<Utc>, ResolvedBy, Option<String>)>,
    abandoned_at: Option<DateTime<Utc>>,
    /// The latest answer per survey type, and whether it named its agent.
    surveys: [Option<(SurveyAnswer, bool)>; 3],
    handling_open: Option<HandlingInterval>,
    /// Customer messages, human (non-private agent) messages and ends, in order: what the
    /// next-response clocks follow.
    ticks: Vec<(DateTime<Utc>, Tick)>,
}

/// A step of the next-response clocks (docs/metrics.md §10).
#[derive(Debug, Clone, PartialEq)]
enum Tick {
    Customer,
    Human(String),
    Ended,
}

impl Walk {
    fn new(conversation_id: &str, first_at: DateTime<Utc>) -> Self {
        Walk {
            f: ConversationFacts {
                conversation_id: conversation_id.to_owned(),
                opened_at: first_at,
                has_opened_event: false,
                channel: Channel::Other,
                inbox: None,
                customer_id: None,
                initiated_by: Initiator::Customer,
                team: None,
                priority: Priority::Normal,
                assignee: None,
                agent: None,
                tags: Vec::new(),
                first_customer_message_at: None,
                responses: Vec::new(),
                human_queue_start: None,
                first_human_response: None,
                first_assigned_at: None,
                wait_seconds: None,
                waiting_since: None,
                state: State::Open,
                resolved_at: None,
                resolved_by: None,
                resolving_agent: None,
                reopen_count: 0,
                ended_at: None,
                resolution_seconds: None,
                duration_seconds: None,
                message_counts: MessageCounts::default(),
                human_involved: false,
                bot_involved: false,
                resolutions: Vec::new(),
                state_changes: Vec::new(),
                assignments: Vec::new(),
                handling: Vec::new(),
                messages: Vec::new(),
                surveys: Vec::new(),
                surveys_sent: Vec::new(),
                waits: Vec::new(),
                attributes: vec![Attributes {
                    from: first_at,
                    priority: Priority::Normal,
                    team: None,
                    tags: Vec::new(),
                }],
                sla_clocks: Vec::new(),
                first_event_at: first_at,
                last_event_at: first_at,
            },
            tags: BTreeSet::new(),
            last_assigned_agent: None,
            last_message_agent: None,
            handoffs: Vec::new(),
            agent_messages: Vec::new(),
            assigned_at: Vec::new(),
            last_resolved: None,
            abandoned_at: None,
            surveys: [None, None, None],
            handling_open: None,
            ticks: Vec::new(),
        }
    }

    /// Applies one event (in docs/metrics.md §2 order).
    fn apply(&mut self, e: &Event) {
        let t = e.occurred_at;
        self.f.last_event_at = self.f.last_event_at.max(t);
        let before = (self.f.assignee.clone(), self.f.state);
        match &e.payload {
            Payload::ConversationOpened(o) => self.opened(t, o),
            Payload::Assigned(a) => self.assigned(t, a),
            Payload::ConversationUpdated(u) => self.updated(u),
            Payload::TagsChanged(c) => self.tags_changed(c),
            // docs/metrics.md §5: a receipt's category and error code tag the conversation.
            Payload::MessageStatus(s) => {
                for tag in s.tags() {
                    self.add_tag(tag);
                }
            }
            // Private notes: never responses, never counted, not outbound.
            Payload::Message(m) if !m.private => self.message(t, m),
            Payload::Message(_) => {}
            Payload::Handoff => self.handoffs.push(t),
            Payload::Resolved(r) => {
                self.f.resolutions.push(t);
                self.last_resolved = Some((t, r.by, r.agent_id.clone()));
                self.f.state = State::Resolved;
            }
            Payload::WaitingOnCustomer(w) => self.waiting_on_customer(t, w.waiting),
            Payload::Reopened => {
                if self.f.state == State::Resolved {
                    self.f.reopen_count += 1;
                }
                self.f.state = State::Open;
            }
            Payload::Abandoned => {
                self.abandoned_at = Some(t);
                self.f.state = State::Abandoned;
            }
            Payload::SurveyResponse(s) => self.survey_answered(t, s),
            Payload::SurveySent(s) => self.f.surveys_sent.push(SurveySend {
                survey: s.survey,
                at: t,
            }),
            Payload::Conversion(_) | Payload::AgentStatus(_) => {}
        }
        if before.1 != self.f.state {
            self.f.state_changes.push(StateChange {
                at: t,
                state: self.f.state,
            });
            if self.f.state != State::Open {
                self.ended(t);
            }
        }
        if before != (self.f.assignee.clone(), self.f.state) {
            self.track_handling(t);
        }
        if matches!(
            e.payload,
            Payload::ConversationOpened(_)
                | Payload::Assigned(_)
                | Payload::ConversationUpdated(_)
                | Payload::TagsChanged(_)
                | Payload::MessageStatus(_)
        ) {
            self.note_attributes(t);
        }
    }

    fn updated(&mut self, u: &ConversationUpdated) {
        if let Some(p) = u.priority {
            self.f.priority = p;
        }
        if u.team.is_some() {
            self.f.team = u.team.clone();
        }
    }

    /// Within one event: add `added`, then remove `removed`.
    fn tags_changed(&mut self, c: &TagsChanged) {
        for tag in &c.added {
            self.add_tag(tag.clone());
        }
        for tag in &c.removed {
            self.tags.remove(tag);
        }
    }

    /// Later answers replace earlier ones of the same type (docs/metrics.md §4).
    fn survey_answered(&mut self, t: DateTime<Utc>, s: &SurveyResponse) {
        let answer = SurveyAnswer {
            survey: s.survey,
            score: s.score,
            scale: s.scale,
            at: t,
            agent_id: s.agent_id.clone(),
        };
        self.surveys[survey_slot(s.survey)] = Some((answer, s.agent_id.is_some()));
    }

    /// A conversation carries at most MAX_TAGS_PER_CONVERSATION tags: an add while it is full
    /// is ignored (docs/metrics.md §3), so no answer grows with what one client sends.
    fn add_tag(&mut self, tag: String) {
        if self.tags.len() < MAX_TAGS_PER_CONVERSATION || self.tags.contains(&tag) {
            self.tags.insert(tag);
        }
    }

    /// Records the priority, team and tags from `t` on when they changed (a change at the same
    /// instant as the previous one replaces it).
    fn note_attributes(&mut self, t: DateTime<Utc>) {
        let now = Attributes {
            from: t,
            priority: self.f.priority,
            team: self.f.team.clone(),
            tags: self.tags.iter().cloned().collect(),
        };
        let last = self
            .f
            .attributes
            .last_mut()
            .expect("attributes start with the first event");
        if (last.priority, &last.team, &last.tags) == (now.priority, &now.team, &now.tags) {
            return;
        }
        if last.from == t {
            *last = now;
        } else {
            self.f.attributes.push(now);
        }
    }

    /// docs/metrics.md §10: waiting on the customer starts with `waiting_on_customer { waiting:
    /// true }` and ends with `waiting: false`, a customer message or the conversation's end.
    fn waiting_on_customer(&mut self, t: DateTime<Utc>, waiting: bool) {
        let open = self.f.waits.last().is_some_and(|w| w.end.is_none());
        if waiting && !open {
            self.f.waits.push(Wait { start: t, end: None });
        } else if !waiting {
            self.end_wait(t);
        }
    }

    fn end_wait(&mut self, t: DateTime<Utc>) {
        if let Some(w) = self.f.waits.last_mut().filter(|w| w.end.is_none()) {
            w.end = Some(t);
        }
    }

    /// A `resolved` or `abandoned` that changed the state: the conversation ended at `t`.
    fn ended(&mut self, t: DateTime<Utc>) {
        self.end_wait(t);
        self.ticks.push((t, Tick::Ended));
    }

    /// Only the first `conversation_opened` counts (docs/metrics.md §3).
    fn opened(&mut self, t: DateTime<Utc>, o: &super::event::ConversationOpened) {
        let f = &mut self.f;
        if f.has_opened_event {
            return;
        }
        f.has_opened_event = true;
        f.opened_at = t;
        f.channel = o.channel;
        f.inbox = o.inbox.clone();
        f.customer_id = Some(o.customer_id.clone());
        f.initiated_by = o.initiated_by;
        if o.team.is_some() {
            f.team = o.team.clone();
        }
        if let Some(p) = o.priority {
            f.priority = p;
        }
    }

    fn assigned(&mut self, t: DateTime<Utc>, a: &super::event::Assigned) {
        self.f.assignee = a.agent_id.clone();
        if let Some(agent) = &a.agent_id {
            self.last_assigned_agent = Some(agent.clone());
            self.assigned_at.push(t);
        }
        if a.team.is_some() {
            self.f.team = a.team.clone();
        }
        self.f.assignments.push(AssignmentChange {
            at: t,
            agent_id: a.agent_id.clone(),
        });
    }

    /// A non-private message: counted, and a response when an agent or bot answers a waiting
    /// customer (docs/metrics.md §3 responses).
    fn message(&mut self, t: DateTime<Utc>, m: &super::event::Message) {
        let f = &mut self.f;
        f.messages.push(MessageFact {
            message_id: m.message_id.clone(),
            sender: m.sender,
            agent_id: m.agent_id.clone(),
            at: t,
            delivered: false,
            read: false,
            failed: false,
        });
        match m.sender {
            Sender::Customer => {
                f.message_counts.customer += 1;
                f.first_customer_message_at.get_or_insert(t);
                f.waiting_since.get_or_insert(t);
                // docs/metrics.md §10: only a message into an open conversation asks for a
                // next response.
                if f.state == State::Open {
                    self.ticks.push((t, Tick::Customer));
                }
                self.end_wait(t);
            }
            Sender::Agent | Sender::Bot => {
                if m.sender == Sender::Agent {
                    f.message_counts.agent += 1;
                    f.human_involved = true;
                    let agent = m.agent_id.clone().unwrap_or_default();
                    self.last_message_agent = Some(agent.clone());
                    self.ticks.push((t, Tick::Human(agent.clone())));
                    self.agent_messages.push((t, agent));
                } else {
                    f.message_counts.bot += 1;
                    f.bot_involved = true;
                }
                if let Some(since) = f.waiting_since.take() {
                    f.responses.push(Response {
                        responder: m.sender,
                        agent_id: m.agent_id.clone(),
                        waiting_since: since,
                        at: t,
                        seconds: seconds_between(since, t),
                    });
                }
            }
            // System messages are never responses and are not counted.
            Sender::System => {}
        }
    }

    /// Handling: the assignee is set and the state is open (docs/metrics.md §5 utilization). Called
    /// when either changed at `t`; zero-length intervals are dropped (docs/metrics.md).
    fn track_handling(&mut self, t: DateTime<Utc>) {
        if let Some(mut open) = self.handling_open.take() {
            open.end = Some(t);
            if open.end != Some(open.start) {
                self.f.handling.push(open);
            }
        }
        if let (Some(agent), State::Open) = (&self.f.assignee, self.f.state) {
            self.handling_open = Some(HandlingInterval {
                agent_id: agent.clone(),
                start: t,
                end: None,
            });
        }
    }

    fn finish(mut self) -> ConversationFacts {
        self.f.handling.extend(self.handling_open.take());
        self.f.tags = std::mem::take(&mut self.tags).into_iter().collect();
        self.f.agent = self.last_assigned_agent.take().or(self.last_message_agent.take());
        self.finish_human_queue();
        self.finish_state();
        self.finish_surveys();
        self.finish_sla();
        self.f.fill_derived_durations();
        self.f
    }

    /// The SLA clocks (docs/metrics.md §10): first response from the human queue start to the
    /// first human response; once it stopped, a next response from each customer message into the
    /// open conversation while no customer message is waiting, to the next human message;
    /// resolution from opening to the final resolution. An end (`resolved`, `abandoned`) before
    /// a response closes a response clock; an abandonment closes the resolution clock.
    fn finish_sla(&mut self) {
        let f = &mut self.f;
        let mut clocks = Vec::new();
        // The first-response clock stops at the first human message or end at or after the
        // queue start, whichever comes first.
        let first_stop = f.human_queue_start.and_then(|start| {
            self.ticks
                .iter()
                .position(|(at, tick)| *at >= start && *tick != Tick::Customer)
        });
        if let Some(start) = f.human_queue_start {
            clocks.push(SlaClock {
                metric: SlaMetric::FirstResponse,
                start,
                stop: first_stop.map(|i| {
                    let tick = &self.ticks[i];
                    stop_at(tick, matches!(tick.1, Tick::Human(_)))
                }),
            });
        }
        if let Some(h) = first_stop {
            let mut running: Option<DateTime<Utc>> = None;
            for (at, tick) in &self.ticks[h + 1..] {
                match tick {
                    Tick::Customer if running.is_none() => running = Some(*at),
                    Tick::Customer => {}
                    Tick::Human(_) | Tick::Ended => {
                        if let Some(start) = running.take() {
                            clocks.push(SlaClock {
                                metric: SlaMetric::NextResponse,
                                start,
                                stop: Some(stop_at(&(*at, tick.clone()), matches!(tick, Tick::Human(_)))),
                            });
                        }
                    }
                }
            }
            if let Some(start) = running {
                clocks.push(SlaClock {
                    metric: SlaMetric::NextResponse,
                    start,
                    stop: None,
                });
            }
        }
        let resolution_stop = match (f.state, f.ended_at) {
            (State::Resolved, Some(at)) => Some(ClockStop {
                at,
                completed: true,
                agent_id: f.resolving_agent.clone().or_else(|| f.agent.clone()),
            }),
            (State::Abandoned, Some(at)) => Some(ClockStop {
                at,
                completed: false,
                agent_id: None,
            }),
            _ => None,
        };
        clocks.push(SlaClock {
            metric: SlaMetric::Resolution,
            start: f.opened_at,
            stop: resolution_stop,
        });
        f.sla_clocks = clocks;
    }

    /// Human queue: the first handoff at or after the first customer message, else that message
    /// (docs/metrics.md §3); the first human response, first assignment and wait follow from it.
    fn finish_human_queue(&mut self) {
        let f = &mut self.f;
        let Some(first_customer) = f.first_customer_message_at else {
            return;
        };
        let start = self
            .handoffs
            .iter()
            .copied()
            .find(|h| *h >= first_customer)
            .unwrap_or(first_customer);
        f.human_queue_start = Some(start);
        f.first_human_response =
            self.agent_messages
                .iter()
                .find(|(at, _)| *at >= start)
                .map(|(at, agent)| HumanResponse {
                    agent_id: agent.clone(),
                    at: *at,
                    seconds: seconds_between(start, *at),
                });
        f.first_assigned_at = self
            .assigned_at
            .iter()
            .copied()
            .find(|at| *at >= start)
            .or(f.first_human_response.as_ref().map(|r| r.at));
    }

    /// The final state's times: resolution (the last `resolved`) or abandonment.
    fn finish_state(&mut self) {
        let f = &mut self.f;
        match f.state {
            State::Resolved => {
                if let Some((at, by, agent)) = self.last_resolved.take() {
                    f.resolved_at = Some(at);
                    f.resolved_by = Some(by);
                    f.resolving_agent = agent;
                    f.ended_at = Some(at);
                }
            }
            State::Abandoned => f.ended_at = self.abandoned_at,
            State::Open => {}
        }
    }

    /// The counting answers, in survey-type order, credited to their agent or else the
    /// conversation's agent (docs/metrics.md §4).
    fn finish_surveys(&mut self) {
        let agent = self.f.agent.clone();
        self.f.surveys = std::mem::take(&mut self.surveys)
            .into_iter()
            .flatten()
            .map(|(mut answer, explicit)| {
                if !explicit {
                    answer.agent_id = agent.clone();
                }
                answer
            })
            .collect();
    }
}

/// The stop of a response clock at tick `(at, tick)`: the responder when `completed`.
fn stop_at((at, tick): &(DateTime<Utc>, Tick), completed: bool) -> ClockStop {
    ClockStop {
        at: *at,
        completed,
        agent_id: match tick {
            Tick::Human(agent) if completed => Some(agent.clone()),
            _ => None,
        },
    }
}

fn survey_slot(survey: SurveyType) -> usize {
    match survey {
        SurveyType::Csat => 0,
        SurveyType::Nps => 1,
        SurveyType::Ces => 2,
    }
}

#[cfg(test)]
#[path = "facts_tests.rs"]
mod tests;
