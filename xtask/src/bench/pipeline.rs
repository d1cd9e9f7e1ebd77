//! Watching the worker: how fast `processed_events` fills, whether the queues end empty, whether
//! `users` holds exactly the expected final state, and the lag histogram on `/metrics`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use broker::Topology;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use super::{events::Expected, load::per_second};
use crate::harness::{guard::Cleanup, report::Check, servers::Broker};

/// How often `processed_events` is counted.
const POLL: Duration = Duration::from_millis(25);

/// The count `sql` selects as a column `n` (a bigint); `what` names it in errors.
pub async fn count(db: &DatabaseConnection, sql: &str, what: &str) -> anyhow::Result<u64> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .with_context(|| format!("cannot count {what}"))?
        .with_context(|| format!("counting {what} returned no row"))?;
    let n: i64 = row.try_get("", "n")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Rows in `processed_events` of the events the bench sent (`msg_` + hex). The Svix ids the
/// scale phases seed (`msg_seed…`) sort after them: an index range scan skips those.
pub async fn processed(db: &DatabaseConnection) -> anyhow::Result<u64> {
    count(
        db,
        "SELECT count(*) AS n FROM processed_events WHERE svix_id < 'msg_s'",
        "processed_events",
    )
    .await
}

/// How long the worker took to apply a batch.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// Events this wait was for.
    pub events: u64,
    /// From the first poll that saw one of them applied to the poll that saw them all.
    pub wall: Duration,
    /// Of them, already applied at that first poll.
    pub applied_at_first_poll: u64,
    /// From the start of the wait to the poll that saw them all.
    pub since_start: Duration,
}

impl Drain {
    /// Events applied per second: those applied after the first poll that saw any, over the
    /// time between that poll and the one that saw them all.
    pub fn per_s(&self) -> f64 {
        if self.wall.is_zero() {
            return per_second(self.events, self.since_start);
        }
        per_second(self.events - self.applied_at_first_poll, self.wall)
    }
}

