//! `poolplane.v1.QueryService`: SQL through a named pool. Each call runs in a task
//! of its own that owns the pooled connection, so that a deadline or a caller
//! that goes away cancels the statement in PostgreSQL and the connection goes
//! back to the pool usable.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use poolplane::pool::sql::{RowBatch, SqlStatement, TxMode};
use poolplane::query::{CallLimits, ColumnInfo, Isolation, SqlValue, StatementResult};
use poolplane::{AdvancedConnectionPool, ConnectionPoolService, Error, PooledConnection};
use poolplane_proto::v1::query_service_server;
use poolplane_proto::v1::{self as pb};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use super::auth::{Caller, Role};
use super::status;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Rows a unary result holds by default, and at most.
const DEFAULT_MAX_ROWS: u32 = 10_000;
const MAX_ROWS: u32 = 100_000;
/// Bytes of cells a unary result may hold (gRPC clients refuse messages above
/// 4 MiB by default; QueryStream has no such bound).
const MAX_RESULT_BYTES: usize = 3 * 1024 * 1024;
/// Parameters one statement may take, and statements one transaction.
const MAX_PARAMS: usize = 1_000;
const MAX_STATEMENTS: usize = 1_000;
/// Rows per streamed message by default, and at most.
const DEFAULT_BATCH_ROWS: u32 = 1_000;
const MAX_BATCH_ROWS: u32 = 10_000;
/// Batches a stream may have queued for a slow reader.
const STREAM_BUFFER: usize = 2;
/// Time limits when neither timeout_ms nor the call's deadline says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest timeout_ms.
const MAX_TIMEOUT_MS: u32 = 3_600_000;

/// The tonic implementation of `poolplane.v1.QueryService`.
#[derive(Debug, Clone)]
pub struct QueryService {
    registry: Arc<ConnectionPoolService>,
    /// Every task a call spawns: the server waits for them when it shuts down.
    tasks: TaskTracker,
}

impl QueryService {
    /// The service over `registry`'s pools; its calls' tasks are spawned on
    /// `tasks`.
    pub fn new(registry: Arc<ConnectionPoolService>, tasks: TaskTracker) -> Self {
        Self { registry, tasks }
    }

    /// Runs one statement in its pool, within a span of its own.
    async fn single(
        &self,
        method: &str,
        pool_name: &str,
        statement: SqlStatement,
        mode: TxMode,
        limits: CallLimits,
        deadline: Instant,
    ) -> Result<StatementResult, Status> {
        let span = span(method, pool_name, &statement.sql);
        let pool = self.pool(pool_name)?;
        let result = tracing::Instrument::instrument(
            run(&self.tasks, pool, vec![statement], mode, limits, deadline),
            span.clone(),
        )
        .await
        .and_then(|mut results| results.pop().ok_or_else(|| Status::internal("no result")));
        record(&span, &result);
        result
    }

    /// The pool, failing fast when it is unhealthy.
    fn pool(&self, name: &str) -> Result<Arc<AdvancedConnectionPool>, Status> {
        if name.is_empty() {
            return Err(status::bad_request(vec![(
                "pool_name".into(),
                "must not be empty".into(),
            )]));
        }
        let pool = self.registry.pool(name).map_err(status::from_engine)?;
        if pool.refuses_callers() {
            let reason = pool
                .health_snapshot()
                .last_error
                .unwrap_or_else(|| "not connected yet".into());
            return Err(status::from_engine(Error::PoolUnhealthy {
                pool: name.to_owned(),
                reason,
            }));
        }
        Ok(pool)
    }
}

/// The call's grpc-timeout, if the caller set one.
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let text = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// When the call must end: the sooner of timeout_ms and the call's deadline, or
/// `default` when neither is set.
fn deadline<T>(
    request: &Request<T>,
    timeout_ms: u32,
    default: Duration,
) -> Result<Instant, Status> {
    if timeout_ms > MAX_TIMEOUT_MS {
        return Err(status::bad_request(vec![(
            "timeout_ms".into(),
            format!("must be at most {MAX_TIMEOUT_MS}"),
        )]));
    }
    let own = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
    let limit = match (own, grpc_timeout(request)) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => default,
    };
    Ok(Instant::now() + limit)
}

fn check_sql(sql: &str, field: &str) -> Result<(), Status> {
    if sql.trim().is_empty() {
        return Err(status::bad_request(vec![(
            field.into(),
            "must not be empty".into(),
        )]));
    }
    if sql.len() > poolplane::config::MAX_SQL_LEN {
        return Err(status::bad_request(vec![(
            field.into(),
            format!("must be at most {} bytes", poolplane::config::MAX_SQL_LEN),
        )]));
    }
    Ok(())
}

