//! The gRPC face of the engine: one file per proto service, conversions and the
//! error mapping.

pub mod auth;
pub mod convert;
pub mod limits;
pub mod pool_service;
pub mod query_service;
pub mod status;
pub mod trace;

pub use pool_service::PoolService;
pub use query_service::QueryService;
