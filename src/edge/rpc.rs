//! The tower layer every call passes through before its service:
//!
//! - a `rpc` span per call (method, tenant and batch size recorded by the handlers, outcome),
//!   child of the caller's W3C `traceparent` when there is one, exported by
//!   [`crate::telemetry`] when OpenTelemetry is configured;
//! - the global concurrency limit with load shedding: a call beyond it is answered at once with
//!   RESOURCE_EXHAUSTED, never queued;
//! - the request timeout: DEADLINE_EXCEEDED, and the handler's future is dropped, which stops
//!   its work (a KPI computation checks its cancellation flag);
//! - metrics: calls by method and status, latency, limit rejections;
//! - the connection's activity (a call in progress keeps it from the idle timeout).
//!
//! Health and reflection are exempt from the limit and the timeout, so health stays
//! answerable while the limits bite.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::propagation::Extractor;
use tokio::sync::Semaphore;
use tonic::{Status, body::Body, transport::server::TlsConnectInfo};
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::conn::{CallGuard, ConnInfo};
use crate::web::ViaWeb;

/// The services whose methods are labelled by name in metrics and spans; any other path is
/// `unknown` (labels stay bounded whatever clients send).
const SERVICES: [&str; 6] = [
    "chatkpi.v1.EventService",
    "chatkpi.v1.MetricsService",
    "chatkpi.v1.AdminService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Limits the layer enforces.
#[derive(Debug, Clone)]
pub struct RpcLimits {
    pub max_concurrent: usize,
    pub timeout: Duration,
}

/// The layer (see the module doc).
#[derive(Clone)]
pub struct RpcLayer {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl RpcLayer {
    pub fn new(limits: &RpcLimits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            timeout: limits.timeout,
        }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer wraps around the gRPC routes.
#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    layer: RpcLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Rpc<S>
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
        // The clone that was polled ready serves this call (tower's rule for cloned services).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(serve(inner, layer, request))
    }
}

async fn serve<S>(
    mut inner: S,
    layer: RpcLayer,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Infallible>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let path = request.uri().path().to_owned();
    let method = method_label(&path);
    let exempt = method.starts_with("/grpc.");
    // A call that came as JSON or CSV over HTTP (crate::web) is the same call, by another door.
    let system = if request.extensions().get::<ViaWeb>().is_some() {
        "connect_rpc"
    } else {
        "grpc"
    };
    let span = tracing::info_span!(
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = system,
        rpc.method = method,
        tenant = Empty,
        events = Empty,
        outcome = Empty,
        rpc.grpc.status_code = Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(request.headers())));
    let _ = span.set_parent(parent);
    let call = conn_info(&request).map(|c| c.activity.begin());
    let observation = Observation {
        method,
        started: Instant::now(),
        span: span.clone(),
        _call: call,
    };
    if exempt {
        let response = inner.call(request).instrument(span).await?;
        return Ok(observation.attach(response));
    }
    let Ok(permit) = layer.permits.clone().try_acquire_owned() else {
        metrics::counter!("chatkpi_limit_rejections_total", "limit" => "concurrency").increment(1);
        let status = Status::resource_exhausted("server busy: too many calls in progress; retry shortly");
        return Ok(observation.attach(status.into_http()));
    };
    let response = match tokio::time::timeout(layer.timeout, inner.call(request).instrument(span)).await {
        Ok(response) => response?,
        Err(_) => {
            metrics::counter!("chatkpi_limit_rejections_total", "limit" => "timeout").increment(1);
            Status::deadline_exceeded(format!(
                "the call did not finish within the server's {} s request timeout; its work was stopped",
                layer.timeout.as_secs()
            ))
            .into_http()
        }
    };
    drop(permit);
    Ok(observation.attach(response))
}

/// The connection a call came on, plaintext or TLS.
fn conn_info(request: &http::Request<Body>) -> Option<&ConnInfo> {
    let ext = request.extensions();
    ext.get::<ConnInfo>()
        .or_else(|| ext.get::<TlsConnectInfo<ConnInfo>>().map(|t| t.get_ref()))
}

/// The client's address, from the connection the call came on.
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<std::net::SocketAddr> {
    let ext = request.extensions();
    ext.get::<ConnInfo>()
        .or_else(|| ext.get::<TlsConnectInfo<ConnInfo>>().map(|t| t.get_ref()))
        .and_then(|c| c.remote)
}

