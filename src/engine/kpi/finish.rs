//! From a group's running totals to its KPIs (docs/metrics.md §5): duration statistics, rates,
//! survey scores, conversion, retention, tag and channel shares.

use std::collections::BTreeMap;

use super::{
    Ces, ConversionKpis, ConversionRec, Csat, Kpis, MAX_TAG_SHARES, Nps, Retention, SlaKpis, SlaStats, Sym,
    acc::{Acc, SlaAcc},
};
use crate::domain::event::Channel;
use crate::engine::{
    intern::Interner,
    segment::MessageTotals,
    stats::{Durations, mean, rate},
};

/// A group's KPIs and its distinct customers (sorted, when asked for), which a time series' next
/// bucket needs for its retention.
pub(super) struct Finished {
    pub kpis: Kpis,
    pub customers: Vec<u32>,
}

/// KPIs of one group, with its distinct customers listed when `list_customers` (a series).
/// Within-target shares were counted as items were added (the scan knows the targets).
pub(super) fn finish(
    mut a: Acc,
    symbols: &Interner,
    conversions: &[ConversionRec],
    list_customers: bool,
) -> Finished {
    let MessageTotals {
        received,
        sent,
        delivered,
        read,
        failed,
    } = a.messages;
    let mut k = Kpis {
        conversations: a.conversations,
        messages_received: received,
        messages_sent: sent,
        messages_delivered: delivered,
        messages_read: read,
        messages_failed: failed,
        delivery_rate: rate(delivered, sent),
        read_rate: rate(read, delivered),
        first_response: std::mem::take(&mut a.frt).stats(false),
        bot_first_response: std::mem::take(&mut a.bot_frt).stats(true),
        human_first_response: std::mem::take(&mut a.human_frt).stats(true),
        reply: std::mem::take(&mut a.reply).stats(false),
        wait: std::mem::take(&mut a.wait).stats(false),
        resolution: std::mem::take(&mut a.resolution).stats(true),
        duration: std::mem::take(&mut a.duration).stats(false),
        resolved: a.resolved,
        resolutions: a.resolutions,
        fcr_rate: rate(a.fcr, a.resolved),
        repeat_contact_rate: rate(a.repeat, a.resolved),
        reopen_rate: rate(a.reopened, a.resolved),
        missed: a.missed,
        missed_rate: rate(a.missed, a.with_customer_message),
        abandoned: a.abandoned,
        ended: a.ended,
        messages_per_chat: mean(a.ended_messages.total() as f64, a.ended),
        customer_messages_per_chat: mean(a.ended_messages.customer as f64, a.ended),
        agent_messages_per_chat: mean(a.ended_messages.agent as f64, a.ended),
        bot_messages_per_chat: mean(a.ended_messages.bot as f64, a.ended),
        automation_rate: rate(a.no_human_resolved, a.resolved),
        bot_resolutions: a.bot_resolutions,
        bot_handoff_rate: rate(a.bot_and_human, a.bot_involved),
        ..Kpis::default()
    };
    k.csat = csat(std::mem::take(&mut a.csat), a.surveys_sent[0]);
    k.nps = nps(&a.nps, a.surveys_sent[1]);
    k.ces = ces(std::mem::take(&mut a.ces), a.surveys_sent[2]);
    let (customers, customer_bits) = distinct(std::mem::take(&mut a.customers), list_customers);
    let distinct_customers = match &customer_bits {
        Some(bits) => ones(bits) as usize,
        None => customers.len(),
    };
    k.conversion = conversion(distinct_customers, &mut a, symbols, conversions);
    let previous = std::mem::take(&mut a.previous_customers);
    k.retention = match customer_bits {
        Some(bits) => retention_in(&previous, &bits),
        None => retention(sorted_distinct(previous), &customers),
    };
    (k.tags, k.tags_omitted) = tags(&a, symbols);
    k.channels = Channel::ALL
        .iter()
        .filter(|c| a.channels[**c as usize] > 0)
        .map(|c| {
            let n = a.channels[*c as usize];
            (*c, n, rate(n, a.conversations))
        })
        .collect();
    k.sla = sla(std::mem::take(&mut a.sla));
    Finished { kpis: k, customers }
}

/// SLA figures per metric and over all three (docs/metrics.md §10).
fn sla(per_metric: [SlaAcc; 3]) -> SlaKpis {
    let stats = |achieved: u64, breached: u64, over: Durations| SlaStats {
        achieved,
        breached,
        breach_rate: rate(breached, achieved + breached),
        over_target: over.stats(false),
    };
    let mut all = Durations::default();
    for m in &per_metric {
        all.merge(&m.over);
    }
    let (achieved, breached) = per_metric
        .iter()
        .fold((0, 0), |(a, b), m| (a + m.achieved, b + m.breached));
    let [first, next, resolution] = per_metric.map(|m| stats(m.achieved, m.breached, m.over));
    SlaKpis {
        first_response: first,
        next_response: next,
        resolution,
        overall: stats(achieved, breached, all),
    }
}

