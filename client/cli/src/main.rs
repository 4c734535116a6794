//! `poolctl`: the command line for a poolplane server.

mod output;
mod password;
mod top;

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use poolplane_client::PoolplaneClient;
use poolplane_client::proto::run_load_test_response::Update;
use poolplane_client::proto::{PoolConfig, RunLoadTestRequest, WarmupQueries};

use output::{Format, Printer};

/// Command line for poolplane's gRPC control plane.
#[derive(Debug, Parser)]
#[command(
    name = "poolctl",
    version,
    about,
    after_help = "Examples:\n  PGPASSWORD=… poolctl pools create primary --url postgres://app@127.0.0.1/app --preset production --max 40\n  poolctl pools list --output json\n  poolctl stats primary --watch\n  poolctl loadtest primary -c 50 -d 60\n  poolctl optimize --apply"
)]
struct Cli {
    /// The server's gRPC address.
    #[arg(
        long,
        env = "POOLPLANE_SERVER",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    server: String,

    /// A bearer token sent with every call.
    #[arg(long, env = "POOLPLANE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// Connect over TLS, trusting this PEM CA certificate.
    #[arg(long, env = "POOLPLANE_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,

    /// The name the server's certificate carries (default: the host).
    #[arg(long, env = "POOLPLANE_TLS_DOMAIN", global = true)]
    tls_domain: Option<String>,

    /// Mutual TLS: present this PEM client certificate (with --tls-key).
    #[arg(long, env = "POOLPLANE_TLS_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "POOLPLANE_TLS_KEY", global = true, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// Output: human tables or stable JSON.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, inspect, change and delete pools.
    #[command(subcommand)]
    Pools(PoolsCommand),
    /// A pool's stats (all pools without NAME); --watch follows them.
    Stats {
        /// The pool.
        name: Option<String>,
        /// Keep printing a snapshot every second.
        #[arg(long)]
        watch: bool,
        /// Each replica's stats of the pool and the group's total (`NAME@replica`
        /// rows, then `NAME (group)`); with --watch, every second.
        #[arg(long)]
        group: bool,
    },
    /// A pool's health (all pools without NAME); --watch follows its events.
    Health {
        /// The pool.
        name: Option<String>,
        /// Keep printing health events.
        #[arg(long)]
        watch: bool,
    },
    /// Follow health and scaling events.
    Events {
        /// Only this pool (repeatable).
        #[arg(long = "pool")]
        pools: Vec<String>,
    },
    /// Load-test a pool: live progress, then the graded summary.
    #[command(after_help = "Example:\n  poolctl loadtest primary -c 50 -d 60 --query 'SELECT 1'")]
    Loadtest(LoadtestArgs),
    /// Recommendations for every pool (or --pool ones); --apply makes them.
    Optimize {
        /// Only this pool (repeatable).
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// Make the numeric changes.
        #[arg(long)]
        apply: bool,
    },
    /// A live full-screen view of every pool and the latest events (q quits).
    Top,
    /// The servers of the group sharing this server's control database.
    Replicas,
    /// The PostgreSQL front door's clients (of POOL only, if given).
    Clients {
        /// The pool.
        pool: Option<String>,
    },
    /// Pause a pool's front door: new transactions wait, those in flight finish.
    Pause {
        /// The pool.
        name: String,
        /// Seconds to wait for it to drain.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Resume a paused pool.
    Resume {
        /// The pool.
        name: String,
    },
    /// Replace every connection of a pool, each after its current use.
    Reconnect {
        /// The pool.
        name: String,
    },
    /// End a front-door client (its transaction, if any, is rolled back).
    KillClient {
        /// The client's id (from `poolctl clients`).
        id: u64,
    },
    /// Run SQL through a pool (QueryService): rows as a table or JSON. PARAMs fill
    /// $1, $2…, in PostgreSQL's text form (the server parses them for their type).
    #[command(
        after_help = "Examples:\n  poolctl query demo 'SELECT aid, abalance FROM pgbench_accounts WHERE aid = $1' 42\n  poolctl query demo 'SELECT now()' --output json"
    )]
    Query(QueryArgs),
    /// Print a shell completion script (e.g. `poolctl completions bash >
    /// /etc/bash_completion.d/poolctl`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// A pool's recorded metrics.
    History {
        /// The pool.
        name: String,
        /// How far back, with a unit (30m, 1h, 7d).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        since: Duration,
        /// At most this many points (with --changes: changes).
        #[arg(long, default_value_t = 20)]
        points: u32,
        /// Show the pool's config changes (who, what, why) instead of metrics.
        #[arg(long)]
        changes: bool,
        /// One replica of the group only (default: every replica, summed).
        #[arg(long, conflicts_with = "changes")]
        replica: Option<String>,
    },
}

