//! Tenant settings in Postgres: business hours and targets, as JSON documents.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, types::Json};

use crate::domain::{
    Error,
    calendar::{DaySeconds, Schedule},
    kpis::Targets,
    query::parse_time_zone,
    tenant::TenantId,
};

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

/// A tenant's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub business_hours: Option<Schedule>,
    pub targets: Targets,
}

/// The tenant's settings (defaults when never set).
pub async fn get(pool: &PgPool, tenant: TenantId) -> Result<Settings, Error> {
    let row: Option<(Option<Json<ScheduleDoc>>, Json<Targets>)> =
        sqlx::query_as("select business_hours, targets from tenant_settings where tenant_id = $1")
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
    match row {
        None => Ok(Settings::default()),
        Some((hours, Json(targets))) => Ok(Settings {
            business_hours: hours.map(|Json(doc)| from_doc(doc)).transpose()?,
            targets,
        }),
    }
}

/// Stores the tenant's settings whole.
pub async fn put(pool: &PgPool, tenant: TenantId, settings: &Settings) -> Result<(), Error> {
    sqlx::query(
        "insert into tenant_settings (tenant_id, business_hours, targets, updated_at) values ($1, $2, $3, now()) \
         on conflict (tenant_id) do update set business_hours = excluded.business_hours, \
         targets = excluded.targets, updated_at = now()",
    )
    .bind(tenant)
    .bind(settings.business_hours.as_ref().map(|s| Json(to_doc(s))))
    .bind(Json(&settings.targets))
    .execute(pool)
    .await?;
    Ok(())
}
