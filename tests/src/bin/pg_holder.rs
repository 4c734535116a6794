//! Test helper: starts a throwaway embedded PostgreSQL, prints
//! `{"pid":…,"dir":"…"}` and then either panics (`panic`) or holds it (`hold`) until
//! killed (at most 120 s). Used to show that no postmaster outlives its owner.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let pg = poolplane::EmbeddedPg::start_temporary().await?;
    println!(
        "{}",
        serde_json::json!({ "pid": pg.pid(), "dir": pg.base_dir() })
    );
    match mode.as_str() {
        "panic" => panic!(
            "pg_holder panics on purpose while holding postmaster {}",
            pg.pid()
        ),
        _ => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok(())
        }
    }
}