/// Retention (docs/metrics.md §5): the share of `previous` customers (sorted, distinct) found in
/// `current` (sorted, distinct).
pub(super) fn retention(previous: Vec<u32>, current: &[u32]) -> Retention {
    // Both sorted: one walk through both.
    let (mut retained, mut i, mut j) = (0u64, 0, 0);
    while i < previous.len() && j < current.len() {
        match previous[i].cmp(&current[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                retained += 1;
                i += 1;
                j += 1;
            }
        }
    }
    Retention {
        previous_customers: previous.len() as u64,
        retained,
        rate: rate(retained, previous.len() as u64),
    }
}

/// Retention as [`retention`] does, of `previous` customers (with repeats) against `current`,
/// the current customers one bit each: the previous customers are set in a bitset of their own
/// (no sorting, no branch per id) and both counts are popcounts (a dashboard's overview with a
/// history before its window does this on every call).
fn retention_in(previous: &[u32], current: &[u64]) -> Retention {
    let universe = previous.iter().max().map_or(0, |m| *m as usize + 1);
    let mut seen = vec![0u64; universe.div_ceil(64)];
    for id in previous {
        seen[*id as usize / 64] |= 1u64 << (id % 64);
    }
    let distinct = ones(&seen);
    let retained: u64 = seen
        .iter()
        .zip(current)
        .map(|(p, c)| u64::from((p & c).count_ones()))
        .sum();
    Retention {
        previous_customers: distinct,
        retained,
        rate: rate(retained, distinct),
    }
}

/// Distinct ids of `v`, sorted. Customer ids are dense (interned in arrival order), so a list
/// that is large next to its largest id goes through a bitset in linear time; a sparse one is
/// sorted.
fn sorted_distinct(v: Vec<u32>) -> Vec<u32> {
    distinct(v, true).0
}

/// [`sorted_distinct`], with the bitset the ids went through when they were dense; when they
/// were and `list` is false, the list is left empty (the bitset says it all: a 30-day
/// overview of a 10 M conversation tenant needs its customers counted, not listed).
fn distinct(mut v: Vec<u32>, list: bool) -> (Vec<u32>, Option<Vec<u64>>) {
    let universe = v.iter().max().map_or(0, |m| *m as usize + 1);
    if universe / 64 > v.len() * 4 {
        v.sort_unstable();
        v.dedup();
        return (v, None);
    }
    let mut bits = vec![0u64; universe.div_ceil(64)];
    for id in &v {
        bits[*id as usize / 64] |= 1 << (id % 64);
    }
    v.clear();
    if list {
        v = listed(&bits, v);
    }
    (v, Some(bits))
}

/// The ids set in `bits`, in order, into `v` (emptied first).
fn listed(bits: &[u64], mut v: Vec<u32>) -> Vec<u32> {
    v.clear();
    v.extend(ids_in(bits));
    v
}

/// The ids set in `bits`, in order.
fn ids_in(bits: &[u64]) -> impl Iterator<Item = u32> + '_ {
    bits.iter().enumerate().flat_map(|(w, word)| {
        let mut rest = *word;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let id = (w * 64) as u32 + rest.trailing_zeros();
                rest &= rest - 1;
                id
            })
        })
    })
}

/// How many ids of `bits` are set.
fn ones(bits: &[u64]) -> u64 {
    bits.iter().map(|w| u64::from(w.count_ones())).sum()
}

/// How many distinct ids `v` holds, without listing them.
fn count_distinct(v: Vec<u32>) -> u64 {
    match distinct(v, false) {
        (_, Some(bits)) => ones(&bits),
        (list, None) => list.len() as u64,
    }
}

/// Calls `f` with each distinct id of `v` once, in ascending order; returns how many there were.
fn each_distinct(v: Vec<u32>, mut f: impl FnMut(u32)) -> u64 {
    let (list, bits) = distinct(v, false);
    let mut visited = 0;
    let mut visit = |id| {
        f(id);
        visited += 1;
    };
    match bits {
        Some(bits) => ids_in(&bits).for_each(&mut visit),
        None => list.iter().for_each(|id| visit(*id)),
    }
    visited
}

