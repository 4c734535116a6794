//! The leak check: a pool's backends in pg_stat_activity never exceed its current
//! size and none remain once it is deleted; the server's tasks and file
//! descriptors come back to their baseline.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{http_get, metric_value, wait_until};

/// Backends of pool `pool` (its own connections and its health checks), by
/// application_name, in the database `client` is connected to (tests share one
/// cluster, and pools of other tests may have the same name).
pub async fn pool_backends(client: &tokio_postgres::Client, pool: &str) -> anyhow::Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name IN ($1, $2) AND pid <> pg_backend_pid() \
             AND datname = current_database()",
            &[
                &format!("poolplane:{pool}"),
                &format!("poolplane-health:{pool}"),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Backends of pool `pool` running a statement right now.
pub async fn active_backends(client: &tokio_postgres::Client, pool: &str) -> anyhow::Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND state = 'active' AND pid <> pg_backend_pid() \
             AND datname = current_database()",
            &[&format!("poolplane:{pool}")],
        )
        .await?;
    Ok(row.get(0))
}

/// Waits (up to `timeout`) until pool `pool` has no backend left.
pub async fn wait_no_backends(
    client: &tokio_postgres::Client,
    pool: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_until(
        timeout,
        &format!("no backend of {pool} remains"),
        || async { pool_backends(client, pool).await.is_ok_and(|n| n == 0) },
    )
    .await
}

/// The server's alive tasks and open file descriptors, from its /metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerResources {
    /// Tasks alive in its runtime.
    pub tasks: f64,
    /// File descriptors it holds.
    pub fds: f64,
}

/// Reads [`ServerResources`] from the Prometheus endpoint at `metrics`.
pub async fn server_resources(metrics: SocketAddr) -> anyhow::Result<ServerResources> {
    let text = http_get(metrics, "/metrics").await?;
    let read =
        |name| metric_value(&text, name).ok_or_else(|| anyhow::anyhow!("/metrics has no {name}"));
    Ok(ServerResources {
        tasks: read("poolplane_runtime_alive_tasks")?,
        fds: read("poolplane_open_fds")?,
    })
}

/// Waits (up to `timeout`) until the server's tasks and descriptors are back to
/// `baseline` (plus `slack` each, for what a scrape itself holds).
pub async fn wait_back_to(
    metrics: SocketAddr,
    baseline: ServerResources,
    slack: f64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(None);
    let result = wait_until(
        timeout,
        "tasks and descriptors are back to baseline",
        || async {
            match server_resources(metrics).await {
                Ok(now) => {
                    *last.lock().expect("last lock") = Some(now);
                    now.tasks <= baseline.tasks + slack && now.fds <= baseline.fds + slack
                }
                Err(_) => false,
            }
        },
    )
    .await;
    let last = *last.lock().expect("last lock");
    result.map_err(|e| anyhow::anyhow!("{e}: baseline {baseline:?}, last {last:?}"))
}
