//! The database pool every clerk-sync process opens (worker, its CLI, the api), connecting to a
//! database that may still be starting, and working through whatever pooler sits in front of
//! Postgres (`DATABASE_POOLER`).
//!
//! Behind a transaction-mode pooler (PgBouncer `pool_mode = transaction` without
//! `max_prepared_statements`, Supavisor's transaction port) a client keeps its server
//! connection only until the end of a transaction. sqlx (under sea-orm) sends every statement
//! as `Parse`/`Describe`/`Sync`, then `Bind`/`Execute`/`Sync`, with a named prepared statement
//! (`sqlx_s_<n>`, numbered per client connection from 1): outside a transaction the pooler hands
//! the server connection back after the first `Sync`, so the `Bind` lands on another one
//! ("prepared statement … does not exist"), and names left on a server connection by one client
//! collide with another client's ("… already exists"). Turning sqlx's statement cache off is not
//! enough (it still names each statement, and never closes it). So in `transaction` mode
//! [`Pool`]:
//! - runs every statement in a transaction of its own (`BEGIN`, the statement, `COMMIT`): the
//!   pooler keeps one server connection from `BEGIN` to `COMMIT`;
//! - starts every transaction with `DEALLOCATE ALL`: whatever statements an earlier client left
//!   on that server connection are gone before this one names its own;
//! - keeps no statement cache, since the next transaction may run on another server connection.
//!
//! Statements sent as plain SQL ([`ConnectionTrait::execute_unprepared`], the simple protocol)
//! need none of this. `session` mode keeps sqlx's behaviour and only leaves out the
//! `extra_float_digits` startup parameter, which PgBouncer refuses unless told to ignore it.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseConnectionType, DatabaseTransaction, DbBackend, DbErr, ExecResult, IsolationLevel,
    QueryResult, Statement, TransactionError, TransactionOptions, TransactionTrait,
    sqlx::postgres::PgRow,
};

use crate::{
    coalesce::Coalesced,
    kept::{Kept, query_error},
    users::UserRow,
};
pub use settings::Pooler;

/// The pool settings of every clerk-sync process (worker, its CLI, the api): `max_connections`
/// (at least 1), 5 s to connect and to get a connection, no per-statement logs, and what
/// `pooler` needs (see the module's documentation). One connection is kept open; the api, which
/// must start while Postgres is down, opens none ahead.
pub fn pool_options(url: &str, max_connections: u32, pooler: Pooler) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections.max(1))
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings a connection on every checkout by default: a second round trip per read
        // of the api and per batch of the worker. Only connections idle for a while are
        // checked (those a server restart, proxy or firewall may have dropped).
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        .sqlx_logging(false);
    match pooler {
        Pooler::None => {}
        // PgBouncer refuses startup parameters it does not know unless listed in its
        // `ignore_startup_parameters`; Postgres 12 and later return floats exactly anyway, and
        // sqlx reads them in binary.
        Pooler::Session => {
            options.map_sqlx_postgres_opts(|o| o.extra_float_digits(None));
        }
        Pooler::Transaction => {
            options
                .map_sqlx_postgres_opts(|o| o.extra_float_digits(None).statement_cache_capacity(0));
        }
    }
    options
}

/// The database: a sea-orm pool that follows `DATABASE_POOLER`. It is a [`ConnectionTrait`] and
/// a [`TransactionTrait`] like sea-orm's `DatabaseConnection`, so queries take it as they would
/// that; in `transaction` mode each statement runs in a transaction of its own and each
/// transaction starts with `DEALLOCATE ALL` (see the module's documentation). Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    conn: DatabaseConnection,
    pooler: Pooler,
    /// Connections kept between [`Pool::fetch_optional`]'s reads (none behind a
    /// transaction-mode pooler, or when the pool is too small to spare any).
    kept: Option<Arc<Kept>>,
    /// Reads of users by Clerk id, coalesced on the kept connections (see [`crate::coalesce`]).
    users: Option<Arc<Coalesced<UserRow>>>,
}

