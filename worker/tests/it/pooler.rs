//! The worker behind PgBouncer in transaction mode (no prepared-statement support, a small pool
//! so that server connections are really shared): events applied in batches by several workers,
//! the scheduled reconcile once per interval and never left held, and PgBouncer killed and
//! restarted mid-stream. (The whole suite runs behind PgBouncer with `TEST_DATABASE_POOLER`:
//! docs/development.md.)

use std::{collections::BTreeMap, time::Duration};

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use testkit::{
    TestBroker, TestDb,
    events::{UserState, user_object},
    eventually,
    fake_clerk::{FakeClerk, SECRET_KEY},
    pgbouncer::PoolMode,
};

use crate::helpers::{Row, UserEvent, row, scalar, spawn_worker, wait_for_users};

/// (svix id, body) pairs.
type Events = Vec<(String, Vec<u8>)>;

/// `versions` events for each of `users` users, shuffled; and the final rows.
fn shuffled_stream(prefix: &str, users: usize, versions: i64) -> (Events, BTreeMap<String, Row>) {
    let mut events = Vec::new();
    let mut expected = BTreeMap::new();
    for v in 1..=versions {
        for u in 0..users {
            let id = format!("user_{prefix}_{u}");
            let email = format!("{prefix}{u}-v{v}@example.com");
            let kind = if v == 1 {
                "user.created"
            } else {
                "user.updated"
            };
            let first = format!("V{v}");
            let body = UserEvent::new(kind, &id, Some(&email), &first, v * 10).body();
            events.push((format!("msg_{prefix}_{u}_{v}"), body));
            expected.insert(id, row(Some(&email), &first, v * 10));
        }
    }
    events.shuffle(&mut StdRng::seed_from_u64(29));
    (events, expected)
}

fn metric(metrics: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("clerk_sync_events_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_through_a_transaction_mode_pgbouncer_apply_every_event_once() {
    let db = TestDb::migrated_behind(PoolMode::Transaction, 3).await;
    let broker = TestBroker::new().await;
    let settings = [("WORKER_BATCH_SIZE", "16"), ("WORKER_CONCURRENCY", "3")];
    let workers = [
        spawn_worker(&db, &broker, &settings).await,
        spawn_worker(&db, &broker, &settings).await,
        spawn_worker(&db, &broker, &settings).await,
    ];
    let (events, expected) = shuffled_stream("pooled", 120, 3);

    for (id, body) in &events {
        broker.publish_event(id, body).await;
    }

    wait_for_users(&db.conn, &expected, Duration::from_secs(60)).await;
    eventually(Duration::from_secs(30), "every event settled", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == 360
            && broker.total_ready().await == 0)
            .then_some(())
    })
    .await;
    let mut dead = 0;
    for worker in &workers {
        dead += metric(&worker.metrics().await, "dead_lettered");
    }
    assert_eq!(dead, 0);
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_through_a_transaction_mode_pgbouncer_reconcile_once_per_interval_and_never_leave_it_held()
 {
    let db = TestDb::migrated_behind(PoolMode::Transaction, 2).await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    clerk.set_users(
        (0..10)
            .map(|n| {
                user_object(&UserState {
                    id: format!("user_rec_{n}"),
                    email: Some(format!("rec{n}@example.com")),
                    first_name: Some("First".into()),
                    last_name: None,
                    updated_at: 1_000,
                })
            })
            .collect(),
    );
    // Each call to Clerk takes a while, so that two runs at once would overlap.
    clerk.set_delay(Duration::from_millis(150));
    let url = clerk.url();
    let settings = [
        ("RECONCILE_INTERVAL", "1s"),
        ("CLERK_SECRET_KEY", SECRET_KEY),
        ("CLERK_API_URL", url.as_str()),
    ];
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(
        spawn_worker(&db, &broker, &settings),
        spawn_worker(&db, &broker, &settings),
    );

    // The first run one interval after the first worker started, then one per interval. Each
    // run reads Clerk's user list from its start.
    let runs = || {
        clerk
            .user_offsets()
            .iter()
            .filter(|offset| **offset == 0)
            .count()
    };
    eventually(Duration::from_secs(20), "three reconcile runs", || async {
        (runs() >= 3).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    tokio::join!(a.stop(), b.stop());

    let runs = runs();
    let intervals = elapsed.as_secs_f64().floor() as usize;
    assert!(
        runs <= intervals + 1,
        "{runs} runs in {elapsed:?}: more than once per interval"
    );
    assert_eq!(clerk.max_in_flight(), 1, "two reconciles ran at once");
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM leases WHERE holder IS NOT NULL"
        )
        .await,
        0,
        "the lease was left held"
    );
    assert_eq!(
        scalar(
            &db.conn,
            // pg_locks is the whole server's: other tests running beside this one hold
            // theirs; only this test's database counts.
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        .await,
        0,
        "an advisory lock was left held on a server connection"
    );
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM users").await,
        10,
        "the runs reconciled"
    );
    // Every completed run is counted in the lease (the last may have been stopped midway).
    let completed = scalar(
        &db.conn,
        "SELECT COALESCE(max(runs), 0) FROM leases WHERE name = 'reconcile'",
    )
    .await;
    assert!(
        completed == runs as i64 || completed == runs as i64 - 1,
        "{completed} completed of {runs}"
    );
}

