//! Child processes (ingress, worker) and everything a run creates outside itself, removed by one
//! guard: on success, on error, on panic and on Ctrl-C, [`Cleanup`] stops the children (SIGTERM,
//! then SIGKILL after 10 s), drops the bench database and deletes every queue and exchange the run
//! declared.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use broker::{
    Topology,
    lapin::{
        Connection, ConnectionProperties,
        options::{ExchangeDeleteOptions, QueueDeleteOptions},
    },
};
use sea_orm::{ConnectOptions, ConnectionTrait, Database};

/// How long a child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A child process and where its output goes.
struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The resources of one run; dropping it removes them all.
pub struct Cleanup {
    children: Vec<Managed>,
    amqp_url: String,
    /// Prefixes whose exchange and queues the run declared (through the ingress or worker).
    topologies: Vec<Topology>,
    /// Other queues the run declared (the broker ceiling's).
    queues: Vec<String>,
    /// The Postgres server and the name of each database the run created.
    databases: Vec<(PgServer, String)>,
}

impl Cleanup {
    pub fn new(amqp_url: &str) -> Self {
        Self {
            children: Vec::new(),
            amqp_url: amqp_url.to_owned(),
            topologies: Vec::new(),
            queues: Vec::new(),
            databases: Vec::new(),
        }
    }

    /// Creates database `name` on `server` and remembers to drop it.
    pub async fn create_database(&mut self, server: &PgServer, name: &str) -> anyhow::Result<()> {
        let admin = Database::connect(admin_options(server))
            .await
            .with_context(|| {
                format!(
                    "cannot connect to Postgres at {}; is it running? (set DATABASE_URL)",
                    broker::redact_url(&server.base)
                )
            })?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("cannot create the bench database {name}"))?;
        let _ = admin.close().await;
        self.databases.push((server.clone(), name.to_owned()));
        Ok(())
    }

    /// Remembers to delete this prefix's exchange and queues.
    pub fn track_topology(&mut self, topology: &Topology) {
        if !self.topologies.contains(topology) {
            self.topologies.push(topology.clone());
        }
    }

    /// Deletes this prefix's exchange and queues now (a run's queue that no phase reads any
    /// more: 50,000 messages left in a quorum queue weigh on the broker's later runs). What
    /// cannot be deleted now stays tracked for the final clean-up.
    pub async fn delete_topology_now(&mut self, topology: &Topology) {
        let names = amqp_names(topology);
        if matches!(delete_amqp(&self.amqp_url, &names).await, Ok(failed) if failed.is_empty()) {
            self.topologies.retain(|t| t != topology);
        }
    }

    /// Remembers to delete `queue`.
    pub fn track_queue(&mut self, queue: &str) {
        self.queues.push(queue.to_owned());
    }

    /// Starts `program` with `env` set and `unset` removed from the inherited environment, its
    /// stdout and stderr going to `log`; returns its pid.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        unset: &[&str],
        log: &Path,
    ) -> anyhow::Result<u32> {
        if !program.exists() {
            bail!(
                "{} does not exist; did the build put it elsewhere? (CARGO_TARGET_DIR)",
                program.display()
            );
        }
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot reopen {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for name in unset {
            command.env_remove(name);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id();
        self.children.push(Managed {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        });
        Ok(pid)
    }

    /// Fails with the log's path if child `name` has exited.
    pub fn check_running(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(managed) = self.children.iter_mut().find(|m| m.name == name) else {
            bail!("{name} is not running");
        };
        if let Ok(Some(status)) = managed.child.try_wait() {
            bail!("{name} exited ({status}); see {}", managed.log.display());
        }
        Ok(())
    }

    /// Stops child `name`: SIGTERM, then SIGKILL if it is still there after the grace period.
    pub async fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(index) = self.children.iter().position(|m| m.name == name) else {
            return Ok(());
        };
        let mut managed = self.children.remove(index);
        terminate(&managed.child);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        loop {
            if managed.child.try_wait().ok().flatten().is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let _ = managed.child.kill();
                let _ = managed.child.wait();
                eprintln!(
                    "warning: {name} did not stop within {STOP_GRACE:?} of SIGTERM; killed it"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `url` answers 200, failing early if child `name` exits.
    pub async fn wait_ready(
        &mut self,
        name: &str,
        url: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("cannot build an HTTP client")?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check_running(name)?;
            if let Ok(response) = client.get(url).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let log = self
                    .children
                    .iter()
                    .find(|m| m.name == name)
                    .map(|m| m.log.display().to_string())
                    .unwrap_or_default();
                bail!(
                    "{name} was not ready ({url} did not answer 200) within {timeout:?}; \
                     is RabbitMQ reachable? see {log}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop_all_blocking(&mut self) {
        for managed in &self.children {
            terminate(&managed.child);
        }
        for managed in &mut self.children {
            let started = std::time::Instant::now();
            while started.elapsed() < STOP_GRACE {
                if managed.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = managed.child.kill();
            let _ = managed.child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Children first: a running ingress or worker would declare its queues again.
        self.stop_all_blocking();
        let amqp_url = self.amqp_url.clone();
        let topologies = std::mem::take(&mut self.topologies);
        let queues = std::mem::take(&mut self.queues);
        let databases = std::mem::take(&mut self.databases);
        run_detached(async move {
            let mut leftovers = Vec::new();
            for (server, name) in databases {
                let dropped = match Database::connect(admin_options(&server)).await {
                    Ok(admin) => {
                        let result = admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                        let _ = admin.close().await;
                        result.is_ok()
                    }
                    Err(_) => false,
                };
                if !dropped {
                    leftovers.push(format!("database {name} (DROP DATABASE \"{name}\")"));
                }
            }
            let mut names: Vec<(String, bool)> = queues.into_iter().map(|q| (q, false)).collect();
            for topology in &topologies {
                names.extend(amqp_names(topology));
            }
            if !names.is_empty() {
                match delete_amqp(&amqp_url, &names).await {
                    Ok(failed) => leftovers.extend(failed),
                    Err(error) => leftovers.push(format!(
                        "queues and exchanges {:?} ({error})",
                        names.iter().map(|(n, _)| n).collect::<Vec<_>>()
                    )),
                }
            }
            if !leftovers.is_empty() {
                eprintln!("warning: could not remove, please do by hand:");
                for leftover in leftovers {
                    eprintln!("  {leftover}");
                }
            }
        });
    }
}

/// A Postgres server: a `DATABASE_URL` without its database name.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// `postgres://user:pass@host:port`.
    base: String,
    /// `?…` parameters, if any (kept for every database).
    query: String,
}

impl PgServer {
    /// Reads `postgres://user@host:port[/database][?params]`; the database name is ignored.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("DATABASE_URL must look like postgres://user@host:5432");
        };
        if scheme != "postgres" && scheme != "postgresql" {
            bail!("DATABASE_URL must start with postgres://");
        }
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, format!("?{query}")),
            None => (rest, String::new()),
        };
        let host = rest.split('/').next().unwrap_or(rest);
        Ok(Self {
            base: format!("{scheme}://{host}"),
            query,
        })
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}{}", self.base, self.query)
    }
}

