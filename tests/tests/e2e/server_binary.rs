//! The built `poolplane-server` binary on its embedded default: serves health and
//! reflection to grpcurl, stops cleanly on SIGTERM leaving no postgres behind, and
//! reuses its data directory on the next start.

use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use poolplane_client::PoolplaneClient;
use poolplane_tests::{ServerProcess, grpcurl, process_alive};

fn postmaster_pid(data_dir: &std::path::Path) -> anyhow::Result<(u32, u16)> {
    let text = std::fs::read_to_string(data_dir.join("pgdata/postmaster.pid"))
        .context("reading postmaster.pid")?;
    let lines: Vec<&str> = text.lines().collect();
    Ok((lines[0].trim().parse()?, lines[3].trim().parse()?))
}

#[tokio::test]
async fn embedded_default_serves_stops_on_sigterm_and_is_reused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("poolplane");
    let data_arg = data_dir.to_str().context("utf-8 path")?;

    let mut first = ServerProcess::start(&["--data-dir", data_arg]).await?;
    assert_eq!(first.start_line["data_dir"], data_arg);
    let health = grpcurl(first.addr, &[], &["grpc.health.v1.Health/Check"]).await?;
    assert!(
        health.stdout.contains("\"SERVING\""),
        "{}{}",
        health.stdout,
        health.stderr
    );
    let list = grpcurl(first.addr, &[], &["list"]).await?;
    assert!(
        list.stdout.contains("poolplane.v1.PoolService"),
        "{}",
        list.stdout
    );

    // Leave a mark in the embedded control database for the second start to find.
    let (pid, port) = postmaster_pid(&data_dir)?;
    let password = std::fs::read_to_string(data_dir.join("password"))?;
    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{port}/postgres",
        password.trim()
    );
    let client = poolplane_tests::connect(&url).await?;
    client
        .batch_execute(
            "INSERT INTO pool_definitions (name, database_url) \
             VALUES ('kept', 'postgres://app:pw@127.0.0.1/app')",
        )
        .await?;
    drop(client);

    first.signal(Signal::SIGTERM)?;
    let status = first.wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(!process_alive(pid), "postmaster {pid} left running");
    let log = first.log_lines().join("\n");
    assert!(
        !log.contains(password.trim()),
        "the password reached the log"
    );

    let mut second = ServerProcess::start(&["--data-dir", data_arg]).await?;
    let client = PoolplaneClient::connect(second.addr.to_string()).await?;
    let pools = client.list_pools().await?;
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].name, "kept");
    let (second_pid, _) = postmaster_pid(&data_dir)?;
    second.signal(Signal::SIGTERM)?;
    assert_eq!(
        second.wait_exit(Duration::from_secs(10)).await?.code(),
        Some(0)
    );
    assert!(!process_alive(second_pid));
    Ok(())
}

#[tokio::test]
async fn sigkill_of_the_server_leaves_no_postgres_running() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("poolplane");
    let mut server =
        ServerProcess::start(&["--data-dir", data_dir.to_str().context("utf-8")?]).await?;
    let (pid, _) = postmaster_pid(&data_dir)?;
    server.signal(Signal::SIGKILL)?;
    server.wait_exit(Duration::from_secs(10)).await?;
    poolplane_tests::wait_until(
        Duration::from_secs(15),
        "the postmaster has exited",
        || async { !process_alive(pid) },
    )
    .await
}

#[tokio::test]
async fn bad_flag_values_are_refused_with_the_flag_named() -> anyhow::Result<()> {
    let output = tokio::process::Command::new(ServerProcess::binary()?)
        .args(["--shutdown-grace", "10"])
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--shutdown-grace") && stderr.contains("no unit"),
        "{stderr}"
    );
    Ok(())
}
