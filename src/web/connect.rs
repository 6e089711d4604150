//! The Connect protocol over HTTP/1.1 (and HTTP/2) for every RPC:
//!
//! - unary methods: `POST /chatkpi.v1.<Service>/<Method>` with `Content-Type: application/json`
//!   (the proto3 JSON mapping) or `application/proto` (binary), answered 200 with the response
//!   message, or with the error as `{"code": "invalid_argument", "message": ...}` and the HTTP
//!   status Connect assigns to that code;
//! - server-streaming methods (ListConversations, WatchOverview) by Connect's streaming rules:
//!   `Content-Type: application/connect+json` (or `+proto`), the request as one enveloped message,
//!   answered 200 with enveloped messages and an end-of-stream message that carries the error,
//!   if any; the dashboard and browser clients can watch an overview this way;
//! - StreamEvents (client and server streaming) needs HTTP/2 gRPC: its request is read and
//!   answered with a Connect `unimplemented` error.
//!
//! `connect-timeout-ms` is the call's deadline (DEADLINE_EXCEEDED, `deadline_exceeded` here);
//! a unary call, its request body included, is bounded by the server's request timeout too.
//! The call itself is the gRPC call (see [`super`]).

use std::time::Duration;

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;
use serde::{Serialize, de::DeserializeOwned};
use tonic::{Code, Status};
use tower::ServiceExt;

use super::{
    Web,
    frames::{Messages, grpc_request},
};
use crate::{
    edge::{MAX_MESSAGE_BYTES, rpc::count_refused},
    grpc::pb,
};

/// Proto3 JSON in, protobuf out (or the parse error, with its line and column).
type Decode = fn(&[u8]) -> Result<Vec<u8>, String>;
/// Protobuf in, proto3 JSON out.
type Encode = fn(&[u8]) -> Result<Vec<u8>, String>;

/// A method of the API as the web door sees it.
pub enum Method {
    Unary {
        path: &'static str,
        decode: Decode,
        encode: Encode,
    },
    /// Server streaming: one request message, a stream of answers.
    ServerStream {
        path: &'static str,
        decode: Decode,
        encode: Encode,
    },
    /// Client and server streaming, which Connect serves over HTTP/2 only: where to go instead.
    BidiStream {
        path: &'static str,
        instead: &'static str,
    },
}

impl Method {
    pub fn path(&self) -> &'static str {
        match self {
            Method::Unary { path, .. }
            | Method::ServerStream { path, .. }
            | Method::BidiStream { path, .. } => path,
        }
    }

    fn is_streaming(&self) -> bool {
        !matches!(self, Method::Unary { .. })
    }
}

