//! Using the connection pool service inside an application of your own,
//! in-process: a service that owns a ConnectionPoolService, creates a specialized
//! pool, reads its performance summary and runs a load test.
//!
//! Run: `cargo run -p poolplane --example service_integration -- DATABASE_URL`
//! (the control tables are created in that database too).

use std::sync::Arc;
use std::time::Duration;

use poolplane::{
    AdvancedConnectionPool, AdvancedPoolConfig, ConnectionPoolService, PoolLoadTester,
    establish_connection,
};

/// In your service layer.
pub struct MyService {
    pool_service: Arc<ConnectionPoolService>,
}

impl MyService {
    pub async fn new(database_url: &str) -> Result<Self, poolplane::Error> {
        let main_pool = establish_connection(database_url).await?;
        let pool_service = Arc::new(ConnectionPoolService::new(
            main_pool,
            Duration::from_secs(5),
        ));
        let transaction_config = AdvancedPoolConfig {
            max_connections: 8,
            min_connections: 2,
            ..AdvancedPoolConfig::development()
        };
        // Create specialized pools.
        pool_service
            .create_pool("transactions".to_string(), database_url, transaction_config)
            .await?;
        Ok(Self { pool_service })
    }

    pub async fn get_pool(&self, name: &str) -> Option<Arc<AdvancedConnectionPool>> {
        self.pool_service.get_pool(name).await
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::args()
        .nth(1)
        .ok_or("usage: service_integration DATABASE_URL")?;
    let service = MyService::new(&database_url).await?;
    let pool = service.get_pool("transactions").await.ok_or("no pool")?;

    // Run a load test: 4 concurrent requests for 2 seconds.
    let load_tester = PoolLoadTester::new(Arc::clone(&pool));
    let results = load_tester.run_load_test(4, 2).await?;
    println!("Total requests: {}", results.total_requests);
    println!("Error rate: {:.2}%", results.error_rate * 100.0);
    println!("Requests per second: {:.0}", results.requests_per_second);
    println!("Grade: {:?}", results.grade);

    // Monitor pool performance.
    let performance = service
        .pool_service
        .get_pool_performance_summary("transactions")
        .await?;
    println!(
        "Pool utilization: {:.2}%",
        performance.utilization_rate * 100.0
    );

    // Run optimization on all pools (a loop over every pool's report).
    let report = service.pool_service.optimize_all_pools(false).await?;
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
            println!("  - {}", recommendation);
        }
    }

    service.pool_service.delete_pool("transactions").await?;
    service.pool_service.shutdown().await;
    Ok(())
}
