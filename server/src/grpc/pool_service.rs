//! `poolplane.v1.PoolService`: validate and convert, call the engine, map the result.

use poolplane::ControlStore;
use poolplane_proto::v1::pool_service_server;
use poolplane_proto::v1::{ListPoolsRequest, ListPoolsResponse};
use tonic::{Request, Response, Status};

use super::{convert, status};

/// The tonic implementation of `poolplane.v1.PoolService`.
#[derive(Debug, Clone)]
pub struct PoolService {
    store: ControlStore,
}

impl PoolService {
    /// A service over the control database.
    pub fn new(store: ControlStore) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl pool_service_server::PoolService for PoolService {
    async fn list_pools(
        &self,
        _request: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        let definitions = self
            .store
            .list_pool_definitions()
            .await
            .map_err(status::from_engine)?;
        Ok(Response::new(ListPoolsResponse {
            pools: definitions
                .iter()
                .map(convert::pool_from_definition)
                .collect(),
        }))
    }
}
