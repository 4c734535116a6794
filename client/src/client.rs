//! `PoolplaneClient`: typed calls over the generated `poolplane.v1` clients.

use poolplane_proto::v1::pool_service_client::PoolServiceClient;
use poolplane_proto::v1::{ListPoolsRequest, Pool};
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// A connection to a poolplane server. Cheap to clone; clones share the channel.
#[derive(Debug, Clone)]
pub struct PoolplaneClient {
    channel: Channel,
}

impl PoolplaneClient {
    /// Connects to a server: `127.0.0.1:50051`, `http://127.0.0.1:50051` or any URI.
    pub async fn connect(server: impl AsRef<str>) -> Result<Self, Error> {
        let server = server.as_ref();
        let uri = if server.contains("://") {
            server.to_owned()
        } else {
            format!("http://{server}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|source| Error::InvalidEndpoint {
            endpoint: server.to_owned(),
            source,
        })?;
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            endpoint: server.to_owned(),
            source,
        })?;
        Ok(Self { channel })
    }

    /// The raw generated client, for calls the SDK does not wrap.
    pub fn pool_service(&self) -> PoolServiceClient<Channel> {
        PoolServiceClient::new(self.channel.clone())
    }

    /// Every pool the server hosts, ordered by name.
    pub async fn list_pools(&self) -> Result<Vec<Pool>, Error> {
        let response = self.pool_service().list_pools(ListPoolsRequest {}).await?;
        Ok(response.into_inner().pools)
    }
}
