//! No session state crosses front-door clients: on a pool of one backend, each
//! kind of session state a client leaves (settings, set_config, roles, LISTEN,
//! advisory locks, temporary tables, WITH HOLD cursors) is gone for the next
//! client on that same backend; SQL-level PREPARE is refused in transaction
//! mode by name; session mode keeps a client's state for its own session.

use poolplane_client::proto::PoolConfig;
use poolplane_tests::login_of;

use crate::frontdoor::{pool_with, sized, wire_client};

async fn one_value(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<String> {
    let rows = client.simple_query(sql).await?;
    let value = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some(row.get(0).unwrap_or("").to_owned())
            }
            _ => None,
        })
        .unwrap_or_default();
    Ok(value)
}

#[tokio::test]
async fn no_kind_of_session_state_reaches_the_next_client() -> anyhow::Result<()> {
    let (server, db) = pool_with("iso", sized(1, 1)).await?;
    let (user, _) = login_of(&db)?;
    db.connect()
        .await?
        .batch_execute("CREATE ROLE iso_reader NOLOGIN; GRANT iso_reader TO CURRENT_USER")
        .await?;
    // (what the first client does, what the next one checks, what it must see)
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "SET search_path = pg_catalog",
            "SHOW search_path",
            "\"$user\", public".into(),
        ),
        (
            "SET statement_timeout = '1s'",
            "SHOW statement_timeout",
            "0".into(),
        ),
        (
            "SELECT set_config('app.tenant', '42', false)",
            "SELECT coalesce(current_setting('app.tenant', true), '')",
            String::new(),
        ),
        ("SET ROLE iso_reader", "SELECT current_user", user.clone()),
        (
            "SET SESSION AUTHORIZATION iso_reader",
            "SELECT session_user",
            user.clone(),
        ),
        (
            "LISTEN jobs",
            "SELECT count(*) FROM pg_listening_channels()",
            "0".into(),
        ),
        (
            "SELECT pg_advisory_lock(42)",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
            "0".into(),
        ),
        (
            "CREATE TEMP TABLE scratch (a int)",
            "SELECT to_regclass('pg_temp.scratch') IS NULL",
            "t".into(),
        ),
        (
            "DECLARE held CURSOR WITH HOLD FOR SELECT 1",
            "SELECT count(*) FROM pg_cursors",
            "0".into(),
        ),
    ];
    for (change, check, clean) in cases {
        let first = wire_client(&server, &db, "iso").await?;
        let pid = one_value(&first, "SELECT pg_backend_pid()").await?;
        first.batch_execute(change).await?;
        drop(first);
        let next = wire_client(&server, &db, "iso").await?;
        let seen = one_value(&next, check).await?;
        let next_pid = one_value(&next, "SELECT pg_backend_pid()").await?;
        assert_eq!(
            next_pid, pid,
            "the same backend (a pool of one) after `{change}`"
        );
        assert_eq!(seen, clean, "after `{change}`, `{check}`");
    }

    // The extended protocol is watched as well (a named statement's SQL).
    let first = wire_client(&server, &db, "iso").await?;
    first
        .query("SELECT set_config('app.extended', 'yes', false)", &[])
        .await?;
    let next = wire_client(&server, &db, "iso").await?;
    let seen = one_value(
        &next,
        "SELECT coalesce(current_setting('app.extended', true), '')",
    )
    .await?;
    assert_eq!(seen, "");
    Ok(())
}

#[tokio::test]
async fn sql_prepare_is_refused_by_name_in_transaction_mode() -> anyhow::Result<()> {
    let (server, db) = pool_with("prep", sized(1, 2)).await?;
    let client = wire_client(&server, &db, "prep").await?;
    for (sql, name) in [
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("EXECUTE p", "EXECUTE"),
        ("DEALLOCATE ALL", "DEALLOCATE"),
    ] {
        let error = client.simple_query(sql).await.expect_err(sql);
        let db_error = error.as_db_error().expect("a PostgreSQL error");
        assert_eq!(db_error.code().code(), "0A000", "{sql}");
        assert!(
            db_error.message().contains(name),
            "{sql}: {}",
            db_error.message()
        );
        assert!(
            db_error.message().contains("transaction pooling"),
            "{}",
            db_error.message()
        );
    }
    // The session carries on.
    assert_eq!(one_value(&client, "SELECT 'ok'").await?, "ok");
    Ok(())
}

#[tokio::test]
async fn session_mode_keeps_a_clients_state_and_resets_it_after() -> anyhow::Result<()> {
    let config = PoolConfig {
        pool_mode: Some("session".into()),
        ..sized(1, 1)
    };
    let (server, db) = pool_with("sess", config).await?;
    let first = wire_client(&server, &db, "sess").await?;
    first.batch_execute("SET search_path = pg_catalog").await?;
    first.batch_execute("PREPARE p AS SELECT 7").await?;
    assert_eq!(one_value(&first, "SHOW search_path").await?, "pg_catalog");
    assert_eq!(one_value(&first, "EXECUTE p").await?, "7");
    drop(first);
    let next = wire_client(&server, &db, "sess").await?;
    assert_eq!(
        one_value(&next, "SHOW search_path").await?,
        "\"$user\", public"
    );
    Ok(())
}

#[tokio::test]
async fn a_wire_clients_startup_settings_follow_it_and_stay_off_the_typed_api() -> anyhow::Result<()>
{
    let (server, db) = pool_with("tz", sized(1, 1)).await?;
    let url = poolplane_tests::pg_url(&server, &db, "tz")?;
    // A list setting too: `search_path=pg_catalog,public` is two schemas.
    let tokyo = poolplane_tests::connect(&format!(
        "{url}&options=-c%20TimeZone%3DAsia%2FTokyo%20-c%20search_path%3Dpg_catalog%2Cpublic"
    ))
    .await?;
    let plain = wire_client(&server, &db, "tz").await?;
    let pool = server.server().registry().pool("tz")?;
    let typed = || async {
        let row = pool
            .query_one("SELECT current_setting('TimeZone')", &[])
            .await?;
        anyhow::Ok(row.get::<_, String>(0))
    };
    let default = typed().await?;
    assert_ne!(default, "Asia/Tokyo");
    for _ in 0..3 {
        // The same backend (a pool of one) each time.
        assert_eq!(one_value(&tokyo, "SHOW TimeZone").await?, "Asia/Tokyo");
        assert_eq!(
            one_value(&tokyo, "SELECT current_schemas(false)::text").await?,
            "{pg_catalog,public}"
        );
        assert_eq!(one_value(&plain, "SHOW TimeZone").await?, default);
        assert_eq!(one_value(&tokyo, "SHOW TimeZone").await?, "Asia/Tokyo");
        assert_eq!(
            typed().await?,
            default,
            "the typed API gets the pool's settings"
        );
    }
    Ok(())
}
