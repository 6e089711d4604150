//! Reference KPI computation (docs/metrics.md §4-§6) over a [`Dataset`]: overview, breakdowns and
//! time series share one pass over every conversation that places every item by its docs/metrics.md
//! §4 time, filters it by the §6 rules and routes it to its group.

use std::collections::{BTreeMap, HashMap, HashSet};

use chatkpi::domain::{
    calendar::{self, Granularity, Schedule},
    event::{Channel, Priority, ResolvedBy, SurveyType},
    facts::State,
    query::{Filters, Query},
};
use chatkpi::engine::stats::DurationStats;

use chatkpi::domain::sla::Policy;
use chatkpi::engine::kpi::{
    Ces, ConversionKpis, Csat, Dimension, GroupKey, Grouping, Kpis, Nps, Retention, SlaKpis, SlaStats,
    Targets,
};

use super::{
    dataset::{Conv, Dataset, Micros, NONE, Span, Sym, micros},
    sla,
    stats::{mean, rate, summary},
};

/// Running totals of one group.
#[derive(Default)]
struct Acc {
    conversations: u64,
    received: u64,
    sent: u64,
    delivered: u64,
    read: u64,
    failed: u64,
    frt: Vec<f64>,
    bot_frt: Vec<f64>,
    human_frt: Vec<f64>,
    reply: Vec<f64>,
    wait: Vec<f64>,
    resolution: Vec<f64>,
    duration: Vec<f64>,
    resolved: u64,
    resolutions: u64,
    fcr: u64,
    repeat: u64,
    reopened: u64,
    with_customer_message: u64,
    missed: u64,
    abandoned: u64,
    ended: u64,
    ended_messages: [u64; 3],
    csat: Vec<(i32, i32, i32)>,
    nps: Vec<i32>,
    /// CES answers mapped to 1-7.
    ces: Vec<f64>,
    surveys_sent: [u64; 3],
    no_human_resolved: u64,
    bot_resolutions: u64,
    bot_involved: u64,
    bot_and_human: u64,
    /// (customer, opened_at) of conversations opened in the window.
    openers: Vec<(Sym, Micros)>,
    previous_customers: HashSet<Sym>,
    tags: HashMap<Sym, u64>,
    channels: [u64; 9],
    /// Per SLA metric: achieved, and seconds over target of each breach.
    sla_achieved: [u64; 3],
    sla_over: [Vec<f64>; 3],
}

/// Filters resolved to symbols. `None` = no filter; an empty set matches nothing (a filter
/// naming only unknown values).
pub(crate) struct Compiled {
    channels: Option<HashSet<Channel>>,
    inboxes: Option<HashSet<Sym>>,
    teams: Option<HashSet<Sym>>,
    agents: Option<HashSet<Sym>>,
    tags: Option<HashSet<Sym>>,
    priorities: Option<HashSet<Priority>>,
}

fn syms(ds: &Dataset, names: &[String]) -> Option<HashSet<Sym>> {
    (!names.is_empty()).then(|| {
        names
            .iter()
            .filter_map(|n| ds.symbols.lookup(n))
            .filter(|s| *s != NONE)
            .collect()
    })
}

impl Compiled {
    pub(crate) fn new(ds: &Dataset, f: &Filters) -> Self {
        Self {
            channels: (!f.channels.is_empty()).then(|| f.channels.iter().copied().collect()),
            inboxes: syms(ds, &f.inboxes),
            teams: syms(ds, &f.teams),
            agents: syms(ds, &f.agents),
            tags: syms(ds, &f.tags),
            priorities: (!f.priorities.is_empty()).then(|| f.priorities.iter().copied().collect()),
        }
    }

    /// Conversation-level match, every filter (agent = the conversation's agent).
    pub(crate) fn conversation(&self, c: &Conv) -> bool {
        self.conversation_except_agent(c) && self.agent(c.agent)
    }

    /// Conversation-level match, except the agent filter.
    pub(crate) fn conversation_except_agent(&self, c: &Conv) -> bool {
        self.channels.as_ref().is_none_or(|s| s.contains(&c.channel))
            && self.inboxes.as_ref().is_none_or(|s| s.contains(&c.inbox))
            && self.teams.as_ref().is_none_or(|s| s.contains(&c.team))
            && self
                .tags
                .as_ref()
                .is_none_or(|s| c.tags.iter().any(|t| s.contains(t)))
            && self.priorities.as_ref().is_none_or(|s| s.contains(&c.priority))
    }

