//! The `poolplane-server` binary: flags and environment, then [`poolplane_server::Server`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use poolplane_server::grpc::auth::Role;
use poolplane_server::grpc::limits::ServerLimits;
use poolplane_server::telemetry::{self, LogFormat};
use poolplane_server::{Server, ServerConfig};

/// gRPC control plane for PostgreSQL connection pools.
#[derive(Debug, Parser)]
#[command(name = "poolplane-server", version, about)]
struct Flags {
    /// gRPC listen address.
    #[arg(long, env = "POOLPLANE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// The PostgreSQL wire-protocol front door's address (`off`: none).
    /// Applications connect with the pool's name as the database name.
    #[arg(long, env = "POOLPLANE_PG_LISTEN", default_value = "127.0.0.1:6432", value_parser = parse_pg_listen)]
    pg_listen: PgListen,

    /// The front door's TLS certificate chain (PEM); default: --tls-cert's.
    #[arg(long, env = "POOLPLANE_PG_TLS_CERT", requires = "pg_tls_key")]
    pg_tls_cert: Option<PathBuf>,

    /// The front door's TLS private key (PEM); default: --tls-key's.
    #[arg(long, env = "POOLPLANE_PG_TLS_KEY", requires = "pg_tls_cert")]
    pg_tls_key: Option<PathBuf>,

    /// Refuse front-door clients that do not start TLS.
    #[arg(long, env = "POOLPLANE_PG_TLS_REQUIRED")]
    pg_tls_required: bool,

    /// Front-door users besides each pool's own user: `user SCRAM-verifier pools`
    /// lines (pools comma-separated or `*`), re-read on SIGHUP.
    #[arg(long, env = "POOLPLANE_PG_USERS_FILE")]
    pg_users_file: Option<PathBuf>,

    /// The most front-door clients connected at once.
    #[arg(long, env = "POOLPLANE_PG_MAX_CLIENTS", default_value_t = 10_000)]
    pg_max_clients: usize,

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

    /// Mutual TLS: require a client certificate signed by this PEM CA.
    #[arg(long, env = "POOLPLANE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// With --tls-client-ca and no --auth-tokens-file: the role of every client
    /// with a verified certificate (viewer, operator or admin).
    #[arg(long, env = "POOLPLANE_TLS_CLIENT_ROLE", default_value = "admin", value_parser = parse_role)]
    tls_client_role: Role,

    /// Bearer tokens: one `TOKEN ROLE` pair per line (role: viewer, operator,
    /// admin; a token may be written sha256:<hex>; # comments). Re-read on SIGHUP.
    #[arg(long, env = "POOLPLANE_AUTH_TOKENS_FILE")]
    auth_tokens_file: Option<PathBuf>,

    /// Serve a non-loopback --listen address without authentication (every caller
    /// is admin).
    #[arg(long, env = "POOLPLANE_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,

    /// The key that seals stored database passwords (64 hex characters). Default:
    /// secrets.key in --data-dir, created if missing.
    #[arg(long, env = "POOLPLANE_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,

    /// The database targets pools may connect to, comma-separated: host names
    /// (`*.example.com` for a domain), IPs, CIDR blocks, each with an optional
    /// `:port`, and Unix-socket directories. Unset: every TCP host, no socket.
    #[arg(long, env = "POOLPLANE_ALLOWED_DB_HOSTS", value_delimiter = ',')]
    allowed_db_hosts: Option<Vec<String>>,

    /// Most pools the server holds.
    #[arg(long, env = "POOLPLANE_MAX_POOLS", default_value_t = 1000)]
    max_pools: usize,

    /// Watch streams open at once, in total.
    #[arg(long, env = "POOLPLANE_MAX_WATCH_STREAMS", default_value_t = 1024)]
    max_watch_streams: usize,

