//! Creating an advanced pool and configuring it, in-process: a pool
//! with the default, a custom and the production configuration.
//!
//! Run: `cargo run -p poolplane --example creating_pools -- DATABASE_URL`

use poolplane::{AdvancedConnectionPool, AdvancedPoolConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::args()
        .nth(1)
        .ok_or("usage: creating_pools DATABASE_URL")?;

    // Custom configuration (values for a busy service, scaled to a small database).
    let config = AdvancedPoolConfig {
        max_connections: 10,
        min_connections: 2,
        acquire_timeout_secs: 30,
        idle_timeout_secs: 600,
        max_lifetime_secs: 3600,
        statement_cache_capacity: 2000,
        enable_prepared_statements: true,
        health_check_interval_secs: 30,
        health_check_timeout_secs: 5,
        max_failed_health_checks: 3,
        enable_dynamic_sizing: true,
        load_threshold_high: 0.8,
        load_threshold_low: 0.3,
        scale_up_factor: 1.2,
        scale_down_factor: 0.9,
        min_scale_interval_secs: 60,
        enable_connection_validation: true,
        validation_query: "SELECT 1".to_string(),
        connection_warmup_queries: vec![
            "SET application_name = 'defi-risk-monitor'".to_string(),
            "SET statement_timeout = '30s'".to_string(),
        ],
        enable_connection_recycling: true,
        recycle_threshold_queries: 10000,
        ..Default::default()
    };
    let pool = AdvancedConnectionPool::new(&database_url, config).await?;

    // Use the pool for database operations.
    let row = pool.query_one("SELECT 1 as test", &[]).await?;
    let test: i32 = row.get("test");
    println!("SELECT 1 as test -> {test}");

    let stats = pool.get_pool_stats().await;
    println!("Utilization: {:.2}%", stats.utilization_rate * 100.0);
    println!("Average acquire time: {}ms", stats.avg_acquire_time_ms);
    let health = pool.get_health_status().await;
    println!("Pool healthy: {}", health.is_healthy);
    let cache_stats = pool.get_statement_cache_stats().await;
    println!("Cache hit rate: {:.2}%", cache_stats.hit_rate * 100.0);
    pool.close().await;

    // The presets validate as they are.
    for (name, preset) in [
        ("production", AdvancedPoolConfig::production()),
        ("development", AdvancedPoolConfig::development()),
    ] {
        preset.validate()?;
        println!(
            "{name}: max {} min {}",
            preset.max_connections, preset.min_connections
        );
    }
    Ok(())
}
