//! `leases`: named leases that let one process at a time run a job, with the time of the job's
//! last completed run (the scheduled reconcile runs once per `RECONCILE_INTERVAL` across every
//! worker). A row per job: `holder` is the process holding it (null when free), `expires_at`
//! when its claim lapses unless renewed (a holder that dies frees it by itself). They replace
//! session-level advisory locks, which a transaction-mode pooler cannot keep (an unlock can reach
//! another server connection than the lock and leave it held).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS leases ( \
                   name text PRIMARY KEY, \
                   holder uuid, \
                   expires_at timestamptz, \
                   started_at timestamptz, \
                   last_run_at timestamptz, \
                   last_finished_at timestamptz, \
                   runs bigint NOT NULL DEFAULT 0)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS leases")
            .await?;
        Ok(())
    }
}
