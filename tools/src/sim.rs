//! A deterministic helpdesk simulator: realistic event streams for demos, tests and benchmarks.
//!
//! For a seed and settings it always produces the same events. The stream covers every event
//! type: several channels and inboxes, an auto-acknowledgement, bots that answer first and either
//! resolve or hand off, agents working shifts (presence events), assignments, tags, private
//! notes, reopens days later, abandoned chats, CSAT / NPS / CES surveys (some CSAT on 1-10),
//! WhatsApp delivery receipts (a few arriving before their message) and conversions.
//!
//! Events are produced one simulated day at a time (conversations opened that day, agent shifts
//! of that day, sorted by time with a small share arriving late), so memory stays bounded by
//! one day of traffic whatever the total size.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

use chatkpi::domain::event::*;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub conversations: u64,
    pub days: u32,
    pub seed: u64,
    /// First day (UTC midnight).
    pub start: NaiveDate,
    pub agents: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            conversations: 1000,
            days: 7,
            seed: 1,
            start: NaiveDate::from_ymd_opt(2026, 1, 5).expect("valid date"),
            agents: 20,
        }
    }
}

const TAGS: &[&str] = &[
    "billing", "refund", "shipping", "bug", "account", "vip", "feedback",
];
const TEAMS: &[&str] = &["support", "billing", "sales"];
/// (channel, weight in %)
const CHANNELS: &[(Channel, u32)] = &[
    (Channel::Whatsapp, 40),
    (Channel::Webchat, 25),
    (Channel::Email, 15),
    (Channel::Messenger, 8),
    (Channel::Instagram, 5),
    (Channel::Sms, 3),
    (Channel::Telegram, 2),
    (Channel::Voice, 2),
];
/// Relative traffic per hour of the day (UTC): quiet nights, busy office hours.
const HOURLY: [u32; 24] = [
    1, 1, 1, 1, 1, 2, 4, 7, 10, 12, 12, 11, 10, 11, 12, 12, 11, 9, 7, 6, 5, 4, 2, 1,
];

/// Simulates everything at once (small sizes: tests, examples).
pub fn simulate(config: &SimConfig) -> Vec<Event> {
    let mut all = Vec::new();
    for_each_day(config, |chunk| all.extend(chunk));
    all
}

/// Calls `emit` once per simulated day with that day's events, in (mostly) time order.
pub fn for_each_day(config: &SimConfig, mut emit: impl FnMut(Vec<Event>)) {
    let days = config.days.max(1) as u64;
    let base = Utc.from_utc_datetime(&config.start.and_hms_opt(0, 0, 0).expect("midnight"));
    for day in 0..days {
        let day_start = base + Duration::days(day as i64);
        let from = config.conversations * day / days;
        let to = config.conversations * (day + 1) / days;
        let mut events = shifts(config, day_start);
        for i in from..to {
            let mut rng = StdRng::seed_from_u64(config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
            Conversation::new(config, i, day_start, &mut rng).play(&mut rng, &mut events);
        }
        events.sort_by(|a, b| {
            a.occurred_at
                .cmp(&b.occurred_at)
                .then_with(|| a.event_id.cmp(&b.event_id))
        });
        // About 1 % of events arrive late (webhook retries): moved a little further down.
        let mut rng = StdRng::seed_from_u64(config.seed ^ (day << 32));
        let n = events.len();
        for _ in 0..n / 100 {
            let i = rng.random_range(0..n);
            let j = (i + rng.random_range(1..50)).min(n - 1);
            events.swap(i, j);
        }
        emit(events);
    }
}

/// Agent shift start hour (UTC) and whether the agent works on `weekday`.
fn shift_of(agent: u32, weekday: Weekday) -> Option<u32> {
    let start = 6 + (agent % 3) * 5; // 06:00, 11:00, 16:00 shifts of 8 hours
    let weekend = matches!(weekday, Weekday::Sat | Weekday::Sun);
    (!weekend || agent.is_multiple_of(3)).then_some(start)
}

fn agent_name(agent: u32) -> String {
    format!("agent-{agent:03}")
}

/// Presence events of every agent working on this day.
fn shifts(config: &SimConfig, day_start: DateTime<Utc>) -> Vec<Event> {
    let mut events = Vec::new();
    let day = day_start.date_naive();
    for agent in 0..config.agents.max(1) {
        let Some(hour) = shift_of(agent, day.weekday()) else {
            continue;
        };
        let start = day_start + Duration::hours(hour as i64);
        let plan = [
            (Duration::zero(), Presence::Online),
            (Duration::minutes(150), Presence::Busy),
            (Duration::minutes(240), Presence::Away),
            (Duration::minutes(270), Presence::Online),
            (Duration::minutes(480), Presence::Offline),
        ];
        for (k, (offset, status)) in plan.into_iter().enumerate() {
            events.push(Event {
                event_id: format!("s{}-{}-{}-p{k}", config.seed, day, agent_name(agent)),
                conversation_id: None,
                occurred_at: start + offset,
                payload: Payload::AgentStatus(AgentStatus {
                    agent_id: agent_name(agent),
                    status,
                }),
            });
        }
    }
    events
}

/// One simulated conversation being played out.
struct Conversation<'a> {
    config: &'a SimConfig,
    index: u64,
    id: String,
    channel: Channel,
    t: DateTime<Utc>,
    seq: u32,
    agent: Option<String>,
}

