//! WhatsApp sources and contacts in Postgres (docs/metrics.md §11): the sources a tenant posts
//! webhooks from, with their secrets, and each contact's current conversation.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::domain::{
    Error,
    tenant::TenantId,
    whatsapp::{Contact, Thread},
};

/// A source as its webhook needs it (with the app secret: never listed or returned).
#[derive(Debug, Clone)]
pub struct Source {
    pub source_id: String,
    pub name: String,
    pub inbox: String,
    pub app_secret: String,
    pub verify_token_hash: Vec<u8>,
    pub inactivity_seconds: i32,
}

/// A source as it is listed (no secret).
#[derive(Debug, Clone)]
pub struct Listed {
    pub source_id: String,
    pub name: String,
    pub inbox: String,
    pub inactivity_seconds: i32,
    pub created_at: DateTime<Utc>,
}

/// What a new source is made of.
pub struct NewSource<'a> {
    pub source_id: &'a str,
    pub name: &'a str,
    pub inbox: &'a str,
    pub app_secret: &'a str,
    pub verify_token_hash: &'a [u8],
    pub inactivity_seconds: i32,
}

pub async fn create_source(pool: &PgPool, tenant: TenantId, s: &NewSource<'_>) -> Result<(), Error> {
    sqlx::query!(
        "insert into whatsapp_sources (tenant_id, source_id, name, inbox, app_secret, \
         verify_token_hash, inactivity_seconds) values ($1, $2, $3, $4, $5, $6, $7)",
        tenant.0,
        s.source_id,
        s.name,
        s.inbox,
        s.app_secret,
        s.verify_token_hash,
        s.inactivity_seconds
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn list_sources(pool: &PgPool, tenant: TenantId) -> Result<Vec<Listed>, Error> {
    Ok(sqlx::query_as!(
        Listed,
        "select source_id, name, inbox, inactivity_seconds, created_at from whatsapp_sources \
         where tenant_id = $1 order by created_at, source_id",
        tenant.0
    )
    .fetch_all(pool)
    .await?)
}

/// Removes a source and its contacts; `false` when there was none.
pub async fn delete_source(pool: &PgPool, tenant: TenantId, source_id: &str) -> Result<bool, Error> {
    let done = sqlx::query!(
        "delete from whatsapp_sources where tenant_id = $1 and source_id = $2",
        tenant.0,
        source_id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn source(pool: &PgPool, tenant: TenantId, source_id: &str) -> Result<Option<Source>, Error> {
    Ok(sqlx::query_as!(
        Source,
        "select source_id, name, inbox, app_secret, verify_token_hash, inactivity_seconds \
         from whatsapp_sources where tenant_id = $1 and source_id = $2",
        tenant.0,
        source_id
    )
    .fetch_optional(pool)
    .await?)
}

/// Locks the contact's row for the rest of `tx` and reads where its conversation stands (with
/// the end of that conversation when it is not open).
pub async fn lock_thread(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    source_id: &str,
    contact: &Contact,
) -> Result<Option<Thread>, Error> {
    // The row may not exist yet: a transaction-scoped advisory lock on the contact makes two
    // first messages of one contact wait for each other instead of opening two conversations.
    sqlx::query!(
        "select pg_advisory_xact_lock(hashtextextended($1, 0))",
        format!(
            "wa/{tenant}/{source_id}/{}/{}",
            contact.phone_number_id, contact.wa_id
        )
    )
    .execute(&mut **tx)
    .await?;
    // Two primary-key lookups, not a join: a join's plan depends on statistics that lag behind
    // a table growing by thousands of contacts a minute (a hash join over every conversation
    // made each message of a known contact take seconds).
    let row = sqlx::query_as!(
        Current,
        "select conversation_id, opened_at, last_at, closed from whatsapp_contacts \
         where tenant_id = $1 and source_id = $2 and phone_number_id = $3 and wa_id = $4",
        tenant.0,
        source_id,
        contact.phone_number_id,
        contact.wa_id
    )
    .fetch_optional(&mut **tx)
    .await?;
    let Some(Current {
        conversation_id,
        opened_at,
        last_at,
        closed,
    }) = row
    else {
        return Ok(None);
    };
    let ended = sqlx::query!(
        r#"select state, coalesce(ended_at, resolved_at) as "closed_at" from conversations
           where tenant_id = $1 and conversation_id = $2"#,
        tenant.0,
        conversation_id
    )
    .fetch_optional(&mut **tx)
    .await?
    .map(|row| (row.state, row.closed_at));
    Ok(Some(Thread {
        conversation_id,
        opened_at,
        last_at,
        closed,
        ended_at: ended.and_then(|(state, at)| at.filter(|_| state != "open")),
    }))
}

/// Writes the contact's state after a body (in the same transaction as [`lock_thread`]).
pub async fn save_thread(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    source_id: &str,
    contact: &Contact,
    thread: &Thread,
) -> Result<(), Error> {
    sqlx::query!(
        "insert into whatsapp_contacts (tenant_id, source_id, phone_number_id, wa_id, \
             conversation_id, opened_at, last_at, closed) \
         values ($1, $2, $3, $4, $5, $6, $7, $8) \
         on conflict (tenant_id, source_id, phone_number_id, wa_id) do update set \
             conversation_id = excluded.conversation_id, opened_at = excluded.opened_at, \
             last_at = excluded.last_at, closed = excluded.closed",
        tenant.0,
        source_id,
        contact.phone_number_id,
        contact.wa_id,
        thread.conversation_id,
        thread.opened_at,
        thread.last_at,
        thread.closed
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A contact's current conversation, as a CRM looks it up.
#[derive(Debug, Clone)]
pub struct Current {
    pub conversation_id: String,
    pub opened_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    pub closed: bool,
}

pub async fn current(
    pool: &PgPool,
    tenant: TenantId,
    source_id: &str,
    phone_number_id: Option<&str>,
    wa_id: &str,
) -> Result<Option<Current>, Error> {
    // Without a phone number id: the contact's latest conversation on any number of the source.
    Ok(sqlx::query_as!(
        Current,
        "select conversation_id, opened_at, last_at, closed from whatsapp_contacts \
         where tenant_id = $1 and source_id = $2 and wa_id = $3 \
           and ($4::text is null or phone_number_id = $4) \
         order by last_at desc limit 1",
        tenant.0,
        source_id,
        wa_id,
        phone_number_id
    )
    .fetch_optional(pool)
    .await?)
}

/// An open conversation idle past its source's window.
#[derive(Debug, Clone)]
pub struct Idle {
    pub tenant_id: TenantId,
    pub source_id: String,
    pub phone_number_id: String,
    pub wa_id: String,
    pub conversation_id: String,
    pub close_at: DateTime<Utc>,
    /// The conversation is still open (not resolved or abandoned by the CRM).
    pub open: bool,
}

/// Up to `limit` contacts whose conversation has been idle longer than its source's window at
/// `now` and is not closed yet.
pub async fn idle(pool: &PgPool, now: DateTime<Utc>, limit: i64) -> Result<Vec<Idle>, Error> {
    Ok(sqlx::query_as!(
        Idle,
        r#"select w.tenant_id as "tenant_id!: TenantId", w.source_id as "source_id!",
                w.phone_number_id as "phone_number_id!", w.wa_id as "wa_id!",
                w.conversation_id as "conversation_id!",
                w.last_at + make_interval(secs => s.inactivity_seconds) as "close_at!",
                coalesce(c.state = 'open', true) as "open!"
         from whatsapp_sources s
         cross join lateral (
             select * from whatsapp_contacts w
             where w.tenant_id = s.tenant_id and w.source_id = s.source_id and not w.closed
               and w.last_at < $1::timestamptz - make_interval(secs => s.inactivity_seconds)
             order by w.last_at limit $2) w
         left join lateral (
             select state from conversations c
             where c.tenant_id = w.tenant_id and c.conversation_id = w.conversation_id) c on true
         order by w.last_at limit $2"#,
        now,
        limit
    )
    .fetch_all(pool)
    .await?)
}

/// Marks an idle contact's conversation closed, unless something arrived for it meanwhile.
pub async fn mark_closed(pool: &PgPool, idle: &Idle) -> Result<(), Error> {
    sqlx::query!(
        "update whatsapp_contacts set closed = true \
         where tenant_id = $1 and source_id = $2 and phone_number_id = $3 and wa_id = $4 \
           and conversation_id = $5",
        idle.tenant_id.0,
        idle.source_id,
        idle.phone_number_id,
        idle.wa_id,
        idle.conversation_id
    )
    .execute(pool)
    .await?;
    Ok(())
}
