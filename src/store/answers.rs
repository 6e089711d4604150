//! Kept answers in Postgres: a dashboard question's answer (JSON) with the database state it
//! holds for, read back only while that state is the tenant's (app/kpis/kept.rs).

use sqlx::PgPool;

use crate::domain::{Error, tenant::TenantId};

/// Answers kept per tenant: the most recently written (a dashboard asks a handful of
/// questions, each over a few windows).
pub const KEPT_PER_TENANT: i64 = 32;

/// What an answer was computed from: the refresh's xmin and erasure count (engine's `AsOf`) and
/// the fingerprint of the settings it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basis {
    pub xmin: i64,
    pub erasures: i64,
    pub settings: [u8; 32],
}

/// Keeps `body` as the answer to `question` on `basis`, unless a row of a later state is kept
/// already or an erasure happened since `basis` (its answer must not outlive the erasure); then
/// only the [`KEPT_PER_TENANT`] most recently written stay.
pub async fn keep(
    pool: &PgPool,
    tenant: TenantId,
    question: &[u8; 32],
    basis: &Basis,
    body: &[u8],
) -> Result<(), Error> {
    sqlx::query!(
        r#"insert into kept_answers (tenant_id, question, as_of_xmin, erasures, settings, body)
           select $1, $2, $3::text::xid8, $4, $5, $6
           from tenants where tenant_id = $1 and erasures = $4
           on conflict (tenant_id, question) do update
             set as_of_xmin = excluded.as_of_xmin, erasures = excluded.erasures,
                 settings = excluded.settings, body = excluded.body, written_at = now()
             where kept_answers.as_of_xmin <= excluded.as_of_xmin"#,
        tenant.0,
        &question[..],
        basis.xmin.to_string(),
        basis.erasures,
        &basis.settings[..],
        body
    )
    .execute(pool)
    .await?;
    sqlx::query!(
        "delete from kept_answers where tenant_id = $1 and question in \
         (select question from kept_answers where tenant_id = $1 order by written_at desc offset $2)",
        tenant.0,
        KEPT_PER_TENANT,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The answer kept for `question` if it still holds: computed under settings `settings`, and
/// since its xmin the tenant has no conversation record changed, no presence or conversion
/// event written and no erasure. One statement, so one snapshot: every batch acknowledged before
/// it began is seen (docs/metrics.md §12, "Kept answers").
pub async fn holding(
    pool: &PgPool,
    tenant: TenantId,
    question: &[u8; 32],
    settings: &[u8; 32],
) -> Result<Option<Vec<u8>>, Error> {
    Ok(sqlx::query_scalar!(
        r#"select k.body from kept_answers k
           where k.tenant_id = $1 and k.question = $2 and k.settings = $3
             and k.erasures = (select t.erasures from tenants t where t.tenant_id = $1)
             and not exists (select 1 from conversations c
                             where c.tenant_id = $1 and c.change_xid >= k.as_of_xmin)
             and not exists (select 1 from events e
                             where e.tenant_id = $1 and e.kind in ('agent_status', 'conversion')
                               and e.ingest_xid >= k.as_of_xmin)"#,
        tenant.0,
        &question[..],
        &settings[..]
    )
    .fetch_optional(pool)
    .await?)
}

/// Deletes every kept answer of `tenant` (an erasure: they counted the erased customer).
pub async fn forget(conn: &mut sqlx::PgConnection, tenant: TenantId) -> Result<(), Error> {
    sqlx::query!("delete from kept_answers where tenant_id = $1", tenant.0)
        .execute(conn)
        .await?;
    Ok(())
}
