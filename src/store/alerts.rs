//! Alert rules, their state, notices, deliveries and attempts in Postgres (docs/metrics.md §12).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, types::Json};

use crate::domain::{
    Error,
    alert::{MAX_RULES, NoticeKind, RuleSpec, State},
    tenant::TenantId,
};

/// A rule with its state.
#[derive(Debug, Clone)]
pub struct Rule {
    pub tenant: TenantId,
    pub rule_id: i64,
    pub spec: RuleSpec,
    pub state: State,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

struct RuleRow {
    tenant: TenantId,
    rule_id: i64,
    spec: Json<RuleSpec>,
    state: Option<Json<State>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn rule(r: RuleRow) -> Rule {
    Rule {
        tenant: r.tenant,
        rule_id: r.rule_id,
        spec: r.spec.0,
        state: r.state.map(|Json(s)| s).unwrap_or_default(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// The rules with their state, of one tenant or (`None`) of all, by tenant and rule id.
async fn rules(conn: &mut PgConnection, tenant: Option<TenantId>) -> Result<Vec<Rule>, Error> {
    let rows = sqlx::query_as!(
        RuleRow,
        r#"select r.tenant_id as "tenant: TenantId", r.rule_id, r.spec as "spec: Json<RuleSpec>",
                  s.state as "state?: Json<State>", r.created_at, r.updated_at
           from alert_rules r left join alert_state s
             on s.tenant_id = r.tenant_id and s.rule_id = r.rule_id
           where $1::bigint is null or r.tenant_id = $1
           order by r.tenant_id, r.rule_id"#,
        tenant.map(|t| t.0)
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(rule).collect())
}

/// Adds a rule (at most [`MAX_RULES`] per tenant; the tenant row is locked while counting).
pub async fn create(pool: &PgPool, tenant: TenantId, spec: &RuleSpec, secret: &str) -> Result<i64, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query_scalar!(
        "select tenant_id from tenants where tenant_id = $1 for update",
        tenant.0
    )
    .fetch_optional(&mut *tx)
    .await?;
    let n = sqlx::query_scalar!(
        r#"select count(*) as "n!" from alert_rules where tenant_id = $1"#,
        tenant.0
    )
    .fetch_one(&mut *tx)
    .await?;
    if n as usize >= MAX_RULES {
        return Err(Error::FailedPrecondition(format!(
            "the tenant has {MAX_RULES} alert rules, the most it can have; delete one first"
        )));
    }
    let id = sqlx::query_scalar!(
        "insert into alert_rules (tenant_id, spec, signing_secret) values ($1, $2, $3) returning rule_id",
        tenant.0,
        Json(spec) as _,
        secret
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Replaces a rule's spec (its episode state stays); `false` when there is no such rule.
pub async fn update(pool: &PgPool, tenant: TenantId, rule_id: i64, spec: &RuleSpec) -> Result<bool, Error> {
    let done = sqlx::query!(
        "update alert_rules set spec = $3, updated_at = now() where tenant_id = $1 and rule_id = $2",
        tenant.0,
        rule_id,
        Json(spec) as _
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn delete(pool: &PgPool, tenant: TenantId, rule_id: i64) -> Result<bool, Error> {
    let done = sqlx::query!(
        "delete from alert_rules where tenant_id = $1 and rule_id = $2",
        tenant.0,
        rule_id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn list(pool: &PgPool, tenant: TenantId) -> Result<Vec<Rule>, Error> {
    rules(&mut *pool.acquire().await?, Some(tenant)).await
}

/// Every rule of every tenant, with its state and signing secret, read on the evaluator's
/// connection.
pub async fn all(conn: &mut PgConnection) -> Result<Vec<Rule>, Error> {
    rules(conn, None).await
}

/// A notice decided by an evaluation.
pub struct Notice<'a> {
    pub kind: NoticeKind,
    pub episode: i64,
    pub at: DateTime<Utc>,
    pub document: serde_json::Value,
    pub destinations: &'a [String],
}

/// Stores one evaluation's outcome in one transaction on the evaluator's connection (the one
/// holding the evaluation lock, so a replica that lost it cannot write): the state, and the
/// notice with one pending delivery per destination.
pub async fn save_evaluation(
    conn: &mut PgConnection,
    tenant: TenantId,
    rule_id: i64,
    state: &State,
    notice: Option<Notice<'_>>,
) -> Result<(), Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let saved = sqlx::query!(
        "insert into alert_state (tenant_id, rule_id, state) \
         select $1, $2, $3 where exists \
             (select 1 from alert_rules where tenant_id = $1 and rule_id = $2) \
         on conflict (tenant_id, rule_id) do update set state = excluded.state",
        tenant.0,
        rule_id,
        Json(state) as _
    )
    .execute(&mut *tx)
    .await?;
    if saved.rows_affected() == 0 {
        // The rule was deleted since it was read: nothing to notify.
        return Ok(());
    }
    if let Some(n) = notice {
        let notice_id = sqlx::query_scalar!(
            "insert into alert_notices (tenant_id, rule_id, episode, kind, at, document) \
             values ($1, $2, $3, $4, $5, $6) returning notice_id",
            tenant.0,
            rule_id,
            n.episode,
            n.kind.as_str(),
            n.at,
            Json(&n.document) as _
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query!(
            "insert into alert_deliveries (tenant_id, notice_id, rule_id, destination, next_attempt_at) \
             select $1, $2, $3, d, $4 from unnest($5::text[]) as d",
            tenant.0,
            notice_id,
            rule_id,
            n.at,
            n.destinations
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub struct Due {
    pub tenant_id: TenantId,
    pub delivery_id: i64,
    pub destination: String,
    pub attempts: i32,
    pub document: Json<serde_json::Value>,
    pub signing_secret: String,
    pub created_at: DateTime<Utc>,
}

/// Claims up to `limit` deliveries due at `now`: each is leased until `lease_until` (another
/// replica takes it only after that, so an attempt cut short by a crash is retried).
pub async fn claim_due(
    pool: &PgPool,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Due>, Error> {
    Ok(sqlx::query_as!(
        Due,
        r#"with claimed as (
             update alert_deliveries d set next_attempt_at = $2
             where (d.tenant_id, d.delivery_id) in (
                 select tenant_id, delivery_id from alert_deliveries
                 where status = 'pending' and next_attempt_at <= $1
                 order by next_attempt_at limit $3 for update skip locked)
             returning d.tenant_id, d.delivery_id, d.notice_id, d.rule_id, d.destination, d.attempts,
                       d.created_at)
         select c.tenant_id as "tenant_id!: TenantId", c.delivery_id as "delivery_id!",
                c.destination as "destination!", c.attempts as "attempts!",
                n.document as "document: Json<serde_json::Value>", r.signing_secret,
                c.created_at as "created_at!"
         from claimed c
         join alert_notices n on n.tenant_id = c.tenant_id and n.notice_id = c.notice_id
         join alert_rules r on r.tenant_id = c.tenant_id and r.rule_id = c.rule_id"#,
        now,
        lease_until,
        limit
    )
    .fetch_all(pool)
    .await?)
}

/// What an attempt led to.
pub enum After {
    Delivered,
    RetryAt(DateTime<Utc>),
    GaveUp,
}

/// Records an attempt and the delivery's next step.
#[allow(clippy::too_many_arguments)]
pub async fn record_attempt(
    pool: &PgPool,
    tenant: TenantId,
    delivery_id: i64,
    attempt: i32,
    at: DateTime<Utc>,
    http_status: Option<i32>,
    error: Option<&str>,
    after: After,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "insert into alert_attempts (tenant_id, delivery_id, attempt, at, http_status, error) \
         values ($1, $2, $3, $4, $5, $6) on conflict do nothing",
        tenant.0,
        delivery_id,
        attempt,
        at,
        http_status,
        error
    )
    .execute(&mut *tx)
    .await?;
    let (status, next) = match after {
        After::Delivered => ("delivered", None),
        After::RetryAt(t) => ("pending", Some(t)),
        After::GaveUp => ("failed", None),
    };
    sqlx::query!(
        "update alert_deliveries set status = $3, attempts = $4, next_attempt_at = $5 \
         where tenant_id = $1 and delivery_id = $2",
        tenant.0,
        delivery_id,
        status,
        attempt,
        next
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A delivery as it is listed, with its attempts.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub delivery_id: i64,
    pub rule_id: i64,
    pub notice_id: i64,
    pub kind: String,
    pub episode: i64,
    pub destination: String,
    pub status: String,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub attempts: Vec<Attempt>,
}

/// One attempt: number, time, HTTP status (none without an answer), error.
pub type Attempt = (i32, DateTime<Utc>, Option<i32>, Option<String>);

/// The tenant's latest `limit` deliveries (of one rule when given), newest first.
pub async fn deliveries(
    pool: &PgPool,
    tenant: TenantId,
    rule_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Delivery>, Error> {
    let mut rows: Vec<Delivery> = sqlx::query!(
        "select d.delivery_id, d.rule_id, d.notice_id, n.kind, n.episode, d.destination, d.status, \
                d.next_attempt_at, d.created_at \
         from alert_deliveries d \
         join alert_notices n on n.tenant_id = d.tenant_id and n.notice_id = d.notice_id \
         where d.tenant_id = $1 and ($2::bigint is null or d.rule_id = $2) \
         order by d.delivery_id desc limit $3",
        tenant.0,
        rule_id,
        limit
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| Delivery {
        delivery_id: r.delivery_id,
        rule_id: r.rule_id,
        notice_id: r.notice_id,
        kind: r.kind,
        episode: r.episode,
        destination: r.destination,
        status: r.status,
        next_attempt_at: r.next_attempt_at,
        created_at: r.created_at,
        attempts: Vec::new(),
    })
    .collect();
    let ids: Vec<i64> = rows.iter().map(|r| r.delivery_id).collect();
    let attempts = sqlx::query!(
        "select delivery_id, attempt, at, http_status, error from alert_attempts \
         where tenant_id = $1 and delivery_id = any($2) order by delivery_id, attempt",
        tenant.0,
        &ids
    )
    .fetch_all(pool)
    .await?;
    for d in &mut rows {
        d.attempts = attempts
            .iter()
            .filter(|a| a.delivery_id == d.delivery_id)
            .map(|a| (a.attempt, a.at, a.http_status, a.error.clone()))
            .collect();
    }
    Ok(rows)
}

/// A notice as WatchAlerts streams it.
#[derive(Debug, Clone)]
pub struct StoredNotice {
    pub notice_id: i64,
    pub document: Json<serde_json::Value>,
}

/// The tenant's notices after `after` (by id), at most `limit`.
pub async fn notices_after(
    pool: &PgPool,
    tenant: TenantId,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredNotice>, Error> {
    Ok(sqlx::query_as!(
        StoredNotice,
        r#"select notice_id, document as "document: Json<serde_json::Value>" from alert_notices
           where tenant_id = $1 and notice_id > $2 order by notice_id limit $3"#,
        tenant.0,
        after,
        limit
    )
    .fetch_all(pool)
    .await?)
}

/// The id of the tenant's latest notice (0 when none).
pub async fn last_notice(pool: &PgPool, tenant: TenantId) -> Result<i64, Error> {
    let id = sqlx::query_scalar!(
        "select max(notice_id) from alert_notices where tenant_id = $1",
        tenant.0
    )
    .fetch_one(pool)
    .await?;
    Ok(id.unwrap_or(0))
}

/// Takes the session-level advisory lock `key` on `conn` if it is free: `true` when this
/// connection holds it now (the alert evaluator's leadership, app::alerts).
pub async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, Error> {
    Ok(
        sqlx::query_scalar!(r#"select pg_try_advisory_lock($1) as "locked!""#, key)
            .fetch_one(conn)
            .await?,
    )
}
