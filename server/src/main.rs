//! The `poolplane-server` binary: flags and environment, then [`poolplane_server::Server`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use poolplane_server::telemetry::{self, LogFormat};
use poolplane_server::{Server, ServerConfig};

/// gRPC control plane for PostgreSQL connection pools.
#[derive(Debug, Parser)]
#[command(name = "poolplane-server", version, about)]
struct Flags {
    /// gRPC listen address.
    #[arg(long, env = "POOLPLANE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// Control database (postgres:// URL or key=value conninfo). Absent: an embedded
    /// PostgreSQL kept in --data-dir.
    #[arg(long, env = "POOLPLANE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Where the embedded control database lives (created on first start, reused
    /// after). Default: $XDG_DATA_HOME/poolplane (~/.local/share/poolplane); as root
    /// /var/lib/poolplane, since the `postgres` user cannot enter /root.
    #[arg(long, env = "POOLPLANE_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Serve gRPC over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "POOLPLANE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "POOLPLANE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Prometheus endpoint address.
    #[arg(
        long,
        env = "POOLPLANE_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: SocketAddr,

    /// Log line format (level filter: RUST_LOG).
    #[arg(long, env = "POOLPLANE_LOG_FORMAT", value_enum, default_value_t = Format::Text)]
    log_format: Format,

    /// How often every pool's stats are recorded in the control database (with a
    /// unit: 1s, 10s, 1m).
    #[arg(long, env = "POOLPLANE_METRICS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    metrics_interval: Duration,

    /// How long the metrics history is kept (with a unit: 12h, 7d).
    #[arg(long, env = "POOLPLANE_METRICS_RETENTION", default_value = "7d", value_parser = parse_duration)]
    metrics_retention: Duration,

    /// History rows kept in memory while the control database is unavailable;
    /// beyond it the oldest are dropped (and counted).
    #[arg(long, env = "POOLPLANE_METRICS_BUFFER", default_value_t = 100_000)]
    metrics_buffer: usize,

    /// Most requests in flight a RunLoadTest may ask for.
    #[arg(
        long,
        env = "POOLPLANE_MAX_LOAD_TEST_CONCURRENCY",
        default_value_t = 512
    )]
    max_load_test_concurrency: u32,

    /// Longest RunLoadTest, warm-up included (with a unit: 600s, 10m).
    #[arg(long, env = "POOLPLANE_MAX_LOAD_TEST_DURATION", default_value = "600s", value_parser = parse_duration)]
    max_load_test_duration: Duration,

    /// Connections the optimizer leaves free on each PostgreSQL server, besides
    /// superuser_reserved_connections, when it grows pools.
    #[arg(long, env = "POOLPLANE_CONNECTION_RESERVE", default_value_t = 5)]
    connection_reserve: u32,

    /// How long in-flight calls may run on after SIGTERM/SIGINT (with a unit: 500ms,
    /// 5s, 1m).
    #[arg(long, env = "POOLPLANE_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Parses a duration written with a unit: `ms`, `s`, `m`, `h` or `d` (`1s`, `10s`, `7d`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. `10s`, `500ms`, `7d`"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a number followed by a unit"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use ms, s, m, h or d"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/poolplane"));
    }
    Ok(dirs::data_dir()
        .context("no user data directory (set HOME or --data-dir)")?
        .join("poolplane"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let telemetry = telemetry::init(match flags.log_format {
        Format::Text => LogFormat::Text,
        Format::Json => LogFormat::Json,
    });
    if !telemetry.otlp() {
        tracing::info!("OTLP export off (no OTEL_EXPORTER_OTLP_*ENDPOINT set): no exporter runs");
    }
    let data_dir = match flags.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    let server = Server::start(ServerConfig {
        listen: flags.listen,
        database_url: flags.database_url,
        data_dir,
        metrics_listen: flags.metrics_listen,
        metrics_interval: flags.metrics_interval,
        metrics_retention: flags.metrics_retention,
        metrics_buffer_rows: flags.metrics_buffer,
        load_test_limits: poolplane_server::grpc::pool_service::LoadTestLimits {
            max_concurrency: flags.max_load_test_concurrency,
            max_duration: flags.max_load_test_duration,
        },
        connection_reserve: flags.connection_reserve,
        tls: flags
            .tls_cert
            .zip(flags.tls_key)
            .map(|(cert, key)| poolplane_server::TlsFiles { cert, key }),
        shutdown_grace: flags.shutdown_grace,
    })
    .await
    .context("poolplane-server could not start")?;

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let stop = server.shutdown_token();
    let stop_metrics = server.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        stop.cancel();
    });
    let otlp_metrics = telemetry.register_pool_metrics(Arc::clone(server.registry()), stop_metrics);
    let served = server.wait().await;
    if let Some(task) = otlp_metrics {
        let _ = task.await;
    }
    telemetry.shutdown().await;
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
    }
}