impl<'a> Conversation<'a> {
    fn new(config: &'a SimConfig, index: u64, day_start: DateTime<Utc>, rng: &mut StdRng) -> Self {
        let hour = weighted(
            rng,
            &HOURLY
                .iter()
                .enumerate()
                .map(|(h, w)| (h as u32, *w))
                .collect::<Vec<_>>(),
        );
        let t = day_start + Duration::hours(hour as i64) + Duration::seconds(rng.random_range(0..3600));
        let channel = weighted(rng, CHANNELS);
        Self {
            config,
            index,
            id: format!("conv-{}-{index}", config.seed),
            channel,
            t,
            seq: 0,
            agent: None,
        }
    }

    fn push(&mut self, out: &mut Vec<Event>, at: DateTime<Utc>, payload: Payload) {
        self.seq += 1;
        out.push(Event {
            event_id: format!("s{}-{}-{}", self.config.seed, self.index, self.seq),
            conversation_id: Some(self.id.clone()),
            occurred_at: at,
            payload,
        });
    }

    fn advance(&mut self, rng: &mut StdRng, min_secs: i64, max_secs: i64) -> DateTime<Utc> {
        self.t += Duration::milliseconds(rng.random_range(min_secs * 1000..=max_secs * 1000));
        self.t
    }

    fn message(&mut self, rng: &mut StdRng, out: &mut Vec<Event>, sender: Sender, private: bool) {
        let message_id = format!("m-{}-{}-{}", self.config.seed, self.index, self.seq + 1);
        let agent_id = (sender == Sender::Agent).then(|| self.agent.clone().unwrap_or_else(|| agent_name(0)));
        let at = self.t;
        self.push(
            out,
            at,
            Payload::Message(Message {
                message_id: message_id.clone(),
                sender,
                agent_id,
                private,
            }),
        );
        // WhatsApp receipts for outbound messages; a few webhooks arrive before the message.
        if self.channel == Channel::Whatsapp && sender != Sender::Customer && !private {
            let mut receipt_at = at + Duration::milliseconds(rng.random_range(300..4000));
            let statuses: &[DeliveryStatus] = match rng.random_range(0..100) {
                0..2 => &[DeliveryStatus::Sent, DeliveryStatus::Failed],
                2..7 => &[DeliveryStatus::Sent],
                7..30 => &[DeliveryStatus::Sent, DeliveryStatus::Delivered],
                _ => &[
                    DeliveryStatus::Sent,
                    DeliveryStatus::Delivered,
                    DeliveryStatus::Read,
                ],
            };
            for status in statuses {
                let early = rng.random_ratio(1, 50);
                let stamp = if early {
                    at - Duration::milliseconds(50)
                } else {
                    receipt_at
                };
                self.push(
                    out,
                    stamp,
                    Payload::MessageStatus(MessageStatusChanged {
                        message_id: message_id.clone(),
                        status: *status,
                        error_code: None,
                        category: None,
                        implies_message: false,
                    }),
                );
                receipt_at += Duration::seconds(rng.random_range(1..600));
            }
        }
    }

