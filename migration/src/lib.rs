//! clerk-sync's schema as sea-orm-migration migrations. `Migrator` lists them in order; the
//! worker applies them at start under a Postgres advisory lock, and `cargo run -p migration -- up`
//! applies them by hand.

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
        ]
    }
}

/// Key of the session-level advisory lock taken around migrations, so that several workers
/// starting at once apply them one after the other. Any constant works; this is "clerksyn".
pub const MIGRATION_LOCK_KEY: i64 = 0x636c_6572_6b73_796e;
