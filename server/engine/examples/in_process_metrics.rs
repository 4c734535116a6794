//! An application that embeds the engine exports the same metrics as the server:
//! one call registers poolplane's metric catalogue in the application's own
//! prometheus-client Registry; its own metrics sit beside them.
//!
//! Run: `cargo run -p poolplane --example in_process_metrics -- DATABASE_URL`

use std::sync::Arc;

use poolplane::{AdvancedConnectionPool, AdvancedPoolConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::args()
        .nth(1)
        .ok_or("usage: in_process_metrics DATABASE_URL")?;
    let config = AdvancedPoolConfig {
        max_connections: 4,
        min_connections: 1,
        ..AdvancedPoolConfig::default()
    };
    let pool = Arc::new(AdvancedConnectionPool::named("orders", &database_url, config).await?);
    for id in 0..20 {
        pool.query_one("SELECT $1::int4 * 2", &[&id]).await?;
    }

    // The application's registry: its own metric, and poolplane's catalogue.
    let mut registry = Registry::default();
    let handled = Counter::<u64>::default();
    registry.register(
        "orders_handled",
        "Orders the application handled",
        handled.clone(),
    );
    handled.inc_by(20);
    poolplane::metrics::register(&mut registry, Arc::new(vec![Arc::clone(&pool)]));

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    print!("{text}");
    pool.close().await;
    Ok(())
}
