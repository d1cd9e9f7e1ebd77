//! `store::lease` through a transaction-mode PgBouncer: one holder at a time, never left held,
//! and a schedule that runs once per interval across processes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use store::{
    lease::{Lease, Run, Schedule},
    pool::{Pool, Pooler, connect_database},
};
use testkit::{TestDb, pgbouncer::PoolMode};

async fn processes(db: &TestDb, n: usize) -> Vec<Pool> {
    let mut pools = Vec::new();
    for _ in 0..n {
        pools.push(
            connect_database(&db.service_url(), 3, db.pooler())
                .await
                .unwrap(),
        );
    }
    pools
}

/// The lease row: (holder set, completed runs).
async fn row(db: &TestDb, name: &str) -> (bool, i64) {
    let row = db
        .conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT holder IS NOT NULL AS held, runs FROM leases WHERE name = $1",
            [name.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    (
        row.try_get("", "held").unwrap(),
        row.try_get("", "runs").unwrap(),
    )
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_lease_whose_holder_died_lapses() {
    let db = TestDb::migrated_behind(PoolMode::Transaction, 2).await;
    assert_eq!(db.pooler(), Pooler::Transaction);
    let pools = processes(&db, 2).await;
    let ttl = Duration::from_millis(600);

    let held = Lease::try_acquire(&pools[0], "job", ttl, None)
        .await
        .unwrap()
        .expect("free at first");
    assert!(
        Lease::try_acquire(&pools[1], "job", ttl, None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(held.renew(&pools[0]).await.unwrap());
    held.release(&pools[0], true).await.unwrap();
    assert_eq!(row(&db, "job").await, (false, 1));

    // A holder that dies never gives it back: the lease lapses after its time to live.
    let dead = Lease::try_acquire(&pools[1], "job", ttl, None)
        .await
        .unwrap()
        .expect("released");
    drop(dead);
    assert!(
        Lease::try_acquire(&pools[0], "job", ttl, None)
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let taken = Lease::try_acquire(&pools[0], "job", ttl, None)
        .await
        .unwrap()
        .expect("lapsed");
    // The dead holder's renewal and release no longer touch it.
    let ghost = Lease::try_acquire(&pools[1], "other", ttl, None)
        .await
        .unwrap()
        .unwrap();
    assert!(ghost.renew(&pools[1]).await.unwrap());
    taken.release(&pools[0], false).await.unwrap();
    assert_eq!(row(&db, "job").await, (false, 1));
}

/// A job running: counted out when dropped.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_schedule_runs_once_per_interval_across_processes_and_is_never_left_held() {
    let db = TestDb::migrated_behind(PoolMode::Transaction, 2).await;
    let pools = processes(&db, 3).await;
    let every = Duration::from_millis(500);
    let runs = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let tasks: Vec<_> = pools
        .iter()
        .cloned()
        .map(|pool| {
            let (runs, running, overlaps) = (runs.clone(), running.clone(), overlaps.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let schedule = Schedule::new("tick", every).with_ttl(Duration::from_secs(3));
                schedule
                    .run_until_stopped(
                        &pool,
                        || {
                            let (runs, running, overlaps) =
                                (runs.clone(), running.clone(), overlaps.clone());
                            async move {
                                if running.fetch_add(1, Ordering::SeqCst) > 0 {
                                    overlaps.fetch_add(1, Ordering::SeqCst);
                                }
                                // Counted out even when the run is stopped midway.
                                let _running = Running(running);
                                tokio::time::sleep(Duration::from_millis(150)).await;
                                runs.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                        |turn| assert!(turn.is_ok(), "{turn:?}"),
                        async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        },
                    )
                    .await;
            })
        })
        .collect();
    // The schedule starts when first seen: runs at about 0.5, 1.0, … 3.0 s.
    tokio::time::sleep(Duration::from_millis(3_250)).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }

    let runs = runs.load(Ordering::SeqCst);
    assert!((5..=7).contains(&runs), "{runs} runs in 6.5 intervals");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two runs at once");
    let (held, counted) = row(&db, "tick").await;
    assert!(!held, "the lease was left held");
    assert_eq!(counted, runs as i64);
}

#[tokio::test]
async fn a_run_stopped_midway_gives_the_lease_back_and_is_due_again_at_once() {
    let db = TestDb::migrated_behind(PoolMode::Transaction, 2).await;
    let pools = processes(&db, 2).await;
    let schedule = Schedule::new("long", Duration::from_millis(200));
    // Seen once: due one interval later.
    let first = schedule
        .run_if_due(&pools[0], async {}, std::future::pending())
        .await
        .unwrap();
    assert_eq!(first, Run::NotDue);
    tokio::time::sleep(Duration::from_millis(250)).await;

    let stopped = schedule
        .run_if_due(
            &pools[0],
            tokio::time::sleep(Duration::from_secs(60)),
            tokio::time::sleep(Duration::from_millis(100)),
        )
        .await
        .unwrap();

    assert_eq!(stopped, Run::Stopped);
    assert_eq!(row(&db, "long").await, (false, 0));
    let next = schedule
        .run_if_due(&pools[1], async { 7 }, std::future::pending())
        .await
        .unwrap();
    assert_eq!(next, Run::Done(7));
    let again = schedule
        .run_if_due(&pools[0], async { 8 }, std::future::pending())
        .await
        .unwrap();
    assert_eq!(again, Run::NotDue);
}

#[tokio::test]
async fn a_running_job_makes_the_others_busy_and_keeps_its_lease_past_the_ttl() {
    let db = TestDb::migrated_behind(PoolMode::Transaction, 2).await;
    let pools = processes(&db, 2).await;
    let schedule =
        Schedule::new("slow", Duration::from_millis(100)).with_ttl(Duration::from_millis(300));
    let _ = schedule
        .run_if_due(&pools[0], async {}, std::future::pending())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;

    let (a, b) = tokio::join!(
        schedule.run_if_due(
            &pools[0],
            tokio::time::sleep(Duration::from_millis(900)),
            std::future::pending()
        ),
        async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            schedule
                .run_if_due(&pools[1], async {}, std::future::pending())
                .await
        },
    );

    assert_eq!(a.unwrap(), Run::Done(()), "renewed past its 300 ms ttl");
    assert_eq!(b.unwrap(), Run::Busy);
}
