//! gRPC's wire framing for the web handlers: a request message into the call the gRPC stack
//! expects, and a response body back into its messages and final status.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, header};
use http_body_util::BodyExt;
use tonic::{Code, Status, body::Body};

use crate::edge::rpc::ViaWeb;

/// Headers a web request carries that mean nothing (or something else) to the gRPC call.
const DROPPED: [&str; 5] = [
    "content-type",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "transfer-encoding",
];
/// A response message larger than this is refused rather than buffered.
const MAX_RESPONSE_MESSAGE: usize = 64 * 1024 * 1024;

/// The gRPC call for `path` with `message` (protobuf) as its one request message. Headers are
/// kept (the `authorization` key, `traceparent`), and so are the connection's extensions (the
/// client's address for the failed-auth limit); `grpc-*` headers a web client sent are not
/// (they are not part of the Connect protocol). Connect's `connect-timeout-ms` (checked by the
/// caller) becomes `grpc-timeout`.
pub(crate) fn grpc_request(
    parts: &http::request::Parts,
    path: &str,
    message: &[u8],
) -> Result<http::Request<Body>, Status> {
    let mut headers = parts.headers.clone();
    for name in DROPPED {
        headers.remove(name);
    }
    let grpc_headers: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("grpc-"))
        .cloned()
        .collect();
    for name in grpc_headers {
        headers.remove(name);
    }
    let timeout = headers
        .remove("connect-timeout-ms")
        .and_then(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
    if let Some(millis) = timeout {
        // grpc-timeout takes at most 8 digits.
        let value = if millis <= 99_999_999 {
            format!("{millis}m")
        } else {
            format!("{}S", millis / 1000)
        };
        headers.insert(
            "grpc-timeout",
            HeaderValue::from_str(&value).expect("digits and a unit are a valid header value"),
        );
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));

    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(
        u32::try_from(message.len()).map_err(|_| Status::resource_exhausted("request message too large"))?,
    );
    frame.put_slice(message);

    let mut request = http::Request::new(Body::new(http_body_util::Full::new(frame.freeze())));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = path
        .parse()
        .map_err(|_| Status::unimplemented(format!("no method {path}")))?;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = headers;
    *request.extensions_mut() = parts.extensions.clone();
    request.extensions_mut().insert(ViaWeb);
    Ok(request)
}

/// The messages of a gRPC response body, then its status.
pub(crate) struct Messages {
    body: Body,
    buf: BytesMut,
    ended: bool,
}

impl Messages {
    /// Fails at once with the call's status when the response is an error without a body
    /// (gRPC's trailers-only answer).
    pub fn new(response: http::Response<Body>) -> Result<Self, Status> {
        if let Some(status) = Status::from_header_map(response.headers())
            && status.code() != Code::Ok
        {
            return Err(status);
        }
        Ok(Self {
            body: response.into_body(),
            buf: BytesMut::new(),
            ended: false,
        })
    }

    /// The next message; `None` once the call ended with OK, `Err` when it ended with another
    /// status.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(message) = self.split()? {
                return Ok(Some(message));
            }
            if self.ended {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::internal("the response ended inside a message"))
                };
            }
            match self.body.frame().await {
                None => {
                    return Err(Status::internal("the response ended without a gRPC status"));
                }
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        let status = frame
                            .trailers_ref()
                            .and_then(Status::from_header_map)
                            .unwrap_or_else(|| Status::internal("the response ended without a gRPC status"));
                        if status.code() != Code::Ok {
                            return Err(status);
                        }
                        self.ended = true;
                    }
                },
            }
        }
    }

    /// One whole message off the front of the buffer, if there is one.
    fn split(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::internal("compressed response messages are not expected"));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_RESPONSE_MESSAGE {
            return Err(Status::internal("response message too large"));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}
