//! API-key authentication: `authorization: Bearer <key>` metadata -> tenant, for one scope.

use tonic::Request;

use crate::{
    app::App,
    domain::{
        Error,
        tenant::{Scope, TenantId},
    },
    edge::rpc::remote_addr,
};

/// The tenant of the request's bearer key when it has `scope` (recorded on the call's span):
/// UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED for an address that failed too often,
/// UNAVAILABLE until the database is ready.
pub async fn authorize<T>(app: &App, request: &Request<T>, scope: Scope) -> Result<TenantId, Error> {
    let ip = remote_addr(request).map(|a| a.ip());
    app.limits.auth_allowed(ip)?;
    let result = match bearer(request) {
        Ok(key) => app.keys.authorize(key, scope).await,
        Err(err) => Err(err),
    };
    let tenant = match result {
        Ok(tenant) => tenant,
        Err(err) => {
            // Only unknown keys count: a valid key without a scope is a setup mistake, not a
            // guess.
            if matches!(err, Error::Unauthenticated(_)) {
                app.limits.auth_failed(ip);
            }
            return Err(err);
        }
    };
    app.ready.check()?;
    tracing::Span::current().record("tenant", tenant.0);
    Ok(tenant)
}

fn bearer<T>(request: &Request<T>) -> Result<&str, Error> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or(Error::Unauthenticated(
            "missing authorization metadata (expected `Bearer <api key>`)",
        ))?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or(Error::Unauthenticated("authorization must be `Bearer <api key>`"))
}
