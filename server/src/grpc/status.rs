//! The one place engine errors become gRPC statuses.

use poolplane::Error;
use tonic::Status;

use crate::telemetry::error_chain;

/// Maps an engine error to a status. Every variant is decided here (no `_` arm);
/// internal errors are logged with their whole chain and answered briefly.
pub fn from_engine(error: Error) -> Status {
    match &error {
        Error::InvalidDatabaseUrl { .. } => Status::invalid_argument(error.to_string()),
        Error::ControlDatabase { .. } | Error::ControlDatabaseTimeout => {
            tracing::warn!(error = %error_chain(&error), "control database unavailable");
            Status::unavailable("control database unavailable")
        }
        Error::ControlQuery { .. } | Error::Migration(_) | Error::EmbeddedPg(_) => {
            tracing::error!(error = %error_chain(&error), "internal error");
            Status::internal("internal error; see the server log")
        }
        Error::InvalidConfig(_) => Status::invalid_argument(error.to_string()),
        Error::AcquireTimeout { .. } => Status::resource_exhausted(error.to_string()),
        Error::PoolClosed => Status::failed_precondition(error.to_string()),
        Error::Connect { .. } => Status::unavailable(error.to_string()),
        Error::Database(_) => {
            let class = error.sqlstate().map(|s| &s.code()[..2]);
            let message = error.to_string();
            match class {
                Some("08" | "57") => Status::unavailable(message),
                Some("40") => Status::aborted(message),
                Some("22" | "42") => Status::invalid_argument(message),
                _ => Status::failed_precondition(message),
            }
        }
    }
}
