//! API-key authentication: `authorization: Bearer <key>` metadata -> tenant, for one scope.

use tonic::Request;

use crate::{
    app::{
        App,
        keys::{Authorized, KeyService},
    },
    domain::{
        Error,
        tenant::{Scope, TenantId, hash_key},
    },
    edge::rpc::remote_addr,
};

/// The tenant of the request's bearer key when it has `scope` (recorded on the call's span):
/// UNAUTHENTICATED (also for a key not looked up because its address failed too often with it,
/// or with too many keys of its tenant or of all tenants), PERMISSION_DENIED, UNAVAILABLE until the database is ready.
pub async fn authorize<T>(app: &App, request: &Request<T>, scope: Scope) -> Result<TenantId, Error> {
    authorize_key(app, request, scope).await.map(|a| a.tenant)
}

/// [`authorize`], with what a stream needs to follow its key's revocation
/// (`app.keys.watch`).
pub async fn authorize_key<T>(app: &App, request: &Request<T>, scope: Scope) -> Result<Authorized, Error> {
    let key = bearer(request)?;
    let claimed = KeyService::claimed_tenant(key)?;
    let hash = hash_key(key);
    let authorized = match app.keys.remembered(&hash, scope)? {
        Some(known) => known,
        None => {
            let ip = remote_addr(request).map(|a| a.ip());
            app.limits.auth_lookup_allowed(ip, claimed, &hash)?;
            match app.keys.look_up(key, hash.clone(), scope).await {
                Ok(known) => known,
                Err(err) => {
                    // Only unknown keys count: a valid key without a scope is a setup mistake,
                    // not a guess.
                    if matches!(err, Error::Unauthenticated(_)) {
                        app.limits.auth_failed(ip, claimed, &hash);
                    }
                    return Err(err);
                }
            }
        }
    };
    app.ready.check()?;
    tracing::Span::current().record("tenant", authorized.tenant.0);
    Ok(authorized)
}

/// The key of `authorization: Bearer <key>` (the scheme in any case, RFC 9110).
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
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .ok_or(Error::Unauthenticated("authorization must be `Bearer <api key>`"))
}
