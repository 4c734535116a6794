//! A private PostgreSQL cluster run from the system's binaries: throwaway (tests) or
//! kept in a data directory (the server's default control database).
//!
//! The cluster listens on a free loopback port and on a unix socket in its own
//! directory, with scram-sha-256 authentication and a generated password. As root,
//! initdb and postgres run as the `postgres` user (initdb refuses root). The cluster
//! is stopped by [`EmbeddedPg::stop`], on drop, and — if the owning process dies
//! without either (SIGKILL, abort) — by a watchdog process that notices the owner's
//! end of a pipe closing and then stops postgres (and removes a throwaway directory).

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use tempfile::TempDir;

/// The superuser of an embedded cluster.
pub const SUPERUSER: &str = "postgres";

const INSTALL_HINT: &str = "install the PostgreSQL server binaries with `apt-get install -y postgresql` \
     (as root; otherwise `sudo apt-get install -y postgresql`), or point POOLPLANE_PG_BINDIR \
     at the directory holding initdb and postgres";

/// Errors of the embedded cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    /// No initdb/postgres pair was found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found (looked in {searched}): {INSTALL_HINT}"
    )]
    BinariesNotFound {
        /// Where we looked.
        searched: String,
    },
    /// Running as root and there is no `postgres` user to run the cluster as.
    #[error(
        "running as root, and there is no `postgres` user to run PostgreSQL as: create it (`apt-get install -y postgresql` does) or run as a normal user"
    )]
    NoPostgresUser,
    /// A filesystem operation on the cluster's directory failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// initdb failed.
    #[error("initdb failed ({status}): {output}")]
    Initdb {
        /// Its exit status.
        status: String,
        /// Its output.
        output: String,
    },
    /// postgres did not start.
    #[error("postgres did not start: {reason}; last lines of {log}:\n{tail}")]
    Start {
        /// Why.
        reason: String,
        /// The log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// The data directory exists but is not one of ours.
    #[error(
        "{path} holds a PostgreSQL cluster but no password file {password_file}: not a poolplane data directory"
    )]
    ForeignDataDir {
        /// The data directory.
        path: PathBuf,
        /// The missing file.
        password_file: PathBuf,
    },
}

/// How to start an embedded cluster.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedPgOptions {
    /// Keep the cluster in this directory (created on first start, reused after).
    /// `None`: a throwaway temporary directory, removed when the cluster stops.
    pub data_dir: Option<PathBuf>,
    /// Extra server settings (`-c name=value`), e.g. `max_connections`.
    pub settings: Vec<(String, String)>,
    /// Serve TLS (`ssl = on`) with these PEM files, copied into the data directory.
    pub tls: Option<EmbeddedTls>,
    /// Replace pg_hba.conf with these lines (default: initdb's, scram-sha-256).
    pub hba: Option<Vec<String>>,
}

/// The TLS material of an embedded cluster, as PEM text.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedTls {
    /// The server's certificate chain.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The CA client certificates must be signed by (for `cert` authentication).
    pub client_ca_pem: Option<String>,
}

/// A running embedded PostgreSQL cluster.
#[derive(Debug)]
pub struct EmbeddedPg {
    base: PathBuf,
    port: u16,
    password: String,
    postmaster: Option<Child>,
    watchdog: Option<Child>,
    /// The settings it was started with (for a restart).
    settings: Vec<(String, String)>,
    // Dropped after `Drop::drop` has stopped the server.
    _temp: Option<TempDir>,
}

/// The paths inside a cluster's base directory.
struct Layout {
    pgdata: PathBuf,
    run: PathBuf,
    password_file: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn new(base: &Path) -> Self {
        Self {
            pgdata: base.join("pgdata"),
            run: base.join("run"),
            password_file: base.join("password"),
            log: base.join("postgres.log"),
        }
    }
}

/// Who runs initdb and postgres.
#[derive(Clone, Copy)]
struct RunAs {
    ids: Option<(u32, u32)>,
}

