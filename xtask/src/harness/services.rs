//! Starting ingress, worker and api: each on a free port, its output in a log of its own, its
//! environment as the run sets it over what it inherits; stopped by the run's guard.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use super::{
    guard::{Cleanup, Inherit},
    host,
};

/// How long a started process may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A service to start: which binary, under which name (its log is `<name>.log`), with what
/// environment (`NO_COLOR=1` and its address besides).
#[derive(Debug, Clone)]
pub struct Service {
    binary: &'static str,
    args: &'static [&'static str],
    /// The variable it reads its listening address from.
    addr_variable: &'static str,
    name: String,
    env: Vec<(String, String)>,
    unset: Vec<&'static str>,
}

impl Service {
    fn new(binary: &'static str, args: &'static [&'static str], addr: &'static str) -> Self {
        Self {
            binary,
            args,
            addr_variable: addr,
            name: binary.to_owned(),
            env: Vec::new(),
            unset: Vec::new(),
        }
    }

    /// An ingress named `name`.
    pub fn ingress(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::new("ingress", &[], "INGRESS_ADDR")
        }
    }

    /// `worker run`, named `worker`.
    pub fn worker() -> Self {
        Self::new("worker", &["run"], "WORKER_ADDR")
    }

    /// The api, named `api`.
    pub fn api() -> Self {
        Self::new("api", &[], "API_ADDR")
    }

    /// Sets `name` to `value`.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Sets each of `pairs`.
    pub fn envs(self, pairs: &[(&str, &str)]) -> Self {
        pairs
            .iter()
            .fold(self, |service, (name, value)| service.env(name, *value))
    }

    /// Does not inherit `names` from this process's environment.
    pub fn unset(mut self, names: &[&'static str]) -> Self {
        self.unset.extend_from_slice(names);
        self
    }
}

/// A started service.
#[derive(Debug, Clone)]
pub struct Started {
    pub name: String,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Started {
    /// Waits until it answers `/readyz` (the worker: consumes), failing early if it exits.
    pub async fn wait_ready(&self, cleanup: &mut Cleanup) -> anyhow::Result<()> {
        cleanup
            .wait_ready(
                &self.name,
                &format!("http://{}/readyz", self.addr),
                READY_TIMEOUT,
            )
            .await
    }
}

/// Where the binaries are and where their logs go.
pub struct Services {
    bin: PathBuf,
    log_dir: PathBuf,
}

impl Services {
    /// The binaries of `bin`, logging under `log_dir` (created).
    pub fn new(bin: &Path, log_dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        Ok(Self {
            bin: bin.to_owned(),
            log_dir,
        })
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Starts `service` on a free port without waiting for it.
    pub fn spawn(&self, cleanup: &mut Cleanup, service: Service) -> anyhow::Result<Started> {
        let addr = host::free_addr()?;
        let mut env = vec![(service.addr_variable.to_owned(), addr.to_string())];
        env.extend(service.env);
        env.push(("NO_COLOR".to_owned(), "1".to_owned()));
        let pid = cleanup.spawn(
            &service.name,
            &self.bin.join(service.binary),
            service.args,
            &env,
            Inherit::AllBut(&service.unset),
            &self.log_dir.join(format!("{}.log", service.name)),
        )?;
        Ok(Started {
            name: service.name,
            pid,
            addr,
        })
    }

    /// Starts `service` on a free port and waits until it is ready.
    pub async fn start(&self, cleanup: &mut Cleanup, service: Service) -> anyhow::Result<Started> {
        let started = self.spawn(cleanup, service)?;
        started.wait_ready(cleanup).await?;
        Ok(started)
    }
}
