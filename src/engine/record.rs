//! The stored form of a conversation's facts: a compact binary record (`conversations.record`).
//!
//! Every field of [`ConversationFacts`] is kept, so `decode(encode(f)) == f`; the derived
//! durations (`seconds` fields) are recomputed from the stored instants instead of being stored.
//! Times are deltas from `opened_at` ([`codec`]), and every string (ids, agents, tags) is written
//! once in a per-record table and referenced by index. A typical record is a fifth of the JSON
//! it replaces, which is most of the cost of rewriting a conversation on every batch.
//!
//! Layout: version byte, `opened_at` (µs since the epoch), the string table, then the fields in
//! the order of [`encode_fields`]. A new layout gets a new version byte; old versions are
//! rewritten by `chatkpi reproject` (the facts are derived data).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::codec::{Reader, Writer};
use crate::domain::{
    event::{Channel, Initiator, Priority, ResolvedBy, Scale, Sender, SurveyType},
    facts::{
        AssignmentChange, Attributes, ClockStop, ConversationFacts, HandlingInterval, HumanResponse,
        MessageCounts, MessageFact, Response, SlaClock, SlaMetric, State, StateChange, SurveyAnswer,
        SurveySend, Wait, seconds_between,
    },
    time::{micros, to_datetime},
};

/// The layout written by [`encode`].
pub const VERSION: u8 = 2;

/// A record that cannot be decoded: a bug or a damaged row, never client input.
#[derive(Debug, thiserror::Error)]
#[error("conversation record {0:?} is not a valid version {VERSION} record")]
pub struct CorruptRecord(pub String);

/// Encodes facts (the conversation id is stored beside the record, not in it).
pub fn encode(f: &ConversationFacts) -> Vec<u8> {
    let mut strings = Strings::default();
    let mut body = Writer::new();
    encode_fields(f, &mut body, &mut strings);
    let mut out = Writer::new();
    out.u8(VERSION);
    out.i64(micros(f.opened_at));
    out.count(strings.list.len());
    for s in &strings.list {
        out.bytes(s.as_bytes());
    }
    out.buf.extend_from_slice(&body.buf);
    out.buf
}

/// Decodes a record written by [`encode`].
pub fn decode(conversation_id: &str, bytes: &[u8]) -> Result<ConversationFacts, CorruptRecord> {
    let mut r = Reader::new(bytes);
    if r.u8() != VERSION {
        return Err(CorruptRecord(conversation_id.to_owned()));
    }
    let opened = r.i64();
    let strings: Vec<&str> = (0..r.count()).map(|_| r.str()).collect();
    let mut d = Decoder {
        r,
        strings,
        base: opened,
    };
    let f = d.fields(conversation_id, opened);
    if d.r.is_corrupt() || !d.r.at_end() {
        return Err(CorruptRecord(conversation_id.to_owned()));
    }
    Ok(f)
}

/// Strings of one record, each written once.
#[derive(Default)]
struct Strings<'a> {
    list: Vec<&'a str>,
    index: HashMap<&'a str, u64>,
}

impl<'a> Strings<'a> {
    /// `0` = absent, else index + 1.
    fn opt(&mut self, s: Option<&'a str>) -> u64 {
        s.map_or(0, |s| self.id(s) + 1)
    }

    fn id(&mut self, s: &'a str) -> u64 {
        *self.index.entry(s).or_insert_with(|| {
            self.list.push(s);
            self.list.len() as u64 - 1
        })
    }
}

