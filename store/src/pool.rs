//! The database pool every clerk-sync process opens (worker, its CLI, the api), and connecting
//! to a database that may still be starting.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// The pool settings of every clerk-sync process (worker, its CLI, the api): `max_connections`
/// (at least 1), 5 s to connect and to get a connection, no per-statement logs. One
/// connection is kept open; the api, which must start while Postgres is down, opens none ahead.
pub fn pool_options(url: &str, max_connections: u32) -> ConnectOptions {
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
    options
}

/// Connects to Postgres with the configured pool size, retrying for a short while (a database
/// that starts alongside the worker).
pub async fn connect_database(
    url: &str,
    max_connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    connect_with(pool_options(url, max_connections)).await
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