/// CSAT: satisfied = normalized score >= 0.75; mean mapped to 1-5. Sums run over sorted
/// values, so the result does not depend on the order items were visited in.
///
/// Answers are counted per distinct (score, scale) first, then summed in sorted order, each
/// value once per answer: the same additions in the same order as over the sorted answers, so
/// the same bits, without sorting them (a 10 M conversation tenant's 30-day overview spent two
/// fifths of its time sorting a million answers).
fn csat(answers: Vec<(i32, i32, i32)>, sent: u64) -> Csat {
    let distribution = counted(answers.iter().copied());
    let (mut satisfied, mut sum) = (0, 0.0);
    for ((score, min, max), count) in &distribution {
        let n = f64::from(score - min) / f64::from(max - min);
        if n >= 0.75 {
            satisfied += count;
        }
        sum = repeated_sum(sum, 1.0 + 4.0 * n, *count);
    }
    let responses = answers.len() as u64;
    Csat {
        responses,
        mean_score: mean(sum, responses),
        satisfied_percent: rate(satisfied, responses),
        satisfied,
        distribution: distribution
            .into_iter()
            .map(|((s, lo, hi), n)| (s, lo, hi, n))
            .collect(),
        sent,
        response_rate: rate(responses, sent),
    }
}

/// NPS: promoters 9-10, detractors 0-6.
fn nps(scores: &[i32], sent: u64) -> Nps {
    let promoters = scores.iter().filter(|s| **s >= 9).count() as u64;
    let detractors = scores.iter().filter(|s| **s <= 6).count() as u64;
    let n = scores.len() as u64;
    Nps {
        responses: n,
        promoters,
        passives: n - promoters - detractors,
        detractors,
        score: (n > 0).then(|| 100.0 * (promoters as f64 - detractors as f64) / n as f64),
        sent,
        response_rate: rate(n, sent),
    }
}

/// CES: mean of the answers mapped to 1-7 (summed in sorted order: counted per distinct value,
/// as [`csat`]).
fn ces(answers: Vec<f64>, sent: u64) -> Ces {
    let mut values: Vec<(f64, u64)> = counted(answers.iter().map(|v| v.to_bits()))
        .into_iter()
        .map(|(b, n)| (f64::from_bits(b), n))
        .collect();
    values.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let sum = values.iter().fold(0.0, |sum, (v, n)| repeated_sum(sum, *v, *n));
    let responses = answers.len() as u64;
    Ces {
        responses,
        mean_score: mean(sum, responses),
        sent,
        response_rate: rate(responses, sent),
    }
}

/// How many times each value occurs, by value (a hash count: answers take a few distinct
/// values).
fn counted<T: std::hash::Hash + Eq + Ord>(values: impl Iterator<Item = T>) -> BTreeMap<T, u64> {
    let mut counts: hashbrown::HashMap<T, u64> = hashbrown::HashMap::default();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// `sum` plus `value` added `count` times, one addition at a time (not `count * value`, which
/// rounds differently).
fn repeated_sum(mut sum: f64, value: f64, count: u64) -> f64 {
    for _ in 0..count {
        sum += value;
    }
    sum
}

/// Conversion rate and revenue: distinct customers of the group's openers, those of them with
/// an attributed conversion, and each attributed conversion's value once (docs/metrics.md §5).
fn conversion(
    customers: usize,
    a: &mut Acc,
    symbols: &Interner,
    conversions: &[ConversionRec],
) -> ConversionKpis {
    let converted = count_distinct(std::mem::take(&mut a.converted));
    // Values are at most 10^15 each (validation): an i128 sum cannot overflow, and the total
    // stays exact up to i64::MAX, where it saturates (about 9,000 maximal sales). Summed per
    // currency symbol and named once at the end, ids counted without listing them: a string
    // per attributed conversion and lists made only to be counted were a tenth of the live
    // tenant's server time (BENCHMARKS.md, "Live tenants", session 24).
    let mut by_currency: BTreeMap<Sym, i128> = BTreeMap::new();
    let attributed = each_distinct(std::mem::take(&mut a.attributed), |i| {
        let c = &conversions[i as usize];
        if let Some(v) = c.value_minor {
            *by_currency.entry(c.currency).or_default() += i128::from(v);
        }
    });
    let mut revenue: Vec<(String, i128)> = by_currency
        .into_iter()
        .map(|(currency, sum)| (symbols.name(currency).to_owned(), sum))
        .collect();
    revenue.sort_unstable_by(|x, y| x.0.cmp(&y.0));
    ConversionKpis {
        customers: customers as u64,
        converted,
        rate: rate(converted, customers as u64),
        revenue,
        conversions: attributed,
    }
}

/// Per tag: conversations carrying it and their share, by conversations descending then name,
/// the first [`MAX_TAG_SHARES`] of them; and how many tags were left out (docs/metrics.md §5).
fn tags(a: &Acc, symbols: &Interner) -> (Vec<(String, u64, Option<f64>)>, u64) {
    let mut tags: Vec<(&str, u64)> = a.tags.iter().map(|(t, n)| (symbols.name(*t), *n)).collect();
    tags.sort_unstable_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(y.0)));
    let omitted = tags.len().saturating_sub(MAX_TAG_SHARES) as u64;
    let listed = tags
        .into_iter()
        .take(MAX_TAG_SHARES)
        .map(|(t, n)| (t.to_owned(), n, rate(n, a.conversations)))
        .collect();
    (listed, omitted)
}

