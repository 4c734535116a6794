//! `AdvancedPoolConfig`: every knob of a pool, its defaults and presets, and
//! `validate()`, which names every field at fault.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The configuration of one [`crate::AdvancedConnectionPool`]. Durations are whole
/// `*_secs` (and `*_ms`), as the public API and the stored definitions name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvancedPoolConfig {
    // Pool sizing
    /// Hard ceiling of open connections (the pool never opens more). >= 1.
    pub max_connections: u32,
    /// Connections kept open even when idle; the floor of dynamic sizing.
    pub min_connections: u32,
    /// How long `get()` waits for a connection before failing with a timeout.
    pub acquire_timeout_secs: u64,
    /// An idle connection above `min_connections` is closed after this long unused.
    pub idle_timeout_secs: u64,
    /// A connection is closed (when idle or returned) once this old.
    pub max_lifetime_secs: u64,

    // Statement caching
    /// Prepared statements cached per connection (LRU).
    pub statement_cache_capacity: u32,
    /// Cache prepared statements; `false` prepares every statement on every call.
    pub enable_prepared_statements: bool,

    // Health monitoring
    /// How often the health monitor checks the database.
    pub health_check_interval_secs: u64,
    /// How long one health check (connect + validation query) may take.
    pub health_check_timeout_secs: u64,
    /// Consecutive failed checks after which the pool is unhealthy.
    pub max_failed_health_checks: u32,

    // Dynamic scaling
    /// Move the pool's size between min and max with its load; off: size = max.
    pub enable_dynamic_sizing: bool,
    /// Scale up when utilization over the last interval is at least this (0..=1;
    /// requests waiting for a connection count as utilization above 1).
    pub load_threshold_high: f64,
    /// Scale down when utilization over the last interval is at most this.
    pub load_threshold_low: f64,
    /// Growth factor of one scale-up step (> 1; at least one connection a step).
    pub scale_up_factor: f64,
    /// Shrink factor of one scale-down step (0..1; at least one connection a step).
    pub scale_down_factor: f64,
    /// Minimum time between two scaling steps; also the utilization window.
    pub min_scale_interval_secs: u64,

    // Connection lifecycle
    /// Run `validation_query` on a checked-out connection that was idle longer than
    /// `validation_idle_threshold_ms`.
    pub enable_connection_validation: bool,
    /// The query that proves a connection (and, for the health monitor, the
    /// database) works.
    pub validation_query: String,
    /// Statements run once on every new connection (e.g. `SET application_name`).
    /// Without one, connections carry `application_name = poolplane:<pool name>`
    /// unless the database URL sets its own.
    pub connection_warmup_queries: Vec<String>,
    /// Close a connection after `recycle_threshold_queries` queries.
    pub enable_connection_recycling: bool,
    /// Queries after which a connection is recycled.
    pub recycle_threshold_queries: u64,

    // Beyond the core settings
    /// A checkout skips validation when the connection was used less than this
    /// long ago (as HikariCP's 500 ms bypass window), so a busy pool does not pay a
    /// round trip per checkout. 0 validates every checkout.
    pub validation_idle_threshold_ms: u64,

    // The wire front door
    /// How long a wire client holds a backend: each transaction (`transaction`,
    /// the default) or its whole session (`session`).
    pub pool_mode: PoolMode,
    /// Front-door clients of this pool connected at once (0: only the server's
    /// `--pg-max-clients`).
    pub max_client_connections: u32,
    /// A front-door client that holds no backend and sends nothing for this
    /// long is ended (0: never).
    pub client_idle_timeout_secs: u64,
    /// A front-door client idle inside a transaction (holding a backend) this
    /// long is ended and its transaction rolled back (0: never).
    pub idle_in_transaction_timeout_secs: u64,
    /// A front-door statement running this long is cancelled (0: never).
    pub query_timeout_secs: u64,
    /// In transaction mode, what a client's session state that outlives a
    /// transaction (LISTEN, session advisory locks, temporary tables, WITH
    /// HOLD cursors, SET ROLE) does: pin the backend to the client until the
    /// state is gone (`pin`, the default), or get an error (`refuse`).
    pub session_state: SessionState,
}

