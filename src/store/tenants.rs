//! Tenants and API keys in Postgres.

use sqlx::PgPool;

use crate::domain::{
    Error,
    tenant::{NewApiKey, TenantId, generate_key},
};

/// Creates a tenant and its first API key; returns the id and the key (shown once).
pub async fn create_tenant(pool: &PgPool, name: &str) -> Result<(TenantId, NewApiKey), Error> {
    let mut tx = pool.begin().await?;
    let (tenant,): (TenantId,) = sqlx::query_as("insert into tenants (name) values ($1) returning tenant_id")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    let key = generate_key(tenant);
    sqlx::query("insert into api_keys (tenant_id, key_hash) values ($1, $2)")
        .bind(tenant)
        .bind(&key.hash)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((tenant, key))
}

/// Adds another API key to an existing tenant (key rotation).
pub async fn create_key(pool: &PgPool, tenant: TenantId) -> Result<NewApiKey, Error> {
    let exists: Option<(TenantId,)> = sqlx::query_as("select tenant_id from tenants where tenant_id = $1")
        .bind(tenant)
        .fetch_optional(pool)
        .await?;
    if exists.is_none() {
        return Err(Error::NotFound(format!("tenant {tenant}")));
    }
    let key = generate_key(tenant);
    sqlx::query("insert into api_keys (tenant_id, key_hash) values ($1, $2)")
        .bind(tenant)
        .bind(&key.hash)
        .execute(pool)
        .await?;
    Ok(key)
}

/// Whether `hash` is a live (not revoked) key of `tenant`.
pub async fn key_is_valid(pool: &PgPool, tenant: TenantId, hash: &[u8]) -> Result<bool, Error> {
    let row: Option<(i32,)> = sqlx::query_as(
        "select 1 from api_keys where tenant_id = $1 and key_hash = $2 and revoked_at is null",
    )
    .bind(tenant)
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    Ok(row.is_some())
}
