//! The built `poolplane-server` binary as a child process, and process helpers.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may hold spaces.
    let state = stat
        .rfind(')')
        .and_then(|close| stat[close + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Polls `condition` every 50 ms until it holds; fails naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A binary of this workspace in the target directory this test was built into
/// (the README's test command builds them all first).
pub fn built_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable has no target directory")?;
    let binary = profile_dir.join(name);
    if !binary.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --workspace --bins` (the README's test command does)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A `poolplane-server` process started from the built binary, logging JSON.
pub struct ServerProcess {
    child: Child,
    /// Its gRPC address, read from its start-up log line.
    pub addr: SocketAddr,
    /// Its PostgreSQL front door's address (`None` with `--pg-listen off`).
    pub pg_addr: Option<SocketAddr>,
    /// The start-up log line.
    pub start_line: serde_json::Value,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// The binary: POOLPLANE_SERVER_BIN, or `poolplane-server` in the target directory
    /// this test was built into.
    pub fn binary() -> anyhow::Result<PathBuf> {
        if let Ok(path) = std::env::var("POOLPLANE_SERVER_BIN") {
            return Ok(path.into());
        }
        built_binary("poolplane-server")
    }

    /// Starts the binary with `--listen 127.0.0.1:0 --log-format json` and `args`,
    /// and waits (up to 60 s) for its start-up line.
    pub async fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_log(args, "info").await
    }

    /// [`start`](Self::start) with RUST_LOG set to `log_filter`.
    pub async fn start_with_log(args: &[&str], log_filter: &str) -> anyhow::Result<Self> {
        Self::start_with(args, log_filter, &[]).await
    }

    /// [`start`](Self::start) with RUST_LOG set to `log_filter` and `envs` added to
    /// its environment.
    pub async fn start_with(
        args: &[&str],
        log_filter: &str,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut child = Self::command(args)?
            .args(["--log-format", "json"])
            .env("RUST_LOG", log_filter)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning poolplane-server")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("log lines lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = rx.recv().await {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("poolplane-server started"))
                {
                    return Some(json);
                }
            }
            None
        })
        .await;
        let Ok(Some(start_line)) = started else {
            let log = lines.lock().expect("log lines lock").join("\n");
            let _ = child.start_kill();
            bail!("poolplane-server did not start; its log:\n{log}");
        };
        let addr = start_line["listen"]
            .as_str()
            .context("start line has no listen field")?
            .parse()?;
        let pg_addr = start_line["pg_listen"]
            .as_str()
            .and_then(|a| a.parse().ok());
        Ok(Self {
            child,
            addr,
            pg_addr,
            start_line,
            lines,
        })
    }

    /// The binary with `args`, loopback port 0 for what `args` leave unset, and
    /// (without a data directory of its own) the shared test secrets key.
    fn command(args: &[&str]) -> anyhow::Result<Command> {
        let mut command = Command::new(Self::binary()?);
        if !args.contains(&"--data-dir") {
            command.env("POOLPLANE_SECRETS_KEY_FILE", crate::test_secrets_key_file());
        }
        for flag in ["--listen", "--metrics-listen", "--pg-listen"] {
            if !args.contains(&flag) {
                command.args([flag, "127.0.0.1:0"]);
            }
        }
        command.args(args).kill_on_drop(true);
        Ok(command)
    }

    /// Runs the binary with `args` expecting it to refuse to start (exit non-zero
    /// within 60 s); returns its standard error.
    pub async fn refused_start(args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::time::timeout(Duration::from_secs(60), Self::command(args)?.output())
            .await
            .context("poolplane-server neither started nor exited")??;
        if output.status.success() {
            bail!("poolplane-server started with {args:?}");
        }
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sends it a signal (SIGTERM for a graceful stop, SIGKILL for a crash).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.pid() as i32), signal)?;
        Ok(())
    }

    /// Waits for it to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("poolplane-server did not exit within {timeout:?}"))?
            .context("waiting for poolplane-server")
    }

    /// Every log line it wrote so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.lines.lock().expect("log lines lock").clone()
    }
}

/// Waits (up to `timeout`) until pool `pool` of the server `client` talks to is
/// healthy (`healthy`) or unhealthy (`!healthy`).
pub async fn wait_health(
    client: &poolplane_client::PoolplaneClient,
    pool: &str,
    healthy: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = format!(
        "pool {pool} is {}",
        if healthy { "healthy" } else { "unhealthy" }
    );
    wait_until(timeout, &what, || async {
        client
            .get_health_status(pool)
            .await
            .is_ok_and(|h| h.is_healthy == healthy)
    })
    .await
}
