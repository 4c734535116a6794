//! The built poolctl binary against a real server: create, list, stats as JSON,
//! a load test to its graded summary, delete, and its errors.

use std::process::Output;

use poolplane_tests::{TestPg, TestServer, built_binary};

async fn poolctl(server: &TestServer, args: &[&str]) -> anyhow::Result<Output> {
    poolctl_with(server, args, &[], None).await
}

/// poolctl with extra environment variables and, optionally, standard input.
async fn poolctl_with(
    server: &TestServer,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> anyhow::Result<Output> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(built_binary("poolctl")?)
        .arg("--server")
        .arg(server.addr.to_string())
        .args(args)
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().expect("piped");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await?;
    }
    drop(input);
    Ok(child.wait_with_output().await?)
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

    // A value outside the recommended ranges is made, with a warning on stderr; the
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

/// `postgres://user@host:port/db` of a test database: its URL without the password.
fn without_password(url: &str) -> anyhow::Result<(String, String)> {
    let password = poolplane::conninfo::password(url).expect("the test URL has a password");
    let bare = url.replacen(&format!(":{password}@"), "@", 1);
    anyhow::ensure!(bare != url, "{url}");
    Ok((bare, password))
}

#[tokio::test]
async fn passwords_come_from_pgpassword_pgpass_or_stdin_never_argv() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let (bare, password) = without_password(db.url())?;

    // No password anywhere: the server says why.
    let none = poolctl(&server, &["pools", "create", "nopw", "--url", &bare]).await?;
    assert!(!none.status.success());

    let from_env = poolctl_with(
        &server,
        &["pools", "create", "from-env", "--url", &bare],
        &[("PGPASSWORD", &password), ("PGPASSFILE", "/nonexistent")],
        None,
    )
    .await?;
    assert!(from_env.status.success(), "{}", stderr(&from_env));

    let dir = tempfile::tempdir()?;
    // ~/.pgpass, with HOME pointing at a directory of the test's own.
    let pgpass = dir.path().join(".pgpass");
    let url = url_parts(&bare)?;
    std::fs::write(
        &pgpass,
        format!(
            "# a comment\nelsewhere:*:*:*:wrong\n{}:{}:*:{}:{}\n",
            url.0,
            url.1,
            url.2,
            password.replace('\\', "\\\\").replace(':', "\\:")
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600))?;
    let home = dir.path().to_str().expect("utf-8");
    let from_file = poolctl_with(
        &server,
        &["pools", "create", "from-pgpass", "--url", &bare],
        &[("HOME", home)],
        None,
    )
    .await?;
    assert!(from_file.status.success(), "{}", stderr(&from_file));

    let from_stdin = poolctl_with(
        &server,
        &[
            "pools",
            "create",
            "from-stdin",
            "--url",
            &bare,
            "--password-stdin",
        ],
        &[("PGPASSFILE", "/nonexistent")],
        Some(&format!("{password}\n")),
    )
    .await?;
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
    for name in ["from-env", "from-pgpass", "from-stdin"] {
        assert_eq!(
            server.client.get_pool_stats(name).await?.connection_errors,
            0
        );
    }
    server.shutdown().await
}

/// (host, port, user) of a `postgres://user@host:port/db` URL.
fn url_parts(url: &str) -> anyhow::Result<(String, String, String)> {
    let rest = url.strip_prefix("postgres://").expect("a postgres:// URL");
    let (user, rest) = rest.split_once('@').expect("a user");
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').expect("a port");
    Ok((host.to_owned(), port.to_owned(), user.to_owned()))
}

#[tokio::test]
async fn server_strings_lose_their_escape_sequences_and_times_are_rfc_3339() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let hostile = "postgres://u:p@bad\u{1b}[31mhost\u{7}.invalid/db";
    let refused = poolctl(&server, &["pools", "create", "hostile", "--url", hostile]).await?;
    assert!(!refused.status.success());
    let text = stderr(&refused);
    assert!(text.starts_with("error: "), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "control characters printed: {text:?}"
    );

    server
        .client
        .create_pool(
            "timed",
            db.url(),
            poolplane_client::PoolConfigBuilder::new()
                .max_connections(2)
                .min_connections(1)
                .build(),
        )
        .await?;
    server
        .client
        .update_pool_config(
            "timed",
            poolplane_client::PoolConfigBuilder::new()
                .max_connections(3)
                .build(),
        )
        .await?;
    let table = poolctl(&server, &["history", "timed", "--changes"]).await?;
    let row = stdout(&table)
        .lines()
        .find(|l| l.contains("max_connections"))
        .map(str::to_owned)
        .unwrap_or_default();
    let at = row.split_whitespace().next().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok(),
        "a local RFC 3339 time: {row:?}"
    );
    let json = poolctl(
        &server,
        &["history", "timed", "--changes", "--output", "json"],
    )
    .await?;
    let first: serde_json::Value =
        serde_json::from_str(stdout(&json).lines().next().unwrap_or_default())?;
    let at = first["changed_at"].as_str().unwrap_or_default();
    assert!(at.ends_with('Z'), "UTC in JSON: {first}");
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{first}");

    let completions = poolctl(&server, &["completions", "bash"]).await?;
    assert!(completions.status.success());
    assert!(
        stdout(&completions).contains("poolctl"),
        "a bash completion script"
    );
    server.shutdown().await
}

#[tokio::test]
async fn pools_list_watch_prints_the_list_again_on_a_change() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let mut child = tokio::process::Command::new(built_binary("poolctl")?)
        .args(["--server", &server.addr.to_string(), "--output", "json"])
        .args(["pools", "list", "--watch"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await??
        .unwrap_or_default();
    assert_eq!(first.trim(), "[]", "the list before any change");
    let config = poolplane_client::PoolConfigBuilder::new()
        .max_connections(2)
        .min_connections(1)
        .build();
    server
        .client
        .create_pool("appeared", db.url(), config)
        .await?;
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await??
        .unwrap_or_default();
    let list: serde_json::Value = serde_json::from_str(next.trim())?;
    assert_eq!(list[0]["name"], "appeared", "{next}");
    child.kill().await?;
    server.shutdown().await
}

#[tokio::test]
async fn query_prints_rows_as_a_table_or_json() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let config = poolplane_client::PoolConfigBuilder::new()
        .max_connections(2)
        .min_connections(1)
        .build();
    server.client.create_pool("q", db.url(), config).await?;
    let sql = "SELECT $1::int4 + 1 AS n, NULL::text AS t, $2::numeric AS price";
    let table = poolctl(&server, &["query", "q", sql, "41", "9.50"]).await?;
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split('|').map(str::trim).collect::<Vec<_>>(),
        ["n", "t", "price"],
        "{text}"
    );
    assert_eq!(
        lines[2].split('|').map(str::trim).collect::<Vec<_>>(),
        ["42", "NULL", "9.50"],
        "{text}"
    );
    assert_eq!(lines[3], "(1 row)");
    let json = poolctl(
        &server,
        &["query", "q", sql, "41", "9.50", "--output", "json"],
    )
    .await?;
    let row: serde_json::Value = serde_json::from_str(stdout(&json).trim())?;
    assert_eq!(
        row,
        serde_json::json!({"n": 42, "t": null, "price": "9.50"})
    );
    let failed = poolctl(&server, &["query", "q", "SELECT 1/0"]).await?;
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("division by zero"),
        "{}",
        stderr(&failed)
    );
    server.shutdown().await
}
