//! The scan: every item of a conversation placed by its docs/metrics.md §4 time, filtered by the §6
//! rules and added to the group it routes to. One function per family of items:
//!
//! | items | placed by | matched against the agent filter by |
//! | --- | --- | --- |
//! | volume, wait, missed, abandoned, bot handoff, tags, channels, customers ([`Scan::opened`]) | `opened_at` | the conversation's agent |
//! | first response, bot FRT, human FRT ([`Scan::first_responses`]) | `opened_at` | the responding agent |
//! | customers of the window before ([`Scan::previous_customers`]) | `opened_at` | the conversation's agent |
//! | reply times ([`Scan::replies`]) | the response's time | the responding agent |
//! | resolutions ([`Scan::resolutions`]) | each `resolved` | the conversation's agent |
//! | resolved, resolution time, FCR, repeat, reopen, automation ([`Scan::final_resolution`]) | `resolved_at` | the conversation's agent |
//! | duration, messages per chat ([`Scan::ended`]) | `ended_at` | the conversation's agent |
//! | messages and delivery funnel ([`Scan::messages`]) | the message's time | the conversation's agent |
//! | survey sends ([`Scan::survey_sends`]) | the send's time | the conversation's agent |
//! | survey answers ([`Scan::surveys`]) | the answer's time | the credited agent |
//! | SLA clocks ([`Scan::sla`], docs/metrics.md §10) | the clock's stop | the completing agent |

use std::{
    collections::hash_map::Entry,
    ops::Range,
    sync::{Arc, LazyLock, OnceLock},
};

use super::{
    Computation, GroupKey, Grouping,
    acc::{Acc, Groups, TAG_BYTES},
    filter::Compiled,
    joins::{self, Joins},
    ledger, partial,
    route::Router,
};
use crate::domain::{
    event::{ResolvedBy, SurveyType},
    facts::State,
    time::{Micros, Span},
};
use crate::engine::segment::{Conv, MessageTotals, Parts, Segment};

/// Per-customer lookups built on first use.
pub(super) type LazyJoins<'a> = LazyLock<Joins, Box<dyn FnOnce() -> Joins + Send + 'a>>;

/// What every part of one computation's scan shares.
pub(super) struct Scan<'a> {
    pub comp: &'a Computation<'a>,
    /// The query's repeat and attribution windows (what the lookups read after an item).
    pub repeat_window: Micros,
    pub attribution_window: Micros,
    /// What the computation's groups may take (see [`super::acc::Budget`]).
    pub budget: Arc<super::acc::Budget>,
    /// The tenant's SLA policies (none: no clock is judged).
    pub policies: super::sla::Policies,
    pub grouping: Grouping,
    pub filters: Compiled,
    pub router: Router,
    pub joins: LazyJoins<'a>,
    /// What the scan can ask the lookups, when it knows before it starts (set at most once,
    /// before [`Scan::joins`] is first used); unset, the lookups cover every customer of the
    /// window.
    pub asked: Arc<OnceLock<joins::Asked>>,
    /// The query window.
    pub window: Span,
    /// The window before, for retention's previous customers.
    pub previous: Span,
    /// A time series keys previous customers to its first bucket.
    pub first_bucket: Option<Micros>,
}

/// Which rows of a segment a part covers, by the end of their active span: a segment that
/// begins inside the window keeps the totals of its rows that end inside it
/// ([`super::partial`]) and scans the others on every computation.
#[derive(Debug, Clone, Copy)]
pub(super) enum Select {
    All,
    EndingBefore(Micros),
    EndingFrom(Micros),
}

impl Select {
    pub fn takes(self, seg: &Segment, row: usize) -> bool {
        match self {
            Select::All => true,
            Select::EndingBefore(t) => seg.active_end(row) < t,
            Select::EndingFrom(t) => seg.active_end(row) >= t,
        }
    }
}

/// Reusable buffers of one part, and the customers whose openings and conversions it read
/// (and, for totals kept where customers return, the verdicts it judged).
#[derive(Default)]
pub(super) struct Scratch {
    conv: Conv,
    keys: Vec<GroupKey>,
    attributed: Vec<u32>,
    read: Read,
}

