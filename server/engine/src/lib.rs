//! poolplane's engine: advanced PostgreSQL connection pools, their registry and the
//! control database, embeddable in-process.
//!
//! # Modules, in dependency order
//!
//! Each module uses only modules listed before it (`tests/module_order.rs` reads
//! the sources and fails on a `use crate::…` that points down the list). Leaf types
//! live in the module that owns their concept; the registry sits above the pools,
//! the store and the optimizer and drives them; the recorder and the metric
//! catalogue read the registry from above.
//!
//! 1. [`config`]: `AdvancedPoolConfig`, its presets and `validate()`.
//! 2. [`query`]: values and results of SQL run for a remote caller.
//! 3. [`conninfo`]: a database target parsed once (URL or key=value), its TLS
//!    options and the key of the server it reaches.
//! 4. [`tls`]: outgoing TLS (rustls) with libpq's `sslmode` meanings.
//! 5. [`allowlist`]: the targets pools may connect to.
//! 6. [`embedded_pg`]: a private PostgreSQL cluster run from the system's binaries.
//! 7. [`secrets`]: passwords sealed at rest.
//! 8. [`budget`]: one connection budget per PostgreSQL server, split among its pools.
//! 9. `error`: the engine's [`Error`].
//! 10. [`events`]: what happened to a pool, broadcast to subscribers.
//! 11. [`leadership`]: whether this server leads its group's singleton jobs.
//! 12. [`pool`]: `AdvancedConnectionPool` — gate, statement cache, lifecycle,
//!     health, sizing, stats, SQL, and the socket lent to the wire front door.
//! 13. [`loadtest`]: `PoolLoadTester` and its grades.
//! 14. [`store`]: the control database — definitions, history, config changes,
//!     the replica group's rows.
//! 15. [`optimizer`]: recommendations, the budget's cap and the plan that applies them.
//! 16. [`registry`]: `ConnectionPoolService`, the named pools and their changes.
//! 17. [`group`]: replicas on one control database — heartbeat, definitions
//!     followed, the leader's lock.
//! 18. [`recorder`]: the metrics recorder writing the history.
//! 19. [`metrics`]: the one metric catalogue (Prometheus and OTLP read it).

pub mod allowlist;
pub mod budget;
pub mod config;
pub mod conninfo;
pub mod embedded_pg;
mod error;
pub mod events;
pub mod group;
pub mod leadership;
pub mod loadtest;
pub mod metrics;
pub mod optimizer;
pub mod pool;
pub mod query;
pub mod recorder;
pub mod registry;
pub mod secrets;
pub mod store;
pub mod tls;

pub use allowlist::TargetAllowlist;
pub use config::{
    AdvancedPoolConfig, ConfigErrors, FieldChange, FieldViolation, PoolMode, SessionState,
};
pub use conninfo::{ConnInfo, Secret};
pub use embedded_pg::{EmbeddedPg, EmbeddedPgError, EmbeddedPgOptions, EmbeddedTls};
pub use error::{AcquireLimit, Error, ErrorKind, RequestViolation, describe_pg_error};
pub use events::{PoolEvent, PoolEventKind};
pub use loadtest::{
    Grade, LoadTestLimits, LoadTestOptions, LoadTestProgress, LoadTestResults, PoolLoadTester,
};
pub use optimizer::{OptimizationReport, PoolOptimization, Recommendation, Severity};
pub use pool::{
    AdvancedConnectionPool, HealthStatus, PoolStats, PooledConnection, StatementCacheStats,
    Transaction, WireBackend, WireCounters, WireSettings, WireStats,
};
pub use recorder::{MetricsRecorder, RecorderOptions, RecorderStatus};
pub use registry::{ConnectionPoolService, LoadTestSlot, PerformanceSummary, PoolInfo};
pub use secrets::{SecretsError, SecretsKey};
pub use store::config_changes::{ChangeOrigin, ConfigChangeRecord};
pub use store::history::{HourSummary, MetricsPoint, ScalingRecord};
pub use store::{
    ControlStore, PoolDefinition, default_data_dir, default_secrets_key_file, establish_connection,
};
