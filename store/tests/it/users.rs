//! `store::users::by_clerk_id` against real Postgres: what it reads equals the stored row in
//! every pooler mode, and the connections it keeps between reads survive a cancelled read and
//! let the pool close.

use std::time::Duration;

use entity::users;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
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
