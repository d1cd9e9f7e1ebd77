//! `store::users::by_clerk_id` against real Postgres: what it reads equals the stored row in
//! every pooler mode, the connections it keeps between reads survive a cancelled read and let
//! the pool close, and reads that arrive while its statements are busy are answered together.

use std::{collections::HashMap, time::Duration};

use entity::users;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, TransactionTrait};
use store::{
    pool::{Pooler, connect_database},
    users::{UserRow, by_clerk_id},
};
use testkit::TestDb;

async fn with_users() -> TestDb {
    let db = TestDb::migrated().await;
    db.conn
        .execute_unprepared(
            "INSERT INTO users (id, clerk_user_id, email, first_name, last_name, \
               microsoft_calendar_connected, google_calendar_connected, google_calendar_status, \
               clerk_updated_at, clerk_version_tiebreak, clerk_created_at, username, image_url, \
               external_id, primary_phone_number, public_metadata, private_metadata, banned, \
               locked, last_sign_in_at) \
             VALUES (gen_random_uuid(), 'user_full', 'full@example.test', 'Full', NULL, \
               false, true, 'connected', 1700000000000, '', now() - interval '3 days', 'full', \
               'https://img.example/full', 'ext-1', '+15550100', '{\"plan\": \"pro\", \"n\": [1, 2]}', \
               '{\"secret\": true}', false, true, now() - interval '1 hour'), \
               (gen_random_uuid(), 'user_bare', NULL, NULL, NULL, false, false, 'not_connected', \
               1, '', NULL, NULL, NULL, NULL, NULL, '{}', NULL, true, false, NULL)",
        )
        .await
        .unwrap();
    db
}

/// The row as sea-orm's model reads it, in the shape `by_clerk_id` returns.
async fn stored(db: &TestDb, clerk_user_id: &str) -> UserRow {
    let m = users::Entity::find()
        .filter(users::Column::ClerkUserId.eq(clerk_user_id))
        .one(&db.conn)
        .await
        .unwrap()
        .unwrap();
    UserRow::from(m)
}

