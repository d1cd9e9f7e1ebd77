use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use testkit::{TestBroker, TestDb};
use tokio::sync::oneshot;
use worker::{Application, Config};

pub struct TestWorker {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Settings for a worker on this database (through its PgBouncer when it has one, see
/// [`TestDb`]) and prefix, quick retries, `extra` on top.
pub fn worker_settings(
    db: &TestDb,
    broker: &TestBroker,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut settings = worker_settings_at(&db.service_url(), broker, extra);
    if !extra.iter().any(|(k, _)| *k == "DATABASE_POOLER") {
        settings.insert("DATABASE_POOLER".into(), db.pooler().as_str().into());
    }
    settings
}

/// Settings for a worker on the database at `db_url` (no pooler) and this prefix, quick
/// retries, `extra` on top.
pub fn worker_settings_at(
    db_url: &str,
    broker: &TestBroker,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut settings: HashMap<String, String> = broker.settings().into_iter().collect();
    settings.insert("DATABASE_URL".into(), db_url.into());
    settings.insert("WORKER_ADDR".into(), "127.0.0.1:0".into());
    settings.insert("MAX_ATTEMPTS".into(), "30".into());
    settings.insert("DATABASE_MAX_CONNECTIONS".into(), "5".into());
    for (k, v) in extra {
        settings.insert((*k).into(), (*v).into());
    }
    settings
}

/// Starts a worker in this process.
pub async fn spawn_worker(db: &TestDb, broker: &TestBroker, extra: &[(&str, &str)]) -> TestWorker {
    spawn_worker_with(worker_settings(db, broker, extra)).await
}

/// Starts a worker in this process on the database at `db_url` (no pooler).
pub async fn spawn_worker_at(
    db_url: &str,
    broker: &TestBroker,
    extra: &[(&str, &str)],
) -> TestWorker {
    spawn_worker_with(worker_settings_at(db_url, broker, extra)).await
}

/// Starts a worker in this process with these settings.
pub async fn spawn_worker_with(settings: HashMap<String, String>) -> TestWorker {
    let config = Config::from_lookup(|name| settings.get(name).cloned()).unwrap();
    let app = Application::build(config).await.unwrap();
    let port = app.port();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestWorker {
        port,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestWorker {
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Generous: a worker shutting down on a loaded machine (CI) can take a while.
            tokio::time::timeout(Duration::from_secs(90), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

/// A user row as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub version: i64,
}

/// Every user row, by Clerk id.
pub async fn users(db: &DatabaseConnection) -> BTreeMap<String, Row> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT clerk_user_id, email, first_name, last_name, clerk_updated_at FROM users",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|row| {
        (
            row.try_get::<String>("", "clerk_user_id").unwrap(),
            Row {
                email: row.try_get("", "email").unwrap(),
                first_name: row.try_get("", "first_name").unwrap(),
                last_name: row.try_get("", "last_name").unwrap(),
                version: row.try_get("", "clerk_updated_at").unwrap(),
            },
        )
    })
    .collect()
}

pub async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

pub fn state(
    id: &str,
    email: Option<&str>,
    first: &str,
    updated_at: i64,
) -> testkit::events::UserState {
    testkit::events::UserState {
        id: id.into(),
        email: email.map(Into::into),
        first_name: Some(first.into()),
        last_name: Some("Synth".into()),
        updated_at,
    }
}

/// Waits until the users table equals `expected`.
pub async fn wait_for_users(
    db: &DatabaseConnection,
    expected: &BTreeMap<String, Row>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let actual = users(db).await;
        if &actual == expected {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| actual.get(*k) != Some(v))
                .take(5)
                .collect();
            let extra: Vec<_> = actual
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .take(5)
                .collect();
            panic!(
                "users did not converge within {timeout:?}: {} rows, {} expected; first mismatches {missing:?}; unexpected {extra:?}; actual of those {:?}",
                actual.len(),
                expected.len(),
                missing
                    .iter()
                    .map(|(k, _)| actual.get(*k))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `queue` holds `expected` ready messages (returns from a closed channel are
/// processed by the broker asynchronously).
pub async fn wait_for_count(broker: &testkit::TestBroker, queue: &str, expected: u32) {
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        last = broker.count(queue).await;
        if last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{queue} holds {last} messages, expected {expected}");
}

/// The row a user ends in after an event built from `state(_, email, first, version)`.
pub fn row(email: Option<&str>, first: &str, version: i64) -> Row {
    Row {
        email: email.map(Into::into),
        first_name: Some(first.into()),
        last_name: Some("Synth".into()),
        version,
    }
}

/// A `user.created` / `user.updated` event for `state(id, email, first, version)`: to publish as
/// the ingress would, or to keep as a body.
pub struct UserEvent {
    event_type: &'static str,
    state: testkit::events::UserState,
}

/// A `user.created` for `state(id, email, first, version)`.
pub fn user_created(id: &str, email: Option<&str>, first: &str, version: i64) -> UserEvent {
    UserEvent::new("user.created", id, email, first, version)
}

/// A `user.updated` for `state(id, email, first, version)`.
pub fn user_updated(id: &str, email: Option<&str>, first: &str, version: i64) -> UserEvent {
    UserEvent::new("user.updated", id, email, first, version)
}

impl UserEvent {
    pub fn new(
        event_type: &'static str,
        id: &str,
        email: Option<&str>,
        first: &str,
        version: i64,
    ) -> Self {
        Self {
            event_type,
            state: state(id, email, first, version),
        }
    }

    /// The event's body, as Clerk sends it.
    pub fn body(&self) -> Vec<u8> {
        testkit::events::user_event(self.event_type, &self.state)
    }

    /// Publishes it with this Svix id, as the ingress would.
    pub async fn publish(&self, broker: &TestBroker, svix_id: &str) {
        broker.publish_event(svix_id, &self.body()).await;
    }
}

/// An ingress running in this process.
pub struct TestIngress {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts an ingress in this process with `settings`, the test webhook secret and a free port,
/// and waits until it answers ready.
pub async fn spawn_ingress(settings: impl IntoIterator<Item = (String, String)>) -> TestIngress {
    let mut settings: HashMap<String, String> = settings.into_iter().collect();
    settings.insert("CLERK_WEBHOOK_SECRET".into(), testkit::SECRET.into());
    settings.insert("INGRESS_ADDR".into(), "127.0.0.1:0".into());
    let ingress = ingress::Application::build(
        ingress::Config::from_lookup(|name| settings.get(name).cloned()).unwrap(),
    )
    .await
    .unwrap();
    let address = format!("http://127.0.0.1:{}", ingress.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ingress.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    // Each ask bounded, as the cluster test's client was: a hung request must not outlast the wait.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    testkit::eventually(Duration::from_secs(30), "ingress ready", || async {
        let r = client.get(format!("{address}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    TestIngress {
        address,
        stop,
        task,
    }
}

impl TestIngress {
    /// Where Clerk's webhooks are posted.
    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/clerk", self.address)
    }

    /// Stops it and waits for it to finish, 30 s at most; `false` if it did not finish cleanly.
    pub async fn shut_down(self) -> bool {
        let _ = self.stop.send(());
        matches!(
            tokio::time::timeout(Duration::from_secs(30), self.task).await,
            Ok(Ok(()))
        )
    }

    /// Stops it; it must finish cleanly.
    pub async fn stop(self) {
        assert!(self.shut_down().await, "the ingress did not stop cleanly");
    }
}

/// Runs the worker binary with `args` and exactly these `settings`: whether it exited 0, its
/// standard output and its standard error.
pub fn worker_cli(settings: HashMap<String, String>, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(args)
        .env_clear()
        .envs(settings)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Settings for a worker on this database and prefix that reads Clerk's API from `clerk`.
pub fn settings_with_clerk(
    db: &TestDb,
    broker: &TestBroker,
    clerk: &testkit::fake_clerk::FakeClerk,
) -> HashMap<String, String> {
    let url = clerk.url();
    worker_settings(
        db,
        broker,
        &[
            ("CLERK_SECRET_KEY", testkit::fake_clerk::SECRET_KEY),
            ("CLERK_API_URL", &url),
        ],
    )
}
