//! What the box tells about the processes of a run: free ports, memory, CPU time.

use std::{
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use anyhow::{Context, bail};

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

/// The box's 1-minute load average (`/proc/loadavg`): how busy the box was around a run (other
/// builds or tests beside it).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time (user + system) `pid` has used so far, from `/proc/<pid>/stat` (`self` for this
/// process).
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let Some((_, _, cpu, _)) = stat_of(pid) else {
        bail!("cannot read utime/stime of /proc/{pid}/stat");
    };
    Ok(cpu)
}

/// `(comm, ppid, own CPU, CPU of its waited-for children)` of `/proc/<pid>/stat`. Linux
/// reports CPU time in ticks of 1/100 s (`USER_HZ`) on every architecture.
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
