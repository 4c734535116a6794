//! Passwords at rest: a row stored in clear (before sealing existed) is sealed on
//! the next start and its pool still works; a server started with another key, or
//! with a key file that is missing, refuses to start and says why; the embedded
//! default generates its key (mode 0600) in its data directory.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use poolplane_client::PoolplaneClient;
use poolplane_tests::{ServerProcess, TestPg, test_secrets_key_file, wait_health};

#[tokio::test]
async fn clear_rows_are_sealed_at_start_and_a_wrong_key_refuses_to_start() -> anyhow::Result<()> {
    let control = TestPg::database().await?;
    let db = TestPg::database().await?;
    // The schema as an older server left it, with a password in clear.
    let first = ServerProcess::start(&["--database-url", control.url()]).await?;
    drop(first);
    let store = control.connect().await?;
    let password = poolplane::conninfo::password(db.url()).expect("a password");
    store
        .execute(
            "INSERT INTO pool_definitions (name, database_url, config) \
             VALUES ('legacy', $1, '{\"min_connections\": 1, \"max_connections\": 2}')",
            &[&db.url()],
        )
        .await?;

    let server = ServerProcess::start(&["--database-url", control.url()]).await?;
    assert_eq!(server.start_line["pools"], 1);
    let row = store
        .query_one(
            "SELECT database_url, database_password FROM pool_definitions WHERE name = 'legacy'",
            &[],
        )
        .await?;
    let (url, sealed): (String, Option<Vec<u8>>) = (row.get(0), row.get(1));
    assert!(!url.contains(&password), "{url}");
    let sealed = sealed.expect("sealed on start");
    assert!(
        !sealed
            .windows(password.len())
            .any(|w| w == password.as_bytes()),
        "the sealed column holds the password in clear"
    );
    // The pool works with the unsealed password.
    let client = PoolplaneClient::connect(server.addr.to_string()).await?;
    wait_health(&client, "legacy", true, Duration::from_secs(10)).await?;
    drop(server);

    // Another key: a clear start-up error naming the pool, not a silent fall-back.
    let dir = tempfile::tempdir()?;
    let other_key = dir.path().join("other.key");
    poolplane::SecretsKey::load_or_create(&other_key)?;
    let stderr = ServerProcess::refused_start(&[
        "--database-url",
        control.url(),
        "--secrets-key-file",
        other_key.to_str().expect("utf-8"),
    ])
    .await?;
    assert!(
        stderr.contains("the stored password of pool `legacy` cannot be decrypted"),
        "{stderr}"
    );
    // A key file that is not there.
    let missing = dir.path().join("missing.key");
    let stderr = ServerProcess::refused_start(&[
        "--database-url",
        control.url(),
        "--secrets-key-file",
        missing.to_str().expect("utf-8"),
    ])
    .await?;
    assert!(
        stderr.contains("missing.key") && stderr.contains("No such file"),
        "{stderr}"
    );
    // And the right key still opens it.
    let again = ServerProcess::start(&["--database-url", control.url()]).await?;
    assert_eq!(again.start_line["pools"], 1);
    assert!(test_secrets_key_file().exists());
    Ok(())
}

#[tokio::test]
async fn the_embedded_default_generates_a_private_key_in_its_data_directory() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("poolplane");
    let server = ServerProcess::start(&["--data-dir", data_dir.to_str().expect("utf-8")]).await?;
    let key = data_dir.join("secrets.key");
    let mode = std::fs::metadata(&key)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&key)?;
    assert_eq!(text.trim().len(), 64);
    let id = poolplane::SecretsKey::from_hex(&text)
        .expect("a key")
        .id_hex();
    let logged = server
        .log_lines()
        .iter()
        .any(|l| l.contains(&format!("\"secrets_key_id\":\"{id}\"")));
    assert!(logged, "the start-up log names the key id");
    assert!(!server.log_lines().iter().any(|l| l.contains(text.trim())));
    Ok(())
}
