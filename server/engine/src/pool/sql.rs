//! Statements run for a remote caller (QueryService): typed parameters and cells
//! ([`crate::query`]), the pool's statement cache, a deadline and a stop signal
//! that cancel the statement in PostgreSQL and leave the connection usable, row
//! limits, and results streamed in batches with backpressure.

use std::future::Future;
use std::time::Instant;

use futures_util::TryStreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use super::PooledConnection;
use super::connection::CANCEL_TIMEOUT;
use super::stats::Counters;
use crate::Error;
use crate::query::{
    CallLimits, Cell, ColumnInfo, Isolation, SqlValue, StatementResult, TextParam, is_mapped,
};

/// One statement and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlStatement {
    /// The SQL text (`$1`, `$2`… for parameters).
    pub sql: String,
    /// The parameters.
    pub params: Vec<SqlValue>,
}

/// How statements run: alone (autocommit), or in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxMode {
    /// Each statement on its own.
    Autocommit,
    /// All in one transaction, committed at the end, rolled back on an error.
    Transaction {
        /// Its isolation level.
        isolation: Isolation,
        /// READ ONLY.
        read_only: bool,
    },
}

/// A batch of a streamed result: the columns come with the first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowBatch {
    /// The columns (first batch only).
    pub columns: Vec<ColumnInfo>,
    /// The rows.
    pub rows: Vec<Vec<SqlValue>>,
}

impl PooledConnection {
    /// Runs `statements` (see [`TxMode`]) within `deadline`; `stop` (the caller
    /// went away) or the deadline cancel the running statement in PostgreSQL,
    /// wait for it to end, and leave the connection usable.
    pub async fn run_statements(
        &mut self,
        statements: &[SqlStatement],
        mode: TxMode,
        limits: CallLimits,
        deadline: Instant,
        stop: &CancellationToken,
    ) -> Result<Vec<StatementResult>, Error> {
        let cancel = self.cancel_handle();
        let work = async {
            let mut results = Vec::with_capacity(statements.len());
            let mut bytes = 0usize;
            if let TxMode::Transaction {
                isolation,
                read_only,
            } = mode
            {
                self.batch_execute(&isolation.begin(read_only)).await?;
            }
            for statement in statements {
                match self.one_statement(statement, limits, &mut bytes).await {
                    Ok(result) => results.push(result),
                    Err(error) => {
                        if matches!(mode, TxMode::Transaction { .. }) {
                            self.end_transaction().await;
                        }
                        return Err(error);
                    }
                }
            }
            if matches!(mode, TxMode::Transaction { .. }) {
                self.batch_execute("COMMIT").await?;
            }
            Ok(results)
        };
        bounded(cancel, work, deadline, stop).await
    }

    /// Runs `statement` and sends its rows to `sink` in batches of `batch_rows`
    /// (the columns with the first): the statement advances only as fast as the
    /// receiver takes batches. `read_only` wraps it in a read-only transaction.
    pub async fn stream_statement(
        &mut self,
        statement: &SqlStatement,
        read_only: bool,
        batch_rows: usize,
        sink: mpsc::Sender<RowBatch>,
        deadline: Instant,
        stop: &CancellationToken,
    ) -> Result<u64, Error> {
        let gone = sink.clone();
        let stop_or_gone = stop.child_token();
        let watcher = {
            let stop_or_gone = stop_or_gone.clone();
            tokio::spawn(async move {
                gone.closed().await;
                stop_or_gone.cancel();
            })
        };
        let cancel = self.cancel_handle();
        let work = async {
            if read_only {
                self.batch_execute(&Isolation::Default.begin(true)).await?;
            }
            let result = self.stream_rows(statement, batch_rows.max(1), &sink).await;
            if read_only {
                match &result {
                    Ok(_) => self.batch_execute("COMMIT").await?,
                    Err(_) => self.end_transaction().await,
                }
            }
            result
        };
        let result = bounded(cancel, work, deadline, &stop_or_gone).await;
        watcher.abort();
        result
    }

