//! One process at a time: named leases in the `leases` table, for jobs that several workers
//! could run but only one should (the scheduled reconcile; any job of the kind).
//!
//! A lease is a row: who holds it and until when. Taking, renewing and giving it back are each
//! one statement, so it works through any pooler, transaction mode included, unlike a
//! session-level advisory lock (which such a pooler can leave held on a server connection
//! nobody will unlock it from). A holder renews its lease while it works; one that dies or loses
//! the database stops renewing, and the lease lapses after its time to live, so it is never left
//! held. All times are the database's clock (`now()`), never the processes'.
//!
//! [`Schedule`] builds on it: a job that runs once per interval across all workers, whoever
//! runs it, and again at the next interval (the row keeps when the last completed run started).
//!
//! ```no_run
//! # async fn example(db: store::pool::Pool, stop: impl std::future::Future<Output = ()>) {
//! use std::time::Duration;
//! use store::lease::{Run, Schedule};
//! let schedule = Schedule::new("calendar_health", Duration::from_secs(3600));
//! match schedule.run_if_due(&db, async { /* the job */ }, stop).await {
//!     Ok(Run::Done(())) => {}
//!     Ok(Run::NotDue | Run::Busy) => {} // another worker ran it this interval, or runs it now
//!     Ok(Run::Stopped | Run::Lost) => {} // cut short: due again at once, for whoever asks next
//!     Err(error) => tracing::warn!(error.message = %error, "database unavailable"),
//! }
//! # }
//! ```

use std::{future::Future, time::Duration};

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};
use uuid::Uuid;

use crate::pool::Pool;

/// How long a lease lasts unless renewed, by default: a holder that dies frees it within this.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn seconds(duration: Duration) -> Value {
    duration.as_secs_f64().into()
}

/// A lease this process holds. Give it back with [`Lease::release`]; if it is dropped instead,
/// it lapses after its time to live.
#[derive(Debug)]
pub struct Lease {
    name: String,
    holder: Uuid,
    ttl: Duration,
}

impl Lease {
    /// Takes the lease `name` for `ttl` if nobody holds it (or its holder let it lapse) and,
    /// when `due_every` is set, if its last completed run started at least that long ago. The
    /// first time a name is seen, the schedule starts then: a job due every hour first runs an
    /// hour later.
    pub async fn try_acquire(
        db: &Pool,
        name: &str,
        ttl: Duration,
        due_every: Option<Duration>,
    ) -> Result<Option<Self>, DbErr> {
        db.execute_raw(statement(
            "INSERT INTO leases (name, last_run_at) VALUES ($1, now()) \
             ON CONFLICT (name) DO NOTHING",
            vec![name.into()],
        ))
        .await?;
        let holder = Uuid::new_v4();
        let taken = db
            .execute_raw(statement(
                "UPDATE leases SET holder = $2, started_at = now(), \
                   expires_at = now() + make_interval(secs => $3) \
                 WHERE name = $1 \
                   AND (holder IS NULL OR expires_at <= now()) \
                   AND ($4::double precision IS NULL \
                        OR last_run_at IS NULL \
                        OR last_run_at <= now() - make_interval(secs => $4))",
                vec![
                    name.into(),
                    holder.into(),
                    seconds(ttl),
                    due_every.map(|every| every.as_secs_f64()).into(),
                ],
            ))
            .await?
            .rows_affected();
        Ok((taken == 1).then(|| Self {
            name: name.to_owned(),
            holder,
            ttl,
        }))
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long it lasts after each renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Extends the lease by its time to live; `false` when it is no longer this process's (it
    /// lapsed and another took it).
    pub async fn renew(&self, db: &Pool) -> Result<bool, DbErr> {
        let renewed = db
            .execute_raw(statement(
                "UPDATE leases SET expires_at = now() + make_interval(secs => $3) \
                 WHERE name = $1 AND holder = $2",
                vec![
                    self.name.as_str().into(),
                    self.holder.into(),
                    seconds(self.ttl),
                ],
            ))
            .await?
            .rows_affected();
        Ok(renewed == 1)
    }

    /// Gives the lease back. `completed`: the job ran to its end, so its run counts (the next is
    /// due one interval after this one started); otherwise it is due again at once.
    pub async fn release(self, db: &Pool, completed: bool) -> Result<(), DbErr> {
        db.execute_raw(statement(
            "UPDATE leases SET holder = NULL, expires_at = NULL, \
               last_run_at = CASE WHEN $3 THEN started_at ELSE last_run_at END, \
               last_finished_at = CASE WHEN $3 THEN now() ELSE last_finished_at END, \
               runs = runs + CASE WHEN $3 THEN 1 ELSE 0 END \
             WHERE name = $1 AND holder = $2",
            vec![
                self.name.as_str().into(),
                self.holder.into(),
                completed.into(),
            ],
        ))
        .await?;
        Ok(())
    }
}

/// How a scheduled job's turn went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run<T> {
    /// This process ran the job to its end.
    Done(T),
    /// Its last run started less than an interval ago.
    NotDue,
    /// Another process holds the lease (it is running the job).
    Busy,
    /// Stopped (shutdown) before the end; the lease was given back and the job is due at once.
    Stopped,
    /// The lease could not be renewed in time (the database was unreachable for longer than its
    /// time to live, or another process took it), so the job was stopped before the end.
    Lost,
}

