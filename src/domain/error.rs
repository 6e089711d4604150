//! The closed set of errors the domain reports; `grpc/status.rs` maps each to one gRPC code.

/// An error a caller can act on, or one opaque internal bucket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: `field` names the path (`events[3].occurred_at`).
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A named thing does not exist for this tenant.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is valid but the tenant's state does not allow it (e.g. business hours
    /// asked for without a schedule).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Missing, malformed or unknown API key.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A valid key without the scope the call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit of the tenant, the client or the server is reached; `retry_after` says when a
    /// retry can succeed, when that is known.
    #[error("{message}")]
    ResourceExhausted {
        limit: &'static str,
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// The client went away or its deadline passed: the work was stopped.
    #[error("cancelled")]
    Cancelled,
    /// The database cannot be reached right now; safe to retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else. The cause goes to the log (this text, with the cause's chain: a server
    /// whose migrations fail says why), never to the client (`grpc::status` sends "internal
    /// error" alone).
    #[error("internal error: {0:#}")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// The error of one batch of a stream: an invalid argument's field path is prefixed with
    /// the batch's id (`batch_id 7: events[3].occurred_at`).
    pub fn in_batch(self, batch_id: impl std::fmt::Display) -> Self {
        match self {
            Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                field: format!("batch_id {batch_id}: {field}"),
                reason,
            },
            other => other,
        }
    }

    /// The same error again, for each of several callers of one computation (an internal
    /// cause is kept as its text, which is all the log and the client ever see of it).
    pub fn duplicate(&self) -> Self {
        match self {
            Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                field: field.clone(),
                reason: reason.clone(),
            },
            Error::NotFound(what) => Error::NotFound(what.clone()),
            Error::FailedPrecondition(why) => Error::FailedPrecondition(why.clone()),
            Error::Unauthenticated(why) => Error::Unauthenticated(why),
            Error::PermissionDenied(why) => Error::PermissionDenied(why.clone()),
            Error::ResourceExhausted {
                limit,
                message,
                retry_after,
            } => Error::ResourceExhausted {
                limit,
                message: message.clone(),
                retry_after: *retry_after,
            },
            Error::Cancelled => Error::Cancelled,
            Error::Unavailable(why) => Error::Unavailable(why.clone()),
            Error::Internal(cause) => Error::Internal(anyhow::anyhow!("{cause:#}")),
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A rule broken by one field of a request is an invalid argument naming that field.
impl From<super::event::FieldError> for Error {
    fn from(e: super::event::FieldError) -> Self {
        Error::InvalidArgument {
            field: e.field,
            reason: e.reason,
        }
    }
}
