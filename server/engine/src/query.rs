//! Values for running SQL through a pool on behalf of a remote caller
//! (QueryService): parameters go to PostgreSQL in its text form, so that the
//! server parses them for the parameter's own type; cells come back decoded from
//! the binary form into a small set of typed values.
//!
//! Mapped types: bool, int2, int4, int8, oid, float4, float8, numeric, text,
//! varchar, bpchar, name, bytea, timestamp, timestamptz, date, time, interval,
//! uuid, json, jsonb (and void, as NULL), and one-dimensional arrays of them. Anything else is an
//! error naming the column and its type (cast it, e.g. `::text`).

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type};

/// One parameter or cell.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// bool.
    Bool(bool),
    /// int2, int4, int8, oid.
    Int(i64),
    /// float4, float8.
    Float(f64),
    /// text, varchar, bpchar, name.
    Text(String),
    /// bytea.
    Bytes(Vec<u8>),
    /// timestamp (read as UTC) and timestamptz.
    Timestamp(SystemTime),
    /// numeric, in decimal notation (`-12.340`, `NaN`).
    Numeric(String),
    /// json and jsonb, as JSON text.
    Json(String),
    /// uuid, `8-4-4-4-12` lowercase hex.
    Uuid(String),
    /// date, `YYYY-MM-DD` (`infinity`, `-infinity`).
    Date(String),
    /// time, `HH:MM:SS[.ffffff]`.
    Time(String),
    /// interval, as PostgreSQL prints it (`1 year 2 mons 3 days 04:05:06.5`).
    Interval(String),
    /// A one-dimensional array.
    Array(Vec<SqlValue>),
}

impl SqlValue {
    /// The text of the variants that travel as text (text, numeric, json, uuid,
    /// date, time, interval).
    fn text_form(&self) -> Option<&str> {
        match self {
            SqlValue::Text(s)
            | SqlValue::Numeric(s)
            | SqlValue::Json(s)
            | SqlValue::Uuid(s)
            | SqlValue::Date(s)
            | SqlValue::Time(s)
            | SqlValue::Interval(s) => Some(s),
            _ => None,
        }
    }

    /// The value in PostgreSQL's text input form (`None` for NULL).
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            SqlValue::Null => return None,
            SqlValue::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
            SqlValue::Int(i) => i.to_string(),
            SqlValue::Float(f) if f.is_nan() => "NaN".to_owned(),
            SqlValue::Float(f) if f.is_infinite() => {
                if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
            }
            SqlValue::Float(f) => format!("{f:e}"),
            SqlValue::Bytes(b) => {
                let mut out = String::with_capacity(2 + b.len() * 2);
                out.push_str("\\x");
                for byte in b {
                    out.push_str(&format!("{byte:02x}"));
                }
                out
            }
            SqlValue::Timestamp(t) => rfc3339(*t),
            SqlValue::Array(items) => {
                let inner: Vec<String> = items
                    .iter()
                    .map(|item| match item {
                        SqlValue::Null => "NULL".to_owned(),
                        SqlValue::Array(_) => item.to_text().unwrap_or_default(),
                        other => {
                            let text = other.to_text().unwrap_or_default();
                            format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
                        }
                    })
                    .collect();
                format!("{{{}}}", inner.join(","))
            }
            text => text.text_form().unwrap_or_default().to_owned(),
        })
    }

    /// Bytes the value takes, roughly (for result-size limits).
    pub fn size(&self) -> usize {
        match self {
            SqlValue::Null | SqlValue::Bool(_) => 1,
            SqlValue::Int(_) | SqlValue::Float(_) | SqlValue::Timestamp(_) => 8,
            SqlValue::Bytes(b) => b.len(),
            SqlValue::Array(items) => items.iter().map(SqlValue::size).sum::<usize>() + 2,
            other => other.text_form().map_or(0, str::len),
        }
    }
}

/// `2026-11-28T21:03:02.123456Z`.
fn rfc3339(t: SystemTime) -> String {
    let micros = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i128,
        Err(e) => -(e.duration().as_micros() as i128),
    };
    let secs = micros.div_euclid(1_000_000) as i64;
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A parameter sent in PostgreSQL's text form: the server parses it for the
/// parameter's type (so numeric, uuid, interval, arrays… need no client codec).
#[derive(Debug, Clone)]
pub struct TextParam(pub Option<String>);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> tokio_postgres::types::Format {
        tokio_postgres::types::Format::Text
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        self.to_sql(ty, out)
    }
}

/// A cell decoded from PostgreSQL's binary form.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell(pub SqlValue);

/// Whether a column of type `ty` can be decoded.
pub fn is_mapped(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Array(member) => is_scalar(member),
        _ => is_scalar(ty),
    }
}

