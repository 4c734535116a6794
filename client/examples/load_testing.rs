//! Load testing over gRPC: progress while it runs, then the results.
//!
//! Run: `cargo run -p poolplane-client --example load_testing -- SERVER DATABASE_URL`

use poolplane_client::proto::RunLoadTestRequest;
use poolplane_client::proto::run_load_test_response::Update;
use poolplane_client::{PoolConfigBuilder, PoolplaneClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:50051".into());
    let database_url = args
        .next()
        .ok_or("usage: load_testing SERVER DATABASE_URL")?;
    let client = PoolplaneClient::connect(&server).await?;
    let config = PoolConfigBuilder::new()
        .max_connections(10)
        .min_connections(10)
        .build();
    client.create_pool("loaded", &database_url, config).await?;

    // Run load test: 5 concurrent requests for 2 seconds.
    let mut test = client
        .run_load_test(RunLoadTestRequest {
            pool_name: "loaded".into(),
            concurrency: 5,
            duration_secs: 2,
            query: String::new(),
            warmup_secs: 0,
            target_rps: None,
            read_write: false,
        })
        .await?;
    while let Some(update) = test.next().await? {
        match update {
            Update::Progress(p) => println!(
                "{:.0}s: {} requests, p95 {:.2} ms",
                p.elapsed_secs, p.requests, p.p95_ms
            ),
            Update::Result(results) => {
                println!("Total requests: {}", results.total_requests);
                println!("Error rate: {:.2}%", results.error_rate * 100.0);
                println!("Requests per second: {}", results.requests_per_second);
                println!("Grade: {:?}", results.grade());
            }
        }
    }
    client.delete_pool("loaded").await?;
    Ok(())
}
