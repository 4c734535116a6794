//! `poolplane-server --demo` on a fresh data directory, driven by the built
//! binaries as a new user would: `poolctl loadtest demo` prints a graded result,
//! `poolctl stats demo` shows a live pool, and a second start on the same
//! directory finds everything again.

use std::process::Output;
use std::time::Duration;

use nix::sys::signal::Signal;
use poolplane_tests::{ServerProcess, TestPg, built_binary};

async fn poolctl(server: &ServerProcess, args: &[&str]) -> anyhow::Result<Output> {
    Ok(tokio::process::Command::new(built_binary("poolctl")?)
        .arg("--server")
        .arg(server.addr.to_string())
        .args(args)
        .output()
        .await?)
}

/// Runs `poolctl top` in a detached tmux session of 120x30 and returns the
/// screen once it shows a pool (or after 10 s).
async fn top_in_tmux(server: &ServerProcess) -> anyhow::Result<String> {
    let session = format!("poolctl-top-{}", std::process::id());
    let command = format!(
        "{} --server {} top",
        built_binary("poolctl")?.display(),
        server.addr
    );
    let tmux = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        async move {
            tokio::process::Command::new("tmux")
                .args(&args)
                .output()
                .await
                .map_err(|e| anyhow::anyhow!("tmux: {e} (install it: apt-get install -y tmux)"))
        }
    };
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "30",
        &command,
    ])
    .await?;
    anyhow::ensure!(started.status.success(), "{}", text(&started.stderr));
    let mut screen = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        screen = text(&tmux(&["capture-pane", "-p", "-t", &session]).await?.stdout);
        if screen.contains("healthy") {
            break;
        }
    }
    tmux(&["kill-session", "-t", &session]).await?;
    Ok(screen)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_demo_shows_a_live_pool_and_survives_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().expect("utf-8");
    let mut server = ServerProcess::start(&["--demo", "--data-dir", data_dir]).await?;

    let test = poolctl(&server, &["loadtest", "demo", "-c", "16", "-d", "5"]).await?;
    assert!(test.status.success(), "{}", text(&test.stderr));
    let summary = text(&test.stdout);
    let grade = summary
        .lines()
        .find_map(|l| l.strip_prefix("Grade: "))
        .unwrap_or_else(|| panic!("a graded result: {summary}"));
    assert!(["A", "B"].contains(&grade), "{summary}");
    assert!(summary.contains("Error rate: 0.00%"), "{summary}");

    // `poolctl top` in a real terminal (tmux) shows the demo pool.
    let screen = top_in_tmux(&server).await?;
    assert!(
        screen
            .lines()
            .any(|l| l.contains("demo") && l.contains("healthy") && l.contains('%')),
        "{screen}"
    );

    let stats = poolctl(&server, &["stats", "demo", "--output", "json"]).await?;
    let stats: serde_json::Value = serde_json::from_str(text(&stats.stdout).trim())?;
    assert_eq!(stats["pool_name"], "demo");
    assert!(stats["connections"].as_u64() >= Some(2), "{stats}");
    assert!(stats["total_queries"].as_u64() > Some(1000), "{stats}");

    // The pool runs as the demo's own role, on its own database.
    let pool = poolctl(&server, &["pools", "get", "demo", "--output", "json"]).await?;
    let pool: serde_json::Value = serde_json::from_str(text(&pool.stdout).trim())?;
    let url = pool["database_url"].as_str().unwrap_or_default();
    assert!(
        url.starts_with("postgres://poolplane_demo:***@127.0.0.1:")
            && url.ends_with("/poolplane_demo"),
        "{url}"
    );
    let mode = std::fs::metadata(dir.path().join("demo.password"))?;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);

    server.signal(Signal::SIGTERM)?;
    assert!(server.wait_exit(Duration::from_secs(15)).await?.success());

    // Again on the same directory: nothing is created twice, the pool follows the
    // cluster's new port, and the data set is there.
    let mut again = ServerProcess::start(&["--demo", "--data-dir", data_dir]).await?;
    let list = poolctl(&again, &["pools", "list", "--output", "json"]).await?;
    let list: serde_json::Value = serde_json::from_str(text(&list.stdout).trim())?;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let point = poolctl(
        &again,
        &[
            "loadtest",
            "demo",
            "-c",
            "4",
            "-d",
            "1",
            "--query",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 100000",
        ],
    )
    .await?;
    assert!(point.status.success(), "{}", text(&point.stderr));
    assert!(
        text(&point.stdout).contains("Error rate: 0.00%"),
        "{}",
        text(&point.stdout)
    );
    again.signal(Signal::SIGTERM)?;
    assert!(again.wait_exit(Duration::from_secs(15)).await?.success());
    Ok(())
}

#[tokio::test]
async fn the_demo_needs_the_embedded_cluster() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let stderr = ServerProcess::refused_start(&["--demo", "--database-url", control.url()]).await?;
    assert!(
        stderr.contains("--demo: sets up the demo on the embedded PostgreSQL"),
        "{stderr}"
    );
    Ok(())
}