fn is_scalar(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::BOOL
            | Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::OID
            | Type::FLOAT4
            | Type::FLOAT8
            | Type::NUMERIC
            | Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::BYTEA
            | Type::TIMESTAMP
            | Type::TIMESTAMPTZ
            | Type::DATE
            | Type::TIME
            | Type::INTERVAL
            | Type::UUID
            | Type::JSON
            | Type::JSONB
            | Type::VOID
    )
}

type DecodeError = Box<dyn StdError + Sync + Send>;

fn be<const N: usize>(raw: &[u8]) -> Result<[u8; N], DecodeError> {
    raw.get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "value too short".into())
}

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, DecodeError> {
        if let Kind::Array(_) = ty.kind() {
            let items = <Vec<Option<Cell>> as FromSql>::from_sql(ty, raw)?;
            return Ok(Cell(SqlValue::Array(
                items
                    .into_iter()
                    .map(|c| c.map_or(SqlValue::Null, |c| c.0))
                    .collect(),
            )));
        }
        Ok(Cell(match *ty {
            Type::BOOL => SqlValue::Bool(bool::from_sql(ty, raw)?),
            Type::INT2 => SqlValue::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => SqlValue::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => SqlValue::Int(i64::from_sql(ty, raw)?),
            Type::OID => SqlValue::Int(i64::from(u32::from_sql(ty, raw)?)),
            Type::FLOAT4 => SqlValue::Float(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => SqlValue::Float(f64::from_sql(ty, raw)?),
            Type::NUMERIC => SqlValue::Numeric(numeric(raw)?),
            Type::BYTEA => SqlValue::Bytes(raw.to_vec()),
            Type::VOID => SqlValue::Null,
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                SqlValue::Timestamp(SystemTime::from_sql(ty, raw)?)
            }
            Type::DATE => SqlValue::Date(date(i32::from_be_bytes(be(raw)?))),
            Type::TIME => SqlValue::Time(time_of_day(i64::from_be_bytes(be(raw)?))),
            Type::INTERVAL => SqlValue::Interval(interval(raw)?),
            Type::UUID => SqlValue::Uuid(uuid(raw)?),
            Type::JSON | Type::JSONB => {
                SqlValue::Json(serde_json::Value::from_sql(ty, raw)?.to_string())
            }
            _ => SqlValue::Text(String::from_utf8(raw.to_vec())?),
        }))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, DecodeError> {
        Ok(Cell(SqlValue::Null))
    }

    fn accepts(ty: &Type) -> bool {
        is_mapped(ty)
    }
}

/// Days since 2000-01-01.
fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".to_owned(),
        i32::MIN => "-infinity".to_owned(),
        _ => {
            let (y, m, d) = civil_from_days(i64::from(days) + 10_957);
            if y <= 0 {
                format!("{:04}-{m:02}-{d:02} BC", 1 - y)
            } else {
                format!("{y:04}-{m:02}-{d:02}")
            }
        }
    }
}

/// Microseconds since midnight.
fn time_of_day(micros: i64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let base = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    if frac == 0 {
        base
    } else {
        format!("{base}.{}", format!("{frac:06}").trim_end_matches('0'))
    }
}

/// PostgreSQL's own interval output (`postgres` IntervalStyle).
fn interval(raw: &[u8]) -> Result<String, DecodeError> {
    let micros = i64::from_be_bytes(be(raw)?);
    let days = i32::from_be_bytes(be(raw.get(8..).unwrap_or_default())?);
    let months = i32::from_be_bytes(be(raw.get(12..).unwrap_or_default())?);
    let mut parts = Vec::new();
    let plural =
        |n: i64, one: &str, many: &str| format!("{n} {}", if n.abs() == 1 { one } else { many });
    let (years, months) = (months / 12, months % 12);
    if years != 0 {
        parts.push(plural(i64::from(years), "year", "years"));
    }
    if months != 0 {
        parts.push(plural(i64::from(months), "mon", "mons"));
    }
    if days != 0 {
        parts.push(plural(i64::from(days), "day", "days"));
    }
    if micros != 0 || parts.is_empty() {
        let sign = if micros < 0 { "-" } else { "" };
        parts.push(format!("{sign}{}", time_of_day(micros.abs())));
    }
    Ok(parts.join(" "))
}