/// What session state that outlives a transaction does in transaction mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// The client keeps its backend until the state is gone.
    #[default]
    Pin,
    /// The statement is refused with an error naming it.
    Refuse,
}

impl SessionState {
    /// The name, as the API and the stored definitions spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pin => "pin",
            SessionState::Refuse => "refuse",
        }
    }

    /// Parses `pin` or `refuse`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pin" => Some(SessionState::Pin),
            "refuse" => Some(SessionState::Refuse),
            _ => None,
        }
    }
}

/// How long a wire client holds a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// From the first message of a transaction to the ReadyForQuery that ends it.
    #[default]
    Transaction,
    /// For the client's whole session.
    Session,
}

impl PoolMode {
    /// The mode's name, as the API and the stored definitions spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }

    /// Parses `transaction` or `session`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "transaction" => Some(PoolMode::Transaction),
            "session" => Some(PoolMode::Session),
            _ => None,
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for AdvancedPoolConfig {
    /// The default configuration.
    fn default() -> Self {
        Self {
            max_connections: 100,
            min_connections: 20,
            acquire_timeout_secs: 30,
            idle_timeout_secs: 600,
            max_lifetime_secs: 3600,
            statement_cache_capacity: 2000,
            enable_prepared_statements: true,
            health_check_interval_secs: 30,
            health_check_timeout_secs: 5,
            max_failed_health_checks: 3,
            enable_dynamic_sizing: true,
            load_threshold_high: 0.8,
            load_threshold_low: 0.3,
            scale_up_factor: 1.2,
            scale_down_factor: 0.9,
            min_scale_interval_secs: 60,
            enable_connection_validation: true,
            validation_query: "SELECT 1".into(),
            connection_warmup_queries: Vec::new(),
            enable_connection_recycling: true,
            recycle_threshold_queries: 10_000,
            validation_idle_threshold_ms: 500,
            pool_mode: PoolMode::Transaction,
            max_client_connections: 0,
            client_idle_timeout_secs: 0,
            idle_in_transaction_timeout_secs: 0,
            query_timeout_secs: 0,
            session_state: SessionState::Pin,
        }
    }
}

/// One invalid field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name, as in `AdvancedPoolConfig`.
    pub field: &'static str,
    /// What is wrong with it.
    pub description: String,
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Every violation `validate()` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<FieldViolation>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid pool config: {}", all.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

impl AdvancedPoolConfig {
    /// The production preset.
    pub fn production() -> Self {
        Self {
            max_connections: 200,
            min_connections: 50,
            acquire_timeout_secs: 10,
            idle_timeout_secs: 300,
            max_lifetime_secs: 1800,
            statement_cache_capacity: 5000,
            enable_dynamic_sizing: true,
            load_threshold_high: 0.85,
            load_threshold_low: 0.25,
            health_check_interval_secs: 15,
            ..Self::default()
        }
    }

    /// The development preset.
    pub fn development() -> Self {
        Self {
            max_connections: 20,
            min_connections: 5,
            acquire_timeout_secs: 60,
            idle_timeout_secs: 1200,
            statement_cache_capacity: 500,
            enable_dynamic_sizing: false,
            health_check_interval_secs: 60,
            ..Self::default()
        }
    }

