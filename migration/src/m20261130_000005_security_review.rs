//! What the security review's fixes store:
//! - `user_calendar_connections.token_format`: how a token was sealed. Rows written before this
//!   migration hold values without associated data (`1`, legacy); new values are bound to their
//!   row and column (`2`). Legacy values are never served; `worker rotate-token-key` re-seals them.
//! - `calendar_disconnects`: a user's choice to disconnect a provider's calendar, which later
//!   events from Clerk must respect (per user and provider, until the user connects again or an
//!   account of that provider is added in Clerk after the choice).
//! - `users.clerk_version_tiebreak`: orders two different states with the same Clerk
//!   `updated_at` the same way whatever the arrival order (the event's timestamp, then its Svix
//!   id); byte order (`COLLATE "C"`), so that every server sorts it alike.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE user_calendar_connections \
               ADD COLUMN IF NOT EXISTS token_format smallint NOT NULL DEFAULT 1; \
             ALTER TABLE user_calendar_connections ALTER COLUMN token_format SET DEFAULT 2; \
             CREATE TABLE IF NOT EXISTS calendar_disconnects ( \
               user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE, \
               provider text NOT NULL CHECK (provider IN ('google', 'microsoft')), \
               disconnected_at timestamptz NOT NULL DEFAULT now(), \
               PRIMARY KEY (user_id, provider)); \
             ALTER TABLE users \
               ADD COLUMN IF NOT EXISTS clerk_version_tiebreak text COLLATE \"C\" NOT NULL DEFAULT ''",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE users DROP COLUMN IF EXISTS clerk_version_tiebreak; \
             DROP TABLE IF EXISTS calendar_disconnects; \
             ALTER TABLE user_calendar_connections DROP COLUMN IF EXISTS token_format",
        )
        .await?;
        Ok(())
    }
}