/// A job that one process at a time runs, once per `every` across all processes.
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    every: Duration,
    ttl: Duration,
}

impl Schedule {
    /// The job `name`, due every `every`, with leases of [`DEFAULT_TTL`].
    pub fn new(name: impl Into<String>, every: Duration) -> Self {
        Self {
            name: name.into(),
            every,
            ttl: DEFAULT_TTL,
        }
    }

    /// The same with leases of `ttl` (renewed every third of it while the job runs).
    pub fn with_ttl(self, ttl: Duration) -> Self {
        Self { ttl, ..self }
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How often a process should ask whether the job is due: a tenth of the interval, between
    /// 100 ms and a minute, so that a run starts soon after it falls due.
    pub fn poll_interval(&self) -> Duration {
        (self.every / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Runs `job` if it is due and no other process runs it, renewing the lease while it runs;
    /// stops it when `stop` completes (giving the lease back, the run not counted) or when the
    /// lease cannot be kept.
    pub async fn run_if_due<T>(
        &self,
        db: &Pool,
        job: impl Future<Output = T>,
        stop: impl Future<Output = ()>,
    ) -> Result<Run<T>, DbErr> {
        let Some(lease) = Lease::try_acquire(db, &self.name, self.ttl, Some(self.every)).await?
        else {
            return Ok(self.why_not(db).await);
        };
        let outcome = tokio::select! {
            value = job => Run::Done(value),
            () = stop => Run::Stopped,
            () = keep(db, &lease) => Run::Lost,
        };
        match outcome {
            Run::Done(_) => lease.release(db, true).await?,
            Run::Stopped => lease.release(db, false).await?,
            // Not ours any more: nothing to give back.
            _ => {}
        }
        Ok(outcome)
    }

    /// Why the lease was not taken: held by another process, or not due.
    async fn why_not<T>(&self, db: &Pool) -> Run<T> {
        let held = db
            .query_one_raw(statement(
                "SELECT holder IS NOT NULL AND expires_at > now() AS held \
                 FROM leases WHERE name = $1",
                vec![self.name.as_str().into()],
            ))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get::<bool>("", "held").ok())
            .unwrap_or(false);
        if held { Run::Busy } else { Run::NotDue }
    }

    /// Asks every [`Self::poll_interval`] whether the job is due, and runs it (`job()`) when it
    /// is, until `stop` completes. Each turn's outcome goes to `report`.
    pub async fn run_until_stopped<T, F, J>(
        &self,
        db: &Pool,
        mut job: J,
        mut report: impl FnMut(Result<Run<T>, DbErr>),
        stop: impl Future<Output = ()>,
    ) where
        J: FnMut() -> F,
        F: Future<Output = T>,
    {
        let stop = futures_util::FutureExt::shared(Box::pin(stop));
        let mut tick = tokio::time::interval(self.poll_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Once stopped, never another turn, even with a tick ready.
                biased;
                () = stop.clone() => return,
                _ = tick.tick() => {}
            }
            report(self.run_if_due(db, job(), stop.clone()).await);
        }
    }
}

/// Renews `lease` every third of its time to live, and completes when it can no longer be kept:
/// taken by another process, or not renewed within its time to live (the database unreachable).
async fn keep(db: &Pool, lease: &Lease) {
    let every = lease.ttl / 3;
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match lease.renew(db).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::warn!(lease = lease.name(), "lease taken by another process");
                return;
            }
            Err(error) => {
                tracing::warn!(lease = lease.name(), error.message = %error, "cannot renew lease");
                if renewed.elapsed() >= lease.ttl {
                    return;
                }
            }
        }
    }
}