fn params(values: &[pb::Value], field: &str) -> Result<Vec<SqlValue>, Status> {
    if values.len() > MAX_PARAMS {
        return Err(status::bad_request(vec![(
            field.into(),
            format!("at most {MAX_PARAMS} parameters"),
        )]));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            from_proto(v).map_err(|why| status::bad_request(vec![(format!("{field}[{i}]"), why)]))
        })
        .collect()
}

/// A request's one statement: its SQL (`sql`) and parameters (`params`), checked.
fn statement(sql: String, values: &[pb::Value]) -> Result<SqlStatement, Status> {
    check_sql(&sql, "sql")?;
    Ok(SqlStatement {
        params: params(values, "params")?,
        sql,
    })
}

fn max_rows(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_MAX_ROWS as usize),
        n if n > MAX_ROWS => Err(status::bad_request(vec![(
            "max_rows".into(),
            format!("must be at most {MAX_ROWS} (QueryStream has no limit)"),
        )])),
        n => Ok(n as usize),
    }
}

/// A parameter or cell from the wire.
pub fn from_proto(value: &pb::Value) -> Result<SqlValue, String> {
    use pb::value::Kind;
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => SqlValue::Null,
        Some(Kind::BoolValue(b)) => SqlValue::Bool(*b),
        Some(Kind::IntValue(i)) => SqlValue::Int(*i),
        Some(Kind::DoubleValue(f)) => SqlValue::Float(*f),
        Some(Kind::StringValue(s)) => SqlValue::Text(s.clone()),
        Some(Kind::BytesValue(b)) => SqlValue::Bytes(b.clone()),
        Some(Kind::TimestampValue(t)) => {
            let nanos = u32::try_from(t.nanos).map_err(|_| "timestamp nanos out of range")?;
            let at = if t.seconds >= 0 {
                SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, nanos)
            } else {
                SystemTime::UNIX_EPOCH - Duration::from_secs(t.seconds.unsigned_abs())
                    + Duration::from_nanos(u64::from(nanos))
            };
            SqlValue::Timestamp(at)
        }
        Some(Kind::NumericValue(s)) => SqlValue::Numeric(s.clone()),
        Some(Kind::JsonValue(s)) => SqlValue::Json(s.clone()),
        Some(Kind::UuidValue(s)) => SqlValue::Uuid(s.clone()),
        Some(Kind::DateValue(s)) => SqlValue::Date(s.clone()),
        Some(Kind::TimeValue(s)) => SqlValue::Time(s.clone()),
        Some(Kind::IntervalValue(s)) => SqlValue::Interval(s.clone()),
        Some(Kind::ArrayValue(list)) => SqlValue::Array(
            list.values
                .iter()
                .map(from_proto)
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A cell for the wire.
pub fn to_proto(value: &SqlValue) -> pb::Value {
    use pb::value::Kind;
    let kind = match value {
        SqlValue::Null => Kind::NullValue(0),
        SqlValue::Bool(b) => Kind::BoolValue(*b),
        SqlValue::Int(i) => Kind::IntValue(*i),
        SqlValue::Float(f) => Kind::DoubleValue(*f),
        SqlValue::Text(s) => Kind::StringValue(s.clone()),
        SqlValue::Bytes(b) => Kind::BytesValue(b.clone()),
        SqlValue::Timestamp(t) => Kind::TimestampValue(super::convert::timestamp(*t)),
        SqlValue::Numeric(s) => Kind::NumericValue(s.clone()),
        SqlValue::Json(s) => Kind::JsonValue(s.clone()),
        SqlValue::Uuid(s) => Kind::UuidValue(s.clone()),
        SqlValue::Date(s) => Kind::DateValue(s.clone()),
        SqlValue::Time(s) => Kind::TimeValue(s.clone()),
        SqlValue::Interval(s) => Kind::IntervalValue(s.clone()),
        SqlValue::Array(items) => Kind::ArrayValue(pb::ValueList {
            values: items.iter().map(to_proto).collect(),
        }),
    };
    pb::Value { kind: Some(kind) }
}

fn columns(columns: &[ColumnInfo]) -> Vec<pb::Column> {
    columns
        .iter()
        .map(|c| pb::Column {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            type_oid: c.type_oid,
        })
        .collect()
}

fn rows(rows: &[Vec<SqlValue>]) -> Vec<pb::Row> {
    rows.iter()
        .map(|r| pb::Row {
            values: r.iter().map(to_proto).collect(),
        })
        .collect()
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Checks a connection out within `deadline`.
async fn checkout(
    pool: &AdvancedConnectionPool,
    deadline: Instant,
) -> Result<PooledConnection, Error> {
    match tokio::time::timeout_at(deadline.into(), pool.get()).await {
        Ok(conn) => conn,
        Err(_) => Err(Error::StatementCancelled {
            deadline_exceeded: true,
        }),
    }
}

/// Runs `statements` in a task of their own; the returned future's drop (the
/// caller went away) cancels them in PostgreSQL.
async fn run(
    tasks: &TaskTracker,
    pool: Arc<AdvancedConnectionPool>,
    statements: Vec<SqlStatement>,
    mode: TxMode,
    limits: CallLimits,
    deadline: Instant,
) -> Result<Vec<StatementResult>, Status> {
    let stop = CancellationToken::new();
    let _cancel_on_drop = stop.clone().drop_guard();
    let task = tasks.spawn(async move {
        let mut conn = checkout(&pool, deadline).await?;
        conn.run_statements(&statements, mode, limits, deadline, &stop)
            .await
    });
    match task.await {
        Ok(result) => result.map_err(status::from_engine),
        Err(_) => Err(Status::internal("the statement's task failed")),
    }
}

/// The span of one call: the pool, the SQL text (never its parameters), and the
/// status it ended with.
fn span(method: &str, pool: &str, sql: &str) -> tracing::Span {
    tracing::info_span!(
        "db.query",
        rpc.method = method,
        db.system.name = "postgresql",
        db.client.connection.pool.name = pool,
        db.query.text = sql,
        db.response.status_code = tracing::field::Empty,
    )
}

/// Records the SQLSTATE (or OK) on `span`.
fn record<T>(span: &tracing::Span, result: &Result<T, Status>) {
    let code = match result {
        Ok(_) => "00000".to_owned(),
        Err(status) => {
            status::sqlstate_of(status).unwrap_or_else(|| format!("{:?}", status.code()))
        }
    };
    span.record("db.response.status_code", code.as_str());
}

#[tonic::async_trait]
impl query_service_server::QueryService for QueryService {
    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let caller = Caller::of(&request);
        let deadline = deadline(&request, request.get_ref().timeout_ms, DEFAULT_TIMEOUT)?;
        let r = request.into_inner();
        let statement = statement(r.sql, &r.params)?;
        let limits = CallLimits {
            max_rows: max_rows(r.max_rows)?,
            max_result_bytes: MAX_RESULT_BYTES,
        };
        // An operator's query runs read-only; an admin's as it is.
        let mode = if caller.role >= Role::Admin {
            TxMode::Autocommit
        } else {
            TxMode::Transaction {
                isolation: Isolation::Default,
                read_only: true,
            }
        };
        let result = self
            .single("Query", &r.pool_name, statement, mode, limits, deadline)
            .await?;
        Ok(Response::new(pb::QueryResponse {
            columns: columns(&result.columns),
            rows: rows(&result.rows),
            truncated: result.truncated,
            elapsed: Some(duration(result.elapsed)),
        }))
    }

    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let deadline = deadline(&request, request.get_ref().timeout_ms, DEFAULT_TIMEOUT)?;
        let r = request.into_inner();
        let statement = statement(r.sql, &r.params)?;
        let limits = CallLimits {
            max_rows: 0,
            max_result_bytes: MAX_RESULT_BYTES,
        };
        let result = self
            .single(
                "Execute",
                &r.pool_name,
                statement,
                TxMode::Autocommit,
                limits,
                deadline,
            )
            .await?;
        Ok(Response::new(pb::ExecuteResponse {
            rows_affected: result.rows_affected,
            elapsed: Some(duration(result.elapsed)),
        }))
    }

    async fn transaction(
        &self,
        request: Request<pb::TransactionRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        let caller = Caller::of(&request);
        let deadline = deadline(&request, request.get_ref().timeout_ms, DEFAULT_TIMEOUT)?;
        let r = request.into_inner();
        if !r.read_only {
            caller.require(Role::Admin, "a Transaction that is not read_only")?;
        }
        if r.statements.is_empty() || r.statements.len() > MAX_STATEMENTS {
            return Err(status::bad_request(vec![(
                "statements".into(),
                format!("between 1 and {MAX_STATEMENTS} statements"),
            )]));
        }
        let mut statements = Vec::with_capacity(r.statements.len());
        for (i, s) in r.statements.iter().enumerate() {
            check_sql(&s.sql, &format!("statements[{i}].sql"))?;
            statements.push(SqlStatement {
                sql: s.sql.clone(),
                params: params(&s.params, &format!("statements[{i}].params"))?,
            });
        }
        let isolation = match pb::IsolationLevel::try_from(r.isolation_level) {
            Ok(pb::IsolationLevel::Unspecified) => Isolation::Default,
            Ok(pb::IsolationLevel::ReadCommitted) => Isolation::ReadCommitted,
            Ok(pb::IsolationLevel::RepeatableRead) => Isolation::RepeatableRead,
            Ok(pb::IsolationLevel::Serializable) => Isolation::Serializable,
            Err(_) => {
                return Err(status::bad_request(vec![(
                    "isolation_level".into(),
                    "unknown isolation level".into(),
                )]));
            }
        };
        let limits = CallLimits {
            max_rows: max_rows(r.max_rows)?,
            max_result_bytes: MAX_RESULT_BYTES,
        };
        let text: Vec<&str> = statements.iter().map(|s| s.sql.as_str()).collect();
        let span = span("Transaction", &r.pool_name, &text.join("; "));
        let pool = self.pool(&r.pool_name)?;
        let started = Instant::now();
        let mode = TxMode::Transaction {
            isolation,
            read_only: r.read_only,
        };
        let result = tracing::Instrument::instrument(
            run(&self.tasks, pool, statements, mode, limits, deadline),
            span.clone(),
        )
        .await;
        record(&span, &result);
        let results = result?;
        Ok(Response::new(pb::TransactionResponse {
            results: results
                .iter()
                .map(|r| pb::StatementResult {
                    columns: columns(&r.columns),
                    rows: rows(&r.rows),
                    rows_affected: r.rows_affected,
                    truncated: r.truncated,
                })
                .collect(),
            elapsed: Some(duration(started.elapsed())),
        }))
    }

    type QueryStreamStream = ResponseStream<pb::QueryStreamResponse>;

    async fn query_stream(
        &self,
        request: Request<pb::QueryStreamRequest>,
    ) -> Result<Response<Self::QueryStreamStream>, Status> {
        let caller = Caller::of(&request);
        let deadline = deadline(
            &request,
            request.get_ref().timeout_ms,
            DEFAULT_STREAM_TIMEOUT,
        )?;
        let r = request.into_inner();
        let batch_rows = match r.batch_rows {
            0 => DEFAULT_BATCH_ROWS,
            n if n > MAX_BATCH_ROWS => {
                return Err(status::bad_request(vec![(
                    "batch_rows".into(),
                    format!("must be at most {MAX_BATCH_ROWS}"),
                )]));
            }
            n => n,
        } as usize;
        let statement = statement(r.sql, &r.params)?;
        let span = span("QueryStream", &r.pool_name, &statement.sql);
        let pool = self.pool(&r.pool_name)?;
        let read_only = caller.role < Role::Admin;
        let (batches_tx, mut batches_rx) = mpsc::channel::<RowBatch>(STREAM_BUFFER);
        let (tx, rx) = mpsc::channel::<Result<pb::QueryStreamResponse, Status>>(1);
        let stop = CancellationToken::new();
        // The statement: stops when the caller's stream is dropped (the relay
        // below ends, the batch channel closes).
        let worker = {
            let stop = stop.clone();
            self.tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let mut conn = checkout(&pool, deadline).await?;
                    conn.stream_statement(
                        &statement, read_only, batch_rows, batches_tx, deadline, &stop,
                    )
                    .await
                },
                span.clone(),
            ))
        };
        self.tasks.spawn(async move {
            // The caller leaving stops the statement at once (the guard cancels
            // it in PostgreSQL), not when the next batch finds nobody to take it.
            let _stop = stop.drop_guard();
            loop {
                let batch = tokio::select! {
                    biased;
                    () = tx.closed() => return,
                    batch = batches_rx.recv() => batch,
                };
                let Some(batch) = batch else { break };
                let message = pb::QueryStreamResponse {
                    columns: columns(&batch.columns),
                    rows: rows(&batch.rows),
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            let outcome = match worker.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(status::from_engine(e)),
                Err(_) => Err(Status::internal("the statement's task failed")),
            };
            record(&span, &outcome);
            if let Err(status) = outcome {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
