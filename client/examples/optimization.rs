//! Automatic optimization over gRPC: a starved pool, a load test that
//! shows it, the optimizer's report, and the change applied.
//!
//! Run: `cargo run -p poolplane-client --example optimization -- SERVER DATABASE_URL`

use poolplane_client::proto::RunLoadTestRequest;
use poolplane_client::{PoolConfigBuilder, PoolplaneClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:50051".into());
    let database_url = args
        .next()
        .ok_or("usage: optimization SERVER DATABASE_URL")?;
    let pool_service = PoolplaneClient::connect(&server).await?;
    let config = PoolConfigBuilder::new()
        .max_connections(2)
        .min_connections(1)
        .enable_dynamic_sizing(false)
        .build();
    pool_service
        .create_pool("starved", &database_url, config)
        .await?;
    let mut test = pool_service
        .run_load_test(RunLoadTestRequest {
            pool_name: "starved".into(),
            concurrency: 16,
            duration_secs: 2,
            query: "SELECT pg_sleep(0.01)".into(),
            warmup_secs: 0,
            target_rps: None,
            read_write: false,
        })
        .await?;
    while test.next().await?.is_some() {}

    // Run optimization on all pools.
    let report = pool_service.optimize_pools(&[], true).await?;
    println!(
        "Optimized {}/{} pools",
        report.optimized_pools, report.total_pools
    );
    for optimization in report.optimizations {
        println!(
            "Pool '{}': {:.2}% utilization",
            optimization.pool_name,
            optimization.current_utilization * 100.0
        );
        for recommendation in optimization.recommendations {
            println!("  - {}", recommendation.sentence);
        }
        for change in optimization.applied_changes {
            println!("  applied: {change}");
        }
    }
    pool_service.delete_pool("starved").await?;
    Ok(())
}
