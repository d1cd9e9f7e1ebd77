//! Test support shared by the integration tests of every crate. Tests talk to the machine's real
//! Postgres and RabbitMQ; each one isolates itself with a database and a queue prefix of its own,
//! both removed when the guard is dropped (even when the test panics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod events;
pub mod fake_clerk;
pub mod otlp;
pub mod pgbouncer;
pub mod postgres_user;
pub mod process;
pub mod proxy;
pub mod replica;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker::{
    Topology, headers,
    lapin::{
        BasicProperties, Channel, Connection, ConnectionProperties,
        message::BasicGetMessage,
        options::{
            BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
            QueueDeleteOptions,
        },
        types::FieldTable,
    },
};
use migration::{
    Migrator, MigratorTrait,
    sea_orm::{ConnectionTrait, Database, DatabaseConnection},
};
use store::pool::{Pool, Pooler};

/// A short random name with a prefix, safe as a database or queue name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Server root URL of the test Postgres (`TEST_DATABASE_URL`, no database name).
pub fn postgres_root() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The test RabbitMQ (`TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A database of its own for one test, migrated; dropped with the guard.
///
/// With `TEST_DATABASE_POOLER=transaction` (or `session`) in the environment, the database also
/// gets a PgBouncer of its own in that mode ([`pgbouncer`]), and what the code under test uses
/// ([`TestDb::pool`], [`TestDb::service_url`], [`TestDb::service_settings`]) goes through it,
/// while the test arranges and checks through a direct connection ([`TestDb::conn`]). So any
/// suite whose helpers take those runs unchanged behind the pooler.
pub struct TestDb {
    pub name: String,
    /// The database's own URL, without a pooler.
    pub url: String,
    /// A direct pool, to arrange and check with.
    pub conn: DatabaseConnection,
    /// The pool the code under test uses: through PgBouncer when the test asked for one (or
    /// `TEST_DATABASE_POOLER` did), else direct.
    pub pool: Pool,
    bouncer: Option<pgbouncer::PgBouncer>,
}

/// The PgBouncer that `TEST_DATABASE_POOLER` asks every test database to sit behind:
/// `transaction` (a pool of `TEST_PGBOUNCER_POOL_SIZE` server connections, default 3, so they
/// are really shared) or `session` (a pool large enough for every client connection: in
/// session mode each holds one); unset or `none`: none.
pub fn pooler_from_env() -> Option<(pgbouncer::PoolMode, u32)> {
    let mode = match std::env::var("TEST_DATABASE_POOLER")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "transaction" => pgbouncer::PoolMode::Transaction,
        "session" => pgbouncer::PoolMode::Session,
        "" | "none" => return None,
        other => panic!("TEST_DATABASE_POOLER={other:?}: expected transaction, session or none"),
    };
    let default_size = match mode {
        pgbouncer::PoolMode::Transaction => 3,
        pgbouncer::PoolMode::Session => 60,
    };
    let size = std::env::var("TEST_PGBOUNCER_POOL_SIZE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default_size);
    Some((mode, size))
}

impl TestDb {
    /// Creates an empty database (no migrations), behind the pooler `TEST_DATABASE_POOLER`
    /// names, if any.
    pub async fn empty() -> Self {
        Self::create(pooler_from_env()).await
    }

    /// Creates a database and applies every migration.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        Migrator::up(&db.conn, None).await.unwrap();
        db
    }

    /// Creates an empty database behind a PgBouncer of its own in `mode` with `pool_size` server
    /// connections, whatever the environment says.
    pub async fn empty_behind(mode: pgbouncer::PoolMode, pool_size: u32) -> Self {
        Self::create(Some((mode, pool_size))).await
    }

    /// Creates a database and applies every migration, behind a PgBouncer of its own in `mode`
    /// with `pool_size` server connections, whatever the environment says.
    pub async fn migrated_behind(mode: pgbouncer::PoolMode, pool_size: u32) -> Self {
        let db = Self::create(Some((mode, pool_size))).await;
        Migrator::up(&db.conn, None).await.unwrap();
        db
    }

    async fn create(pooler: Option<(pgbouncer::PoolMode, u32)>) -> Self {
        let name = unique("cs_test");
        let admin = Database::connect(format!("{}/postgres", postgres_root()))
            .await
            .unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        let _ = admin.close().await;
        let url = format!("{}/{name}", postgres_root());
        let conn = Database::connect(&url).await.unwrap();
        let bouncer = pooler.map(|(mode, size)| pgbouncer::PgBouncer::start(mode, size));
        let pool = match &bouncer {
            Some(bouncer) => {
                store::pool::connect_database(&bouncer.url(&name), 10, bouncer.mode().pooler())
                    .await
                    .unwrap()
            }
            None => Pool::from(conn.clone()),
        };
        Self {
            name,
            url,
            conn,
            pool,
            bouncer,
        }
    }

    /// The URL the services under test connect to: through the PgBouncer when there is one.
    pub fn service_url(&self) -> String {
        match &self.bouncer {
            Some(bouncer) => bouncer.url(&self.name),
            None => self.url.clone(),
        }
    }

    /// What sits in front of [`Self::service_url`].
    pub fn pooler(&self) -> Pooler {
        self.bouncer
            .as_ref()
            .map_or(Pooler::None, |bouncer| bouncer.mode().pooler())
    }

    /// `DATABASE_URL` and `DATABASE_POOLER` for a service under test.
    pub fn service_settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.service_url()),
            ("DATABASE_POOLER", self.pooler().as_str().to_owned()),
        ]
    }

    /// The PgBouncer in front of it, if any (to kill and restart it).
    pub fn bouncer(&mut self) -> Option<&mut pgbouncer::PgBouncer> {
        self.bouncer.as_mut()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(bouncer) = self.bouncer.as_mut() {
            bouncer.kill();
        }
        let name = self.name.clone();
        // The test's own pool is left alone: its connections belong to the test's runtime, which
        // is blocked in this drop. FORCE ends them.
        run_detached(async move {
            if let Ok(admin) = Database::connect(format!("{}/postgres", postgres_root())).await {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
                let _ = admin.close().await;
            }
        });
    }
}

/// Runs a clean-up future to completion from `Drop`, inside or outside a runtime.
fn run_detached<F: std::future::Future<Output = ()> + Send + 'static>(future: F) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(future);
    })
    .join();
}

/// A queue prefix of its own for one test; its exchange and queues are deleted with the guard.
pub struct TestBroker {
    pub topology: Topology,
    pub connection: Connection,
    pub channel: Channel,
    /// A confirm-mode channel for publishing.
    pub confirm_channel: Channel,
}

impl TestBroker {
    /// A fresh prefix with short retry delays, declared.
    pub async fn new() -> Self {
        Self::with_delays(vec![Duration::from_millis(300), Duration::from_secs(1)]).await
    }

    /// A fresh prefix with these retry delays, declared.
    pub async fn with_delays(delays: Vec<Duration>) -> Self {
        let topology = Topology::new(unique("cs_test"), delays, None);
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        topology
            .declare(&connection, broker::detect_version(&amqp_url()).await)
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let confirm_channel = connection.create_channel().await.unwrap();
        confirm_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            topology,
            connection,
            channel,
            confirm_channel,
        }
    }

    /// Settings that point a process at this prefix and retry tiers.
    pub fn settings(&self) -> Vec<(String, String)> {
        let delays: Vec<String> = self
            .topology
            .retry_delays()
            .iter()
            .map(|d| format!("{}ms", d.as_millis()))
            .collect();
        vec![
            ("AMQP_URL".into(), amqp_url()),
            ("QUEUE_PREFIX".into(), self.topology.prefix().into()),
            ("RETRY_DELAYS".into(), delays.join(",")),
        ]
    }

    /// Publishes a raw event to the main queue as the ingress does (confirmed).
    pub async fn publish_event(&self, svix_id: &str, body: &[u8]) {
        self.publish_event_with_headers(svix_id, body, &[]).await;
    }

    /// [`TestBroker::publish_event`] with more string headers (`traceparent`, …).
    pub async fn publish_event_with_headers(
        &self,
        svix_id: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, headers::SVIX_ID, svix_id);
        headers::set_i64(&mut table, headers::RECEIVED_AT, now_secs() * 1000);
        for (name, value) in extra {
            headers::set_str(&mut table, name, value);
        }
        let properties = BasicProperties::default()
            .with_message_id(svix_id.into())
            .with_content_type("application/json".into())
            .with_headers(table);
        broker::publish_confirmed(
            &self.confirm_channel,
            self.topology.exchange(),
            broker::EVENTS_ROUTING_KEY,
            body,
            properties,
        )
        .await
        .unwrap();
    }

    /// Messages in every queue of the topology (ready ones only).
    pub async fn total_ready(&self) -> u32 {
        let mut total = 0;
        for queue in self.topology.all_queues() {
            total += self.count(&queue).await;
        }
        total
    }

    /// Messages ready in `queue`, without consuming them.
    pub async fn count(&self, queue: &str) -> u32 {
        broker::queue_depth(&self.channel, queue)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("queue {queue} does not exist"))
            .messages
    }

    /// Takes (and acks) every message in `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            out.push(message);
        }
        out
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        run_detached(async move {
            let Ok(connection) =
                Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                // With the temporary queues `worker migrate-queues` makes, should a test stop
                // in the middle of one.
                let queues = topology.all_queues().into_iter().flat_map(|queue| {
                    let migrating = format!("{queue}.migrating");
                    [queue, migrating]
                });
                // Deleting a queue that does not exist succeeds.
                for queue in queues {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = channel
                    .exchange_delete(topology.exchange().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "test done".into()).await;
        });
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects to `addr` (`host:port`), sends a request head that never ends, and returns whether
/// the server hung up within `wait`, and after how long (the header timeout's test).
pub async fn slow_client_is_disconnected(addr: &str, wait: Duration) -> (bool, Duration) {
    use std::io::{Read, Write};
    let addr = addr.trim_start_matches("http://").to_owned();
    let started = std::time::Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .unwrap();
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 256];
        // Either a 408 and then EOF, or EOF at once; a read timeout means the client was kept.
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap();
    (closed, started.elapsed())
}

/// Everything an exited child wrote to its piped stdout and stderr.
pub fn child_output(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out).unwrap();
    }
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut out).unwrap();
    }
    out
}

/// Svix headers for `body`, signed with `secret` at `timestamp` (seconds).
pub fn svix_headers(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> http::HeaderMap {
    let signature = svix::webhooks::Webhook::new(secret)
        .unwrap()
        .sign(msg_id, timestamp, body)
        .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("svix-id", msg_id.parse().unwrap());
    headers.insert("svix-timestamp", timestamp.to_string().parse().unwrap());
    headers.insert("svix-signature", signature.parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    headers
}

/// A webhook secret for tests.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second webhook secret (rotation).
pub const SECRET_2: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
