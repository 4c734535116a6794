//! The SDK's error type.

/// What a poolplane SDK call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server address is not a valid endpoint.
    #[error("invalid server address {endpoint}: {source}")]
    InvalidEndpoint {
        /// The address as given.
        endpoint: String,
        /// Why it is invalid.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The address.
        endpoint: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// A cell does not decode into the Rust type asked for.
    #[error("{0}")]
    Decode(String),
}

impl Error {
    /// The fields a request got wrong (from the status's google.rpc.BadRequest), as
    /// (field, description) pairs; empty for other errors.
    pub fn field_violations(&self) -> Vec<(String, String)> {
        use tonic_types::StatusExt as _;
        self.status()
            .and_then(|s| s.get_details_bad_request())
            .map(|b| {
                b.field_violations
                    .into_iter()
                    .map(|v| (v.field, v.description))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The PostgreSQL SQLSTATE behind the error (from the status's
    /// google.rpc.ErrorInfo in the `postgresql` domain), e.g. `3D000`.
    pub fn sqlstate(&self) -> Option<String> {
        use tonic_types::StatusExt as _;
        self.status()
            .and_then(|s| s.get_details_error_info())
            .filter(|info| info.domain == "postgresql")
            .map(|info| info.reason)
    }

    /// The gRPC code: the status's, or UNAVAILABLE when the server could not be
    /// reached, INVALID_ARGUMENT for an unusable address.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Status(status) => status.code(),
            Error::Connect { .. } => tonic::Code::Unavailable,
            Error::InvalidEndpoint { .. } | Error::Decode(_) => tonic::Code::InvalidArgument,
        }
    }

    /// The gRPC status, when the server answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(status) => Some(status),
            Error::InvalidEndpoint { .. } | Error::Connect { .. } | Error::Decode(_) => None,
        }
    }
}
