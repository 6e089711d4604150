//! Running totals of one group of items, and the groups of one part of a scan. Every aggregate
//! is order-independent, so parts scanned in parallel merge into the same answer.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use rayon::prelude::*;

use super::GroupKey;
use crate::domain::facts::MessageCounts;
use crate::engine::{
    segment::{MessageTotals, Sym},
    stats::Durations,
};

/// Running totals of one group (the inputs of [`super::finish`]).
#[derive(Default, Clone)]
pub(super) struct Acc {
    pub conversations: u64,
    pub messages: MessageTotals,
    pub frt: Durations,
    pub bot_frt: Durations,
    pub human_frt: Durations,
    pub reply: Durations,
    pub wait: Durations,
    pub resolution: Durations,
    pub duration: Durations,
    pub resolved: u64,
    pub resolutions: u64,
    pub fcr: u64,
    pub repeat: u64,
    pub reopened: u64,
    pub with_customer_message: u64,
    pub missed: u64,
    pub abandoned: u64,
    pub ended: u64,
    /// Counted messages of ended conversations: customer, agent, bot.
    pub ended_messages: EndedMessages,
    /// CSAT answers as (score, scale min, scale max).
    pub csat: Vec<(i32, i32, i32)>,
    pub nps: Vec<i32>,
    /// CES answers mapped to 1-7.
    pub ces: Vec<f64>,
    /// `survey_sent` events: CSAT, NPS, CES.
    pub surveys_sent: [u64; 3],
    pub no_human_resolved: u64,
    pub bot_resolutions: u64,
    pub bot_involved: u64,
    pub bot_and_human: u64,
    /// Customers of the conversations opened in the window (with repeats).
    pub customers: Vec<u32>,
    /// Of them, customers with an attributed conversion (with repeats).
    pub converted: Vec<u32>,
    /// Attributed conversions (indexes into the computation's conversions, with repeats).
    pub attributed: Vec<u32>,
    /// Customers of the conversations opened in the window before (with repeats).
    pub previous_customers: Vec<u32>,
    pub tags: HashMap<Sym, u64>,
    pub channels: [u64; 9],
    /// SLA clocks judged, per metric (first response, next response, resolution).
    pub sla: [SlaAcc; 3],
}

/// SLA clocks of one metric judged in a group.
#[derive(Default, Clone)]
pub(super) struct SlaAcc {
    pub achieved: u64,
    pub breached: u64,
    /// Seconds over target of the breached ones.
    pub over: Durations,
}

impl SlaAcc {
    fn merge(&mut self, o: &SlaAcc) {
        let SlaAcc {
            achieved,
            breached,
            over,
        } = o;
        self.achieved += achieved;
        self.breached += breached;
        self.over.merge(over);
    }
}

impl Acc {
    /// Adds another part's totals. `o` is taken apart field by field, so a field added to
    /// [`Acc`] and left out here does not compile (it would under-count when parts merge).
    pub fn merge(&mut self, o: &Acc) {
        // Every field, one list kept compact (rustfmt would give each its own line).
        #[rustfmt::skip]
        let Acc {
            conversations, messages, frt, bot_frt, human_frt, reply, wait, resolution, duration,
            resolved, resolutions, fcr, repeat, reopened, with_customer_message, missed,
            abandoned, ended, ended_messages, csat, nps, ces, surveys_sent, no_human_resolved,
            bot_resolutions, bot_involved, bot_and_human, customers, converted, attributed,
            previous_customers, tags, channels, sla,
        } = o;
        for (mine, theirs) in [
            (&mut self.conversations, conversations),
            (&mut self.resolved, resolved),
            (&mut self.resolutions, resolutions),
            (&mut self.fcr, fcr),
            (&mut self.repeat, repeat),
            (&mut self.reopened, reopened),
            (&mut self.with_customer_message, with_customer_message),
            (&mut self.missed, missed),
            (&mut self.abandoned, abandoned),
            (&mut self.ended, ended),
            (&mut self.no_human_resolved, no_human_resolved),
            (&mut self.bot_resolutions, bot_resolutions),
            (&mut self.bot_involved, bot_involved),
            (&mut self.bot_and_human, bot_and_human),
        ] {
            *mine += theirs;
        }
        self.add_messages(messages);
        for (mine, theirs) in [
            (&mut self.frt, frt),
            (&mut self.bot_frt, bot_frt),
            (&mut self.human_frt, human_frt),
            (&mut self.reply, reply),
            (&mut self.wait, wait),
            (&mut self.resolution, resolution),
            (&mut self.duration, duration),
        ] {
            mine.merge(theirs);
        }
        self.ended_messages.add(ended_messages);
        for (mine, theirs) in self.surveys_sent.iter_mut().zip(surveys_sent) {
            *mine += theirs;
        }
        self.csat.extend_from_slice(csat);
        self.nps.extend_from_slice(nps);
        self.ces.extend_from_slice(ces);
        for (mine, theirs) in [
            (&mut self.customers, customers),
            (&mut self.converted, converted),
            (&mut self.attributed, attributed),
            (&mut self.previous_customers, previous_customers),
        ] {
            mine.extend_from_slice(theirs);
        }
        for (tag, n) in tags {
            *self.tags.entry(*tag).or_default() += n;
        }
        for (mine, theirs) in self.channels.iter_mut().zip(channels) {
            *mine += theirs;
        }
        for (mine, theirs) in self.sla.iter_mut().zip(sla) {
            mine.merge(theirs);
        }
    }

