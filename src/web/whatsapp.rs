//! The WhatsApp Cloud API webhook door (docs/metrics.md §11, README "WhatsApp"):
//! `GET /v1/whatsapp/{tenant}/{source}` answers Meta's verification request, `POST` takes a
//! signed body. Bodies are read up to [`MAX_BODY_BYTES`] (413 beyond), calls run under tower's
//! load shedding and concurrency limit and the server's request timeout, and the answer is 200
//! only once every event is committed: errors keep the Connect HTTP statuses of the JSON face
//! (401 signature, 400 not a webhook, 404 unknown source, 429 rate, 503 database), so Meta
//! retries exactly what was not stored.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    error_handling::HandleErrorLayer,
    extract::{Path, RawQuery, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::get,
};
use http::{StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tonic::Status;
use tower::{BoxError, ServiceBuilder};
use tracing::Instrument;

use super::connect::error;
use crate::{
    app::App,
    domain::{Error, tenant::TenantId, whatsapp::MAX_BODY_BYTES},
};

/// Webhook calls in progress at once over all tenants; more are answered 503 at once (Meta
/// retries) instead of queueing behind a slow database.
const MAX_CONCURRENT: usize = 64;

/// The routes, with their own limits (see the module doc).
pub fn routes(app: Arc<App>, timeout: Duration) -> Router {
    Router::new()
        .route("/v1/whatsapp/{tenant}/{source}", get(verify).post(receive))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(refused))
                .load_shed()
                .concurrency_limit(MAX_CONCURRENT)
                .timeout(timeout),
        )
        .with_state(app)
}

async fn refused(err: BoxError) -> Response {
    let status = if err.is::<tower::load_shed::error::Overloaded>() {
        Status::unavailable("too many WhatsApp webhooks in progress; retry")
    } else if err.is::<tower::timeout::error::Elapsed>() {
        Status::deadline_exceeded("the webhook did not finish within the server's request timeout")
    } else {
        tracing::error!(error = %err, "internal error in the webhook stack");
        Status::internal("internal error")
    };
    metrics::counter!("chatkpi_whatsapp_webhooks_total", "outcome" => "refused").increment(1);
    error(&status)
}

/// The tenant of the path; a path that cannot name one is an unknown source.
fn tenant(text: &str) -> Result<TenantId, Error> {
    text.parse::<i64>()
        .map(TenantId)
        .map_err(|_| Error::NotFound("WhatsApp source".into()))
}

fn answer(err: Error) -> Response {
    error(&Status::from(err))
}

/// `GET`: `hub.mode=subscribe&hub.verify_token=<token>&hub.challenge=<c>` answers `<c>`.
async fn verify(
    State(app): State<Arc<App>>,
    Path((tenant_text, source)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let result = async {
        app.ready.check()?;
        let tenant = tenant(&tenant_text)?;
        app.whatsapp
            .verify(
                tenant,
                &source,
                param("hub.mode").as_deref(),
                param("hub.verify_token").as_deref(),
                param("hub.challenge").as_deref(),
            )
            .await
    }
    .await;
    match result {
        Ok(challenge) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], challenge).into_response(),
        Err(err) => answer(err),
    }
}

/// `POST`: a webhook body, with `X-Hub-Signature-256`.
async fn receive(
    State(app): State<Arc<App>>,
    Path((tenant_text, source)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("whatsapp_webhook", tenant = %tenant_text, items = tracing::field::Empty);
    async move {
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                metrics::counter!("chatkpi_whatsapp_webhooks_total", "outcome" => "too_large").increment(1);
                let status = Status::resource_exhausted(format!(
                    "webhook body larger than {} MiB",
                    MAX_BODY_BYTES >> 20
                ));
                let mut response = error(&status);
                *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                return response;
            }
            Err(e) => return answer(Error::invalid("body", e.to_string())),
        };
        let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
        let result = async {
            app.ready.check()?;
            let tenant = tenant(&tenant_text)?;
            app.whatsapp
                .receive(&app.ingest, &app.limits, tenant, &source, signature, &body)
                .await
        }
        .await;
        match result {
            Ok(received) => {
                tracing::Span::current().record("items", received.items);
                let body = serde_json::json!({
                    "items": received.items,
                    "ignored": received.ignored,
                    "accepted": received.accepted,
                    "duplicates": received.duplicates,
                });
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
                    .into_response()
            }
            Err(err) => answer(err),
        }
    }
    .instrument(span)
    .await
}