#[tokio::test]
async fn a_user_read_by_clerk_id_equals_the_stored_row_in_every_pooler_mode() {
    let db = with_users().await;
    for pooler in [Pooler::None, Pooler::Session, Pooler::Transaction] {
        let pool = connect_database(&db.url, 4, pooler).await.unwrap();
        for id in ["user_full", "user_bare"] {
            // Twice: the second read runs on the connection the first one kept.
            for _ in 0..2 {
                let read = by_clerk_id(&pool, id).await.unwrap();
                assert_eq!(read, Some(stored(&db, id).await), "{id}, {pooler:?}");
            }
        }
        assert_eq!(by_clerk_id(&pool, "user_none").await.unwrap(), None);
        pool.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_read_cancelled_half_way_leaves_no_connection_behind_and_the_pool_still_closes() {
    let db = with_users().await;
    let pool = connect_database(&db.url, 3, Pooler::None).await.unwrap();
    assert!(by_clerk_id(&pool, "user_full").await.unwrap().is_some());
    // A read dropped while Postgres still works on it (its request went away).
    let slow = pool.fetch_optional("SELECT pg_sleep(2)::text WHERE $1 <> ''", "x", |row| {
        sea_orm::sqlx::Row::try_get::<String, _>(row, 0)
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(100), slow)
            .await
            .is_err()
    );
    // Every later read gets its own answer (the pool keeps one connection: the cancelled one
    // went back to sqlx, which settles or closes it).
    for _ in 0..5 {
        let read = by_clerk_id(&pool, "user_bare").await.unwrap().unwrap();
        assert_eq!(read.clerk_user_id, "user_bare");
    }
    tokio::time::timeout(Duration::from_secs(10), pool.close())
        .await
        .expect("the pool closes with kept connections")
        .unwrap();
}

/// Backends of the test's database waiting for a lock on `users` while running a statement
/// whose text ends with `tail`.
async fn waiting(db: &TestDb, tail: &str) -> i64 {
    let row = db
        .conn
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
               AND wait_event_type = 'Lock' AND query LIKE 'SELECT id, clerk_user_id,%' \
               AND right(query, length($1)) = $1",
            [tail.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index(0).unwrap()
}

/// Waits until exactly `n` backends wait with a statement ending in `tail`, and stay so.
async fn wait_for_waiting(db: &TestDb, tail: &str, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while waiting(db, tail).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} statements ending {tail:?} waiting, found {}",
            waiting(db, tail).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(waiting(db, tail).await, n, "statements ending {tail:?}");
}

const ONE: &str = "= $1 LIMIT 1";
const MANY: &str = "= ANY($1)";

/// Holds `users` locked, starts `4 + queued` reads, and checks that 4 statements (half the 8
/// connections a pool of 10 keeps for reads) carry the first 4 reads while the others wait
/// without a connection. Then it lets the 4 finish while a second lock holds the table again,
/// and checks the queued reads wait in `statements` statements, each for many ids. With
/// `cancel`, those are cancelled. Returns every read's key and result.
async fn coalesced_reads(
    db: &TestDb,
    queued: usize,
    statements: i64,
    cancel: bool,
) -> Vec<(String, Result<Option<UserRow>, DbErr>)> {
    let pool = connect_database(&db.url, 10, Pooler::None).await.unwrap();
    // Four connections opened and the single-id statement prepared on each, ahead: a read on a
    // fresh connection would wait for the lock in `Parse`, then again behind the second lock
    // below in `Execute`. Four reads held by a lock at once run on four connections.
    let warming = db.conn.begin().await.unwrap();
    warming
        .execute_unprepared("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let warm: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { by_clerk_id(&pool, "user_full").await.unwrap() })
        })
        .collect();
    wait_for_waiting(db, ONE, 4).await;
    warming.commit().await.unwrap();
    for read in warm {
        read.await.unwrap();
    }

    let first = db.conn.begin().await.unwrap();
    first
        .execute_unprepared("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let keys = [
        "user_full",
        "user_bare",
        "user_none",
        "a\"b\\c,{d}'",
        "user_full",
    ];
    let read = |key: String| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let result = by_clerk_id(&pool, &key).await;
            (key, result)
        })
    };
    let mut reads: Vec<_> = (0..4).map(|i| read(keys[i].to_owned())).collect();
    wait_for_waiting(db, ONE, 4).await;
    reads.extend((0..queued).map(|i| read(keys[i % keys.len()].to_owned())));
    // None of the queued reads took a connection of its own.
    wait_for_waiting(db, ONE, 4).await;
    assert_eq!(waiting(db, MANY).await, 0);

    // A second lock queues behind the first; the 4 statements go first, the queued reads'
    // statements wait behind it.
    let (locked, is_locked) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let conn = db.conn.clone();
    let second = tokio::spawn(async move {
        let txn = conn.begin().await.unwrap();
        txn.execute_unprepared("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        locked.send(()).unwrap();
        released.await.unwrap();
        txn.commit().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.commit().await.unwrap();
    is_locked.await.unwrap();
    wait_for_waiting(db, MANY, statements).await;
    assert_eq!(waiting(db, ONE).await, 0);
    if cancel {
        db.conn
            .execute_unprepared(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE '%= ANY($1)'",
            )
            .await
            .unwrap();
    }
    release.send(()).unwrap();
    second.await.unwrap();
    let mut results = Vec::new();
    for read in reads {
        results.push(read.await.unwrap());
    }
    // Later reads are answered as usual.
    assert!(by_clerk_id(&pool, "user_bare").await.unwrap().is_some());
    pool.close().await.unwrap();
    results
}

#[tokio::test]
async fn reads_queued_behind_busy_statements_are_answered_together_each_with_its_own_row() {
    let db = with_users().await;
    let expected: HashMap<&str, Option<UserRow>> = HashMap::from([
        ("user_full", Some(stored(&db, "user_full").await)),
        ("user_bare", Some(stored(&db, "user_bare").await)),
        ("user_none", None),
        ("a\"b\\c,{d}'", None),
    ]);
    // 96 queued reads: one statement for the first 64 ids, one for the other 32.
    let results = coalesced_reads(&db, 96, 2, false).await;
    assert_eq!(results.len(), 100);
    for (key, result) in results {
        assert_eq!(result.unwrap(), expected[key.as_str()], "{key}");
    }
    // A key Postgres's text cannot hold matches no row (and fails no statement).
    let pool = connect_database(&db.url, 10, Pooler::None).await.unwrap();
    assert_eq!(by_clerk_id(&pool, "user_\0full").await.unwrap(), None);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_statement_fails_every_read_it_carried_and_no_other() {
    let db = with_users().await;
    let results = coalesced_reads(&db, 10, 1, true).await;
    let (failed, answered): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, r)| r.is_err());
    // The 4 reads that ran first were answered; the 10 in the cancelled statement failed, each
    // with Postgres's error for it.
    assert_eq!((answered.len(), failed.len()), (4, 10));
    for (key, result) in failed {
        let Err(error) = result else { unreachable!() };
        assert!(matches!(error, DbErr::Query(_)), "{key}: {error:?}");
        assert!(
            error
                .to_string()
                .contains("canceling statement due to user request"),
            "{key}: {error}"
        );
    }
}