    /// Drops spare capacity and repeated customers and conversions (before the totals are
    /// kept: every customer list is read as a set, [`super::finish`]); bins durations from
    /// `bin_from` values on ([`crate::engine::stats::BIN_FROM`]).
    pub fn shrink(&mut self, bin_from: usize) {
        for d in self.durations_mut() {
            d.shrink(bin_from);
        }
        for s in &mut self.sla {
            s.over.shrink(bin_from);
        }
        self.csat.shrink_to_fit();
        self.nps.shrink_to_fit();
        self.ces.shrink_to_fit();
        for set in [
            &mut self.customers,
            &mut self.converted,
            &mut self.attributed,
            &mut self.previous_customers,
        ] {
            // Merged totals hold their parts' sorted lists one after another: the stable sort
            // merges such runs in linear time where the unstable one sorts from scratch.
            set.sort();
            set.dedup();
            set.shrink_to_fit();
        }
        self.tags.shrink_to_fit();
    }

    fn durations(&self) -> [&Durations; 7] {
        [
            &self.frt,
            &self.bot_frt,
            &self.human_frt,
            &self.reply,
            &self.wait,
            &self.resolution,
            &self.duration,
        ]
    }

    fn durations_mut(&mut self) -> [&mut Durations; 7] {
        [
            &mut self.frt,
            &mut self.bot_frt,
            &mut self.human_frt,
            &mut self.reply,
            &mut self.wait,
            &mut self.resolution,
            &mut self.duration,
        ]
    }

    /// The totals of `parts` together. Space for all of them is made first, so values are
    /// copied once (into a histogram straight away when a KPI has more values than stay exact).
    fn merge_all(parts: &[&Acc]) -> Acc {
        let mut all = Acc::default();
        for (i, d) in all.durations_mut().into_iter().enumerate() {
            d.prepare(parts.iter().map(|p| p.durations()[i].count()).sum());
        }
        let total = |list: fn(&Acc) -> usize| parts.iter().map(|p| list(p)).sum::<usize>();
        all.customers.reserve(total(|a| a.customers.len()));
        all.converted.reserve(total(|a| a.converted.len()));
        all.attributed.reserve(total(|a| a.attributed.len()));
        all.previous_customers
            .reserve(total(|a| a.previous_customers.len()));
        for p in parts {
            all.merge(p);
        }
        all
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.durations().iter().map(|d| d.heap_bytes()).sum::<usize>()
            + self.csat.capacity() * 12
            + (self.nps.capacity() + self.customers.capacity() + self.converted.capacity()) * 4
            + (self.attributed.capacity() + self.previous_customers.capacity()) * 4
            + self.ces.capacity() * 8
            + self.tags.capacity() * 24
            + self.sla.iter().map(|s| s.over.heap_bytes()).sum::<usize>()
            + std::mem::size_of::<Acc>()
    }

    pub fn add_messages(&mut self, counts: &MessageTotals) {
        self.messages.add(counts);
    }
}

