//! KPIs at an instant or over intervals beside the window summaries (docs/metrics.md §5): backlog and
//! live counts, agent utilization, and the drill-down to the conversations behind a KPI (§6).

use std::collections::BTreeMap;

use super::{Computation, filter::Compiled, sla::Policies};
use crate::domain::{
    Error,
    event::{Presence, SurveyType},
    facts::State,
    time::{Micros, OPEN_END, Span, to_datetime},
};
use crate::engine::{
    intern::Interner,
    segment::{Conv, Parts, Segment, Sym},
    stats::{DurationStats, rate},
};

pub use crate::domain::kpi::live::*;

impl Computation<'_> {
    /// SLA clocks running at `at` in conversations open at `at` that match the filters (the agent
    /// filter by the assignee at `at`): counts per metric, and the `limit` that breach soonest.
    pub fn sla_status(&self, at: Micros, limit: usize) -> Result<SlaStatus, Error> {
        let policies = Policies::new(&self.data.symbols, self.sla);
        let mut out = SlaStatus::default();
        let mut running = Vec::new();
        if policies.is_empty() {
            return Ok(out);
        }
        let filters = Compiled::new(&self.data.symbols, &self.query.filters);
        // Clocks run in open conversations: a resolved stretch before a reopen is not at risk.
        self.each_open_at(at, |s, row, c| {
            let assignee = c.assignee_at(at);
            if !filters.conversation_except_agent(c) || !filters.agent(assignee) {
                return;
            }
            for clock in c
                .clocks
                .iter()
                .filter(|k| k.start <= at && k.stop.is_none_or(|(t, _, _)| t > at))
            {
                let Some((policy, target)) = policies.governing(c, clock) else {
                    continue;
                };
                let elapsed = super::sla::elapsed(c, clock, at, target, self.schedule);
                let left = f64::from(target.seconds) - elapsed;
                let m = clock.metric as usize;
                out.active[m] += 1;
                out.active_breached[m] += u64::from(left < 0.0);
                running.push((left, s, row, *clock, policy, target, elapsed, assignee));
            }
        })?;
        // The soonest to breach first; ties by conversation and metric, so answers repeat.
        let segments = &self.data.segments;
        running.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| segments[a.1].id(a.2).cmp(segments[b.1].id(b.2)))
                .then(a.3.metric.cmp(&b.3.metric))
        });
        running.truncate(limit);
        out.at_risk = running
            .into_iter()
            .map(
                |(left, segment, row, clock, policy, target, elapsed, assignee)| AtRisk {
                    segment,
                    row,
                    metric: clock.metric,
                    policy: self.sla[policy as usize].name.clone(),
                    target_seconds: target.seconds,
                    started_at: clock.start,
                    elapsed_seconds: elapsed,
                    time_left_seconds: left,
                    assignee: self.data.symbols.name(assignee).to_owned(),
                },
            )
            .collect();
        Ok(out)
    }

    /// The SLA clocks of `c` that stopped in the window breached (docs/metrics.md §10).
    fn breaches(&self, policies: &Policies, c: &Conv) -> Vec<SlaBreach> {
        let window = self.window();
        c.clocks
            .iter()
            .filter_map(|clock| {
                let (at, completed, _) = clock.stop.filter(|s| window.contains(s.0))?;
                let (policy, target) = policies.governing(c, clock)?;
                let elapsed = super::sla::elapsed(c, clock, at, target, self.schedule);
                (super::sla::judge(elapsed, target, completed).0 == crate::domain::sla::Verdict::Breached)
                    .then(|| SlaBreach {
                        metric: clock.metric,
                        policy: self.sla[policy as usize].name.clone(),
                        target_seconds: target.seconds,
                        actual_seconds: elapsed,
                        at: to_datetime(at),
                    })
            })
            .collect()
    }
    /// Conversations opened at or before `at` that are not ended as of it (a reopen counts from
    /// its time); age is `at - opened_at`, in business hours when asked.
    pub fn backlog(&self, at: Micros) -> Result<Backlog, Error> {
        let mut out = Backlog::default();
        let mut ages = Vec::new();
        self.each_in_backlog(at, |_, _, c| {
            out.open += 1;
            out.unassigned += u64::from(c.assignee_at(at) == 0);
            out.unanswered += u64::from(c.waiting_at(at));
            ages.push(self.measure(Span {
                start: c.opened_at,
                end: at,
            }));
        })?;
        out.age = DurationStats::from_values(ages, None);
        Ok(out)
    }

    /// The conversations of the backlog at `at` that match the filters, as (segment, row).
    pub fn backlog_rows(&self, at: Micros) -> Result<Vec<(usize, usize)>, Error> {
        let mut out = Vec::new();
        self.each_in_backlog(at, |s, row, _| out.push((s, row)))?;
        Ok(out)
    }

    /// Calls `f` with every conversation of the backlog at `at` that matches the filters.
    fn each_in_backlog(&self, at: Micros, mut f: impl FnMut(usize, usize, &Conv)) -> Result<(), Error> {
        let filters = Compiled::new(&self.data.symbols, &self.query.filters);
        self.each_open_at(at, |s, row, c| {
            if filters.conversation(c) {
                f(s, row, c);
            }
        })
    }

    /// Calls `f` with every conversation open at `at` (opened by then, not ended as of then).
    fn each_open_at(&self, at: Micros, mut f: impl FnMut(usize, usize, &Conv)) -> Result<(), Error> {
        let mut c = Conv::default();
        for (s, seg) in self.data.segments.iter().enumerate() {
            if !seg.bounds.open_at(at) {
                continue;
            }
            self.cancel.check()?;
            for row in 0..seg.len() {
                // Hot columns first: opened later, or over for good before `at`.
                if seg.opened_at(row) > at || seg.live_until(row) <= at {
                    continue;
                }
                seg.decode(row, Parts::All, &mut c);
                if c.state_at(at) == State::Open {
                    f(s, row, &c);
                }
            }
        }
        Ok(())
    }

    /// docs/metrics.md §5 utilization: per agent, logged-in time (online, busy or away) and the part
    /// of it during which the agent was the assignee of at least one open conversation, in the
    /// window. The agent filter picks agents; the other filters pick which conversations count
    /// as handling. Returns the agents (by id) and the team figure (sums).
    pub fn utilization(&self) -> Result<(Vec<AgentUtilization>, AgentUtilization), Error> {
        let window = self.window();
        let filters = Compiled::new(&self.data.symbols, &self.query.filters);
        let mut logged = self.logged_in();
        let mut handling = self.handling(window, &filters)?;
        let mut agents: Vec<Sym> = logged
            .keys()
            .chain(handling.keys())
            .copied()
            .filter(|a| filters.agent(*a))
            .collect();
        agents.sort_unstable();
        agents.dedup();
        let mut rows = Vec::new();
        let (mut sum_logged, mut sum_handling) = (0i64, 0i64);
        for agent in agents {
            let logged_in = clip(&merge(logged.remove(&agent).unwrap_or_default()), window);
            let handled = clip(&merge(handling.remove(&agent).unwrap_or_default()), window);
            let (l, h) = (total(&logged_in), overlap(&logged_in, &handled));
            if l == 0 && h == 0 && handled.is_empty() {
                continue;
            }
            sum_logged += l;
            sum_handling += h;
            rows.push(AgentUtilization {
                agent: self.data.symbols.name(agent).to_owned(),
                logged_in_seconds: l as f64 / 1e6,
                handling_seconds: h as f64 / 1e6,
                utilization: (l > 0).then(|| 100.0 * h as f64 / l as f64),
            });
        }
        rows.sort_by(|a, b| a.agent.cmp(&b.agent));
        let team = AgentUtilization {
            agent: String::new(),
            logged_in_seconds: sum_logged as f64 / 1e6,
            handling_seconds: sum_handling as f64 / 1e6,
            utilization: rate(sum_handling as u64, sum_logged as u64),
        };
        Ok((rows, team))
    }

    /// Logged-in intervals of every agent from the presence timeline (an agent with no event is
    /// offline; presence before the window carries into it).
    fn logged_in(&self) -> BTreeMap<Sym, Vec<Span>> {
        let mut logged: BTreeMap<Sym, Vec<Span>> = BTreeMap::new();
        // (agent, online since) of the agent whose changes are being walked.
        let mut current: Option<(Sym, Option<Micros>)> = None;
        let close =
            |logged: &mut BTreeMap<Sym, Vec<Span>>, agent: Sym, start: Option<Micros>, end: Micros| {
                if let Some(start) = start {
                    logged.entry(agent).or_default().push(Span { start, end });
                }
            };
        for p in self.data.presence.iter() {
            if let Some((agent, since)) = current.filter(|(a, _)| *a != p.agent) {
                close(&mut logged, agent, since, OPEN_END);
                current = None;
            }
            let since = current.and_then(|(_, s)| s);
            let online = p.status != Presence::Offline;
            current = Some(match (since, online) {
                (None, true) => (p.agent, Some(p.at)),
                (Some(s), false) => {
                    close(&mut logged, p.agent, Some(s), p.at);
                    (p.agent, None)
                }
                (s, _) => (p.agent, s),
            });
        }
        if let Some((agent, since)) = current {
            close(&mut logged, agent, since, OPEN_END);
        }
        logged
    }

    /// Handling intervals overlapping `window` of the conversations matching the filters (except
    /// the agent filter, which picks agents), per agent.
    fn handling(&self, window: Span, filters: &Compiled) -> Result<BTreeMap<Sym, Vec<Span>>, Error> {
        let mut handling: BTreeMap<Sym, Vec<Span>> = BTreeMap::new();
        let mut c = Conv::default();
        for seg in &self.data.segments {
            if !seg.bounds.handled_in(window.start, window.end) {
                continue;
            }
            self.cancel.check()?;
            for row in 0..seg.len() {
                if seg.active_start(row) >= window.end || seg.live_until(row) <= window.start {
                    continue;
                }
                seg.decode(row, Parts::All, &mut c);
                if !filters.conversation_except_agent(&c) {
                    continue;
                }
                for (agent, span) in &c.handling {
                    if span.end > window.start && span.start < window.end {
                        handling.entry(*agent).or_default().push(*span);
                    }
                }
            }
        }
        Ok(handling)
    }

    /// The conversations behind a conversation-level KPI, by opened_at then id, as (segment,
    /// row). Conversation filters apply (agent = the conversation's agent).
    pub fn drill_down(&self, kind: DrillDown) -> Result<Vec<(usize, usize)>, Error> {
        let window = self.window();
        let mut out: Vec<(usize, usize)> = Vec::new();
        if kind == DrillDown::Backlog {
            // Open at `to` (the backlog rule: opened at or before it, not ended as of it).
            out = self.backlog_rows(window.end)?;
        } else {
            let scan = self.scan(super::Grouping::All);
            let mut c = Conv::default();
            for (s, seg) in self.data.segments.iter().enumerate() {
                if !seg.bounds.active_in(window.start, window.end) {
                    continue;
                }
                self.cancel.check()?;
                for row in 0..seg.len() {
                    if seg.active_start(row) >= window.end || seg.active_end(row) < window.start {
                        continue;
                    }
                    seg.decode(row, Parts::Head, &mut c);
                    if scan.filters.conversation(&c) && self.drills(kind, &c, &scan) {
                        out.push((s, row));
                    }
                }
            }
        }
        let segments = &self.data.segments;
        out.sort_by(|a, b| {
            (segments[a.0].opened_at(a.1), segments[a.0].id(a.1))
                .cmp(&(segments[b.0].opened_at(b.1), segments[b.0].id(b.1)))
        });
        Ok(out)
    }

    fn drills(&self, kind: DrillDown, c: &Conv, scan: &super::scan::Scan<'_>) -> bool {
        let inside = |t: Option<Micros>| t.is_some_and(|t| scan.window.contains(t));
        match kind {
            DrillDown::Opened => inside(Some(c.opened_at)),
            DrillDown::Resolved => inside(c.resolved_at),
            DrillDown::Ended => inside(c.ended_at),
            DrillDown::Missed => {
                inside(Some(c.opened_at))
                    && c.has_customer_message
                    && c.ended_at.is_some()
                    && c.responses.is_empty()
            }
            DrillDown::Abandoned => inside(Some(c.opened_at)) && c.state == State::Abandoned,
            DrillDown::NotFcr => c.resolved_at.is_some_and(|r| {
                inside(Some(r)) && (c.reopen_count > 0 || scan.joins.repeat(c.customer, r, c.opened_at))
            }),
            DrillDown::Backlog => false,
            DrillDown::SlaBreached => !self.breaches(&scan.policies, c).is_empty(),
        }
    }

    /// The drill-down row of `row` of `seg`; `customers` names customer ids.
    pub fn drill_row(&self, seg: &Segment, row: usize, customers: &Interner) -> ConversationRow {
        let mut c = Conv::default();
        seg.decode(row, Parts::Head, &mut c);
        let symbols = &self.data.symbols;
        let name = |s: Sym| symbols.name(s).to_owned();
        let mut tags: Vec<String> = c.tags.iter().map(|t| name(*t)).collect();
        tags.sort_unstable();
        let score = |kind: SurveyType| c.surveys.iter().find(|s| s.kind == kind).map(|s| s.score);
        ConversationRow {
            conversation_id: seg.id(row).to_owned(),
            customer_id: customers.name(c.customer).to_owned(),
            channel: c.channel.as_str(),
            inbox: name(c.inbox),
            team: name(c.team),
            priority: c.priority.as_str(),
            agent: name(c.agent),
            assignee: name(c.assignee),
            tags,
            state: c.state.as_str(),
            opened_at: to_datetime(c.opened_at),
            resolved_at: c.resolved_at.map(to_datetime),
            ended_at: c.ended_at.map(to_datetime),
            first_response_seconds: c.first_response().map(|r| self.measure(r.span())),
            first_responder: c.first_response().map(|r| name(r.agent)).unwrap_or_default(),
            human_first_response_seconds: c.human_first.map(|r| self.measure(r.span())),
            wait_seconds: c.wait.map(|w| self.measure(w)),
            resolution_seconds: c.resolved_at.map(|r| {
                self.measure(Span {
                    start: c.opened_at,
                    end: r.max(c.opened_at),
                })
            }),
            duration_seconds: c.duration.map(|d| self.measure(d)),
            reopen_count: c.reopen_count,
            customer_messages: c.counts.customer,
            agent_messages: c.counts.agent,
            bot_messages: c.counts.bot,
            csat_score: score(SurveyType::Csat),
            nps_score: score(SurveyType::Nps),
            ces_score: score(SurveyType::Ces),
            reply_seconds: c.replies().iter().map(|r| self.measure(r.span())).collect(),
            sla_breaches: if self.sla.is_empty() {
                Vec::new()
            } else {
                self.breaches(&Policies::new(&self.data.symbols, self.sla), &c)
            },
        }
    }
}

fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable_by_key(|s| (s.start, s.end));
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.start <= last.end => last.end = last.end.max(s.end),
            _ => out.push(s),
        }
    }
    out
}

fn clip(spans: &[Span], window: Span) -> Vec<Span> {
    spans
        .iter()
        .map(|s| Span {
            start: s.start.max(window.start),
            end: s.end.min(window.end),
        })
        .filter(|s| s.end > s.start)
        .collect()
}

fn total(spans: &[Span]) -> i64 {
    spans.iter().map(|s| s.end - s.start).sum()
}

/// Length of the intersection of two sorted, merged span lists.
fn overlap(a: &[Span], b: &[Span]) -> i64 {
    let (mut i, mut j, mut sum) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let start = a[i].start.max(b[j].start);
        let end = a[i].end.min(b[j].end);
        sum += (end - start).max(0);
        if a[i].end < b[j].end { i += 1 } else { j += 1 }
    }
    sum
}
