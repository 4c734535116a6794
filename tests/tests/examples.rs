//! Every SDK example program runs against a real server and database.

use poolplane_tests::{TestPg, TestServer, built_binary};

/// Runs a built example with `args`; returns its output if it succeeded.
async fn run_example(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(built_binary(&format!("examples/{name}"))?)
        .args(args)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "example {name} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

#[tokio::test]
async fn every_example_runs() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let addr = server.addr.to_string();

    let out = run_example("pool_service", &[&addr, db.url()]).await?;
    assert!(out.contains("created primary and cache"), "{out}");
    assert!(out.contains("Pool utilization:"), "{out}");

    let out = run_example("monitoring", &[&addr, db.url()]).await?;
    for line in [
        "Utilization:",
        "Average acquire time:",
        "Pool healthy: true",
        "Response time:",
        "Cache hit rate:",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    let out = run_example("load_testing", &[&addr, db.url()]).await?;
    for line in [
        "Total requests:",
        "Error rate: 0.00%",
        "Requests per second:",
        "Grade:",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    let out = run_example("optimization", &[&addr, db.url()]).await?;
    for line in [
        "Optimized 1/1 pools",
        "Pool 'starved'",
        "Increase max_connections",
        "applied: max_connections: 2 -> ",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    assert!(
        server.client.list_pools().await?.is_empty(),
        "the examples clean up"
    );
    server.shutdown().await
}

#[tokio::test]
async fn every_engine_example_runs() -> anyhow::Result<()> {
    let db = TestPg::database().await?;
    let out = run_example("creating_pools", &[db.url()]).await?;
    for line in [
        "SELECT 1 as test -> 1",
        "Pool healthy: true",
        "production: max 200 min 50",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    let out = run_example("in_process_metrics", &[db.url()]).await?;
    // The application's own metric beside the whole catalogue, read from its pool.
    assert!(out.contains("orders_handled_total 20"), "{out}");
    for def in poolplane::metrics::CATALOGUE {
        let name = def.prometheus_name();
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("# TYPE {}", def.name.replace('.', "_")))),
            "{name} is not described in:\n{out}"
        );
    }
    assert!(
        out.contains(r#"poolplane_queries_total{db_client_connection_pool_name="orders"} 20"#),
        "{out}"
    );
    let out = run_example("service_integration", &[db.url()]).await?;
    for line in [
        "Total requests:",
        "Grade:",
        "Pool utilization:",
        "Optimized ",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    Ok(())
}