/// `poolctl loadtest`'s arguments.
#[derive(Debug, Args)]
struct LoadtestArgs {
    /// The pool.
    name: String,
    /// Requests in flight at once.
    #[arg(short = 'c', long, default_value_t = 8)]
    concurrency: u32,
    /// Seconds to measure.
    #[arg(short = 'd', long, default_value_t = 10)]
    duration: u32,
    /// The statement (default: the pool's validation query).
    #[arg(long)]
    query: Option<String>,
    /// Seconds of unmeasured warm-up.
    #[arg(long, default_value_t = 0)]
    warmup: u32,
    /// Open loop at this many requests per second.
    #[arg(long)]
    rps: Option<f64>,
    /// Let the query write (admin only; otherwise it runs read-only and is
    /// rolled back).
    #[arg(long)]
    read_write: bool,
}

impl LoadtestArgs {
    fn into_request(self) -> RunLoadTestRequest {
        RunLoadTestRequest {
            pool_name: self.name,
            concurrency: self.concurrency,
            duration_secs: self.duration,
            query: self.query.unwrap_or_default(),
            warmup_secs: self.warmup,
            target_rps: self.rps,
            read_write: self.read_write,
        }
    }
}

/// `poolctl query`'s arguments.
#[derive(Debug, Args)]
struct QueryArgs {
    /// The pool.
    name: String,
    /// The SQL.
    sql: String,
    /// Parameters for $1, $2…
    params: Vec<String>,
    /// At most this many rows (default 10000).
    #[arg(long, default_value_t = 0)]
    max_rows: u32,
    /// Time limit in ms (the statement is cancelled in PostgreSQL after it).
    #[arg(long, default_value_t = 0)]
    timeout_ms: u32,
}

impl QueryArgs {
    fn into_request(self) -> poolplane_client::proto::QueryRequest {
        use poolplane_client::IntoValue;
        poolplane_client::proto::QueryRequest {
            pool_name: self.name,
            sql: self.sql,
            params: self.params.into_iter().map(IntoValue::into_value).collect(),
            max_rows: self.max_rows,
            timeout_ms: self.timeout_ms,
        }
    }
}

#[derive(Debug, Subcommand)]
enum PoolsCommand {
    /// Create a pool.
    #[command(
        after_help = "A URL without a password takes one from --password-stdin, else PGPASSWORD, else\n\
                      the password file (PGPASSFILE or ~/.pgpass, libpq's format and rules),\n\
                      so that it never has to be on the command line.\n\n\
                      Example:\n  poolctl pools create primary --url postgres://app@127.0.0.1/app --min 2 --max 20"
    )]
    Create {
        /// The pool's name.
        name: String,
        /// Its database (postgres:// URL or key=value conninfo).
        #[arg(long)]
        url: String,
        /// Read the database password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        config: Box<ConfigArgs>,
    },
    /// List every pool; --watch prints the list again whenever a pool is
    /// created, changed, deleted or changes health.
    List {
        /// Keep following.
        #[arg(long)]
        watch: bool,
    },
    /// Show one pool.
    Get {
        /// The pool.
        name: String,
    },
    /// Change the given config fields.
    Update {
        /// The pool.
        name: String,
        #[command(flatten)]
        config: Box<ConfigArgs>,
    },
    /// Delete a pool.
    Delete {
        /// The pool.
        name: String,
    },
}

