//! The HTTP/1.1 face of the gRPC listener: JSON over HTTP for every unary RPC (the Connect
//! protocol's unary rules, [`connect`]), the drill-down as a streamed CSV download ([`csv`]) and
//! the dashboard page ([`assets`]).
//!
//! Nothing here answers a question itself. A web request is turned into the gRPC call it
//! stands for and sent through the same tower stack as a gRPC client's call (the `rpc` span,
//! metrics, concurrency limit, request timeout) to the same services (key, scope, validation,
//! per-tenant limits); the answer is turned back into JSON or CSV. So a JSON call and a gRPC
//! call cannot disagree, and a limit holds whichever door a call came in by.

pub mod assets;
pub mod connect;
pub mod csv;
mod frames;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    Router,
    routing::{get, post},
};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt, util::BoxCloneSyncService};

/// The gRPC stack below this layer, as the web handlers call it.
pub(crate) type Grpc = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Marks a call that arrived as JSON or CSV over HTTP (the `rpc` span says `connect_rpc`).
#[derive(Debug, Clone, Copy)]
pub struct ViaWeb;

/// Puts the web routes in front of the gRPC stack (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct WebLayer;

impl<S> Layer<S> for WebLayer
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Service = Web<S>;

    fn layer(&self, inner: S) -> Web<S> {
        Web {
            router: router(BoxCloneSyncService::new(inner.clone())),
            inner,
        }
    }
}

/// The service [`WebLayer`] builds: gRPC calls pass straight through, the rest is routed.
#[derive(Clone)]
pub struct Web<S> {
    inner: S,
    router: Router,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Web<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if is_grpc(&request) {
            // The clone that was polled ready serves this call (tower's rule for clones).
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(inner.call(request));
        }
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await?;
            Ok(response.map(Body::new))
        })
    }
}

/// gRPC (and gRPC-Web, which tonic answers itself) is told apart by its content type.
fn is_grpc(request: &http::Request<Body>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn router(grpc: Grpc) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::file))
        .route("/v1/conversations.csv", get(csv::download))
        .route("/{service}/{method}", post(connect::unary))
        .fallback(assets::not_found)
        .with_state(grpc)
}