impl Pool {
    /// A pool over `conn`, opened with [`pool_options`] for `pooler`.
    pub fn new(conn: DatabaseConnection, pooler: Pooler) -> Self {
        let kept = match (&conn.inner, pooler) {
            // Behind a transaction-mode pooler a statement must run in a transaction of its own.
            (_, Pooler::Transaction) => None,
            (DatabaseConnectionType::SqlxPostgresPoolConnection(_), _) => {
                Kept::new(conn.get_postgres_connection_pool().clone()).map(Arc::new)
            }
            _ => None,
        };
        let users = kept
            .as_ref()
            .map(|kept| Arc::new(Coalesced::new(Arc::clone(kept), crate::users::statements())));
        Self {
            conn,
            pooler,
            kept,
            users,
        }
    }

    /// The coalesced reads of users by Clerk id, when connections are kept for reads.
    pub(crate) fn users(&self) -> Option<&Arc<Coalesced<UserRow>>> {
        self.users.as_ref()
    }

    /// Runs `sql`, a select of at most one row whose only parameter (`$1`) is `param`, and
    /// decodes the row with `decode` (by column index). One round trip on a connection kept
    /// from the last such read (see `store/src/kept.rs`); behind a transaction-mode pooler, the
    /// way every statement goes there. Errors are sea-orm's for the same failures.
    pub async fn fetch_optional<T>(
        &self,
        sql: &'static str,
        param: &str,
        decode: fn(&PgRow) -> Result<T, sea_orm::sqlx::Error>,
    ) -> Result<Option<T>, DbErr> {
        let Some(kept) = &self.kept else {
            let stmt = Statement::from_sql_and_values(DbBackend::Postgres, sql, [param.into()]);
            let Some(row) = self.query_one_raw(stmt).await? else {
                return Ok(None);
            };
            let row = row
                .try_as_pg_row()
                .ok_or_else(|| DbErr::Type("the row is not a Postgres row".into()))?;
            return decode(row).map(Some).map_err(query_error);
        };
        let rows = kept.fetch_all(sql, param).await?;
        rows.first().map(decode).transpose().map_err(query_error)
    }

    /// What sits in front of Postgres.
    pub fn pooler(&self) -> Pooler {
        self.pooler
    }

    /// Closes every connection (the kept ones first: sqlx waits for every connection taken
    /// out of its pool).
    pub async fn close(self) -> Result<(), DbErr> {
        if let Some(kept) = &self.kept {
            kept.close();
        }
        self.conn.close().await
    }

    /// Runs `stmt` on its own: directly, or in a transaction of its own behind a
    /// transaction-mode pooler.
    async fn alone<T, F>(&self, stmt: Statement, run: F) -> Result<T, DbErr>
    where
        F: for<'t> FnOnce(
                &'t DatabaseTransaction,
                Statement,
            )
                -> Pin<Box<dyn Future<Output = Result<T, DbErr>> + Send + 't>>
            + Send,
        T: Send,
    {
        let txn = self.begin().await?;
        let result = run(&txn, stmt).await?;
        txn.commit().await?;
        Ok(result)
    }

    /// After `BEGIN` behind a transaction-mode pooler: drops the prepared statements earlier
    /// clients left on the server connection this transaction holds, after `settings` (plain
    /// SQL that must come first in the transaction, such as `SET TRANSACTION`).
    async fn fresh_server_connection(
        &self,
        txn: &DatabaseTransaction,
        settings: &str,
    ) -> Result<(), DbErr> {
        if self.pooler == Pooler::Transaction {
            txn.execute_unprepared(&format!("{settings}DEALLOCATE ALL"))
                .await?;
        }
        Ok(())
    }
}

/// Shows the mode only: nothing of the connection's options (its password) can show.
impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("pooler", &self.pooler)
            .finish()
    }
}

impl From<DatabaseConnection> for Pool {
    /// A pool with direct connections (`DATABASE_POOLER=none`).
    fn from(conn: DatabaseConnection) -> Self {
        Self::new(conn, Pooler::None)
    }
}

