//! poolplane-server: the gRPC control plane for named PostgreSQL connection pools.

pub mod app;
pub mod demo;
pub mod grpc;
pub mod prometheus;
pub mod telemetry;

pub use app::{PgFrontDoor, Replica, Server, ServerConfig, ServerError, TlsFiles};