/// The body, field by field; [`Decoder::fields`] reads the same sequence.
///
/// A byte codec, one function on purpose: the two are read side by side, field by field.
fn encode_fields<'a>(f: &'a ConversationFacts, w: &mut Writer, s: &mut Strings<'a>) {
    let base = micros(f.opened_at);
    let t = |w: &mut Writer, at: DateTime<Utc>| w.time(base, micros(at));
    let opt_t = |w: &mut Writer, at: Option<DateTime<Utc>>| w.opt_time(base, at.map(micros));
    let flags = u8::from(f.has_opened_event)
        | u8::from(f.human_involved) << 1
        | u8::from(f.bot_involved) << 2
        | u8::from(f.initiated_by == Initiator::Business) << 3;
    w.u8(flags);
    w.u8(f.channel as u8);
    w.u8(f.priority as u8);
    w.u8(f.state as u8);
    for sym in [&f.inbox, &f.customer_id, &f.team, &f.assignee, &f.agent] {
        w.u64(s.opt(sym.as_deref()));
    }
    w.count(f.tags.len());
    for tag in &f.tags {
        w.u64(s.id(tag));
    }
    opt_t(w, f.first_customer_message_at);
    w.count(f.responses.len());
    for r in &f.responses {
        w.u8(r.responder as u8);
        w.u64(s.opt(r.agent_id.as_deref()));
        t(w, r.waiting_since);
        t(w, r.at);
    }
    opt_t(w, f.human_queue_start);
    match &f.first_human_response {
        Some(h) => {
            w.u64(s.id(&h.agent_id) + 1);
            t(w, h.at);
        }
        None => w.u64(0),
    }
    opt_t(w, f.first_assigned_at);
    opt_t(w, f.waiting_since);
    opt_t(w, f.resolved_at);
    w.u8(f.resolved_by.map_or(0, |b| b as u8 + 1));
    w.u64(s.opt(f.resolving_agent.as_deref()));
    w.u64(u64::from(f.reopen_count));
    opt_t(w, f.ended_at);
    let c = f.message_counts;
    for n in [c.customer, c.agent, c.bot] {
        w.u64(u64::from(n));
    }
    w.count(f.resolutions.len());
    for at in &f.resolutions {
        t(w, *at);
    }
    w.count(f.state_changes.len());
    for c in &f.state_changes {
        t(w, c.at);
        w.u8(c.state as u8);
    }
    w.count(f.assignments.len());
    for a in &f.assignments {
        t(w, a.at);
        w.u64(s.opt(a.agent_id.as_deref()));
    }
    w.count(f.handling.len());
    for h in &f.handling {
        w.u64(s.id(&h.agent_id));
        t(w, h.start);
        opt_t(w, h.end);
    }
    w.count(f.messages.len());
    for m in &f.messages {
        w.u64(s.id(&m.message_id));
        w.u8(m.sender as u8 | u8::from(m.delivered) << 2 | u8::from(m.read) << 3 | u8::from(m.failed) << 4);
        w.u64(s.opt(m.agent_id.as_deref()));
        t(w, m.at);
    }
    w.count(f.surveys.len());
    for a in &f.surveys {
        w.u8(a.survey as u8);
        w.i64(a.score.into());
        w.i64(a.scale.min.into());
        w.i64(a.scale.max.into());
        t(w, a.at);
        w.u64(s.opt(a.agent_id.as_deref()));
    }
    w.count(f.surveys_sent.len());
    for x in &f.surveys_sent {
        w.u8(x.survey as u8);
        t(w, x.at);
    }
    w.count(f.waits.len());
    for x in &f.waits {
        t(w, x.start);
        opt_t(w, x.end);
    }
    w.count(f.attributes.len());
    for a in &f.attributes {
        t(w, a.from);
        w.u8(a.priority as u8);
        w.u64(s.opt(a.team.as_deref()));
        w.count(a.tags.len());
        for tag in &a.tags {
            w.u64(s.id(tag));
        }
    }
    w.count(f.sla_clocks.len());
    for c in &f.sla_clocks {
        w.u8(c.metric as u8);
        t(w, c.start);
        match &c.stop {
            None => w.u8(0),
            Some(stop) => {
                w.u8(1 + u8::from(stop.completed));
                t(w, stop.at);
                w.u64(s.opt(stop.agent_id.as_deref()));
            }
        }
    }
    t(w, f.first_event_at);
    t(w, f.last_event_at);
}

struct Decoder<'a> {
    r: Reader<'a>,
    strings: Vec<&'a str>,
    base: i64,
}

