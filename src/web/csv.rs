//! The drill-down as a CSV download: `GET /v1/conversations.csv?kpi=resolved&from=...&to=...`,
//! one row per conversation of `ListConversations`, streamed as the rows come (a few hundred
//! rows in memory at most, whatever the download's size).
//!
//! Parameters (repeat a filter to allow several values): `kpi` (opened, resolved, ended,
//! missed, abandoned, backlog, not_fcr, sla_breached; or the `DRILL_DOWN_*` name), `from`, `to` (RFC 3339),
//! `time_zone`, `business_hours` (true / false), `limit`, `channel` (whatsapp or
//! `CHANNEL_WHATSAPP`), `priority`, `inbox`, `team`, `agent`, `tag`.

use axum::{
    body::Body,
    extract::{Request, State},
    response::Response,
};
use bytes::Bytes;
use chrono::SecondsFormat;
use http::header;
use prost::Message;
use serde::de::DeserializeOwned;
use tonic::Status;
use tower::ServiceExt;

use super::{
    Web, connect,
    frames::{Messages, grpc_request},
};
use crate::grpc::{
    convert::{chrono_to_timestamp, timestamp_to_chrono},
    pb,
};

const LIST: &str = "/chatkpi.v1.MetricsService/ListConversations";
/// Rows written into one chunk of the response before it is sent.
const ROWS_PER_CHUNK: usize = 256;
/// The columns, in order: the fields of `ConversationFacts`.
pub const COLUMNS: [&str; 28] = [
    "conversation_id",
    "customer_id",
    "channel",
    "inbox",
    "team",
    "priority",
    "agent",
    "assignee",
    "tags",
    "state",
    "opened_at",
    "resolved_at",
    "ended_at",
    "first_response_seconds",
    "first_responder",
    "human_first_response_seconds",
    "wait_seconds",
    "resolution_seconds",
    "duration_seconds",
    "reopen_count",
    "customer_messages",
    "agent_messages",
    "bot_messages",
    "csat_score",
    "nps_score",
    "ces_score",
    "reply_seconds",
    "sla_breaches",
];

/// `GET /v1/conversations.csv`.
pub async fn download(State(web): State<Web>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let list = match params(parts.uri.query().unwrap_or("")) {
        Ok(list) => list,
        Err(message) => {
            let status = Status::invalid_argument(message);
            crate::edge::rpc::count_refused(LIST, status.code());
            return connect::error(&status);
        }
    };
    let call = match grpc_request(&parts, LIST, &list.encode_to_vec()) {
        Ok(call) => call,
        Err(status) => return connect::error(&status),
    };
    // An error before the first row (a bad key, a bad query) is an HTTP error; one after it
    // can only cut the download short, which the client sees as a broken transfer. The first
    // row comes within the server's request timeout.
    let first = async {
        let response = match web.grpc.oneshot(call).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let mut messages = Messages::new(response)?;
        let first = messages.next().await?;
        Ok::<_, Status>((messages, first))
    };
    let (messages, first) = match tokio::time::timeout(web.timeout, first).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(status)) => return connect::error(&status),
        Err(_) => {
            return connect::error(&Status::deadline_exceeded(
                "the download did not start within the server's request timeout",
            ));
        }
    };
    let rows = Rows {
        messages,
        pending: first,
        header: true,
    };
    let stream = futures::stream::unfold(rows, |mut rows| async move {
        match rows.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), rows)),
            Ok(None) => None,
            Err(status) => Some((Err(status), rows.finished())),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"conversations.csv\"",
        )
        .body(Body::from_stream(stream))
        .expect("static headers are valid")
}

/// The response's rows, a chunk at a time.
struct Rows {
    messages: Messages,
    /// A message read but not written yet.
    pending: Option<Bytes>,
    /// The header line is still to be written.
    header: bool,
}

