//! Alerts (docs/metrics.md §12, README "Alerts"): rules (created, listed, updated, deleted), the
//! evaluator that one replica at a time runs under a PostgreSQL advisory lock, the deliverer
//! that every replica runs (signed POSTs retried with backoff, every attempt recorded), and the
//! live stream of notices.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;

use super::{App, kpis::KpiService};
use crate::{
    domain::{
        Error,
        alert::{self, Metric, NoticeKind, Observation, Phase, RuleSpec},
        query::{Query, Window},
        tenant::TenantId,
        time::micros,
    },
    engine::kpi::{
        Kpis,
        live::{Backlog, SlaStatus},
    },
    outbound,
    store::{self, alerts::After},
};

/// The advisory lock key of the evaluator (one holder over every replica of a database).
const EVALUATOR_LOCK: i64 = 0x63_6b_61_6c_65_72_74; // "ckalert"
/// Deliveries attempted at once by one replica.
const DELIVERY_BATCH: i64 = 20;
/// Longest wait between two attempts of a delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How alerts run (the server's `--alert-*` flags).
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// How often the rules are evaluated.
    pub interval: Duration,
    /// The first retry's delay; each next one doubles, up to an hour.
    pub retry_base: Duration,
    /// A delivery not delivered this long after its notice is given up.
    pub give_up_after: Duration,
    /// One POST's time limit.
    pub post_timeout: Duration,
    /// Destinations on the server's own host (loopback, link-local) are allowed.
    pub allow_local: bool,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            retry_base: Duration::from_secs(10),
            give_up_after: Duration::from_secs(86_400),
            post_timeout: Duration::from_secs(10),
            allow_local: false,
        }
    }
}

/// Alert rules and their deliveries.
pub struct AlertService {
    pool: PgPool,
    pub config: AlertConfig,
}

fn not_found(rule_id: i64) -> Error {
    Error::NotFound(format!("alert rule {rule_id}"))
}

impl AlertService {
    pub fn new(pool: PgPool, config: AlertConfig) -> Self {
        Self { pool, config }
    }

    async fn check(&self, tenant: TenantId, spec: &RuleSpec) -> Result<(), Error> {
        spec.validate(self.config.allow_local)?;
        if spec.business_hours
            && store::settings::get(&self.pool, tenant)
                .await?
                .business_hours
                .is_none()
        {
            return Err(Error::FailedPrecondition(
                "business_hours: the tenant has no business hours; set them with UpdateSettings first".into(),
            ));
        }
        Ok(())
    }

    /// Adds a rule; returns its id and the secret its notices are signed with (generated when
    /// `secret` is empty; shown once).
    pub async fn create_rule(
        &self,
        tenant: TenantId,
        spec: &RuleSpec,
        secret: &str,
    ) -> Result<(i64, String), Error> {
        self.check(tenant, spec).await?;
        let secret = if secret.is_empty() {
            let mut b = [0u8; 24];
            rand::rng().fill_bytes(&mut b);
            hex::encode(b)
        } else if !(16..=512).contains(&secret.chars().count()) || secret.chars().any(char::is_control) {
            return Err(Error::invalid(
                "signing_secret",
                "must be 16-512 characters without control characters",
            ));
        } else {
            secret.to_owned()
        };
        let id = store::alerts::create(&self.pool, tenant, spec, &secret).await?;
        Ok((id, secret))
    }

    pub async fn update_rule(&self, tenant: TenantId, rule_id: i64, spec: &RuleSpec) -> Result<(), Error> {
        self.check(tenant, spec).await?;
        if store::alerts::update(&self.pool, tenant, rule_id, spec).await? {
            Ok(())
        } else {
            Err(not_found(rule_id))
        }
    }

    pub async fn delete_rule(&self, tenant: TenantId, rule_id: i64) -> Result<(), Error> {
        if store::alerts::delete(&self.pool, tenant, rule_id).await? {
            Ok(())
        } else {
            Err(not_found(rule_id))
        }
    }

    pub async fn rules(&self, tenant: TenantId) -> Result<Vec<store::alerts::Rule>, Error> {
        store::alerts::list(&self.pool, tenant).await
    }

    pub async fn deliveries(
        &self,
        tenant: TenantId,
        rule_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<store::alerts::Delivery>, Error> {
        let limit = if limit == 0 { 100 } else { limit.min(1_000) };
        store::alerts::deliveries(&self.pool, tenant, rule_id, i64::from(limit)).await
    }

    /// The tenant's notices from now on (the documents of docs/metrics.md §12), polled every
    /// second; the receiver ends the stream by dropping it.
    pub fn watch(&self, tenant: TenantId) -> mpsc::Receiver<Result<serde_json::Value, Error>> {
        let (tx, rx) = mpsc::channel(16);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut after = match store::alerts::last_notice(&pool, tenant).await {
                Ok(id) => id,
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if tx.is_closed() {
                    return;
                }
                match store::alerts::notices_after(&pool, tenant, after, 100).await {
                    Ok(notices) => {
                        for n in notices {
                            after = n.notice_id;
                            if tx.send(Ok(n.document.0)).await.is_err() {
                                return;
                            }
                        }
                    }
                    // A database hiccup: try again next second.
                    Err(err) => tracing::debug!(error = %err, "alert watch poll failed"),
                }
            }
        });
        rx
    }
}

