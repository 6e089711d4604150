//! One conversation of a [`Segment`](super::Segment): what KPI queries read of its facts, in a
//! compact blob, and [`Conv`], the reusable decoded form the KPI code works on.
//!
//! Blob layout (times are deltas from `opened_at`, or from the previous item in a list sorted by
//! time; symbols are segment-local ids):
//! - head: flags, kinds (channel, priority, state), inbox, team, agent, assignee, then the
//!   optional resolution, end, first human response, wait, duration and waiting start, the
//!   reopen count and message counts;
//! - lists the window KPIs read: responses, tags, resolutions, survey answers, survey sends,
//!   and what SLA clocks read: attributes over time, waits on the customer, the clocks;
//! - tail lists only instants and drill-down read: messages, state changes, assignments and
//!   handling intervals ([`Parts::All`]).
//!
//! Each list is written as its length and its items, so a decoder that needs only the head and
//! the first lists stops there.

use crate::domain::{
    event::{Channel, Initiator, Priority, ResolvedBy, Sender, SurveyType},
    facts::{ConversationFacts, MessageCounts, SlaMetric, State},
    time::{Micros, OPEN_END, Span, micros},
};
use crate::engine::codec::{Reader, Writer};

/// A tenant symbol (agent, team, inbox, tag, currency, kind); 0 = absent.
pub type Sym = u32;

/// A response: the customer waited from `waiting_since` until `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resp {
    pub waiting_since: Micros,
    pub at: Micros,
    /// Responding agent; 0 for a bot.
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
    pub delivered: bool,
    pub read: bool,
    pub failed: bool,
}

impl Msg {
    /// Adds this message to `totals` (docs/metrics.md §5: sent = outbound agent, bot and system
    /// messages; read implies delivered).
    pub fn count_into(&self, totals: &mut MessageTotals) {
        if self.sender == Sender::Customer {
            totals.received += 1;
        } else {
            totals.sent += 1;
            totals.delivered += u64::from(self.delivered);
            totals.read += u64::from(self.read);
            totals.failed += u64::from(self.failed);
        }
    }
}

/// Messages and their delivery funnel (docs/metrics.md §5): customer messages received;
/// outbound messages sent, and of them those delivered, read and failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageTotals {
    pub received: u64,
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    pub failed: u64,
}

impl MessageTotals {
    pub fn add(&mut self, other: &MessageTotals) {
        // Taken apart so that a new counter left out here does not compile.
        let MessageTotals {
            received,
            sent,
            delivered,
            read,
            failed,
        } = other;
        self.received += received;
        self.sent += sent;
        self.delivered += delivered;
        self.read += read;
        self.failed += failed;
    }

    /// No message at all.
    pub fn is_empty(&self) -> bool {
        self.received + self.sent == 0
    }
}

/// The counting answer of one survey type.
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

impl Survey {
    /// `(score - min) / (max - min)` in [0, 1] (scales are validated: `min < max`, small).
    pub fn normalized(&self) -> f64 {
        f64::from(self.score - self.min) / f64::from(self.max - self.min)
    }
}

/// The priority, team and tags of a conversation from `from` on (SLA policies match by them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub from: Micros,
    pub priority: Priority,
    pub team: Sym,
    /// Its tags: `attr_tags[tags.0..tags.1]` of the conversation.
    pub tags: (u32, u32),
}

/// An SLA clock (docs/metrics.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub metric: SlaMetric,
    pub start: Micros,
    /// (when, completed, completing agent); `None` while it runs.
    pub stop: Option<(Micros, bool, Sym)>,
}

/// Which lists to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Head and the lists window KPIs read.
    Head,
    /// Everything, including messages, state changes, assignments and handling.
    All,
}