const fn method<Req, Resp>(path: &'static str) -> Method
where
    Req: Message + DeserializeOwned + Default,
    Resp: Message + Serialize + Default,
{
    Method::Unary {
        path,
        decode: json_to_proto::<Req>,
        encode: proto_to_json::<Resp>,
    }
}

const fn stream<Req, Resp>(path: &'static str) -> Method
where
    Req: Message + DeserializeOwned + Default,
    Resp: Message + Serialize + Default,
{
    Method::ServerStream {
        path,
        decode: json_to_proto::<Req>,
        encode: proto_to_json::<Resp>,
    }
}

/// Every method of the three services (a unit test checks this against the proto's
/// descriptors, so a new RPC cannot be forgotten here).
pub static METHODS: [Method; 26] = [
    method::<pb::IngestEventsRequest, pb::IngestEventsResponse>("/chatkpi.v1.EventService/IngestEvents"),
    Method::BidiStream {
        path: "/chatkpi.v1.EventService/StreamEvents",
        instead: "use gRPC over HTTP/2, or IngestEvents with batches of up to 1,000 events",
    },
    method::<pb::FindWhatsAppConversationRequest, pb::FindWhatsAppConversationResponse>(
        "/chatkpi.v1.EventService/FindWhatsAppConversation",
    ),
    method::<pb::GetOverviewRequest, pb::GetOverviewResponse>("/chatkpi.v1.MetricsService/GetOverview"),
    method::<pb::GetBreakdownRequest, pb::GetBreakdownResponse>("/chatkpi.v1.MetricsService/GetBreakdown"),
    method::<pb::GetTimeSeriesRequest, pb::GetTimeSeriesResponse>("/chatkpi.v1.MetricsService/GetTimeSeries"),
    method::<pb::GetUtilizationRequest, pb::GetUtilizationResponse>(
        "/chatkpi.v1.MetricsService/GetUtilization",
    ),
    method::<pb::GetBacklogRequest, pb::GetBacklogResponse>("/chatkpi.v1.MetricsService/GetBacklog"),
    method::<pb::GetSlaStatusRequest, pb::GetSlaStatusResponse>("/chatkpi.v1.MetricsService/GetSlaStatus"),
    stream::<pb::ListConversationsRequest, pb::ConversationFacts>(
        "/chatkpi.v1.MetricsService/ListConversations",
    ),
    method::<pb::GetConversationRequest, pb::GetConversationResponse>(
        "/chatkpi.v1.MetricsService/GetConversation",
    ),
    stream::<pb::WatchOverviewRequest, pb::WatchOverviewResponse>("/chatkpi.v1.MetricsService/WatchOverview"),
    stream::<pb::WatchAlertsRequest, pb::AlertNotice>("/chatkpi.v1.MetricsService/WatchAlerts"),
    method::<pb::GetFiringAlertsRequest, pb::GetFiringAlertsResponse>(
        "/chatkpi.v1.MetricsService/GetFiringAlerts",
    ),
    method::<pb::GetSettingsRequest, pb::GetSettingsResponse>("/chatkpi.v1.MetricsService/GetSettings"),
    method::<pb::UpdateSettingsRequest, pb::UpdateSettingsResponse>(
        "/chatkpi.v1.MetricsService/UpdateSettings",
    ),
    method::<pb::GetScorecardRequest, pb::GetScorecardResponse>("/chatkpi.v1.MetricsService/GetScorecard"),
    method::<pb::EraseCustomerRequest, pb::EraseCustomerResponse>("/chatkpi.v1.AdminService/EraseCustomer"),
    method::<pb::CreateWhatsAppSourceRequest, pb::CreateWhatsAppSourceResponse>(
        "/chatkpi.v1.AdminService/CreateWhatsAppSource",
    ),
    method::<pb::ListWhatsAppSourcesRequest, pb::ListWhatsAppSourcesResponse>(
        "/chatkpi.v1.AdminService/ListWhatsAppSources",
    ),
    method::<pb::DeleteWhatsAppSourceRequest, pb::DeleteWhatsAppSourceResponse>(
        "/chatkpi.v1.AdminService/DeleteWhatsAppSource",
    ),
    method::<pb::CreateAlertRuleRequest, pb::CreateAlertRuleResponse>(
        "/chatkpi.v1.AdminService/CreateAlertRule",
    ),
    method::<pb::UpdateAlertRuleRequest, pb::UpdateAlertRuleResponse>(
        "/chatkpi.v1.AdminService/UpdateAlertRule",
    ),
    method::<pb::DeleteAlertRuleRequest, pb::DeleteAlertRuleResponse>(
        "/chatkpi.v1.AdminService/DeleteAlertRule",
    ),
    method::<pb::ListAlertRulesRequest, pb::ListAlertRulesResponse>(
        "/chatkpi.v1.AdminService/ListAlertRules",
    ),
    method::<pb::ListAlertDeliveriesRequest, pb::ListAlertDeliveriesResponse>(
        "/chatkpi.v1.AdminService/ListAlertDeliveries",
    ),
];

fn json_to_proto<M: Message + DeserializeOwned>(json: &[u8]) -> Result<Vec<u8>, String> {
    // An empty body is the empty message, as `{}` would be.
    let json = if json.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        json
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    // The error names the field by its JSON path (`query.from: ...`), as gRPC errors do.
    let message: M = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

fn proto_to_json<M: Message + Serialize + Default>(proto: &[u8]) -> Result<Vec<u8>, String> {
    let message = M::decode(proto).map_err(|e| e.to_string())?;
    serde_json::to_vec(&message).map_err(|e| e.to_string())
}

/// The message encodings Connect's protocol names, unary and streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Json,
    Proto,
}

impl Codec {
    /// The codec of a request's content type, and whether it is Connect's streaming kind
    /// (`application/connect+json`).
    fn of(headers: &HeaderMap) -> Option<(Codec, bool)> {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some((Codec::Json, false)),
            "application/proto" => Some((Codec::Proto, false)),
            "application/connect+json" => Some((Codec::Json, true)),
            "application/connect+proto" => Some((Codec::Proto, true)),
            _ => None,
        }
    }

    fn content_type(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Codec::Json, false) => "application/json",
            (Codec::Proto, false) => "application/proto",
            (Codec::Json, true) => "application/connect+json",
            (Codec::Proto, true) => "application/connect+proto",
        }
    }
}

