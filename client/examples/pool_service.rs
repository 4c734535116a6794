//! Using the connection pool service over gRPC: create a primary and a
//! cache pool, then read the primary's performance summary.
//!
//! Run: `cargo run -p poolplane-client --example pool_service -- SERVER DATABASE_URL`
//! (SERVER like 127.0.0.1:50051; the pools are deleted at the end).

use poolplane_client::{PoolConfigBuilder, PoolplaneClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:50051".into());
    let database_url = args
        .next()
        .ok_or("usage: pool_service SERVER DATABASE_URL")?;
    let pool_service = PoolplaneClient::connect(&server).await?;

    // Create specialized pools.
    let production_config = PoolConfigBuilder::production()
        .max_connections(20)
        .min_connections(2)
        .build();
    let cache_config = PoolConfigBuilder::development()
        .max_connections(5)
        .min_connections(1)
        .build();
    let primary = pool_service
        .create_pool("primary", &database_url, production_config)
        .await?;
    let cache = pool_service
        .create_pool("cache", &database_url, cache_config)
        .await?;
    println!("created {} and {}", primary.name, cache.name);

    // Monitor pool performance.
    let performance = pool_service.get_performance_summary("primary").await?;
    println!(
        "Pool utilization: {:.2}%",
        performance.utilization_rate * 100.0
    );

    for name in ["primary", "cache"] {
        pool_service.delete_pool(name).await?;
    }
    Ok(())
}