/// Every AdvancedPoolConfig field as a flag; unset flags leave the field alone.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// Start from a preset: default, production or development.
    #[arg(long)]
    preset: Option<String>,
    /// max_connections.
    #[arg(long = "max")]
    max_connections: Option<u32>,
    /// min_connections.
    #[arg(long = "min")]
    min_connections: Option<u32>,
    /// acquire_timeout_secs.
    #[arg(long)]
    acquire_timeout_secs: Option<u64>,
    /// idle_timeout_secs.
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// max_lifetime_secs.
    #[arg(long)]
    max_lifetime_secs: Option<u64>,
    /// statement_cache_capacity.
    #[arg(long)]
    statement_cache_capacity: Option<u32>,
    /// enable_prepared_statements (true/false).
    #[arg(long)]
    enable_prepared_statements: Option<bool>,
    /// health_check_interval_secs.
    #[arg(long)]
    health_check_interval_secs: Option<u64>,
    /// health_check_timeout_secs.
    #[arg(long)]
    health_check_timeout_secs: Option<u64>,
    /// max_failed_health_checks.
    #[arg(long)]
    max_failed_health_checks: Option<u32>,
    /// enable_dynamic_sizing (true/false).
    #[arg(long)]
    enable_dynamic_sizing: Option<bool>,
    /// load_threshold_high.
    #[arg(long)]
    load_threshold_high: Option<f64>,
    /// load_threshold_low.
    #[arg(long)]
    load_threshold_low: Option<f64>,
    /// scale_up_factor.
    #[arg(long)]
    scale_up_factor: Option<f64>,
    /// scale_down_factor.
    #[arg(long)]
    scale_down_factor: Option<f64>,
    /// min_scale_interval_secs.
    #[arg(long)]
    min_scale_interval_secs: Option<u64>,
    /// enable_connection_validation (true/false).
    #[arg(long)]
    enable_connection_validation: Option<bool>,
    /// validation_query.
    #[arg(long)]
    validation_query: Option<String>,
    /// A connection warmup query (repeatable; replaces the list).
    #[arg(long = "warmup-query")]
    warmup_queries: Vec<String>,
    /// enable_connection_recycling (true/false).
    #[arg(long)]
    enable_connection_recycling: Option<bool>,
    /// recycle_threshold_queries.
    #[arg(long)]
    recycle_threshold_queries: Option<u64>,
    /// validation_idle_threshold_ms.
    #[arg(long)]
    validation_idle_threshold_ms: Option<u64>,
    /// pool_mode of front-door clients: transaction or session.
    #[arg(long)]
    pool_mode: Option<String>,
    /// max_client_connections (front-door clients of the pool; 0: no pool limit).
    #[arg(long)]
    max_client_connections: Option<u32>,
    /// client_idle_timeout_secs (0: off).
    #[arg(long)]
    client_idle_timeout_secs: Option<u64>,
    /// idle_in_transaction_timeout_secs (0: off).
    #[arg(long)]
    idle_in_transaction_timeout_secs: Option<u64>,
    /// query_timeout_secs (0: off).
    #[arg(long)]
    query_timeout_secs: Option<u64>,
    /// session_state in transaction mode: pin (LISTEN, temp tables… keep the
    /// backend) or refuse.
    #[arg(long)]
    session_state: Option<String>,
}

