//! The gRPC face of the engine: one file per proto service, conversions and the
//! error mapping.

pub mod convert;
pub mod pool_service;
pub mod status;

pub use pool_service::PoolService;