/// A refusal before the call: counted as the call it stood for, answered as a Connect error.
fn refused(path: &str, http: Option<StatusCode>, status: &Status) -> Response {
    count_refused(path, status.code());
    match http {
        Some(http) => error_with(http, status),
        None => error(status),
    }
}

/// `POST /{service}/{method}`.
pub async fn call(State(web): State<Web>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let Some(method) = METHODS.iter().find(|m| m.path() == path) else {
        let status = Status::unimplemented(format!("no method {path} (see proto/chatkpi/v1)"));
        return refused(&path, Some(StatusCode::NOT_FOUND), &status);
    };
    let Some((codec, streaming)) = Codec::of(request.headers()) else {
        let status = Status::unimplemented(
            "content-type must be application/json or application/proto (unary methods), \
             application/connect+json or application/connect+proto (streaming methods)",
        );
        let mut response = refused(&path, Some(StatusCode::UNSUPPORTED_MEDIA_TYPE), &status);
        response.headers_mut().insert(
            "accept-post",
            HeaderValue::from_static(
                "application/json, application/proto, application/connect+json, application/connect+proto",
            ),
        );
        return response;
    };
    if streaming != method.is_streaming() {
        let status = Status::unimplemented(if streaming {
            format!("{path} is a unary method: send application/json or application/proto")
        } else {
            format!(
                "{path} is a streaming method: send application/connect+json or application/connect+proto"
            )
        });
        return refused(&path, Some(StatusCode::UNSUPPORTED_MEDIA_TYPE), &status);
    }
    let deadline = match client_deadline(request.headers()) {
        Ok(deadline) => deadline,
        Err(status) => return refused(&path, None, &status),
    };
    match method {
        Method::Unary { decode, encode, .. } => {
            // The whole call, its request body included, within the caller's deadline and the
            // server's request timeout: a slow body cannot hold the server longer.
            let limit = deadline.map_or(web.timeout, |d| d.min(web.timeout));
            let unary = unary(web.grpc, request, &path, codec, *decode, *encode);
            match tokio::time::timeout(limit, unary).await {
                Ok(Ok(response)) => response,
                Ok(Err(status)) => error(&status),
                Err(_) => refused(
                    &path,
                    None,
                    &Status::deadline_exceeded("the call's deadline passed; its work was stopped"),
                ),
            }
        }
        Method::ServerStream { decode, encode, .. } => {
            let opened = server_stream(web, request, &path, codec, deadline, *decode, *encode);
            opened.await
        }
        Method::BidiStream { instead, .. } => {
            // Read what the client sends (bounded in size and time), then answer, so a client
            // sees the error instead of a broken pipe.
            let (_, body) = request.into_parts();
            let drained = Limited::new(body, MAX_MESSAGE_BYTES).collect();
            let _ = tokio::time::timeout(web.timeout, drained).await;
            let status = Status::unimplemented(format!(
                "{path} streams in both directions, which needs HTTP/2 gRPC: {instead}"
            ));
            count_refused(&path, status.code());
            end_of_stream_only(codec, &status)
        }
    }
}

/// Connect's `connect-timeout-ms`: the call's deadline, 1 to 10 digits of milliseconds.
fn client_deadline(headers: &HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(value) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            Status::invalid_argument("connect-timeout-ms: expected 1 to 10 digits of milliseconds")
        })
}

/// The request body, at most [`MAX_MESSAGE_BYTES`].
async fn body_bytes(body: Body) -> Result<Bytes, Status> {
    Ok(Limited::new(body, MAX_MESSAGE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                Status::resource_exhausted(format!(
                    "request body larger than {} MiB",
                    MAX_MESSAGE_BYTES >> 20
                ))
            } else {
                Status::invalid_argument(format!("request body: {e}"))
            }
        })?
        .to_bytes())
}

