//! Reaching a TestServer's PostgreSQL front door: connection strings for
//! libpq (psql, pgbench), tokio-postgres and Python drivers, and the real
//! client programs run with a deadline.

use std::process::Output;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::Command;

use crate::{TestDatabase, TestServer};

/// The user and password of `db`'s URL (the pool's own login).
pub fn login_of(db: &TestDatabase) -> anyhow::Result<(String, String)> {
    let config: tokio_postgres::Config = db.url().parse()?;
    let user = config
        .get_user()
        .context("the test URL names a user")?
        .to_owned();
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .context("the test URL has a password")?;
    Ok((user, password))
}

/// A libpq key=value connection string to `pool` through `server`'s front
/// door, as the pool's own user (password in `PGPASSWORD`: see [`run_client`]).
pub fn pg_conninfo(server: &TestServer, db: &TestDatabase, pool: &str) -> anyhow::Result<String> {
    let addr = server
        .server()
        .pg_addr()
        .context("the test server runs a front door")?;
    let (user, _) = login_of(db)?;
    Ok(format!(
        "host={} port={} dbname={pool} user={user} sslmode=disable",
        addr.ip(),
        addr.port()
    ))
}

/// A postgres:// URL (with password) to `pool` through `server`'s front door.
pub fn pg_url(server: &TestServer, db: &TestDatabase, pool: &str) -> anyhow::Result<String> {
    let addr = server
        .server()
        .pg_addr()
        .context("the test server runs a front door")?;
    let (user, password) = login_of(db)?;
    Ok(format!(
        "postgres://{user}:{password}@{}:{}/{pool}?sslmode=disable",
        addr.ip(),
        addr.port()
    ))
}

/// Runs a client program (psql, pgbench, python3) with `PGPASSWORD` set,
/// killed after `deadline`.
pub async fn run_client(
    program: &str,
    args: &[&str],
    password: &str,
    deadline: Duration,
) -> anyhow::Result<Output> {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true);
    tokio::time::timeout(deadline, command.output())
        .await
        .with_context(|| format!("{program} {args:?} did not finish within {deadline:?}"))?
        .with_context(|| format!("running {program}"))
}

/// Both output streams of a finished program, as text.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
