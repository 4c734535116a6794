//! The built poolctl binary against a real server: create, list, stats as JSON,
//! a load test to its graded summary, delete, and its errors.

use std::process::Output;

use poolplane_tests::{TestPg, TestServer, built_binary};

async fn poolctl(server: &TestServer, args: &[&str]) -> anyhow::Result<Output> {
    Ok(tokio::process::Command::new(built_binary("poolctl")?)
        .arg("--server")
        .arg(server.addr.to_string())
        .args(args)
        .output()
        .await?)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn create_list_stats_loadtest_and_delete() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;

    let created = poolctl(
        &server,
        &[
            "pools",
            "create",
            "primary",
            "--url",
            db.url(),
            "--min",
            "2",
            "--max",
            "10",
            "--enable-dynamic-sizing",
            "false",
            "--warmup-query",
            "SET statement_timeout = '5s'",
        ],
    )
    .await?;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stdout(&created).contains("min 2 / max 10"),
        "{}",
        stdout(&created)
    );
    assert!(
        !stdout(&created).contains(&poolplane::conninfo::password(db.url()).unwrap_or_default())
    );

    let list = poolctl(&server, &["pools", "list"]).await?;
    let table = stdout(&list);
    assert!(
        table.lines().next().is_some_and(|h| h.starts_with("NAME")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("primary") && l.contains("healthy")),
        "{table}"
    );

    let stats = poolctl(&server, &["stats", "primary", "--output", "json"]).await?;
    assert!(stats.status.success(), "{}", stderr(&stats));
    let json: serde_json::Value = serde_json::from_str(stdout(&stats).trim())?;
    assert_eq!(json["pool_name"], "primary");
    assert_eq!(json["connections"], 2);
    assert_eq!(json["max_connections"], 10);

    let test = poolctl(&server, &["loadtest", "primary", "-c", "4", "-d", "2"]).await?;
    assert!(test.status.success(), "{}", stderr(&test));
    let summary = stdout(&test);
    let grade = summary
        .lines()
        .find_map(|l| l.strip_prefix("Grade: "))
        .expect("a graded summary");
    assert!(["A", "B", "C", "D", "F"].contains(&grade), "{summary}");
    assert!(summary.contains("Requests per second:"), "{summary}");
    assert!(
        stderr(&test).contains("req/s"),
        "progress lines: {}",
        stderr(&test)
    );

    // A value outside the seed's guidance is made, with a warning on stderr; the
    // change is on record.
    let update = poolctl(
        &server,
        &[
            "pools",
            "update",
            "primary",
            "--max",
            "12",
            "--max-failed-health-checks",
            "10",
        ],
    )
    .await?;
    assert!(update.status.success(), "{}", stderr(&update));
    assert!(
        stderr(&update).contains("warning: config.max_failed_health_checks: 10 is outside the 3-5"),
        "{}",
        stderr(&update)
    );
    let changes = poolctl(&server, &["history", "primary", "--changes"]).await?;
    assert!(changes.status.success(), "{}", stderr(&changes));
    let table = stdout(&changes);
    let max_row = table
        .lines()
        .find(|l| l.contains("max_connections"))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = max_row.split_whitespace().collect();
    assert_eq!(
        &cells[1..6],
        ["max_connections", "10", "12", "admin", "yes"],
        "{table}"
    );
    assert!(table.contains("max_failed_health_checks"), "{table}");

    let optimize = poolctl(&server, &["optimize", "--output", "json"]).await?;
    let report: serde_json::Value = serde_json::from_str(stdout(&optimize).trim())?;
    assert_eq!(report["total_pools"], 1);

    let deleted = poolctl(&server, &["pools", "delete", "primary"]).await?;
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let empty = poolctl(&server, &["pools", "list", "--output", "json"]).await?;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(stdout(&empty).trim())?,
        serde_json::json!([])
    );
    server.shutdown().await
}

#[tokio::test]
async fn errors_are_one_line_with_an_exit_code() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let bad_flag = poolctl(
        &server,
        &[
            "pools",
            "create",
            "x",
            "--url",
            "postgres://h/db",
            "--max",
            "abc",
        ],
    )
    .await?;
    assert_eq!(bad_flag.status.code(), Some(2));
    assert!(
        stderr(&bad_flag).contains("invalid value 'abc' for '--max"),
        "{}",
        stderr(&bad_flag)
    );

    let missing = poolctl(&server, &["pools", "get", "nope"]).await?;
    assert_eq!(missing.status.code(), Some(1));
    let line = stderr(&missing);
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    assert!(
        line.starts_with("error: NotFound: pool `nope` not found"),
        "{line}"
    );

    let invalid = poolctl(
        &server,
        &[
            "pools",
            "create",
            "Bad",
            "--url",
            "postgres://h/db",
            "--max",
            "0",
        ],
    )
    .await?;
    assert_eq!(invalid.status.code(), Some(1));
    let line = stderr(&invalid);
    assert!(
        line.contains("name:") && line.contains("config.max_connections"),
        "{line}"
    );
    server.shutdown().await
}
