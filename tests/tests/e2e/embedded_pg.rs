//! The embedded PostgreSQL: it serves, stops, persists its data directory, and never
//! outlives its owner (stop, drop on panic, SIGKILL of the owner).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use poolplane::{EmbeddedPg, EmbeddedPgOptions};
use poolplane_tests::{process_alive, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn query_one_string(url: &str, sql: &str) -> anyhow::Result<String> {
    let client = poolplane_tests::connect(url).await?;
    Ok(client.query_one(sql, &[]).await?.get(0))
}

#[tokio::test]
async fn serves_on_loopback_and_stop_leaves_nothing() -> anyhow::Result<()> {
    let pg = EmbeddedPg::start_temporary().await?;
    let pid = pg.pid();
    let dir = pg.base_dir().to_owned();
    assert!(process_alive(pid));
    let version = query_one_string(&pg.url("postgres"), "SELECT version()").await?;
    assert!(version.starts_with("PostgreSQL"), "{version}");
    let listen = query_one_string(&pg.url("postgres"), "SHOW listen_addresses").await?;
    assert_eq!(listen, "127.0.0.1");

    pg.stop().await;
    assert!(
        !process_alive(pid),
        "postmaster {pid} still running after stop"
    );
    assert!(!dir.exists(), "{} still exists after stop", dir.display());
    Ok(())
}

#[tokio::test]
async fn wrong_password_is_refused() -> anyhow::Result<()> {
    let pg = EmbeddedPg::start_temporary().await?;
    let url = format!("postgres://postgres:wrong@127.0.0.1:{}/postgres", pg.port());
    let error = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .context("a wrong password was accepted")?;
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{error:?}"
    );
    Ok(())
}

#[tokio::test]
async fn data_dir_and_settings_survive_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = EmbeddedPgOptions {
        data_dir: Some(dir.path().join("cluster")),
        settings: vec![("max_connections".into(), "20".into())],
        ..Default::default()
    };
    let first = EmbeddedPg::start(options.clone()).await?;
    let password = first.password().to_owned();
    let client = poolplane_tests::connect(&first.url("postgres")).await?;
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .await?;
    drop(client);
    first.stop().await;

    let second = EmbeddedPg::start(options).await?;
    assert_eq!(second.password(), password);
    let kept = query_one_string(&second.url("postgres"), "SELECT v::text FROM kept").await?;
    assert_eq!(kept, "42");
    let max = query_one_string(&second.url("postgres"), "SHOW max_connections").await?;
    assert_eq!(max, "20");
    second.stop().await;
    assert!(dir.path().join("cluster/pgdata/PG_VERSION").exists());
    Ok(())
}

/// Runs the pg_holder helper and reads the postmaster pid and directory it prints.
async fn start_holder(mode: &str) -> anyhow::Result<(Child, u32, PathBuf)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pg_holder"))
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        BufReader::new(stdout).lines().next_line().await
    })
    .await
    .context("pg_holder printed nothing in 60 s")??
    .context("pg_holder exited before starting PostgreSQL")?;
    let info: serde_json::Value = serde_json::from_str(&line)?;
    let pid = info["pid"].as_u64().context("no pid")? as u32;
    let dir = PathBuf::from(info["dir"].as_str().context("no dir")?);
    Ok((child, pid, dir))
}

async fn assert_cluster_gone(pid: u32, dir: &std::path::Path) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(15),
        "the postmaster has exited",
        || async { !process_alive(pid) },
    )
    .await?;
    wait_until(
        Duration::from_secs(15),
        "the cluster directory is removed",
        || async { !dir.exists() },
    )
    .await
}

#[tokio::test]
async fn cluster_is_gone_after_its_owner_panics() -> anyhow::Result<()> {
    let (mut child, pid, dir) = start_holder("panic").await?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert_eq!(status.code(), Some(101), "pg_holder should have panicked");
    assert_cluster_gone(pid, &dir).await
}

#[tokio::test]
async fn cluster_is_gone_after_its_owner_is_killed() -> anyhow::Result<()> {
    let (mut child, pid, dir) = start_holder("hold").await?;
    assert!(process_alive(pid));
    child.start_kill()?; // SIGKILL: no destructor runs, only the watchdog can act
    child.wait().await?;
    assert_cluster_gone(pid, &dir).await
}

#[tokio::test]
async fn missing_binaries_name_the_package_to_install() -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    let output = Command::new(env!("CARGO_BIN_EXE_pg_holder"))
        .arg("hold")
        .env("POOLPLANE_PG_BINDIR", empty.path())
        .output()
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("apt-get install -y postgresql"),
        "error does not name the package: {stderr}"
    );
    Ok(())
}

/// Starting a cluster (initdb takes a second or more) does not block the runtime
/// that awaits it: on a one-thread runtime, a task ticking every 10 ms keeps
/// ticking while the start runs. Its longest gap is measured against the start's
/// own length, not against this machine's speed.
#[tokio::test(flavor = "current_thread")]
async fn starting_a_cluster_leaves_the_runtime_free() -> anyhow::Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ticking, running) = tokio::sync::oneshot::channel();
    let ticker = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut last = std::time::Instant::now();
            let _ = ticking.send(());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                worst = worst.max(last.elapsed());
                last = std::time::Instant::now();
            }
            worst
        })
    };
    running.await?;
    let started = std::time::Instant::now();
    let pg = EmbeddedPg::start_temporary().await?;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = ticker.await?;
    eprintln!("start {took:?}, longest gap {worst:?}");
    pg.stop().await;
    assert!(
        worst < took / 3,
        "the runtime stood still for {worst:?} of a {took:?} start"
    );
    Ok(())
}