    async fn stream_rows(
        &mut self,
        statement: &SqlStatement,
        batch_rows: usize,
        sink: &mpsc::Sender<RowBatch>,
    ) -> Result<u64, Error> {
        let (rows, columns) = self.send_statement(statement).await?;
        let streamed = async {
            futures_util::pin_mut!(rows);
            let mut batch = RowBatch {
                columns,
                rows: Vec::with_capacity(batch_rows),
            };
            let mut count = 0u64;
            while let Some(row) = rows.try_next().await? {
                batch.rows.push(decode(&row)?);
                count += 1;
                if batch.rows.len() >= batch_rows {
                    let full = std::mem::replace(
                        &mut batch,
                        RowBatch {
                            columns: Vec::new(),
                            rows: Vec::with_capacity(batch_rows),
                        },
                    );
                    if sink.send(full).await.is_err() {
                        return Err(StreamEnd::ReceiverGone);
                    }
                }
            }
            if (!batch.rows.is_empty() || count == 0 || !batch.columns.is_empty())
                && sink.send(batch).await.is_err()
            {
                return Err(StreamEnd::ReceiverGone);
            }
            Ok(count)
        }
        .await;
        self.in_flight = false;
        let result = match streamed {
            Ok(count) => Ok(count),
            Err(StreamEnd::Postgres(e)) => Err(Error::Database(e)),
            Err(StreamEnd::Decode(e)) => Err(e),
            Err(StreamEnd::ReceiverGone) => Err(Error::StatementCancelled {
                deadline_exceeded: false,
            }),
        };
        self.counted(result)
    }

    /// Prepares `statement` (through the cache), binds its parameters and sends
    /// it: the connection is in flight until the caller has read its rows.
    async fn send_statement(
        &mut self,
        statement: &SqlStatement,
    ) -> Result<(tokio_postgres::RowStream, Vec<ColumnInfo>), Error> {
        let (prepared, columns) = self.prepare_mapped(statement).await?;
        let params = text_params(statement);
        self.conn.queries += 1;
        Counters::add(&self.shared.counters.total_queries, 1);
        self.in_flight = true;
        let sent = self
            .conn
            .client
            .query_raw(&prepared, params.iter().map(|p| p as &dyn ToSql))
            .await;
        match sent {
            Ok(rows) => Ok((rows, columns)),
            Err(e) => {
                self.in_flight = false;
                self.counted(Err(Error::Database(e)))
            }
        }
    }

    /// Prepares (through the cache) and checks that every column maps.
    async fn prepare_mapped(
        &mut self,
        statement: &SqlStatement,
    ) -> Result<(tokio_postgres::Statement, Vec<ColumnInfo>), Error> {
        let prepared = self.prepare_cached(&statement.sql).await?;
        if prepared.params().len() != statement.params.len() {
            return Err(Error::InvalidQuery(format!(
                "the statement takes {} parameters, {} were given",
                prepared.params().len(),
                statement.params.len()
            )));
        }
        let mut columns = Vec::with_capacity(prepared.columns().len());
        for column in prepared.columns() {
            let ty = column.type_();
            if !is_mapped(ty) {
                return Err(Error::UnsupportedType {
                    column: column.name().to_owned(),
                    type_name: ty.name().to_owned(),
                });
            }
            columns.push(ColumnInfo {
                name: column.name().to_owned(),
                type_name: ty.name().to_owned(),
                type_oid: ty.oid(),
            });
        }
        Ok((prepared, columns))
    }