/// Customers whose openings (repeat contacts) and conversions (attribution) a part read, and
/// the span of time of what it read.
pub(super) struct Read {
    openings: partial::Read,
    conversions: partial::Read,
    /// The repeat-contact verdicts counted, when they are kept ([`super::ledger`]).
    judged: Option<ledger::Builder>,
}

impl Default for Read {
    fn default() -> Self {
        Read {
            openings: partial::Read::nothing(),
            conversions: partial::Read::nothing(),
            judged: None,
        }
    }
}

/// Notes that `customer`'s items in `[from, to]` were read.
fn note(read: &mut partial::Read, customer: u32, from: Micros, to: Micros) {
    read.customers.push(customer);
    read.span.start = read.span.start.min(from);
    read.span.end = read.span.end.max(to);
}

impl Scratch {
    /// A part's buffers that also note every repeat-contact verdict counted.
    pub fn judging() -> Self {
        let mut scratch = Scratch::default();
        scratch.read.judged = Some(ledger::Builder::default());
        scratch
    }

    /// What the part read: openings and conversions, customers sorted and distinct, and the
    /// verdicts judged when noted ([`Scratch::judging`]).
    pub fn customers_read(self) -> (partial::Read, partial::Read, Option<Arc<ledger::Ledger>>) {
        let Read {
            mut openings,
            mut conversions,
            judged,
        } = self.read;
        for read in [&mut openings, &mut conversions] {
            read.customers.sort_unstable();
            read.customers.dedup();
            read.customers.shrink_to_fit();
        }
        (openings, conversions, judged.map(ledger::Builder::finish))
    }
}

