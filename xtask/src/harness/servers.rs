//! The servers a run uses (RabbitMQ, Postgres) as the environment names them, the databases it
//! creates on them, and a connection that counts the messages in a queue.

use anyhow::{Context, bail};
use broker::{BrokerConfig, lapin::Connection};
use migration::MigratorTrait as _;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use super::guard::Cleanup;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432";
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `name` from the environment, unless unset or blank.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// RabbitMQ and Postgres, from `AMQP_URL` and `DATABASE_URL` (or the local defaults).
pub struct Servers {
    /// `AMQP_URL` as is: ingress and worker get it.
    pub amqp_url: String,
    /// The node the run's own AMQP connections use (the first of `amqp_url`).
    pub amqp_node: String,
    pub pg: PgServer,
}

impl Servers {
    pub fn from_env() -> anyhow::Result<Self> {
        let amqp_url = env_or("AMQP_URL", DEFAULT_AMQP_URL);
        let amqp_node = amqp_url
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(Self {
            amqp_url,
            amqp_node,
            pg: PgServer::from_env()?,
        })
    }
}

/// A Postgres server: a `DATABASE_URL` without its database name.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// `postgres://user:pass@host:port`.
    base: String,
    /// `?…` parameters, if any (kept for every database).
    query: String,
}

impl PgServer {
    /// The server of `DATABASE_URL` (or the local default).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::parse(&env_or("DATABASE_URL", DEFAULT_DATABASE_URL))
    }

    /// Reads `postgres://user@host:port[/database][?params]`; the database name is ignored.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("DATABASE_URL must look like postgres://user@host:5432");
        };
        if scheme != "postgres" && scheme != "postgresql" {
            bail!("DATABASE_URL must start with postgres://");
        }
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, format!("?{query}")),
            None => (rest, String::new()),
        };
        let host = rest.split('/').next().unwrap_or(rest);
        Ok(Self {
            base: format!("{scheme}://{host}"),
            query,
        })
    }

    /// The server's URL without credentials, for messages.
    pub fn redacted(&self) -> String {
        broker::redact_url(&self.base)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}{}", self.base, self.query)
    }
}

/// Creates database `name` on `pg` (dropped by `cleanup`), connects to it with a pool of
/// `max_connections` and applies the migrations: the connection and its URL.
pub async fn migrated_database(
    cleanup: &mut Cleanup,
    pg: &PgServer,
    name: &str,
    max_connections: u32,
) -> anyhow::Result<(DatabaseConnection, String)> {
    cleanup.create_database(pg, name).await?;
    let db_url = pg.url(name);
    let mut connect = ConnectOptions::new(&db_url);
    connect.max_connections(max_connections).sqlx_logging(false);
    let db = Database::connect(connect)
        .await
        .context("cannot connect to the bench database")?;
    migration::Migrator::up(&db, None)
        .await
        .context("cannot apply the migrations to the bench database")?;
    Ok((db, db_url))
}

/// A connection for counting messages.
pub struct Broker {
    connection: Connection,
}

impl Broker {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let config = BrokerConfig::new(vec![url.to_owned()], "clerk-sync xtask");
        let connection = broker::connect_first(&config, "counter")
            .await
            .context("is RabbitMQ running? (set AMQP_URL)")?;
        Ok(Self { connection })
    }

    /// Ready messages in `queue` (passive declare: consumes nothing).
    pub async fn ready(&self, queue: &str) -> anyhow::Result<u64> {
        // A passive declare of a missing queue closes the channel: a channel per question.
        let channel = self
            .connection
            .create_channel()
            .await
            .context("cannot open an AMQP channel")?;
        let depth = broker::queue_depth(&channel, queue)
            .await
            .with_context(|| format!("cannot inspect queue {queue}"))?
            .with_context(|| format!("queue {queue} does not exist"))?;
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        Ok(u64::from(depth.messages))
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}
