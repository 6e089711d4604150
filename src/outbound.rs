//! Outbound HTTP: one POST of a document to an alert destination (docs/metrics.md §12), over
//! HTTP/1.1, in clear or TLS (Mozilla's CA roots), with a timeout, refusing the server's own host
//! after name resolution unless allowed (the rule is checked again here because a name can
//! resolve to another address than when the rule was saved).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, RootCertStore, pki_types::ServerName},
};

use crate::domain::alert::is_own_host;

/// Why a POST did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("{0}")]
    Refused(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(String),
}

fn tls() -> TlsConnector {
    static CONFIG: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    TlsConnector::from(config.clone())
}

/// POSTs `body` to `url` with `headers`; returns the HTTP status of the answer (whose body is
/// read up to 64 KiB and dropped).
pub async fn post(
    url: &str,
    headers: &[(&str, String)],
    body: Bytes,
    timeout: Duration,
    allow_local: bool,
) -> Result<u16, PostError> {
    tokio::time::timeout(timeout, post_inner(url, headers, body, allow_local))
        .await
        .map_err(|_| PostError::Timeout(timeout))?
}

async fn post_inner(
    url: &str,
    headers: &[(&str, String)],
    body: Bytes,
    allow_local: bool,
) -> Result<u16, PostError> {
    let io = |e: &dyn std::fmt::Display| PostError::Io(e.to_string());
    let uri: http::Uri = url.parse().map_err(|e| io(&e))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or_else(|| PostError::Refused("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| io(&e))?
        .collect();
    if !allow_local && addrs.iter().any(|a| is_own_host(a.ip())) {
        return Err(PostError::Refused(format!(
            "{host} resolves to an address of the server's own host"
        )));
    }
    let addr = addrs
        .first()
        .ok_or_else(|| PostError::Io(format!("{host} has no address")))?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| io(&e))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or(host.clone());
    let mut request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("chatkpi/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(Full::new(body)).map_err(|e| io(&e))?;
    let status = if https {
        let name = ServerName::try_from(host.clone()).map_err(|e| io(&e))?;
        let stream = tls().connect(name, tcp).await.map_err(|e| io(&e))?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    Ok(status)
}

async fn send<T>(io: T, request: http::Request<Full<Bytes>>) -> Result<u16, PostError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let err = |e: &dyn std::fmt::Display| PostError::Io(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| err(&e))?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| err(&e))?;
    let status = response.status().as_u16();
    // Read a little of the answer so the receiver is not cut off mid-write; the rest is dropped.
    let _ = http_body_util::Limited::new(response.into_body(), 64 << 10)
        .collect()
        .await;
    Ok(status)
}
