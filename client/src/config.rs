//! `PoolConfigBuilder`: a pool's configuration in Rust terms, mirroring the
//! engine's AdvancedPoolConfig (without depending on it): unset fields take the
//! server's defaults, or the preset's.

use poolplane_proto::v1::{PoolConfig, WarmupQueries};

/// Builds a [`PoolConfig`] field by field.
///
/// ```
/// use poolplane_client::PoolConfigBuilder;
/// let config = PoolConfigBuilder::production().max_connections(40).min_connections(4).build();
/// assert_eq!(config.preset.as_deref(), Some("production"));
/// assert_eq!(config.max_connections, Some(40));
/// ```
#[derive(Debug, Clone, Default)]
pub struct PoolConfigBuilder {
    config: PoolConfig,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, value: $ty) -> Self {
                self.config.$field = Some(value.into());
                self
            }
        )*
    };
}

impl PoolConfigBuilder {
    /// Server defaults for every field not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The production preset (200 max, 50 min, 10 s acquire timeout, …).
    pub fn production() -> Self {
        Self::new().preset("production")
    }

    /// The development preset (20 max, 5 min, fixed size, …).
    pub fn development() -> Self {
        Self::new().preset("development")
    }

    setters! {
        /// Start from a named preset: default, production or development.
        preset: &str,
        /// Hard ceiling of open connections.
        max_connections: u32,
        /// Connections kept open; the floor of dynamic sizing.
        min_connections: u32,
        /// How long a checkout waits, in seconds.
        acquire_timeout_secs: u64,
        /// Idle connections close after this many seconds.
        idle_timeout_secs: u64,
        /// Connections close once this many seconds old.
        max_lifetime_secs: u64,
        /// Prepared statements cached per connection.
        statement_cache_capacity: u32,
        /// Cache prepared statements.
        enable_prepared_statements: bool,
        /// Seconds between health checks.
        health_check_interval_secs: u64,
        /// Seconds one health check may take.
        health_check_timeout_secs: u64,
        /// Failed checks in a row that make the pool unhealthy.
        max_failed_health_checks: u32,
        /// Move the size between min and max with the load.
        enable_dynamic_sizing: bool,
        /// Scale up at this utilization.
        load_threshold_high: f64,
        /// Scale down at this utilization.
        load_threshold_low: f64,
        /// Growth factor of a step.
        scale_up_factor: f64,
        /// Shrink factor of a step.
        scale_down_factor: f64,
        /// Minimum seconds between steps.
        min_scale_interval_secs: u64,
        /// Validate connections idle past the threshold on checkout.
        enable_connection_validation: bool,
        /// The validation and health-check query.
        validation_query: &str,
        /// Recycle connections after recycle_threshold_queries queries.
        enable_connection_recycling: bool,
        /// Queries after which a connection is recycled.
        recycle_threshold_queries: u64,
        /// Checkouts validate only connections idle at least this many ms.
        validation_idle_threshold_ms: u64,
        /// How long a front-door client holds a backend: transaction or session.
        pool_mode: &str,
        /// Front-door clients of this pool at once (0: the server's limit only).
        max_client_connections: u32,
        /// Seconds a front-door client may stay silent without a backend (0: off).
        client_idle_timeout_secs: u64,
        /// Seconds a front-door client may idle inside a transaction (0: off).
        idle_in_transaction_timeout_secs: u64,
        /// Seconds a front-door statement may run (0: off).
        query_timeout_secs: u64,
        /// Session state outliving a transaction (LISTEN, temp tables…): pin or refuse.
        session_state: &str,
    }

    /// Statements run on every new connection (replaces the list).
    pub fn connection_warmup_queries<I, S>(mut self, queries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.connection_warmup_queries = Some(WarmupQueries {
            queries: queries.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// The message to send.
    pub fn build(self) -> PoolConfig {
        self.config
    }
}

impl From<PoolConfigBuilder> for PoolConfig {
    fn from(builder: PoolConfigBuilder) -> Self {
        builder.build()
    }
}
