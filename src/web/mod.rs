//! The HTTP/1.1 face of the gRPC listener: JSON over HTTP for every unary RPC (the Connect
//! protocol's unary rules, [`connect`]), the drill-down as a streamed CSV download ([`csv`]) and
//! the dashboard page ([`assets`]), and the WhatsApp Cloud API webhook ([`whatsapp`]).
//!
//! Nothing here answers a question itself. A web request is turned into the gRPC call it
//! stands for and sent through the same tower stack as a gRPC client's call (the `rpc` span,
//! metrics, concurrency limit, request timeout) to the same services (key, scope, validation,
//! per-tenant limits); the answer is turned back into JSON or CSV. So a JSON call and a gRPC
//! call cannot disagree, and a limit holds whichever door a call came in by. (gRPC-Web is not
//! served: it would need the `tonic-web` layer.) The webhook is the exception: Meta signs its
//! bodies instead of sending an API key, so it calls the application's WhatsApp use case
//! directly, under limits of its own.

pub mod assets;
pub mod connect;
pub mod csv;
mod frames;
pub mod whatsapp;

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    routing::{get, post},
};
use futures::future::{BoxFuture, FutureExt};
use tonic::body::Body;
use tower::{ServiceExt, util::BoxCloneSyncService};

use crate::{app::App, edge::rpc::Grpc};

/// What the web handlers share: the gRPC stack they call, and the server's request timeout
/// (a web call, its request body included, is bounded by it as a gRPC call is).
#[derive(Clone)]
pub struct Web {
    pub(crate) grpc: Grpc,
    pub(crate) timeout: Duration,
}

/// The service of the listener: gRPC calls pass straight through to `grpc`, everything else is
/// routed (see the module doc).
pub fn service(grpc: Grpc, timeout: Duration, app: Arc<App>) -> Grpc {
    let router = router(
        Web {
            grpc: grpc.clone(),
            timeout,
        },
        whatsapp::routes(app, timeout),
    );
    BoxCloneSyncService::new(tower::service_fn(
        move |request: http::Request<Body>| -> BoxFuture<'static, Result<http::Response<Body>, Infallible>> {
            if is_grpc(&request) {
                grpc.clone().oneshot(request).boxed()
            } else {
                let router = router.clone();
                async move {
                    let response = router.oneshot(request.map(axum::body::Body::new)).await?;
                    Ok(response.map(Body::new))
                }
                .boxed()
            }
        },
    ))
}

/// gRPC is told apart by its content type (`application/grpc`, `application/grpc+proto`).
fn is_grpc(request: &http::Request<Body>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn router(web: Web, webhooks: Router) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::file))
        .route("/v1/conversations.csv", get(csv::download))
        .route("/{service}/{method}", post(connect::call))
        .with_state(web)
        .merge(webhooks)
        .fallback(assets::not_found)
}
