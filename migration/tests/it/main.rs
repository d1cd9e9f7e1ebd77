//! Migrations against a real, empty Postgres database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use migration::{
    Migrator, MigratorTrait,
    sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement},
};
use testkit::TestDb;

const TABLES: [&str; 13] = [
    "users",
    "user_calendar_connections",
    "processed_events",
    "deleted_users",
    "backfill_checkpoints",
    "calendar_disconnects",
    "reconcile_seen",
    "organizations",
    "organization_memberships",
    "deleted_organizations",
    "deleted_memberships",
    "console_audit",
    "leases",
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

async fn count(db: &DatabaseConnection, table: &str) -> i64 {
    db.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        format!("SELECT count(*) AS n FROM {table}"),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get::<i64>("", "n")
    .unwrap()
}

#[tokio::test]
async fn memberships_are_one_per_user_and_organization_and_go_with_either() {
    let db = TestDb::migrated().await;
    exec(
        &db.conn,
        "INSERT INTO users (id, clerk_user_id, email, clerk_updated_at) VALUES \
           ('00000000-0000-0000-0000-0000000000a1', 'user_a', NULL, 1), \
           ('00000000-0000-0000-0000-0000000000b1', 'user_b', NULL, 1); \
         INSERT INTO organizations (id, clerk_organization_id, name, slug, clerk_updated_at) VALUES \
           ('00000000-0000-0000-0000-0000000000f1', 'org_1', 'One', 'one', 1), \
           ('00000000-0000-0000-0000-0000000000f2', 'org_2', 'Two', 'two', 1)",
    )
    .await
    .unwrap();
    let member = "INSERT INTO organization_memberships \
                  (id, clerk_membership_id, organization_id, clerk_user_id, user_id, role, clerk_updated_at) VALUES";
    let f1 = "'00000000-0000-0000-0000-0000000000f1'";
    let f2 = "'00000000-0000-0000-0000-0000000000f2'";
    let a = "'00000000-0000-0000-0000-0000000000a1'";
    let b = "'00000000-0000-0000-0000-0000000000b1'";
    for values in [
        format!("(gen_random_uuid(), 'orgmem_1', {f1}, 'user_a', {a}, 'org:admin', 1)"),
        format!("(gen_random_uuid(), 'orgmem_2', {f2}, 'user_a', {a}, 'org:member', 1)"),
        format!("(gen_random_uuid(), 'orgmem_3', {f1}, 'user_b', {b}, 'org:member', 1)"),
        // A user whose row does not exist yet: stored by Clerk id, linked later.
        format!("(gen_random_uuid(), 'orgmem_4', {f1}, 'user_later', NULL, 'org:member', 1)"),
    ] {
        exec(&db.conn, &format!("{member} {values}")).await.unwrap();
    }
    assert!(
        exec(
            &db.conn,
            &format!(
                "{member} (gen_random_uuid(), 'orgmem_5', {f1}, 'user_a', {a}, 'org:member', 1)"
            )
        )
        .await
        .is_err(),
        "a second membership of one user in one organization"
    );
    assert!(
        exec(
            &db.conn,
            &format!(
                "{member} (gen_random_uuid(), 'orgmem_1', {f2}, 'user_b', {b}, 'org:member', 1)"
            )
        )
        .await
        .is_err(),
        "a Clerk membership id twice"
    );
    assert!(
        exec(&db.conn, "INSERT INTO organizations (id, clerk_organization_id, name, slug, clerk_updated_at) VALUES (gen_random_uuid(), 'org_3', 'Three', 'one', 1)")
            .await
            .is_err(),
        "a slug twice"
    );
    exec(&db.conn, "DELETE FROM users WHERE clerk_user_id = 'user_b'")
        .await
        .unwrap();
    assert_eq!(
        count(&db.conn, "organization_memberships").await,
        3,
        "the user's go"
    );
    // The waiting membership is linked when its user's row is inserted.
    exec(
        &db.conn,
        "INSERT INTO users (id, clerk_user_id, email, clerk_updated_at) VALUES \
           ('00000000-0000-0000-0000-0000000000c1', 'user_later', NULL, 1)",
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db.conn,
            "organization_memberships WHERE clerk_membership_id = 'orgmem_4' \
             AND user_id = '00000000-0000-0000-0000-0000000000c1'"
        )
        .await,
        1,
        "linked on insert"
    );
    // A deleted user's unlinked memberships go too.
    exec(
        &db.conn,
        &format!(
            "{member} (gen_random_uuid(), 'orgmem_6', {f2}, 'user_gone', NULL, 'org:member', 1)"
        ),
    )
    .await
    .unwrap();
    assert_eq!(count(&db.conn, "organization_memberships").await, 4);
    exec(
        &db.conn,
        "INSERT INTO users (id, clerk_user_id, email, clerk_updated_at) VALUES \
           (gen_random_uuid(), 'user_gone', NULL, 1); \
         UPDATE organization_memberships SET user_id = NULL WHERE clerk_user_id = 'user_gone'; \
         DELETE FROM users WHERE clerk_user_id = 'user_gone'",
    )
    .await
    .unwrap();
    assert_eq!(
        count(&db.conn, "organization_memberships").await,
        3,
        "unlinked, gone too"
    );
    exec(
        &db.conn,
        "DELETE FROM organizations WHERE clerk_organization_id = 'org_1'",
    )
    .await
    .unwrap();
    assert_eq!(
        count(&db.conn, "organization_memberships").await,
        1,
        "the organization's go (orgmem_4 of org_1 with it)"
    );
}

/// Runs the `migration` binary with these settings only.
fn cli(settings: &[(&str, String)], command: &str) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_migration"))
        .arg(command)
        .env_clear()
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn the_cli_migrates_through_a_transaction_mode_pgbouncer_and_prefers_the_direct_url() {
    let db = TestDb::empty_behind(testkit::pgbouncer::PoolMode::Transaction, 2).await;

    // Through the pooler, three at once: one applies, the others find nothing left.
    let settings = db.service_settings();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let settings = settings.clone();
            std::thread::spawn(move || cli(&settings, "up"))
        })
        .collect();
    for run in runs {
        let (ok, output) = run.join().unwrap();
        assert!(ok, "{output}");
    }
    let mut expected: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    expected.sort();
    assert_eq!(tables(&db.conn).await, expected);
    let (ok, output) = cli(&settings, "status");
    assert!(ok, "{output}");

    // DATABASE_DIRECT_URL wins over DATABASE_URL (here a pooler that is not there).
    let (ok, output) = cli(
        &[
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/nothing".into(),
            ),
            ("DATABASE_POOLER", "transaction".into()),
            ("DATABASE_DIRECT_URL", db.url.clone()),
        ],
        "down",
    );
    assert!(ok, "{output}");
    assert_eq!(tables(&db.conn).await.len(), TABLES.len() - 1);
}
