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

/// The number printed after `label` on its line (e.g. `Utilization: 12.50%` -> 12.5).
fn number_after(out: &str, label: &str) -> anyhow::Result<f64> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .ok_or_else(|| anyhow::anyhow!("missing `{label}` in:\n{out}"))?;
    let number: String = line
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-' || *c == 'e')
        .collect();
    number
        .parse()
        .map_err(|e| anyhow::anyhow!("`{label}{line}`: {e}"))
}

/// A percentage, checked to be one.
fn percent_after(out: &str, label: &str) -> anyhow::Result<f64> {
    let value = number_after(out, label)?;
    anyhow::ensure!((0.0..=100.0).contains(&value), "{label} {value} in:\n{out}");
    Ok(value)
}

#[tokio::test]
async fn every_example_runs() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let addr = server.addr.to_string();

    let out = run_example("pool_service", &[&addr, db.url()]).await?;
    assert!(out.contains("created primary and cache"), "{out}");
    // Nothing is checked out of a pool just created.
    assert_eq!(percent_after(&out, "Pool utilization:")?, 0.0, "{out}");

    let out = run_example("monitoring", &[&addr, db.url()]).await?;
    assert!(out.contains("Pool healthy: true"), "{out}");
    // A new pool, nothing run on it yet: no use, no checkout, no cache lookup.
    assert_eq!(percent_after(&out, "Utilization:")?, 0.0, "{out}");
    assert_eq!(number_after(&out, "Average acquire time:")?, 0.0, "{out}");
    assert_eq!(percent_after(&out, "Cache hit rate:")?, 0.0, "{out}");
    let response = number_after(&out, "Response time:")?;
    assert!(response >= 0.0 && response.is_finite(), "{out}");
    let out = run_example("load_testing", &[&addr, db.url()]).await?;
    assert_eq!(percent_after(&out, "Error rate:")?, 0.0, "{out}");
    let total = number_after(&out, "Total requests:")?;
    let rps = number_after(&out, "Requests per second:")?;
    // The example measures for 2 s: the rate is the requests over that time.
    assert!(total > 0.0, "{out}");
    let ratio = rps * 2.0 / total;
    assert!(
        (0.8..=1.25).contains(&ratio),
        "rps {rps} x 2 s vs {total}:\n{out}"
    );
    let grade = out
        .lines()
        .find_map(|l| l.strip_prefix("Grade: "))
        .unwrap_or_default();
    assert!(["A", "B", "C", "D", "F"].contains(&grade), "{out}");
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
