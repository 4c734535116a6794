//! Session state in transaction pooling: a client's settings follow it from
//! backend to backend (and reach no one else); LISTEN, temporary tables and
//! the rest pin the client's backend until the state is gone, with NOTIFY
//! delivered; `session_state: refuse` refuses them by name.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt as _;
use poolplane_client::proto::PoolConfig;
use poolplane_tests::{pg_url, wait_until};

use crate::frontdoor::{pool_with, sized, wire_client};

async fn values(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Vec<String>> {
    let rows = client.simple_query(sql).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default())
}

const CHECK: &str = "SELECT current_setting('search_path'), current_setting('statement_timeout'), \
     pg_backend_pid(), (SELECT n FROM mine)";

#[tokio::test]
async fn settings_follow_each_client_across_backends_and_reach_no_one_else() -> anyhow::Result<()> {
    let (server, db) = pool_with("follow", sized(4, 4)).await?;
    let admin = db.connect().await?;
    for i in 0..8 {
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA s{i}; CREATE TABLE s{i}.mine (n int); INSERT INTO s{i}.mine VALUES ({i})"
            ))
            .await?;
    }
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let client = wire_client(&server, &db, "follow").await?;
        tasks.push(tokio::spawn(async move {
            // Outside any transaction block: for the rest of the session.
            client
                .batch_execute(&format!(
                    "SET search_path = s{i}, public; SET statement_timeout = '{}s'",
                    i + 1
                ))
                .await?;
            let mut pids = HashSet::new();
            for t in 0..100 {
                // Simple and extended protocol, and an explicit transaction.
                let seen = match t % 3 {
                    0 => values(&client, CHECK).await?,
                    1 => {
                        let row = client.query_one(CHECK, &[]).await?;
                        vec![
                            row.get::<_, String>(0),
                            row.get::<_, String>(1),
                            row.get::<_, i32>(2).to_string(),
                            row.get::<_, i32>(3).to_string(),
                        ]
                    }
                    _ => values(&client, &format!("BEGIN; {CHECK}; COMMIT")).await?,
                };
                assert_eq!(
                    [&seen[0], &seen[1], &seen[3]],
                    [
                        &format!("s{i}, public"),
                        &format!("{}s", i + 1),
                        &i.to_string()
                    ],
                    "client {i}, transaction {t}"
                );
                pids.insert(seen[2].clone());
            }
            anyhow::Ok(pids)
        }));
    }
    // A client that set nothing sees the defaults throughout.
    let plain = wire_client(&server, &db, "follow").await?;
    for _ in 0..100 {
        let seen = values(
            &plain,
            "SELECT current_setting('search_path'), current_setting('statement_timeout')",
        )
        .await?;
        assert_eq!(seen, ["\"$user\", public", "0"]);
    }
    let mut all = HashSet::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let pids = task.await??;
        assert!(
            pids.len() >= 2,
            "client {i} ran on {} backend(s): {pids:?}",
            pids.len()
        );
        all.extend(pids);
    }
    assert!(all.len() <= 4, "a pool of 4: {all:?}");
    // The settings changed across backends and the backends went back with
    // the pool's own (a typed checkout sees the defaults).
    let pool = server.server().registry().pool("follow")?;
    for _ in 0..4 {
        let row = pool
            .query_one("SELECT current_setting('search_path')", &[])
            .await?;
        assert_eq!(row.get::<_, String>(0), "\"$user\", public");
    }
    Ok(())
}

#[tokio::test]
async fn reset_and_discard_all_clear_a_clients_settings() -> anyhow::Result<()> {
    let (server, db) = pool_with("clear", sized(2, 2)).await?;
    let client = wire_client(&server, &db, "clear").await?;
    client
        .batch_execute("SET search_path = pg_catalog; SET lock_timeout = '3s'")
        .await?;
    client.batch_execute("RESET lock_timeout").await?;
    assert_eq!(
        values(
            &client,
            "SELECT current_setting('search_path'), current_setting('lock_timeout')"
        )
        .await?,
        ["pg_catalog", "0"]
    );
    // A SET inside a transaction that rolls back is undone.
    client
        .batch_execute("BEGIN; SET search_path = nowhere; ROLLBACK")
        .await?;
    assert_eq!(values(&client, "SHOW search_path").await?, ["pg_catalog"]);
    // set_config(…, false) follows the client too; a custom setting as well.
    client
        .batch_execute("SELECT set_config('app.tenant', '42', false)")
        .await?;
    client.batch_execute("DISCARD ALL").await?;
    assert_eq!(
        values(
            &client,
            "SELECT current_setting('search_path'), coalesce(current_setting('app.tenant', true), '')"
        )
        .await?,
        ["\"$user\", public", ""]
    );
    client
        .batch_execute("SET search_path = pg_catalog; RESET ALL")
        .await?;
    assert_eq!(
        values(&client, "SHOW search_path").await?,
        ["\"$user\", public"]
    );
    Ok(())
}

/// A client whose notifications (and connection's end) the test reads.
pub(crate) async fn listening_client(
    url: &str,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
)> {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n);
            }
        }
    });
    Ok((client, rx))
}

/// Waits for the pool's count of pinned clients to be `n` (the front door
/// reads a backend's session state just after the transaction's reply).
async fn pinned_becomes(sdk: &poolplane_client::PoolplaneClient, n: u64) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(5), "the pinned count", || async {
        sdk.get_pool_stats("pin")
            .await
            .is_ok_and(|s| s.wire_clients_pinned == n)
    })
    .await
}

