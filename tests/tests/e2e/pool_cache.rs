//! The per-connection statement cache against the real PostgreSQL: exact LRU
//! counts, hit rate, the server-side statement count, and schema changes.

use poolplane::{AdvancedConnectionPool, AdvancedPoolConfig, PooledConnection};
use poolplane_tests::{TestPg, test_config};

fn cache_config(capacity: u32) -> AdvancedPoolConfig {
    AdvancedPoolConfig {
        statement_cache_capacity: capacity,
        ..test_config(1, 1)
    }
}

/// Prepared statements the server holds for this connection (simple protocol, so
/// the count itself prepares nothing).
async fn server_statements(conn: &PooledConnection) -> anyhow::Result<u32> {
    let messages = conn
        .client()
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await?;
    for message in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            return Ok(row.get(0).unwrap_or("0").parse()?);
        }
    }
    anyhow::bail!("no row")
}

#[tokio::test]
async fn lru_counts_are_exact_at_capacity_five() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let pool = AdvancedConnectionPool::new(db.url(), cache_config(5)).await?;
    let mut conn = pool.get().await?;
    // q1..q5 miss; q1 hits; q6 evicts q2 (least recent); q2 evicts q3; q1 and q4 hit.
    for n in [1, 2, 3, 4, 5, 1, 6, 2, 1, 4] {
        let sql = format!("SELECT {n}::int4");
        let value: i32 = conn.query_one(&sql, &[]).await?.get(0);
        assert_eq!(value, n);
        assert!(server_statements(&conn).await? <= 5);
    }
    let stats = pool.get_statement_cache_stats().await;
    assert_eq!(
        (stats.hits, stats.misses, stats.evictions),
        (3, 7, 2),
        "{stats:?}"
    );
    assert_eq!(stats.prepared_statements, 5);
    assert_eq!(server_statements(&conn).await?, 5);
    // q3 was evicted: a miss again, evicting q5.
    conn.query_one("SELECT 3::int4", &[]).await?;
    let stats = pool.get_statement_cache_stats().await;
    assert_eq!((stats.hits, stats.misses, stats.evictions), (3, 8, 3));
    drop(conn);
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn ten_statements_a_thousand_times_hit_at_least_99_percent() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let pool = AdvancedConnectionPool::new(db.url(), cache_config(100)).await?;
    for i in 0..1000 {
        let sql = format!("SELECT {}::int4 + $1", i % 10);
        let row = pool.query_one(&sql, &[&1i32]).await?;
        assert_eq!(row.get::<_, i32>(0), i % 10 + 1);
    }
    let stats = pool.get_statement_cache_stats().await;
    assert_eq!(stats.hits + stats.misses, 1000);
    assert!(stats.hit_rate >= 0.99, "{stats:?}");
    assert_eq!(stats.evictions, 0);
    let conn = pool.get().await?;
    assert_eq!(server_statements(&conn).await?, 10);
    drop(conn);
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn a_schema_change_under_a_cached_select_star_is_invisible() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let pool = AdvancedConnectionPool::new(db.url(), cache_config(10)).await?;
    let admin = db.connect().await?;
    admin
        .batch_execute("CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
        .await?;
    let mut conn = pool.get().await?;
    let before = conn.query("SELECT * FROM accounts", &[]).await?;
    assert_eq!(before[0].len(), 1);
    admin
        .batch_execute("ALTER TABLE accounts ADD COLUMN balance int DEFAULT 7")
        .await?;
    let after = conn.query("SELECT * FROM accounts", &[]).await?;
    assert_eq!(after[0].len(), 2);
    assert_eq!(after[0].get::<_, i32>("balance"), 7);
    // Dropped and recreated with another shape: still invisible.
    admin
        .batch_execute("DROP TABLE accounts; CREATE TABLE accounts (name text); INSERT INTO accounts VALUES ('x')")
        .await?;
    let recreated = conn.query("SELECT * FROM accounts", &[]).await?;
    assert_eq!(recreated[0].get::<_, String>("name"), "x");
    drop(conn);
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn with_prepared_statements_off_nothing_is_cached() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let config = AdvancedPoolConfig {
        enable_prepared_statements: false,
        ..cache_config(10)
    };
    let pool = AdvancedConnectionPool::new(db.url(), config).await?;
    let mut conn = pool.get().await?;
    for _ in 0..5 {
        conn.query_one("SELECT 1::int4", &[]).await?;
    }
    assert_eq!(server_statements(&conn).await?, 0);
    let stats = pool.get_statement_cache_stats().await;
    assert_eq!(
        (stats.hits, stats.misses, stats.prepared_statements),
        (0, 0, 0)
    );
    drop(conn);
    pool.close().await;
    Ok(())
}
