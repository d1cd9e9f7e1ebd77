//! Connections a [`crate::pool::Pool`] keeps between single-statement reads
//! ([`crate::pool::Pool::fetch_optional`]) instead of handing them back to sqlx's pool after each.
//!
//! sqlx tests every connection it gets back (a `Sync` and its `ReadyForQuery`: a round trip, two
//! wake-ups of the backend, and a task spawned for it), so a read of one row costs two round
//! trips. A connection kept here goes straight to the next read. What sqlx's pool does for its
//! connections still happens, only less often:
//! - a read that fails, or is dropped half-way (its request cancelled), hands its connection
//!   back to sqlx, which tests it then and closes it if broken;
//! - a connection idle here for [`IDLE_TEST_AFTER`] goes back to sqlx rather than to a read
//!   (sqlx tests it, as it tests connections idle in its own pool for as long);
//! - a connection goes back to sqlx at the latest [`KEEP_AT_MOST`] after it was taken out, so that
//!   sqlx's limits (lifetime, idle timeout) apply to it;
//! - at most `max_connections - 2` are kept or in use here at once, so the pool's other users
//!   (writes, `/readyz`, lazy sync) always find a connection; reads beyond that wait here, in
//!   order, for the next kept one, and fail with sqlx's timeout error after its acquire timeout;
//! - closing the pool first hands every kept connection back.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::{
    ConnAcquireErr, DbErr, RuntimeErr,
    sqlx::{PgPool, Postgres, pool::PoolConnection},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A kept connection idle this long goes back to sqlx (the pool's `test_before_acquire_if_idle_for`).
pub(crate) const IDLE_TEST_AFTER: Duration = Duration::from_secs(30);
/// A connection goes back to sqlx at the latest this long after it was taken out of it.
pub(crate) const KEEP_AT_MOST: Duration = Duration::from_secs(60);
/// Connections of sqlx's pool never kept here, for the pool's other users.
const LEFT_FOR_OTHERS: u32 = 2;

/// A connection taken out of sqlx's pool, and when.
struct KeptConnection {
    conn: PoolConnection<Postgres>,
    taken: Instant,
    last_used: Instant,
}

/// The idle kept connections, and whether the pool is closing.
#[derive(Default)]
struct Idle {
    connections: Vec<KeptConnection>,
    closed: bool,
}

/// The connections kept out of one sqlx pool.
pub(crate) struct Kept {
    pool: PgPool,
    /// Connections kept or in use here at most.
    capacity: usize,
    permits: Arc<Semaphore>,
    idle: Mutex<Idle>,
}

/// A connection lent to one read: back to [`Kept`] through [`Lent::give_back`] after a read that
/// succeeded; dropped otherwise, which hands it back to sqlx (tested there).
pub(crate) struct Lent<'a> {
    kept: &'a Kept,
    connection: KeptConnection,
    _permit: OwnedSemaphorePermit,
}

impl Lent<'_> {
    /// The connection, for one statement.
    pub(crate) fn conn(&mut self) -> &mut PoolConnection<Postgres> {
        &mut self.connection.conn
    }

    /// After a successful read: kept for the next, unless kept long enough or the pool is
    /// closing (then sqlx gets it back).
    pub(crate) fn give_back(mut self) {
        let now = Instant::now();
        if now.duration_since(self.connection.taken) >= KEEP_AT_MOST {
            return;
        }
        self.connection.last_used = now;
        let Ok(mut idle) = self.kept.idle.lock() else {
            return;
        };
        if !idle.closed {
            idle.connections.push(self.connection);
        }
    }
}

impl Kept {
    /// Connections of `pool` kept for reads, or `None` when the pool is too small to spare any
    /// (see [`LEFT_FOR_OTHERS`]).
    pub(crate) fn new(pool: PgPool) -> Option<Self> {
        let max = pool.options().get_max_connections();
        let keep = usize::try_from(max.checked_sub(LEFT_FOR_OTHERS)?)
            .ok()
            .filter(|&n| n > 0)?;
        Some(Self {
            pool,
            capacity: keep,
            permits: Arc::new(Semaphore::new(keep)),
            idle: Mutex::new(Idle::default()),
        })
    }

    /// A connection for one read: a kept one used within [`IDLE_TEST_AFTER`], else one from sqlx.
    /// Waits at most the pool's acquire timeout in all, then fails as sea-orm reports sqlx's.
    pub(crate) async fn lend(&self) -> Result<Lent<'_>, DbErr> {
        let timeout = self.pool.options().get_acquire_timeout();
        tokio::time::timeout(timeout, self.lend_now())
            .await
            .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))?
    }

    async fn lend_now(&self) -> Result<Lent<'_>, DbErr> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed))?;
        let connection = match self.take_idle() {
            Some(connection) => connection,
            None => {
                let conn = self.pool.acquire().await.map_err(acquire_error)?;
                let now = Instant::now();
                KeptConnection {
                    conn,
                    taken: now,
                    last_used: now,
                }
            }
        };
        Ok(Lent {
            kept: self,
            connection,
            _permit: permit,
        })
    }

    /// The most recently used idle connection, if used within [`IDLE_TEST_AFTER`]; those idle
    /// longer go back to sqlx.
    fn take_idle(&self) -> Option<KeptConnection> {
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().ok()?;
            let mut found = None;
            while let Some(connection) = idle.connections.pop() {
                if connection.last_used.elapsed() < IDLE_TEST_AFTER {
                    found = Some(connection);
                    break;
                }
                stale.push(connection);
            }
            found
        };
        // Dropped outside the lock: each spawns sqlx's return (and test) of the connection.
        drop(stale);
        found
    }

    /// Hands every kept connection back to sqlx and keeps none from now on (before the pool
    /// closes: sqlx waits for every connection taken out of it).
    pub(crate) fn close(&self) {
        let connections = match self.idle.lock() {
            Ok(mut idle) => {
                idle.closed = true;
                std::mem::take(&mut idle.connections)
            }
            Err(_) => Vec::new(),
        };
        drop(connections);
        self.permits.close();
    }

    /// How many connections reads may use at once.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Runs `sql` with its one parameter `param` on a lent connection and returns its rows; the
    /// connection is kept for the next read when it succeeded (see [`Lent::give_back`]).
    pub(crate) async fn fetch_all<'q, P>(
        &self,
        sql: &'static str,
        param: P,
    ) -> Result<Vec<sea_orm::sqlx::postgres::PgRow>, DbErr>
    where
        P: 'q + Send + sea_orm::sqlx::Encode<'q, Postgres> + sea_orm::sqlx::Type<Postgres>,
    {
        let mut lent = self.lend().await?;
        let rows = sea_orm::sqlx::query(sql)
            .bind(param)
            .fetch_all(&mut **lent.conn())
            .await
            .map_err(query_error)?;
        lent.give_back();
        Ok(rows)
    }
}

/// sqlx's error getting a connection, as sea-orm reports it (so callers that tell an unreachable
/// database from a failed query see the same [`DbErr`] variants).
fn acquire_error(error: sea_orm::sqlx::Error) -> DbErr {
    match error {
        sea_orm::sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sea_orm::sqlx::Error::PoolClosed => {
            DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed)
        }
        other => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(other))),
    }
}

/// sqlx's error running a statement or decoding its row, as sea-orm reports it.
pub(crate) fn query_error(error: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(error)))
}
