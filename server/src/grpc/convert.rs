//! Conversions between engine types and `poolplane.v1` messages.

use std::time::SystemTime;

use poolplane::PoolDefinition;
use poolplane::conninfo;
use poolplane_proto::v1;

/// A stored definition as the API shows it: password redacted.
pub fn pool_from_definition(definition: &PoolDefinition) -> v1::Pool {
    v1::Pool {
        name: definition.name.clone(),
        database_url: conninfo::redact(&definition.database_url),
        created_at: Some(timestamp(definition.created_at)),
        updated_at: Some(timestamp(definition.updated_at)),
    }
}

/// A `google.protobuf.Timestamp` from a system time.
pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}
