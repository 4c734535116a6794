//! The soak (not in CI): the release `poolplane-server` binary under steady load
//! for a while (10 minutes by default) with a pool created and deleted every
//! second; RSS, file descriptors and runtime tasks are sampled every 10 s and
//! compared, at the end, with their values after a one-minute warm-up. Exits 1 if
//! RSS or descriptors grew by more than 10%.
//!
//! Run: `bash tests/soak.sh [SECONDS]` (builds the release binaries first).

use std::time::{Duration, Instant};

use poolplane_client::PoolplaneClient;
use poolplane_client::proto::run_load_test_response::Update;
use poolplane_client::proto::{PoolConfig, RunLoadTestRequest};
use poolplane_tests::{ServerProcess, TestPg, server_resources};

const WARM_UP: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: f64,
    tasks: f64,
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))
}

fn config(max: u32, min: u32) -> PoolConfig {
    PoolConfig {
        enable_dynamic_sizing: Some(false),
        ..poolplane_tests::proto_config(min, max)
    }
}

#[tokio::main]
#[expect(
    clippy::too_many_lines,
    reason = "the soak script: start, drive, sample and check, in the order they run"
)]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(600);
    let total = Duration::from_secs(seconds).max(WARM_UP + SAMPLE_EVERY);
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let server = ServerProcess::start(&["--database-url", control.url()]).await?;
    let metrics = server.start_line["metrics"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no metrics address"))?
        .parse()?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    client.create_pool("steady", db.url(), config(8, 4)).await?;
    let started = Instant::now();
    let end = started + total;

    // Steady load: back-to-back 30 s open-loop tests at 300 requests/s.
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut requests = 0u64;
            let mut failed = 0u64;
            while Instant::now() + Duration::from_secs(31) < end {
                let mut stream = client
                    .run_load_test(RunLoadTestRequest {
                        pool_name: "steady".into(),
                        concurrency: 16,
                        duration_secs: 30,
                        query: "SELECT pg_sleep(0.001)".into(),
                        target_rps: Some(300.0),
                        ..RunLoadTestRequest::default()
                    })
                    .await?;
                while let Some(update) = stream.next().await? {
                    if let Update::Result(r) = update {
                        requests += r.total_requests;
                        failed += r.failed_requests;
                    }
                }
            }
            anyhow::Ok((requests, failed))
        })
    };
    // Churn: a pool created and deleted every second.
    let churn = {
        let (client, url) = (client.clone(), db.url().to_owned());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let name = format!("churn-{}", n % 1000);
                client.create_pool(&name, &url, config(2, 1)).await?;
                client.delete_pool(&name).await?;
                n += 1;
            }
            anyhow::Ok(n)
        })
    };

    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    while Instant::now() < end {
        tick.tick().await;
        let resources = server_resources(metrics).await?;
        let sample = Sample {
            at: started.elapsed(),
            rss_kib: rss_kib(server.pid())?,
            fds: resources.fds,
            tasks: resources.tasks,
        };
        println!(
            "{:>5.0}s  rss {:>7} KiB  fds {:>4}  tasks {:>4}",
            sample.at.as_secs_f64(),
            sample.rss_kib,
            sample.fds,
            sample.tasks
        );
        samples.push(sample);
    }
    let (requests, failed) = load.await??;
    let churned = churn.await??;
    let first = samples[0];
    let warm = *samples
        .iter()
        .find(|s| s.at >= WARM_UP)
        .unwrap_or(&samples[0]);
    let last = *samples.last().unwrap_or(&warm);
    let growth = |a: f64, b: f64| (b - a) / a * 100.0;
    let rss_growth = growth(warm.rss_kib as f64, last.rss_kib as f64);
    let fds_growth = growth(warm.fds, last.fds);
    println!();
    println!(
        "| | start | after warm-up ({} s) | end ({} s) | end vs warm-up |",
        warm.at.as_secs(),
        last.at.as_secs()
    );
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| RSS (KiB) | {} | {} | {} | {rss_growth:+.1}% |",
        first.rss_kib, warm.rss_kib, last.rss_kib
    );
    println!(
        "| file descriptors | {} | {} | {} | {fds_growth:+.1}% |",
        first.fds, warm.fds, last.fds
    );
    println!(
        "| runtime tasks | {} | {} | {} | {:+.1}% |",
        first.tasks,
        warm.tasks,
        last.tasks,
        growth(warm.tasks, last.tasks)
    );
    println!();
    println!(
        "{requests} load-test requests ({failed} failed), {churned} pools created and deleted in {} s",
        started.elapsed().as_secs()
    );
    if rss_growth > 10.0 || fds_growth > 10.0 {
        anyhow::bail!("not flat: RSS {rss_growth:+.1}%, descriptors {fds_growth:+.1}%");
    }
    Ok(())
}