/// Counted messages of ended conversations per sender (messages per chat, docs/metrics.md §5).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct EndedMessages {
    pub customer: u64,
    pub agent: u64,
    pub bot: u64,
}

impl EndedMessages {
    pub fn add(&mut self, o: &EndedMessages) {
        let EndedMessages { customer, agent, bot } = o;
        self.customer += customer;
        self.agent += agent;
        self.bot += bot;
    }

    pub fn count(&mut self, c: MessageCounts) {
        self.customer += u64::from(c.customer);
        self.agent += u64::from(c.agent);
        self.bot += u64::from(c.bot);
    }

    pub fn total(&self) -> u64 {
        self.customer + self.agent + self.bot
    }
}

/// The memory one computation may spend on groups and their tag counts, shared by every part
/// it scans in parallel (README, Limits: a question whose groups would not fit is refused with
/// RESOURCE_EXHAUSTED instead of growing the server without bound: a breakdown by tag of
/// conversations carrying many tags grows with the square of their tags).
///
/// What is charged is what a computation holds at once: a chunk's totals are charged while it
/// is scanned and released when they are complete ([`Groups::settle`]: kept, they weigh in the
/// cache's budget), a day's totals merged from them are charged whole. (Charged for good, a 10 M
/// conversation tenant's 2,442 chunks of 60 agents each refused its breakdown by agent.)
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// Once over, a computation stays refused: a part cut short leaves incomplete totals, even
    /// if charges released later bring the count back under the limit.
    tripped: std::sync::atomic::AtomicBool,
}

