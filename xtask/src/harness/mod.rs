//! The harness the benchmarks and the soak run on: a guard that removes everything a run
//! creates ([`guard`]), the build and the re-run in release ([`build`]), the servers and the
//! databases made on them ([`servers`]), the database and queue prefix of a pipeline run
//! ([`site`]), ingress, worker and api started on free ports ([`services`]), what the box says
//! about their processes ([`host`]), and what every report shares: stamp, title, machine,
//! checks, publishing ([`report`]).

pub mod build;
pub mod guard;
pub mod host;
pub mod report;
pub mod servers;
pub mod services;
pub mod site;

use std::path::{Path, PathBuf};

use anyhow::Context;

use self::{
    build::{Profile, build_or_reexec},
    guard::Cleanup,
    report::TaskReport,
    servers::Servers,
    services::Services,
    site::Site,
};

/// What a run of the pipeline works with.
pub struct Pipeline<'a> {
    pub servers: &'a Servers,
    pub services: &'a Services,
    /// The run's database and queue prefix, `clerk_sync_<task>_<pid>`.
    pub site: Site,
}

/// A run of the whole pipeline for `task` (`bench`, `soak`): builds ingress, worker and api in
/// `profile` (announced as `step`), creates the run's site, runs `work` with it, the servers,
/// the services (logging under `target/<task>`) and the run's guard, and publishes the report.
pub async fn pipeline<R: TaskReport>(
    (task, step): (&str, &str),
    workspace: &Path,
    profile: Profile,
    outputs: &Outputs,
    work: impl AsyncFnOnce(Pipeline<'_>, &mut Cleanup) -> anyhow::Result<R>,
) -> anyhow::Result<()> {
    let packages = ["ingress", "worker", "api"];
    let Some(bin) = build_or_reexec(step, workspace, profile, &packages).await? else {
        return Ok(());
    };
    let servers = Servers::from_env()?;
    let services = Services::new(&bin, workspace.join("target").join(task))?;
    let report = Cleanup::new(&servers.amqp_node)
        .around(async |cleanup| {
            let prefix = format!("clerk_sync_{task}_{}", std::process::id());
            let site = Site::create(cleanup, &servers, prefix).await?;
            let (servers, services) = (&servers, &services);
            work(
                Pipeline {
                    servers,
                    services,
                    site,
                },
                cleanup,
            )
            .await
        })
        .await?;
    report::publish(&report, outputs)
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// Where a report goes: JSON always, markdown when asked.
pub struct Outputs {
    pub json: PathBuf,
    pub markdown: Option<PathBuf>,
}

impl Outputs {
    /// The paths of the options, relative ones from the workspace root.
    pub fn resolve(workspace: &Path, json: PathBuf, markdown: Option<PathBuf>) -> Self {
        Self {
            json: workspace.join(json),
            markdown: markdown.map(|p| workspace.join(p)),
        }
    }
}

/// Writes `text` to `path`, creating its directory.
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
