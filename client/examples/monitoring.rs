//! Real-time pool statistics over gRPC.
//!
//! Run: `cargo run -p poolplane-client --example monitoring -- SERVER DATABASE_URL`

use poolplane_client::{PoolConfigBuilder, PoolplaneClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:50051".into());
    let database_url = args.next().ok_or("usage: monitoring SERVER DATABASE_URL")?;
    let client = PoolplaneClient::connect(&server).await?;
    let config = PoolConfigBuilder::new()
        .max_connections(10)
        .min_connections(2)
        .build();
    client
        .create_pool("monitored", &database_url, config)
        .await?;

    // Get current pool statistics.
    let stats = client.get_pool_stats("monitored").await?;
    println!("Utilization: {:.2}%", stats.utilization_rate * 100.0);
    println!("Average acquire time: {}ms", stats.avg_acquire_time_ms);

    // Get health status.
    let health = client.get_health_status("monitored").await?;
    println!("Pool healthy: {}", health.is_healthy);
    println!("Response time: {}ms", health.response_time_ms);

    // Get statement cache statistics.
    let cache_stats = client.get_statement_cache_stats("monitored").await?;
    println!("Cache hit rate: {:.2}%", cache_stats.hit_rate * 100.0);

    client.delete_pool("monitored").await?;
    Ok(())
}