impl Rows {
    /// Up to [`ROWS_PER_CHUNK`] rows; `None` at the end.
    async fn chunk(&mut self) -> Result<Option<Bytes>, Status> {
        let mut out = csv::Writer::from_writer(Vec::with_capacity(64 * 1024));
        let mut written = 0;
        if std::mem::take(&mut self.header) {
            out.write_record(COLUMNS).map_err(internal)?;
        }
        while written < ROWS_PER_CHUNK {
            let message = match self.pending.take() {
                Some(message) => message,
                None => match self.messages.next().await? {
                    Some(message) => message,
                    None => break,
                },
            };
            let facts = pb::ConversationFacts::decode(message).map_err(|e| internal(e.to_string()))?;
            out.write_record(record(&facts)).map_err(internal)?;
            written += 1;
        }
        let bytes = out.into_inner().map_err(|e| internal(e.to_string()))?;
        Ok((!bytes.is_empty()).then(|| Bytes::from(bytes)))
    }

    /// After an error: the stream ends.
    fn finished(mut self) -> Self {
        self.pending = None;
        self
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("writing CSV: {e}"))
}

/// One conversation's cells, in [`COLUMNS`] order.
fn record(f: &pb::ConversationFacts) -> Vec<String> {
    let time = |t: &Option<pbjson_types::Timestamp>| {
        t.as_ref()
            .and_then(|t| timestamp_to_chrono("", t).ok())
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .unwrap_or_default()
    };
    let number = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let score = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_default();
    let replies: Vec<String> = f.reply_seconds.iter().map(f64::to_string).collect();
    vec![
        text(&f.conversation_id),
        text(&f.customer_id),
        text(&f.channel),
        text(&f.inbox),
        text(&f.team),
        text(&f.priority),
        text(&f.agent),
        text(&f.assignee),
        // Each tag on its own: a spreadsheet reading `;` as its separator sees every one.
        f.tags.iter().map(|t| text(t)).collect::<Vec<_>>().join(";"),
        text(&f.state),
        time(&f.opened_at),
        time(&f.resolved_at),
        time(&f.ended_at),
        number(f.first_response_seconds),
        text(&f.first_responder),
        number(f.human_first_response_seconds),
        number(f.wait_seconds),
        number(f.resolution_seconds),
        number(f.duration_seconds),
        f.reopen_count.to_string(),
        f.customer_messages.to_string(),
        f.agent_messages.to_string(),
        f.bot_messages.to_string(),
        score(f.csat_score),
        score(f.nps_score),
        score(f.ces_score),
        replies.join(";"),
        // metric:policy:actual/target seconds, one per breached clock.
        f.sla_breaches
            .iter()
            .map(|b| {
                text(&format!(
                    "{}:{}:{}/{}",
                    b.metric, b.policy, b.actual_seconds, b.target_seconds
                ))
            })
            .collect::<Vec<_>>()
            .join(";"),
    ]
}

/// A text cell as written: one that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`,
/// tab, carriage return first; ids and tags come from clients) gets a leading `'`.
fn text(value: &str) -> String {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    }
}

/// The `ListConversations` request the query string stands for; an error names the parameter.
fn params(query: &str) -> Result<pb::ListConversationsRequest, String> {
    let mut list = pb::ListConversationsRequest::default();
    let mut q = pb::Query::default();
    let mut filters = pb::Filters::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.as_ref();
        match key.as_ref() {
            "from" => q.from = Some(instant("from", value)?),
            "to" => q.to = Some(instant("to", value)?),
            "time_zone" => q.time_zone = value.to_owned(),
            "business_hours" => {
                q.business_hours = value
                    .parse()
                    .map_err(|_| format!("business_hours: expected true or false, got `{value}`"))?;
            }
            "kpi" => list.kpi = enum_value::<pb::DrillDown>("kpi", "DRILL_DOWN_", value)? as i32,
            "limit" => {
                list.limit = value
                    .parse()
                    .map_err(|_| format!("limit: expected a whole number, got `{value}`"))?;
            }
            "channel" => filters
                .channels
                .push(enum_value::<pb::Channel>("channel", "CHANNEL_", value)? as i32),
            "priority" => filters
                .priorities
                .push(enum_value::<pb::Priority>("priority", "PRIORITY_", value)? as i32),
            "inbox" => filters.inboxes.push(value.to_owned()),
            "team" => filters.teams.push(value.to_owned()),
            "agent" => filters.agents.push(value.to_owned()),
            "tag" => filters.tags.push(value.to_owned()),
            other => {
                return Err(format!(
                    "unknown parameter `{other}` (known: kpi, from, to, time_zone, business_hours, limit, \
                     channel, priority, inbox, team, agent, tag)"
                ));
            }
        }
    }
    q.filters = Some(filters);
    list.query = Some(q);
    Ok(list)
}