impl RunAs {
    fn detect() -> Result<Self, EmbeddedPgError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Self { ids: None });
        }
        let user = User::from_name(SUPERUSER)
            .ok()
            .flatten()
            .ok_or(EmbeddedPgError::NoPostgresUser)?;
        Ok(Self {
            ids: Some((user.uid.as_raw(), user.gid.as_raw())),
        })
    }

    fn command(self, program: &Path, cwd: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(cwd).env_remove("PGDATA");
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn give(self, path: &Path) -> Result<(), EmbeddedPgError> {
        if let Some((uid, gid)) = self.ids {
            chown(path, Some(uid), Some(gid)).map_err(io("changing the owner of", path))?;
        }
        Ok(())
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedPgError {
    let path = path.to_owned();
    move |source| EmbeddedPgError::Io { what, path, source }
}

/// The cluster's base directory: the data directory given, or a temporary one
/// (kept alive by the returned handle).
fn base_dir(
    options: &EmbeddedPgOptions,
) -> Result<(PathBuf, Option<tempfile::TempDir>), EmbeddedPgError> {
    Ok(match &options.data_dir {
        Some(dir) => {
            fs::create_dir_all(dir).map_err(io("creating", dir))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("poolplane-pg-")
                .tempdir()
                .map_err(io(
                    "creating a temporary directory in",
                    &std::env::temp_dir(),
                ))?;
            (temp.path().to_owned(), Some(temp))
        }
    })
}

/// The server settings: the caller's, TLS (its files written into the data
/// directory), and for a throwaway cluster durability traded for speed; the
/// pg_hba.conf lines are written too.
fn cluster_settings(
    options: &EmbeddedPgOptions,
    layout: &Layout,
    run_as: RunAs,
    throwaway: bool,
) -> Result<Vec<(String, String)>, EmbeddedPgError> {
    let mut settings = options.settings.clone();
    if let Some(tls) = &options.tls {
        let files = [
            ("server.crt", Some(&tls.cert_pem)),
            ("server.key", Some(&tls.key_pem)),
            ("root.crt", tls.client_ca_pem.as_ref()),
        ];
        for (name, contents) in files {
            if let Some(contents) = contents {
                let path = layout.pgdata.join(name);
                write_private(&path, contents)?;
                run_as.give(&path)?;
            }
        }
        settings.push(("ssl".into(), "on".into()));
        settings.push(("ssl_cert_file".into(), "server.crt".into()));
        settings.push(("ssl_key_file".into(), "server.key".into()));
        if tls.client_ca_pem.is_some() {
            settings.push(("ssl_ca_file".into(), "root.crt".into()));
        }
    }
    if let Some(lines) = &options.hba {
        let path = layout.pgdata.join("pg_hba.conf");
        write_private(&path, &(lines.join("\n") + "\n"))?;
        run_as.give(&path)?;
    }
    if throwaway {
        // A throwaway cluster trades durability for speed.
        for (name, value) in [
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
        ] {
            if !settings.iter().any(|(n, _)| n == name) {
                settings.push((name.into(), value.into()));
            }
        }
    }
    Ok(settings)
}

/// A cluster's directories, password and settings, ready for postgres to start.
struct Prepared {
    bindir: PathBuf,
    run_as: RunAs,
    base: PathBuf,
    temp: Option<tempfile::TempDir>,
    layout: Layout,
    password: String,
    settings: Vec<(String, String)>,
}

/// The blocking part of a start: the binaries found, the data directory made
/// (initdb on first use) and the settings written.
fn prepare(options: &EmbeddedPgOptions) -> Result<Prepared, EmbeddedPgError> {
    let bindir = find_bindir()?;
    let run_as = RunAs::detect()?;
    let (base, temp) = base_dir(options)?;
    // The postgres user must be able to traverse into its directories.
    fs::set_permissions(&base, fs::Permissions::from_mode(0o711))
        .map_err(io("setting permissions of", &base))?;
    let layout = Layout::new(&base);
    let throwaway = temp.is_some();

    let password = if layout.pgdata.join("PG_VERSION").exists() {
        fs::read_to_string(&layout.password_file)
            .map(|p| p.trim().to_owned())
            .map_err(|_| EmbeddedPgError::ForeignDataDir {
                path: layout.pgdata.clone(),
                password_file: layout.password_file.clone(),
            })?
    } else {
        initdb(&bindir, run_as, &layout, throwaway)?
    };
    let run = &layout.run;
    fs::create_dir_all(run).map_err(io("creating", run))?;
    fs::set_permissions(run, fs::Permissions::from_mode(0o700))
        .map_err(io("setting permissions of", run))?;
    run_as.give(run)?;

    let settings = cluster_settings(options, &layout, run_as, throwaway)?;
    Ok(Prepared {
        bindir,
        run_as,
        base,
        temp,
        layout,
        password,
        settings,
    })
}

impl EmbeddedPg {
    /// Starts a throwaway cluster in a temporary directory.
    pub async fn start_temporary() -> Result<Self, EmbeddedPgError> {
        Self::start(EmbeddedPgOptions::default()).await
    }

    /// Starts a cluster as `options` say: initdb on first use of a data directory,
    /// then postgres on a free loopback port; returns once it accepts connections.
    pub async fn start(options: EmbeddedPgOptions) -> Result<Self, EmbeddedPgError> {
        // initdb and the file work block for a second or more: off the runtime.
        let Prepared {
            bindir,
            run_as,
            base,
            temp,
            layout,
            password,
            settings,
        } = tokio::task::spawn_blocking(move || prepare(&options))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;

        // A just-killed previous owner's postmaster may still hold the data
        // directory's lock for a moment; a port may be taken between our probe and
        // postgres's bind. Both are retried.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let port = free_port().map_err(io("finding a free port on", Path::new("127.0.0.1")))?;
            let mut postmaster = spawn_postgres(&bindir, run_as, &layout, port, &settings)?;
            let watchdog = spawn_watchdog(postmaster.id(), temp.as_ref().map(|t| t.path()))?;
            match wait_ready(&mut postmaster, port, &password, deadline).await {
                Ok(()) => {
                    tracing::debug!(port, dir = %base.display(), "embedded PostgreSQL is ready");
                    return Ok(Self {
                        base,
                        port,
                        password,
                        postmaster: Some(postmaster),
                        watchdog: Some(watchdog),
                        settings,
                        _temp: temp,
                    });
                }
                Err(reason) => {
                    tokio::task::spawn_blocking(move || {
                        stop_child(&mut postmaster, Duration::from_secs(10));
                        stop_watchdog(watchdog);
                    })
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    let tail = log_tail(&layout.log);
                    let retry = tail.contains("could not bind")
                        || tail.contains("Address already in use")
                        || tail.contains("lock file \"postmaster.pid\" already exists");
                    if !retry || Instant::now() >= deadline {
                        return Err(EmbeddedPgError::Start {
                            reason,
                            log: layout.log.clone(),
                            tail,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// The loopback TCP port the cluster listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.postmaster.as_ref().map_or(0, Child::id)
    }

    /// The cluster's base directory (data directory, socket directory, log, password).
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A postgres:// URL for `database` as the superuser over loopback TCP.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Restarts the cluster on the same port (fast shutdown, then start): every
    /// connection to it is broken, as in a database restart or failover.
    pub async fn restart(&mut self) -> Result<(), EmbeddedPgError> {
        let bindir = find_bindir()?;
        let run_as = RunAs::detect()?;
        let layout = Layout::new(&self.base);
        if let Some(mut postmaster) = self.postmaster.take() {
            tokio::task::spawn_blocking(move || {
                stop_child(&mut postmaster, Duration::from_secs(20))
            })
            .await
            .ok();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let throwaway = self._temp.as_ref().map(|t| t.path().to_owned());
        loop {
            let mut postmaster =
                spawn_postgres(&bindir, run_as, &layout, self.port, &self.settings)?;
            match wait_ready(&mut postmaster, self.port, &self.password, deadline).await {
                Ok(()) => {
                    let watchdog = spawn_watchdog(postmaster.id(), throwaway.as_deref())?;
                    if let Some(old) = self.watchdog.replace(watchdog) {
                        stop_watchdog(old);
                    }
                    self.postmaster = Some(postmaster);
                    return Ok(());
                }
                Err(reason) => {
                    stop_child(&mut postmaster, Duration::from_secs(10));
                    if Instant::now() >= deadline {
                        return Err(EmbeddedPgError::Start {
                            reason,
                            log: layout.log.clone(),
                            tail: log_tail(&layout.log),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Stops the cluster (fast shutdown), waiting for it to exit.
    pub async fn stop(mut self) {
        if let Some(mut postmaster) = self.postmaster.take() {
            tokio::task::spawn_blocking(move || {
                stop_child(&mut postmaster, Duration::from_secs(20))
            })
            .await
            .ok();
        }
        if let Some(watchdog) = self.watchdog.take() {
            stop_watchdog(watchdog);
        }
    }
}

/// Dropped without [`EmbeddedPg::stop`]: never blocks the (possibly async) caller
/// for long. A throwaway cluster gets PostgreSQL's immediate shutdown (SIGQUIT:
/// no checkpoint, gone in milliseconds) and is waited for briefly, so that its
/// temporary directory is removed after it exits; a kept data directory gets a
/// fast shutdown (SIGINT, with its checkpoint) waited for on a thread of its own.
impl Drop for EmbeddedPg {
    fn drop(&mut self) {
        let postmaster = self.postmaster.take();
        let watchdog = self.watchdog.take();
        if self._temp.is_some() {
            if let Some(mut postmaster) = postmaster {
                let pid = Pid::from_raw(postmaster.id() as i32);
                let _ = kill(pid, Signal::SIGQUIT);
                stop_child(&mut postmaster, Duration::from_secs(2));
            }
            if let Some(watchdog) = watchdog {
                stop_watchdog(watchdog);
            }
            return;
        }
        std::thread::spawn(move || {
            if let Some(mut postmaster) = postmaster {
                stop_child(&mut postmaster, Duration::from_secs(20));
            }
            if let Some(watchdog) = watchdog {
                stop_watchdog(watchdog);
            }
        });
    }
}

/// Finds the directory holding initdb and postgres.
fn find_bindir() -> Result<PathBuf, EmbeddedPgError> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("POOLPLANE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if has_both(&dir) {
            Ok(dir)
        } else {
            Err(EmbeddedPgError::BinariesNotFound {
                searched: format!("POOLPLANE_PG_BINDIR={}", dir.display()),
            })
        };
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    // Debian/Ubuntu: /usr/lib/postgresql/<major>/bin, newest major first.
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut versioned: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((major, e.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
        candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|dir| has_both(dir))
        .ok_or_else(|| EmbeddedPgError::BinariesNotFound {
            searched: "pg_config --bindir, /usr/lib/postgresql/*/bin, PATH".into(),
        })
}

/// Runs initdb with a generated superuser password; returns the password.
fn initdb(
    bindir: &Path,
    run_as: RunAs,
    layout: &Layout,
    throwaway: bool,
) -> Result<String, EmbeddedPgError> {
    let password = generate_password()?;
    fs::create_dir_all(&layout.pgdata).map_err(io("creating", &layout.pgdata))?;
    fs::set_permissions(&layout.pgdata, fs::Permissions::from_mode(0o700))
        .map_err(io("setting permissions of", &layout.pgdata))?;
    run_as.give(&layout.pgdata)?;

    // initdb reads the password from a file the postgres user can read; it lives
    // only for the duration of initdb.
    let base = layout.pgdata.parent().unwrap_or(Path::new("/"));
    let pwfile = base.join(".initdb-pwfile");
    write_private(&pwfile, &password)?;
    run_as.give(&pwfile)?;
    let mut command = run_as.command(&bindir.join("initdb"), base);
    command
        .arg("-D")
        .arg(&layout.pgdata)
        .args([
            "-U",
            SUPERUSER,
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", pwfile.display()));
    if throwaway {
        command.arg("--no-sync");
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(io("running", &bindir.join("initdb")));
    let _ = fs::remove_file(&pwfile);
    let output = output?;
    if !output.status.success() {
        return Err(EmbeddedPgError::Initdb {
            status: output.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    // Written last: its presence marks a finished initdb of ours.
    write_private(&layout.password_file, &password)?;
    Ok(password)
}

fn write_private(path: &Path, contents: &str) -> Result<(), EmbeddedPgError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("writing", path))?;
    file.write_all(contents.as_bytes())
        .map_err(io("writing", path))
}

fn generate_password() -> Result<String, EmbeddedPgError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 18];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("reading", path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn spawn_postgres(
    bindir: &Path,
    run_as: RunAs,
    layout: &Layout,
    port: u16,
    settings: &[(String, String)],
) -> Result<Child, EmbeddedPgError> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&layout.log)
        .map_err(io("opening", &layout.log))?;
    let log_err = log.try_clone().map_err(io("opening", &layout.log))?;
    let mut command = run_as.command(&bindir.join("postgres"), &layout.run);
    command
        .arg("-D")
        .arg(&layout.pgdata)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(&layout.run)
        .args(["-c", "listen_addresses=127.0.0.1"]);
    for (name, value) in settings {
        command.arg("-c").arg(format!("{name}={value}"));
    }
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a terminal's ^C reaches us, and we stop it in order.
        .process_group(0)
        .spawn()
        .map_err(io("running", &bindir.join("postgres")))
}

/// Starts the parent-death safeguard: a shell that blocks reading a pipe whose write
/// end only we hold. When we exit, however we exit, the kernel closes it; the shell
/// then stops the postmaster and removes a throwaway directory.
fn spawn_watchdog(postmaster: u32, throwaway_dir: Option<&Path>) -> Result<Child, EmbeddedPgError> {
    const SCRIPT: &str = r#"trap '' INT HUP TERM
read -r _ignored
kill -INT "$1" 2>/dev/null
i=0
while kill -0 "$1" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$1" 2>/dev/null
if [ -n "$2" ]; then rm -rf -- "$2"; fi
"#;
    let dir = throwaway_dir
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    Command::new("/bin/sh")
        .args(["-c", SCRIPT, "poolplane-pg-watchdog"])
        .arg(postmaster.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(io("running", Path::new("/bin/sh")))
}

/// Ends a watchdog whose cluster we stopped ourselves.
fn stop_watchdog(mut watchdog: Child) {
    let _ = watchdog.kill();
    let _ = watchdog.wait();
}

async fn wait_ready(
    postmaster: &mut Child,
    port: u16,
    password: &str,
    deadline: Instant,
) -> Result<(), String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(SUPERUSER)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    loop {
        if let Ok(Some(status)) = postmaster.try_wait() {
            return Err(format!("postgres exited with {status}"));
        }
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                drop(client);
                let _ = connection.await;
                return Ok(());
            }
            // The server answered (pg_hba.conf may refuse this plaintext
            // superuser connection): it is up, unless it says it is starting.
            Err(e)
                if e.as_db_error().is_some_and(|db| {
                    *db.code() != tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW
                }) =>
            {
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("not accepting connections in time: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Fast shutdown (SIGINT), then SIGKILL if it has not exited within `grace`.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGINT);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    tracing::warn!(
        pid = child.id(),
        "postgres did not stop in time; killing it"
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
