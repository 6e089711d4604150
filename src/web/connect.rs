//! JSON over HTTP for every unary RPC, by the Connect protocol's unary rules:
//! `POST /chatkpi.v1.<Service>/<Method>` with `Content-Type: application/json` (the proto3 JSON
//! mapping) or `application/proto` (binary), answered 200 with the response message, or with
//! the error as `{"code": "invalid_argument", "message": ...}` and the HTTP status Connect
//! assigns to that code. The call itself is the gRPC call (see [`super`]).

use axum::{
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;
use serde::{Serialize, de::DeserializeOwned};
use tonic::{Code, Status};
use tower::ServiceExt;

use super::{
    Grpc,
    frames::{Messages, grpc_request},
};
use crate::{grpc::pb, startup::MAX_MESSAGE_BYTES};

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
    /// A streaming method, with where to get its answers instead.
    Stream {
        path: &'static str,
        instead: &'static str,
    },
}

impl Method {
    pub fn path(&self) -> &'static str {
        match self {
            Method::Unary { path, .. } | Method::Stream { path, .. } => path,
        }
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

/// Every method of the three services (a unit test checks this against the proto's
/// descriptors, so a new RPC cannot be forgotten here).
pub static METHODS: [Method; 13] = [
    method::<pb::IngestEventsRequest, pb::IngestEventsResponse>("/chatkpi.v1.EventService/IngestEvents"),
    Method::Stream {
        path: "/chatkpi.v1.EventService/StreamEvents",
        instead: "use gRPC, or IngestEvents with batches of up to 1,000 events",
    },
    method::<pb::GetOverviewRequest, pb::GetOverviewResponse>("/chatkpi.v1.MetricsService/GetOverview"),
    method::<pb::GetBreakdownRequest, pb::GetBreakdownResponse>("/chatkpi.v1.MetricsService/GetBreakdown"),
    method::<pb::GetTimeSeriesRequest, pb::GetTimeSeriesResponse>("/chatkpi.v1.MetricsService/GetTimeSeries"),
    method::<pb::GetUtilizationRequest, pb::GetUtilizationResponse>(
        "/chatkpi.v1.MetricsService/GetUtilization",
    ),
    method::<pb::GetBacklogRequest, pb::GetBacklogResponse>("/chatkpi.v1.MetricsService/GetBacklog"),
    Method::Stream {
        path: "/chatkpi.v1.MetricsService/ListConversations",
        instead: "use gRPC, or GET /v1/conversations.csv",
    },
    Method::Stream {
        path: "/chatkpi.v1.MetricsService/WatchOverview",
        instead: "use gRPC, or poll GetOverview",
    },
    method::<pb::GetSettingsRequest, pb::GetSettingsResponse>("/chatkpi.v1.MetricsService/GetSettings"),
    method::<pb::UpdateSettingsRequest, pb::UpdateSettingsResponse>(
        "/chatkpi.v1.MetricsService/UpdateSettings",
    ),
    method::<pb::GetScorecardRequest, pb::GetScorecardResponse>("/chatkpi.v1.MetricsService/GetScorecard"),
    method::<pb::EraseCustomerRequest, pb::EraseCustomerResponse>("/chatkpi.v1.AdminService/EraseCustomer"),
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

/// The two message encodings Connect's unary protocol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Json,
    Proto,
}

impl Codec {
    fn of(headers: &HeaderMap) -> Option<Codec> {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Some(Codec::Json)
        } else if essence.eq_ignore_ascii_case("application/proto") {
            Some(Codec::Proto)
        } else {
            None
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::Proto => "application/proto",
        }
    }
}

/// `POST /{service}/{method}`.
pub async fn unary(State(grpc): State<Grpc>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let Some(method) = METHODS.iter().find(|m| m.path() == path) else {
        let status = Status::unimplemented(format!("no method {path} (see proto/chatkpi/v1)"));
        return error_with(StatusCode::NOT_FOUND, &status);
    };
    let (decode, encode) = match method {
        Method::Unary { decode, encode, .. } => (*decode, *encode),
        Method::Stream { instead, .. } => {
            return error(&Status::unimplemented(format!(
                "{path} is a streaming method; JSON over HTTP serves unary methods only: {instead}"
            )));
        }
    };
    let Some(codec) = Codec::of(request.headers()) else {
        let status = Status::unimplemented("content-type must be application/json or application/proto");
        let mut response = error_with(StatusCode::UNSUPPORTED_MEDIA_TYPE, &status);
        response.headers_mut().insert(
            "accept-post",
            HeaderValue::from_static("application/json, application/proto"),
        );
        return response;
    };
    match call(grpc, request, &path, codec, decode, encode).await {
        Ok(response) => response,
        Err(status) => error(&status),
    }
}

async fn call(
    grpc: Grpc,
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
    let body = Limited::new(body, MAX_MESSAGE_BYTES)
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
        .to_bytes();
    let message = match codec {
        Codec::Json => decode(&body).map_err(|e| Status::invalid_argument(format!("request body: {e}")))?,
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
    Ok(([(header::CONTENT_TYPE, codec.content_type())], body).into_response())
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
            .map(|m| (m.path().to_owned(), matches!(m, Method::Stream { .. })))
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