fn instant(name: &str, value: &str) -> Result<pbjson_types::Timestamp, String> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| chrono_to_timestamp(t.to_utc()))
        .map_err(|e| {
            format!("{name}: expected an RFC 3339 instant such as 2026-11-01T00:00:00Z, got `{value}` ({e})")
        })
}

/// An enum value by its proto name, with or without the prefix, in any case.
fn enum_value<E: DeserializeOwned>(name: &str, prefix: &str, value: &str) -> Result<E, String> {
    let upper = value.to_ascii_uppercase();
    let full = if upper.starts_with(prefix) {
        upper
    } else {
        format!("{prefix}{upper}")
    };
    serde_json::from_value(serde_json::Value::String(full)).map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_the_list_request_and_errors_name_them() {
        let list = params(
            "kpi=resolved&from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00%2B01:00&time_zone=Europe/Berlin\
             &channel=whatsapp&channel=CHANNEL_EMAIL&agent=a%201&tag=billing&business_hours=true&limit=10",
        )
        .expect("valid");
        assert_eq!(list.kpi, pb::DrillDown::Resolved as i32);
        assert_eq!(list.limit, 10);
        let q = list.query.expect("query");
        assert_eq!(q.from.expect("from").seconds, 1_793_491_200);
        assert_eq!(q.to.expect("to").seconds, 1_793_491_200 + 86_400 - 3_600);
        assert_eq!(q.time_zone, "Europe/Berlin");
        assert!(q.business_hours);
        let f = q.filters.expect("filters");
        assert_eq!(
            f.channels,
            vec![pb::Channel::Whatsapp as i32, pb::Channel::Email as i32]
        );
        assert_eq!(f.agents, vec!["a 1"]);
        assert_eq!(f.tags, vec!["billing"]);

        assert!(
            params("from=yesterday")
                .unwrap_err()
                .starts_with("from: expected an RFC 3339")
        );
        assert!(
            params("channel=pigeon")
                .unwrap_err()
                .starts_with("channel: unknown variant `CHANNEL_PIGEON`")
        );
        assert!(
            params("kpi=opened&size=3")
                .unwrap_err()
                .starts_with("unknown parameter `size`")
        );
        assert!(params("limit=-1").unwrap_err().starts_with("limit:"));
    }

    #[test]
    fn a_row_has_every_column_and_neutralizes_formulas() {
        let facts = pb::ConversationFacts {
            conversation_id: "c1".into(),
            agent: "=HYPERLINK(\"x\")".into(),
            tags: vec!["billing".into(), "vip".into()],
            opened_at: Some(pbjson_types::Timestamp {
                seconds: 1_793_491_200,
                nanos: 0,
            }),
            first_response_seconds: Some(42.5),
            reply_seconds: vec![1.0, 2.5],
            csat_score: Some(5),
            ..Default::default()
        };
        let row = record(&facts);
        assert_eq!(row.len(), COLUMNS.len());
        let cell = |name: &str| row[COLUMNS.iter().position(|c| *c == name).expect("column")].clone();
        assert_eq!(cell("agent"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("tags"), "billing;vip");
        assert_eq!(cell("opened_at"), "2026-11-01T00:00:00Z");
        assert_eq!(cell("resolved_at"), "");
        assert_eq!(cell("first_response_seconds"), "42.5");
        assert_eq!(cell("reply_seconds"), "1;2.5");
        assert_eq!(cell("csat_score"), "5");
        assert_eq!(cell("nps_score"), "");
    }

    #[test]
    fn every_tag_of_the_tags_cell_is_neutralized_on_its_own() {
        // A spreadsheet that splits on `;` would otherwise see `=1+2` as a cell of its own.
        let facts = pb::ConversationFacts {
            tags: vec!["safe".into(), "=1+2".into(), "@cmd".into()],
            ..Default::default()
        };
        let row = record(&facts);
        let tags = &row[COLUMNS.iter().position(|c| *c == "tags").expect("column")];
        assert_eq!(tags, "safe;'=1+2;'@cmd");
    }
}
