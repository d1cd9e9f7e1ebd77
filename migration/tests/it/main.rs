//! Migrations against a real, empty Postgres database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use migration::{
    Migrator, MigratorTrait,
    sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement},
};
use testkit::TestDb;

const TABLES: [&str; 7] = [
    "users",
    "user_calendar_connections",
    "processed_events",
    "deleted_users",
    "backfill_checkpoints",
    "calendar_disconnects",
    "reconcile_seen",
];

async fn tables(db: &DatabaseConnection) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name <> 'seaql_migrations' ORDER BY 1",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|row| row.try_get::<String>("", "name").unwrap())
    .collect()
}

async fn exec(db: &DatabaseConnection, sql: &str) -> Result<u64, migration::DbErr> {
    db.execute_unprepared(sql).await.map(|r| r.rows_affected())
}

#[tokio::test]
async fn migrations_go_up_down_and_up_again_on_an_empty_database() {
    let db = TestDb::empty().await;
    let mut expected: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    expected.sort();

    Migrator::up(&db.conn, None).await.unwrap();
    assert_eq!(tables(&db.conn).await, expected);
    Migrator::down(&db.conn, None).await.unwrap();
    assert!(
        tables(&db.conn).await.is_empty(),
        "every down removes its tables"
    );
    Migrator::up(&db.conn, None).await.unwrap();
    assert_eq!(tables(&db.conn).await, expected);
    assert!(
        Migrator::get_pending_migrations(&db.conn)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_schema_enforces_the_contract() {
    let db = TestDb::migrated().await;
    let user = "INSERT INTO users (id, clerk_user_id, email, clerk_updated_at) VALUES";
    // Several users without email are fine; the same email twice is not, nor the same Clerk id.
    exec(
        &db.conn,
        &format!("{user} (gen_random_uuid(), 'user_a', NULL, 1)"),
    )
    .await
    .unwrap();
    exec(
        &db.conn,
        &format!("{user} (gen_random_uuid(), 'user_b', NULL, 1)"),
    )
    .await
    .unwrap();
    exec(
        &db.conn,
        &format!("{user} ('00000000-0000-0000-0000-000000000001', 'user_c', 'c@example.com', 1)"),
    )
    .await
    .unwrap();
    assert!(
        exec(
            &db.conn,
            &format!("{user} (gen_random_uuid(), 'user_d', 'c@example.com', 1)")
        )
        .await
        .is_err()
    );
    assert!(
        exec(
            &db.conn,
            &format!("{user} (gen_random_uuid(), 'user_a', NULL, 1)")
        )
        .await
        .is_err()
    );
    // Connections: provider is google or microsoft, and they go with their user.
    let connection = "INSERT INTO user_calendar_connections (id, user_id, provider, external_account_id, provider_user_id) VALUES";
    assert!(
        exec(&db.conn, &format!("{connection} (gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'github', 'eac', '1')"))
            .await
            .is_err()
    );
    exec(&db.conn, &format!("{connection} (gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'google', 'eac', '1')"))
        .await
        .unwrap();
    exec(&db.conn, "DELETE FROM users WHERE clerk_user_id = 'user_c'")
        .await
        .unwrap();
    let left = db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM user_calendar_connections",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(left, 0, "ON DELETE CASCADE");
}
