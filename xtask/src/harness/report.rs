//! What every report shares: the run's stamp (date, commit, profile) and its title, the
//! machine, tables, the correctness checks and their table; and publishing a report (printed,
//! written as JSON and markdown, failing the task when a check failed).

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::bail;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::Serialize;

use super::{Outputs, build::Profile, write};

const MIB: f64 = 1024.0 * 1024.0;

/// A task's report: JSON as it serializes, markdown for people, and its correctness checks.
pub trait TaskReport: Serialize {
    fn markdown(&self) -> String;
    fn checks(&self) -> &[Check];
}

/// Prints the report as markdown, writes it as JSON (through a `Value`: its keys are sorted, as
/// in the committed result files) and as markdown if asked; fails when a check failed.
pub fn publish(report: &impl TaskReport, outputs: &Outputs) -> anyhow::Result<()> {
    let markdown = report.markdown();
    println!("\n{markdown}");
    write(
        &outputs.json,
        &serde_json::to_string_pretty(&serde_json::to_value(report)?)?,
    )?;
    println!("JSON written to {}", outputs.json.display());
    if let Some(path) = &outputs.markdown {
        write(path, &markdown)?;
        println!("markdown written to {}", path.display());
    }
    let failed = report.checks().iter().filter(|c| !c.pass).count();
    if failed > 0 {
        bail!("{failed} correctness check(s) failed; see the Checks table above");
    }
    Ok(())
}

/// When, from which commit and how a run was made.
#[derive(Debug, Clone, Serialize)]
pub struct Stamp {
    /// The build profile of the binaries.
    pub profile: &'static str,
    pub smoke: bool,
    pub date: String,
    pub git_commit: String,
}

impl Stamp {
    /// A run made now from the workspace's commit.
    pub fn now(workspace: &Path, profile: Profile, smoke: bool) -> Self {
        Self {
            profile: profile.name(),
            smoke,
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            git_commit: git_commit(workspace),
        }
    }

    /// The report's title: `## clerk-sync <what>: <date> (<profile> profile, commit <commit>)`,
    /// `, smoke run` for one, and a blank line.
    pub fn title(&self, out: &mut String, what: &str) {
        let _ = writeln!(
            out,
            "## clerk-sync {what}: {} ({} profile, commit {}){}\n",
            self.date,
            self.profile,
            self.git_commit,
            if self.smoke { ", smoke run" } else { "" }
        );
    }
}

/// Where the run happened.
#[derive(Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_bytes: Option<u64>,
    pub cpu_model: String,
    pub kernel: String,
    #[serde(rename = "postgres_version")]
    pub postgres: String,
    #[serde(rename = "rabbitmq_version")]
    pub rabbitmq: String,
}

/// One correctness check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    #[serde(rename = "check")]
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, pass: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            pass,
            detail: detail.into(),
        }
    }
}

/// How a report words its table of checks: the columns, a passed and a failed check.
pub struct CheckWords {
    pub columns: [&'static str; 3],
    pub pass: &'static str,
    pub fail: &'static str,
}

/// `checks` as a table: name, result, detail.
pub fn checks_table(out: &mut String, checks: &[Check], words: &CheckWords) {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                if c.pass { words.pass } else { words.fail }.to_owned(),
                c.detail.clone(),
            ]
        })
        .collect();
    table(out, &words.columns, &rows);
}

/// Bytes in MiB, to one place.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// A markdown table with padded columns, readable as plain text too.
pub fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        out.push('|');
        for (i, width) in widths.iter().enumerate() {
            let cell = cells.get(i).map_or("", String::as_str);
            let pad = width - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(
        out,
        &header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    );
    line(
        out,
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    );
    for row in rows {
        line(out, row);
    }
}

/// `git rev-parse --short HEAD`, with `-dirty` when the tree has changes.
pub fn git_commit(workspace: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "unknown".into(),
        Some(commit) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{commit}-dirty"),
            _ => commit,
        },
    }
}

/// CPUs, memory, CPU model, kernel, Postgres and RabbitMQ versions.
pub async fn machine(db: &DatabaseConnection) -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let cpuinfo = read("/proc/cpuinfo");
    let postgres = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SHOW server_version",
        ))
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get::<String>("", "server_version").ok())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        mem_total_bytes: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, model)| model.trim().to_owned()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        postgres,
        rabbitmq: rabbitmq_version().await,
    }
}

/// lapin does not expose the server's properties: ask the local node, else the local CLI.
async fn rabbitmq_version() -> String {
    for (program, args, source) in [
        (
            "rabbitmq-diagnostics",
            &["-q", "server_version"][..],
            "server",
        ),
        ("rabbitmqctl", &["version"][..], "local rabbitmqctl"),
    ] {
        let output = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::process::Command::new(program).args(args).output(),
        )
        .await;
        if let Ok(Ok(output)) = output
            && output.status.success()
        {
            let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if !text.is_empty() {
                return format!("{text} ({source})");
            }
        }
    }
    "unknown".into()
}