/// One conversation, decoded. Reused across rows: decoding overwrites every field and clears
/// every list, so a scan allocates only while its lists grow to their largest size.
#[derive(Debug, Clone, Default)]
pub struct Conv {
    pub opened_at: Micros,
    /// `[first event, last event]`: every item of the conversation lies inside.
    pub active: Span,
    /// Tenant customer id (0 = the conversation has no customer).
    pub customer: u32,
    pub channel: Channel,
    pub priority: Priority,
    pub state: State,
    pub initiated_by: Initiator,
    pub inbox: Sym,
    pub team: Sym,
    /// The credited agent (docs/metrics.md §3 `agent`).
    pub agent: Sym,
    /// The live owner.
    pub assignee: Sym,
    pub has_customer_message: bool,
    pub human_involved: bool,
    pub bot_involved: bool,
    pub resolved_at: Option<Micros>,
    pub resolved_by: Option<ResolvedBy>,
    pub resolving_agent: Sym,
    pub ended_at: Option<Micros>,
    /// First human response; `waiting_since` = the human queue start.
    pub human_first: Option<Resp>,
    pub wait: Option<Span>,
    /// First to last counted message, for ended conversations.
    pub duration: Option<Span>,
    /// A customer still waiting at the end of the events.
    pub waiting_since: Option<Micros>,
    pub reopen_count: u32,
    /// Counted messages: customer, agent, bot.
    pub counts: MessageCounts,
    /// Messages over all time.
    pub message_totals: MessageTotals,
    /// Every response; the first is the first response.
    pub responses: Vec<Resp>,
    /// Sorted tag symbols.
    pub tags: Vec<Sym>,
    pub resolutions: Vec<Micros>,
    pub surveys: Vec<Survey>,
    pub surveys_sent: Vec<(SurveyType, Micros)>,
    /// Attributes over time (the first from the first event).
    pub attributes: Vec<Attr>,
    pub attr_tags: Vec<Sym>,
    /// Waits on the customer (an open one ends at [`OPEN_END`]).
    pub waits: Vec<Span>,
    pub clocks: Vec<Clock>,
    // Tail ([`Parts::All`] only).
    pub messages: Vec<Msg>,
    pub state_changes: Vec<(Micros, State)>,
    pub assignments: Vec<(Micros, Sym)>,
    pub handling: Vec<(Sym, Span)>,
}

impl Conv {
    /// The attributes as of instant `t` (a change at `t` counts).
    pub fn attributes_at(&self, t: Micros) -> Option<&Attr> {
        self.attributes
            .iter()
            .take_while(|a| a.from <= t)
            .last()
            .or(self.attributes.first())
    }

    /// The tags of `a`.
    pub fn attr_tags(&self, a: &Attr) -> &[Sym] {
        &self.attr_tags[a.tags.0 as usize..a.tags.1 as usize]
    }

    pub fn first_response(&self) -> Option<&Resp> {
        self.responses.first()
    }

    pub fn replies(&self) -> &[Resp] {
        self.responses.get(1..).unwrap_or(&[])
    }

    /// State as of instant `t` (a change at `t` counts). Needs [`Parts::All`].
    pub fn state_at(&self, t: Micros) -> State {
        self.state_changes
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(State::Open, |(_, s)| *s)
    }

    /// Assignee as of instant `t`. Needs [`Parts::All`].
    pub fn assignee_at(&self, t: Micros) -> Sym {
        self.assignments
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0, |(_, a)| *a)
    }

    /// Whether a customer message was waiting for a response at instant `t`.
    pub fn waiting_at(&self, t: Micros) -> bool {
        self.responses.iter().any(|r| r.waiting_since <= t && t < r.at)
            || self.waiting_since.is_some_and(|w| w <= t)
    }
}

const F_CUSTOMER_MESSAGE: u32 = 1;
const F_HUMAN: u32 = 1 << 1;
const F_BOT: u32 = 1 << 2;
const F_BUSINESS: u32 = 1 << 3;
const F_RESOLVED: u32 = 1 << 4;
const F_ENDED: u32 = 1 << 5;
const F_HUMAN_FIRST: u32 = 1 << 6;
const F_WAIT: u32 = 1 << 7;
const F_DURATION: u32 = 1 << 8;
const F_WAITING: u32 = 1 << 9;

/// The hot columns of a row, computed with its blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hot {
    pub opened_at: Micros,
    pub active: Span,
    /// When the conversation stopped being open for good ([`OPEN_END`] while it is open):
    /// no backlog membership or handling time after it.
    pub live_until: Micros,
}

