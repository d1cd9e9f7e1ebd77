//! `store::pool` through PgBouncer 1.18 (no prepared-statement support) in transaction mode,
//! with a pool of 2 server connections shared by 3 processes' pools of 4 connections each: every
//! statement, alone or in a transaction, gets its own answer, never another client's prepared
//! statement. The same load through a plain sea-orm pool fails there, which shows that the server
//! connections really are shared.

use std::time::Instant;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DbBackend, DbErr, Statement, TransactionSession,
    TransactionTrait,
};
use store::pool::{Pool, Pooler, connect_database};
use testkit::{
    TestDb,
    pgbouncer::{PgBouncer, PoolMode},
};

const PROCESSES: usize = 3;
const TASKS: i64 = 4;
const ROUNDS: i64 = 40;

/// One round: a statement alone, then three in one transaction, each checking its answer.
async fn round<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    task: i64,
    i: i64,
) -> Result<(), String> {
    let n = task * 1_000 + i;
    let select = |sql: &str, value: i64| {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, [value.into()])
    };
    let alone = db
        .query_one_raw(select(&format!("SELECT $1::bigint + {} AS v", i % 5), n))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    let v: i64 = alone.try_get("", "v").map_err(|e| e.to_string())?;
    if v != n + i % 5 {
        return Err(format!("wrong answer {v} for {n}"));
    }
    let txn = db.begin().await.map_err(|e| e.to_string())?;
    for k in 0..3 {
        let row = txn
            .query_one_raw(select(&format!("SELECT $1::bigint * {} AS v", k + 2), n))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no row")?;
        let v: i64 = row.try_get("", "v").map_err(|e| e.to_string())?;
        if v != n * (k + 2) {
            return Err(format!("wrong answer {v} in a transaction"));
        }
    }
    txn.execute_raw(select("INSERT INTO hits (n) VALUES ($1)", n))
        .await
        .map_err(|e| e.to_string())?;
    txn.commit().await.map_err(|e| e.to_string())
}

/// Runs `ROUNDS` rounds in `TASKS` tasks on each of `pools`; the errors met.
async fn load<C>(pools: Vec<C>) -> Vec<String>
where
    C: ConnectionTrait + TransactionTrait + Clone + Send + Sync + 'static,
{
    let mut tasks = Vec::new();
    for (p, pool) in pools.into_iter().enumerate() {
        for t in 0..TASKS {
            let pool = pool.clone();
            let task = p as i64 * TASKS + t;
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                for i in 0..ROUNDS {
                    if let Err(e) = round(&pool, task, i).await {
                        errors.push(e);
                    }
                }
                errors
            }));
        }
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.unwrap());
    }
    errors
}

async fn hits(db: &TestDb) -> i64 {
    db.conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM hits",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "n")
        .unwrap()
}

async fn with_hits_table(mode: PoolMode) -> (TestDb, PgBouncer) {
    let db = TestDb::migrated().await;
    db.conn
        .execute_unprepared("CREATE TABLE hits (n bigint NOT NULL)")
        .await
        .unwrap();
    (db, PgBouncer::start(mode, 2))
}

#[tokio::test]
async fn every_statement_gets_its_own_answer_through_a_transaction_mode_pgbouncer() {
    let (db, bouncer) = with_hits_table(PoolMode::Transaction).await;
    let url = bouncer.url(&db.name);
    let mut pools = Vec::new();
    for _ in 0..PROCESSES {
        pools.push(
            connect_database(&url, 4, Pooler::Transaction)
                .await
                .unwrap(),
        );
    }

    let started = Instant::now();
    let errors = load(pools.clone()).await;

    assert!(
        errors.is_empty(),
        "{} of {} rounds failed, e.g. {:?}",
        errors.len(),
        PROCESSES as i64 * TASKS * ROUNDS,
        &errors[..errors.len().min(3)]
    );
    assert_eq!(hits(&db).await, PROCESSES as i64 * TASKS * ROUNDS);
    eprintln!(
        "{} rounds in {:?}",
        PROCESSES as i64 * TASKS * ROUNDS,
        started.elapsed()
    );
    for pool in pools {
        pool.close().await.unwrap();
    }
}

#[tokio::test]
async fn without_it_the_same_load_fails_there_so_the_server_connections_are_really_shared() {
    let (db, bouncer) = with_hits_table(PoolMode::Transaction).await;
    let mut pools = Vec::new();
    for _ in 0..PROCESSES {
        let mut options = ConnectOptions::new(bouncer.url(&db.name));
        options.max_connections(4).sqlx_logging(false);
        pools.push(Database::connect(options).await.unwrap());
    }

    let errors = load(pools).await;

    assert!(
        errors.iter().any(|e| e.contains("prepared statement")),
        "a plain sea-orm pool went through unscathed: the test does not share server connections ({} errors: {:?})",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
}

#[tokio::test]
async fn session_mode_keeps_prepared_statements_and_needs_no_startup_parameter_ignored() {
    let db = TestDb::migrated().await;
    db.conn
        .execute_unprepared("CREATE TABLE hits (n bigint NOT NULL)")
        .await
        .unwrap();
    // A session-mode PgBouncer that, unlike most deployments, does not ignore
    // extra_float_digits: clerk-sync does not send it behind a pooler.
    let bouncer = PgBouncer::start_with(PoolMode::Session, 20, "");
    let pool = connect_database(&bouncer.url(&db.name), 4, Pooler::Session)
        .await
        .unwrap();

    let errors = load(vec![pool.clone()]).await;

    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits(&db).await, TASKS * ROUNDS);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn a_transaction_with_an_isolation_level_works_through_a_transaction_mode_pgbouncer() {
    let (db, bouncer) = with_hits_table(PoolMode::Transaction).await;
    let pools: Vec<Pool> = vec![
        connect_database(&bouncer.url(&db.name), 2, Pooler::Transaction)
            .await
            .unwrap(),
        connect_database(&bouncer.url(&db.name), 2, Pooler::Transaction)
            .await
            .unwrap(),
    ];
    // Leave named statements on both server connections first.
    assert!(load(pools.clone()).await.is_empty());

    for pool in &pools {
        let txn = pool
            .begin_with_config(Some(sea_orm::IsolationLevel::RepeatableRead), None)
            .await
            .unwrap();
        let row = txn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT current_setting('transaction_isolation') AS level",
            ))
            .await
            .unwrap()
            .unwrap();
        let level: String = row.try_get("", "level").unwrap();
        assert_eq!(level, "repeatable read");
        txn.commit().await.unwrap();
        let result: Result<(), sea_orm::TransactionError<DbErr>> = pool
            .transaction(|txn| {
                Box::pin(async move {
                    txn.execute_unprepared("INSERT INTO hits VALUES (1)")
                        .await?;
                    Ok(())
                })
            })
            .await;
        result.unwrap();
    }
}
