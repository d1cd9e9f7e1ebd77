//! Building the binaries a run starts, and the re-run of a task from its own release build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// Set in the release build a task re-runs itself as.
const REEXEC_ENV: &str = "CLERK_SYNC_BENCH_REEXEC";

/// Builds `packages` in `profile`, announced as step `step` (`[0/7]`): the directory of the
/// binaries. With the release profile, a debug build of this task builds itself in release too
/// and re-runs itself from there (its load generator and ceilings run in this process and must
/// not be the bottleneck): `None` then, the re-run having done the work.
pub async fn build_or_reexec(
    step: &str,
    workspace: &Path,
    profile: Profile,
    packages: &[&str],
) -> anyhow::Result<Option<PathBuf>> {
    let reexec = profile == Profile::Release
        && cfg!(debug_assertions)
        && std::env::var_os(REEXEC_ENV).is_none();
    let mut packages = packages.to_vec();
    if reexec {
        packages.push("xtask");
    }
    println!(
        "{step} building {} ({} profile)",
        packages.join(", "),
        profile.name()
    );
    let bin = build(workspace, profile, &packages)?;
    if reexec {
        reexec_release(&bin).await?;
        return Ok(None);
    }
    Ok(Some(bin))
}

/// Runs the release build of this task with the same arguments, and exits with its status.
async fn reexec_release(bin: &Path) -> anyhow::Result<()> {
    let exe = bin.join("xtask");
    println!("running the bench from {} (release build)", exe.display());
    let mut child = tokio::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, "1")
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("cannot wait for the release bench")?,
            // Ctrl-C reaches the child too; it cleans up, and we wait for it.
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// The build profile of the binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Release,
    Dev,
}

impl Profile {
    /// `profile`, or release (dev for a smoke run).
    pub fn or_default(profile: Option<Self>, smoke: bool) -> Self {
        profile.unwrap_or(if smoke { Self::Dev } else { Self::Release })
    }

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
fn build(workspace: &Path, profile: Profile, packages: &[&str]) -> anyhow::Result<PathBuf> {
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
