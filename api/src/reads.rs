//! Where the API's reads go: the primary (`DATABASE_URL`), or a streaming replica
//! (`DATABASE_READ_URL`) while it is reachable and no further behind than
//! `DATABASE_READ_MAX_LAG`.
//!
//! A task checks the replica every second in the background (one query, never on the request
//! path): reachable or not, and how far behind it is, from `pg_last_xact_replay_timestamp()`
//! (zero while it has replayed everything it received: an idle primary is no lag). Routed reads
//! ([`Reads::read`]) then go to the replica only while the last check found it current; a read
//! that fails there, or finds nothing there (a row written a moment ago may not have arrived
//! yet), is asked of the primary, so a replica going away costs no error. Reads that must see a
//! write just made (lazy sync's answer, `PATCH …/calendar-status`'s, the token endpoint) use the
//! primary ([`Reads::primary`]) and never come here. Each routed read is counted in
//! `clerk_sync_api_db_reads_total{target, reason}`; `/readyz` asks the primary only.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use store::pool::Pool;
use tracing::Instrument as _;

use crate::error::ApiError;

/// How often the replica is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a check may take before the replica counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Labels of `clerk_sync_api_db_reads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// `primary` or `replica`.
    pub target: &'static str,
    /// Why there: `current` (the replica is within the allowed lag), `no_replica` (none
    /// configured), `unreachable`, `lagging`, `replica_error` (the read failed on the replica),
    /// `replica_miss` (nothing found on the replica), `read_your_writes` (after a write).
    pub reason: &'static str,
}

impl ReadLabels {
    const fn primary(reason: &'static str) -> Self {
        Self {
            target: "primary",
            reason,
        }
    }
}

/// What the last check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// Not reachable, or not checked yet.
    Unreachable,
    /// Reachable, but further behind than the allowed lag.
    Lagging,
    /// Reachable and within the allowed lag: reads go there.
    Current,
}

impl ReplicaState {
    fn from_u8(value: u8) -> Self {
        match value {
            2 => Self::Current,
            1 => Self::Lagging,
            _ => Self::Unreachable,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Unreachable => 0,
            Self::Lagging => 1,
            Self::Current => 2,
        }
    }

    /// The metric reason of a read sent to the primary because of this state.
    fn reason(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Lagging => "lagging",
            Self::Current => "current",
        }
    }
}

/// The replica, its last known state, and how far behind it may be.
struct Replica {
    pool: Pool,
    state: AtomicU8,
    max_lag: Duration,
    /// The lag the last check measured, in seconds (`f64` bits).
    lag: Gauge<f64, AtomicU64>,
}

impl Replica {
    fn state(&self) -> ReplicaState {
        ReplicaState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, state: ReplicaState) {
        let before = ReplicaState::from_u8(self.state.swap(state.as_u8(), Ordering::Relaxed));
        if before != state {
            match state {
                ReplicaState::Current => {
                    tracing::info!("read replica current: reads go to DATABASE_READ_URL");
                }
                ReplicaState::Lagging => tracing::warn!(
                    max_lag = ?self.max_lag,
                    "read replica behind DATABASE_READ_MAX_LAG: reads go to the primary"
                ),
                ReplicaState::Unreachable => {
                    tracing::warn!("read replica unreachable: reads go to the primary");
                }
            }
        }
    }
}

/// The API's databases for reading: the primary, and the replica when configured.
pub struct Reads {
    primary: Pool,
    replica: Option<Arc<Replica>>,
    reads: Family<ReadLabels, Counter>,
}

impl Reads {
    /// Reads from `primary`, and from `replica` (at most `max_lag` behind) when given; the
    /// metrics are registered in `registry`. The replica counts as unreachable until
    /// [`Reads::watch_replica`] first checked it.
    pub fn new(primary: Pool, replica: Option<(Pool, Duration)>, registry: &mut Registry) -> Self {
        let reads = Family::<ReadLabels, Counter>::default();
        registry.register(
            "clerk_sync_api_db_reads",
            "Database reads of the API by target (primary or replica) and why there",
            reads.clone(),
        );
        let replica = replica.map(|(pool, max_lag)| {
            let lag = Gauge::<f64, AtomicU64>::default();
            registry.register(
                "clerk_sync_api_replica_lag_seconds",
                "How far behind the read replica was at its last check (0 when it has replayed all it received)",
                lag.clone(),
            );
            Arc::new(Replica {
                pool,
                state: AtomicU8::new(ReplicaState::Unreachable.as_u8()),
                max_lag,
                lag,
            })
        });
        Self {
            primary,
            replica,
            reads,
        }
    }

    /// The primary, for writes and for reads that must see a write just made (not counted).
    pub fn primary(&self) -> &Pool {
        &self.primary
    }