async fn unary(
    grpc: crate::edge::rpc::Grpc,
    request: Request,
    path: &str,
    codec: Codec,
    decode: Decode,
    encode: Encode,
) -> Result<Response, Status> {
    if let Some(version) = request.headers().get("connect-protocol-version")
        && version != "1"
    {
        return Err(Status::invalid_argument(
            "connect-protocol-version: only 1 is supported",
        ));
    }
    let (parts, body) = request.into_parts();
    let body = body_bytes(body)
        .await
        .inspect_err(|s| count_refused(path, s.code()))?;
    let message = match codec {
        Codec::Json => decode(&body).map_err(|e| {
            let status = Status::invalid_argument(format!("request body: {e}"));
            count_refused(path, status.code());
            status
        })?,
        Codec::Proto => body.to_vec(),
    };
    let response = match grpc.oneshot(grpc_request(&parts, path, &message)?).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let mut messages = Messages::new(response)?;
    let reply = messages
        .next()
        .await?
        .ok_or_else(|| Status::internal("the call answered no message"))?;
    if messages.next().await?.is_some() {
        return Err(Status::internal("the call answered more than one message"));
    }
    let body = match codec {
        Codec::Json => encode(&reply).map_err(|e| Status::internal(format!("response: {e}")))?,
        Codec::Proto => reply.to_vec(),
    };
    Ok(([(header::CONTENT_TYPE, codec.content_type(false))], body).into_response())
}

/// A server-streaming call: the request's one enveloped message in, the gRPC call's messages
/// out as enveloped messages, then the end-of-stream message (Connect's streaming rules).
async fn server_stream(
    web: Web,
    request: Request,
    path: &str,
    codec: Codec,
    deadline: Option<Duration>,
    decode: Decode,
    encode: Encode,
) -> Response {
    let deadline = deadline.map(|d| tokio::time::Instant::now() + d);
    let (parts, body) = request.into_parts();
    let opening = async {
        let body = tokio::time::timeout(web.timeout, body_bytes(body))
            .await
            .map_err(|_| Status::deadline_exceeded("the request body did not arrive in time"))??;
        let payload = unenvelope(&body)?;
        let message = match codec {
            Codec::Json => {
                decode(payload).map_err(|e| Status::invalid_argument(format!("request body: {e}")))?
            }
            Codec::Proto => payload.to_vec(),
        };
        let response = match web.grpc.oneshot(grpc_request(&parts, path, &message)?).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        Messages::new(response)
    };
    let messages = match opening.await {
        Ok(messages) => messages,
        Err(status) => {
            count_refused(path, status.code());
            return end_of_stream_only(codec, &status);
        }
    };
    let stream = futures::stream::unfold(Some((messages, deadline)), move |state| async move {
        let (mut messages, deadline) = state?;
        let next = match deadline {
            Some(at) => tokio::time::timeout_at(at, messages.next())
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("the call's deadline passed"))),
            None => messages.next().await,
        };
        let frame = match next {
            Ok(Some(message)) => match codec {
                Codec::Json => match encode(&message) {
                    Ok(json) => envelope(0, &json),
                    Err(e) => {
                        return Some((
                            Ok(end_of_stream(&Status::internal(format!("response: {e}")))),
                            None,
                        ));
                    }
                },
                Codec::Proto => envelope(0, &message),
            },
            Ok(None) => {
                return Some((
                    Ok::<_, std::convert::Infallible>(end_of_stream(&Status::ok(""))),
                    None,
                ));
            }
            Err(status) => return Some((Ok(end_of_stream(&status)), None)),
        };
        Some((Ok(frame), Some((messages, deadline))))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, codec.content_type(true))
        .body(Body::from_stream(stream))
        .expect("static headers are valid")
}

/// The one message of a streaming request's body (an envelope: flags, length, message).
fn unenvelope(body: &[u8]) -> Result<&[u8], Status> {
    if body.len() < 5 {
        return Err(Status::invalid_argument(
            "request body: expected one enveloped message (flags, 4-byte length, message)",
        ));
    }
    if body[0] & 1 != 0 {
        return Err(Status::unimplemented(
            "compressed request messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(Status::invalid_argument(
            "request body: a server-streaming call takes exactly one enveloped message",
        ));
    }
    Ok(&body[5..])
}

fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(flags);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

/// Connect's end-of-stream message: `{}` after success, `{"error": {...}}` otherwise (always
/// JSON, whatever the codec).
fn end_of_stream(status: &Status) -> Bytes {
    let json = if status.code() == Code::Ok {
        serde_json::json!({})
    } else {
        serde_json::json!({ "error": { "code": code_name(status.code()), "message": status.message() } })
    };
    envelope(2, json.to_string().as_bytes())
}

/// A streaming answer that is only its end-of-stream message (an error before any message).
fn end_of_stream_only(codec: Codec, status: &Status) -> Response {
    (
        [(header::CONTENT_TYPE, codec.content_type(true))],
        end_of_stream(status),
    )
        .into_response()
}

/// The Connect error for `status`, with the HTTP status Connect assigns to its code.
pub fn error(status: &Status) -> Response {
    error_with(http_status(status.code()), status)
}

fn error_with(http: StatusCode, status: &Status) -> Response {
    let body = serde_json::json!({ "code": code_name(status.code()), "message": status.message() });
    let mut response = (
        http,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    // gRPC's retry hint, in whole seconds as HTTP clients read it.
    let pushback = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = pushback {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
    }
    response
}

/// Connect's name of a code (snake case; `canceled` with one l).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status Connect's protocol assigns to a code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Every method the proto declares has an entry, unary ones a codec, and nothing else.
    #[test]
    fn every_rpc_of_the_proto_is_served_or_redirected() {
        let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut declared: Vec<(String, bool)> = set
            .file
            .iter()
            .filter(|f| f.package() == "chatkpi.v1")
            .flat_map(|f| {
                f.service.iter().flat_map(move |s| {
                    s.method.iter().map(move |m| {
                        let streaming = m.client_streaming() || m.server_streaming();
                        (format!("/chatkpi.v1.{}/{}", s.name(), m.name()), streaming)
                    })
                })
            })
            .collect();
        let mut served: Vec<(String, bool)> = METHODS
            .iter()
            .map(|m| (m.path().to_owned(), m.is_streaming()))
            .collect();
        declared.sort();
        served.sort();
        assert_eq!(served, declared);
    }

    #[test]
    fn json_round_trips_through_protobuf_with_the_proto3_mapping() {
        let json = br#"{"query":{"from":"2026-11-01T00:00:00Z","timeZone":"Europe/Berlin","filters":{"channels":["CHANNEL_WHATSAPP"]}},"comparePrevious":true}"#;
        let proto = json_to_proto::<pb::GetOverviewRequest>(json).expect("valid");
        let request = pb::GetOverviewRequest::decode(&proto[..]).expect("decodes");
        let query = request.query.expect("query");
        assert_eq!(query.from.expect("from").seconds, 1_793_491_200);
        assert_eq!(query.time_zone, "Europe/Berlin");
        assert_eq!(
            query.filters.expect("filters").channels,
            vec![pb::Channel::Whatsapp as i32]
        );
        assert!(request.compare_previous);
        let back = proto_to_json::<pb::GetOverviewRequest>(&proto).expect("encodes");
        let value: serde_json::Value = serde_json::from_slice(&back).expect("json");
        assert_eq!(value["query"]["timeZone"], "Europe/Berlin");
        assert_eq!(value["query"]["from"], "2026-11-01T00:00:00+00:00");
    }

    #[test]
    fn malformed_json_names_the_problem() {
        let err = json_to_proto::<pb::GetOverviewRequest>(br#"{"qurey":{}}"#).unwrap_err();
        assert!(err.contains("unknown field `qurey`"), "{err}");
        let err = json_to_proto::<pb::GetOverviewRequest>(br#"{"query":{"from":"2026-11-01"}}"#).unwrap_err();
        assert!(err.starts_with("query.from: "), "{err}");
        assert_eq!(
            json_to_proto::<pb::GetSettingsRequest>(b"").expect("empty is {}"),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn codes_map_to_connects_http_statuses() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(code_name(Code::Cancelled), "canceled");
        assert_eq!(code_name(Code::InvalidArgument), "invalid_argument");
    }
}