/// Encodes the query view of `f`; `sym` maps a name to its segment-local id.
///
/// A byte codec, one function on purpose: the write order here is the read order of
/// [`decode`], field by field, and keeping each in one piece lets them be read side by side.
pub fn encode(f: &ConversationFacts, mut sym: impl FnMut(Option<&str>) -> u32, w: &mut Writer) -> Hot {
    let base = micros(f.opened_at);
    let human_first = match (&f.first_human_response, f.human_queue_start) {
        (Some(h), Some(start)) => Some((micros(start), micros(h.at), h.agent_id.as_str())),
        _ => None,
    };
    let wait = f.human_queue_start.zip(f.first_assigned_at);
    let counted: Vec<Micros> = f
        .messages
        .iter()
        .filter(|m| m.sender != Sender::System)
        .map(|m| micros(m.at))
        .collect();
    let duration = match (f.ended_at, counted.first(), counted.last()) {
        (Some(_), Some(&start), Some(&end)) => Some((start, end)),
        _ => None,
    };
    let flag = |on: bool, bit: u32| if on { bit } else { 0 };
    let flags = flag(f.first_customer_message_at.is_some(), F_CUSTOMER_MESSAGE)
        | flag(f.human_involved, F_HUMAN)
        | flag(f.bot_involved, F_BOT)
        | flag(f.initiated_by == Initiator::Business, F_BUSINESS)
        | flag(f.resolved_at.is_some(), F_RESOLVED)
        | flag(f.ended_at.is_some(), F_ENDED)
        | flag(human_first.is_some(), F_HUMAN_FIRST)
        | flag(wait.is_some(), F_WAIT)
        | flag(duration.is_some(), F_DURATION)
        | flag(f.waiting_since.is_some(), F_WAITING);
    w.u64(u64::from(flags));
    w.u8(f.channel as u8 | (f.priority as u8) << 4 | (f.state as u8) << 6);
    for s in [&f.inbox, &f.team, &f.agent, &f.assignee] {
        w.u64(u64::from(sym(s.as_deref())));
    }
    if let Some(at) = f.resolved_at {
        w.time(base, micros(at));
        w.u8(f.resolved_by.map_or(0, |b| b as u8));
        w.u64(u64::from(sym(f.resolving_agent.as_deref())));
    }
    if let Some(at) = f.ended_at {
        w.time(base, micros(at));
    }
    if let Some((start, at, agent)) = human_first {
        w.time(base, start);
        w.delta(at - start);
        w.u64(u64::from(sym(Some(agent))));
    }
    for (start, end) in [wait.map(|(s, e)| (micros(s), micros(e))), duration]
        .into_iter()
        .flatten()
    {
        w.time(base, start);
        w.delta(end - start);
    }
    if let Some(at) = f.waiting_since {
        w.time(base, micros(at));
    }
    w.u64(u64::from(f.reopen_count));
    let c = f.message_counts;
    let mut totals = MessageTotals::default();
    for m in &f.messages {
        message(m).count_into(&mut totals);
    }
    let system = totals.sent - u64::from(c.agent) - u64::from(c.bot);
    for n in [
        u64::from(c.customer),
        u64::from(c.agent),
        u64::from(c.bot),
        system,
    ] {
        w.u64(n);
    }
    for n in [totals.delivered, totals.read, totals.failed] {
        w.u64(n);
    }

    // Sorted lists: each time relative to the previous one (small deltas, few bytes).
    let mut prev = base;
    w.count(f.responses.len());
    for r in &f.responses {
        w.time(prev, micros(r.at));
        w.delta(micros(r.at) - micros(r.waiting_since));
        w.u64(u64::from(sym(r.agent_id.as_deref())));
        prev = micros(r.at);
    }
    w.count(f.tags.len());
    let mut tags: Vec<u32> = f.tags.iter().map(|t| sym(Some(t))).collect();
    tags.sort_unstable();
    for t in tags {
        w.u64(u64::from(t));
    }
    w.count(f.resolutions.len());
    let mut prev = base;
    for at in &f.resolutions {
        w.time(prev, micros(*at));
        prev = micros(*at);
    }
    w.count(f.surveys.len());
    for a in &f.surveys {
        w.u8(a.survey as u8);
        w.i64(a.score.into());
        w.i64(a.scale.min.into());
        w.i64(a.scale.max.into());
        w.time(base, micros(a.at));
        w.u64(u64::from(sym(a.agent_id.as_deref())));
    }
    w.count(f.surveys_sent.len());
    let mut prev = base;
    for s in &f.surveys_sent {
        w.u8(s.survey as u8);
        w.time(prev, micros(s.at));
        prev = micros(s.at);
    }

    w.count(f.attributes.len());
    for a in &f.attributes {
        w.time(base, micros(a.from));
        w.u8(a.priority as u8);
        w.u64(u64::from(sym(a.team.as_deref())));
        let mut tags: Vec<u32> = a.tags.iter().map(|t| sym(Some(t))).collect();
        tags.sort_unstable();
        w.count(tags.len());
        for t in tags {
            w.u64(u64::from(t));
        }
    }
    w.count(f.waits.len());
    for x in &f.waits {
        let start = micros(x.start);
        w.time(base, start);
        w.opt_time(start, x.end.map(micros));
    }
    w.count(f.sla_clocks.len());
    for c in &f.sla_clocks {
        let start = micros(c.start);
        w.u8(c.metric as u8);
        w.time(base, start);
        match &c.stop {
            None => w.u8(0),
            Some(stop) => {
                w.u8(1 + u8::from(stop.completed));
                w.time(start, micros(stop.at));
                w.u64(u64::from(sym(stop.agent_id.as_deref())));
            }
        }
    }

    w.count(f.messages.len());
    let mut prev = base;
    for m in &f.messages {
        w.time(prev, micros(m.at));
        prev = micros(m.at);
        w.u8(m.sender as u8 | u8::from(m.delivered) << 2 | u8::from(m.read) << 3 | u8::from(m.failed) << 4);
    }
    w.count(f.state_changes.len());
    let mut prev = base;
    for c in &f.state_changes {
        w.time(prev, micros(c.at));
        w.u8(c.state as u8);
        prev = micros(c.at);
    }
    w.count(f.assignments.len());
    let mut prev = base;
    for a in &f.assignments {
        w.time(prev, micros(a.at));
        w.u64(u64::from(sym(a.agent_id.as_deref())));
        prev = micros(a.at);
    }
    w.count(f.handling.len());
    let mut prev = base;
    for h in &f.handling {
        let start = micros(h.start);
        w.u64(u64::from(sym(Some(&h.agent_id))));
        w.time(prev, start);
        w.opt_time(start, h.end.map(micros));
        prev = start;
    }

    let live_until = f.live_until().map_or(OPEN_END, micros);
    Hot {
        opened_at: base,
        active: Span {
            start: micros(f.first_event_at),
            end: micros(f.last_event_at),
        },
        live_until,
    }
}

