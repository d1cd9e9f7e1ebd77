//! Forgetting Svix ids older than `PROCESSED_EVENTS_RETENTION`, cheaply: in bounded batches (a
//! few thousand rows per short transaction, so no apply waits long behind it and no statement
//! holds millions of row locks), by one worker at a time (a transaction-scoped advisory lock
//! per batch: a worker that does not get it leaves the round to the one that has it).

use std::time::Duration;
use store::pool::Pool;

use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};

use store::apply::txn::stmt;

use crate::shutdown::Shutdown;

/// Key of the advisory lock pruning takes ("prune" in ASCII); distinct from the migrations' and
/// the reconcile's.
pub const PRUNE_LOCK_KEY: i64 = 0x0070_7275_6e65;

/// How often pruning runs: hourly, or every half retention when that is shorter (a short
/// retention then bounds `processed_events` at about 1.5 retentions of events).
pub fn interval(retention: Duration) -> Duration {
    (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// How a pruning round goes.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// Rows deleted per transaction at most.
    pub batch_size: i64,
    /// Pause between batches at least, so that pruning leaves the database to the applies.
    pub pause: Duration,
    /// The pause is also at least this many times the last batch's duration: pruning takes at
    /// most 1 / (1 + ratio) of one connection's time, and backs off on its own when the database
    /// is busy (its batches take longer).
    pub pause_ratio: u32,
}

impl Default for PruneOptions {
    /// 2,000 rows a batch, then a pause of at least 50 ms and 9 times the batch's duration: at
    /// most a tenth of one connection, which still deletes several thousand ids/s on a small
    /// box, more than are written at a steady 1,000 events/s (the bench measures it; a fifth
    /// cost the drain 12 % while pruning, more than the 10 % it may).
    fn default() -> Self {
        Self {
            batch_size: 2_000,
            pause: Duration::from_millis(50),
            pause_ratio: 9,
        }
    }
}

/// What a round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub deleted: u64,
    pub batches: u64,
    /// Whether another worker was pruning, so this one left the round to it.
    pub skipped: bool,
}

/// Deletes the Svix ids processed longer than `retention` ago, batch by batch, until none is
/// left or another worker holds the pruning lock.
pub async fn prune_expired(
    db: &Pool,
    retention: Duration,
    options: PruneOptions,
) -> Result<PruneReport, DbErr> {
    let mut report = PruneReport::default();
    let retention_seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    loop {
        let started = std::time::Instant::now();
        let txn = db.begin().await?;
        let locked: bool = txn
            .query_one_raw(stmt(
                "SELECT pg_try_advisory_xact_lock($1) AS locked",
                vec![PRUNE_LOCK_KEY.into()],
            ))
            .await?
            .map(|row| row.try_get("", "locked"))
            .transpose()?
            .unwrap_or(false);
        if !locked {
            txn.rollback().await?;
            report.skipped = true;
            return Ok(report);
        }
        let deleted = txn
            .execute_raw(stmt(
                "DELETE FROM processed_events WHERE svix_id IN ( \
                   SELECT svix_id FROM processed_events \
                   WHERE processed_at < now() - make_interval(secs => $1::double precision) \
                   ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                vec![(retention_seconds as f64).into(), options.batch_size.into()],
            ))
            .await?
            .rows_affected();
        txn.commit().await?;
        report.deleted += deleted;
        report.batches += 1;
        if deleted < u64::try_from(options.batch_size).unwrap_or(u64::MAX) {
            return Ok(report);
        }
        tokio::time::sleep(options.pause.max(started.elapsed() * options.pause_ratio)).await;
    }
}

/// Deletes Svix ids older than `retention`, every [`interval`].
pub(crate) async fn prune_processed_events(db: Pool, retention: Duration, mut stop: Shutdown) {
    let mut tick = tokio::time::interval(interval(retention));
    loop {
        tokio::select! {
            () = stop.recv() => return,
            _ = tick.tick() => {}
        }
        let pruning = prune_expired(&db, retention, PruneOptions::default());
        tokio::select! {
            () = stop.recv() => return,
            result = pruning => match result {
                Ok(report) => tracing::debug!(rows = report.deleted, batches = report.batches, skipped = report.skipped, "pruned processed_events"),
                Err(error) => tracing::warn!(error.message = %error, "pruning processed_events failed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_runs_hourly_or_every_half_retention() {
        let hour = Duration::from_secs(3600);
        assert_eq!(interval(Duration::from_secs(168 * 3600)), hour);
        assert_eq!(interval(2 * hour), hour);
        assert_eq!(interval(Duration::from_secs(600)), Duration::from_secs(300));
        assert_eq!(interval(Duration::ZERO), Duration::from_secs(1));
    }
}