    /// Plays the whole conversation, appending its events to `out`: the opening, a bot that
    /// may answer first (and sometimes resolve), an abandoned queue now and then, otherwise a
    /// human agent's exchange, a possible reopen, a survey and a conversion.
    fn play(mut self, rng: &mut StdRng, out: &mut Vec<Event>) {
        let (customer, tags) = self.open(rng, out);
        let live = matches!(
            self.channel,
            Channel::Whatsapp | Channel::Webchat | Channel::Messenger
        );
        if live && rng.random_ratio(1, 2) {
            self.message(rng, out, Sender::System, false); // auto-acknowledgement
        }
        if live && rng.random_ratio(3, 5) && self.bot_resolves(rng, out) {
            self.survey(rng, out);
            self.conversion(rng, out, &customer);
            return;
        }
        if self.channel == Channel::Webchat && rng.random_ratio(1, 8) {
            // The customer gives up in the queue.
            let at = self.advance(rng, 60, 900);
            self.push(out, at, Payload::Abandoned);
            return;
        }
        self.human_exchange(rng, out, &tags);
        if rng.random_ratio(1, 10) {
            self.reopen(rng, out);
        }
        self.survey(rng, out);
        self.conversion(rng, out, &customer);
    }

    /// `conversation_opened` (customer from a skewed pool, so repeat contacts and retention
    /// happen), a first customer message and the first tags; returns the customer and tags.
    fn open(&mut self, rng: &mut StdRng, out: &mut Vec<Event>) -> (String, Vec<String>) {
        let customers = (self.config.conversations / 2).max(1);
        let customer = format!(
            "cust-{}-{}",
            self.config.seed,
            rng.random_range(0..customers).min(rng.random_range(0..customers))
        );
        let business_first = rng.random_ratio(1, 10);
        let priority = match rng.random_range(0..100) {
            0..60 => None,
            60..85 => Some(Priority::Normal),
            85..95 => Some(Priority::High),
            95..98 => Some(Priority::Low),
            _ => Some(Priority::Urgent),
        };
        let inbox = match self.channel {
            Channel::Whatsapp => Some(
                if rng.random_ratio(1, 4) {
                    "wa-sales"
                } else {
                    "wa-support"
                }
                .to_owned(),
            ),
            Channel::Email => Some("support@".to_owned()),
            _ => None,
        };
        let t0 = self.t;
        self.push(
            out,
            t0,
            Payload::ConversationOpened(ConversationOpened {
                customer_id: customer.clone(),
                channel: self.channel,
                inbox,
                team: Some(TEAMS.choose(rng).copied().unwrap_or("support").to_owned()),
                priority,
                initiated_by: if business_first {
                    Initiator::Business
                } else {
                    Initiator::Customer
                },
            }),
        );
        if business_first {
            // A template message opens the conversation.
            self.message(rng, out, Sender::System, false);
            self.advance(rng, 60, 7200);
        }
        self.advance(rng, 0, 5);
        self.message(rng, out, Sender::Customer, false);
        let tag_count = rng.random_range(1..=2);
        let tags: Vec<String> = TAGS
            .choose_multiple(rng, tag_count)
            .map(|s| s.to_string())
            .collect();
        let at = self.advance(rng, 1, 30);
        self.push(
            out,
            at,
            Payload::TagsChanged(TagsChanged {
                added: tags.clone(),
                removed: vec![],
            }),
        );
        (customer, tags)
    }