/// What one evaluation round computed, by question: rules of a tenant that ask the same question
/// (window, filters, business hours; or the same instant and filters) share one computation.
#[derive(Default)]
struct Answers {
    windows: HashMap<String, Arc<Kpis>>,
    instants: HashMap<String, Arc<(Backlog, SlaStatus)>>,
}

/// The value a rule watches at `now` (docs/metrics.md §12): over the window ending at `now`, or
/// at the instant for live metrics.
async fn observe(
    kpis: &KpiService,
    answers: &mut Answers,
    tenant: TenantId,
    spec: &RuleSpec,
    now: DateTime<Utc>,
) -> Result<Observation, Error> {
    let metric = spec.metric();
    let window = if metric.is_live() {
        chrono::Duration::days(1)
    } else {
        chrono::Duration::seconds(i64::from(spec.window_seconds))
    };
    let mut query = Query::new(Window::new(now - window, now)?);
    query.filters = spec.filters();
    if metric.is_live() {
        let key = format!("{tenant}|{:?}|{}", query.filters, metric.needs_sla_status());
        if let Some(a) = answers.instants.get(&key) {
            return Ok(metric.of_instant(&a.0, &a.1));
        }
        let backlog = kpis.backlog(tenant, &query, micros(now)).await?;
        let sla = if metric.needs_sla_status() {
            kpis.sla_status(tenant, &query, micros(now), 1).await?.0
        } else {
            SlaStatus::default()
        };
        let seen = metric.of_instant(&backlog, &sla);
        answers.instants.insert(key, Arc::new((backlog, sla)));
        Ok(seen)
    } else {
        query.business_hours = spec.business_hours;
        let key = format!(
            "{tenant}|{}|{:?}|{}",
            spec.window_seconds, query.filters, spec.business_hours
        );
        if let Some(k) = answers.windows.get(&key) {
            return Ok(metric.of_window(k));
        }
        let (k, _) = kpis.overview(tenant, &query, false).await?;
        let seen = metric.of_window(&k);
        answers.windows.insert(key, Arc::new(k));
        Ok(seen)
    }
}

/// The document a notice carries (docs/metrics.md §12 "The notice").
fn document(
    rule: &store::alerts::Rule,
    kind: NoticeKind,
    episode: u64,
    since: Option<DateTime<Utc>>,
    seen: Observation,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let s = &rule.spec;
    let metric: Metric = s.metric();
    let from = if metric.is_live() {
        now - chrono::Duration::days(1)
    } else {
        now - chrono::Duration::seconds(i64::from(s.window_seconds))
    };
    let enum_names = |prefix: &str, names: Vec<&str>| -> Vec<String> {
        names
            .iter()
            .map(|n| format!("{prefix}_{}", n.to_ascii_uppercase()))
            .collect()
    };
    let filters = json!({
        "channels": enum_names("CHANNEL", s.channels.iter().map(|c| c.as_str()).collect()),
        "inboxes": s.inboxes, "teams": s.teams, "agents": s.agents, "tags": s.tags,
        "priorities": enum_names("PRIORITY", s.priorities.iter().map(|p| p.as_str()).collect()),
    });
    json!({
        "tenant_id": rule.tenant.0,
        "rule": {
            "id": rule.rule_id, "name": s.name, "metric": s.metric, "comparison": s.comparison,
            "threshold": s.threshold, "window_seconds": s.window_seconds, "min_items": s.min_items,
            "business_hours": s.business_hours,
        },
        "state": kind.as_str(),
        "episode": episode,
        "value": seen.value,
        "items": seen.items,
        "since": since,
        "at": now,
        // Ready for MetricsService.ListConversations / GetOverview (proto3 JSON).
        "query": {"from": from, "to": now, "filters": filters, "businessHours": s.business_hours && !metric.is_live()},
    })
}

/// Evaluates every rule once at `now` on `conn` (the lock holder's connection); returns how many
/// notices were decided.
async fn evaluate_all(app: &App, conn: &mut PgConnection, now: DateTime<Utc>) -> Result<u64, Error> {
    let rules = store::alerts::all(conn).await?;
    let mut notices = 0;
    let mut answers = Answers::default();
    for rule in &rules {
        let seen = match observe(&app.kpis, &mut answers, rule.tenant, &rule.spec, now).await {
            Ok(seen) => seen,
            // One rule's failure (the tenant's business hours removed, a limit) skips it this
            // round; the others go on.
            Err(err @ (Error::Unavailable(_) | Error::Internal(_))) => return Err(err),
            Err(err) => {
                tracing::debug!(tenant = rule.tenant.0, rule = rule.rule_id, error = %err, "alert rule not evaluated");
                continue;
            }
        };
        let (state, notice) = alert::step(&rule.spec, &rule.state, now, seen);
        let since = match state.phase {
            Phase::Pending(t) | Phase::Firing(t) | Phase::Resolving(t) => Some(t),
            Phase::Ok => match rule.state.phase {
                Phase::Firing(t) | Phase::Resolving(t) => Some(t),
                _ => None,
            },
        };
        let notice = notice.map(|kind| {
            notices += 1;
            metrics::counter!("chatkpi_alert_notices_total", "kind" => kind.as_str()).increment(1);
            store::alerts::Notice {
                kind,
                episode: state.episodes as i64,
                at: now,
                document: document(rule, kind, state.episodes, since, seen, now),
                destinations: &rule.spec.destinations,
            }
        });
        if notice.is_some() || state != rule.state {
            store::alerts::save_evaluation(conn, rule.tenant, rule.rule_id, &state, notice).await?;
        }
    }
    metrics::counter!("chatkpi_alert_evaluations_total").increment(rules.len() as u64);
    Ok(notices)
}