impl Decoder<'_> {
    fn time(&mut self) -> DateTime<Utc> {
        to_datetime(self.r.time(self.base))
    }

    fn opt_time(&mut self) -> Option<DateTime<Utc>> {
        self.r.opt_time(self.base).map(to_datetime)
    }

    fn string(&mut self) -> String {
        let i = self.r.u64();
        self.lookup(i)
    }

    fn opt_string(&mut self) -> Option<String> {
        match self.r.u64() {
            0 => None,
            i => Some(self.lookup(i - 1)),
        }
    }

    fn lookup(&mut self, i: u64) -> String {
        match self.strings.get(i as usize) {
            Some(s) => (*s).to_owned(),
            None => {
                self.r.fail();
                String::new()
            }
        }
    }

    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.r.count();
        (0..n).map(|_| item(self)).collect()
    }

    fn pick<T: Copy>(&mut self, all: &[T], index: u8) -> T {
        match all.get(index as usize) {
            Some(v) => *v,
            None => {
                self.r.fail();
                all[0]
            }
        }
    }

    /// The body as [`encode_fields`] wrote it (a byte codec, one function on purpose: the two
    /// are read side by side, field by field).
    fn fields(&mut self, conversation_id: &str, opened: i64) -> ConversationFacts {
        let flags = self.r.u8();
        let (channel, priority, state) = (self.r.u8(), self.r.u8(), self.r.u8());
        let channel = self.pick(Channel::ALL, channel);
        let priority = self.pick(Priority::ALL, priority);
        let state = self.pick(&[State::Open, State::Resolved, State::Abandoned], state);
        let [inbox, customer_id, team, assignee, agent] = std::array::from_fn(|_| self.opt_string());
        let tags = self.list(Self::string);
        let first_customer_message_at = self.opt_time();
        let responses = self.list(|d| {
            let responder = d.r.u8();
            let responder = d.pick(Sender::ALL, responder);
            let agent_id = d.opt_string();
            let (waiting_since, at) = (d.time(), d.time());
            Response {
                responder,
                agent_id,
                waiting_since,
                at,
                seconds: seconds_between(waiting_since, at),
            }
        });
        let human_queue_start = self.opt_time();
        let first_human_response = self.opt_string().map(|agent_id| {
            let at = self.time();
            HumanResponse {
                agent_id,
                at,
                seconds: human_queue_start.map_or(0.0, |start| seconds_between(start, at)),
            }
        });
        let first_assigned_at = self.opt_time();
        let waiting_since = self.opt_time();
        let resolved_at = self.opt_time();
        let resolved_by = match self.r.u8() {
            0 => None,
            b => Some(self.pick(ResolvedBy::ALL, b - 1)),
        };
        let resolving_agent = self.opt_string();
        let reopen_count = self.r.u32();
        let ended_at = self.opt_time();
        let message_counts = MessageCounts {
            customer: self.r.u32(),
            agent: self.r.u32(),
            bot: self.r.u32(),
        };
        let resolutions = self.list(Self::time);
        let state_changes = self.list(|d| {
            let at = d.time();
            let state = d.r.u8();
            StateChange {
                at,
                state: d.pick(&[State::Open, State::Resolved, State::Abandoned], state),
            }
        });
        let assignments = self.list(|d| AssignmentChange {
            at: d.time(),
            agent_id: d.opt_string(),
        });
        let handling = self.list(|d| HandlingInterval {
            agent_id: d.string(),
            start: d.time(),
            end: d.opt_time(),
        });
        let messages = self.list(|d| {
            let message_id = d.string();
            let flags = d.r.u8();
            MessageFact {
                message_id,
                sender: d.pick(Sender::ALL, flags & 3),
                agent_id: d.opt_string(),
                at: d.time(),
                delivered: flags & 4 != 0,
                read: flags & 8 != 0,
                failed: flags & 16 != 0,
            }
        });
        let surveys = self.list(|d| {
            let kind = d.r.u8();
            let survey = d.pick(SurveyType::ALL, kind);
            let (score, min, max) = (d.r.i32(), d.r.i32(), d.r.i32());
            SurveyAnswer {
                survey,
                score,
                scale: Scale { min, max },
                at: d.time(),
                agent_id: d.opt_string(),
            }
        });
        let surveys_sent = self.list(|d| {
            let kind = d.r.u8();
            SurveySend {
                survey: d.pick(SurveyType::ALL, kind),
                at: d.time(),
            }
        });
        let waits = self.list(|d| Wait {
            start: d.time(),
            end: d.opt_time(),
        });
        let attributes = self.list(|d| {
            let from = d.time();
            let priority = d.r.u8();
            Attributes {
                from,
                priority: d.pick(Priority::ALL, priority),
                team: d.opt_string(),
                tags: d.list(Self::string),
            }
        });
        let sla_clocks = self.list(|d| {
            let metric = d.r.u8();
            let metric = d.pick(&SlaMetric::ALL, metric);
            let start = d.time();
            let stop = match d.r.u8() {
                0 => None,
                kind => Some(ClockStop {
                    completed: kind == 2,
                    at: d.time(),
                    agent_id: d.opt_string(),
                }),
            };
            SlaClock { metric, start, stop }
        });
        let first_event_at = self.time();
        let last_event_at = self.time();

        let opened_at = to_datetime(opened);
        let mut f = ConversationFacts {
            conversation_id: conversation_id.to_owned(),
            opened_at,
            has_opened_event: flags & 1 != 0,
            channel,
            inbox,
            customer_id,
            initiated_by: if flags & 8 != 0 {
                Initiator::Business
            } else {
                Initiator::Customer
            },
            team,
            priority,
            assignee,
            agent,
            tags,
            first_customer_message_at,
            responses,
            human_queue_start,
            first_human_response,
            first_assigned_at,
            wait_seconds: None,
            waiting_since,
            state,
            resolved_at,
            resolved_by,
            resolving_agent,
            reopen_count,
            ended_at,
            resolution_seconds: None,
            duration_seconds: None,
            message_counts,
            human_involved: flags & 2 != 0,
            bot_involved: flags & 4 != 0,
            resolutions,
            state_changes,
            assignments,
            handling,
            messages,
            surveys,
            surveys_sent,
            waits,
            attributes,
            sla_clocks,
            first_event_at,
            last_event_at,
        };
        f.fill_derived_durations();
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        event::{DeliveryStatus, MessageStatusChanged, Payload, Resolved, ResolvedBy, SurveyResponse},
        testkit::Conv,
    };

    /// A conversation using every part of the record: bot and agent responses, a handoff, a
    /// receipt, a reopen, a survey on 1-10, tags and assignments.
    fn rich() -> ConversationFacts {
        Conv::new()
            .opened("o", 0, crate::domain::event::Channel::Whatsapp)
            .customer("c1", 5)
            .bot("b1", 7)
            .customer("c2", 20)
            .push("h", 21, Payload::Handoff)
            .assigned("a1", 22, Some("ann"))
            .agent("m1", 50, "ann")
            .push(
                "st",
                51,
                Payload::MessageStatus(MessageStatusChanged {
                    message_id: "m-m1".into(),
                    status: DeliveryStatus::Read,
                    error_code: None,
                    category: None,
                    implies_message: false,
                }),
            )
            .resolved("r1", 60)
            .push("re", 70, Payload::Reopened)
            .customer("c3", 71)
            .agent("m2", 80, "bob")
            .push(
                "r2",
                90,
                Payload::Resolved(Resolved {
                    by: ResolvedBy::Bot,
                    agent_id: None,
                }),
            )
            .push(
                "sv",
                95,
                Payload::SurveyResponse(SurveyResponse {
                    survey: crate::domain::event::SurveyType::Csat,
                    score: 8,
                    scale: crate::domain::event::Scale { min: 1, max: 10 },
                    agent_id: None,
                }),
            )
            .facts()
    }

    #[test]
    fn a_record_decodes_to_exactly_its_facts() {
        let f = rich();
        assert_eq!(decode(&f.conversation_id, &encode(&f)).unwrap(), f);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let f = rich();
        let bytes = encode(&f);
        for cut in 0..bytes.len() {
            assert!(decode(&f.conversation_id, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[0] = 99;
        assert!(decode(&f.conversation_id, &flipped).is_err());
        let mut extra = bytes;
        extra.push(0);
        assert!(decode(&f.conversation_id, &extra).is_err(), "trailing bytes");
    }
}
