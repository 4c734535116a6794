//! Reliability of the server process: SIGKILL in the middle of a CreatePool or a
//! rebuilding UpdatePoolConfig leaves registry and stored definitions in
//! agreement; SIGTERM during a load test, with watch streams open and a CreatePool
//! stuck on a blackholed database, ends every stream with a clear status, lets the
//! unary call in flight finish and exits 0 within the grace period.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use poolplane_client::proto::run_load_test_response::Update;
use poolplane_client::proto::{PoolConfig, RunLoadTestRequest};
use poolplane_client::{PoolplaneClient, Watch};
use poolplane_tests::{FaultProxy, ServerProcess, TestDatabase, TestPg, wait_until};
use tonic::Code;

fn config(acquire_timeout_secs: u64) -> PoolConfig {
    PoolConfig {
        acquire_timeout_secs: Some(acquire_timeout_secs),
        ..poolplane_tests::proto_config(1, 2)
    }
}

/// The pools the server lists, and the definitions stored: name -> max_connections.
async fn both_views(
    client: &PoolplaneClient,
    control: &TestDatabase,
) -> anyhow::Result<(BTreeMap<String, u32>, BTreeMap<String, u32>)> {
    let listed = client
        .list_pools()
        .await?
        .into_iter()
        .map(|p| {
            let max = p.config.and_then(|c| c.max_connections).unwrap_or(0);
            (p.name, max)
        })
        .collect();
    let store = control.connect().await?;
    let stored = store
        .query(
            "SELECT name, (config->>'max_connections')::int8 FROM pool_definitions",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u32))
        .collect();
    Ok((listed, stored))
}

/// Reads a watch to its end: `None` if it ended cleanly, else the status code.
async fn end_of<M, T>(watch: &mut Watch<M, T>) -> anyhow::Result<Option<Code>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await? {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(None),
            Err(e) => return Ok(Some(e.code())),
        }
    }
}

#[tokio::test]
async fn scenario_5_sigkill_mid_change_leaves_no_half_created_pool() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let proxy = FaultProxy::start(db.server_addr()?).await?;
    let via_proxy = db.url_via(proxy.addr());
    let args = ["--database-url", control.url()];

    // A CreatePool stuck on a blackholed database when the server is killed.
    let mut server = ServerProcess::start(&args).await?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    client.create_pool("steady", &via_proxy, config(20)).await?;
    proxy.blackhole();
    let stuck = {
        let (client, url) = (client.clone(), via_proxy.clone());
        tokio::spawn(async move { client.create_pool("half", &url, config(20)).await })
    };
    wait_until(Duration::from_secs(10), "the create is stuck", || async {
        proxy.blackholed() >= 1
    })
    .await?;
    server.signal(Signal::SIGKILL)?;
    server.wait_exit(Duration::from_secs(10)).await?;
    assert!(stuck.await?.is_err());

    // A rebuilding update stuck the same way.
    let mut server = ServerProcess::start(&args).await?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    // Restore and health checks toward the blackhole are held too: count from here.
    let held_before = proxy.blackholed();
    let rebuild = {
        let client = client.clone();
        tokio::spawn(async move {
            let bigger = PoolConfig {
                max_connections: Some(5),
                ..PoolConfig::default()
            };
            client.update_pool_config("steady", bigger).await
        })
    };
    wait_until(Duration::from_secs(10), "the rebuild is stuck", || async {
        proxy.blackholed() > held_before
    })
    .await?;
    server.signal(Signal::SIGKILL)?;
    server.wait_exit(Duration::from_secs(10)).await?;
    assert!(rebuild.await?.is_err());

    proxy.restore();
    let server = ServerProcess::start(&args).await?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    let (listed, stored) = both_views(&client, &control).await?;
    assert_eq!(listed, stored, "registry and stored definitions disagree");
    assert_eq!(
        listed,
        BTreeMap::from([("steady".to_owned(), 2)]),
        "no half-created pool, no half-applied change"
    );
    Ok(())
}

#[tokio::test]
async fn scenario_6_sigterm_ends_streams_and_exits_within_the_grace() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let blackhole = FaultProxy::start(db.server_addr()?).await?;
    blackhole.blackhole();
    let slow = FaultProxy::start(db.server_addr()?).await?;
    let mut server =
        ServerProcess::start(&["--database-url", control.url(), "--shutdown-grace", "6s"]).await?;
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    client.create_pool("busy", db.url(), config(5)).await?;

    let mut stats = client.watch_pool_stats(&["busy"], 100).await?;
    let mut events = client.watch_health_events(&["busy"]).await?;
    stats.next().await?.expect("a first snapshot");
    events.next().await?.expect("the current health");
    let mut test = client
        .run_load_test(RunLoadTestRequest {
            pool_name: "busy".into(),
            concurrency: 2,
            duration_secs: 30,
            query: "SELECT pg_sleep(0.01)".into(),
            ..RunLoadTestRequest::default()
        })
        .await?;
    let stuck = {
        let (client, url) = (client.clone(), db.url_via(blackhole.addr()));
        tokio::spawn(async move { client.create_pool("stuck", &url, config(30)).await })
    };
    // A unary call in flight: a CreatePool whose connection takes a second.
    slow.set_delay(Duration::from_secs(1));
    let in_flight = {
        let (client, url) = (client.clone(), db.url_via(slow.addr()));
        tokio::spawn(async move { client.create_pool("slow", &url, config(5)).await })
    };
    wait_until(
        Duration::from_secs(10),
        "both creates are in flight",
        || async { blackhole.blackholed() >= 1 && slow.peak_delayed() >= 1 },
    )
    .await?;

    let sigterm = Instant::now();
    server.signal(Signal::SIGTERM)?;
    // The grace (6 s) leaves the call in flight room even on a loaded machine (its
    // one connection takes a second through the proxy, and it must open within
    // its own 5 s acquire timeout).
    let status = server.wait_exit(Duration::from_secs(6 + 5)).await?;
    let took = sigterm.elapsed();
    assert_eq!(status.code(), Some(0), "exit status");
    assert!(took < Duration::from_secs(6 + 2), "exit took {took:?}");

    in_flight.await?.expect("the unary call in flight finished");
    let stuck = stuck.await?.expect_err("the stuck create cannot succeed");
    assert!(
        matches!(stuck.code(), Code::Unavailable | Code::Cancelled),
        "{stuck}"
    );
    // Every stream ends with a clear status (or cleanly), none hangs.
    let mut ends = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), test.next()).await? {
            Ok(Some(Update::Progress(_))) => {}
            Ok(Some(Update::Result(result))) => panic!("a graded result after SIGTERM: {result:?}"),
            Ok(None) => break ends.push(None),
            Err(e) => break ends.push(Some(e.code())),
        }
    }
    ends.push(end_of(&mut stats).await?);
    ends.push(end_of(&mut events).await?);
    assert!(
        ends.iter()
            .all(|e| matches!(e, Some(Code::Unavailable) | Some(Code::Cancelled) | None)),
        "{ends:?}"
    );
    assert!(
        ends.contains(&Some(Code::Unavailable)),
        "no stream said the server is shutting down: {ends:?}"
    );
    let log = server.log_lines().join("\n");
    assert!(log.contains("poolplane-server stopped"), "{log}");
    Ok(())
}
