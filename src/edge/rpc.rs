//! The tower stack every gRPC call passes through before its service (web calls too: they
//! become gRPC calls, `crate::web`):
//!
//! - [`Observe`]: a `rpc` span per call (method, tenant and batch size recorded by the
//!   handlers, outcome), child of the caller's W3C `traceparent` when there is one, exported by
//!   [`crate::telemetry`] when OpenTelemetry is configured; calls by method and status and their
//!   latency; INTERNAL for an undecodable request body rewritten as INVALID_ARGUMENT;
//! - then, except for health and reflection (so probes keep answering while limits bite), the
//!   caller's deadline (`grpc-timeout`, or Connect's `connect-timeout-ms`), tower's load
//!   shedding over tower's global concurrency limit (a call beyond it is answered at once with
//!   RESOURCE_EXHAUSTED, never queued) and tower's timeout (the server's request timeout).
//!   An expired deadline or timeout is DEADLINE_EXCEEDED and drops the handler's future, which
//!   stops its work (a KPI computation checks its cancellation flag).

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
use tonic::{Status, body::Body};
use tower::{
    BoxError, Layer, Service, ServiceBuilder, ServiceExt, limit::GlobalConcurrencyLimitLayer,
    load_shed::error::Overloaded, timeout::error::Elapsed, util::BoxCloneSyncService,
};
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::conn::ConnInfo;

/// Marks a call that arrived as JSON or CSV over HTTP (its span says `connect_rpc`).
#[derive(Debug, Clone, Copy)]
pub struct ViaWeb;

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

/// Limits the stack enforces.
#[derive(Debug, Clone)]
pub struct RpcLimits {
    pub max_concurrent: usize,
    pub timeout: Duration,
}

/// A gRPC service as the stack passes it around.
pub type Grpc = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// The stack (see the module doc) around `routes`.
pub fn stack<S>(routes: S, limits: &RpcLimits) -> Grpc
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let server_timeout = limits.timeout;
    let limited = ServiceBuilder::new()
        .layer(DeadlineLayer)
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(Arc::new(
            Semaphore::new(limits.max_concurrent),
        )))
        .timeout(server_timeout)
        .service(routes.clone());
    let limited = BoxCloneSyncService::new(limited);
    let exempt = BoxCloneSyncService::new(routes);
    let steered = tower::service_fn(
        move |request: http::Request<Body>| -> BoxFuture<Result<http::Response<Body>, Infallible>> {
            // Health and reflection are never limited.
            if request.uri().path().starts_with("/grpc.") {
                return Box::pin(exempt.clone().oneshot(request));
            }
            let call = limited.clone().oneshot(request);
            Box::pin(async move { Ok(call.await.unwrap_or_else(|e| refusal(&e, server_timeout))) })
        },
    );
    BoxCloneSyncService::new(Observe.layer(steered))
}

/// The answer to a call the limits refused or cut.
fn refusal(err: &BoxError, server_timeout: Duration) -> http::Response<Body> {
    let status = if err.is::<Overloaded>() {
        metrics::counter!("chatkpi_limit_rejections_total", "limit" => "concurrency").increment(1);
        Status::resource_exhausted("server busy: too many calls in progress; retry shortly")
    } else if err.is::<Elapsed>() {
        metrics::counter!("chatkpi_limit_rejections_total", "limit" => "timeout").increment(1);
        Status::deadline_exceeded(format!(
            "the call did not finish within the server's {} s request timeout; its work was stopped",
            server_timeout.as_secs()
        ))
    } else if err.is::<ClientDeadline>() {
        Status::deadline_exceeded("the call's deadline passed; its work was stopped")
    } else {
        tracing::error!(error = %err, "internal error in the service stack");
        Status::internal("internal error")
    };
    status.into_http()
}

/// The caller's deadline passed (`grpc-timeout`).
#[derive(Debug)]
struct ClientDeadline;

impl std::fmt::Display for ClientDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client's deadline passed")
    }
}

impl std::error::Error for ClientDeadline {}

/// Applies the caller's `grpc-timeout` (gRPC over HTTP/2: `<1-8 digits><H|M|S|m|u|n>`); a
/// malformed one is ignored, as gRPC servers do.
#[derive(Debug, Clone, Copy)]
struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Debug, Clone)]
struct Deadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Deadline<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        let call = self.inner.call(request);
        Box::pin(async move {
            match deadline {
                None => call.await,
                Some(d) => tokio::time::timeout(d, call)
                    .await
                    .unwrap_or_else(|_| Err(Box::new(ClientDeadline))),
            }
        })
    }
}

/// A `grpc-timeout` value (gRPC over HTTP/2: at most 8 digits and a unit).
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Observes every call (see the module doc).
#[derive(Debug, Clone, Copy)]
struct Observe;

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed { inner }
    }
}

#[derive(Clone)]
struct Observed<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for Observed<S>
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
        Box::pin(observe(inner, request))
    }
}

async fn observe<S>(mut inner: S, request: http::Request<Body>) -> Result<http::Response<Body>, Infallible>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let path = request.uri().path().to_owned();
    let method = method_label(&path);
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
    let observation = Observation {
        method,
        started: Instant::now(),
        span: span.clone(),
    };
    let response = inner.call(request).instrument(span).await?;
    Ok(observation.attach(response))
}

/// Counts a web call refused before it became a gRPC call (unknown path, content type, a body
/// that is not the message, ...), so `chatkpi_rpc_requests_total` sees every call.
pub fn count_refused(path: &str, code: tonic::Code) {
    let method = if code == tonic::Code::Unimplemented {
        "unknown"
    } else {
        method_label(path)
    };
    metrics::counter!("chatkpi_rpc_requests_total", "method" => method, "code" => format!("{code:?}"))
        .increment(1);
}

/// The client's address, from the connection the call came on.
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<std::net::SocketAddr> {
    request.extensions().get::<ConnInfo>().and_then(|c| c.remote)
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
}

impl Observation {
    /// Wraps the response body; a status already in the headers (an error answered at once)
    /// is the call's status.
    fn attach(self, mut response: http::Response<Body>) -> http::Response<Body> {
        client_fault(response.headers_mut());
        let code = grpc_status(response.headers());
        let (parts, body) = response.into_parts();
        let observed = ObservedBody {
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
struct ObservedBody {
    body: Body,
    code: Option<i32>,
    observation: Option<Observation>,
}

impl HttpBody for ObservedBody {
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

impl ObservedBody {
    fn end(&mut self) {
        if let Some(o) = self.observation.take() {
            o.finish(self.code);
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(o) = self.observation.take() {
            // Dropped before its end: a trailers-only answer never polled, or an abandoned call.
            o.finish(self.code);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{grpc_timeout, method_label};

    #[test]
    fn grpc_timeouts_parse_by_their_unit_and_malformed_ones_are_ignored() {
        assert_eq!(grpc_timeout("50m"), Some(Duration::from_millis(50)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "5x", "-5m", "5.0S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }

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