    /// A bot answers first; it resolves the conversation (true) or hands it off to humans.
    fn bot_resolves(&mut self, rng: &mut StdRng, out: &mut Vec<Event>) -> bool {
        self.advance(rng, 1, 8);
        self.message(rng, out, Sender::Bot, false);
        self.advance(rng, 5, 90);
        self.message(rng, out, Sender::Customer, false);
        self.advance(rng, 1, 5);
        self.message(rng, out, Sender::Bot, false);
        if rng.random_ratio(3, 10) {
            let at = self.advance(rng, 10, 120);
            self.push(
                out,
                at,
                Payload::Resolved(Resolved {
                    by: ResolvedBy::Bot,
                    agent_id: None,
                }),
            );
            return true;
        }
        let at = self.advance(rng, 5, 60);
        self.push(out, at, Payload::Handoff);
        false
    }

    /// A human agent on shift picks the conversation up, answers (with the odd internal note
    /// and priority change), may retag it, and resolves it.
    fn human_exchange(&mut self, rng: &mut StdRng, out: &mut Vec<Event>, tags: &[String]) {
        let (wait_min, wait_max) = if self.channel == Channel::Email {
            (600, 14_400)
        } else {
            (5, 600)
        };
        let at = self.advance(rng, wait_min, wait_max);
        let agent = self.on_shift_agent(rng, at);
        self.agent = Some(agent.clone());
        let team = rng
            .random_ratio(1, 5)
            .then(|| TEAMS.choose(rng).copied().unwrap_or("support").to_owned());
        self.push(
            out,
            at,
            Payload::Assigned(Assigned {
                agent_id: Some(agent),
                team,
            }),
        );
        if rng.random_ratio(1, 20) {
            let at = self.advance(rng, 1, 30);
            self.push(
                out,
                at,
                Payload::ConversationUpdated(ConversationUpdated {
                    priority: Some(Priority::Urgent),
                    team: None,
                }),
            );
        }
        self.advance(rng, 10, 240);
        self.message(rng, out, Sender::Agent, false);
        for _ in 0..rng.random_range(0..4) {
            // Sometimes the agent asks the customer for something and marks the conversation
            // as waiting on them; their answer ends the wait (docs/metrics.md §10).
            if rng.random_ratio(1, 4) {
                let at = self.advance(rng, 1, 30);
                self.push(
                    out,
                    at,
                    Payload::WaitingOnCustomer(WaitingOnCustomer { waiting: true }),
                );
            }
            self.advance(rng, 20, 600);
            self.message(rng, out, Sender::Customer, false);
            if rng.random_ratio(1, 5) {
                // A burst: the customer writes again before anyone answers.
                self.advance(rng, 2, 60);
                self.message(rng, out, Sender::Customer, false);
            }
            if rng.random_ratio(1, 6) {
                self.advance(rng, 5, 60);
                self.message(rng, out, Sender::Agent, true); // internal note
            }
            self.advance(rng, 15, 900);
            self.message(rng, out, Sender::Agent, false);
        }
        if rng.random_ratio(1, 5) {
            let at = self.advance(rng, 5, 60);
            let removed = vec![tags[0].clone()];
            self.push(
                out,
                at,
                Payload::TagsChanged(TagsChanged {
                    added: vec!["followup".into()],
                    removed,
                }),
            );
        }
        self.advance(rng, 10, 300);
        self.resolve_by_agent(out);
    }

    /// The customer comes back hours or days later; the agent answers and resolves again.
    fn reopen(&mut self, rng: &mut StdRng, out: &mut Vec<Event>) {
        let at = self.advance(rng, 3600, 3 * 86_400);
        self.push(out, at, Payload::Reopened);
        self.message(rng, out, Sender::Customer, false);
        self.advance(rng, 30, 1800);
        self.message(rng, out, Sender::Agent, false);
        self.advance(rng, 30, 600);
        self.resolve_by_agent(out);
    }

    /// The assigned agent resolves the conversation now.
    fn resolve_by_agent(&mut self, out: &mut Vec<Event>) {
        let at = self.t;
        let agent_id = self.agent.clone();
        self.push(
            out,
            at,
            Payload::Resolved(Resolved {
                by: ResolvedBy::Agent,
                agent_id,
            }),
        );
    }