/// Events the worker has settled (applied, skipped, duplicates, ignored; not those handed to a
/// retry or dead-letter queue), from its metrics; `None` while it does not answer.
pub async fn settled(worker: SocketAddr) -> Option<u64> {
    let text = scrape(worker).await.ok()?;
    let total: f64 = text
        .lines()
        .filter(|line| line.starts_with("clerk_sync_events_total{"))
        .filter(|line| {
            !line.contains("outcome=\"retried\"") && !line.contains("outcome=\"dead_lettered\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(total as u64)
}

/// Waits until the worker has applied `events` more events: polls its metrics (a `count(*)` of
/// `processed_events` every few milliseconds would cost Postgres a full scan each time, CPU
/// taken from the worker being measured), then confirms with `processed_events` holding
/// `before + events` rows. `settled_before` is the worker's settled count before the events
/// were sent. Fails when `timeout` passes, when the worker exits, or when the dead-letter queue
/// fills while the count is short.
#[allow(clippy::too_many_arguments)]
pub async fn wait_applied(
    db: &DatabaseConnection,
    cleanup: &mut Cleanup,
    broker: &Broker,
    topology: &Topology,
    worker: SocketAddr,
    (before, settled_before): (u64, u64),
    events: u64,
    timeout: Duration,
) -> anyhow::Result<Drain> {
    let started = Instant::now();
    let target = before + events;
    let mut first: Option<(Instant, u64)> = None;
    let mut last_check = Instant::now();
    loop {
        let settled_now = settled(worker).await.unwrap_or(settled_before);
        let done = settled_now.saturating_sub(settled_before);
        let now = Instant::now();
        if done > 0 && first.is_none() {
            first = Some((now, done));
        }
        let count = if done >= events {
            processed(db).await?
        } else {
            before + done.min(events.saturating_sub(1))
        };
        if count >= target {
            let (first_at, first_count) = first.unwrap_or((now, events));
            return Ok(Drain {
                events,
                wall: now - first_at,
                applied_at_first_poll: first_count.min(events),
                since_start: now - started,
            });
        }
        if now - started > timeout {
            bail!(
                "the worker applied {} of {events} events within {timeout:?}; see its log under \
                 target/bench/",
                count.saturating_sub(before)
            );
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            cleanup.check_running("worker")?;
            let dead = broker.ready(&topology.dead_queue()).await?;
            if dead > 0 && count + dead >= target {
                bail!(
                    "{dead} events went to the dead-letter queue {} instead of being applied; \
                     see the worker's log under target/bench/",
                    topology.dead_queue()
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `users` holds exactly `expected`: every live user with their last email, names and version,
/// no deleted user, and a tombstone for each deleted one.
pub async fn check_users(
    db: &DatabaseConnection,
    expected: &[Expected],
    when: &str,
) -> anyhow::Result<Check> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT clerk_user_id, email, first_name, last_name, clerk_updated_at FROM users \
             WHERE clerk_user_id LIKE 'user_2bench%'",
        ))
        .await
        .context("cannot read users")?;
    let mut actual = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get("", "clerk_user_id")?;
        let email: Option<String> = row.try_get("", "email")?;
        let first: Option<String> = row.try_get("", "first_name")?;
        let last: Option<String> = row.try_get("", "last_name")?;
        let version: i64 = row.try_get("", "clerk_updated_at")?;
        actual.insert(id, (email, first, last, version));
    }
    let tombstones = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM deleted_users",
        ))
        .await
        .context("cannot count deleted_users")?
        .context("count(*) returned no row")?
        .try_get::<i64>("", "n")?;

    let mut problems = Vec::new();
    let live = expected.iter().filter(|u| u.state.is_some()).count();
    let deleted = expected.len() - live;
    if actual.len() != live {
        problems.push(format!("{} rows in users, expected {live}", actual.len()));
    }
    if usize::try_from(tombstones).unwrap_or(0) != deleted {
        problems.push(format!("{tombstones} tombstones, expected {deleted}"));
    }
    let mut wrong = 0;
    for user in expected {
        let found = actual.get(&user.clerk_user_id);
        let ok = match (&user.state, found) {
            (None, None) => true,
            (Some(want), Some((email, first, last, version))) => {
                email.as_deref() == Some(want.email.as_str())
                    && first.as_deref() == Some(want.first_name.as_str())
                    && last.as_deref() == Some(want.last_name.as_str())
                    && *version == want.updated_at
            }
            _ => false,
        };
        if !ok {
            wrong += 1;
            if wrong <= 3 {
                problems.push(format!(
                    "{}: expected {:?}, found {:?}",
                    user.clerk_user_id, user.state, found
                ));
            }
        }
    }
    if wrong > 3 {
        problems.push(format!("… {wrong} users differ in all"));
    }
    let detail = if problems.is_empty() {
        format!("{live} live users match, {deleted} deleted")
    } else {
        problems.join("; ")
    };
    Ok(Check::new(
        format!("users table equals the expected final state ({when})"),
        problems.is_empty(),
        detail,
    ))
}

/// A Prometheus histogram: cumulative counts per upper bound (`+Inf` last), sum and count.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Reads histogram `name` from Prometheus text.
    pub fn parse(text: &str, name: &str) -> Self {
        let mut out = Self::default();
        let bucket = format!("{name}_bucket{{");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let le = rest
                    .split("le=\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .map(|s| {
                        if s == "+Inf" {
                            f64::INFINITY
                        } else {
                            s.parse().unwrap_or(f64::NAN)
                        }
                    });
                let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
                if let (Some(le), Some(value)) = (le, value) {
                    out.buckets.push((le, value as u64));
                }
            } else if let Some(value) = line.strip_prefix(&format!("{name}_sum ")) {
                out.sum = value.trim().parse().unwrap_or(0.0);
            } else if let Some(value) = line.strip_prefix(&format!("{name}_count ")) {
                out.count = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            }
        }
        out.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// `self - before`, bucket by bucket.
    pub fn since(&self, before: &Self) -> Self {
        let old: HashMap<u64, u64> = before
            .buckets
            .iter()
            .map(|(le, n)| (le.to_bits(), *n))
            .collect();
        Self {
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| {
                    (
                        *le,
                        n.saturating_sub(old.get(&le.to_bits()).copied().unwrap_or(0)),
                    )
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The upper bound of the bucket holding quantile `q` (`+Inf` when past the last bound);
    /// `None` without observations.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= rank)
            .map(|(le, _)| *le)
    }

    /// Observations above `bound` (which must be one of the bucket bounds).
    pub fn count_over(&self, bound: f64) -> u64 {
        let within = self
            .buckets
            .iter()
            .find(|(le, _)| (*le - bound).abs() < 1e-9)
            .map_or(0, |(_, n)| *n);
        self.count.saturating_sub(within)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// Fetches `/metrics` from `addr`.
pub async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let url = format!("http://{addr}/metrics");
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("cannot fetch {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    response
        .text()
        .await
        .with_context(|| format!("cannot read {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x lag\n\
        clerk_sync_event_lag_seconds_sum 3.0\n\
        clerk_sync_event_lag_seconds_count 10\n\
        clerk_sync_event_lag_seconds_bucket{le=\"0.01\"} 2\n\
        clerk_sync_event_lag_seconds_bucket{le=\"0.05\"} 6\n\
        clerk_sync_event_lag_seconds_bucket{le=\"0.1\"} 9\n\
        clerk_sync_event_lag_seconds_bucket{le=\"+Inf\"} 10\n";

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let h = Histogram::parse(TEXT, "clerk_sync_event_lag_seconds");
        assert_eq!(h.count, 10);
        assert_eq!(h.quantile_bound(0.5), Some(0.05));
        assert_eq!(h.quantile_bound(0.9), Some(0.1));
        assert_eq!(h.quantile_bound(0.99), Some(f64::INFINITY));
        let delta = h.since(&Histogram::parse(
            "clerk_sync_event_lag_seconds_count 2\nclerk_sync_event_lag_seconds_bucket{le=\"0.01\"} 2\n",
            "clerk_sync_event_lag_seconds",
        ));
        assert_eq!(delta.count, 8);
        assert_eq!(delta.quantile_bound(0.25), Some(0.05));
    }
}
