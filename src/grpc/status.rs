//! The one place a domain error becomes a `tonic::Status`.

use tonic::Status;

use crate::domain::Error;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { field, reason } => {
                Status::invalid_argument(format!("{field}: {reason}"))
            }
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::FailedPrecondition(why) => Status::failed_precondition(why),
            Error::Unauthenticated(why) => Status::unauthenticated(why),
            Error::PermissionDenied(why) => Status::permission_denied(why),
            Error::ResourceExhausted {
                message, retry_after, ..
            } => {
                let mut status = Status::resource_exhausted(message);
                if let Some(wait) = retry_after {
                    // The gRPC retry design's server pushback (gRFC A6), which retrying clients
                    // honour; the message says the same for people.
                    if let Ok(v) = wait.as_millis().max(1).to_string().parse() {
                        status.metadata_mut().insert("grpc-retry-pushback-ms", v);
                    }
                }
                status
            }
            Error::Cancelled => Status::cancelled("the request was cancelled"),
            Error::Unavailable(why) => {
                tracing::warn!(reason = %why, "request failed: unavailable");
                Status::unavailable(why)
            }
            Error::Internal(cause) => {
                // The cause chain goes to the log only, on one line; SQL text never reaches the
                // client. The backtrace, when one was captured, only at debug level.
                tracing::error!(error = format!("{cause:#}"), "internal error");
                tracing::debug!(error = ?cause, "internal error with its backtrace");
                Status::internal("internal error")
            }
        }
    }
}