    fn on_shift_agent(&self, rng: &mut StdRng, at: DateTime<Utc>) -> String {
        let hour = at.hour_of_day();
        let weekday = at.weekday();
        let working: Vec<u32> = (0..self.config.agents.max(1))
            .filter(|a| shift_of(*a, weekday).is_some_and(|s| hour >= s && hour < s + 8))
            .collect();
        let agent = working
            .choose(rng)
            .copied()
            .unwrap_or_else(|| rng.random_range(0..self.config.agents.max(1)));
        agent_name(agent)
    }

    fn survey(&mut self, rng: &mut StdRng, out: &mut Vec<Event>) {
        if !rng.random_ratio(3, 5) {
            return;
        }
        let survey = match rng.random_range(0..10) {
            0..6 => SurveyType::Csat,
            6..9 => SurveyType::Nps,
            _ => SurveyType::Ces,
        };
        let at = self.advance(rng, 5, 120);
        self.push(out, at, Payload::SurveySent(SurveySent { survey }));
        if !rng.random_ratio(2, 5) {
            return;
        }
        // Some tenants ask CSAT on 1-10.
        let scale = if survey == SurveyType::Csat && rng.random_ratio(1, 5) {
            Scale { min: 1, max: 10 }
        } else {
            survey.default_scale()
        };
        // Mostly happy customers: skew toward the top of the scale.
        let span = scale.max - scale.min;
        let score = scale.max - (rng.random_range(0..=span) * rng.random_range(0..=span)) / span.max(1);
        let at = self.advance(rng, 30, 3600);
        self.push(
            out,
            at,
            Payload::SurveyResponse(SurveyResponse {
                survey,
                score,
                scale,
                agent_id: None,
            }),
        );
        if rng.random_ratio(1, 20) {
            // The customer changes their answer; the last one counts.
            let at = self.advance(rng, 10, 600);
            self.push(
                out,
                at,
                Payload::SurveyResponse(SurveyResponse {
                    survey,
                    score: scale.max,
                    scale,
                    agent_id: None,
                }),
            );
        }
    }

    fn conversion(&mut self, rng: &mut StdRng, out: &mut Vec<Event>, customer: &str) {
        if !rng.random_ratio(3, 20) {
            return;
        }
        let (kind, value) = match rng.random_range(0..10) {
            0..5 => ("sale", Some(rng.random_range(500..50_000))),
            5..7 => ("add_to_cart", None),
            7..9 => ("signup", None),
            _ => ("repeat_purchase", Some(rng.random_range(500..20_000))),
        };
        let at = self.advance(rng, 60, 10 * 86_400);
        self.seq += 1;
        out.push(Event {
            event_id: format!("s{}-{}-{}", self.config.seed, self.index, self.seq),
            // Half of the integrations link the conversation, half do not.
            conversation_id: rng.random_ratio(1, 2).then(|| self.id.clone()),
            occurred_at: at,
            payload: Payload::Conversion(Conversion {
                customer_id: customer.to_owned(),
                kind: kind.to_owned(),
                value_minor: value,
                currency: value.map(|_| "EUR".to_owned()),
            }),
        });
    }
}

trait HourOfDay {
    fn hour_of_day(&self) -> u32;
}

impl HourOfDay for DateTime<Utc> {
    fn hour_of_day(&self) -> u32 {
        chrono::Timelike::hour(self)
    }
}

fn weighted<T: Copy>(rng: &mut StdRng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    for (item, weight) in items {
        if pick < *weight {
            return *item;
        }
        pick -= weight;
    }
    items[items.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_events_and_another_seed_differs() {
        let config = SimConfig {
            conversations: 200,
            days: 3,
            ..SimConfig::default()
        };
        let a = simulate(&config);
        assert_eq!(a, simulate(&config));
        let b = simulate(&SimConfig { seed: 2, ..config });
        assert_ne!(a, b);
    }

    #[test]
    fn event_ids_are_unique_and_every_type_appears() {
        let events = simulate(&SimConfig {
            conversations: 300,
            days: 2,
            ..SimConfig::default()
        });
        let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids.len(), events.len());
        let kinds: std::collections::BTreeSet<&str> = events.iter().map(|e| e.payload.kind()).collect();
        assert_eq!(kinds.len(), 15, "{kinds:?}");
    }
}