/// The api on the database through its PgBouncer, with a service key.
async fn spawn_api(db: &TestDb) -> String {
    let settings: std::collections::HashMap<&str, String> = [
        ("API_ADDR", "127.0.0.1:0".to_owned()),
        ("API_SERVICE_KEYS", API_KEY.to_owned()),
        ("DATABASE_MAX_CONNECTIONS", "3".to_owned()),
    ]
    .into_iter()
    .chain(db.service_settings())
    .collect();
    let config = api::Config::from_lookup(move |name| settings.get(name).cloned()).unwrap();
    let app = api::Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    address
}

const API_KEY: &str = "svc-pooler-test-key-0123456789abcdef";

async fn status(url: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(API_KEY)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_killed_and_restarted_mid_stream_loses_nothing_and_the_api_recovers_by_itself() {
    let mut db = TestDb::migrated_behind(PoolMode::Transaction, 3).await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(
        &db,
        &broker,
        &[("MAX_ATTEMPTS", "60"), ("WORKER_CONCURRENCY", "4")],
    )
    .await;
    let api = spawn_api(&db).await;
    let (events, expected) = shuffled_stream("bounce", 100, 2);
    let first = "user_bounce_0";

    for (id, body) in &events[..100] {
        broker.publish_event(id, body).await;
    }
    eventually(
        Duration::from_secs(30),
        "part of the stream applied",
        || async {
            (scalar(&db.conn, "SELECT count(*) FROM processed_events").await >= 40).then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the api ready", || async {
        (status(&format!("{api}/readyz")).await == 200).then_some(())
    })
    .await;
    db.bouncer().expect("behind PgBouncer").kill();
    for (id, body) in &events[100..] {
        broker.publish_event(id, body).await;
    }
    assert_eq!(status(&format!("{api}/readyz")).await, 503);
    assert_eq!(
        status(&format!("{api}/users/by-clerk-id/{first}")).await,
        503
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.bouncer().expect("behind PgBouncer").restart();

    wait_for_users(&db.conn, &expected, Duration::from_secs(90)).await;
    eventually(Duration::from_secs(60), "every event settled", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == 200
            && broker.total_ready().await == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        broker.count(&broker.topology.dead_queue()).await,
        0,
        "nothing dead-lettered"
    );
    let metrics = worker.metrics().await;
    assert_eq!(metric(&metrics, "dead_lettered"), 0, "{metrics}");
    let settled = metric(&metrics, "applied")
        + metric(&metrics, "skipped_stale")
        + metric(&metrics, "duplicate");
    assert_eq!(settled, 200, "{metrics}");
    // The same api process answers again.
    eventually(Duration::from_secs(15), "the api ready again", || async {
        (status(&format!("{api}/readyz")).await == 200
            && status(&format!("{api}/users/by-clerk-id/{first}")).await == 200)
            .then_some(())
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_starting_together_migrate_through_a_transaction_mode_pgbouncer() {
    let db = TestDb::empty_behind(PoolMode::Transaction, 2).await;
    let settings = settings::database(&|name: &str| match name {
        "DATABASE_URL" => Some(db.service_url()),
        "DATABASE_POOLER" => Some("transaction".into()),
        _ => None,
    })
    .unwrap();

    let (a, b, c) = tokio::join!(
        worker::migrate(&settings, None),
        worker::migrate(&settings, None),
        worker::migrate(&settings, None),
    );

    a.unwrap();
    b.unwrap();
    c.unwrap();
    let applied = scalar(&db.conn, "SELECT count(*) FROM seaql_migrations").await;
    assert_eq!(
        applied,
        i64::try_from(<migration::Migrator as migration::MigratorTrait>::migrations().len())
            .unwrap()
    );
    // On DATABASE_DIRECT_URL when set, whatever DATABASE_URL says.
    let unreachable = settings::database(&|name: &str| match name {
        "DATABASE_URL" => Some("postgres://postgres@127.0.0.1:1/nothing".into()),
        "DATABASE_POOLER" => Some("transaction".into()),
        _ => None,
    })
    .unwrap();
    let direct = settings::DatabaseUrl::new(db.url.clone());
    worker::migrate(&unreachable, Some(&direct)).await.unwrap();
}
