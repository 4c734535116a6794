//! `PoolplaneClient`: typed calls over the generated `poolplane.v1` clients.

use poolplane_proto::v1::pool_service_client::PoolServiceClient;
use poolplane_proto::v1::{
    CreatePoolRequest, DeletePoolRequest, GetHealthStatusRequest, GetMetricsHistoryRequest,
    GetPerformanceSummaryRequest, GetPoolRequest, GetPoolStatsRequest,
    GetStatementCacheStatsRequest, HealthStatus, ListPoolsRequest, ListScalingEventsRequest,
    MetricsPoint, OptimizationReport, OptimizePoolsRequest, PerformanceSummary, Pool, PoolConfig,
    PoolEvent, PoolStats, RunLoadTestRequest, RunLoadTestResponse, ScalingEventRecord,
    StatementCacheStats, UpdatePoolConfigRequest, WatchHealthEventsRequest, WatchPoolStatsRequest,
};
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// A connection to a poolplane server. Cheap to clone; clones share the channel.
#[derive(Debug, Clone)]
pub struct PoolplaneClient {
    channel: Channel,
}

/// A server stream of `T`, already unwrapped from its response message.
pub struct Watch<M, T> {
    inner: Streaming<M>,
    unwrap: fn(M) -> Option<T>,
}

impl<M, T> std::fmt::Debug for Watch<M, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl<M, T> Watch<M, T> {
    /// The next item; `None` when the server ends the stream.
    pub async fn next(&mut self) -> Result<Option<T>, Error> {
        loop {
            match self.inner.message().await? {
                None => return Ok(None),
                Some(message) => {
                    if let Some(item) = (self.unwrap)(message) {
                        return Ok(Some(item));
                    }
                }
            }
        }
    }
}