/// A short-lived, quick-to-fail connection to the server's `postgres` database.
fn admin_options(server: &PgServer) -> ConnectOptions {
    let mut options = ConnectOptions::new(server.url("postgres"));
    options
        .max_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    options
}

/// Deletes queues (`false`) and exchanges (`true`); returns the ones that could not be deleted.
/// A prefix's queues and exchange, as [`delete_amqp`] takes them (`true`: an exchange).
fn amqp_names(topology: &Topology) -> Vec<(String, bool)> {
    let mut names: Vec<(String, bool)> = topology
        .all_queues()
        .into_iter()
        .map(|q| (q, false))
        .collect();
    names.push((topology.exchange().to_owned(), true));
    names
}

async fn delete_amqp(url: &str, names: &[(String, bool)]) -> anyhow::Result<Vec<String>> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let mut failed = Vec::new();
    for (name, exchange) in names {
        // A failed delete closes the channel: one channel per name.
        let channel = connection.create_channel().await?;
        let result = if *exchange {
            channel
                .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await
        } else {
            channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => {
                let _ = channel.close(200, "bench cleanup".into()).await;
            }
            Err(error) => failed.push(format!(
                "{} {name} ({error})",
                if *exchange { "exchange" } else { "queue" }
            )),
        }
    }
    let _ = connection.close(200, "bench cleanup".into()).await;
    Ok(failed)
}

