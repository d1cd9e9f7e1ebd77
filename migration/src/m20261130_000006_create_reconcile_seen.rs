//! `reconcile_seen`: the Clerk user ids a `worker reconcile` run has read from Clerk so far, so
//! that a run interrupted mid-scan resumes without forgetting them (its page offset is kept in
//! `backfill_checkpoints` under the name `reconcile`). Emptied when a run starts afresh.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS reconcile_seen (clerk_user_id text PRIMARY KEY)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS reconcile_seen")
            .await?;
        Ok(())
    }
}