fn uuid(raw: &[u8]) -> Result<String, DecodeError> {
    let b: [u8; 16] = be(raw)?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// numeric's binary form: ndigits, weight (of the first base-10000 digit), sign,
/// display scale, then the digits.
fn numeric(raw: &[u8]) -> Result<String, DecodeError> {
    let word = |i: usize| -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(be(raw
            .get(i * 2..)
            .unwrap_or_default())?))
    };
    let ndigits = word(0)?.max(0) as usize;
    let weight = i64::from(word(1)?);
    let sign = word(2)? as u16;
    let dscale = word(3)?.max(0) as usize;
    match sign {
        0xC000 => return Ok("NaN".to_owned()),
        0xD000 => return Ok("Infinity".to_owned()),
        0xF000 => return Ok("-Infinity".to_owned()),
        _ => {}
    }
    let digits: Vec<i16> = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    let digit = |pos: i64| -> i16 {
        // pos: the base-10000 position, weight down to the last.
        usize::try_from(weight - pos)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut int_part = String::new();
    for pos in (0..=weight.max(0)).rev() {
        let d = digit(pos);
        if int_part.is_empty() {
            if d != 0 || pos == 0 {
                int_part = d.to_string();
            }
        } else {
            int_part.push_str(&format!("{d:04}"));
        }
    }
    if int_part.is_empty() {
        int_part.push('0');
    }
    let mut frac = String::new();
    let mut pos = -1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(pos)));
        pos -= 1;
    }
    frac.truncate(dscale);
    let negative = sign == 0x4000;
    Ok(format!(
        "{}{int_part}{}{frac}",
        if negative { "-" } else { "" },
        if dscale > 0 { "." } else { "" }
    ))
}

/// A column of a result: its name and PostgreSQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// The column's name.
    pub name: String,
    /// The type's name (`int4`, `_text` for text[]).
    pub type_name: String,
    /// The type's OID.
    pub type_oid: u32,
}

/// What one statement gave.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatementResult {
    /// The result's columns (none for a statement that returns no rows).
    pub columns: Vec<ColumnInfo>,
    /// The rows, at most `max_rows`.
    pub rows: Vec<Vec<SqlValue>>,
    /// Whether rows beyond `max_rows` were left out.
    pub truncated: bool,
    /// Rows the statement affected (INSERT, UPDATE, DELETE) or returned.
    pub rows_affected: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// How a statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// The server's default (read committed).
    #[default]
    Default,
    /// READ COMMITTED.
    ReadCommitted,
    /// REPEATABLE READ.
    RepeatableRead,
    /// SERIALIZABLE.
    Serializable,
}

impl Isolation {
    /// The `BEGIN` for this isolation level.
    pub fn begin(self, read_only: bool) -> String {
        let level = match self {
            Isolation::Default => "",
            Isolation::ReadCommitted => " ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => " ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => " ISOLATION LEVEL SERIALIZABLE",
        };
        format!("BEGIN{level}{}", if read_only { " READ ONLY" } else { "" })
    }
}

/// The bounds of one call.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Rows returned per statement; more set `truncated`.
    pub max_rows: usize,
    /// Bytes of cells a unary result may hold.
    pub max_result_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_postgres_parses() {
        assert_eq!(SqlValue::Bool(true).to_text().as_deref(), Some("t"));
        assert_eq!(SqlValue::Null.to_text(), None);
        assert_eq!(
            SqlValue::Bytes(vec![0, 255]).to_text().as_deref(),
            Some("\\x00ff")
        );
        assert_eq!(
            SqlValue::Array(vec![
                SqlValue::Text("a\"b".into()),
                SqlValue::Null,
                SqlValue::Int(3)
            ])
            .to_text()
            .as_deref(),
            Some(r#"{"a\"b",NULL,"3"}"#)
        );
        assert_eq!(
            SqlValue::Timestamp(SystemTime::UNIX_EPOCH + Duration::from_micros(1_500_000))
                .to_text()
                .as_deref(),
            Some("1970-01-01T00:00:01.500000Z")
        );
    }

    #[test]
    fn binary_forms_decode() {
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(time_of_day(3_723_500_000), "01:02:03.5");
        // 1 year 2 mons 3 days 04:05:06
        let mut raw = Vec::new();
        raw.extend_from_slice(&14_706_000_000i64.to_be_bytes());
        raw.extend_from_slice(&3i32.to_be_bytes());
        raw.extend_from_slice(&14i32.to_be_bytes());
        assert_eq!(interval(&raw).unwrap(), "1 year 2 mons 3 days 04:05:06");
        // -12.340: ndigits 2, weight 0, negative, dscale 3, digits 12, 3400
        let raw: Vec<u8> = [2i16, 0, 0x4000u16 as i16, 3, 12, 3400]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&raw).unwrap(), "-12.340");
        // 123456789.5: ndigits 4, weight 2, digits 1, 2345, 6789, 5000, dscale 1
        let raw: Vec<u8> = [4i16, 2, 0, 1, 1, 2345, 6789, 5000]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&raw).unwrap(), "123456789.5");
        // 0.0001: ndigits 1, weight -1, dscale 4, digit 1
        let raw: Vec<u8> = [1i16, -1, 0, 4, 1]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&raw).unwrap(), "0.0001");
    }
}
