//! The second security review's schema changes:
//! - `deleted_memberships.clerk_updated_at`: the version of the membership a tombstone ended. A
//!   membership event newer than that is applied (the member is still in Clerk, e.g. after a
//!   deletion made on a listing that had shifted); one at that version or older is not. A
//!   tombstone written before this column existed (null) stays final for every version.
//! - `console_audit.done`: an action is recorded before it is carried out, with `count` the
//!   dead letters selected; `done` is what was carried out, filled in afterwards (null: the
//!   action was cut short before its result could be recorded).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE deleted_memberships ADD COLUMN IF NOT EXISTS clerk_updated_at bigint; \
                 ALTER TABLE console_audit ADD COLUMN IF NOT EXISTS done bigint",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE deleted_memberships DROP COLUMN IF EXISTS clerk_updated_at; \
                 ALTER TABLE console_audit DROP COLUMN IF EXISTS done",
            )
            .await?;
        Ok(())
    }
}
