//! clerk-sync's schema as sea-orm-migration migrations. `Migrator` lists them in order; the
//! worker applies them at start ([`up_in_transaction`]), and `cargo run -p migration -- up`
//! applies them by hand, the same way.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_users;
mod m20261123_000002_create_user_calendar_connections;
mod m20261123_000003_create_sync_bookkeeping;
mod m20261123_000004_create_backfill_checkpoints;
mod m20261130_000005_security_review;
mod m20261130_000006_create_reconcile_seen;
mod m20261130_000007_organizations_and_profile;
mod m20261130_000008_console_audit;
mod m20261206_000009_second_review;
mod m20261206_000010_connection_health;
mod m20261214_000011_leases;

/// All migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_users::Migration),
            Box::new(m20261123_000002_create_user_calendar_connections::Migration),
            Box::new(m20261123_000003_create_sync_bookkeeping::Migration),
            Box::new(m20261123_000004_create_backfill_checkpoints::Migration),
            Box::new(m20261130_000005_security_review::Migration),
            Box::new(m20261130_000006_create_reconcile_seen::Migration),
            Box::new(m20261130_000007_organizations_and_profile::Migration),
            Box::new(m20261130_000008_console_audit::Migration),
            Box::new(m20261206_000009_second_review::Migration),
            Box::new(m20261206_000010_connection_health::Migration),
            Box::new(m20261214_000011_leases::Migration),
        ]
    }
}

/// Key of the advisory lock taken around migrations, so that several workers starting at once
/// apply them one after the other. Any constant works; this is "clerksyn".
pub const MIGRATION_LOCK_KEY: i64 = 0x636c_6572_6b73_796e;

/// Takes the migration lock in `txn`: a transaction-scoped advisory lock, released with the
/// transaction whatever happens, on the one server connection the transaction holds (so it works
/// through a transaction-mode pooler, where a session-level lock and its unlock may reach
/// different server connections and leave the lock held).
pub async fn lock_migrations(txn: &sea_orm::DatabaseTransaction) -> Result<(), DbErr> {
    use sea_orm::ConnectionTrait;
    txn.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    ))
    .await?;
    Ok(())
}

/// Applies every pending migration inside `txn`, under the migration lock: all of them commit
/// together with the caller's commit, or none does (each runs in a savepoint of its own). A
/// second process that waited for the lock finds nothing left to apply.
pub async fn up_in_transaction(txn: &sea_orm::DatabaseTransaction) -> Result<(), DbErr> {
    lock_migrations(txn).await?;
    Migrator::up(txn, None).await
}
