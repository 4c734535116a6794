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
        Error::InvalidDatabaseUrl(_)
        | Error::InvalidConfig(_)
        | Error::InvalidRequest(_)
        | Error::InvalidPoolName { .. } => bad_request(
            error
                .request_violations()
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect(),
        ),
        Error::TargetNotAllowed { .. } => {
            Status::permission_denied(format!("database_url: {error} (--allowed-db-hosts)"))
        }
        Error::TooManyPools { .. } => Status::resource_exhausted(format!("{error} (--max-pools)")),
        Error::PoolNotFound(_) => Status::not_found(error.to_string()),
        Error::PoolAlreadyExists(_) => Status::already_exists(error.to_string()),
        Error::LoadTestRunning(_) => Status::failed_precondition(error.to_string()),
        Error::BudgetExceeded(refusal) => budget_refusal(refusal, &error),
        Error::PoolBusy(_) | Error::ConcurrentChange(_) => Status::aborted(error.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use poolplane::AcquireLimit;
    use poolplane::budget::BudgetRefusal;
    use std::time::Duration;

    fn refusal() -> BudgetRefusal {
        BudgetRefusal {
            server: "127.0.0.1:5432".into(),
            limit: 22,
            max_connections: 30,
            reserved_connections: 3,
            reserve: 5,
            others_min: 10,
            min: 17,
            replicas: 1,
        }
    }

    fn bad_fields(status: &Status) -> Vec<String> {
        status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn request_faults_are_invalid_argument_naming_their_fields() {
        let url = poolplane::ConnInfo::parse("not a url").unwrap_err();
        let status = from_engine(Error::InvalidDatabaseUrl(url));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&status), ["database_url"]);

        let name = poolplane::registry::validate_pool_name("Bad Name").unwrap_err();
        assert_eq!(bad_fields(&from_engine(name)), ["name"]);

        let config = poolplane::AdvancedPoolConfig {
            max_connections: 0,
            min_connections: 0,
            ..Default::default()
        };
        let invalid = Error::InvalidConfig(config.validate().unwrap_err());
        let status = from_engine(invalid);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&status), ["config.max_connections"]);

        let request = Error::InvalidRequest(vec![
            poolplane::RequestViolation::new("concurrency", "must be at most 512"),
            poolplane::RequestViolation::new("query", "must be at most 65536 bytes"),
        ]);
        let status = from_engine(request);
        assert_eq!(bad_fields(&status), ["concurrency", "query"]);
        assert_eq!(
            status.message(),
            "concurrency: must be at most 512; query: must be at most 65536 bytes"
        );

        let column = Error::UnsupportedType {
            column: "c".into(),
            type_name: "tsvector".into(),
        };
        assert_eq!(bad_fields(&from_engine(column)), ["sql (column `c`)"]);
        let query = from_engine(Error::InvalidQuery("empty".into()));
        assert_eq!(bad_fields(&query), ["sql"]);
    }

    #[test]
    fn every_other_error_has_its_code() {
        let refusal = refusal();
        let cases = [
            (
                Error::TargetNotAllowed {
                    target: "db:5432".into(),
                },
                Code::PermissionDenied,
            ),
            (Error::TooManyPools { max: 3 }, Code::ResourceExhausted),
            (
                Error::AcquireTimeout {
                    timeout: Duration::from_secs(1),
                    limit: AcquireLimit::MaxConnections(2),
                    last_connect_error: None,
                },
                Code::ResourceExhausted,
            ),
            (Error::PoolClosed, Code::FailedPrecondition),
            (Error::PoolNotFound("p".into()), Code::NotFound),
            (Error::PoolAlreadyExists("p".into()), Code::AlreadyExists),
            (Error::ShuttingDown, Code::Unavailable),
            (Error::PoolBusy("p".into()), Code::Aborted),
            (Error::LoadTestRunning("p".into()), Code::FailedPrecondition),
            (Error::BudgetExceeded(refusal), Code::FailedPrecondition),
            (
                Error::StatementCancelled {
                    deadline_exceeded: true,
                },
                Code::DeadlineExceeded,
            ),
            (
                Error::StatementCancelled {
                    deadline_exceeded: false,
                },
                Code::Cancelled,
            ),
            (
                Error::QueryLimit {
                    what: "rows",
                    limit: 10,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::PoolUnhealthy {
                    pool: "p".into(),
                    reason: "down".into(),
                },
                Code::Unavailable,
            ),
            (Error::ControlDatabaseTimeout, Code::Unavailable),
            (
                Error::EmbeddedPg(poolplane::EmbeddedPgError::BinariesNotFound {
                    searched: "PATH".into(),
                }),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let shown = error.to_string();
            let status = from_engine(error);
            assert_eq!(status.code(), code, "{shown}");
        }
    }

    #[test]
    fn internal_errors_answer_briefly_and_budget_refusals_carry_a_precondition() {
        let internal = from_engine(Error::EmbeddedPg(
            poolplane::EmbeddedPgError::BinariesNotFound {
                searched: "/secret/path".into(),
            },
        ));
        assert_eq!(internal.message(), "internal error; see the server log");
        let refusal = refusal();
        let status = from_engine(Error::BudgetExceeded(refusal));
        let failure = status
            .get_error_details()
            .precondition_failure()
            .cloned()
            .expect("a PreconditionFailure");
        assert_eq!(failure.violations.len(), 1);
        assert_eq!(failure.violations[0].r#type, "CONNECTION_BUDGET");
        assert_eq!(failure.violations[0].subject, "127.0.0.1:5432");
        assert!(
            failure.violations[0]
                .description
                .contains("17 does not fit the budget of 22")
        );
    }

    #[test]
    fn connect_errors_carry_their_sqlstate() {
        let status = from_engine(Error::Connect {
            url: "postgres://u:***@h/db".into(),
            reason: "database \"db\" does not exist".into(),
            sqlstate: Some("3D000".into()),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(sqlstate_of(&status).as_deref(), Some("3D000"));
        let plain = from_engine(Error::Connect {
            url: "postgres://h/db".into(),
            reason: "refused".into(),
            sqlstate: None,
        });
        assert_eq!(sqlstate_of(&plain), None);
    }

    #[test]
    fn database_errors_map_by_sqlstate_and_class() {
        for (sqlstate, code) in [
            ("23505", Code::AlreadyExists),
            ("57014", Code::DeadlineExceeded),
            ("08006", Code::Unavailable),
            ("57P01", Code::Unavailable),
            ("40001", Code::Aborted),
            ("40P01", Code::Aborted),
            ("22P02", Code::InvalidArgument),
            ("42P01", Code::InvalidArgument),
            ("23503", Code::FailedPrecondition),
            ("", Code::FailedPrecondition),
        ] {
            assert_eq!(database_code(sqlstate), code, "{sqlstate}");
        }
    }
}
