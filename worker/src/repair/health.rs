//! The calendar connection health check (`CALENDAR_HEALTH_INTERVAL`, `worker check-connections`):
//! Google and Microsoft end grants without a webhook, so the token of each connection is asked
//! for again, least recently checked first, paced under Clerk's rate limit and never more than a
//! budget of calls per run. What Clerk says is recorded (`store::connections::recheck`), and a
//! fresh token is stored, so backends get a warm one. One worker at a time runs it (the
//! schedule's lock); deleted and disconnected connections have no row, so they are never asked
//! about.

use std::{collections::BTreeMap, time::Duration};

use clerk_api::{ClerkClient, ClerkError, paced::Pace};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use serde::Serialize;
use store::pool::Pool;
use store::{
    connections::{self, Rechecked},
    crypto::TokenCipher,
    health::{CONNECTED, NEEDS_RECONNECT, UNAVAILABLE},
};

use crate::metrics::{CheckLabels, ConnectionLabels, Metrics};

/// Clerk's production rate limit (requests a second) and the tenth of it a check may use.
pub const CLERK_LIMIT_PER_SECOND: u64 = 100;
/// The default pace of a check: a tenth of Clerk's production limit.
pub const DEFAULT_CHECKS_PER_SECOND: u32 = 10;

/// The default `CALENDAR_HEALTH_BUDGET` for an interval: what fits in a tenth of Clerk's limit
/// over it.
pub fn default_budget(interval: Duration) -> u64 {
    (interval.as_secs() * CLERK_LIMIT_PER_SECOND / 10).max(1)
}

/// The pace of a scheduled run: its budget spread over the interval, at least one call a second
/// and at most the reconcile's pace.
pub fn rate_for(budget: u64, interval: Duration) -> u32 {
    let per_second = budget.div_ceil(interval.as_secs().max(1));
    u32::try_from(per_second)
        .unwrap_or(u32::MAX)
        .clamp(1, super::DEFAULT_REQUESTS_PER_SECOND)
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Calls to Clerk at most (one per connection).
    pub budget: u64,
    /// Calls a second at most.
    pub per_second: u32,
    /// Only this user's connections.
    pub clerk_user_id: Option<String>,
}

/// What a run found, by provider: outcomes, and reasons of those that need the user.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub checked: u64,
    pub by_provider: BTreeMap<&'static str, ProviderReport>,
}

/// One provider's part of a [`CheckReport`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProviderReport {
    pub connected: u64,
    pub needs_reconnect: BTreeMap<&'static str, u64>,
    pub unavailable: u64,
    /// Disconnected or deleted while Clerk answered.
    pub gone: u64,
}

/// The report in a few lines, for people.
pub fn summary(report: &CheckReport) -> String {
    let mut out = format!(
        "check-connections done: {} connection(s) checked",
        report.checked
    );
    for (provider, p) in &report.by_provider {
        let reasons = p
            .needs_reconnect
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "\n  {provider}: connected {}, needs_reconnect {}{}, unavailable {}, gone {}",
            p.connected,
            p.needs_reconnect.values().sum::<u64>(),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({reasons})")
            },
            p.unavailable,
            p.gone
        ));
    }
    out
}

/// Checks up to `options.budget` connections, least recently checked first.
pub async fn run(
    db: &Pool,
    cipher: &TokenCipher,
    clerk: &ClerkClient,
    options: &CheckOptions,
    metrics: Option<&Metrics>,
) -> Result<CheckReport, DbErr> {
    let due =
        connections::least_recently_checked(db, options.budget, options.clerk_user_id.as_deref())
            .await?;
    let mut pace = Pace::new(options.per_second);
    let mut report = CheckReport::default();
    for stored in &due {
        pace.wait().await;
        let provider = stored.provider.as_str();
        let rechecked = match connections::recheck(db, cipher, clerk, stored).await {
            Ok(rechecked) => rechecked,
            Err(connections::TokenError::Db(error)) => return Err(error),
            Err(error) => {
                tracing::warn!(connection_id = %stored.id, provider, error.message = %error, "calendar check failed");
                continue;
            }
        };
        if let Rechecked::Unavailable(ClerkError::RateLimited {
            retry_after: Some(after),
        }) = &rechecked
        {
            pace.defer(*after);
        }
        report.checked += 1;
        let entry = report.by_provider.entry(provider).or_default();
        let outcome = match &rechecked {
            Rechecked::Token(_) => {
                entry.connected += 1;
                CONNECTED
            }
            Rechecked::NeedsReconnect(reason) => {
                *entry.needs_reconnect.entry(reason.as_str()).or_default() += 1;
                NEEDS_RECONNECT
            }
            Rechecked::Unavailable(_) => {
                entry.unavailable += 1;
                UNAVAILABLE
            }
            Rechecked::Gone => {
                entry.gone += 1;
                continue;
            }
        };
        if let Some(metrics) = metrics {
            metrics
                .calendar_checks
                .get_or_create(&CheckLabels { provider, outcome })
                .inc();
        }
    }
    Ok(report)
}

/// Sets `clerk_sync_calendar_connections` from the table (every provider and status, zeros
/// included, so a status that empties shows 0 rather than its last value).
pub async fn count_connections(db: &Pool, metrics: &Metrics) -> Result<(), DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT provider, status, count(*) AS n FROM user_calendar_connections GROUP BY 1, 2",
        ))
        .await?;
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for row in rows {
        counts.insert(
            (row.try_get("", "provider")?, row.try_get("", "status")?),
            row.try_get("", "n")?,
        );
    }
    for provider in ["google", "microsoft"] {
        for status in [CONNECTED, NEEDS_RECONNECT, UNAVAILABLE] {
            let n = counts
                .get(&(provider.to_owned(), status.to_owned()))
                .copied()
                .unwrap_or(0);
            metrics
                .calendar_connections
                .get_or_create(&ConnectionLabels { provider, status })
                .set(n);
        }
    }
    Ok(())
}

/// Refreshes `clerk_sync_calendar_connections` every minute until `stop`.
pub(crate) async fn count_every_minute(
    db: Pool,
    metrics: Metrics,
    mut stop: crate::shutdown::Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = stop.recv() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = count_connections(&db, &metrics).await {
            tracing::warn!(error.message = %error, "counting calendar connections failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_a_tenth_of_clerk_s_limit_over_the_interval() {
        assert_eq!(default_budget(Duration::from_secs(3600)), 36_000);
        assert_eq!(default_budget(Duration::from_secs(60)), 600);
        assert_eq!(default_budget(Duration::from_millis(10)), 1);
    }

    #[test]
    fn a_summary_names_each_provider_s_outcomes_and_reasons() {
        let mut report = CheckReport {
            checked: 3,
            ..CheckReport::default()
        };
        let google = report.by_provider.entry("google").or_default();
        google.connected = 2;
        google.needs_reconnect.insert("grant_revoked", 1);
        let text = summary(&report);
        assert!(text.contains("3 connection(s) checked"), "{text}");
        assert!(
            text.contains(
                "google: connected 2, needs_reconnect 1 (grant_revoked 1), unavailable 0"
            ),
            "{text}"
        );
    }
}
