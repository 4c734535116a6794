//! `--demo`: something to look at on a first run. On the embedded cluster, a
//! `poolplane_demo` database with pgbench's tables at scale 1 (100,000 accounts),
//! owned by a login role of its own (`poolplane_demo`, not the superuser; its
//! password kept in `<data-dir>/demo.password`, mode 0600), and a pool `demo` on
//! it. Every step is idempotent: a restart finds them and keeps them (the pool is
//! re-pointed at the cluster's new port).

use std::path::Path;

use poolplane::{AdvancedPoolConfig, ConnectionPoolService, EmbeddedPg};

/// The demo pool's name.
pub const POOL: &str = "demo";
const DATABASE: &str = "poolplane_demo";
const ROLE: &str = "poolplane_demo";
const ACCOUNTS: i32 = 100_000;

/// Sets the demo up; the error says which step failed.
pub async fn set_up(
    pg: &EmbeddedPg,
    registry: &ConnectionPoolService,
    data_dir: &Path,
) -> Result<(), String> {
    let password = password(&data_dir.join("demo.password"))?;
    create_role_and_database(&connect(&pg.url("postgres")).await?, &password).await?;
    let url = format!(
        "postgres://{ROLE}:{password}@127.0.0.1:{}/{DATABASE}",
        pg.port()
    );
    fill_tables(&connect(&url).await?).await?;
    ensure_pool(registry, pg.port(), &url).await?;
    tracing::info!(
        pool = POOL,
        database = DATABASE,
        accounts = ACCOUNTS,
        "demo ready: try `poolctl top`, `poolctl loadtest demo -c 16 -d 10`, `poolctl stats demo`"
    );
    Ok(())
}

/// What failed, with PostgreSQL's own words.
fn failed(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> String {
    move |e| format!("{step}: {}", poolplane::describe_pg_error(&e))
}

/// The demo's login role (its password set each time) and its database.
async fn create_role_and_database(
    admin: &tokio_postgres::Client,
    password: &str,
) -> Result<(), String> {
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN \
                 CREATE ROLE {ROLE} LOGIN; \
               END IF; \
             END $$; \
             ALTER ROLE {ROLE} LOGIN PASSWORD '{password}'"
        ))
        .await
        .map_err(failed("creating the demo role"))?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
        .await
        .map_err(failed("looking for the demo database"))?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"))
            .await
            .map_err(failed("creating the demo database"))?;
    }
    Ok(())
}

/// pgbench's four tables, filled at scale 1 the first time.
async fn fill_tables(demo: &tokio_postgres::Client) -> Result<(), String> {
    demo.batch_execute(
        "CREATE TABLE IF NOT EXISTS pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88)); \
         CREATE TABLE IF NOT EXISTS pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84)); \
         CREATE TABLE IF NOT EXISTS pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84)); \
         CREATE TABLE IF NOT EXISTS pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))",
    )
    .await
    .map_err(failed("creating the demo tables"))?;
    let empty = demo
        .query_opt("SELECT 1 FROM pgbench_accounts LIMIT 1", &[])
        .await
        .map_err(failed("reading the demo tables"))?
        .is_none();
    if empty {
        demo.execute(
            "WITH b AS (INSERT INTO pgbench_branches VALUES (1, 0) RETURNING bid), \
                  t AS (INSERT INTO pgbench_tellers SELECT g, 1, 0 FROM generate_series(1, 10) g) \
             INSERT INTO pgbench_accounts SELECT g, 1, 0, '' FROM generate_series(1, $1) g",
            &[&ACCOUNTS],
        )
        .await
        .map_err(failed("filling the demo tables"))?;
        demo.batch_execute("ANALYZE")
            .await
            .map_err(failed("analyzing the demo tables"))?;
    }
    Ok(())
}

/// The `demo` pool on `url`; one restored from an earlier run points at the
/// cluster's old port and is re-created.
async fn ensure_pool(registry: &ConnectionPoolService, port: u16, url: &str) -> Result<(), String> {
    let at = format!("127.0.0.1:{port}/");
    match registry.pool_info(POOL) {
        Ok(info) if info.database_url.contains(&at) => return Ok(()),
        Ok(_) => registry
            .delete_pool(POOL)
            .await
            .map_err(|e| format!("re-pointing the demo pool: {e}"))?,
        Err(_) => {}
    }
    let config = AdvancedPoolConfig {
        min_connections: 2,
        max_connections: 32,
        ..AdvancedPoolConfig::default()
    };
    registry
        .create_pool(POOL.to_owned(), url, config)
        .await
        .map_err(|e| format!("creating the demo pool: {e}"))?;
    Ok(())
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            format!(
                "connecting to the embedded cluster: {}",
                poolplane::describe_pg_error(&e)
            )
        })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The demo role's password: read from `file`, or generated (24 letters and
/// digits) and written there with mode 0600.
fn password(file: &Path) -> Result<String, String> {
    if let Ok(text) = std::fs::read_to_string(file) {
        let text = text.trim().to_owned();
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(text);
        }
    }
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no randomness for the demo password".to_owned())?;
    let password: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(password.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    Ok(password)
}
