//! poolplane's engine: advanced PostgreSQL connection pools, their registry and the
//! control database, embeddable in-process.

pub mod allowlist;
pub mod config;
pub mod conninfo;
pub mod embedded_pg;
mod error;
pub mod events;
pub mod loadtest;
pub mod metrics;
pub mod optimizer;
pub mod pool;
pub mod query;
pub mod registry;
pub mod store;
pub mod tls;

pub use allowlist::TargetAllowlist;
pub use config::{AdvancedPoolConfig, ConfigErrors, FieldChange, FieldViolation};
pub use conninfo::{ConnInfo, Secret};
pub use embedded_pg::{EmbeddedPg, EmbeddedPgError, EmbeddedPgOptions, EmbeddedTls};
pub use error::{Error, ErrorKind, describe_pg_error};
pub use events::{PoolEvent, PoolEventKind};
pub use loadtest::{Grade, LoadTestOptions, LoadTestProgress, LoadTestResults, PoolLoadTester};
pub use optimizer::{OptimizationReport, PoolOptimization, Recommendation, Severity};
pub use pool::{
    AdvancedConnectionPool, HealthStatus, PoolStats, PooledConnection, StatementCacheStats,
    Transaction,
};
pub use registry::{ConnectionPoolService, PerformanceSummary, PoolInfo};
pub use store::config_changes::{ChangeOrigin, ConfigChangeRecord};
pub use store::history::{HourSummary, MetricsPoint, ScalingRecord};
pub use store::recorder::{MetricsRecorder, RecorderOptions, RecorderStatus};
pub use store::secrets::{SecretsError, SecretsKey};
pub use store::{
    ControlStore, PoolDefinition, default_data_dir, default_secrets_key_file, establish_connection,
};
