//! QueryService through the SDK: parameters from Rust values, rows decoded into
//! Rust types by column name (`row.get::<i64>("id")`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use poolplane_proto::v1::query_service_client::QueryServiceClient;
use poolplane_proto::v1::value::Kind;
use poolplane_proto::v1::{
    ExecuteRequest, QueryRequest, QueryStreamRequest, Statement, TransactionRequest, Value,
};

use crate::{Error, PoolplaneClient};

/// A Rust value as a parameter.
pub trait IntoValue {
    /// The wire value.
    fn into_value(self) -> Value;
}

fn value(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

impl IntoValue for Value {
    fn into_value(self) -> Value {
        self
    }
}
impl IntoValue for bool {
    fn into_value(self) -> Value {
        value(Kind::BoolValue(self))
    }
}
impl IntoValue for i64 {
    fn into_value(self) -> Value {
        value(Kind::IntValue(self))
    }
}
impl IntoValue for i32 {
    fn into_value(self) -> Value {
        value(Kind::IntValue(i64::from(self)))
    }
}
impl IntoValue for f64 {
    fn into_value(self) -> Value {
        value(Kind::DoubleValue(self))
    }
}
impl IntoValue for &str {
    fn into_value(self) -> Value {
        value(Kind::StringValue(self.to_owned()))
    }
}
impl IntoValue for String {
    fn into_value(self) -> Value {
        value(Kind::StringValue(self))
    }
}
impl IntoValue for Vec<u8> {
    fn into_value(self) -> Value {
        value(Kind::BytesValue(self))
    }
}
impl IntoValue for SystemTime {
    fn into_value(self) -> Value {
        let since = self
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        value(Kind::TimestampValue(prost_types::Timestamp {
            seconds: since.as_secs() as i64,
            nanos: since.subsec_nanos() as i32,
        }))
    }
}
impl<T: IntoValue> IntoValue for Option<T> {
    fn into_value(self) -> Value {
        match self {
            Some(v) => v.into_value(),
            None => value(Kind::NullValue(0)),
        }
    }
}
impl<T: IntoValue> IntoValue for Vec<T>
where
    T: NotBytes,
{
    fn into_value(self) -> Value {
        value(Kind::ArrayValue(poolplane_proto::v1::ValueList {
            values: self.into_iter().map(IntoValue::into_value).collect(),
        }))
    }
}

/// Element types of arrays (`Vec<u8>` is bytea, not an array).
pub trait NotBytes {}
impl NotBytes for bool {}
impl NotBytes for i64 {}
impl NotBytes for i32 {}
impl NotBytes for f64 {}
impl NotBytes for String {}
impl NotBytes for &str {}
impl<T> NotBytes for Option<T> {}

/// A Rust type a cell decodes into.
pub trait FromValue: Sized {
    /// The Rust value, or why the cell does not fit.
    fn from_value(value: &Value) -> Result<Self, String>;
}

fn kind_name(value: &Value) -> &'static str {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => "NULL",
        Some(Kind::BoolValue(_)) => "bool",
        Some(Kind::IntValue(_)) => "integer",
        Some(Kind::DoubleValue(_)) => "double",
        Some(Kind::StringValue(_)) => "string",
        Some(Kind::BytesValue(_)) => "bytes",
        Some(Kind::TimestampValue(_)) => "timestamp",
        Some(Kind::NumericValue(_)) => "numeric",
        Some(Kind::JsonValue(_)) => "json",
        Some(Kind::UuidValue(_)) => "uuid",
        Some(Kind::DateValue(_)) => "date",
        Some(Kind::TimeValue(_)) => "time",
        Some(Kind::IntervalValue(_)) => "interval",
        Some(Kind::ArrayValue(_)) => "array",
    }
}

macro_rules! from_value {
    ($t:ty, $want:literal, $($pat:pat => $out:expr),+) => {
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self, String> {
                match &value.kind {
                    $($pat => $out,)+
                    _ => Err(format!("a {} cell is not {}", kind_name(value), $want)),
                }
            }
        }
    };
}

from_value!(bool, "a bool", Some(Kind::BoolValue(b)) => Ok(*b));
from_value!(i64, "an integer", Some(Kind::IntValue(i)) => Ok(*i));
from_value!(i32, "an i32", Some(Kind::IntValue(i)) => i32::try_from(*i).map_err(|e| e.to_string()));
from_value!(f64, "a double",
    Some(Kind::DoubleValue(f)) => Ok(*f),
    Some(Kind::IntValue(i)) => Ok(*i as f64),
    Some(Kind::NumericValue(s)) => s.parse().map_err(|_| format!("numeric {s} is not a double")));
from_value!(String, "text",
    Some(Kind::StringValue(s) | Kind::NumericValue(s) | Kind::JsonValue(s) | Kind::UuidValue(s)
        | Kind::DateValue(s) | Kind::TimeValue(s) | Kind::IntervalValue(s)) => Ok(s.clone()));