fn message(m: &crate::domain::facts::MessageFact) -> Msg {
    Msg {
        at: micros(m.at),
        sender: m.sender,
        delivered: m.delivered,
        read: m.read,
        failed: m.failed,
    }
}

/// Decodes a blob into `c` (whose hot fields the caller has set). `tenant` maps segment-local
/// symbols to tenant symbols. Returns `false` when the blob is malformed.
///
/// A byte codec, one function on purpose: it reads exactly the sequence [`encode`] writes.
pub fn decode(blob: &[u8], tenant: &[Sym], parts: Parts, c: &mut Conv) -> bool {
    let mut r = Reader::new(blob);
    let base = c.opened_at;
    let mut sym = |r: &mut Reader<'_>| -> Sym {
        let local = r.u64() as usize;
        match tenant.get(local) {
            Some(s) => *s,
            None => {
                r.fail();
                0
            }
        }
    };
    let flags = r.u32();
    let kinds = r.u8();
    c.channel = Channel::ALL
        .get(usize::from(kinds & 15))
        .copied()
        .unwrap_or(Channel::Other);
    c.priority = Priority::ALL[usize::from((kinds >> 4) & 3)];
    c.state = match kinds >> 6 {
        0 => State::Open,
        1 => State::Resolved,
        _ => State::Abandoned,
    };
    c.initiated_by = if flags & F_BUSINESS != 0 {
        Initiator::Business
    } else {
        Initiator::Customer
    };
    c.has_customer_message = flags & F_CUSTOMER_MESSAGE != 0;
    c.human_involved = flags & F_HUMAN != 0;
    c.bot_involved = flags & F_BOT != 0;
    c.inbox = sym(&mut r);
    c.team = sym(&mut r);
    c.agent = sym(&mut r);
    c.assignee = sym(&mut r);
    (c.resolved_at, c.resolved_by, c.resolving_agent) = if flags & F_RESOLVED != 0 {
        let at = r.time(base);
        let by = ResolvedBy::ALL.get(usize::from(r.u8())).copied();
        (Some(at), by, sym(&mut r))
    } else {
        (None, None, 0)
    };
    c.ended_at = (flags & F_ENDED != 0).then(|| r.time(base));
    c.human_first = (flags & F_HUMAN_FIRST != 0).then(|| {
        let start = r.time(base);
        let at = start + r.delta();
        Resp {
            waiting_since: start,
            at,
            agent: sym(&mut r),
        }
    });
    let span = |r: &mut Reader<'_>| {
        let start = r.time(base);
        Span {
            start,
            end: start + r.delta(),
        }
    };
    c.wait = (flags & F_WAIT != 0).then(|| span(&mut r));
    c.duration = (flags & F_DURATION != 0).then(|| span(&mut r));
    c.waiting_since = (flags & F_WAITING != 0).then(|| r.time(base));
    c.reopen_count = r.u32();
    c.counts = MessageCounts {
        customer: r.u32(),
        agent: r.u32(),
        bot: r.u32(),
    };
    let system = r.u64();
    let sent = u64::from(c.counts.agent) + u64::from(c.counts.bot) + system;
    c.message_totals = MessageTotals {
        received: u64::from(c.counts.customer),
        sent,
        delivered: r.u64(),
        read: r.u64(),
        failed: r.u64(),
    };

    c.responses.clear();
    let mut prev = base;
    for _ in 0..r.count() {
        let at = r.time(prev);
        prev = at;
        let waiting_since = at - r.delta();
        c.responses.push(Resp {
            waiting_since,
            at,
            agent: sym(&mut r),
        });
    }
    c.tags.clear();
    for _ in 0..r.count() {
        c.tags.push(sym(&mut r));
    }
    c.resolutions.clear();
    let mut prev = base;
    for _ in 0..r.count() {
        prev = r.time(prev);
        c.resolutions.push(prev);
    }
    c.surveys.clear();
    for _ in 0..r.count() {
        let kind = SurveyType::ALL.get(usize::from(r.u8())).copied();
        let (score, min, max) = (r.i32(), r.i32(), r.i32());
        let at = r.time(base);
        let agent = sym(&mut r);
        match kind {
            Some(kind) => c.surveys.push(Survey {
                kind,
                score,
                min,
                max,
                at,
                agent,
            }),
            None => r.fail(),
        }
    }
    c.surveys_sent.clear();
    let mut prev = base;
    for _ in 0..r.count() {
        let kind = SurveyType::ALL.get(usize::from(r.u8())).copied();
        prev = r.time(prev);
        match kind {
            Some(kind) => c.surveys_sent.push((kind, prev)),
            None => r.fail(),
        }
    }
    decode_sla(&mut r, base, &mut sym, c);
    c.messages.clear();
    c.state_changes.clear();
    c.assignments.clear();
    c.handling.clear();
    if parts == Parts::All {
        decode_tail(&mut r, base, &mut sym, c);
        return !r.is_corrupt() && r.at_end();
    }
    !r.is_corrupt()
}