    pub(crate) fn agent(&self, agent: Sym) -> bool {
        self.agents.as_ref().is_none_or(|s| s.contains(&agent))
    }
}

/// Computes KPIs for every group of `grouping` (docs/metrics.md §6). Groups with no item are not
/// returned, except every bucket of a time series, which is always present.
pub struct Computation<'a> {
    pub dataset: &'a Dataset,
    pub query: &'a Query,
    /// The tenant's schedule, used when `query.business_hours`.
    pub schedule: Option<&'a Schedule>,
    pub targets: &'a Targets,
    /// The tenant's SLA policies, in order.
    pub sla: &'a [Policy],
}

impl Computation<'_> {
    fn repeat_window(&self) -> Micros {
        self.query.repeat_window.num_microseconds().unwrap_or(i64::MAX)
    }

    /// A duration as the query measures it: whole, or inside business hours.
    pub fn measure(&self, span: Span) -> f64 {
        match (self.query.business_hours, self.schedule) {
            (true, Some(s)) => s.open_seconds(span),
            _ => (span.seconds()).max(0.0),
        }
    }

    /// The groups one item goes to. `agent` is the item's agent for the agent dimension
    /// (responding agent, survey credit, or the conversation's agent).
    fn route(
        &self,
        grouping: Grouping,
        times: &TimeIndex,
        c: &Conv,
        at: Micros,
        agent: Sym,
        out: &mut Vec<GroupKey>,
    ) {
        out.clear();
        match grouping {
            Grouping::All => out.push(GroupKey::All),
            Grouping::Series(_) => out.push(GroupKey::Bucket(times.slot(at).0)),
            Grouping::By(d) => match d {
                Dimension::Channel => out.push(GroupKey::Channel(c.channel)),
                Dimension::Inbox => out.push(GroupKey::Value(c.inbox)),
                Dimension::Team => out.push(GroupKey::Value(c.team)),
                Dimension::Agent => out.push(GroupKey::Value(agent)),
                Dimension::Tag if c.tags.is_empty() => out.push(GroupKey::Value(NONE)),
                Dimension::Tag => out.extend(c.tags.iter().map(|t| GroupKey::Value(*t))),
                Dimension::Priority => out.push(GroupKey::Priority(c.priority)),
                Dimension::HourOfDay => out.push(GroupKey::Number(times.slot(at).1)),
                Dimension::DayOfWeek => out.push(GroupKey::Number(times.slot(at).2)),
                Dimension::SlaPolicy => {}
            },
        }
    }

    /// KPIs per group over the query window.
    pub fn run(&self, grouping: Grouping) -> Vec<(GroupKey, Kpis)> {
        let ds = self.dataset;
        let q = self.query;
        let filters = Compiled::new(ds, &q.filters);
        let (from, to) = (micros(q.window.from), micros(q.window.to));
        let times = TimeIndex::new(grouping, q.time_zone, (from - (to - from)).min(from), to);
        // Groupings that do not depend on an item's time route every item of a conversation
        // that is credited to the conversation's agent to the same groups: count those per
        // conversation and route once.
        let per_conversation = match grouping {
            Grouping::All => true,
            Grouping::By(d) => !matches!(d, Dimension::HourOfDay | Dimension::DayOfWeek),
            Grouping::Series(_) => false,
        };
        // Retention looks one window back: for a series, the window before each bucket is the
        // previous bucket (the first bucket looks back one bucket length).
        let buckets = match grouping {
            Grouping::Series(g) => calendar::buckets(q.time_zone, g, from, to),
            _ => Vec::new(),
        };
        let previous_from = match grouping {
            Grouping::Series(_) => buckets.first().map_or(from, |b| b.start - (b.end - b.start)),
            _ => from - (to - from),
        };

        let ctx = ScanContext {
            filters: &filters,
            from,
            to,
            times: &times,
            per_conversation,
            previous_from,
            buckets: &buckets,
        };
        let mut groups = Groups::default();
        for b in &buckets {
            groups.get(GroupKey::Bucket(b.start));
        }
        groups.merge(self.scan(grouping, &ds.conversations, &ctx));

        let kinds: Option<HashSet<Sym>> = (!q.conversion_kinds.is_empty()).then(|| {
            q.conversion_kinds
                .iter()
                .filter_map(|k| ds.symbols.lookup(k))
                .collect()
        });
        let mut out: Vec<(GroupKey, GroupResult)> = groups
            .into_sorted()
            .into_iter()
            .map(|(k, a)| (k, self.finish(a, kinds.as_ref())))
            .collect();

        // Series retention: the previous bucket's customers.
        if let Grouping::Series(_) = grouping {
            let mut previous: Option<Vec<Sym>> = None;
            for (_, k) in out.iter_mut() {
                let now: Vec<Sym> = k.conversion_customers.take().unwrap_or_default();
                if let Some(prev) = previous.take() {
                    let retained = prev.iter().filter(|c| now.binary_search(c).is_ok()).count() as u64;
                    k.kpis.retention = Retention {
                        previous_customers: prev.len() as u64,
                        retained,
                        rate: rate(retained, prev.len() as u64),
                    };
                }
                previous = Some(now);
            }
        }
        // Rows by value name, not by interning order (which depends on arrival order).
        if let Grouping::By(_) = grouping {
            out.sort_by(|(a, _), (b, _)| match (a, b) {
                (GroupKey::Value(x), GroupKey::Value(y)) => ds.symbols.name(*x).cmp(ds.symbols.name(*y)),
                _ => a.cmp(b),
            });
        }
        out.into_iter().map(|(key, g)| (key, g.kpis)).collect()
    }

    /// Aggregates the items of `convs` into groups (one part of [`Computation::run`]).
    fn scan(&self, grouping: Grouping, convs: &[Conv], ctx: &ScanContext<'_>) -> Groups {
        let ScanContext {
            filters,
            times,
            buckets,
            ..
        } = *ctx;
        let (from, to, per_conversation, previous_from) =
            (ctx.from, ctx.to, ctx.per_conversation, ctx.previous_from);
        let inside = |t: Micros| from <= t && t < to;
        let mut groups = Groups::default();
        let mut keys = Vec::with_capacity(4);
        for c in convs {
            let conv_ok = filters.conversation_except_agent(c);
            if !conv_ok {
                continue;
            }
            let conv_agent_ok = filters.agent(c.agent);

            // Placed by opened_at: volume, FRT, human FRT, wait, missed, abandoned, bot
            // handoff, tags, channels, conversion and retention customers.
            if inside(c.opened_at) {
                if conv_agent_ok {
                    self.route(grouping, times, c, c.opened_at, c.agent, &mut keys);
                    for k in &keys {
                        let a = groups.get(*k);
                        a.conversations += 1;
                        a.channels[c.channel as usize] += 1;
                        for t in c.tags.iter() {
                            *a.tags.entry(*t).or_default() += 1;
                        }
                        if let Some(w) = c.wait {
                            a.wait.push(self.measure(w));
                        }
                        if c.has_customer_message {
                            a.with_customer_message += 1;
                            if c.ended_at.is_some() && c.responses.is_empty() {
                                a.missed += 1;
                            }
                        }
                        if c.state == State::Abandoned {
                            a.abandoned += 1;
                        }
                        if c.bot_involved {
                            a.bot_involved += 1;
                            if c.human_involved {
                                a.bot_and_human += 1;
                            }
                        }
                        if c.customer != NONE {
                            a.openers.push((c.customer, c.opened_at));
                        }
                    }
                }
                // Responses match the agent filter by the responding agent (bots match none).
                if let Some(r) = c.first_response().filter(|r| filters.agent(r.agent)) {
                    self.route(grouping, times, c, c.opened_at, r.agent, &mut keys);
                    let seconds = self.measure(r.span());
                    for k in &keys {
                        let a = groups.get(*k);
                        a.frt.push(seconds);
                        if r.agent == NONE {
                            a.bot_frt.push(seconds);
                        }
                    }
                }
                if let Some(h) = c.human_first.as_ref().filter(|h| filters.agent(h.agent)) {
                    self.route(grouping, times, c, c.opened_at, h.agent, &mut keys);
                    let seconds = self.measure(h.span());
                    for k in &keys {
                        groups.get(*k).human_frt.push(seconds);
                    }
                }
            }

            // Retention: customers of the window before.
            if conv_agent_ok && c.customer != NONE && previous_from <= c.opened_at && c.opened_at < from {
                let prev_grouping = match grouping {
                    // The previous window of the first bucket is keyed to that first bucket.
                    Grouping::Series(_) => None,
                    other => Some(other),
                };
                match prev_grouping {
                    Some(g) => {
                        self.route(g, times, c, c.opened_at, c.agent, &mut keys);
                        for k in &keys {
                            groups.get(*k).previous_customers.insert(c.customer);
                        }
                    }
                    None => {
                        if let Some(first) = buckets.first() {
                            groups
                                .get(GroupKey::Bucket(first.start))
                                .previous_customers
                                .insert(c.customer);
                        }
                    }
                }
            }

            // Reply times by the response's own time.
            for r in c
                .replies()
                .iter()
                .filter(|r| inside(r.at) && filters.agent(r.agent))
            {
                self.route(grouping, times, c, r.at, r.agent, &mut keys);
                let seconds = self.measure(r.span());
                for k in &keys {
                    groups.get(*k).reply.push(seconds);
                }
            }

            self.sla_clocks(grouping, times, c, filters, &inside, &mut groups, &mut keys);

            if !conv_agent_ok {
                // Every remaining item matches the agent filter by the conversation's agent,
                // except surveys (their own credit).
                self.surveys(grouping, times, c, filters, &inside, &mut groups, &mut keys);
                continue;
            }

            // Resolutions: every `resolved` event in the window. When the whole conversation
            // lies inside the window and the grouping ignores time, their number is the
            // slice's length (no walk over them).
            if per_conversation && from <= c.active.start && c.active.end < to {
                if !c.resolutions.is_empty() {
                    self.route(grouping, times, c, c.opened_at, c.agent, &mut keys);
                    for k in &keys {
                        groups.get(*k).resolutions += c.resolutions.len() as u64;
                    }
                }
            } else {
                for t in c.resolutions.iter().filter(|t| inside(**t)) {
                    self.route(grouping, times, c, *t, c.agent, &mut keys);
                    for k in &keys {
                        groups.get(*k).resolutions += 1;
                    }
                }
            }
            // Final resolution placed by resolved_at.
            if let Some(resolved_at) = c.resolved_at.filter(|t| inside(*t)) {
                let repeat = Dataset::repeat_contact(c, self.repeat_window());
                let seconds = self.measure(Span {
                    start: c.opened_at,
                    end: resolved_at.max(c.opened_at),
                });
                self.route(grouping, times, c, resolved_at, c.agent, &mut keys);
                for k in &keys {
                    let a = groups.get(*k);
                    a.resolved += 1;
                    a.resolution.push(seconds);
                    if c.reopen_count > 0 {
                        a.reopened += 1;
                    }
                    if repeat {
                        a.repeat += 1;
                    }
                    if c.reopen_count == 0 && !repeat {
                        a.fcr += 1;
                    }
                    if !c.human_involved {
                        a.no_human_resolved += 1;
                    }
                    if c.resolved_by == Some(ResolvedBy::Bot) {
                        a.bot_resolutions += 1;
                    }
                }
            }
            // Duration and messages per chat by ended_at.
            if let Some(ended_at) = c.ended_at.filter(|t| inside(*t)) {
                self.route(grouping, times, c, ended_at, c.agent, &mut keys);
                let seconds = c.duration.map(|d| self.measure(d));
                for k in &keys {
                    let a = groups.get(*k);
                    a.ended += 1;
                    for (i, n) in c.counts.iter().enumerate() {
                        a.ended_messages[i] += *n as u64;
                    }
                    if let Some(s) = seconds {
                        a.duration.push(s);
                    }
                }
            }
            // Messages by their own time.
            if per_conversation {
                let mut counts = [0u64; 5];
                if from <= c.active.start && c.active.end < to {
                    // Every message is inside the window: no need to walk them.
                    counts = c.message_totals;
                } else {
                    for m in c.messages.iter().filter(|m| inside(m.at)) {
                        m.count_into(&mut counts);
                    }
                }
                if counts[0] + counts[1] > 0 {
                    self.route(grouping, times, c, c.opened_at, c.agent, &mut keys);
                    for k in &keys {
                        groups.get(*k).add_messages(&counts);
                    }
                }
            } else {
                for m in c.messages.iter().filter(|m| inside(m.at)) {
                    let mut counts = [0u64; 5];
                    m.count_into(&mut counts);
                    self.route(grouping, times, c, m.at, c.agent, &mut keys);
                    for k in &keys {
                        groups.get(*k).add_messages(&counts);
                    }
                }
            }
            // Survey sends by their time.
            for (kind, t) in c.surveys_sent.iter().filter(|(_, t)| inside(*t)) {
                self.route(grouping, times, c, *t, c.agent, &mut keys);
                for k in &keys {
                    groups.get(*k).surveys_sent[survey_index(*kind)] += 1;
                }
            }
            self.surveys(grouping, times, c, filters, &inside, &mut groups, &mut keys);
        }

        groups
    }

    /// SLA clocks stopped in the window, by their stop, credited to the agent who completed
    /// them (else the conversation's agent); by policy they go to their policy's group.
    #[allow(clippy::too_many_arguments)]
    fn sla_clocks(
        &self,
        grouping: Grouping,
        times: &TimeIndex,
        c: &Conv,
        filters: &Compiled,
        inside: &impl Fn(Micros) -> bool,
        groups: &mut Groups,
        keys: &mut Vec<GroupKey>,
    ) {
        if self.sla.is_empty() {
            return;
        }
        for clock in sla::clocks(c) {
            let Some((at, completed, completer)) = clock.stop.filter(|s| inside(s.0)) else {
                continue;
            };
            let Some((policy, target)) = sla::governing(self.dataset, self.sla, c, &clock) else {
                continue;
            };
            let agent = if completed && completer != NONE {
                completer
            } else {
                c.agent
            };
            if !filters.agent(agent) {
                continue;
            }
            let seconds = sla::elapsed(c, &clock, at, target, self.schedule);
            let Ok(over) = sla::judged(seconds, target, completed) else {
                continue;
            };
            if grouping == Grouping::By(Dimension::SlaPolicy) {
                keys.clear();
                keys.push(GroupKey::Policy(policy));
            } else {
                self.route(grouping, times, c, at, agent, keys);
            }
            let m = clock.metric as usize;
            for k in keys.iter() {
                let a = groups.get(*k);
                match over {
                    None => a.sla_achieved[m] += 1,
                    Some(over) => a.sla_over[m].push(over),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn surveys(
        &self,
        grouping: Grouping,
        times: &TimeIndex,
        c: &Conv,
        filters: &Compiled,
        inside: &impl Fn(Micros) -> bool,
        groups: &mut Groups,
        keys: &mut Vec<GroupKey>,
    ) {
        // Surveys by response time, credited (and filtered) by their agent.
        for s in c
            .surveys
            .iter()
            .filter(|s| inside(s.at) && filters.agent(s.agent))
        {
            self.route(grouping, times, c, s.at, s.agent, keys);
            for k in keys.iter() {
                let a = groups.get(*k);
                match s.kind {
                    SurveyType::Csat => a.csat.push((s.score, s.min, s.max)),
                    SurveyType::Nps => a.nps.push(s.score),
                    SurveyType::Ces => a.ces.push(1.0 + 6.0 * s.normalized()),
                }
            }
        }
    }

    fn finish(&self, mut a: Acc, kinds: Option<&HashSet<Sym>>) -> GroupResult {
        let ds = self.dataset;
        let t = self.targets;
        let mut durations = duration_stats(vec![
            (std::mem::take(&mut a.frt), None),
            (std::mem::take(&mut a.bot_frt), Some(t.bot_frt_seconds)),
            (std::mem::take(&mut a.human_frt), Some(t.human_frt_seconds)),
            (std::mem::take(&mut a.reply), None),
            (std::mem::take(&mut a.wait), None),
            (std::mem::take(&mut a.resolution), Some(t.resolution_seconds)),
            (std::mem::take(&mut a.duration), None),
        ])
        .into_iter();
        let mut k = Kpis {
            conversations: a.conversations,
            messages_received: a.received,
            messages_sent: a.sent,
            messages_delivered: a.delivered,
            messages_read: a.read,
            messages_failed: a.failed,
            delivery_rate: rate(a.delivered, a.sent),
            read_rate: rate(a.read, a.delivered),
            first_response: durations.next().unwrap_or_default(),
            bot_first_response: durations.next().unwrap_or_default(),
            human_first_response: durations.next().unwrap_or_default(),
            reply: durations.next().unwrap_or_default(),
            wait: durations.next().unwrap_or_default(),
            resolution: durations.next().unwrap_or_default(),
            duration: durations.next().unwrap_or_default(),
            resolved: a.resolved,
            resolutions: a.resolutions,
            fcr_rate: rate(a.fcr, a.resolved),
            repeat_contact_rate: rate(a.repeat, a.resolved),
            reopen_rate: rate(a.reopened, a.resolved),
            missed: a.missed,
            missed_rate: rate(a.missed, a.with_customer_message),
            abandoned: a.abandoned,
            ended: a.ended,
            messages_per_chat: mean(a.ended_messages.iter().sum::<u64>() as f64, a.ended),
            customer_messages_per_chat: mean(a.ended_messages[0] as f64, a.ended),
            agent_messages_per_chat: mean(a.ended_messages[1] as f64, a.ended),
            bot_messages_per_chat: mean(a.ended_messages[2] as f64, a.ended),
            automation_rate: rate(a.no_human_resolved, a.resolved),
            bot_resolutions: a.bot_resolutions,
            bot_handoff_rate: rate(a.bot_and_human, a.bot_involved),
            ..Kpis::default()
        };

        // CSAT: satisfied = normalized score >= 0.75; mean on 1-5.
        // Sums run over sorted values so the result does not depend on arrival order.
        let mut csat = a.csat;
        csat.sort_unstable();
        let mut distribution: BTreeMap<(i32, i32, i32), u64> = BTreeMap::new();
        let mut satisfied = 0;
        let mut sum = 0.0;
        for (score, min, max) in &csat {
            let n = (score - min) as f64 / (max - min) as f64;
            satisfied += (n >= 0.75) as u64;
            sum += 1.0 + 4.0 * n;
            *distribution.entry((*score, *min, *max)).or_default() += 1;
        }
        let responses = csat.len() as u64;
        k.csat = Csat {
            responses,
            mean_score: mean(sum, responses),
            satisfied_percent: rate(satisfied, responses),
            satisfied,
            distribution: distribution
                .into_iter()
                .map(|((s, lo, hi), n)| (s, lo, hi, n))
                .collect(),
            sent: a.surveys_sent[0],
            response_rate: rate(responses, a.surveys_sent[0]),
        };
        let promoters = a.nps.iter().filter(|s| **s >= 9).count() as u64;
        let detractors = a.nps.iter().filter(|s| **s <= 6).count() as u64;
        let n = a.nps.len() as u64;
        k.nps = Nps {
            responses: n,
            promoters,
            passives: n - promoters - detractors,
            detractors,
            score: (n > 0).then(|| 100.0 * (promoters as f64 - detractors as f64) / n as f64),
            sent: a.surveys_sent[1],
            response_rate: rate(n, a.surveys_sent[1]),
        };
        let mut ces = a.ces;
        ces.sort_unstable_by(f64::total_cmp);
        let ces_responses = ces.len() as u64;
        k.ces = Ces {
            responses: ces_responses,
            mean_score: mean(ces.iter().sum(), ces_responses),
            sent: a.surveys_sent[2],
            response_rate: rate(ces_responses, a.surveys_sent[2]),
        };

        // Conversion: customers with a conversation opened in the window; converted when a
        // conversion falls in [opened_at, opened_at + attribution window] of one of them.
        let attribution = self
            .query
            .attribution_window
            .num_microseconds()
            .unwrap_or(i64::MAX);
        // Sorted, distinct customers (cheaper than a hash set at a million openers).
        let mut customers: Vec<Sym> = a.openers.iter().map(|(c, _)| *c).collect();
        customers.sort_unstable();
        customers.dedup();
        let mut converted: HashSet<Sym> = HashSet::new();
        let mut attributed: HashSet<usize> = HashSet::new();
        let mut revenue: BTreeMap<String, i128> = BTreeMap::new();
        for (customer, opened_at) in &a.openers {
            let end = opened_at.saturating_add(attribution);
            for (index, conv) in ds
                .conversions_of(*customer)
                .skip_while(|(_, c)| c.at < *opened_at)
            {
                if conv.at > end {
                    break;
                }
                if kinds.is_none_or(|k| k.contains(&conv.kind)) {
                    converted.insert(*customer);
                    // Each conversion counts once, even when several conversations attract it.
                    if attributed.insert(index)
                        && let Some(v) = conv.value_minor
                    {
                        *revenue
                            .entry(ds.symbols.name(conv.currency).to_owned())
                            .or_default() += i128::from(v);
                    }
                }
            }
        }
        k.conversion = ConversionKpis {
            customers: customers.len() as u64,
            converted: converted.len() as u64,
            rate: rate(converted.len() as u64, customers.len() as u64),
            revenue: revenue.into_iter().collect(),
            conversions: attributed.len() as u64,
        };
        let retained = a
            .previous_customers
            .iter()
            .filter(|c| customers.binary_search(c).is_ok())
            .count() as u64;
        k.retention = Retention {
            previous_customers: a.previous_customers.len() as u64,
            retained,
            rate: rate(retained, a.previous_customers.len() as u64),
        };

        let mut tags: Vec<(String, u64, Option<f64>)> = a
            .tags
            .iter()
            .map(|(t, n)| (ds.symbols.name(*t).to_owned(), *n, rate(*n, a.conversations)))
            .collect();
        tags.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        // docs/metrics.md §5: the 100 most frequent tags are listed, the rest counted.
        k.tags_omitted = tags.len().saturating_sub(100) as u64;
        tags.truncate(100);
        k.tags = tags;
        k.channels = Channel::ALL
            .iter()
            .filter(|c| a.channels[**c as usize] > 0)
            .map(|c| {
                (
                    *c,
                    a.channels[*c as usize],
                    rate(a.channels[*c as usize], a.conversations),
                )
            })
            .collect();
        k.sla = sla_kpis(a.sla_achieved, a.sla_over);
        GroupResult {
            kpis: k,
            conversion_customers: Some(customers),
        }
    }
}

/// docs/metrics.md §10: per metric and overall, breach rate = breached / (achieved + breached)
/// and the time over target of the breached clocks.
fn sla_kpis(achieved: [u64; 3], over: [Vec<f64>; 3]) -> SlaKpis {
    let stats = |achieved: u64, over: Vec<f64>| {
        let breached = over.len() as u64;
        SlaStats {
            achieved,
            breached,
            breach_rate: rate(breached, achieved + breached),
            over_target: summary(over, None),
        }
    };
    let all: Vec<f64> = over.iter().flatten().copied().collect();
    let [first, next, resolution] = over;
    SlaKpis {
        first_response: stats(achieved[0], first),
        next_response: stats(achieved[1], next),
        resolution: stats(achieved[2], resolution),
        overall: stats(achieved.iter().sum(), all),
    }
}

struct GroupResult {
    kpis: Kpis,
    /// Sorted distinct customers of the group's conversations (series retention).
    conversion_customers: Option<Vec<Sym>>,
}

/// What every part of a scan shares.
#[derive(Clone, Copy)]
struct ScanContext<'a> {
    filters: &'a Compiled,
    from: Micros,
    to: Micros,
    times: &'a TimeIndex,
    per_conversation: bool,
    previous_from: Micros,
    buckets: &'a [Span],
}

/// The groups of one computation, with the last used group cached: consecutive items of one
/// conversation usually land in the same group.
#[derive(Default)]
struct Groups {
    index: HashMap<GroupKey, usize>,
    accs: Vec<(GroupKey, Acc)>,
    last: Option<(GroupKey, usize)>,
}

impl Groups {
    fn get(&mut self, key: GroupKey) -> &mut Acc {
        let i = match self.last {
            Some((k, i)) if k == key => i,
            _ => {
                let accs = &mut self.accs;
                let i = *self.index.entry(key).or_insert_with(|| {
                    accs.push((key, Acc::default()));
                    accs.len() - 1
                });
                self.last = Some((key, i));
                i
            }
        };
        &mut self.accs[i].1
    }

    fn merge(&mut self, other: Groups) {
        for (key, acc) in other.accs {
            self.get(key).merge(acc);
        }
    }

    fn into_sorted(self) -> Vec<(GroupKey, Acc)> {
        let mut accs = self.accs;
        accs.sort_by_key(|(k, _)| *k);
        accs
    }
}

impl Acc {
    /// Adds another part's totals (all aggregates here are order-independent).
    fn merge(&mut self, o: Acc) {
        // Every field named, so one added to `Acc` and left out here does not compile.
        #[rustfmt::skip]
        let Acc {
            conversations: _, received: _, sent: _, delivered: _, read: _, failed: _, frt: _,
            bot_frt: _, human_frt: _, reply: _, wait: _, resolution: _, duration: _, resolved: _,
            resolutions: _, fcr: _, repeat: _, reopened: _, with_customer_message: _, missed: _,
            abandoned: _, ended: _, ended_messages: _, csat: _, nps: _, ces: _, surveys_sent: _,
            no_human_resolved: _, bot_resolutions: _, bot_involved: _, bot_and_human: _,
            openers: _, previous_customers: _, tags: _, channels: _, sla_achieved: _, sla_over: _,
        } = &o;
        self.conversations += o.conversations;
        self.add_messages(&[o.received, o.sent, o.delivered, o.read, o.failed]);
        self.frt.extend(o.frt);
        self.bot_frt.extend(o.bot_frt);
        self.human_frt.extend(o.human_frt);
        self.reply.extend(o.reply);
        self.wait.extend(o.wait);
        self.resolution.extend(o.resolution);
        self.duration.extend(o.duration);
        self.resolved += o.resolved;
        self.resolutions += o.resolutions;
        self.fcr += o.fcr;
        self.repeat += o.repeat;
        self.reopened += o.reopened;
        self.with_customer_message += o.with_customer_message;
        self.missed += o.missed;
        self.abandoned += o.abandoned;
        self.ended += o.ended;
        for i in 0..3 {
            self.ended_messages[i] += o.ended_messages[i];
            self.surveys_sent[i] += o.surveys_sent[i];
        }
        self.csat.extend(o.csat);
        self.nps.extend(o.nps);
        self.ces.extend(o.ces);
        self.no_human_resolved += o.no_human_resolved;
        self.bot_resolutions += o.bot_resolutions;
        self.bot_involved += o.bot_involved;
        self.bot_and_human += o.bot_and_human;
        self.openers.extend(o.openers);
        self.previous_customers.extend(o.previous_customers);
        for (tag, n) in o.tags {
            *self.tags.entry(tag).or_default() += n;
        }
        for (mine, theirs) in self.channels.iter_mut().zip(o.channels) {
            *mine += theirs;
        }
        for m in 0..3 {
            self.sla_achieved[m] += o.sla_achieved[m];
            self.sla_over[m].extend(&o.sla_over[m]);
        }
    }

    fn add_messages(&mut self, counts: &[u64; 5]) {
        self.received += counts[0];
        self.sent += counts[1];
        self.delivered += counts[2];
        self.read += counts[3];
        self.failed += counts[4];
    }
}

/// Local calendar slots of the window, computed once per query so items are placed by a binary
/// search instead of a time-zone conversion each.
struct TimeIndex {
    /// (start, local hour of day, local ISO weekday), sorted by start.
    slots: Vec<(Micros, u32, u32)>,
}

impl TimeIndex {
    fn new(grouping: Grouping, tz: chrono_tz::Tz, from: Micros, to: Micros) -> Self {
        let granularity = match grouping {
            Grouping::Series(g) => g,
            Grouping::By(Dimension::HourOfDay | Dimension::DayOfWeek) => Granularity::Hour,
            _ => return Self { slots: Vec::new() },
        };
        let slots = calendar::buckets(tz, granularity, from, to)
            .into_iter()
            .map(|b| {
                (
                    b.start,
                    calendar::hour_of_day(tz, b.start),
                    calendar::day_of_week(tz, b.start),
                )
            })
            .collect();
        Self { slots }
    }

    /// The slot containing `at` (callers only place items inside the window, which the slots
    /// cover).
    fn slot(&self, at: Micros) -> (Micros, u32, u32) {
        let i = self.slots.partition_point(|(start, _, _)| *start <= at);
        self.slots[i.saturating_sub(1)]
    }
}

/// Duration statistics of several value sets.
fn duration_stats(inputs: Vec<(Vec<f64>, Option<f64>)>) -> Vec<DurationStats> {
    inputs.into_iter().map(|(v, target)| summary(v, target)).collect()
}

fn survey_index(kind: SurveyType) -> usize {
    match kind {
        SurveyType::Csat => 0,
        SurveyType::Nps => 1,
        SurveyType::Ces => 2,
    }
}