impl ConfigArgs {
    fn into_proto(self: Box<Self>) -> PoolConfig {
        PoolConfig {
            preset: self.preset,
            max_connections: self.max_connections,
            min_connections: self.min_connections,
            acquire_timeout_secs: self.acquire_timeout_secs,
            idle_timeout_secs: self.idle_timeout_secs,
            max_lifetime_secs: self.max_lifetime_secs,
            statement_cache_capacity: self.statement_cache_capacity,
            enable_prepared_statements: self.enable_prepared_statements,
            health_check_interval_secs: self.health_check_interval_secs,
            health_check_timeout_secs: self.health_check_timeout_secs,
            max_failed_health_checks: self.max_failed_health_checks,
            enable_dynamic_sizing: self.enable_dynamic_sizing,
            load_threshold_high: self.load_threshold_high,
            load_threshold_low: self.load_threshold_low,
            scale_up_factor: self.scale_up_factor,
            scale_down_factor: self.scale_down_factor,
            min_scale_interval_secs: self.min_scale_interval_secs,
            enable_connection_validation: self.enable_connection_validation,
            validation_query: self.validation_query,
            connection_warmup_queries: (!self.warmup_queries.is_empty()).then_some(WarmupQueries {
                queries: self.warmup_queries,
            }),
            enable_connection_recycling: self.enable_connection_recycling,
            recycle_threshold_queries: self.recycle_threshold_queries,
            validation_idle_threshold_ms: self.validation_idle_threshold_ms,
            pool_mode: self.pool_mode,
            max_client_connections: self.max_client_connections,
            client_idle_timeout_secs: self.client_idle_timeout_secs,
            idle_in_transaction_timeout_secs: self.idle_in_transaction_timeout_secs,
            query_timeout_secs: self.query_timeout_secs,
            session_state: self.session_state,
        }
    }
}

/// A duration with a unit: `ms`, `s`, `m`, `h` or `d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. 30m, 1h, 7d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a number and a unit"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => return Err(format!("unknown unit `{other}`: use ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let printer = Printer::new(match cli.output {
        Output::Table => Format::Table,
        Output::Json => Format::Json,
    });
    match run(cli, &printer).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", output::clean(&describe(&error)));
            ExitCode::FAILURE
        }
    }
}

