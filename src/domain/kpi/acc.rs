//! Running totals of one group of items, and the groups of one part of a scan. Every aggregate
//! is order-independent, so parts scanned in parallel merge into the same answer.

use std::collections::HashMap;

use super::types::GroupKey;
use crate::domain::segment::Sym;

/// Running totals of one group (the inputs of [`super::finish`]).
#[derive(Default)]
pub(super) struct Acc {
    pub conversations: u64,
    /// Messages: received, sent, delivered, read, failed.
    pub messages: [u64; 5],
    pub frt: Vec<f64>,
    pub bot_frt: Vec<f64>,
    pub human_frt: Vec<f64>,
    pub reply: Vec<f64>,
    pub wait: Vec<f64>,
    pub resolution: Vec<f64>,
    pub duration: Vec<f64>,
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
    pub ended_messages: [u64; 3],
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
}

impl Acc {
    /// Adds another part's totals.
    pub fn merge(&mut self, o: Acc) {
        self.conversations += o.conversations;
        self.add_messages(&o.messages);
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
        self.customers.extend(o.customers);
        self.converted.extend(o.converted);
        self.attributed.extend(o.attributed);
        self.previous_customers.extend(o.previous_customers);
        for (tag, n) in o.tags {
            *self.tags.entry(tag).or_default() += n;
        }
        for (mine, theirs) in self.channels.iter_mut().zip(o.channels) {
            *mine += theirs;
        }
    }

    pub fn add_messages(&mut self, counts: &[u64; 5]) {
        for (mine, n) in self.messages.iter_mut().zip(counts) {
            *mine += n;
        }
    }
}

/// The groups of one part of a computation, with the last used group cached: consecutive items
/// of one conversation usually land in the same group.
#[derive(Default)]
pub(super) struct Groups {
    index: HashMap<GroupKey, usize>,
    accs: Vec<(GroupKey, Acc)>,
    last: Option<(GroupKey, usize)>,
}

impl Groups {
    pub fn get(&mut self, key: GroupKey) -> &mut Acc {
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

    pub fn merge(mut self, other: Groups) -> Groups {
        for (key, acc) in other.accs {
            self.get(key).merge(acc);
        }
        self
    }

    pub fn into_sorted(self) -> Vec<(GroupKey, Acc)> {
        let mut accs = self.accs;
        accs.sort_by_key(|(k, _)| *k);
        accs
    }
}
