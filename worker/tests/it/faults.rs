//! Faults injected without touching the machine's shared servers: Postgres and RabbitMQ are cut
//! through TCP proxies the tests control, and the worker process is killed with SIGKILL.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use testkit::{TestBroker, TestDb, amqp_url, eventually, proxy::TcpProxy};

use crate::helpers::{
    Row, UserEvent, row, scalar, spawn_worker, spawn_worker_at, users, wait_for_count,
    wait_for_users, worker_settings,
};

/// (svix id, body) pairs.
type Events = Vec<(String, Vec<u8>)>;

/// `versions` events per user (created, then updates), and the final state the model expects.
fn stream(prefix: &str, user_count: usize, versions: i64) -> (Events, BTreeMap<String, Row>) {
    let mut out = Vec::new();
    let mut expected = BTreeMap::new();
    for v in 1..=versions {
        for u in 0..user_count {
            let id = format!("user_{prefix}_{u}");
            let email = format!("{prefix}{u}-v{v}@example.com");
            let kind = if v == 1 {
                "user.created"
            } else {
                "user.updated"
            };
            let first = format!("V{v}");
            let body = UserEvent::new(kind, &id, Some(&email), &first, v * 10).body();
            out.push((format!("msg_{prefix}_{u}_{v}"), body));
            expected.insert(id, row(Some(&email), &first, v * 10));
        }
    }
    (out, expected)
}

fn host_port(url: &str) -> String {
    let after_at = url.rsplit('@').next().unwrap();
    let after_scheme = after_at.split("://").last().unwrap();
    after_scheme.split('/').next().unwrap().to_owned()
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
async fn a_database_cut_for_ten_seconds_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let proxy = TcpProxy::start(&host_port(&testkit::postgres_root())).await;
    let via_proxy = format!("postgres://postgres@{}/{}", proxy.addr(), db.name);
    let worker = spawn_worker_at(
        &via_proxy,
        &broker,
        &[("MAX_ATTEMPTS", "60"), ("WORKER_CONCURRENCY", "4")],
    )
    .await;
    let (events, expected) = stream("dbcut", 250, 2);
    assert_eq!(events.len(), 500);

    for (id, body) in &events[..250] {
        broker.publish_event(id, body).await;
    }
    eventually(
        Duration::from_secs(30),
        "part of the stream applied",
        || async {
            (scalar(&db.conn, "SELECT count(*) FROM processed_events").await >= 100).then_some(())
        },
    )
    .await;
    proxy.cut();
    for (id, body) in &events[250..] {
        broker.publish_event(id, body).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.restore();

    wait_for_users(&db.conn, &expected, Duration::from_secs(90)).await;
    eventually(Duration::from_secs(60), "every event settled", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == 500
            && broker.total_ready().await == 0)
            .then_some(())
    })
    .await;
    let metrics = worker.metrics().await;
    assert_eq!(
        broker.count(&broker.topology.dead_queue()).await,
        0,
        "nothing dead-lettered"
    );
    assert_eq!(metric(&metrics, "dead_lettered"), 0, "{metrics}");
    assert!(
        metric(&metrics, "retried") > 0,
        "the outage was noticed: {metrics}"
    );
    // Each event settled exactly once; a commit whose reply was lost in the cut shows up as a
    // detected duplicate, never as a second apply.
    let settled = metric(&metrics, "applied")
        + metric(&metrics, "skipped_stale")
        + metric(&metrics, "duplicate");
    assert_eq!(settled, 500, "{metrics}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_and_restored_is_survived_by_the_same_worker_process() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let proxy = TcpProxy::start(&host_port(&amqp_url())).await;
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let worker = spawn_worker(&db, &broker, &[("AMQP_URL", &via_proxy)]).await;
    let (events, expected) = stream("mqcut", 20, 2);
    for (id, body) in &events[..20] {
        broker.publish_event(id, body).await;
    }
    eventually(
        Duration::from_secs(20),
        "the first half applied",
        || async {
            (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == 20).then_some(())
        },
    )
    .await;

    proxy.cut();
    eventually(Duration::from_secs(10), "readyz to fail", || async {
        let r = reqwest::get(format!("http://127.0.0.1:{}/readyz", worker.port))
            .await
            .ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    for (id, body) in &events[20..] {
        broker.publish_event(id, body).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM processed_events").await,
        20
    );
    proxy.restore();

    wait_for_users(&db.conn, &expected, Duration::from_secs(60)).await;
    let r = reqwest::get(format!("http://127.0.0.1:{}/readyz", worker.port))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    worker.stop().await;
}

/// Users (three events each) of the SIGKILL test.
const KILL_USERS: usize = 500;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker_process(db: &TestDb, broker: &TestBroker) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_worker"))
            .arg("run")
            .env_clear()
            .envs(worker_settings(
                db,
                broker,
                &[("WORKER_CONCURRENCY", "4"), ("LOG_FORMAT", "json")],
            ))
            .env("RUST_LOG", "warn")
            // Piped: at warn a worker writes a few lines, far less than a pipe holds.
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_mid_stream_is_finished_by_a_restarted_one() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    // Enough events that the worker is still busy when it is killed: a worker that batches
    // applies a few hundred in a blink.
    let (mut events, expected) = stream("kill", KILL_USERS, 3);
    let total = events.len() as i64;
    events.shuffle(&mut StdRng::seed_from_u64(7));
    for (id, body) in &events {
        broker.publish_event(id, body).await;
    }
    let mut first = start_worker_process(&db, &broker);
    eventually(
        Duration::from_secs(30),
        "the first worker under way",
        || async {
            (scalar(&db.conn, "SELECT count(*) FROM processed_events").await >= 30).then_some(())
        },
    )
    .await;

    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    let done_before = scalar(&db.conn, "SELECT count(*) FROM processed_events").await;
    assert!(
        done_before < total,
        "killed too late to test anything ({done_before} done)"
    );
    let _second = start_worker_process(&db, &broker);

    wait_for_users(&db.conn, &expected, Duration::from_secs(60)).await;
    eventually(Duration::from_secs(30), "every event settled", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == total
            && broker.total_ready().await == 0)
            .then_some(())
    })
    .await;
    assert_eq!(users(&db.conn).await, expected);
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_worker_finish_its_in_flight_events_and_exit_0_and_nothing_is_lost() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let (events, expected) = stream("term", 100, 3);
    for (id, body) in &events {
        broker.publish_event(id, body).await;
    }
    let mut first = start_worker_process(&db, &broker);
    eventually(Duration::from_secs(30), "the worker under way", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await >= 30).then_some(())
    })
    .await;

    assert!(testkit::process::send(
        first.0.id(),
        testkit::process::Signal::Term
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = first.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    // A clean stop logs no error (lapin used to report the channels' close racing the
    // connection's as "ERROR Connection error").
    let log = testkit::child_output(&mut first.0);
    assert!(!log.contains("\"ERROR\""), "{log}");
    // Every event is either applied or back in the queue: none is held or lost.
    let applied = scalar(&db.conn, "SELECT count(*) FROM processed_events").await;
    let queue = broker.topology.main_queue();
    wait_for_count(&broker, &queue, u32::try_from(300 - applied).unwrap()).await;

    let _second = start_worker_process(&db, &broker);
    wait_for_users(&db.conn, &expected, Duration::from_secs(60)).await;
}