    /// The replica's pool, when configured.
    pub fn replica_pool(&self) -> Option<&Pool> {
        self.replica.as_ref().map(|r| &r.pool)
    }

    /// What the last check found (`None` without a replica).
    pub fn replica_state(&self) -> Option<ReplicaState> {
        self.replica.as_ref().map(|r| r.state())
    }

    fn count(&self, labels: ReadLabels) {
        self.reads.get_or_create(&labels).inc();
    }

    /// Runs `query` on the primary after a write, counted as `read_your_writes`.
    pub async fn after_write<T, F, Fut>(&self, query: F) -> Result<T, ApiError>
    where
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        self.count(ReadLabels::primary("read_your_writes"));
        traced("primary", query(self.primary.clone())).await
    }

    /// Runs `query` on the replica when it is current, else on the primary. A query that fails
    /// on the replica, or finds nothing there (`404`), runs again on the primary.
    pub async fn read<T, F, Fut>(&self, query: F) -> Result<T, ApiError>
    where
        F: Fn(Pool) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let Some(replica) = &self.replica else {
            self.count(ReadLabels::primary("no_replica"));
            return traced("primary", query(self.primary.clone())).await;
        };
        let state = replica.state();
        if state != ReplicaState::Current {
            self.count(ReadLabels::primary(state.reason()));
            return traced("primary", query(self.primary.clone())).await;
        }
        self.count(ReadLabels {
            target: "replica",
            reason: "current",
        });
        match traced("replica", query(replica.pool.clone())).await {
            Err(ApiError::NotFound(_)) => {
                self.count(ReadLabels::primary("replica_miss"));
                traced("primary", query(self.primary.clone())).await
            }
            Err(ApiError::Database(error)) => {
                tracing::warn!(error.message = %error, "read failed on the replica; asking the primary");
                if unreachable(&error) {
                    replica.set_state(ReplicaState::Unreachable);
                }
                self.count(ReadLabels::primary("replica_error"));
                traced("primary", query(self.primary.clone())).await
            }
            other => other,
        }
    }

    /// Checks the replica every [`CHECK_INTERVAL`] until `stop` completes (at once without a
    /// replica).
    pub async fn watch_replica(&self, stop: impl Future<Output = ()>) {
        let Some(replica) = &self.replica else {
            return;
        };
        let watching = async {
            let mut tick = tokio::time::interval(CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let state = match tokio::time::timeout(CHECK_TIMEOUT, lag(&replica.pool)).await {
                    Ok(Ok(Some(lag))) => {
                        replica.lag.set(lag.as_secs_f64());
                        if lag > replica.max_lag {
                            ReplicaState::Lagging
                        } else {
                            ReplicaState::Current
                        }
                    }
                    // Replay position unknown (nothing replayed since the replica started).
                    Ok(Ok(None)) => ReplicaState::Lagging,
                    Ok(Err(error)) => {
                        tracing::debug!(error.message = %error, "read replica check failed");
                        ReplicaState::Unreachable
                    }
                    Err(_) => ReplicaState::Unreachable,
                };
                replica.set_state(state);
            }
        };
        tokio::select! {
            () = stop => {}
            () = watching => {}
        }
    }
}

/// How far behind the replica is: zero when it has replayed all the WAL it received (or is not
/// a replica at all), else the age of the last transaction it replayed; `None` when it has
/// replayed none yet.
/// Runs one read inside a database span (when traces are exported), named after where it runs.
async fn traced<T>(
    target: &'static str,
    query: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let name = if target == "replica" {
        "SELECT on the replica"
    } else {
        "SELECT"
    };
    let span = telemetry::traces::db_span(name, "SELECT", None);
    if span.is_disabled() {
        return query.await;
    }
    let result = query.instrument(span.clone()).await;
    if matches!(result, Err(ApiError::Database(_))) {
        span.record("otel.status_code", "ERROR");
    }
    result
}

async fn lag(replica: &Pool) -> Result<Option<Duration>, DbErr> {
    let row = replica
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT CASE \
               WHEN NOT pg_is_in_recovery() THEN 0::float8 \
               WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() \
                 THEN 0::float8 \
               ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))::float8 \
             END AS lag",
        ))
        .await?;
    let lag: Option<f64> = row.map(|row| row.try_get("", "lag")).transpose()?.flatten();
    Ok(lag.map(|seconds| Duration::from_secs_f64(seconds.max(0.0))))
}

/// Whether `error` says the database could not be reached (rather than that the query failed).
fn unreachable(error: &DbErr) -> bool {
    matches!(error, DbErr::Conn(_) | DbErr::ConnectionAcquire(_))
        || entity::db_errors::is_transient(error)
}