    async fn one_statement(
        &mut self,
        statement: &SqlStatement,
        limits: CallLimits,
        bytes: &mut usize,
    ) -> Result<StatementResult, Error> {
        let started = Instant::now();
        let (rows, columns) = self.send_statement(statement).await?;
        let ran = async {
            futures_util::pin_mut!(rows);
            let mut out = Vec::new();
            let mut seen = 0u64;
            let mut truncated = false;
            while let Some(row) = rows.try_next().await? {
                seen += 1;
                if out.len() >= limits.max_rows {
                    // Read to the end (the connection stays in step), keep nothing.
                    truncated = true;
                    continue;
                }
                let cells = decode(&row)?;
                *bytes += cells.iter().map(SqlValue::size).sum::<usize>();
                if *bytes > limits.max_result_bytes {
                    return Err(StreamEnd::Decode(Error::QueryLimit {
                        what: "result bytes (use QueryStream for large results)",
                        limit: limits.max_result_bytes as u64,
                    }));
                }
                out.push(cells);
            }
            let affected = rows.rows_affected().unwrap_or(seen);
            Ok((out, truncated, affected))
        }
        .await;
        self.in_flight = false;
        self.shared
            .counters
            .operation_time
            .record(started.elapsed());
        let result = match ran {
            Ok((rows, truncated, rows_affected)) => Ok(StatementResult {
                columns,
                rows,
                truncated,
                rows_affected,
                elapsed: started.elapsed(),
            }),
            Err(StreamEnd::Postgres(e)) => Err(Error::Database(e)),
            Err(StreamEnd::Decode(e)) => Err(e),
            Err(StreamEnd::ReceiverGone) => Err(Error::StatementCancelled {
                deadline_exceeded: false,
            }),
        };
        self.counted(result)
    }

    /// Rolls a failed transaction back; a connection where even that fails is
    /// not reused.
    async fn end_transaction(&mut self) {
        if self.conn.client.batch_execute("ROLLBACK").await.is_err() {
            self.conn.broken = true;
        }
    }

    /// What cancels this connection's running statement from outside (a cancel
    /// request on a connection of its own, as the protocol wants).
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            target: std::sync::Arc::clone(&self.conn.cancel),
        }
    }
}

/// What is needed to cancel a connection's statement from outside.
#[derive(Clone)]
pub struct CancelHandle {
    target: std::sync::Arc<CancelTarget>,
}

/// Where a connection's cancel request goes: its server and key, and the TLS to
/// reach it (made once per connection, shared by every statement's handle), and
/// its pool, whose statements_cancelled counts each cancel sent.
pub(crate) struct CancelTarget {
    pub(crate) token: tokio_postgres::CancelToken,
    pub(crate) tls: crate::tls::Connector,
    pub(crate) address: super::lend::Address,
    pub(crate) shared: std::sync::Arc<super::Shared>,
}

impl CancelTarget {
    /// Sends the cancel request (at most [`CANCEL_TIMEOUT`]), to the address the
    /// connection went to, with TLS as its target says; counted in
    /// statements_cancelled.
    pub(crate) async fn send(&self) {
        use tokio_postgres::tls::MakeTlsConnect;
        Counters::add(&self.shared.counters.statements_cancelled, 1);
        let request = async {
            let pg = tokio_postgres::Config::new();
            let Ok(io) = self.address.open(&pg).await else {
                return;
            };
            let mut connector = self.tls.clone();
            let Ok(tls) = MakeTlsConnect::<super::lend::BoxIo>::make_tls_connect(
                &mut connector,
                self.address.tls_name(),
            );
            let _ = self.token.cancel_query_raw(io, tls).await;
        };
        let _ = tokio::time::timeout(CANCEL_TIMEOUT, request).await;
    }
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle").finish_non_exhaustive()
    }
}

impl CancelHandle {
    /// Sends the cancel request (at most [`CANCEL_TIMEOUT`]); whether it reached
    /// PostgreSQL in time shows in the statement's own outcome.
    pub async fn cancel(&self) {
        self.target.send().await;
    }

    pub(crate) fn of(target: &std::sync::Arc<CancelTarget>) -> Self {
        Self {
            target: std::sync::Arc::clone(target),
        }
    }
}

/// How a statement's row loop ended early.
enum StreamEnd {
    Postgres(tokio_postgres::Error),
    Decode(Error),
    ReceiverGone,
}

impl From<tokio_postgres::Error> for StreamEnd {
    fn from(e: tokio_postgres::Error) -> Self {
        StreamEnd::Postgres(e)
    }
}

impl From<Error> for StreamEnd {
    fn from(e: Error) -> Self {
        StreamEnd::Decode(e)
    }
}

fn text_params(statement: &SqlStatement) -> Vec<TextParam> {
    statement
        .params
        .iter()
        .map(|v| TextParam(v.to_text()))
        .collect()
}

