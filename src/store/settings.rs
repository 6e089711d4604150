//! Tenant settings in Postgres: business hours and targets, as JSON documents.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, types::Json};

use crate::domain::{
    Error,
    calendar::{DaySeconds, Schedule},
    query::parse_time_zone,
    settings::{Settings, SettingsUpdate},
    sla::Policy,
    tenant::TenantId,
};
use crate::engine::kpi::Targets;

/// Stored form of a [`Schedule`].
#[derive(Debug, Serialize, Deserialize)]
struct ScheduleDoc {
    time_zone: String,
    /// Index 0 = Monday; `[open, close)` seconds of day.
    weekly: Vec<Vec<(DaySeconds, DaySeconds)>>,
    holidays: Vec<NaiveDate>,
}

fn to_doc(s: &Schedule) -> ScheduleDoc {
    ScheduleDoc {
        time_zone: s.time_zone.name().to_owned(),
        weekly: s.weekly.to_vec(),
        holidays: s.holidays.iter().copied().collect(),
    }
}

fn from_doc(doc: ScheduleDoc) -> Result<Schedule, Error> {
    let tz = parse_time_zone("business_hours.time_zone", &doc.time_zone)?;
    let mut weekly: [Vec<(DaySeconds, DaySeconds)>; 7] = Default::default();
    for (day, intervals) in doc.weekly.into_iter().enumerate().take(7) {
        weekly[day] = intervals;
    }
    Schedule::new(tz, weekly, doc.holidays.into_iter().collect::<BTreeSet<_>>())
}

/// A stored settings row.
struct Row {
    business_hours: Option<Json<ScheduleDoc>>,
    targets: Json<Targets>,
    sla_policies: Json<Vec<Policy>>,
}

fn settings_of(row: Row) -> Result<Settings, Error> {
    Ok(Settings {
        business_hours: row.business_hours.map(|Json(doc)| from_doc(doc)).transpose()?,
        targets: row.targets.0,
        sla_policies: row.sla_policies.0,
    })
}

/// The tenant's settings (defaults when never set).
pub async fn get(pool: &PgPool, tenant: TenantId) -> Result<Settings, Error> {
    let row = sqlx::query_as!(
        Row,
        r#"select business_hours as "business_hours: Json<ScheduleDoc>",
                  targets as "targets: Json<Targets>",
                  sla_policies as "sla_policies: Json<Vec<Policy>>"
           from tenant_settings where tenant_id = $1"#,
        tenant.0
    )
    .fetch_optional(pool)
    .await?;
    row.map_or(Ok(Settings::default()), settings_of)
}

/// Applies `update` to the tenant's settings in one transaction (the row is locked while it is
/// read, changed and written, so concurrent updates of different fields never lose each other's
/// change) and returns the result.
pub async fn update(pool: &PgPool, tenant: TenantId, update: SettingsUpdate) -> Result<Settings, Error> {
    let mut tx = pool.begin().await?;
    // Make sure the row exists, so `for update` has something to lock.
    sqlx::query!(
        "insert into tenant_settings (tenant_id) values ($1) on conflict (tenant_id) do nothing",
        tenant.0
    )
    .execute(&mut *tx)
    .await?;
    let row = sqlx::query_as!(
        Row,
        r#"select business_hours as "business_hours: Json<ScheduleDoc>",
                  targets as "targets: Json<Targets>",
                  sla_policies as "sla_policies: Json<Vec<Policy>>"
           from tenant_settings where tenant_id = $1 for update"#,
        tenant.0
    )
    .fetch_one(&mut *tx)
    .await?;
    let settings = settings_of(row)?.apply(update)?;
    sqlx::query!(
        "update tenant_settings set business_hours = $2, targets = $3, sla_policies = $4, updated_at = now() \
         where tenant_id = $1",
        tenant.0,
        settings.business_hours.as_ref().map(|s| Json(to_doc(s))) as _,
        Json(&settings.targets) as _,
        Json(&settings.sla_policies) as _
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(settings)
}

/// SHA-256 of `settings` as they are stored: equal settings have equal fingerprints, and a kept
/// answer computed under other settings is not read back (store/answers.rs).
pub fn fingerprint(settings: &Settings) -> Result<[u8; 32], Error> {
    use sha2::Digest;
    let doc = serde_json::to_vec(&(
        settings.business_hours.as_ref().map(to_doc),
        &settings.targets,
        &settings.sla_policies,
    ))
    .map_err(|e| Error::Internal(anyhow::Error::new(e).context("cannot encode settings")))?;
    Ok(sha2::Sha256::digest(&doc).into())
}
