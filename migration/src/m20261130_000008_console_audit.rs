//! `console_audit`: every action and every reveal of personal data done through the operator's
//! console (`/console` on the worker's ops listener): who (console user name and role), what
//! (`replay`, `replay_matching`, `drop`, `reveal`), on which target (a Svix id or a filter), how
//! many dead letters it touched, and when. Rows are only ever inserted.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS console_audit ( \
                   id bigserial PRIMARY KEY, \
                   at timestamptz NOT NULL DEFAULT now(), \
                   actor text NOT NULL, \
                   role text NOT NULL, \
                   action text NOT NULL, \
                   target text NOT NULL, \
                   count bigint NOT NULL DEFAULT 0 \
                 ); \
                 CREATE INDEX IF NOT EXISTS console_audit_at ON console_audit (at DESC)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS console_audit")
            .await?;
        Ok(())
    }
}
