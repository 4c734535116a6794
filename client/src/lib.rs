//! poolplane-client: the Rust SDK for poolplane's gRPC control plane.
#![warn(missing_docs)]

mod client;
mod config;
mod error;
mod query;

pub use client::{PoolplaneClient, Watch};
pub use config::PoolConfigBuilder;
pub use error::Error;
/// The generated `poolplane.v1` messages and raw clients.
pub use poolplane_proto::v1 as proto;
pub use query::{FromValue, IntoValue, NotBytes, QueryResult, Row};
