//! QueryService end to end against a real PostgreSQL: every mapped type both
//! ways (NULLs and arrays included), transactions all or nothing, deadlines and
//! callers that go away cancel in PostgreSQL and leave the connection usable, the
//! statement cache serves repeated SQL, and errors carry their SQLSTATE.

use std::time::{Duration, Instant, SystemTime};

use poolplane_client::proto::value::Kind;
use poolplane_client::proto::{PoolConfig, QueryRequest, Value, ValueList};
use poolplane_client::{IntoValue, params};
use poolplane_tests::{TestPg, TestServer, wait_until};
use tonic::Code;

fn config() -> PoolConfig {
    poolplane_tests::proto_config(1, 4)
}

fn v(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

#[tokio::test]
async fn every_mapped_type_round_trips() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let client = &server.client;
    client.create_pool("types", db.url(), config()).await?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_900_000_123_456);
    // (cast, parameter, the cell expected back)
    let cases: Vec<(&str, Value, Value)> = vec![
        ("bool", true.into_value(), true.into_value()),
        ("int2", 7i64.into_value(), 7i64.into_value()),
        (
            "int4",
            (-123_456i64).into_value(),
            (-123_456i64).into_value(),
        ),
        ("int8", i64::MAX.into_value(), i64::MAX.into_value()),
        ("float4", 1.5f64.into_value(), 1.5f64.into_value()),
        ("float8", 0.1f64.into_value(), 0.1f64.into_value()),
        (
            "numeric",
            v(Kind::NumericValue("-12345678901234567890.0100".into())),
            v(Kind::NumericValue("-12345678901234567890.0100".into())),
        ),
        ("text", "héllo 'x'".into_value(), "héllo 'x'".into_value()),
        ("varchar", "v".into_value(), "v".into_value()),
        ("bpchar", "ab".into_value(), "ab".into_value()),
        (
            "bytea",
            vec![0u8, 1, 255].into_value(),
            vec![0u8, 1, 255].into_value(),
        ),
        ("timestamptz", at.into_value(), at.into_value()),
        ("timestamp", at.into_value(), at.into_value()),
        (
            "date",
            v(Kind::DateValue("2026-11-28".into())),
            v(Kind::DateValue("2026-11-28".into())),
        ),
        (
            "time",
            v(Kind::TimeValue("13:45:00.5".into())),
            v(Kind::TimeValue("13:45:00.5".into())),
        ),
        (
            "interval",
            v(Kind::IntervalValue("1 year 2 mons 3 days 04:05:06".into())),
            v(Kind::IntervalValue("1 year 2 mons 3 days 04:05:06".into())),
        ),
        (
            "uuid",
            v(Kind::UuidValue(
                "0e37df36-f698-11e6-8dd4-cb9ced3df976".into(),
            )),
            v(Kind::UuidValue(
                "0e37df36-f698-11e6-8dd4-cb9ced3df976".into(),
            )),
        ),
        (
            "json",
            v(Kind::JsonValue(r#"{"a":[1,2]}"#.into())),
            v(Kind::JsonValue(r#"{"a":[1,2]}"#.into())),
        ),
        (
            "jsonb",
            v(Kind::JsonValue(r#"{"b": true}"#.into())),
            v(Kind::JsonValue(r#"{"b":true}"#.into())),
        ),
        ("int4", None::<i64>.into_value(), v(Kind::NullValue(0))),
        (
            "int8[]",
            vec![Some(1i64), None, Some(3)].into_value(),
            vec![Some(1i64), None, Some(3)].into_value(),
        ),
        (
            "text[]",
            vec!["a\"b", "c,d"].into_value(),
            vec!["a\"b", "c,d"].into_value(),
        ),
        (
            "numeric[]",
            v(Kind::ArrayValue(ValueList {
                values: vec![v(Kind::NumericValue("1.50".into()))],
            })),
            v(Kind::ArrayValue(ValueList {
                values: vec![v(Kind::NumericValue("1.50".into()))],
            })),
        ),
        (
            "uuid[]",
            v(Kind::ArrayValue(ValueList {
                values: vec![v(Kind::UuidValue(
                    "0e37df36-f698-11e6-8dd4-cb9ced3df976".into(),
                ))],
            })),
            v(Kind::ArrayValue(ValueList {
                values: vec![v(Kind::UuidValue(
                    "0e37df36-f698-11e6-8dd4-cb9ced3df976".into(),
                ))],
            })),
        ),
    ];
    for (cast, param, expected) in cases {
        let sql = format!("SELECT $1::{cast} AS v");
        let result = client.query("types", &sql, vec![param]).await?;
        assert_eq!(result.rows.len(), 1, "{cast}");
        assert_eq!(result.rows[0].values(), &[expected], "{cast}");
        let column = &result.columns[0];
        assert_eq!(column.name, "v");
        assert!(column.type_oid > 0, "{cast}");
    }
    // Decoded into Rust types by column name.
    let result = client
        .query(
            "types",
            "SELECT 42::int8 AS id, 'x'::text AS name, NULL::int4 AS missing",
            vec![],
        )
        .await?;
    let row = &result.rows[0];
    assert_eq!(row.get::<i64>("id")?, 42);
    assert_eq!(row.get::<String>("name")?, "x");
    assert_eq!(row.get::<Option<i32>>("missing")?, None);
    assert!(row.get::<i64>("name").is_err());
    // A type that is not mapped names the column and the type.
    let refused = client
        .query("types", "SELECT '(1,2)'::point AS p", vec![])
        .await
        .expect_err("point is not mapped");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.to_string().contains("column `p` has type point"),
        "{refused}"
    );
    server.shutdown().await
}

#[tokio::test]
async fn a_failed_transaction_leaves_nothing_and_errors_carry_their_sqlstate() -> anyhow::Result<()>
{
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let client = &server.client;
    client.create_pool("tx", db.url(), config()).await?;
    client
        .execute(
            "tx",
            "CREATE TABLE items (id int PRIMARY KEY, name text)",
            vec![],
        )
        .await?;
    let failed = client
        .transaction(
            "tx",
            vec![
                (
                    "INSERT INTO items VALUES ($1, $2)".into(),
                    params![1, "one"],
                ),
                (
                    "INSERT INTO items VALUES ($1, $2)".into(),
                    params![2, "two"],
                ),
                (
                    "INSERT INTO items VALUES ($1, $2)".into(),
                    params![1, "again"],
                ),
            ],
            false,
        )
        .await
        .expect_err("a duplicate key");
    assert_eq!(failed.code(), Code::AlreadyExists, "{failed}");
    assert_eq!(failed.sqlstate().as_deref(), Some("23505"));
    let info = failed
        .status()
        .map(tonic_types::StatusExt::get_error_details)
        .and_then(|d| d.error_info().cloned())
        .expect("ErrorInfo");
    assert!(
        info.metadata
            .get("detail")
            .is_some_and(|d| d.contains("(id)=(1)")),
        "{info:?}"
    );
    let count = client
        .query("tx", "SELECT count(*) AS n FROM items", vec![])
        .await?;
    assert_eq!(
        count.rows[0].get::<i64>("n")?,
        0,
        "nothing of the first two"
    );

    let done = client
        .transaction(
            "tx",
            vec![
                (
                    "INSERT INTO items VALUES ($1, $2)".into(),
                    params![1, "one"],
                ),
                ("SELECT name FROM items WHERE id = $1".into(), params![1]),
            ],
            false,
        )
        .await?;
    assert_eq!(done[1].rows[0].get::<String>("name")?, "one");

    let syntax = client
        .query("tx", "SELEC 1", vec![])
        .await
        .expect_err("syntax");
    assert_eq!(syntax.code(), Code::InvalidArgument);
    assert_eq!(syntax.sqlstate().as_deref(), Some("42601"));
    let arity = client
        .query("tx", "SELECT $1::int4", vec![])
        .await
        .expect_err("one parameter missing");
    assert_eq!(arity.code(), Code::InvalidArgument, "{arity}");
    server.shutdown().await
}

/// Backends of pool `pool` running a statement now.
async fn active(admin: &tokio_postgres::Client, pool: &str) -> anyhow::Result<i64> {
    Ok(admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND state = 'active' AND datname = current_database()",
            &[&format!("poolplane:{pool}")],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn deadlines_and_departed_callers_cancel_in_postgres() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    let client = &server.client;
    client.create_pool("slow", db.url(), config()).await?;
    let started = Instant::now();
    let expired = client
        .query_service()
        .query(QueryRequest {
            pool_name: "slow".into(),
            sql: "SELECT pg_sleep(10)".into(),
            timeout_ms: 200,
            ..QueryRequest::default()
        })
        .await
        .expect_err("deadline");
    assert_eq!(expired.code(), Code::DeadlineExceeded, "{expired:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        active(&admin, "slow").await?,
        0,
        "the backend is idle again at once"
    );
    // The connection went back usable: the pool still answers, no new connection.
    let created = client.get_pool_stats("slow").await?.connections_created;
    client.query("slow", "SELECT 1 AS one", vec![]).await?;
    assert_eq!(
        client.get_pool_stats("slow").await?.connections_created,
        created
    );

    // The caller goes away mid-statement.
    let mut service = client.query_service();
    let call = tokio::spawn(async move {
        service
            .query(QueryRequest {
                pool_name: "slow".into(),
                sql: "SELECT pg_sleep(10)".into(),
                ..QueryRequest::default()
            })
            .await
    });
    wait_until(Duration::from_secs(5), "the statement runs", || async {
        active(&admin, "slow").await.ok() == Some(1)
    })
    .await?;
    call.abort();
    let gone = Instant::now();
    wait_until(
        Duration::from_secs(2),
        "cancelled in PostgreSQL",
        || async { active(&admin, "slow").await.ok() == Some(0) },
    )
    .await?;
    assert!(
        gone.elapsed() < Duration::from_secs(1),
        "{:?}",
        gone.elapsed()
    );
    server.shutdown().await
}

#[tokio::test]
async fn repeated_sql_is_prepared_once_per_connection() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    server
        .client
        .create_pool("cached", db.url(), config())
        .await?;
    let mut callers = Vec::new();
    for worker in 0..8i64 {
        let client = server.client.clone();
        callers.push(tokio::spawn(async move {
            for i in 0..1_250i64 {
                let result = client
                    .query(
                        "cached",
                        "SELECT $1::int8 + $2::int8 AS n",
                        params![worker, i],
                    )
                    .await?;
                anyhow::ensure!(result.rows[0].get::<i64>("n")? == worker + i);
            }
            anyhow::Ok(())
        }));
    }
    for caller in callers {
        caller.await??;
    }
    let cache = server.client.get_statement_cache_stats("cached").await?;
    assert!(cache.hits + cache.misses >= 10_000, "{cache:?}");
    assert!(cache.hit_rate > 0.99, "{cache:?}");
    let stats = server.client.get_pool_stats("cached").await?;
    assert!(
        stats.total_queries >= 10_000,
        "QueryService traffic counts: {stats:?}"
    );
    server.shutdown().await
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(kb * 1024)
}

#[tokio::test]
async fn a_slow_reader_of_a_million_rows_does_not_grow_the_server() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    let server = poolplane_tests::ServerProcess::start(&["--database-url", control.url()]).await?;
    let client = poolplane_client::PoolplaneClient::connect(server.addr.to_string()).await?;
    client.create_pool("big", db.url(), config()).await?;
    let sql = "SELECT g AS id, md5(g::text) AS digest FROM generate_series(1, $1::int4) g";
    // Warm up (allocator, statement cache), then measure.
    let mut warm = client
        .query_stream("big", sql, params![10_000], 1_000)
        .await?;
    while warm.message().await?.is_some() {}
    let before = rss(server.pid())?;
    let mut stream = client
        .query_stream("big", sql, params![1_000_000], 1_000)
        .await?;
    let (mut rows, mut messages, mut peak) = (0usize, 0usize, before);
    let mut columns = Vec::new();
    while let Some(batch) = stream.message().await? {
        if messages == 0 {
            columns = batch.columns.iter().map(|c| c.name.clone()).collect();
        }
        rows += batch.rows.len();
        messages += 1;
        if messages % 20 == 0 {
            peak = peak.max(rss(server.pid())?);
        }
        // A slow reader for the first half.
        if rows < 500_000 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(columns, ["id", "digest"]);
    assert_eq!(rows, 1_000_000);
    let grown = peak.saturating_sub(before);
    eprintln!(
        "1,000,000 rows in {messages} messages; server RSS {} MB -> peak {} MB",
        before / 1_048_576,
        peak / 1_048_576
    );
    assert!(
        grown < 50 * 1_048_576,
        "the server buffered: +{} MB",
        grown / 1_048_576
    );
    Ok(())
}

#[tokio::test]
async fn grpcurl_runs_the_readme_examples() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    server.client.create_pool("g", db.url(), config()).await?;
    let body = r#"{"pool_name": "g", "sql": "SELECT $1::int4 * 2 AS doubled, $2::text AS label",
        "params": [{"int_value": 21}, {"string_value": "x"}]}"#;
    let out = poolplane_tests::grpcurl(
        server.addr,
        &["-d", body],
        &["poolplane.v1.QueryService/Query"],
    )
    .await?;
    assert!(out.success, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(json["columns"][0]["name"], "doubled");
    assert_eq!(json["rows"][0]["values"][0]["intValue"], "42");
    assert_eq!(json["rows"][0]["values"][1]["stringValue"], "x");
    // A SQL error: the code, and the SQLSTATE in ErrorInfo, as JSON.
    let body = r#"{"pool_name": "g", "sql": "SELECT 1/0"}"#;
    let out = poolplane_tests::grpcurl(
        server.addr,
        &["-d", body],
        &["poolplane.v1.QueryService/Query"],
    )
    .await?;
    assert!(!out.success);
    assert!(
        out.stderr.contains("InvalidArgument") || out.stderr.contains("Code: InvalidArgument"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("\"reason\": \"22012\"") || out.stderr.contains("22012"),
        "{}",
        out.stderr
    );
    server.shutdown().await
}

#[tokio::test]
async fn an_unhealthy_pool_fails_fast_with_unavailable() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let proxy = poolplane_tests::FaultProxy::start(db.server_addr()?).await?;
    let config = PoolConfig {
        health_check_interval_secs: Some(2),
        health_check_timeout_secs: Some(1),
        max_failed_health_checks: Some(1),
        acquire_timeout_secs: Some(10),
        ..config()
    };
    server
        .client
        .create_pool("flaky", &db.url_via(proxy.addr()), config)
        .await?;
    proxy.cut();
    wait_until(
        Duration::from_secs(10),
        "the pool turns unhealthy",
        || async {
            server
                .client
                .get_health_status("flaky")
                .await
                .is_ok_and(|h| !h.is_healthy)
        },
    )
    .await?;
    let started = Instant::now();
    let refused = server
        .client
        .query("flaky", "SELECT 1", vec![])
        .await
        .expect_err("unhealthy");
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(
        refused.to_string().contains("pool `flaky` is unhealthy"),
        "{refused}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not the 10 s acquire timeout: {:?}",
        started.elapsed()
    );
    proxy.restore();
    server.shutdown().await
}

/// A QueryStream whose caller leaves before the first row: its statement is
/// cancelled in PostgreSQL within a second, not left running to its deadline.
#[tokio::test]
async fn a_stream_left_before_its_first_row_is_cancelled_within_a_second() -> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let db = TestPg::database().await?;
    let admin = db.connect().await?;
    server
        .client
        .create_pool("left", db.url(), config())
        .await?;
    let sql = "SELECT 42 AS answer FROM pg_sleep(30)";
    let stream = server.client.query_stream("left", sql, vec![], 100).await?;
    let running = || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active' \
                 AND datname = current_database()",
                &[&sql],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    };
    wait_until(Duration::from_secs(5), "the statement runs", || async {
        running().await == 1
    })
    .await?;
    drop(stream);
    let left = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the statement is cancelled",
        || async { running().await == 0 },
    )
    .await?;
    assert!(
        left.elapsed() < Duration::from_secs(1),
        "{:?}",
        left.elapsed()
    );
    // The pool's connection is usable again.
    let row = server
        .client
        .query("left", "SELECT 1::int4", vec![])
        .await?;
    assert_eq!(row.rows.len(), 1);
    server.shutdown().await
}