/// One line: the server's message and any field violations.
fn describe(error: &anyhow::Error) -> String {
    match error.downcast_ref::<poolplane_client::Error>() {
        Some(e) => {
            let violations = e.field_violations();
            match (e.status(), violations.is_empty()) {
                (Some(status), true) => format!("{:?}: {}", status.code(), status.message()),
                (Some(status), false) => format!(
                    "{:?}: {}",
                    status.code(),
                    violations
                        .iter()
                        .map(|(f, d)| format!("{f}: {d}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                (None, _) => e.to_string(),
            }
        }
        None => format!("{error:#}"),
    }
}

/// `name`, or every pool's name when none is given.
async fn named_or_all(
    client: &PoolplaneClient,
    name: Option<String>,
) -> anyhow::Result<Vec<String>> {
    Ok(match name {
        Some(name) => vec![name],
        None => client
            .list_pools()
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect(),
    })
}

/// `poolctl stats`: a snapshot of each pool (all without `name`), followed
/// every second (`watch`), or per replica with the group's total (`group`).
async fn stats(
    client: &PoolplaneClient,
    name: Option<String>,
    watch: bool,
    group: bool,
    out: &Printer,
) -> anyhow::Result<()> {
    if group && watch {
        let names: Vec<&str> = name.iter().map(String::as_str).collect();
        let mut watch = client.watch_group_pool_stats(&names, 1000).await?;
        while let Some(snapshot) = watch.next().await? {
            let n = snapshot.stats.unwrap_or_default().pool_name;
            out.stats(&group_rows(&n, snapshot.replicas, snapshot.total));
        }
    } else if group {
        out.stats(&group_stats(client, name).await?);
    } else if watch {
        let names: Vec<&str> = name.iter().map(String::as_str).collect();
        let mut watch = client.watch_pool_stats(&names, 1000).await?;
        while let Some(stats) = watch.next().await? {
            out.stats(&[stats]);
        }
    } else {
        let names = named_or_all(client, name).await?;
        out.stats(&each(names, |n| async move { client.get_pool_stats(&n).await }).await?);
    }
    Ok(())
}

/// Each replica's stats of the pool (all pools without `name`), as
/// `NAME@replica` rows, then the group's total as `NAME (group)`.
async fn group_stats(
    client: &PoolplaneClient,
    name: Option<String>,
) -> anyhow::Result<Vec<poolplane_client::proto::PoolStats>> {
    let mut rows = Vec::new();
    for n in named_or_all(client, name).await? {
        let (replicas, total) = client.get_group_pool_stats(&n).await?;
        rows.extend(group_rows(&n, replicas, Some(total)));
    }
    Ok(rows)
}

/// Pool `name`'s rows over the group: `NAME@replica` each, then `NAME (group)`.
fn group_rows(
    name: &str,
    replicas: Vec<poolplane_client::proto::ReplicaPoolStats>,
    total: Option<poolplane_client::proto::PoolStats>,
) -> Vec<poolplane_client::proto::PoolStats> {
    let mut rows: Vec<_> = replicas
        .into_iter()
        .map(|r| {
            let mut stats = r.stats.unwrap_or_default();
            stats.pool_name = format!("{name}@{}", r.replica_id);
            stats
        })
        .collect();
    if let Some(mut total) = total {
        total.pool_name = format!("{name} (group)");
        rows.push(total);
    }
    rows
}

/// The front door's operations: clients, pause, resume, reconnect, kill.
async fn operate(client: &PoolplaneClient, command: Command, out: &Printer) -> anyhow::Result<()> {
    match command {
        Command::Clients { pool } => out.clients(&client.list_clients(pool.as_deref()).await?),
        Command::Replicas => out.replicas(&client.list_replicas().await?),
        Command::Pause { name, timeout } => {
            let busy = client.pause_pool(&name, timeout).await?;
            out.done(&if busy == 0 {
                format!("{name}: paused and drained")
            } else {
                format!("{name}: paused; {busy} clients still hold a backend")
            });
        }
        Command::Resume { name } => {
            client.resume_pool(&name).await?;
            out.done(&format!("{name}: resumed"));
        }
        Command::Reconnect { name } => {
            let n = client.reconnect_pool(&name).await?;
            out.done(&format!("{name}: {n} connections are being replaced"));
        }
        Command::KillClient { id } => {
            client.kill_client(id).await?;
            out.done(&format!("client {id} is being ended"));
        }
        _ => unreachable!("only the front door's operations come here"),
    }
    Ok(())
}

async fn run(cli: Cli, out: &Printer) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "poolctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let client = connect(&cli).await?;
    match cli.command {
        Command::Pools(command) => pools(&client, command, out).await?,
        Command::Stats { name, watch, group } => stats(&client, name, watch, group, out).await?,
        Command::Health { name, watch: false } => {
            let names = named_or_all(&client, name).await?;
            let client = &client;
            out.health(&each(names, |n| async move { client.get_health_status(&n).await }).await?);
        }
        Command::Health { name, watch: true } => {
            print_events(&client, &Vec::from_iter(name), out).await?
        }
        Command::Events { pools } => print_events(&client, &pools, out).await?,
        Command::Loadtest(args) => load_test(&client, args.into_request(), out).await?,
        Command::Optimize { pools, apply } => {
            let names: Vec<&str> = pools.iter().map(String::as_str).collect();
            out.report(&client.optimize_pools(&names, apply).await?);
        }
        Command::Top => top::run(client, cli.server.clone()).await?,
        command @ (Command::Clients { .. }
        | Command::Replicas
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Reconnect { .. }
        | Command::KillClient { .. }) => operate(&client, command, out).await?,
        Command::Completions { .. } => unreachable!("answered before connecting"),
        Command::Query(args) => out.query(&query(&client, args.into_request()).await?),
        Command::History {
            name,
            points,
            changes: true,
            ..
        } => out.changes(&client.list_config_changes(&name, points).await?),
        Command::History {
            name,
            since,
            points,
            changes: false,
            replica,
        } => {
            let to = SystemTime::now();
            let from = Some(to - since);
            out.history(
                &client
                    .get_replica_metrics_history(&name, from, Some(to), points, replica.as_deref())
                    .await?,
            );
        }
    }
    Ok(())
}

/// `call` for every name, in order; the first error stops.
async fn each<T, F, Fut>(names: Vec<String>, call: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, poolplane_client::Error>>,
{
    let mut all = Vec::with_capacity(names.len());
    for name in names {
        all.push(call(name).await?);
    }
    Ok(all)
}

/// `poolctl query`: one statement through QueryService.
async fn query(
    client: &PoolplaneClient,
    request: poolplane_client::proto::QueryRequest,
) -> anyhow::Result<poolplane_client::proto::QueryResponse> {
    Ok(client
        .query_service()
        .query(request)
        .await
        .map_err(poolplane_client::Error::from)?
        .into_inner())
}

/// A client for `--server` with the global options (token, TLS).
async fn connect(cli: &Cli) -> anyhow::Result<PoolplaneClient> {
    let mut builder = PoolplaneClient::builder(&cli.server).retries(3);
    if let Some(token) = &cli.token {
        builder = builder.bearer_token(token);
    }
    if let Some(ca) = &cli.tls_ca {
        builder = builder.tls_ca_file(ca);
    }
    if let Some(domain) = &cli.tls_domain {
        builder = builder.tls_domain(domain);
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        builder = builder.tls_client_identity_files(cert, key);
    }
    Ok(builder.connect().await?)
}

/// `poolctl pools …`.
async fn pools(
    client: &PoolplaneClient,
    command: PoolsCommand,
    out: &Printer,
) -> anyhow::Result<()> {
    match command {
        PoolsCommand::Create {
            name,
            url,
            password_stdin,
            config,
        } => {
            let stdin = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Some(line.trim_end_matches(['\n', '\r']).to_owned())
            } else {
                None
            };
            let url = password::complete(&url, stdin)?;
            let (pool, warnings) = client
                .create_pool_with_warnings(&name, &url, config.into_proto())
                .await?;
            out.warnings(&warnings);
            out.pool(&pool);
        }
        PoolsCommand::List { watch: false } => out.pools(&client.list_pools().await?),
        PoolsCommand::List { watch: true } => watch_pools(client, out).await?,
        PoolsCommand::Get { name } => out.pool(&client.get_pool(&name).await?),
        PoolsCommand::Update { name, config } => {
            let (pool, warnings) = client
                .update_pool_config_with_warnings(&name, config.into_proto())
                .await?;
            out.warnings(&warnings);
            out.pool(&pool);
        }
        PoolsCommand::Delete { name } => {
            client.delete_pool(&name).await?;
            out.done(&format!("pool {name} deleted"));
        }
    }
    Ok(())
}

/// `poolctl pools list --watch`: the list again whenever a pool comes, goes,
/// changes or changes health.
async fn watch_pools(client: &PoolplaneClient, out: &Printer) -> anyhow::Result<()> {
    use poolplane_client::proto::pool_event::Kind;
    let mut events = client.watch_health_events(&[]).await?;
    out.pools(&client.list_pools().await?);
    while let Some(event) = events.next().await? {
        if matches!(
            event.kind,
            Some(
                Kind::PoolCreated(_)
                    | Kind::PoolUpdated(_)
                    | Kind::PoolDeleted(_)
                    | Kind::BecameUnhealthy(_)
                    | Kind::Recovered(_)
            )
        ) {
            out.pools(&client.list_pools().await?);
        }
    }
    Ok(())
}

/// Every event of `pools` (all when empty) as it comes.
async fn print_events(
    client: &PoolplaneClient,
    pools: &[String],
    out: &Printer,
) -> anyhow::Result<()> {
    let names: Vec<&str> = pools.iter().map(String::as_str).collect();
    let mut watch = client.watch_health_events(&names).await?;
    while let Some(event) = watch.next().await? {
        out.event(&event);
    }
    Ok(())
}

/// `poolctl loadtest`: progress as it runs, then the result.
async fn load_test(
    client: &PoolplaneClient,
    request: RunLoadTestRequest,
    out: &Printer,
) -> anyhow::Result<()> {
    let duration = request.duration_secs;
    let mut stream = client.run_load_test(request).await?;
    while let Some(update) = stream.next().await? {
        match update {
            Update::Progress(p) => out.progress(&p, duration),
            Update::Result(result) => {
                out.end_progress();
                out.load_test(&result);
            }
        }
    }
    Ok(())
}
