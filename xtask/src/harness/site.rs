//! Where a pipeline run lives: a database and a queue prefix of the same name, removed by the
//! run's guard; the services that work there; whether its queues ended empty.

use broker::Topology;
use sea_orm::DatabaseConnection;

use super::{
    guard::Cleanup,
    report::Check,
    servers::{Broker, Servers, migrated_database},
    services::Service,
};

/// Connections of the run's own pool on its database.
const POOL: u32 = 24;

/// A database and a queue prefix, both named `prefix`.
pub struct Site {
    pub prefix: String,
    /// The topology of `prefix`.
    pub main: Topology,
    pub db: DatabaseConnection,
    pub db_url: String,
    /// `AMQP_URL`, as ingress and worker get it.
    amqp_url: String,
}

impl Site {
    /// Reaches both servers, then creates the database `prefix` (migrated) and remembers to
    /// delete the queues and exchange of `prefix`.
    pub async fn create(
        cleanup: &mut Cleanup,
        servers: &Servers,
        prefix: String,
    ) -> anyhow::Result<Self> {
        // Reach both servers before creating anything.
        Broker::connect(&servers.amqp_node).await?.close().await;
        let (db, db_url) = migrated_database(cleanup, &servers.pg, &prefix, POOL).await?;
        let main = topology(&prefix)?;
        cleanup.track_topology(&main);
        Ok(Self {
            prefix,
            main,
            db,
            db_url,
            amqp_url: servers.amqp_url.clone(),
        })
    }

    /// A worker consuming this site's queues into its database.
    pub fn worker(&self) -> Service {
        Service::worker()
            .env("DATABASE_URL", &self.db_url)
            .env("AMQP_URL", &self.amqp_url)
            .env("QUEUE_PREFIX", &self.prefix)
    }

    /// An ingress named `name` publishing to `prefix` (this site's or another), accepting
    /// events signed with `secret`.
    pub fn ingress(&self, name: &str, prefix: &str, secret: &str) -> Service {
        Service::ingress(name)
            .env("AMQP_URL", &self.amqp_url)
            .env("QUEUE_PREFIX", prefix)
            .env("CLERK_WEBHOOK_SECRET", secret)
    }

    /// An api reading this site's database.
    pub fn api(&self) -> Service {
        Service::api().env("DATABASE_URL", &self.db_url)
    }

    /// Closes the run's pool on the database.
    pub async fn close(self) {
        let _ = self.db.close().await;
    }
}

/// The topology of `prefix`: the same names the ingress and worker derive (they inherit
/// `RETRY_DELAYS`).
pub fn topology(prefix: &str) -> anyhow::Result<Topology> {
    let retry_delays = std::env::var("RETRY_DELAYS").ok();
    Topology::from_lookup(&|name: &str| match name {
        "QUEUE_PREFIX" => Some(prefix.to_owned()),
        "RETRY_DELAYS" => retry_delays.clone(),
        _ => None,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Every queue of `topology` is empty (ready messages).
pub async fn check_queues(
    broker: &Broker,
    topology: &Topology,
    when: &str,
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let dead = broker.ready(&topology.dead_queue()).await?;
    checks.push(Check::new(
        format!("dead-letter queue empty ({when})"),
        dead == 0,
        format!("{dead} messages in {}", topology.dead_queue()),
    ));
    let mut others = 0;
    let mut names = vec![topology.main_queue()];
    names.extend(
        topology
            .retry_delays()
            .iter()
            .map(|d| topology.retry_queue(*d)),
    );
    for queue in &names {
        others += broker.ready(queue).await?;
    }
    checks.push(Check::new(
        format!("main and retry queues empty ({when})"),
        others == 0,
        format!("{others} messages left"),
    ));
    Ok(checks)
}
