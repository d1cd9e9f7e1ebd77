//! Calendar connection health: `status` becomes `connected` | `needs_reconnect` (only the user can
//! fix it) | `unavailable` (nobody could tell lately), `status_reason` a stable code
//! (`grant_revoked`, `missing_refresh_token`, `missing_scopes`, `account_unverified`,
//! `provider_disabled`, `clerk_unavailable`), `status_detail` the words behind it (no token, no
//! personal data), `status_checked_at` when Clerk was last asked (a later answer never loses to
//! an earlier one), `status_changed_at` since when the status holds. Old rows: `token_unavailable`
//! becomes `needs_reconnect` / `grant_revoked`, `not_configured` becomes `unavailable` /
//! `clerk_unavailable`, their old reason kept as the detail. `users.google_calendar_status` and
//! `users.microsoft_calendar_status` (`connected` | `needs_reconnect` | `not_connected`) are what
//! the user body shows, kept beside the flags so that a read stays one row.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE user_calendar_connections \
                   ADD COLUMN IF NOT EXISTS status_detail text, \
                   ADD COLUMN IF NOT EXISTS status_checked_at timestamptz, \
                   ADD COLUMN IF NOT EXISTS status_changed_at timestamptz NOT NULL DEFAULT now(); \
                 UPDATE user_calendar_connections SET status_detail = status_reason, \
                   status_reason = CASE status WHEN 'token_unavailable' THEN 'grant_revoked' \
                     WHEN 'not_configured' THEN 'clerk_unavailable' END, \
                   status = CASE status WHEN 'token_unavailable' THEN 'needs_reconnect' \
                     WHEN 'not_configured' THEN 'unavailable' ELSE status END, \
                   status_changed_at = updated_at, \
                   status_checked_at = updated_at; \
                 CREATE INDEX IF NOT EXISTS user_calendar_connections_checked \
                   ON user_calendar_connections (status_checked_at NULLS FIRST); \
                 CREATE INDEX IF NOT EXISTS user_calendar_connections_status \
                   ON user_calendar_connections (provider, status); \
                 ALTER TABLE users \
                   ADD COLUMN IF NOT EXISTS google_calendar_status text NOT NULL DEFAULT 'not_connected', \
                   ADD COLUMN IF NOT EXISTS microsoft_calendar_status text NOT NULL DEFAULT 'not_connected'; \
                 UPDATE users SET \
                   google_calendar_status = CASE \
                     WHEN google_calendar_connected THEN 'connected' \
                     WHEN EXISTS (SELECT 1 FROM user_calendar_connections c WHERE c.user_id = users.id \
                       AND c.provider = 'google' AND c.status = 'needs_reconnect') THEN 'needs_reconnect' \
                     ELSE 'not_connected' END, \
                   microsoft_calendar_status = CASE \
                     WHEN microsoft_calendar_connected THEN 'connected' \
                     WHEN EXISTS (SELECT 1 FROM user_calendar_connections c WHERE c.user_id = users.id \
                       AND c.provider = 'microsoft' AND c.status = 'needs_reconnect') THEN 'needs_reconnect' \
                     ELSE 'not_connected' END",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE user_calendar_connections SET \
                   status = CASE status WHEN 'needs_reconnect' THEN 'token_unavailable' \
                     WHEN 'unavailable' THEN 'not_configured' ELSE status END, \
                   status_reason = status_detail; \
                 DROP INDEX IF EXISTS user_calendar_connections_checked; \
                 DROP INDEX IF EXISTS user_calendar_connections_status; \
                 ALTER TABLE users DROP COLUMN IF EXISTS google_calendar_status, \
                   DROP COLUMN IF EXISTS microsoft_calendar_status; \
                 ALTER TABLE user_calendar_connections DROP COLUMN IF EXISTS status_detail, \
                   DROP COLUMN IF EXISTS status_checked_at, DROP COLUMN IF EXISTS status_changed_at",
            )
            .await?;
        Ok(())
    }
}
