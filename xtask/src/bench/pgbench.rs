//! The database's own ceiling for the read path, as Postgres measures it: `pgbench -M prepared`
//! running the api's select for random seeded users, as many clients as the read load has
//! connections, on the same table, in the same run. Next to it the sqlx ceiling
//! ([`super::reads::ceiling`]) shows what a Rust client adds, and the api's reads what HTTP,
//! auth, decoding and logging add.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use serde::Serialize;

use super::seed::SEEDED_USER_PREFIX;
use crate::harness::host;

/// pgbench's own threads: one per CPU of the box this bench is sized for (2); pgbench's
/// clients are cheap, its threads only spread them.
const THREADS: usize = 2;

/// What pgbench measured.
#[derive(Debug, Clone, Serialize)]
pub struct PgbenchRun {
    pub clients: usize,
    pub threads: usize,
    pub seconds: u64,
    pub transactions: u64,
    /// Selects per second, without the initial connection time (as pgbench reports it).
    pub per_s: f64,
    pub latency_avg_ms: f64,
    /// CPU time of every Postgres process per select (the backends pgbench started included).
    pub postgres_cpu_us_per_request: f64,
    /// The 1-minute load average of the box right after the run.
    pub load_average_1m: Option<f64>,
}

impl PgbenchRun {
    pub fn summary(&self) -> String {
        format!(
            "{:.0}/s, {} selects, latency average {:.3} ms ({} clients, {} threads, {} s), \
             Postgres CPU {:.0} µs/select",
            self.per_s,
            self.transactions,
            self.latency_avg_ms,
            self.clients,
            self.threads,
            self.seconds,
            self.postgres_cpu_us_per_request
        )
    }
}

/// The script: `select` (one `$1`, the Clerk user id) for a random seeded user of `1..=users`.
/// pgbench's variables are numbers, so the id is formatted in SQL (as [`super::seed::seeded_user`]
/// formats it); in prepared mode it is still one parameter of the prepared statement.
pub fn script(select: &str, users: u64) -> anyhow::Result<String> {
    let id = format!("'{SEEDED_USER_PREFIX}' || lpad(:i::text, 8, '0')");
    if select.matches("$1").count() != 1 || select.contains("$2") {
        bail!("the api's select must take exactly one parameter, the Clerk user id: {select}");
    }
    Ok(format!(
        "\\set i random(1, {users})\n{};\n",
        select.replacen("$1", &id, 1)
    ))
}

/// What pgbench printed: transactions processed, latency average (ms), tps.
pub fn parse(output: &str) -> anyhow::Result<(u64, f64, f64)> {
    let after = |prefix: &str| {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let first_number = |s: &str| s.split_whitespace().next().map(str::to_owned);
    let transactions = after("number of transactions actually processed:")
        .and_then(|s| first_number(s.split('/').next().unwrap_or(s)))
        .and_then(|s| s.parse::<u64>().ok());
    let latency = after("latency average =")
        .and_then(first_number)
        .and_then(|s| s.parse::<f64>().ok());
    let tps = after("tps =")
        .and_then(first_number)
        .and_then(|s| s.parse::<f64>().ok());
    match (transactions, latency, tps) {
        (Some(t), Some(l), Some(p)) => Ok((t, l, p)),
        _ => bail!("cannot read pgbench's output:\n{output}"),
    }
}

/// Runs `select` through `pgbench -n -M prepared` with `clients` clients for `duration` (whole
/// seconds, at least one) against `db_url`, the script written to `dir`.
pub async fn ceiling(
    db_url: &str,
    select: &str,
    users: u64,
    clients: usize,
    duration: Duration,
    dir: &Path,
) -> anyhow::Result<PgbenchRun> {
    let path = dir.join("pgbench-read.sql");
    crate::harness::write(&path, &script(select, users)?)?;
    let seconds = duration.as_secs().max(1);
    let cpu_before = host::ServerCpu::now();
    let output = tokio::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", &clients.to_string()])
        .args(["-j", &THREADS.min(clients).to_string()])
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&path)
        .arg(db_url)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run pgbench (Debian: apt-get install postgresql-client)")?;
    let cpu = host::ServerCpu::now().since(cpu_before).postgres;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (transactions, latency_avg_ms, per_s) = parse(&stdout)?;
    Ok(PgbenchRun {
        clients,
        threads: THREADS.min(clients),
        seconds,
        transactions,
        per_s: per_s.round(),
        latency_avg_ms,
        postgres_cpu_us_per_request: (cpu.as_secs_f64() * 1e7 / transactions.max(1) as f64).round()
            / 10.0,
        load_average_1m: host::load_average(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: /tmp/pgbench-read.sql
scaling factor: 1
query mode: prepared
number of clients: 64
number of threads: 2
maximum number of tries: 1
duration: 15 s
number of transactions actually processed: 226512
number of failed transactions: 0 (0.000%)
latency average = 4.231 ms
initial connection time = 101.563 ms
tps = 15126.981204 (without initial connection time)
";

    #[test]
    fn pgbench_output_gives_transactions_latency_and_tps() {
        let (transactions, latency, tps) = parse(OUTPUT).expect("pgbench 15's output");
        assert_eq!(transactions, 226_512);
        assert!((latency - 4.231).abs() < 1e-9);
        assert!((tps - 15_126.981_204).abs() < 1e-6);
        assert!(parse("pgbench: error: connection failed").is_err());
    }

    #[test]
    fn script_binds_a_random_seeded_id_as_the_only_parameter() {
        let select = "SELECT id FROM users WHERE clerk_user_id = $1 LIMIT 1";
        let script = script(select, 200_000).expect("one parameter");
        assert_eq!(
            script,
            "\\set i random(1, 200000)\nSELECT id FROM users WHERE clerk_user_id = \
             'user_2seed' || lpad(:i::text, 8, '0') LIMIT 1;\n"
        );
        assert!(self::script("SELECT 1 WHERE $1 = $2", 1).is_err());
    }
}
