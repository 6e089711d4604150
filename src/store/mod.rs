//! Postgres access with sqlx: the pool, migrations, and the SQLSTATE -> domain error mapping.
//!
//! The store calls the pure fact derivation of `domain::facts` inside its write transaction, so
//! the events and the facts derived from them commit together.

pub mod alerts;
pub mod answers;
pub mod events;
pub mod questions;
pub mod segments;
pub mod settings;
pub mod tenants;
pub mod whatsapp;

use std::time::Duration;

use sqlx::{
    ConnectOptions, Connection, PgPool, Postgres,
    postgres::{PgArgumentBuffer, PgConnectOptions, PgPoolOptions, PgTypeInfo, PgValueRef},
};

use crate::domain::{Error, tenant::TenantId};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Builds a pool that connects lazily, so the server can start (and report NOT_SERVING) while
/// the database is still unreachable.
pub fn lazy_pool(database_url: &str, max_connections: u32) -> Result<PgPool, Error> {
    let options: PgConnectOptions = database_url
        .parse()
        .map_err(|e| Error::invalid("database_url", format!("{e}")))?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // A connection keeps the largest message it ever sent or received (a day snapshot: up
        // to tens of MB) as buffer capacity, and pooled connections live for hours: in a soak
        // with ingest, 8 of them held 66 MiB that no budget counted (heaptrack, BENCHMARKS.md
        // "Memory outside the cache"). A returned connection gives that excess back; for
        // buffers at sqlx's 8 KiB default it is a no-op.
        .after_release(|conn, _meta| {
            Box::pin(async move {
                conn.shrink_buffers();
                Ok(true)
            })
        })
        // Lock waits between concurrent batches of one conversation are expected under load;
        // only statements slower than this are worth a warning.
        .connect_lazy_with(
            options
                .application_name("chatkpi")
                .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)),
        ))
}

/// Applies pending migrations (idempotent; sqlx serializes concurrent runners with a lock).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(err) => Error::from(err),
        other => Error::Internal(anyhow::Error::new(other).context("migrations failed")),
    })
}

/// Checks that the database answers, on a connection of its own: a pool busy with slow
/// queries must not make a healthy database look down.
pub struct Probe {
    options: PgConnectOptions,
    conn: Option<sqlx::PgConnection>,
}

impl Probe {
    pub fn new(pool: &PgPool) -> Self {
        Self {
            options: pool
                .connect_options()
                .as_ref()
                .clone()
                .application_name("chatkpi-health"),
            conn: None,
        }
    }

    /// Whether the database answers a trivial query within `timeout`.
    pub async fn ping(&mut self, timeout: Duration) -> bool {
        let answered = tokio::time::timeout(timeout, async {
            if self.conn.is_none() {
                self.conn = Some(self.options.connect().await?);
            }
            match self.conn.as_mut() {
                Some(conn) => sqlx::query!("select 1 as one").fetch_one(conn).await.map(|_| ()),
                None => Ok(()),
            }
        })
        .await;
        let up = matches!(answered, Ok(Ok(())));
        if !up {
            // A connection that failed or timed out is not trusted again.
            self.conn = None;
        }
        up
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            // Connection trouble and pool exhaustion are transient: the client may retry.
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => Error::Unavailable(format!("database unavailable: {err}")),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some(code) if transient(code) => {
                    Error::Unavailable(format!("database busy or restarting (SQLSTATE {code})"))
                }
                _ => Error::Internal(anyhow::Error::new(err)),
            },
            _ => Error::Internal(anyhow::Error::new(err)),
        }
    }
}

/// Whether a SQLSTATE says "try again": 40001 serialization failure, 40P01 deadlock, 57P01..57P03
/// shutdown or cannot connect now, 53300 too many connections, 08xxx connection exceptions.
/// Everything else (a missing relation, a violated constraint, ...) is a defect: INTERNAL.
fn transient(code: &str) -> bool {
    code == "40001" || code == "40P01" || code.starts_with("57P") || code == "53300" || code.starts_with("08")
}

// `TenantId` binds and decodes as the `bigint` it is stored as.
impl sqlx::Type<Postgres> for TenantId {
    fn type_info() -> PgTypeInfo {
        <i64 as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for TenantId {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <i64 as sqlx::Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl sqlx::Decode<'_, Postgres> for TenantId {
    fn decode(value: PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        <i64 as sqlx::Decode<Postgres>>::decode(value).map(TenantId)
    }
}

#[cfg(test)]
mod tests {
    use super::transient;

    #[test]
    fn sqlstates_of_a_busy_or_restarting_database_are_transient_and_defects_are_not() {
        for code in [
            "40001", "40P01", "57P01", "57P02", "57P03", "53300", "08000", "08006",
        ] {
            assert!(transient(code), "{code}");
        }
        // undefined table, unique violation, check violation, syntax error, disk full,
        // invalid text representation
        for code in ["42P01", "23505", "23514", "42601", "53100", "22P02"] {
            assert!(!transient(code), "{code}");
        }
    }
}