impl Scan<'_> {
    /// Whether a row can hold an item of this computation, from its hot columns alone.
    fn relevant(&self, seg: &Segment, row: usize) -> bool {
        self.active_in_window(seg, row) || self.previous.contains(seg.opened_at(row))
    }

    fn active_in_window(&self, seg: &Segment, row: usize) -> bool {
        seg.active_start(row) < self.window.end && seg.active_end(row) >= self.window.start
    }

    /// Scans the `select`ed rows among `rows` of `seg` into `groups`.
    pub fn part(
        &self,
        seg: &Segment,
        rows: Range<usize>,
        select: Select,
        groups: &mut Groups,
        scratch: &mut Scratch,
    ) {
        let hot_previous = self.filters.is_empty() && self.router.by_time_only();
        let end = rows.end;
        for row in rows {
            self.prefetch_lookups(seg, row, end);
            if groups.over_budget() {
                return; // the computation is refused (Computation::scan_parts)
            }
            if !select.takes(seg, row) || !self.relevant(seg, row) {
                continue;
            }
            if hot_previous && !self.active_in_window(seg, row) {
                // Only a customer of the window before: with nothing filtered and groups by
                // time, its opening time and customer (hot columns) are all that counts.
                let c = &mut scratch.conv;
                (c.opened_at, c.customer) = (seg.opened_at(row), seg.customer(row));
                self.previous_customers(c, groups, &mut scratch.keys);
                continue;
            }
            let parts = if self.needs_messages(seg, row) {
                Parts::All
            } else {
                Parts::Head
            };
            seg.decode(row, parts, &mut scratch.conv);
            let Scratch {
                conv,
                keys,
                attributed,
                read,
            } = scratch;
            self.conversation(conv, groups, keys, attributed, read);
        }
    }

    /// Asks the memory, rows ahead of `row`, for the lookups of their customers (once the
    /// lookups are built: they are built only when a row needs them, [`LazyJoins`]).
    fn prefetch_lookups(&self, seg: &Segment, row: usize, end: usize) {
        /// Rows ahead whose lookups' bounds, then items, are asked for: a row takes a few
        /// hundred nanoseconds, about what a miss to memory costs.
        const BOUNDS_AHEAD: usize = 16;
        const ITEMS_AHEAD: usize = 8;
        let Some(joins) = LazyLock::get(&self.joins) else {
            return;
        };
        if row + BOUNDS_AHEAD < end {
            joins.prefetch_bounds(seg.customer(row + BOUNDS_AHEAD));
        }
        if row + ITEMS_AHEAD < end {
            joins.prefetch_items(seg.customer(row + ITEMS_AHEAD));
        }
    }

    /// Whether the conversation's messages must be placed one by one: they are not all inside
    /// the window in one group.
    fn needs_messages(&self, seg: &Segment, row: usize) -> bool {
        !self.all_in_one_group(Span {
            start: seg.active_start(row),
            end: seg.active_end(row),
        })
    }

    /// Whether every item of a conversation active over `active` is inside the window and in the
    /// same group: its items can then be counted at once.
    fn all_in_one_group(&self, active: Span) -> bool {
        self.window.start <= active.start
            && active.end < self.window.end
            && self.router.same_group(active.start, active.end)
    }

    fn conversation(
        &self,
        c: &Conv,
        groups: &mut Groups,
        keys: &mut Vec<GroupKey>,
        attributed: &mut Vec<u32>,
        read: &mut Read,
    ) {
        let filters = &self.filters;
        if !filters.conversation_except_agent(c) {
            return;
        }
        let agent_ok = filters.agent(c.agent);
        if self.window.contains(c.opened_at) {
            if agent_ok {
                self.opened(c, groups, keys, attributed, read);
            }
            self.first_responses(c, groups, keys);
        }
        if agent_ok {
            self.previous_customers(c, groups, keys);
        }
        self.replies(c, groups, keys);
        self.surveys(c, groups, keys);
        if !self.policies.is_empty() {
            self.sla(c, groups, keys);
        }
        if !agent_ok {
            // Every other item matches the agent filter by the conversation's agent.
            return;
        }
        self.resolutions(c, groups, keys);
        self.final_resolution(c, groups, keys, read);
        self.ended(c, groups, keys);
        self.messages(c, groups, keys);
        self.survey_sends(c, groups, keys);
    }

    /// Items placed by `opened_at` and credited to the conversation's agent.
    fn opened(
        &self,
        c: &Conv,
        groups: &mut Groups,
        keys: &mut Vec<GroupKey>,
        attributed: &mut Vec<u32>,
        read: &mut Read,
    ) {
        attributed.clear();
        if c.customer != 0 {
            self.joins.attributed(c.customer, c.opened_at, attributed);
            let end = c.opened_at.saturating_add(self.attribution_window);
            note(&mut read.conversions, c.customer, c.opened_at, end);
        }
        let wait = c.wait.map(|w| self.comp.measure(w));
        self.router.route(c, c.opened_at, c.agent, keys);
        let mut new_tags = 0;
        for k in keys.iter() {
            let a = groups.get(*k);
            a.conversations += 1;
            a.channels[c.channel as usize] += 1;
            for t in &c.tags {
                match a.tags.entry(*t) {
                    Entry::Occupied(mut n) => *n.get_mut() += 1,
                    Entry::Vacant(v) => {
                        v.insert(1);
                        new_tags += 1;
                    }
                }
            }
            if let Some(w) = wait {
                a.wait.push(w, None);
            }
            if c.has_customer_message {
                a.with_customer_message += 1;
                // Missed: ended without any response (docs/metrics.md: open ones are not yet).
                if c.ended_at.is_some() && c.responses.is_empty() {
                    a.missed += 1;
                }
            }
            if c.state == State::Abandoned {
                a.abandoned += 1;
            }
            if c.bot_involved {
                a.bot_involved += 1;
                a.bot_and_human += u64::from(c.human_involved);
            }
            if c.customer != 0 {
                a.customers.push(c.customer);
                if !attributed.is_empty() {
                    a.converted.push(c.customer);
                    a.attributed.extend_from_slice(attributed);
                }
            }
        }
        groups.charge(new_tags * TAG_BYTES);
    }

    /// First response and first human response: placed by `opened_at`, matched and credited by
    /// the responding agent (a bot response matches no agent).
    fn first_responses(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>) {
        if let Some(r) = c.first_response().filter(|r| self.filters.agent(r.agent)) {
            self.router.route(c, c.opened_at, r.agent, keys);
            let seconds = self.comp.measure(r.span());
            let t = self.comp.targets;
            for k in keys.iter() {
                let a = groups.get(*k);
                a.frt.push(seconds, None);
                if r.agent == 0 {
                    a.bot_frt.push(seconds, Some(t.bot_frt_seconds));
                }
            }
        }
        if let Some(h) = c.human_first.filter(|h| self.filters.agent(h.agent)) {
            self.router.route(c, c.opened_at, h.agent, keys);
            let seconds = self.comp.measure(h.span());
            for k in keys.iter() {
                groups
                    .get(*k)
                    .human_frt
                    .push(seconds, Some(self.comp.targets.human_frt_seconds));
            }
        }
    }

    /// Retention: customers who opened a conversation in the window before.
    fn previous_customers(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>) {
        if c.customer == 0 || !self.previous.contains(c.opened_at) {
            return;
        }
        match (self.grouping, self.first_bucket) {
            // A series' first bucket looks back one bucket length (docs/metrics.md).
            (Grouping::Series(_), Some(first)) => {
                groups
                    .get(GroupKey::Bucket(first))
                    .previous_customers
                    .push(c.customer);
            }
            (Grouping::Series(_), None) => {}
            _ => {
                self.router.route(c, c.opened_at, c.agent, keys);
                for k in keys.iter() {
                    groups.get(*k).previous_customers.push(c.customer);
                }
            }
        }
    }

    /// Reply times by the response's own time, matched by the responding agent.
    fn replies(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>) {
        for r in c
            .replies()
            .iter()
            .filter(|r| self.window.contains(r.at) && self.filters.agent(r.agent))
        {
            self.router.route(c, r.at, r.agent, keys);
            let seconds = self.comp.measure(r.span());
            for k in keys.iter() {
                groups.get(*k).reply.push(seconds, None);
            }
        }
    }

    /// Every `resolved` event in the window.
    fn resolutions(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>) {
        if c.resolutions.is_empty() {
            return;
        }
        if self.all_in_one_group(c.active) {
            self.router.route(c, c.opened_at, c.agent, keys);
            for k in keys.iter() {
                groups.get(*k).resolutions += c.resolutions.len() as u64;
            }
            return;
        }
        for t in c.resolutions.iter().filter(|t| self.window.contains(**t)) {
            self.router.route(c, *t, c.agent, keys);
            for k in keys.iter() {
                groups.get(*k).resolutions += 1;
            }
        }
    }

    /// The final resolution, placed by `resolved_at`: resolved, resolution time, FCR, repeat
    /// contact, reopen, automation and bot resolutions.
    fn final_resolution(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>, read: &mut Read) {
        let Some(resolved_at) = c.resolved_at.filter(|t| self.window.contains(*t)) else {
            return;
        };
        let own_inside = self.joins.own_inside(resolved_at, c.opened_at);
        let repeat = self.joins.repeat_given(c.customer, resolved_at, own_inside);
        let seconds = self.comp.measure(Span {
            start: c.opened_at,
            end: resolved_at.max(c.opened_at),
        });
        self.router.route(c, resolved_at, c.agent, keys);
        if c.customer != 0 && self.repeat_window > 0 {
            let end = resolved_at.saturating_add(self.repeat_window);
            note(&mut read.openings, c.customer, resolved_at, end);
            if let Some(judged) = &mut read.judged {
                let verdict = ledger::Verdict {
                    customer: c.customer,
                    resolved_at,
                    own_inside,
                    reopened: c.reopen_count > 0,
                    repeat,
                };
                judged.note(verdict, keys);
            }
        }
        for k in keys.iter() {
            let a = groups.get(*k);
            a.resolved += 1;
            a.resolution
                .push(seconds, Some(self.comp.targets.resolution_seconds));
            a.reopened += u64::from(c.reopen_count > 0);
            a.repeat += u64::from(repeat);
            a.fcr += u64::from(c.reopen_count == 0 && !repeat);
            a.no_human_resolved += u64::from(!c.human_involved);
            a.bot_resolutions += u64::from(c.resolved_by == Some(ResolvedBy::Bot));
        }
    }

    /// Duration and messages per chat, placed by `ended_at`.
    fn ended(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>) {
        let Some(ended_at) = c.ended_at.filter(|t| self.window.contains(*t)) else {
            return;
        };
        let seconds = c.duration.map(|d| self.comp.measure(d));
        self.router.route(c, ended_at, c.agent, keys);
        for k in keys.iter() {
            let a = groups.get(*k);
            a.ended += 1;
            a.ended_messages.count(c.counts);
            if let Some(s) = seconds {
                a.duration.push(s, None);
            }
        }
    }

    /// Messages and their delivery funnel, by the message's own time.
    fn messages(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>) {
        if self.all_in_one_group(c.active) {
            // Every message is inside the window, in one group: no walk over them.
            if !c.message_totals.is_empty() {
                self.router.route(c, c.opened_at, c.agent, keys);
                for k in keys.iter() {
                    groups.get(*k).add_messages(&c.message_totals);
                }
            }
            return;
        }
        for m in c.messages.iter().filter(|m| self.window.contains(m.at)) {
            let mut counts = MessageTotals::default();
            m.count_into(&mut counts);
            self.router.route(c, m.at, c.agent, keys);
            for k in keys.iter() {
                groups.get(*k).add_messages(&counts);
            }
        }
    }

    /// `survey_sent` events, by their time.
    fn survey_sends(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>) {
        for (kind, t) in c.surveys_sent.iter().filter(|(_, t)| self.window.contains(*t)) {
            self.router.route(c, *t, c.agent, keys);
            for k in keys.iter() {
                groups.get(*k).surveys_sent[survey_index(*kind)] += 1;
            }
        }
    }

    /// Survey answers by their time, credited to (and filtered by) their agent.
    fn surveys(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>) {
        for s in c
            .surveys
            .iter()
            .filter(|s| self.window.contains(s.at) && self.filters.agent(s.agent))
        {
            self.router.route(c, s.at, s.agent, keys);
            for k in keys.iter() {
                add_survey(groups.get(*k), s.kind, s.score, s.min, s.max, s.normalized());
            }
        }
    }
}

