//! Serving accepted connections: TLS when configured, HTTP/2 (gRPC) and HTTP/1.1 (JSON, CSV, the
//! dashboard) on the same port with hyper, every request through the service stack with its
//! connection's [`ConnInfo`], and a graceful shutdown bounded by the grace period.
//!
//! chatkpi drives hyper itself instead of `tonic::transport::Server` so that everything a
//! client can make the server hold is bounded here (README, Limits): the first request head
//! within the handshake timeout (TLS included), each later HTTP/1.1 request head within it too,
//! and deadlines answered by chatkpi's own layers as DEADLINE_EXCEEDED (tonic's server answers an
//! expired `grpc-timeout` with CANCELLED, also on the JSON face).

use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::Context;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tonic::body::Body;
use tower::{Service, ServiceExt};

use super::conn::{CallGuard, Conn, ConnInfo};

/// Bytes of answers buffered per HTTP/2 stream beyond what the client's window takes.
const MAX_SEND_BUFFER: usize = 64 * 1024;

/// HTTP settings of every connection.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Concurrent HTTP/2 streams of one connection.
    pub max_streams_per_connection: u32,
    /// Longest TLS handshake, and longest wait for each HTTP/1.1 request head.
    pub handshake_timeout: Duration,
}

/// A TLS acceptor for the PEM certificate chain and key: HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the TLS certificate is not a PEM certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("the TLS key is not a PEM private key")?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("invalid TLS certificate or key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves the connections `conns` delivers with `service` until `stop` turns true; then stops
/// accepting, lets open calls finish for at most `grace`, and cuts what is still open.
pub async fn serve<S>(
    mut conns: mpsc::Receiver<Conn>,
    tls: Option<TlsAcceptor>,
    settings: HttpSettings,
    service: S,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_streams_per_connection)
        // What one stream may buffer for a client that does not read (hyper's default is 400
        // KB): at most this plus HTTP/2's window per open stream.
        .max_send_buf_size(MAX_SEND_BUFFER);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            conn = conns.recv() => {
                let Some(conn) = conn else { break };
                let (builder, tls, service) = (builder.clone(), tls.clone(), service.clone());
                let watcher = graceful.watcher();
                let handshake = settings.handshake_timeout;
                connections.spawn(async move {
                    let info = conn.info().clone();
                    let service = hyper::service::service_fn(move |request| {
                        call(service.clone(), info.clone(), request)
                    });
                    match tls {
                        None => {
                            let served = builder.serve_connection(TokioIo::new(conn), service);
                            let _ = watcher.watch(served.into_owned()).await;
                        }
                        Some(tls) => {
                            let Ok(Ok(io)) = tokio::time::timeout(handshake, tls.accept(conn)).await else {
                                metrics::counter!("chatkpi_connections_closed_total", "reason" => "tls_handshake").increment(1);
                                return;
                            };
                            let served = builder.serve_connection(TokioIo::new(io), service);
                            let _ = watcher.watch(served.into_owned()).await;
                        }
                    }
                });
            }
            _ = stop.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(conns); // no more connections are accepted
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down, draining in-flight requests"
    );
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        // Open streams (health Watch, long ingest streams, watchers) would otherwise hold the
        // server forever.
        tracing::warn!("drain deadline reached, stopping with requests still open");
    }
    connections.abort_all();
}

/// One request of a connection: its connection's facts in the extensions, the connection
/// marked busy until the response body ends.
async fn call<S>(
    service: S,
    info: ConnInfo,
    mut request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Body>, Infallible>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let guard = info.activity.begin();
    request.extensions_mut().insert(info);
    let response = service.oneshot(request.map(Body::new)).await?;
    Ok(response.map(|body| Body::new(Busy { body, _guard: guard })))
}

/// A response body that keeps its connection busy (out of the idle timeout) until it ends.
struct Busy {
    body: Body,
    _guard: CallGuard,
}

impl http_body::Body for Busy {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
