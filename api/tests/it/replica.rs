//! Reads from a read replica (`DATABASE_READ_URL`): a private primary and streaming standby made
//! by the test. The api reads from the standby while it is current (the metric and the standby's
//! own statistics say so), answers lazy sync and `PATCH` with what it wrote, and reads from the
//! primary without an error while the standby is stopped or its replay paused past the allowed
//! lag, then from the standby again.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::json;
use testkit::{
    events::{UserState, user_object},
    eventually,
    fake_clerk::{FakeClerk, SECRET_KEY},
    replica::PrimaryStandby,
};
use uuid::Uuid;

use crate::helpers::{CLERK_KEYS, SERVICE_KEY, json_body, session_token};

const DATABASE: &str = "clerk_sync";

struct App {
    address: String,
    client: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl App {
    async fn start(pair: &PrimaryStandby, clerk: &FakeClerk) -> Self {
        let settings: std::collections::HashMap<&str, String> = [
            ("API_ADDR", "127.0.0.1:0".to_owned()),
            ("DATABASE_URL", pair.primary_url(DATABASE)),
            ("DATABASE_READ_URL", pair.standby_url(DATABASE)),
            ("DATABASE_READ_MAX_LAG", "1s".to_owned()),
            ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
            ("API_SERVICE_KEYS", SERVICE_KEY.to_owned()),
            ("CLERK_JWT_KEY", CLERK_KEYS.public_pem.clone()),
            ("CLERK_SECRET_KEY", SECRET_KEY.to_owned()),
            ("CLERK_API_URL", clerk.url()),
        ]
        .into_iter()
        .collect();
        let config = api::Config::from_lookup(move |name| settings.get(name).cloned()).unwrap();
        let app = api::Application::build(config).await.unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            client: reqwest::Client::new(),
            _stop: stop,
        }
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `clerk_sync_api_db_reads_total{target, reason}`.
    async fn reads(&self, target: &str, reason: &str) -> u64 {
        let metrics = self
            .client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series =
            format!(r#"clerk_sync_api_db_reads_total{{target="{target}",reason="{reason}"}} "#);
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Reads a user `n` times with a service key, each answered 200.
    async fn read_user(&self, id: Uuid, n: usize) {
        for _ in 0..n {
            let response = self.get(&format!("/users/{id}"), SERVICE_KEY).await;
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        }
    }

    async fn ready(&self) -> u16 {
        self.client
            .get(format!("{}/readyz", self.address))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

async fn insert_user(primary: &DatabaseConnection, clerk_user_id: &str) -> Uuid {
    let id = Uuid::new_v4();
    primary
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO users (id, clerk_user_id, email, first_name, clerk_updated_at, \
               google_calendar_connected) VALUES ($1, $2, $3, 'Ada', 1, true)",
            [
                id.into(),
                clerk_user_id.into(),
                format!("{clerk_user_id}@x.test").into(),
            ],
        ))
        .await
        .unwrap();
    id
}

/// Rows the standby's backends fetched from `DATABASE` (its own statistics).
async fn fetched_on_standby(pair: &PrimaryStandby) -> i64 {
    let standby = Database::connect(pair.standby_url("postgres"))
        .await
        .unwrap();
    let n = standby
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT tup_fetched FROM pg_stat_database WHERE datname = $1",
            [DATABASE.into()],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "tup_fetched")
        .unwrap();
    let _ = standby.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_a_current_standby_and_to_the_primary_while_it_is_gone_or_behind() {
    assert!(
        PrimaryStandby::available(),
        "Debian's postgresql server package is needed for this test"
    );
    let pair = PrimaryStandby::start();
    let primary = pair.create_database(DATABASE).await;
    Migrator::up(&primary, None).await.unwrap();
    let ada = insert_user(&primary, "user_ada").await;
    pair.wait_for_standby().await;
    let clerk = FakeClerk::start().await;
    clerk.set_users(vec![user_object(&UserState {
        id: "user_lazy".into(),
        email: Some("lazy@x.test".into()),
        first_name: Some("Lazy".into()),
        last_name: None,
        updated_at: 1_000,
    })]);
    let app = App::start(&pair, &clerk).await;

    // The standby is current: reads go there.
    eventually(Duration::from_secs(15), "reads on the standby", || async {
        app.read_user(ada, 1).await;
        (app.reads("replica", "current").await > 0).then_some(())
    })
    .await;
    let (before, fetched) = (
        app.reads("replica", "current").await,
        fetched_on_standby(&pair).await,
    );
    app.read_user(ada, 20).await;
    assert!(app.reads("replica", "current").await >= before + 20);
    eventually(
        Duration::from_secs(10),
        "the standby's own count",
        || async { (fetched_on_standby(&pair).await >= fetched + 20).then_some(()) },
    )
    .await;

    // Lazy sync and PATCH answer with what they wrote, not with the standby's older state.
    let me = json_body(app.get("/me", &session_token("user_lazy")).await).await;
    assert_eq!(me["first_name"], "Lazy", "{me}");
    let patched = app
        .client
        .patch(format!("{}/users/{ada}/calendar-status", app.address))
        .bearer_auth(SERVICE_KEY)
        .json(&json!({"provider": "google", "connected": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(json_body(patched).await["google_calendar_connected"], false);

    // The standby stopped: reads from the primary, no error, ready all along.
    pair.stop_standby();
    let gone =
        app.reads("primary", "unreachable").await + app.reads("primary", "replica_error").await;
    app.read_user(ada, 10).await;
    assert_eq!(app.ready().await, 200);
    assert!(
        app.reads("primary", "unreachable").await + app.reads("primary", "replica_error").await
            >= gone + 10
    );

    // Back: reads go to the standby again.
    pair.start_standby();
    let before = app.reads("replica", "current").await;
    eventually(
        Duration::from_secs(15),
        "reads on the standby again",
        || async {
            app.read_user(ada, 1).await;
            (app.reads("replica", "current").await > before).then_some(())
        },
    )
    .await;

    // Replay paused while the primary writes: past the allowed lag, reads go to the primary.
    pair.on_standby("SELECT pg_wal_replay_pause()").await;
    let grace = insert_user(&primary, "user_grace").await;
    let lagging = app.reads("primary", "lagging").await;
    eventually(
        Duration::from_secs(15),
        "reads sent to the primary",
        || async {
            app.read_user(grace, 1).await;
            (app.reads("primary", "lagging").await > lagging).then_some(())
        },
    )
    .await;
    let on_replica = app.reads("replica", "current").await;
    app.read_user(grace, 5).await;
    assert_eq!(app.reads("replica", "current").await, on_replica);

    // Resumed: the standby catches up, and reads go there again.
    pair.on_standby("SELECT pg_wal_replay_resume()").await;
    eventually(
        Duration::from_secs(15),
        "reads on the standby after resume",
        || async {
            app.read_user(grace, 1).await;
            (app.reads("replica", "current").await > on_replica).then_some(())
        },
    )
    .await;
    assert_eq!(app.ready().await, 200);
}