#[tokio::test]
async fn listen_pins_the_backend_and_notify_reaches_the_listener() -> anyhow::Result<()> {
    let (server, db) = pool_with("pin", sized(2, 2)).await?;
    let url = pg_url(&server, &db, "pin")?;
    let sdk = &server.client;
    let (listener, mut notes) = listening_client(&url).await?;
    let pid = values(&listener, "SELECT pg_backend_pid()").await?;
    listener.batch_execute("LISTEN jobs").await?;
    pinned_becomes(sdk, 1).await?;
    let listed = sdk.list_clients(Some("pin")).await?;
    assert_eq!(
        listed.iter().map(|c| c.state.as_str()).collect::<Vec<_>>(),
        ["pinned"]
    );

    // Another client notifies, on the pool's other backend.
    let other = wire_client(&server, &db, "pin").await?;
    let other_pid = values(&other, "SELECT pg_backend_pid()").await?;
    assert_ne!(other_pid, pid);
    for n in 0..3 {
        other
            .batch_execute(&format!("NOTIFY jobs, 'job {n}'"))
            .await?;
    }
    for n in 0..3 {
        let note = tokio::time::timeout(Duration::from_secs(5), notes.recv())
            .await?
            .expect("a notification");
        assert_eq!(
            (note.channel(), note.payload()),
            ("jobs", format!("job {n}").as_str())
        );
    }
    // The listener keeps its backend across transactions.
    for _ in 0..5 {
        assert_eq!(values(&listener, "SELECT pg_backend_pid()").await?, pid);
    }
    // A temporary table lives across the pinned client's transactions too.
    listener
        .batch_execute("CREATE TEMP TABLE scratch (a int)")
        .await?;
    listener
        .batch_execute("INSERT INTO scratch VALUES (1), (2)")
        .await?;
    assert_eq!(
        values(&listener, "SELECT count(*) FROM scratch").await?,
        ["2"]
    );

    // UNLISTEN alone leaves the temporary table pinning it; DROP ends it.
    listener.batch_execute("UNLISTEN jobs").await?;
    assert_eq!(values(&listener, "SELECT pg_backend_pid()").await?, pid);
    assert_eq!(sdk.get_pool_stats("pin").await?.wire_clients_pinned, 1);
    listener.batch_execute("DROP TABLE scratch").await?;
    pinned_becomes(sdk, 0).await?;
    // LISTEN alone, then UNLISTEN: pinned, then released.
    listener.batch_execute("LISTEN again").await?;
    pinned_becomes(sdk, 1).await?;
    listener.batch_execute("UNLISTEN *").await?;
    pinned_becomes(sdk, 0).await?;
    wait_until(Duration::from_secs(5), "both clients idle", || async {
        sdk.list_clients(Some("pin"))
            .await
            .is_ok_and(|all| all.iter().all(|c| c.state == "idle") && all.len() == 2)
    })
    .await?;
    // Released: two clients inside transactions hold both backends, the
    // listener's old one among them, clean.
    let third = wire_client(&server, &db, "pin").await?;
    const SEEN: &str = "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_listening_channels())";
    let a = values(&other, &format!("BEGIN; {SEEN}")).await?;
    let b = values(&third, &format!("BEGIN; {SEEN}")).await?;
    let in_use: HashSet<&String> = [&a[0], &b[0]].into();
    assert_eq!(in_use, [&pid[0], &other_pid[0]].into());
    assert_eq!((a[1].as_str(), b[1].as_str()), ("0", "0"));
    other.batch_execute("COMMIT").await?;
    third.batch_execute("COMMIT").await?;

    // A pinned client that leaves: its backend is cleaned before reuse.
    let (leaving, _) = listening_client(&url).await?;
    leaving
        .batch_execute("LISTEN gone; SELECT pg_advisory_lock(7)")
        .await?;
    pinned_becomes(sdk, 1).await?;
    drop(leaving);
    pinned_becomes(sdk, 0).await?;
    for _ in 0..4 {
        assert_eq!(
            values(
                &third,
                "SELECT (SELECT count(*) FROM pg_listening_channels()), \
                 (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
            )
            .await?,
            ["0", "0"]
        );
    }
    Ok(())
}

#[tokio::test]
async fn session_state_refuse_names_the_statement() -> anyhow::Result<()> {
    let config = PoolConfig {
        session_state: Some("refuse".into()),
        ..sized(1, 2)
    };
    let (server, db) = pool_with("strict", config).await?;
    let client = wire_client(&server, &db, "strict").await?;
    for (sql, name) in [
        ("LISTEN jobs", "LISTEN"),
        ("CREATE TEMP TABLE t (a int)", "CREATE TEMP"),
        ("SELECT pg_advisory_lock(1)", "pg_advisory_lock"),
        (
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "DECLARE … WITH HOLD",
        ),
    ] {
        let error = client.simple_query(sql).await.expect_err(sql);
        let db_error = error.as_db_error().expect("a PostgreSQL error");
        assert_eq!(db_error.code().code(), "0A000", "{sql}");
        assert!(
            db_error.message().contains(name)
                && db_error.message().contains("session_state refuse"),
            "{sql}: {}",
            db_error.message()
        );
    }
    // The extended protocol as well; the session carries on.
    let error = client
        .query("SELECT pg_advisory_lock($1)", &[&1i64])
        .await
        .expect_err("refused");
    assert_eq!(error.code().map(|c| c.code()), Some("0A000"));
    assert_eq!(values(&client, "SELECT 'ok'").await?, ["ok"]);
    assert_eq!(
        server
            .client
            .get_pool_stats("strict")
            .await?
            .wire_clients_pinned,
        0
    );
    // An unknown value is refused by field.
    let bad = server
        .client
        .update_pool_config(
            "strict",
            PoolConfig {
                session_state: Some("sometimes".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("unknown session_state");
    assert!(format!("{bad:#}").contains("session_state"), "{bad:#}");
    Ok(())
}