/// `/service/method` when the service is one of [`SERVICES`] and the method a plain name.
fn method_label(path: &str) -> &'static str {
    let known = path
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| {
            SERVICES.contains(&service)
                && !method.is_empty()
                && method.len() <= 40
                && method.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    if known {
        // Leaked once per distinct path of a known service (a bounded set once unknown
        // methods, answered UNIMPLEMENTED, are relabelled below).
        intern(path)
    } else {
        "unknown"
    }
}

/// A `&'static str` per distinct known path.
fn intern(path: &str) -> &'static str {
    use std::{collections::HashSet, sync::Mutex};
    static PATHS: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    let paths = paths.get_or_insert_with(HashSet::new);
    if let Some(p) = paths.get(path) {
        return p;
    }
    if paths.len() >= 256 {
        return "unknown";
    }
    let leaked: &'static str = Box::leak(path.to_owned().into_boxed_str());
    paths.insert(leaked);
    leaked
}

/// Reads W3C trace context from request headers.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// What is recorded when a call ends (its response body finishes or is dropped).
struct Observation {
    method: &'static str,
    started: Instant,
    span: tracing::Span,
    _call: Option<CallGuard>,
}

impl Observation {
    /// Wraps the response body; a status already in the headers (an error answered at once)
    /// is the call's status.
    fn attach(self, mut response: http::Response<Body>) -> http::Response<Body> {
        client_fault(response.headers_mut());
        let code = grpc_status(response.headers());
        let (parts, body) = response.into_parts();
        let observed = Observed {
            body,
            code,
            observation: Some(self),
        };
        http::Response::from_parts(parts, Body::new(observed))
    }

    fn finish(self, code: Option<i32>) {
        // A call the client abandoned before its status was sent: CANCELLED.
        let code = code.unwrap_or(tonic::Code::Cancelled as i32);
        let method = if code == tonic::Code::Unimplemented as i32 {
            "unknown"
        } else {
            self.method
        };
        let code_name = format!("{:?}", tonic::Code::from_i32(code));
        self.span.record("rpc.grpc.status_code", code);
        self.span.record("outcome", code_name.as_str());
        metrics::counter!("chatkpi_rpc_requests_total", "method" => method, "code" => code_name).increment(1);
        metrics::histogram!("chatkpi_rpc_duration_seconds", "method" => method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Messages of tonic's request decoding that describe a malformed request, which tonic answers
/// with INTERNAL.
const CLIENT_FAULTS: [&str; 3] = [
    "failed to decode Protobuf message",
    "Unexpected EOF decoding stream",
    "protocol error: received message with",
];

/// Rewrites INTERNAL for a request body that could not be decoded into INVALID_ARGUMENT: the
/// client sent it, the server is fine.
fn client_fault(headers: &mut http::HeaderMap) {
    if grpc_status(headers) != Some(tonic::Code::Internal as i32) {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if CLIENT_FAULTS.iter().any(|f| status.message().starts_with(f)) {
        headers.remove("grpc-message");
        let rewritten = Status::invalid_argument(format!("request body: {}", status.message()));
        let _ = rewritten.add_header(headers);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response body that reports the call's status when it ends.
struct Observed {
    body: Body,
    code: Option<i32>,
    observation: Option<Observation>,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_trailers() {
                    let mut frame = match polled {
                        Poll::Ready(Some(Ok(frame))) => frame,
                        _ => unreachable!("matched above"),
                    };
                    if let Some(trailers) = frame.trailers_mut() {
                        client_fault(trailers);
                        this.code = grpc_status(trailers).or(this.code);
                    }
                    this.end();
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
            Poll::Ready(Some(Err(status))) => {
                this.code = Some(status.code() as i32);
                this.end();
            }
            Poll::Ready(None) => this.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Observed {
    fn end(&mut self) {
        if let Some(o) = self.observation.take() {
            o.finish(self.code);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(o) = self.observation.take() {
            // Dropped before its end: a trailers-only answer never polled, or an abandoned call.
            o.finish(self.code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn only_known_services_get_their_own_label() {
        assert_eq!(
            method_label("/chatkpi.v1.MetricsService/GetOverview"),
            "/chatkpi.v1.MetricsService/GetOverview"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/evil.Service/Anything"), "unknown");
        assert_eq!(method_label("/chatkpi.v1.MetricsService/a%2Fb"), "unknown");
        assert_eq!(method_label("/"), "unknown");
    }
}