#[cfg(test)]
mod tests {
    use super::{
        ces, count_distinct, csat, distinct, each_distinct, retention, retention_in, sorted_distinct,
    };

    #[test]
    fn csat_and_ces_means_are_the_sorted_sums_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Two scales and scores spread over them; CES answers on 1-7 with fractions.
        let answers: Vec<(i32, i32, i32)> = (0..20_000)
            .map(|_| match rng.random_range(0..2) {
                0 => (rng.random_range(1..=5), 1, 5),
                _ => (rng.random_range(0..=10), 0, 10),
            })
            .collect();
        let mut sorted = answers.clone();
        sorted.sort_unstable();
        let by_sort: f64 = sorted
            .iter()
            .map(|(s, lo, hi)| 1.0 + 4.0 * f64::from(s - lo) / f64::from(hi - lo))
            .sum();
        let expected = by_sort / sorted.len() as f64;
        assert_eq!(
            csat(answers, 0).mean_score.map(f64::to_bits),
            Some(expected.to_bits())
        );

        let values: Vec<f64> = (0..20_000)
            .map(|_| 1.0 + f64::from(rng.random_range(0..60)) / 10.0)
            .collect();
        let mut sorted = values.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        let expected = sorted.iter().sum::<f64>() / sorted.len() as f64;
        assert_eq!(
            ces(values, 0).mean_score.map(f64::to_bits),
            Some(expected.to_bits())
        );
    }

    /// `n` random ids below `universe` (with repeats), and their distinct ids in order as a
    /// `BTreeSet` gives them (the independent computation the tests compare with).
    fn random_ids(rng: &mut impl rand::Rng, n: usize, universe: u32) -> (Vec<u32>, Vec<u32>) {
        let v: Vec<u32> = (0..n).map(|_| rng.random_range(0..universe)).collect();
        let distinct: std::collections::BTreeSet<u32> = v.iter().copied().collect();
        (v, distinct.into_iter().collect())
    }

    #[test]
    fn distinct_ids_are_the_same_through_the_bitset_and_the_sort() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        // Dense (bitset) and sparse (sort) lists, with repeats.
        for (n, universe) in [(0, 1), (1, 1), (5_000, 3_000), (5_000, 10_000_000), (100, 70)] {
            let (v, expected) = random_ids(&mut rng, n, universe);
            assert_eq!(sorted_distinct(v), expected, "n={n} universe={universe}");
        }
    }

    #[test]
    fn distinct_ids_are_counted_and_visited_once_each_in_order_through_either_path() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for (n, universe) in [(0, 1), (3, 1), (5_000, 3_000), (5_000, 10_000_000)] {
            let (v, expected) = random_ids(&mut rng, n, universe);
            let mut visited = Vec::new();
            let count = each_distinct(v.clone(), |id| visited.push(id));
            assert_eq!((count, &visited), (expected.len() as u64, &expected));
            assert_eq!(count_distinct(v), expected.len() as u64, "n={n}");
        }
    }

    /// The one-pass bitset retention equals the sorted walk, with repeats and ids past the
    /// current customers' largest.
    #[test]
    fn bitset_retention_equals_the_sorted_walk() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut compared = 0;
        for _ in 0..200 {
            let universe = rng.random_range(1..5_000u32);
            let current: Vec<u32> = (0..rng.random_range(0..3_000))
                .map(|_| rng.random_range(0..universe))
                .collect();
            let previous: Vec<u32> = (0..rng.random_range(0..3_000))
                .map(|_| rng.random_range(0..universe + 500))
                .collect();
            let (sorted, bits) = distinct(current, true);
            let expected = retention(sorted_distinct(previous.clone()), &sorted);
            if let Some(bits) = bits {
                assert_eq!(retention_in(&previous, &bits), expected);
                compared += 1;
            }
        }
        assert!(compared > 150, "only {compared} dense cases");
    }
}