fn decode(row: &tokio_postgres::Row) -> Result<Vec<SqlValue>, Error> {
    (0..row.len())
        .map(|i| {
            row.try_get::<_, Cell>(i).map(|c| c.0).map_err(|e| {
                let column = &row.columns()[i];
                Error::InvalidQuery(format!(
                    "column `{}` ({}) could not be read: {e}",
                    column.name(),
                    column.type_().name()
                ))
            })
        })
        .collect()
}

/// Runs `work` until it ends, `deadline` passes or `stop` fires; in the last two
/// cases the statement is cancelled in PostgreSQL and `work` is let run to its
/// (prompt) end, so that the connection stays in step and can be reused. A
/// statement that completed before the cancel reached it is reported as done:
/// it happened in PostgreSQL.
async fn bounded<T>(
    cancel: CancelHandle,
    work: impl Future<Output = Result<T, Error>>,
    deadline: Instant,
    stop: &CancellationToken,
) -> Result<T, Error> {
    let settled = settle(&cancel, work, deadline, std::time::Duration::ZERO, stop).await;
    match (settled.outcome, settled.cut) {
        (Some(Ok(done)), _) => Ok(done),
        (Some(Err(e)), None) => Err(e),
        (_, Some(cut)) => Err(Error::StatementCancelled {
            deadline_exceeded: cut == Cut::Deadline,
        }),
        (None, None) => unreachable!("work that did not end was cut"),
    }
}

/// Why [`settle`] stopped waiting for a statement before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The deadline passed.
    Deadline,
    /// The stop signal fired.
    Stopped,
}

/// How a statement run under [`settle`] ended.
#[derive(Debug)]
pub struct Settled<T> {
    /// What the statement gave, whenever it ended; `None` if it never answered,
    /// even to the cancel request (the connection is then closed, never reused).
    pub outcome: Option<Result<T, Error>>,
    /// Set when the deadline or the stop signal came first: the statement was
    /// then given `grace` and cancelled in PostgreSQL if it still ran.
    pub cut: Option<Cut>,
}

/// Runs `work` (a statement on the connection `cancel` belongs to) to its end.
/// Once `deadline` passes or `stop` fires it gets `grace` more; then its
/// statement is cancelled in PostgreSQL and its outcome awaited (at most
/// [`CANCEL_TIMEOUT`]): a statement that completed before the cancel reached it
/// is reported as completed, one the cancel stopped as its error. Nothing is
/// abandoned without saying so.
pub async fn settle<T>(
    cancel: &CancelHandle,
    work: impl Future<Output = Result<T, Error>>,
    deadline: Instant,
    grace: std::time::Duration,
    stop: &CancellationToken,
) -> Settled<T> {
    let deadline = tokio::time::sleep_until(deadline.into());
    let stopped = stop.cancelled();
    futures_util::pin_mut!(deadline, stopped);
    settle_pinned(cancel, work, deadline, stopped, grace).await
}

/// [`settle`] with the deadline's timer and the stop signal's future made by the
/// caller, which may have waited on them already (a load test's request uses one
/// timer and one registration from its checkout to its end).
pub async fn settle_pinned<T>(
    cancel: &CancelHandle,
    work: impl Future<Output = Result<T, Error>>,
    mut deadline: std::pin::Pin<&mut tokio::time::Sleep>,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
    grace: std::time::Duration,
) -> Settled<T> {
    futures_util::pin_mut!(work);
    let cut = tokio::select! {
        result = &mut work => return Settled { outcome: Some(result), cut: None },
        () = &mut deadline => Cut::Deadline,
        () = &mut stop => Cut::Stopped,
    };
    if !grace.is_zero()
        && let Ok(result) = tokio::time::timeout(grace, &mut work).await
    {
        return Settled {
            outcome: Some(result),
            cut: Some(cut),
        };
    }
    cancel.cancel().await;
    // The statement ends with 57014 at once; if it does not, dropping `work`
    // leaves the connection marked in flight, and it is closed, never reused.
    Settled {
        outcome: tokio::time::timeout(CANCEL_TIMEOUT, &mut work).await.ok(),
        cut: Some(cut),
    }
}