#[sea_orm::prelude::async_trait::async_trait]
impl ConnectionTrait for Pool {
    fn get_database_backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self.pooler {
            Pooler::Transaction => {
                self.alone(stmt, |txn, stmt| Box::pin(txn.execute_raw(stmt)))
                    .await
            }
            Pooler::None | Pooler::Session => self.conn.execute_raw(stmt).await,
        }
    }

    /// Plain SQL (the simple protocol) prepares nothing: sent as is in every mode.
    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.conn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self.pooler {
            Pooler::Transaction => {
                self.alone(stmt, |txn, stmt| Box::pin(txn.query_one_raw(stmt)))
                    .await
            }
            Pooler::None | Pooler::Session => self.conn.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self.pooler {
            Pooler::Transaction => {
                self.alone(stmt, |txn, stmt| Box::pin(txn.query_all_raw(stmt)))
                    .await
            }
            Pooler::None | Pooler::Session => self.conn.query_all_raw(stmt).await,
        }
    }

    fn support_returning(&self) -> bool {
        self.conn.support_returning()
    }

    fn is_mock_connection(&self) -> bool {
        self.conn.is_mock_connection()
    }
}

#[sea_orm::prelude::async_trait::async_trait]
impl TransactionTrait for Pool {
    type Transaction = DatabaseTransaction;

    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.conn.begin().await?;
        self.fresh_server_connection(&txn, "").await?;
        Ok(txn)
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<DatabaseTransaction, DbErr> {
        if self.pooler != Pooler::Transaction {
            return self
                .conn
                .begin_with_config(isolation_level, access_mode)
                .await;
        }
        // sea-orm would send `SET TRANSACTION` as a prepared statement, before `DEALLOCATE ALL`
        // could run; and it must come before any other statement of the transaction. So: plain
        // SQL, both in one round trip, `SET TRANSACTION` first.
        let settings: Vec<String> = isolation_level
            .map(|level| format!("ISOLATION LEVEL {level}"))
            .into_iter()
            .chain(access_mode.map(|mode| mode.to_string()))
            .collect();
        let settings = if settings.is_empty() {
            String::new()
        } else {
            format!("SET TRANSACTION {}; ", settings.join(" "))
        };
        let txn = self.conn.begin().await?;
        self.fresh_server_connection(&txn, &settings).await?;
        Ok(txn)
    }

    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<DatabaseTransaction, DbErr> {
        self.begin_with_config(options.isolation_level, options.access_mode)
            .await
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.transaction_with_config(callback, None, None).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let txn = self
            .begin_with_config(isolation_level, access_mode)
            .await
            .map_err(TransactionError::Connection)?;
        match callback(&txn).await {
            Ok(value) => {
                txn.commit().await.map_err(TransactionError::Connection)?;
                Ok(value)
            }
            Err(error) => {
                // The rollback's own failure changes nothing: the transaction is gone either way.
                let _ = txn.rollback().await;
                Err(TransactionError::Transaction(error))
            }
        }
    }
}

/// Connects to Postgres with the configured pool size, retrying for a short while (a database
/// that starts alongside the worker).
pub async fn connect_database(
    url: &str,
    max_connections: u32,
    pooler: Pooler,
) -> Result<Pool, DbErr> {
    let conn = connect_with(pool_options(url, max_connections, pooler)).await?;
    Ok(Pool::new(conn, pooler))
}

/// A pool that opens no connection until the first query (the api starts while Postgres is
/// down). Fails only when `url` cannot be used at all.
pub async fn connect_lazily(
    url: &str,
    max_connections: u32,
    pooler: Pooler,
) -> Result<Pool, DbErr> {
    let mut options = pool_options(url, max_connections, pooler);
    options.min_connections(0).connect_lazy(true);
    Ok(Pool::new(Database::connect(options).await?, pooler))
}

/// Connects with `options`, retrying for a short while.
pub async fn connect_with(options: ConnectOptions) -> Result<DatabaseConnection, DbErr> {
    (|| Database::connect(options.clone()))
        .retry(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(5),
        )
        .sleep(tokio::time::sleep)
        .notify(|error, delay| {
            tracing::warn!(error.message = %error, ?delay, "database not reachable yet; retrying");
        })
        .await
}