/// Runs a clean-up future to completion from `Drop`, inside or outside a runtime.
fn run_detached<F: std::future::Future<Output = ()> + Send + 'static>(future: F) {
    let _ = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(future),
            Err(error) => eprintln!("warning: cannot clean up (no runtime: {error})"),
        }
    })
    .join();
}

/// Sends SIGTERM.
fn terminate(child: &Child) {
    testkit::process::send(child.id(), testkit::process::Signal::Term);
}

/// A free TCP port on 127.0.0.1.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("cannot find a free port on 127.0.0.1")?;
    listener
        .local_addr()
        .context("cannot read the free port's address")
}

/// Peak resident set size of `pid` in bytes (`VmHWM` of `/proc/<pid>/status`).
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`) in bytes.
pub fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("no {field} line in {path}"))?;
    Ok(kib * 1024)
}

/// CPU time (user + system) `pid` has used so far, from `/proc/<pid>/stat` (`self` for this
/// process). Linux reports it in ticks of 1/100 s (`USER_HZ`) on every architecture.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    const USER_HZ: u64 = 100;
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(user), Some(system)) = (tick(11), tick(12)) else {
        bail!("no utime/stime in {path}");
    };
    Ok(Duration::from_millis((user + system) * 1000 / USER_HZ))
}

/// `(comm, ppid, own CPU, CPU of its waited-for children)` of `/proc/<pid>/stat`.
fn stat_of(pid: &str) -> Option<(String, u32, Duration, Duration)> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // After the command name: state, ppid (1), …, utime (11), stime (12), cutime (13), cstime (14).
    let ppid = u32::try_from(tick(1)?).ok()?;
    let ms = |t: u64| Duration::from_millis(t * 1000 / USER_HZ);
    Some((
        comm,
        ppid,
        ms(tick(11)? + tick(12)?),
        ms(tick(13)? + tick(14)?),
    ))
}

/// CPU time used so far by every process of the servers on the box: Postgres (every `postgres`
/// process, plus what its postmaster's exited children used) and RabbitMQ (`beam.smp` and the
/// helpers it started).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerCpu {
    pub postgres: Duration,
    pub rabbitmq: Duration,
}

impl ServerCpu {
    pub fn now() -> Self {
        let mut out = Self::default();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Some((comm, ppid, own, children)) = stat_of(pid) else {
                continue;
            };
            match comm.as_str() {
                // The postmaster (not started by another postgres) also counts its exited
                // backends.
                "postgres" => {
                    let postmaster =
                        stat_of(&ppid.to_string()).is_none_or(|(c, ..)| c != "postgres");
                    out.postgres += own + if postmaster { children } else { Duration::ZERO };
                }
                "beam.smp" => out.rabbitmq += own + children,
                "erl_child_setup" | "inet_gethost" | "epmd" => out.rabbitmq += own,
                _ => {}
            }
        }
        out
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            postgres: self.postgres.saturating_sub(before.postgres),
            rabbitmq: self.rabbitmq.saturating_sub(before.rabbitmq),
        }
    }
}

/// The build profile of the binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Release,
    Dev,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Dev => "dev",
        }
    }

    /// The directory under the target directory the profile's binaries go to.
    fn dir(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Dev => "debug",
        }
    }
}

/// `cargo build --profile <profile> -p <package>…`; returns the directory of the binaries.
pub fn build(workspace: &Path, profile: Profile, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    // No change of directory: a relative CARGO_TARGET_DIR means the same to cargo and to us.
    command
        .args(["build", "--profile", profile.name(), "--manifest-path"])
        .arg(workspace.join("Cargo.toml"));
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {cargo} build"))?;
    if !status.success() {
        bail!("cargo build --profile {} failed ({status})", profile.name());
    }
    Ok(target_dir(workspace)?.join(profile.dir()))
}

/// `CARGO_TARGET_DIR` (relative to the current directory, as cargo reads it) or `<workspace>/target`.
fn target_dir(workspace: &Path) -> anyhow::Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                Ok(dir)
            } else {
                Ok(std::env::current_dir()
                    .context("cannot read the current directory")?
                    .join(dir))
            }
        }
        None => Ok(workspace.join("target")),
    }
}
