//! The dashboard questions each tenant asked most recently, as JSON documents: what a restarted
//! server asks again before it reports SERVING (app/warm.rs).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, types::Json};

use crate::domain::{
    Error,
    calendar::Granularity,
    event::{Channel, Priority},
    kpi::Dimension,
    query::{Asked, AskedKind, Filters, Query, Window, check_lookahead, parse_time_zone},
    tenant::TenantId,
};

/// Questions kept per tenant: the most recently asked (a dashboard asks a handful).
pub const KEPT_PER_TENANT: i64 = 8;

/// Stored form of an [`Asked`]: where its window ends, and the rest (the shape, the window's
/// length included) apart, so that the shape's text names the row.
#[derive(Debug, Serialize, Deserialize)]
struct AskedDoc {
    to: DateTime<Utc>,
    shape: ShapeDoc,
}

#[derive(Debug, Serialize, Deserialize)]
struct ShapeDoc {
    /// "overview", "breakdown" or "series".
    kind: String,
    /// The window's length: a 1-day and a 30-day overview are two questions.
    window_micros: i64,
    #[serde(default)]
    compare_previous: bool,
    #[serde(default)]
    dimension: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    granularity: Option<String>,
    time_zone: String,
    channels: Vec<Channel>,
    inboxes: Vec<String>,
    teams: Vec<String>,
    agents: Vec<String>,
    tags: Vec<String>,
    priorities: Vec<Priority>,
    business_hours: bool,
    repeat_window_micros: i64,
    attribution_window_micros: i64,
    conversion_kinds: Vec<String>,
}

fn dimension_name(d: Dimension) -> &'static str {
    match d {
        Dimension::Channel => "channel",
        Dimension::Inbox => "inbox",
        Dimension::Team => "team",
        Dimension::Agent => "agent",
        Dimension::Tag => "tag",
        Dimension::Priority => "priority",
        Dimension::HourOfDay => "hour_of_day",
        Dimension::DayOfWeek => "day_of_week",
        Dimension::SlaPolicy => "sla_policy",
    }
}

fn dimension_of(name: &str) -> Option<Dimension> {
    Dimension::ALL.into_iter().find(|d| dimension_name(*d) == name)
}

fn granularity_name(g: Granularity) -> &'static str {
    match g {
        Granularity::Hour => "hour",
        Granularity::Day => "day",
        Granularity::Week => "week",
        Granularity::Month => "month",
    }
}

fn granularity_of(name: &str) -> Option<Granularity> {
    Granularity::ALL
        .into_iter()
        .find(|g| granularity_name(*g) == name)
}

fn to_doc(asked: &Asked) -> AskedDoc {
    let q = &asked.query;
    let (kind, compare_previous, dimension, limit, granularity) = match asked.kind {
        AskedKind::Overview { compare_previous } => ("overview", compare_previous, None, None, None),
        AskedKind::Breakdown { dimension, limit } => (
            "breakdown",
            false,
            Some(dimension_name(dimension).to_owned()),
            Some(limit as u64),
            None,
        ),
        AskedKind::Series(g) => ("series", false, None, None, Some(granularity_name(g).to_owned())),
    };
    let f = &q.filters;
    AskedDoc {
        to: q.window.to,
        shape: ShapeDoc {
            kind: kind.to_owned(),
            window_micros: q.window.length().num_microseconds().unwrap_or(i64::MAX),
            compare_previous,
            dimension,
            limit,
            granularity,
            time_zone: q.time_zone.name().to_owned(),
            channels: f.channels.clone(),
            inboxes: f.inboxes.clone(),
            teams: f.teams.clone(),
            agents: f.agents.clone(),
            tags: f.tags.clone(),
            priorities: f.priorities.clone(),
            business_hours: q.business_hours,
            repeat_window_micros: q.repeat_window.num_microseconds().unwrap_or(i64::MAX),
            attribution_window_micros: q.attribution_window.num_microseconds().unwrap_or(i64::MAX),
            conversion_kinds: q.conversion_kinds.clone(),
        },
    }
}

/// `asked` as its stored document (JSON): the whole question, its window included, written the
/// same way by every process of one build (the key of its kept answer, store/answers.rs).
pub fn document(asked: &Asked) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(&to_doc(asked))
        .map_err(|e| Error::Internal(anyhow::Error::new(e).context("cannot encode a question")))
}

/// A lookahead stored in microseconds, checked as a client's would be.
fn lookahead(field: &str, us: i64) -> Result<Duration, Error> {
    let nanos = i32::try_from(us.rem_euclid(1_000_000) * 1_000).unwrap_or(0);
    check_lookahead(field, us.div_euclid(1_000_000), nanos)
}

