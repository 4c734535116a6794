//! Running a load test through the SDK to its end.

use poolplane_client::PoolplaneClient;
use poolplane_client::proto::run_load_test_response::Update;
use poolplane_client::proto::{LoadTestResult, RunLoadTestRequest};

/// Runs a load test to its end; returns how many progress updates came and the
/// result.
pub async fn run_load_test(
    client: &PoolplaneClient,
    request: RunLoadTestRequest,
) -> anyhow::Result<(usize, LoadTestResult)> {
    let mut stream = client.run_load_test(request).await?;
    let mut progress = 0;
    while let Some(update) = stream.next().await? {
        match update {
            Update::Progress(_) => progress += 1,
            Update::Result(result) => return Ok((progress, result)),
        }
    }
    anyhow::bail!("the stream ended without a result")
}
