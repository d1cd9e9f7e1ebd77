//! `cargo xtask bench --reads-only`: the read path alone (phase 9 without the phases before it
//! and without webhooks meanwhile), on a table of seeded users: Postgres's own ceiling
//! (`pgbench`), the sqlx ceiling, and both routes as fast as answered and at half that rate.
//! For profiling the api and for comparing its cost per read with the database's.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use super::{
    Ctx, events,
    report::{CHECK_WORDS, pass},
    scale::{self, ReadsReport, ScaleOptions},
};
use crate::harness::{
    self, Outputs,
    build::Profile,
    report::{Check, Machine, Stamp, TaskReport, checks_table, table},
};

/// Users seeded when `--scale-users` is not given (a table that fits Postgres's default
/// shared buffers, so the reads measure CPU rather than the disk).
pub const DEFAULT_USERS: u64 = 200_000;

/// The read phase's report.
#[derive(Serialize)]
pub struct ReadPhaseReport {
    pub machine: Machine,
    #[serde(flatten)]
    pub stamp: Stamp,
    pub seed_users_s: f64,
    pub reads: ReadsReport,
    pub targets: Vec<super::report::Target>,
    pub checks: Vec<Check>,
}

impl TaskReport for ReadPhaseReport {
    fn markdown(&self) -> String {
        let mut out = String::new();
        self.stamp.title(&mut out, "read path");
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), Linux {}, PostgreSQL {}. {} users seeded in {:.0} s; nothing \
             else started by the bench meanwhile.\n",
            m.nproc, m.cpu_model, m.kernel, m.postgres, self.reads.users, self.seed_users_s
        );
        table(
            &mut out,
            &["measure", "value", "detail"],
            &self.reads.rows(),
        );
        let _ = writeln!(out, "\n### Targets\n");
        let rows: Vec<Vec<String>> = (self.targets.iter())
            .map(|t| vec![t.name.to_owned(), t.value.clone(), pass(t.pass).to_owned()])
            .collect();
        table(&mut out, &["target", "value", "result"], &rows);
        let _ = writeln!(out, "\n### Checks\n");
        checks_table(&mut out, &self.checks, &CHECK_WORDS);
        out
    }

    fn checks(&self) -> &[Check] {
        &self.checks
    }
}

/// Builds the binaries in `profile`, seeds `so.users` users in a database of the run's own and
/// measures the read path there; publishes the report to `outputs`.
pub async fn run(
    workspace: &Path,
    profile: Profile,
    so: &ScaleOptions,
    outputs: &Outputs,
) -> anyhow::Result<()> {
    harness::pipeline(
        ("bench", "[0/3]"),
        workspace,
        profile,
        outputs,
        async |p, cleanup| {
            let ctx = Ctx {
                services: p.services,
                servers: p.servers,
                secret: events::random_secret(),
                site: p.site,
            };
            let (seeded, reads, checks) = scale::reads_only(&ctx, cleanup, so).await?;
            println!("[3/3] report");
            let machine = harness::report::machine(&ctx.site.db).await;
            ctx.site.close().await;
            Ok(ReadPhaseReport {
                machine,
                stamp: Stamp::now(workspace, profile, false),
                seed_users_s: seeded.as_secs_f64(),
                targets: reads.targets(),
                reads,
                checks,
            })
        },
    )
    .await
}