from_value!(Vec<u8>, "bytes", Some(Kind::BytesValue(b)) => Ok(b.clone()));
from_value!(SystemTime, "a timestamp", Some(Kind::TimestampValue(t)) => {
    let base = SystemTime::UNIX_EPOCH;
    let nanos = Duration::from_nanos(u64::try_from(t.nanos).unwrap_or(0));
    Ok(if t.seconds >= 0 {
        base + Duration::from_secs(t.seconds as u64) + nanos
    } else {
        base - Duration::from_secs(t.seconds.unsigned_abs()) + nanos
    })
});

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match &value.kind {
            None | Some(Kind::NullValue(_)) => Ok(None),
            _ => T::from_value(value).map(Some),
        }
    }
}

impl<T: FromValue + NotBytes> FromValue for Vec<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match &value.kind {
            Some(Kind::ArrayValue(list)) => list.values.iter().map(T::from_value).collect(),
            _ => Err(format!("a {} cell is not an array", kind_name(value))),
        }
    }
}

/// One row of a result.
#[derive(Debug, Clone)]
pub struct Row {
    columns: Arc<Vec<poolplane_proto::v1::Column>>,
    values: Vec<Value>,
}

impl Row {
    /// The cell of `column` as `T` (`Option<T>` for a nullable one).
    pub fn get<T: FromValue>(&self, column: &str) -> Result<T, Error> {
        let i = self
            .columns
            .iter()
            .position(|c| c.name == column)
            .ok_or_else(|| Error::Decode(format!("no column `{column}`")))?;
        self.get_at(i)
            .map_err(|e| Error::Decode(format!("column `{column}`: {e}")))
    }

    fn get_at<T: FromValue>(&self, i: usize) -> Result<T, String> {
        let value = self.values.get(i).ok_or("no such column")?;
        T::from_value(value)
    }

    /// The raw cells.
    pub fn values(&self) -> &[Value] {
        &self.values
    }
}

/// A query's result.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// The columns.
    pub columns: Arc<Vec<poolplane_proto::v1::Column>>,
    /// The rows.
    pub rows: Vec<Row>,
    /// Whether rows beyond max_rows were left out.
    pub truncated: bool,
}

fn result(
    columns: Vec<poolplane_proto::v1::Column>,
    rows: Vec<poolplane_proto::v1::Row>,
    truncated: bool,
) -> QueryResult {
    let columns = Arc::new(columns);
    QueryResult {
        rows: rows
            .into_iter()
            .map(|r| Row {
                columns: Arc::clone(&columns),
                values: r.values,
            })
            .collect(),
        columns,
        truncated,
    }
}

/// Builds a parameter list: `params![42, "x", None::<i64>]`.
#[macro_export]
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        vec![$($crate::IntoValue::into_value($p)),*]
    };
}

impl PoolplaneClient {
    /// The raw generated QueryService client.
    pub fn query_service(&self) -> QueryServiceClient<tonic::transport::Channel> {
        QueryServiceClient::new(self.channel.clone())
    }

    /// Runs `sql` through pool `pool` and returns its rows (an operator's query
    /// runs read-only).
    pub async fn query(
        &self,
        pool: &str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let response = self
            .query_service()
            .query(self.request(QueryRequest {
                pool_name: pool.to_owned(),
                sql: sql.to_owned(),
                params,
                max_rows: 0,
                timeout_ms: 0,
            }))
            .await?
            .into_inner();
        Ok(result(response.columns, response.rows, response.truncated))
    }

    /// Runs `sql` and returns the rows it affected (admin).
    pub async fn execute(&self, pool: &str, sql: &str, params: Vec<Value>) -> Result<u64, Error> {
        let response = self
            .query_service()
            .execute(self.request(ExecuteRequest {
                pool_name: pool.to_owned(),
                sql: sql.to_owned(),
                params,
                timeout_ms: 0,
            }))
            .await?
            .into_inner();
        Ok(response.rows_affected)
    }

    /// Runs `statements` (SQL and parameters) in one transaction, all or
    /// nothing; a result per statement.
    pub async fn transaction(
        &self,
        pool: &str,
        statements: Vec<(String, Vec<Value>)>,
        read_only: bool,
    ) -> Result<Vec<QueryResult>, Error> {
        let response = self
            .query_service()
            .transaction(
                self.request(TransactionRequest {
                    pool_name: pool.to_owned(),
                    statements: statements
                        .into_iter()
                        .map(|(sql, params)| Statement { sql, params })
                        .collect(),
                    isolation_level: 0,
                    read_only,
                    timeout_ms: 0,
                    max_rows: 0,
                }),
            )
            .await?
            .into_inner();
        Ok(response
            .results
            .into_iter()
            .map(|r| result(r.columns, r.rows, r.truncated))
            .collect())
    }

    /// Streams the rows of `sql` in batches of `batch_rows`.
    pub async fn query_stream(
        &self,
        pool: &str,
        sql: &str,
        params: Vec<Value>,
        batch_rows: u32,
    ) -> Result<tonic::Streaming<poolplane_proto::v1::QueryStreamResponse>, Error> {
        Ok(self
            .query_service()
            .query_stream(self.request(QueryStreamRequest {
                pool_name: pool.to_owned(),
                sql: sql.to_owned(),
                params,
                batch_rows,
                timeout_ms: 0,
            }))
            .await?
            .into_inner())
    }
}