    /// A preset by name: `default`, `production` or `development`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::default()),
            "production" => Some(Self::production()),
            "development" => Some(Self::development()),
            _ => None,
        }
    }

    /// Checks every rule and returns every violation, each naming its field.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut fail = |field: &'static str, description: String| {
            errors.push(FieldViolation { field, description });
        };
        self.check_sizes(&mut fail);
        self.check_durations(&mut fail);
        self.check_health_checks(&mut fail);
        self.check_scaling(&mut fail);
        self.check_sql(&mut fail);
        self.check_lifecycle(&mut fail);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// max_connections and min_connections.
    fn check_sizes(&self, fail: &mut impl FnMut(&'static str, String)) {
        if self.max_connections < 1 {
            fail("max_connections", "must be at least 1".into());
        } else if self.max_connections > MAX_CONNECTIONS {
            fail(
                "max_connections",
                format!("must be at most {MAX_CONNECTIONS}"),
            );
        }
        if self.min_connections > self.max_connections {
            fail(
                "min_connections",
                format!(
                    "must not exceed max_connections ({} > {})",
                    self.min_connections, self.max_connections
                ),
            );
        }
    }

    /// Every duration in seconds: above 0, at most 100 years; a health check times out before the next one.
    fn check_durations(&self, fail: &mut impl FnMut(&'static str, String)) {
        for (field, value) in [
            ("acquire_timeout_secs", self.acquire_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_lifetime_secs", self.max_lifetime_secs),
            (
                "health_check_interval_secs",
                self.health_check_interval_secs,
            ),
            ("health_check_timeout_secs", self.health_check_timeout_secs),
            ("min_scale_interval_secs", self.min_scale_interval_secs),
        ] {
            if value == 0 {
                fail(field, "must be greater than 0".into());
            } else if value > MAX_SECS {
                fail(field, format!("must be at most {MAX_SECS} (100 years)"));
            }
        }
        if self.health_check_timeout_secs >= self.health_check_interval_secs
            && self.health_check_timeout_secs > 0
        {
            fail(
                "health_check_timeout_secs",
                format!(
                    "must be less than health_check_interval_secs ({} >= {})",
                    self.health_check_timeout_secs, self.health_check_interval_secs
                ),
            );
        }
    }

    /// max_failed_health_checks between 1 and its ceiling.
    fn check_health_checks(&self, fail: &mut impl FnMut(&'static str, String)) {
        if self.max_failed_health_checks < 1 {
            fail("max_failed_health_checks", "must be at least 1".into());
        }
        if self.max_failed_health_checks > MAX_FAILED_HEALTH_CHECKS {
            fail(
                "max_failed_health_checks",
                format!("must be at most {MAX_FAILED_HEALTH_CHECKS}"),
            );
        }
    }

    /// The load thresholds and the scaling factors.
    fn check_scaling(&self, fail: &mut impl FnMut(&'static str, String)) {
        let low_ok = self.load_threshold_low > 0.0 && self.load_threshold_low < 1.0;
        if !low_ok {
            fail(
                "load_threshold_low",
                format!("must be in (0, 1), got {}", self.load_threshold_low),
            );
        }
        if !(self.load_threshold_high > 0.0 && self.load_threshold_high <= 1.0) {
            fail(
                "load_threshold_high",
                format!("must be in (0, 1], got {}", self.load_threshold_high),
            );
        } else if low_ok && self.load_threshold_high <= self.load_threshold_low {
            fail(
                "load_threshold_high",
                format!(
                    "must be greater than load_threshold_low ({} <= {})",
                    self.load_threshold_high, self.load_threshold_low
                ),
            );
        }
        if !(self.scale_up_factor > 1.0 && self.scale_up_factor <= MAX_SCALE_UP_FACTOR) {
            fail(
                "scale_up_factor",
                format!(
                    "must be greater than 1 and at most {MAX_SCALE_UP_FACTOR}, got {}",
                    self.scale_up_factor
                ),
            );
        }
        if !(self.scale_down_factor > 0.0 && self.scale_down_factor < 1.0) {
            fail(
                "scale_down_factor",
                format!("must be in (0, 1), got {}", self.scale_down_factor),
            );
        }
    }

    /// The validation query and the warmup queries.
    fn check_sql(&self, fail: &mut impl FnMut(&'static str, String)) {
        if self.validation_query.trim().is_empty() {
            fail("validation_query", "must not be empty".into());
        } else if self.validation_query.len() > MAX_SQL_LEN {
            fail(
                "validation_query",
                format!("must be at most {MAX_SQL_LEN} bytes"),
            );
        }
        if self.connection_warmup_queries.len() > MAX_WARMUP_QUERIES {
            fail(
                "connection_warmup_queries",
                format!("must hold at most {MAX_WARMUP_QUERIES} queries"),
            );
        }
        if let Some(i) = self
            .connection_warmup_queries
            .iter()
            .position(|q| q.trim().is_empty())
        {
            fail("connection_warmup_queries", format!("entry {i} is empty"));
        }
        if let Some(i) = self
            .connection_warmup_queries
            .iter()
            .position(|q| q.len() > MAX_SQL_LEN)
        {
            fail(
                "connection_warmup_queries",
                format!("entry {i} is longer than {MAX_SQL_LEN} bytes"),
            );
        }
    }

    /// Recycling, the statement cache and the validation threshold.
    fn check_lifecycle(&self, fail: &mut impl FnMut(&'static str, String)) {
        if self.enable_connection_recycling && self.recycle_threshold_queries < 1 {
            fail(
                "recycle_threshold_queries",
                "must be at least 1 when enable_connection_recycling is on".into(),
            );
        }
        if self.enable_prepared_statements && self.statement_cache_capacity < 1 {
            fail(
                "statement_cache_capacity",
                "must be at least 1 when enable_prepared_statements is on".into(),
            );
        } else if self.statement_cache_capacity > MAX_STATEMENT_CACHE_CAPACITY {
            fail(
                "statement_cache_capacity",
                format!("must be at most {MAX_STATEMENT_CACHE_CAPACITY}"),
            );
        }
        if self.validation_idle_threshold_ms > MAX_SECS * 1000 {
            fail(
                "validation_idle_threshold_ms",
                format!("must be at most {}", MAX_SECS * 1000),
            );
        }
        for (field, secs) in [
            ("client_idle_timeout_secs", self.client_idle_timeout_secs),
            (
                "idle_in_transaction_timeout_secs",
                self.idle_in_transaction_timeout_secs,
            ),
            ("query_timeout_secs", self.query_timeout_secs),
        ] {
            if secs > MAX_SECS {
                fail(field, format!("must be at most {MAX_SECS}"));
            }
        }
        if self.max_client_connections > 1_000_000 {
            fail("max_client_connections", "must be at most 1000000".into());
        }
    }

    /// `acquire_timeout_secs` as a duration.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.acquire_timeout_secs)
    }

    /// `idle_timeout_secs` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// `max_lifetime_secs` as a duration.
    pub fn max_lifetime(&self) -> Duration {
        Duration::from_secs(self.max_lifetime_secs)
    }

    /// `health_check_interval_secs` as a duration.
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_secs(self.health_check_interval_secs)
    }

    /// `health_check_timeout_secs` as a duration.
    pub fn health_check_timeout(&self) -> Duration {
        Duration::from_secs(self.health_check_timeout_secs)
    }

    /// `min_scale_interval_secs` as a duration.
    pub fn min_scale_interval(&self) -> Duration {
        Duration::from_secs(self.min_scale_interval_secs)
    }

    /// The size a pool starts at: min (at least 1) with dynamic sizing, else max.
    pub fn initial_size(&self) -> u32 {
        if self.enable_dynamic_sizing {
            self.min_connections.max(1)
        } else {
            self.max_connections
        }
    }
}

impl AdvancedPoolConfig {
    /// Values that are valid but outside the recommended ranges: health checks every
    /// 15–60 s, 3–5 failures before unhealthy, and load thresholds with room
    /// between them (at least 0.2, or sizing flaps). Answered with CreatePool and
    /// UpdatePoolConfig; nothing is refused for them.
    pub fn warnings(&self) -> Vec<FieldViolation> {
        let mut out = Vec::new();
        if !(15..=60).contains(&self.health_check_interval_secs) {
            out.push(FieldViolation {
                field: "health_check_interval_secs",
                description: format!(
                    "{} s is outside the 15-60 s the guidance suggests: shorter loads the \
                     database with checks, longer notices an outage late",
                    self.health_check_interval_secs
                ),
            });
        }
        if !(3..=5).contains(&self.max_failed_health_checks) {
            out.push(FieldViolation {
                field: "max_failed_health_checks",
                description: format!(
                    "{} is outside the 3-5 the guidance suggests: fewer flips on one slow \
                     check, more keeps a dead database marked healthy for long",
                    self.max_failed_health_checks
                ),
            });
        }
        if self.enable_dynamic_sizing && self.load_threshold_high - self.load_threshold_low < 0.2 {
            out.push(FieldViolation {
                field: "load_threshold_low",
                description: format!(
                    "load_threshold_low {} and load_threshold_high {} leave less than 0.2 \
                     between them: the pool would grow and shrink back and forth",
                    self.load_threshold_low, self.load_threshold_high
                ),
            });
        }
        out
    }
}

/// One field a configuration change touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// The field, as in `AdvancedPoolConfig`.
    pub field: String,
    /// Its value before (JSON text; strings unquoted).
    pub old_value: String,
    /// Its value after.
    pub new_value: String,
}

/// The fields that differ between `old` and `new`, by field name.
pub fn diff(old: &AdvancedPoolConfig, new: &AdvancedPoolConfig) -> Vec<FieldChange> {
    let as_map = |c: &AdvancedPoolConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (old, new) = (as_map(old), as_map(new));
    new.iter()
        .filter(|(field, value)| old.get(*field) != Some(*value))
        .map(|(field, value)| FieldChange {
            field: field.clone(),
            old_value: old.get(field).map(text).unwrap_or_default(),
            new_value: text(value),
        })
        .collect()
}

/// Upper bound of every `*_secs` field (100 years), so that no duration overflows.
const MAX_SECS: u64 = 100 * 365 * 86_400;

/// The largest `max_connections` (PostgreSQL servers rarely allow more).
pub const MAX_CONNECTIONS: u32 = 10_000;
/// The largest `statement_cache_capacity` (statements per connection).
pub const MAX_STATEMENT_CACHE_CAPACITY: u32 = 10_000;
/// The longest SQL text the server keeps to run later, in bytes.
pub const MAX_SQL_LEN: usize = 64 * 1024;
/// The most `connection_warmup_queries`.
pub const MAX_WARMUP_QUERIES: usize = 32;
/// The largest `max_failed_health_checks`.
pub const MAX_FAILED_HEALTH_CHECKS: u32 = 1_000;
/// The largest `scale_up_factor`.
pub const MAX_SCALE_UP_FACTOR: f64 = 100.0;

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(config: &AdvancedPoolConfig) -> Vec<&'static str> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(ConfigErrors(v)) => v.into_iter().map(|v| v.field).collect(),
        }
    }

    #[test]
    fn presets_are_valid_and_carry_their_documented_values() {
        for config in [
            AdvancedPoolConfig::default(),
            AdvancedPoolConfig::production(),
            AdvancedPoolConfig::development(),
        ] {
            assert_eq!(config.validate(), Ok(()));
        }
        let p = AdvancedPoolConfig::production();
        assert_eq!((p.max_connections, p.min_connections), (200, 50));
        assert_eq!((p.load_threshold_high, p.load_threshold_low), (0.85, 0.25));
        let d = AdvancedPoolConfig::development();
        assert_eq!((d.max_connections, d.min_connections), (20, 5));
        assert!(!d.enable_dynamic_sizing);
        assert_eq!(d.initial_size(), 20);
        assert_eq!(AdvancedPoolConfig::preset("production"), Some(p));
        assert_eq!(AdvancedPoolConfig::preset("nope"), None);
    }

    #[test]
    fn sizes_at_their_boundaries() {
        let base = AdvancedPoolConfig::default();
        let c = AdvancedPoolConfig {
            max_connections: 0,
            min_connections: 0,
            ..base.clone()
        };
        assert_eq!(fields(&c), ["max_connections"]);
        let c = AdvancedPoolConfig {
            max_connections: 1,
            min_connections: 1,
            ..base.clone()
        };
        assert!(fields(&c).is_empty());
        let c = AdvancedPoolConfig {
            max_connections: 5,
            min_connections: 6,
            ..base.clone()
        };
        assert_eq!(fields(&c), ["min_connections"]);
        let c = AdvancedPoolConfig {
            max_connections: 5,
            min_connections: 5,
            ..base
        };
        assert!(fields(&c).is_empty());
    }

    #[test]
    fn thresholds_and_factors_at_their_boundaries() {
        let base = AdvancedPoolConfig::default();
        let with = |low: f64, high: f64| AdvancedPoolConfig {
            load_threshold_low: low,
            load_threshold_high: high,
            ..base.clone()
        };
        assert!(fields(&with(0.3, 1.0)).is_empty());
        assert_eq!(fields(&with(0.0, 0.8)), ["load_threshold_low"]);
        assert_eq!(fields(&with(0.3, 1.01)), ["load_threshold_high"]);
        assert_eq!(fields(&with(0.5, 0.5)), ["load_threshold_high"]);
        assert_eq!(fields(&with(f64::NAN, 0.8)), ["load_threshold_low"]);
        let up = |f: f64| AdvancedPoolConfig {
            scale_up_factor: f,
            ..base.clone()
        };
        assert_eq!(fields(&up(1.0)), ["scale_up_factor"]);
        assert!(fields(&up(1.0001)).is_empty());
        assert_eq!(fields(&up(f64::INFINITY)), ["scale_up_factor"]);
        let down = |f: f64| AdvancedPoolConfig {
            scale_down_factor: f,
            ..base.clone()
        };
        assert_eq!(fields(&down(1.0)), ["scale_down_factor"]);
        assert_eq!(fields(&down(0.0)), ["scale_down_factor"]);
        assert!(fields(&down(0.5)).is_empty());
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let config = AdvancedPoolConfig {
            max_connections: 0,
            min_connections: 3,
            acquire_timeout_secs: 0,
            max_lifetime_secs: 0,
            health_check_interval_secs: 5,
            health_check_timeout_secs: 5,
            max_failed_health_checks: 0,
            validation_query: "  ".into(),
            recycle_threshold_queries: 0,
            statement_cache_capacity: 0,
            ..AdvancedPoolConfig::default()
        };
        assert_eq!(
            fields(&config),
            [
                "max_connections",
                "min_connections",
                "acquire_timeout_secs",
                "max_lifetime_secs",
                "health_check_timeout_secs",
                "max_failed_health_checks",
                "validation_query",
                "recycle_threshold_queries",
                "statement_cache_capacity",
            ]
        );
    }

    #[test]
    fn switched_off_features_relax_their_rules() {
        let config = AdvancedPoolConfig {
            enable_connection_recycling: false,
            recycle_threshold_queries: 0,
            enable_prepared_statements: false,
            statement_cache_capacity: 0,
            ..AdvancedPoolConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn health_timeout_must_be_below_the_interval() {
        let ok = AdvancedPoolConfig {
            health_check_interval_secs: 2,
            health_check_timeout_secs: 1,
            ..AdvancedPoolConfig::default()
        };
        assert!(fields(&ok).is_empty());
        let bad = AdvancedPoolConfig {
            health_check_timeout_secs: 2,
            ..ok
        };
        assert_eq!(fields(&bad), ["health_check_timeout_secs"]);
    }

    #[test]
    fn unknown_fields_are_rejected_and_missing_ones_default() {
        let config: AdvancedPoolConfig =
            serde_json::from_str(r#"{"max_connections": 7, "min_connections": 2}"#).unwrap();
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.statement_cache_capacity, 2000);
        assert!(serde_json::from_str::<AdvancedPoolConfig>(r#"{"max_conections": 7}"#).is_err());
    }
}