fn present<T>(value: Option<T>, what: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::Status(tonic::Status::internal(format!("response without {what}"))))
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

    /// Creates a pool; unset config fields take the server's defaults.
    pub async fn create_pool(
        &self,
        name: &str,
        database_url: &str,
        config: PoolConfig,
    ) -> Result<Pool, Error> {
        let response = self
            .pool_service()
            .create_pool(CreatePoolRequest {
                name: name.to_owned(),
                database_url: database_url.to_owned(),
                config: Some(config),
            })
            .await?;
        present(response.into_inner().pool, "pool")
    }

    /// One pool.
    pub async fn get_pool(&self, name: &str) -> Result<Pool, Error> {
        let response = self
            .pool_service()
            .get_pool(GetPoolRequest {
                name: name.to_owned(),
            })
            .await?;
        present(response.into_inner().pool, "pool")
    }

    /// Every pool the server hosts, ordered by name.
    pub async fn list_pools(&self) -> Result<Vec<Pool>, Error> {
        let response = self.pool_service().list_pools(ListPoolsRequest {}).await?;
        Ok(response.into_inner().pools)
    }

    /// Changes the config fields set in `config`.
    pub async fn update_pool_config(&self, name: &str, config: PoolConfig) -> Result<Pool, Error> {
        let response = self
            .pool_service()
            .update_pool_config(UpdatePoolConfigRequest {
                name: name.to_owned(),
                config: Some(config),
            })
            .await?;
        present(response.into_inner().pool, "pool")
    }

    /// Deletes a pool (its checked-out connections may finish first).
    pub async fn delete_pool(&self, name: &str) -> Result<(), Error> {
        self.pool_service()
            .delete_pool(DeletePoolRequest {
                name: name.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// A pool's stats snapshot.
    pub async fn get_pool_stats(&self, pool_name: &str) -> Result<PoolStats, Error> {
        let response = self
            .pool_service()
            .get_pool_stats(GetPoolStatsRequest {
                pool_name: pool_name.to_owned(),
            })
            .await?;
        present(response.into_inner().stats, "stats")
    }

    /// A pool's health.
    pub async fn get_health_status(&self, pool_name: &str) -> Result<HealthStatus, Error> {
        let response = self
            .pool_service()
            .get_health_status(GetHealthStatusRequest {
                pool_name: pool_name.to_owned(),
            })
            .await?;
        present(response.into_inner().health, "health")
    }

    /// A pool's statement-cache counters.
    pub async fn get_statement_cache_stats(
        &self,
        pool_name: &str,
    ) -> Result<StatementCacheStats, Error> {
        let response = self
            .pool_service()
            .get_statement_cache_stats(GetStatementCacheStatsRequest {
                pool_name: pool_name.to_owned(),
            })
            .await?;
        present(response.into_inner().stats, "stats")
    }

    /// Stats snapshots of `pool_names` (empty: every pool) every `interval_ms`
    /// (0: the server's default of 1000).
    pub async fn watch_pool_stats(
        &self,
        pool_names: &[&str],
        interval_ms: u32,
    ) -> Result<Watch<poolplane_proto::v1::WatchPoolStatsResponse, PoolStats>, Error> {
        let response = self
            .pool_service()
            .watch_pool_stats(WatchPoolStatsRequest {
                pool_names: pool_names.iter().map(|n| (*n).to_owned()).collect(),
                interval_ms,
            })
            .await?;
        Ok(Watch {
            inner: response.into_inner(),
            unwrap: |m| m.stats,
        })
    }

    /// The current health of `pool_names` (empty: every pool), then every event.
    pub async fn watch_health_events(
        &self,
        pool_names: &[&str],
    ) -> Result<Watch<poolplane_proto::v1::WatchHealthEventsResponse, PoolEvent>, Error> {
        let response = self
            .pool_service()
            .watch_health_events(WatchHealthEventsRequest {
                pool_names: pool_names.iter().map(|n| (*n).to_owned()).collect(),
            })
            .await?;
        Ok(Watch {
            inner: response.into_inner(),
            unwrap: |m| m.event,
        })
    }

    /// A pool's performance now and over its last hour, with its recent scaling
    /// events (the seed's get_pool_performance_summary).
    pub async fn get_performance_summary(
        &self,
        pool_name: &str,
    ) -> Result<PerformanceSummary, Error> {
        let response = self
            .pool_service()
            .get_performance_summary(GetPerformanceSummaryRequest {
                pool_name: pool_name.to_owned(),
            })
            .await?;
        present(response.into_inner().summary, "summary")
    }

    /// A pool's recorded metrics between `from` and `to` (defaults: the last hour),
    /// in at most `max_points` points (0: the server's default of 100).
    pub async fn get_metrics_history(
        &self,
        pool_name: &str,
        from: Option<std::time::SystemTime>,
        to: Option<std::time::SystemTime>,
        max_points: u32,
    ) -> Result<Vec<MetricsPoint>, Error> {
        let response = self
            .pool_service()
            .get_metrics_history(GetMetricsHistoryRequest {
                pool_name: pool_name.to_owned(),
                from: from.map(Into::into),
                to: to.map(Into::into),
                max_points,
            })
            .await?;
        Ok(response.into_inner().points)
    }

    /// A pool's recorded scaling decisions, newest first (`limit` 0: 20).
    pub async fn list_scaling_events(
        &self,
        pool_name: &str,
        limit: u32,
    ) -> Result<Vec<ScalingEventRecord>, Error> {
        let response = self
            .pool_service()
            .list_scaling_events(ListScalingEventsRequest {
                pool_name: pool_name.to_owned(),
                limit,
            })
            .await?;
        Ok(response.into_inner().events)
    }

    /// Starts a load test; the stream yields progress about once a second, then
    /// the result. Dropping the stream cancels the test.
    pub async fn run_load_test(
        &self,
        request: RunLoadTestRequest,
    ) -> Result<
        Watch<RunLoadTestResponse, poolplane_proto::v1::run_load_test_response::Update>,
        Error,
    > {
        let response = self.pool_service().run_load_test(request).await?;
        Ok(Watch {
            inner: response.into_inner(),
            unwrap: |m| m.update,
        })
    }

    /// Recommendations for `pool_names` (empty: all); with `apply`, the numeric ones
    /// are made.
    pub async fn optimize_pools(
        &self,
        pool_names: &[&str],
        apply: bool,
    ) -> Result<OptimizationReport, Error> {
        let response = self
            .pool_service()
            .optimize_pools(OptimizePoolsRequest {
                pool_names: pool_names.iter().map(|n| (*n).to_owned()).collect(),
                apply,
            })
            .await?;
        present(response.into_inner().report, "report")
    }
}