    /// Watch streams open at once on one client connection.
    #[arg(
        long,
        env = "POOLPLANE_MAX_WATCH_STREAMS_PER_CONNECTION",
        default_value_t = 32
    )]
    max_watch_streams_per_connection: usize,

    /// Calls in flight at once on one client connection (HTTP/2 streams).
    #[arg(long, env = "POOLPLANE_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    max_concurrent_streams: u32,

    /// How often idle client connections are pinged (HTTP/2 keepalive).
    #[arg(long, env = "POOLPLANE_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    http2_keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection closes.
    #[arg(long, env = "POOLPLANE_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    http2_keepalive_timeout: Duration,

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

    /// Connections left free on each PostgreSQL server (besides its reserved
    /// ones) by the connection budget its pools share.
    #[arg(long, env = "POOLPLANE_CONNECTION_RESERVE", default_value_t = 5)]
    connection_reserve: u32,

    /// Apply the optimizer's applicable recommendations to every pool this
    /// often (with a unit: 30s, 5m), within each server's connection budget;
    /// every change is recorded in pool_config_changes. `off` by default.
    #[arg(long, env = "POOLPLANE_AUTO_OPTIMIZE_INTERVAL", default_value = "off", value_parser = parse_interval_or_off)]
    auto_optimize_interval: Duration,

    /// First run: create a `poolplane_demo` database (pgbench's tables, a login
    /// role of its own) on the embedded PostgreSQL and a pool `demo` on it.
    /// Idempotent across restarts.
    #[arg(long, env = "POOLPLANE_DEMO")]
    demo: bool,

    /// How long in-flight calls may run on after SIGTERM/SIGINT (with a unit: 500ms,
    /// 5s, 1m).
    #[arg(long, env = "POOLPLANE_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    /// This server's id in its group of replicas (servers sharing one
    /// --database-url); default: one made on first start and kept in
    /// `replica-id` of the data directory.
    #[arg(long, env = "POOLPLANE_REPLICA_ID")]
    replica_id: Option<String>,

    /// How long a replica's heartbeat holds: one silent longer is gone, and
    /// the leadership of singleton jobs moves within about that long.
    #[arg(long, env = "POOLPLANE_REPLICA_LEASE", default_value = "10s", value_parser = parse_duration)]
    replica_lease: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Parses a duration written with a unit: `ms`, `s`, `m`, `h` or `d` (`1s`, `10s`, `7d`).
/// `off` (zero), or a duration as [`parse_duration`] reads it.
fn parse_interval_or_off(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "off" => Ok(Duration::ZERO),
        other => parse_duration(other),
    }
}

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

/// `--pg-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct PgListen(Option<SocketAddr>);

fn parse_pg_listen(text: &str) -> Result<PgListen, String> {
    if text == "off" {
        return Ok(PgListen(None));
    }
    text.parse()
        .map(|addr| PgListen(Some(addr)))
        .map_err(|e| format!("`{text}`: {e} (an address such as 127.0.0.1:6432, or off)"))
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("`{text}`: use viewer, operator or admin"))
}

impl Flags {
    /// The server's config from the command line.
    fn into_config(self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            database_url: self.database_url,
            data_dir: self.data_dir.unwrap_or_else(poolplane::default_data_dir),
            metrics_listen: self.metrics_listen,
            metrics_interval: self.metrics_interval,
            metrics_retention: self.metrics_retention,
            metrics_buffer_rows: self.metrics_buffer,
            load_test_limits: poolplane_server::grpc::pool_service::LoadTestLimits {
                max_concurrency: self.max_load_test_concurrency,
                max_duration: self.max_load_test_duration,
            },
            connection_reserve: self.connection_reserve,
            tls: self
                .tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| poolplane_server::TlsFiles {
                    cert,
                    key,
                    client_ca: self.tls_client_ca,
                    client_role: self.tls_client_role,
                }),
            shutdown_grace: self.shutdown_grace,
            auth_tokens_file: self.auth_tokens_file,
            insecure_no_auth: self.insecure_no_auth,
            secrets_key_file: self.secrets_key_file,
            allowed_db_hosts: self.allowed_db_hosts,
            max_pools: self.max_pools,
            auto_optimize_interval: Some(self.auto_optimize_interval).filter(|d| !d.is_zero()),
            demo: self.demo,
            pg: poolplane_server::PgFrontDoor {
                listen: self.pg_listen.0,
                tls: self.pg_tls_cert.zip(self.pg_tls_key),
                tls_required: self.pg_tls_required,
                users_file: self.pg_users_file,
                max_clients: self.pg_max_clients,
            },
            replica: poolplane_server::Replica {
                id: self.replica_id,
                lease: self.replica_lease,
            },
            limits: ServerLimits {
                max_watch_streams: self.max_watch_streams,
                max_watch_streams_per_connection: self.max_watch_streams_per_connection,
                max_concurrent_streams: self.max_concurrent_streams,
                http2_keepalive_interval: self.http2_keepalive_interval,
                http2_keepalive_timeout: self.http2_keepalive_timeout,
            },
        }
    }
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
    let server = Server::start(flags.into_config()).await;
    let server = match server {
        Ok(server) => server,
        Err(error) => {
            // One line, on stderr, whatever the log format.
            eprintln!(
                "poolplane-server could not start: {}",
                telemetry::error_chain(&error)
            );
            std::process::exit(2);
        }
    };

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