/// The evaluator: every interval, the replica holding the advisory lock (taken on a connection
/// of its own, released when that connection ends, so a dead replica hands over within one
/// interval) evaluates every rule and writes on that connection.
pub async fn run_evaluator(app: Arc<App>, pool: PgPool) {
    let config = app.alerts.config.clone();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<PgConnection> = None;
    let mut leader = false;
    loop {
        tick.tick().await;
        if !app.ready.is_ready() {
            continue;
        }
        if conn.is_none() {
            leader = false;
            match sqlx::ConnectOptions::connect(pool.connect_options().as_ref()).await {
                Ok(c) => conn = Some(c),
                Err(err) => {
                    tracing::debug!(error = %err, "alert evaluator cannot connect");
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        if !leader {
            match store::alerts::try_lock(c, EVALUATOR_LOCK).await {
                Ok(true) => {
                    leader = true;
                    tracing::info!("this replica evaluates the alert rules");
                    metrics::gauge!("chatkpi_alert_evaluator").set(1.0);
                }
                Ok(false) => continue,
                Err(_) => {
                    conn = None;
                    continue;
                }
            }
        }
        // Whole seconds: evaluation instants are easy to read and repeat.
        let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_else(Utc::now);
        if let Err(err) = evaluate_all(&app, c, now).await {
            tracing::warn!(error = %err, "alert evaluation failed; the lock is released and taken again");
            metrics::gauge!("chatkpi_alert_evaluator").set(0.0);
            // Dropping the connection releases the lock: whoever takes it next starts clean.
            conn = None;
        }
    }
}

/// The deliverer: claims due deliveries (any replica; a claim is a lease) and POSTs them.
pub async fn run_deliverer(app: Arc<App>, pool: PgPool) {
    let config = app.alerts.config.clone();
    let period = (config.retry_base / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !app.ready.is_ready() {
            continue;
        }
        let now = Utc::now();
        let lease = now + chrono::Duration::from_std(config.post_timeout * 3).unwrap_or_default();
        let due = match store::alerts::claim_due(&pool, now, lease, DELIVERY_BATCH).await {
            Ok(due) => due,
            Err(err) => {
                tracing::debug!(error = %err, "claiming alert deliveries failed");
                continue;
            }
        };
        futures::future::join_all(due.into_iter().map(|d| deliver(&pool, &config, d))).await;
    }
}

/// One attempt of one delivery, recorded.
async fn deliver(pool: &PgPool, config: &AlertConfig, d: store::alerts::Due) {
    let body = Bytes::from(serde_json::to_vec(&d.document.0).unwrap_or_default());
    let at = Utc::now();
    let headers = [
        (
            "x-chatkpi-signature",
            alert::sign(d.signing_secret.as_bytes(), at, &body),
        ),
        ("x-chatkpi-delivery", d.delivery_id.to_string()),
    ];
    let result = outbound::post(
        &d.destination,
        &headers,
        body,
        config.post_timeout,
        config.allow_local,
    )
    .await;
    let attempt = d.attempts + 1;
    let (code, error) = match &result {
        Ok(code) => (Some(i32::from(*code)), None),
        Err(err) => (None, Some(err.to_string())),
    };
    let delivered = matches!(result, Ok(200..=299));
    let after = if delivered {
        After::Delivered
    } else {
        let backoff = config
            .retry_base
            .saturating_mul(1 << (attempt - 1).clamp(0, 20))
            .min(MAX_BACKOFF);
        let next = at + chrono::Duration::from_std(backoff).unwrap_or_default();
        let deadline = d.created_at + chrono::Duration::from_std(config.give_up_after).unwrap_or_default();
        if next > deadline {
            After::GaveUp
        } else {
            After::RetryAt(next)
        }
    };
    let outcome = match after {
        After::Delivered => "delivered",
        After::RetryAt(_) => "retry",
        After::GaveUp => "given_up",
    };
    metrics::counter!("chatkpi_alert_deliveries_total", "outcome" => outcome).increment(1);
    if let Err(err) = store::alerts::record_attempt(
        pool,
        d.tenant_id,
        d.delivery_id,
        attempt,
        at,
        code,
        error.as_deref(),
        after,
    )
    .await
    {
        // The lease runs out and the delivery is attempted again.
        tracing::warn!(error = %err, "recording an alert delivery attempt failed");
    }
}