/// Reads a stored question back, checked like a client's (a row written by another version may
/// not be one this version can ask).
fn from_doc(doc: AskedDoc) -> Result<Asked, Error> {
    let s = doc.shape;
    let unknown = |field: &str, value: &Option<String>| Error::invalid(field, format!("unknown {value:?}"));
    let kind = match s.kind.as_str() {
        "overview" => AskedKind::Overview {
            compare_previous: s.compare_previous,
        },
        "breakdown" => AskedKind::Breakdown {
            dimension: s
                .dimension
                .as_deref()
                .and_then(dimension_of)
                .ok_or_else(|| unknown("dimension", &s.dimension))?,
            limit: usize::try_from(s.limit.unwrap_or(0)).unwrap_or(usize::MAX),
        },
        "series" => AskedKind::Series(
            s.granularity
                .as_deref()
                .and_then(granularity_of)
                .ok_or_else(|| unknown("granularity", &s.granularity))?,
        ),
        other => return Err(Error::invalid("kind", format!("unknown {other:?}"))),
    };
    let from = doc
        .to
        .checked_sub_signed(Duration::microseconds(s.window_micros))
        .ok_or_else(|| Error::invalid("window_micros", format!("{} out of range", s.window_micros)))?;
    let query = Query {
        window: Window::new(from, doc.to)?,
        time_zone: parse_time_zone("time_zone", &s.time_zone)?,
        filters: Filters {
            channels: s.channels,
            inboxes: s.inboxes,
            teams: s.teams,
            agents: s.agents,
            tags: s.tags,
            priorities: s.priorities,
        },
        business_hours: s.business_hours,
        repeat_window: lookahead("repeat_window", s.repeat_window_micros)?,
        attribution_window: lookahead("attribution_window", s.attribution_window_micros)?,
        conversion_kinds: s.conversion_kinds,
    };
    Ok(Asked { query, kind })
}

/// Notes that `tenant` asked `asked` now: its shape's row takes this window and time, and only
/// the [`KEPT_PER_TENANT`] most recently asked shapes stay.
pub async fn note(pool: &PgPool, tenant: TenantId, asked: &Asked) -> Result<(), Error> {
    let doc = to_doc(asked);
    let shape = serde_json::to_string(&doc.shape)
        .map_err(|e| Error::Internal(anyhow::Error::new(e).context("cannot encode a question")))?;
    sqlx::query!(
        "insert into asked_questions (tenant_id, shape, question) values ($1, md5($2)::uuid, $3) \
         on conflict (tenant_id, shape) do update set question = excluded.question, asked_at = now()",
        tenant.0,
        shape,
        Json(&doc) as _,
    )
    .execute(pool)
    .await?;
    sqlx::query!(
        "delete from asked_questions where tenant_id = $1 and shape in \
         (select shape from asked_questions where tenant_id = $1 order by asked_at desc offset $2)",
        tenant.0,
        KEPT_PER_TENANT,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The questions `tenant` asked since `since`, most recently asked first; a stored question
/// this version cannot ask is left out (and logged).
pub async fn recent(pool: &PgPool, tenant: TenantId, since: DateTime<Utc>) -> Result<Vec<Asked>, Error> {
    let rows = sqlx::query_scalar!(
        r#"select question as "question: Json<AskedDoc>" from asked_questions
           where tenant_id = $1 and asked_at > $2 order by asked_at desc limit $3"#,
        tenant.0,
        since,
        KEPT_PER_TENANT,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|Json(doc)| match from_doc(doc) {
            Ok(asked) => Some(asked),
            Err(err) => {
                tracing::warn!(tenant = tenant.0, error = %err, "a stored question cannot be asked again");
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(kind: AskedKind) -> Asked {
        let from = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let mut query = Query::new(Window::new(from, from + Duration::days(30)).unwrap());
        query.time_zone = chrono_tz::Europe::Berlin;
        query.filters.channels = vec![Channel::Whatsapp];
        query.filters.agents = vec!["ana".into()];
        query.filters.priorities = vec![Priority::Urgent];
        query.repeat_window = Duration::days(3) + Duration::microseconds(5);
        query.conversion_kinds = vec!["purchase".into()];
        Asked { query, kind }
    }

    #[test]
    fn a_stored_question_reads_back_as_the_same_question() {
        let kinds = [true, false]
            .map(|compare_previous| AskedKind::Overview { compare_previous })
            .into_iter()
            .chain(Dimension::ALL.map(|dimension| AskedKind::Breakdown { dimension, limit: 25 }))
            .chain(Granularity::ALL.map(AskedKind::Series));
        for kind in kinds {
            let original = asked(kind);
            let json = serde_json::to_value(to_doc(&original)).unwrap();
            let back = from_doc(serde_json::from_value(json).unwrap()).unwrap();
            assert_eq!(back.kind, original.kind);
            let (q, o) = (&back.query, &original.query);
            assert_eq!(
                (q.window, q.time_zone, &q.filters),
                (o.window, o.time_zone, &o.filters)
            );
            assert_eq!(
                (q.repeat_window, q.attribution_window),
                (o.repeat_window, o.attribution_window)
            );
            assert_eq!(
                (q.business_hours, &q.conversion_kinds),
                (o.business_hours, &o.conversion_kinds)
            );
        }
    }

    #[test]
    fn a_stored_question_of_an_unknown_kind_is_refused() {
        let mut doc = to_doc(&asked(AskedKind::Series(Granularity::Day)));
        doc.shape.granularity = Some("fortnight".into());
        assert!(from_doc(doc).is_err());
    }
}
