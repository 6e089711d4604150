//! API-key authentication: `authorization: Bearer <key>` metadata -> tenant.

use tonic::metadata::MetadataMap;

use crate::{
    app::App,
    domain::{Error, tenant::TenantId},
};

/// The tenant of the request's bearer key, or UNAUTHENTICATED; UNAVAILABLE until the database
/// is ready.
pub async fn tenant(app: &App, metadata: &MetadataMap) -> Result<TenantId, Error> {
    let header = metadata.get("authorization").ok_or(Error::Unauthenticated(
        "missing authorization metadata (expected `Bearer <api key>`)",
    ))?;
    let key = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or(Error::Unauthenticated("authorization must be `Bearer <api key>`"))?;
    let tenant = app.keys.tenant_of(key).await?;
    app.ready.check()?;
    Ok(tenant)
}
