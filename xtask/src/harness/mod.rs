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