/// Attributes, waits and SLA clocks.
fn decode_sla(r: &mut Reader<'_>, base: Micros, sym: &mut impl FnMut(&mut Reader<'_>) -> Sym, c: &mut Conv) {
    c.attributes.clear();
    c.attr_tags.clear();
    for _ in 0..r.count() {
        let from = r.time(base);
        let priority = Priority::ALL
            .get(usize::from(r.u8()))
            .copied()
            .unwrap_or_else(|| {
                r.fail();
                Priority::Normal
            });
        let team = sym(r);
        let first = c.attr_tags.len() as u32;
        for _ in 0..r.count() {
            let t = sym(r);
            c.attr_tags.push(t);
        }
        c.attributes.push(Attr {
            from,
            priority,
            team,
            tags: (first, c.attr_tags.len() as u32),
        });
    }
    c.waits.clear();
    for _ in 0..r.count() {
        let start = r.time(base);
        let end = r.opt_time(start).unwrap_or(OPEN_END);
        c.waits.push(Span { start, end });
    }
    c.clocks.clear();
    for _ in 0..r.count() {
        let metric = SlaMetric::ALL.get(usize::from(r.u8())).copied();
        let start = r.time(base);
        let stop = match r.u8() {
            0 => None,
            kind => {
                let at = r.time(start);
                Some((at, kind == 2, sym(r)))
            }
        };
        match metric {
            Some(metric) => c.clocks.push(Clock { metric, start, stop }),
            None => r.fail(),
        }
    }
}

fn decode_tail(r: &mut Reader<'_>, base: Micros, sym: &mut impl FnMut(&mut Reader<'_>) -> Sym, c: &mut Conv) {
    let mut prev = base;
    for _ in 0..r.count() {
        let at = r.time(prev);
        prev = at;
        let flags = r.u8();
        c.messages.push(Msg {
            at,
            sender: Sender::ALL[usize::from(flags & 3)],
            delivered: flags & 4 != 0,
            read: flags & 8 != 0,
            failed: flags & 16 != 0,
        });
    }
    let mut prev = base;
    for _ in 0..r.count() {
        let at = r.time(prev);
        prev = at;
        let state = match r.u8() {
            0 => State::Open,
            1 => State::Resolved,
            _ => State::Abandoned,
        };
        c.state_changes.push((at, state));
    }
    let mut prev = base;
    for _ in 0..r.count() {
        let at = r.time(prev);
        prev = at;
        c.assignments.push((at, sym(r)));
    }
    let mut prev = base;
    for _ in 0..r.count() {
        let agent = sym(r);
        let start = r.time(prev);
        prev = start;
        let end = r.opt_time(start).unwrap_or(OPEN_END);
        c.handling.push((agent, Span { start, end }));
    }
}
