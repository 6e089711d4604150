//! The dashboard page and its script and style, embedded in the binary at build time (no CDN,
//! nothing fetched from elsewhere: the page talks only to this server's JSON API).

use axum::{
    extract::Path,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};
use tonic::Status;

use super::connect;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// Only this server's own script, style and API: an injected value (an agent id, a tag) can never
/// run as code or send the key elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new binary serves a new page at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`: the dashboard.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /assets/{file}`.
pub async fn file(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => asset("text/css; charset=utf-8", STYLE),
        _ => not_found().await,
    }
}

/// Any other path: a Connect-style error, so a mistyped API path says what went wrong.
pub async fn not_found() -> Response {
    let status = Status::not_found(
        "no such path: the API is POST /chatkpi.v1.<Service>/<Method> (JSON) or gRPC, the \
         dashboard is /, the drill-down download /v1/conversations.csv",
    );
    let mut response = connect::error(&status);
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}
