//! The one place a domain error becomes a `tonic::Status` (STYLE.md, Errors).

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
            Error::Cancelled => Status::cancelled("the request was cancelled"),
            Error::Unavailable(why) => {
                tracing::warn!(reason = %why, "request failed: unavailable");
                Status::unavailable(why)
            }
            Error::Internal(cause) => {
                // The cause chain goes to the log only; SQL text never reaches the client.
                tracing::error!(error = ?cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