/// Bytes charged for a new group (its totals and index entry).
pub(super) const GROUP_BYTES: usize = std::mem::size_of::<(GroupKey, Acc)>() + 48;
/// Bytes charged for a new tag count of a group.
pub(super) const TAG_BYTES: usize = 32;

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            tripped: false.into(),
        }
    }

    /// Adds `bytes`; whether the budget still holds.
    pub fn charge(&self, bytes: usize) -> bool {
        let holds = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes <= self.limit;
        if !holds {
            self.tripped.store(true, Ordering::Relaxed);
        }
        holds
    }

    /// Gives back `bytes` charged before (what they counted is no longer held by the
    /// computation).
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn exceeded(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The groups of one part of a computation, with the last used group cached: consecutive items
/// of one conversation usually land in the same group.
#[derive(Default, Clone)]
pub(super) struct Groups {
    index: HashMap<GroupKey, usize>,
    accs: Vec<(GroupKey, Acc)>,
    last: Option<(GroupKey, usize)>,
    /// Where new groups and tag counts are charged (none: unbounded, for merged totals whose
    /// parts were charged).
    budget: Option<Arc<Budget>>,
}

impl Groups {
    /// Groups that charge `budget` for what they add.
    pub fn charging(budget: &Arc<Budget>) -> Self {
        Self {
            budget: Some(budget.clone()),
            ..Self::default()
        }
    }

    pub fn get(&mut self, key: GroupKey) -> &mut Acc {
        let i = match self.last {
            Some((k, i)) if k == key => i,
            _ => {
                let accs = &mut self.accs;
                let budget = &self.budget;
                let i = *self.index.entry(key).or_insert_with(|| {
                    if let Some(b) = budget {
                        b.charge(GROUP_BYTES);
                    }
                    accs.push((key, Acc::default()));
                    accs.len() - 1
                });
                self.last = Some((key, i));
                i
            }
        };
        &mut self.accs[i].1
    }

    /// Moves one resolution counted in group `key` to the verdict `repeat` (docs/metrics.md §5:
    /// a repeat contact is not first-contact resolved; a reopened one never is): see
    /// [`super::ledger`].
    pub fn rejudge(&mut self, key: GroupKey, reopened: bool, repeat: bool) {
        let a = self.get(key);
        if repeat {
            a.repeat += 1;
            if !reopened {
                a.fcr = a.fcr.saturating_sub(1);
            }
        } else {
            a.repeat = a.repeat.saturating_sub(1);
            if !reopened {
                a.fcr += 1;
            }
        }
    }

    /// Applies verdicts judged again since these groups were counted, in the order judged.
    pub fn replay(&mut self, moved: &[super::ledger::Moved]) {
        for m in moved {
            self.rejudge(m.key, m.reopened, m.repeat);
        }
    }

    /// Charges `bytes` more to the budget (a new tag count: [`TAG_BYTES`] each). Nothing to
    /// charge touches nothing: the budget is one atomic shared by the parts scanned in
    /// parallel, and charging every conversation's usual zero made the cores trade its cache
    /// line (13 % of a cold 10 M overview's CPU, BENCHMARKS.md).
    pub fn charge(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        if let Some(b) = &self.budget {
            b.charge(bytes);
        }
    }

    /// Complete totals leave the computation's hands (kept in the cache, which weighs them, or
    /// merged into totals charged on their own): their charge, [`Groups::budgeted_bytes`] (each
    /// group and tag count was charged when it was added), is released and they charge no more.
    pub fn settle(&mut self) {
        if let Some(b) = self.budget.take() {
            b.release(self.budgeted_bytes());
        }
    }

    /// Whether the computation's budget is spent: its scan stops.
    pub fn over_budget(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.exceeded())
    }

    /// The groups of every part together, each group merged on its own thread.
    pub fn merge_all(parts: &[&Groups]) -> Groups {
        let mut keys: Vec<GroupKey> = Vec::new();
        let mut seen: HashSet<GroupKey> = HashSet::new();
        for part in parts {
            for (key, _) in &part.accs {
                if seen.insert(*key) {
                    keys.push(*key);
                }
            }
        }
        let accs: Vec<(GroupKey, Acc)> = keys
            .into_par_iter()
            .map(|key| {
                let of_key: Vec<&Acc> = parts
                    .iter()
                    .filter_map(|part| part.index.get(&key).map(|i| &part.accs[*i].1))
                    .collect();
                (key, Acc::merge_all(&of_key))
            })
            .collect();
        Groups::from_accs(accs)
    }

    /// Drops spare capacity (before the totals are kept); see [`Acc::shrink`].
    pub fn shrink(&mut self, bin_from: usize) {
        for (_, acc) in &mut self.accs {
            acc.shrink(bin_from);
        }
        self.accs.shrink_to_fit();
        self.index.shrink_to_fit();
    }

    /// What the budget counts of these groups: each group and each of its tag counts.
    pub fn budgeted_bytes(&self) -> usize {
        self.accs
            .iter()
            .map(|(_, a)| GROUP_BYTES + a.tags.len() * TAG_BYTES)
            .sum()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.accs.iter().map(|(_, a)| a.heap_bytes()).sum::<usize>() + self.index.capacity() * 32
    }

    /// The groups, in the order they were added.
    pub fn accs(&self) -> &[(GroupKey, Acc)] {
        &self.accs
    }

    /// Groups of these totals (distinct keys), charging nothing (restored kept totals,
    /// [`super::stored`]).
    pub fn from_accs(accs: Vec<(GroupKey, Acc)>) -> Groups {
        Groups {
            index: accs.iter().enumerate().map(|(i, (key, _))| (*key, i)).collect(),
            accs,
            last: None,
            budget: None,
        }
    }

    pub fn into_sorted(self) -> Vec<(GroupKey, Acc)> {
        let mut accs = self.accs;
        accs.sort_by_key(|(k, _)| *k);
        accs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_totals_give_their_charge_back_so_many_small_parts_fit_the_budget() {
        let budget = Arc::new(Budget::new(3 * GROUP_BYTES));
        // Ten parts of two groups each: 20 groups charged in all, at most 2 held at once.
        for _ in 0..10 {
            let mut part = Groups::charging(&budget);
            part.get(GroupKey::Bucket(1));
            part.get(GroupKey::Bucket(2));
            part.settle();
        }
        assert!(!budget.exceeded());
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_budget_once_exceeded_stays_exceeded_after_releases() {
        let budget = Arc::new(Budget::new(3 * GROUP_BYTES));
        let mut part = Groups::charging(&budget);
        for bucket in 0..4 {
            part.get(GroupKey::Bucket(bucket));
        }
        assert!(part.over_budget());
        // The part was cut short: releasing its charge must not make its totals look whole.
        part.settle();
        assert!(budget.exceeded());
    }
}