impl Scan<'_> {
    /// SLA clocks that stopped in the window, by their stop, matched and credited by the agent
    /// who completed them (else the conversation's agent): achieved or breached against their
    /// policy's target (docs/metrics.md §10).
    fn sla(&self, c: &Conv, groups: &mut Groups, keys: &mut Vec<GroupKey>) {
        for clock in &c.clocks {
            let Some((at, completed, completer)) = clock.stop.filter(|s| self.window.contains(s.0)) else {
                continue;
            };
            let Some((policy, target)) = self.policies.governing(c, clock) else {
                continue;
            };
            let agent = if completed && completer != 0 {
                completer
            } else {
                c.agent
            };
            if !self.filters.agent(agent) {
                continue;
            }
            let elapsed = super::sla::elapsed(c, clock, at, target, self.comp.schedule);
            let (verdict, over) = super::sla::judge(elapsed, target, completed);
            if verdict == crate::domain::sla::Verdict::NotCounted {
                continue;
            }
            self.router.route_clock(c, at, agent, policy, keys);
            for k in keys.iter() {
                let s = &mut groups.get(*k).sla[clock.metric as usize];
                if verdict == crate::domain::sla::Verdict::Achieved {
                    s.achieved += 1;
                } else {
                    s.breached += 1;
                    s.over.push(over, None);
                }
            }
        }
    }
}

fn add_survey(a: &mut Acc, kind: SurveyType, score: i32, min: i32, max: i32, normalized: f64) {
    match kind {
        SurveyType::Csat => a.csat.push((score, min, max)),
        SurveyType::Nps => a.nps.push(score),
        // docs/metrics.md §5: CES on a 1-7 scale.
        SurveyType::Ces => a.ces.push(1.0 + 6.0 * normalized),
    }
}

pub(super) fn survey_index(kind: SurveyType) -> usize {
    match kind {
        SurveyType::Csat => 0,
        SurveyType::Nps => 1,
        SurveyType::Ces => 2,
    }
}
