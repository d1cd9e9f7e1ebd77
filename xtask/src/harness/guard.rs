//! The guard of a run: everything a run creates outside itself (child processes, databases,
//! queues and exchanges) is removed by [`Cleanup`] on success, on error, on panic and on Ctrl-C:
//! it stops the children (SIGTERM, then SIGKILL after 10 s), drops the databases and deletes
//! every queue and exchange the run declared.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
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

use super::servers::PgServer;

/// How long a child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often [`Cleanup::wait_exit`] looks whether a child has exited.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// A child process and where its output goes.
struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The resources of one run; dropping it removes them all.
pub struct Cleanup {
    children: Vec<Managed>,
    /// The node the queues are deleted through (`None`: the run declares none).
    amqp_url: Option<String>,
    /// Prefixes whose exchange and queues the run declared (through the ingress or worker).
    topologies: Vec<Topology>,
    /// Other queues the run declared (the broker ceiling's).
    queues: Vec<String>,
    /// The Postgres server and the name of each database the run created.
    databases: Vec<(PgServer, String)>,
}

/// What a child inherits from this process's environment.
#[derive(Debug, Clone, Copy)]
pub enum Inherit<'a> {
    /// Everything but these variables.
    AllBut(&'a [&'a str]),
    /// Nothing: only what the run sets.
    Nothing,
}

impl Cleanup {
    /// The guard of a run whose queues and exchanges are deleted through `amqp_url`.
    pub fn new(amqp_url: &str) -> Self {
        Self::with_broker(Some(amqp_url.to_owned()))
    }

    /// The guard of a run that declares no queue (processes and databases only).
    pub fn without_broker() -> Self {
        Self::with_broker(None)
    }

    fn with_broker(amqp_url: Option<String>) -> Self {
        Self {
            children: Vec::new(),
            amqp_url,
            topologies: Vec::new(),
            queues: Vec::new(),
            databases: Vec::new(),
        }
    }

    /// Runs `work` with this guard until it ends or Ctrl-C, then removes everything the run
    /// created (announcing it when the run has queues to delete).
    pub async fn around<T>(
        mut self,
        work: impl AsyncFnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let outcome = tokio::select! {
            result = work(&mut self) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        if self.amqp_url.is_some() {
            println!("cleaning up (processes, database, queues)");
        }
        drop(self);
        outcome
    }

    /// Creates database `name` on `server` and remembers to drop it.
    pub async fn create_database(&mut self, server: &PgServer, name: &str) -> anyhow::Result<()> {
        let admin = Database::connect(admin_options(server))
            .await
            .with_context(|| {
                format!(
                    "cannot connect to Postgres at {}; is it running? (set DATABASE_URL)",
                    server.redacted()
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
        let Some(amqp_url) = &self.amqp_url else {
            return;
        };
        let names = amqp_names(topology);
        if matches!(delete_amqp(amqp_url, &names).await, Ok(failed) if failed.is_empty()) {
            self.topologies.retain(|t| t != topology);
        }
    }

    /// Remembers to delete `queue`.
    pub fn track_queue(&mut self, queue: &str) {
        self.queues.push(queue.to_owned());
    }

    /// Starts `program` with `env` set over what it inherits, its stdout and stderr going to
    /// `log`; returns its pid.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        inherit: Inherit<'_>,
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
        match inherit {
            Inherit::AllBut(unset) => {
                for name in unset {
                    command.env_remove(name);
                }
            }
            Inherit::Nothing => {
                command.env_clear();
            }
        }
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
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

    /// Waits until child `name` exits, calling `sample` with its pid every `every` meanwhile;
    /// returns its exit status (the child is no longer managed).
    pub async fn wait_exit(
        &mut self,
        name: &str,
        every: Duration,
        mut sample: impl FnMut(u32),
    ) -> anyhow::Result<ExitStatus> {
        let Some(index) = self.children.iter().position(|m| m.name == name) else {
            bail!("{name} is not running");
        };
        let pid = self.children[index].child.id();
        let mut next_sample = tokio::time::Instant::now() + every;
        loop {
            let managed = &mut self.children[index];
            if let Some(status) = managed
                .child
                .try_wait()
                .with_context(|| format!("cannot wait for {name}"))?
            {
                self.children.remove(index);
                return Ok(status);
            }
            if tokio::time::Instant::now() >= next_sample {
                sample(pid);
                next_sample += every;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// The log of child `name`.
    pub fn log(&self, name: &str) -> Option<&Path> {
        self.children
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.log.as_path())
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
                let log = self.log(name).map(Path::display).map(|l| l.to_string());
                let log = log.unwrap_or_default();
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
                let deleted = match &amqp_url {
                    Some(url) => delete_amqp(url, &names).await,
                    None => Err(anyhow::anyhow!("no AMQP node")),
                };
                match deleted {
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
