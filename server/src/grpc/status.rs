//! The one place engine errors become gRPC statuses.

use poolplane::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use super::convert::Violation;
use crate::telemetry::error_chain;

/// INVALID_ARGUMENT with a google.rpc.BadRequest naming every field at fault.
pub fn bad_request(violations: Vec<Violation>) -> Status {
    let message = violations
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ");
    let details = ErrorDetails::with_bad_request(
        violations
            .into_iter()
            .map(|(field, description)| FieldViolation::new(field, description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The error domain of PostgreSQL's SQLSTATEs in google.rpc.ErrorInfo.
pub const SQLSTATE_DOMAIN: &str = "postgresql";

/// A status carrying the error's SQLSTATE (if any) as a google.rpc.ErrorInfo with
/// reason = the SQLSTATE, domain = `postgresql` and, for an error PostgreSQL
/// reported, metadata `message`, `detail`, `hint` and `position` when it gave them.
fn with_sqlstate(code: Code, error: &Error) -> Status {
    let mut metadata = std::collections::HashMap::new();
    if let Error::Database(e) = error
        && let Some(db) = e.as_db_error()
    {
        metadata.insert("message".to_owned(), db.message().to_owned());
        if let Some(detail) = db.detail() {
            metadata.insert("detail".to_owned(), detail.to_owned());
        }
        if let Some(hint) = db.hint() {
            metadata.insert("hint".to_owned(), hint.to_owned());
        }
        if let Some(tokio_postgres::error::ErrorPosition::Original(position)) = db.position() {
            metadata.insert("position".to_owned(), position.to_string());
        }
    }
    match error.sqlstate() {
        Some(sqlstate) => Status::with_error_details(
            code,
            error.to_string(),
            ErrorDetails::with_error_info(sqlstate, SQLSTATE_DOMAIN, metadata),
        ),
        None => Status::new(code, error.to_string()),
    }
}

/// The SQLSTATE a status carries in its google.rpc.ErrorInfo, if any.
pub fn sqlstate_of(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .filter(|info| info.domain == SQLSTATE_DOMAIN)
        .map(|info| info.reason.clone())
}

/// INVALID_ARGUMENT with a BadRequest naming each field (after `prefix`).
fn field_violations(prefix: &str, violations: &[poolplane::FieldViolation]) -> Status {
    bad_request(
        violations
            .iter()
            .map(|v| (format!("{prefix}{}", v.field), v.description.clone()))
            .collect(),
    )
}

/// FAILED_PRECONDITION with a PreconditionFailure of type CONNECTION_BUDGET.
fn budget_refusal(refusal: &poolplane::budget::BudgetRefusal, error: &Error) -> Status {
    Status::with_error_details(
        Code::FailedPrecondition,
        error.to_string(),
        ErrorDetails::with_precondition_failure_violation(
            "CONNECTION_BUDGET",
            refusal.server.clone(),
            format!(
                "config.min_connections: {} does not fit the budget of {} connections \
                 ({} kept by the other pools)",
                refusal.min, refusal.limit, refusal.others_min
            ),
        ),
    )
}

/// The code of a PostgreSQL error, by its SQLSTATE (and class).
fn database_code(sqlstate: &str) -> Code {
    match (sqlstate, sqlstate.get(..2)) {
        ("23505", _) => Code::AlreadyExists,
        ("57014", _) => Code::DeadlineExceeded,
        (_, Some("08" | "57")) => Code::Unavailable,
        (_, Some("40")) => Code::Aborted,
        (_, Some("22" | "42")) => Code::InvalidArgument,
        _ => Code::FailedPrecondition,
    }
}

/// Maps an engine error to a status. Every variant is decided here (no `_` arm);
/// internal errors are logged with their whole chain and answered briefly.
pub fn from_engine(error: Error) -> Status {
    match &error {
        Error::InvalidDatabaseUrl(reason) => {
            bad_request(vec![("database_url".into(), reason.to_string())])
        }
        Error::TargetNotAllowed { .. } => {
            Status::permission_denied(format!("database_url: {error} (--allowed-db-hosts)"))
        }
        Error::TooManyPools { .. } => Status::resource_exhausted(format!("{error} (--max-pools)")),
        Error::InvalidConfig(errors) => field_violations("config.", &errors.0),
        Error::InvalidRequest(violations) => field_violations("", violations),
        Error::InvalidPoolName { .. } => bad_request(vec![("name".into(), error.to_string())]),
        Error::PoolNotFound(_) => Status::not_found(error.to_string()),
        Error::PoolAlreadyExists(_) => Status::already_exists(error.to_string()),
        Error::LoadTestRunning(_) => Status::failed_precondition(error.to_string()),
        Error::BudgetExceeded(refusal) => budget_refusal(refusal, &error),
        Error::PoolBusy(_) => Status::aborted(error.to_string()),
        Error::ShuttingDown => Status::unavailable(error.to_string()),
        Error::ControlDatabase { .. } | Error::ControlDatabaseTimeout => {
            tracing::warn!(error = %error_chain(&error), "control database unavailable");
            Status::unavailable("control database unavailable")
        }
        Error::ControlQuery { .. }
        | Error::Migration(_)
        | Error::EmbeddedPg(_)
        | Error::Secrets(_) => {
            tracing::error!(error = %error_chain(&error), "internal error");
            Status::internal("internal error; see the server log")
        }
        Error::AcquireTimeout { .. } => Status::resource_exhausted(error.to_string()),
        Error::PoolClosed => Status::failed_precondition(error.to_string()),
        Error::Connect { .. } => with_sqlstate(Code::Unavailable, &error),
        Error::Database(_) => {
            with_sqlstate(database_code(error.sqlstate().unwrap_or_default()), &error)
        }
        Error::StatementCancelled {
            deadline_exceeded: true,
        } => Status::deadline_exceeded(error.to_string()),
        Error::StatementCancelled {
            deadline_exceeded: false,
        } => Status::cancelled(error.to_string()),
        Error::UnsupportedType { column, .. } => bad_request(vec![(
            format!("sql (column `{column}`)"),
            error.to_string(),
        )]),
        Error::InvalidQuery(_) => bad_request(vec![("sql".into(), error.to_string())]),
        Error::QueryLimit { .. } => Status::resource_exhausted(error.to_string()),
        Error::PoolUnhealthy { .. } => Status::unavailable(error.to_string()),
    }
}
