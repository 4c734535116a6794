//! poolplane's engine: advanced PostgreSQL connection pools, their registry and the
//! control database, embeddable in-process.

pub mod conninfo;
pub mod embedded_pg;
mod error;
pub mod store;

pub use embedded_pg::{EmbeddedPg, EmbeddedPgError, EmbeddedPgOptions};
pub use error::Error;
pub use store::{ControlStore, PoolDefinition};
