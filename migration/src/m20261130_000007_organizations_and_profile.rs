//! Organizations, memberships and the rest of a user's profile:
//! - `users` gains the profile fields products read besides names and one email. Private and
//!   unsafe metadata columns stay empty unless `SYNC_PRIVATE_METADATA=true`.
//! - `organizations` and `organization_memberships`, versioned by Clerk's `updated_at` like
//!   users. A membership names its user by Clerk id (`clerk_user_id`) and points at the user's
//!   row (`user_id`) once that row exists: a membership that arrives before its user is stored
//!   and linked when the user's event comes, never retried or dead-lettered for it. Its
//!   organization always exists first: every membership event carries the organization, which is
//!   upserted with it. A trigger on `users` links a user's waiting memberships when the row is
//!   inserted (whichever path inserts it: events, batches, backfill, lazy sync) and removes
//!   the memberships of a deleted user, linked or not.
//! - `deleted_organizations` and `deleted_memberships`: tombstones (SHA-256 of the Clerk id, no
//!   personal data) that stop late events from bringing a deleted one back.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE users \
                   ADD COLUMN IF NOT EXISTS username text, \
                   ADD COLUMN IF NOT EXISTS image_url text, \
                   ADD COLUMN IF NOT EXISTS external_id text, \
                   ADD COLUMN IF NOT EXISTS primary_phone_number text, \
                   ADD COLUMN IF NOT EXISTS public_metadata jsonb NOT NULL DEFAULT '{}'::jsonb, \
                   ADD COLUMN IF NOT EXISTS private_metadata jsonb, \
                   ADD COLUMN IF NOT EXISTS unsafe_metadata jsonb, \
                   ADD COLUMN IF NOT EXISTS banned boolean NOT NULL DEFAULT false, \
                   ADD COLUMN IF NOT EXISTS locked boolean NOT NULL DEFAULT false, \
                   ADD COLUMN IF NOT EXISTS last_sign_in_at timestamptz; \
                 CREATE TABLE IF NOT EXISTS organizations ( \
                   id uuid PRIMARY KEY, \
                   clerk_organization_id text NOT NULL UNIQUE, \
                   name text NOT NULL, \
                   slug text UNIQUE, \
                   image_url text, \
                   public_metadata jsonb NOT NULL DEFAULT '{}'::jsonb, \
                   members_count integer, \
                   clerk_updated_at bigint NOT NULL, \
                   clerk_created_at timestamptz, \
                   created_at timestamptz NOT NULL DEFAULT now(), \
                   updated_at timestamptz NOT NULL DEFAULT now()); \
                 CREATE TABLE IF NOT EXISTS organization_memberships ( \
                   id uuid PRIMARY KEY, \
                   clerk_membership_id text NOT NULL UNIQUE, \
                   organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE, \
                   clerk_user_id text NOT NULL, \
                   user_id uuid REFERENCES users (id) ON DELETE CASCADE, \
                   role text NOT NULL, \
                   clerk_updated_at bigint NOT NULL, \
                   clerk_created_at timestamptz, \
                   created_at timestamptz NOT NULL DEFAULT now(), \
                   updated_at timestamptz NOT NULL DEFAULT now(), \
                   UNIQUE (organization_id, clerk_user_id), \
                   UNIQUE (organization_id, user_id)); \
                 CREATE INDEX IF NOT EXISTS organization_memberships_user_id \
                   ON organization_memberships (user_id); \
                 CREATE INDEX IF NOT EXISTS organization_memberships_clerk_user_id \
                   ON organization_memberships (clerk_user_id); \
                 CREATE TABLE IF NOT EXISTS deleted_organizations ( \
                   clerk_organization_id_sha256 text PRIMARY KEY, \
                   deleted_at timestamptz NOT NULL DEFAULT now()); \
                 CREATE TABLE IF NOT EXISTS deleted_memberships ( \
                   clerk_membership_id_sha256 text PRIMARY KEY, \
                   deleted_at timestamptz NOT NULL DEFAULT now()); \
                 CREATE OR REPLACE FUNCTION clerk_sync_link_memberships() RETURNS trigger \
                   LANGUAGE plpgsql AS $$ BEGIN \
                     IF TG_OP = 'INSERT' THEN \
                       UPDATE organization_memberships SET user_id = NEW.id \
                         WHERE clerk_user_id = NEW.clerk_user_id AND user_id IS NULL; \
                       RETURN NEW; \
                     END IF; \
                     DELETE FROM organization_memberships WHERE clerk_user_id = OLD.clerk_user_id; \
                     RETURN OLD; \
                   END $$; \
                 DROP TRIGGER IF EXISTS users_link_memberships ON users; \
                 CREATE TRIGGER users_link_memberships AFTER INSERT OR DELETE ON users \
                   FOR EACH ROW EXECUTE FUNCTION clerk_sync_link_memberships()",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TRIGGER IF EXISTS users_link_memberships ON users; \
                 DROP FUNCTION IF EXISTS clerk_sync_link_memberships(); \
                 DROP TABLE IF EXISTS deleted_memberships; \
                 DROP TABLE IF EXISTS deleted_organizations; \
                 DROP TABLE IF EXISTS organization_memberships; \
                 DROP TABLE IF EXISTS organizations; \
                 ALTER TABLE users \
                   DROP COLUMN IF EXISTS username, DROP COLUMN IF EXISTS image_url, \
                   DROP COLUMN IF EXISTS external_id, DROP COLUMN IF EXISTS primary_phone_number, \
                   DROP COLUMN IF EXISTS public_metadata, DROP COLUMN IF EXISTS private_metadata, \
                   DROP COLUMN IF EXISTS unsafe_metadata, DROP COLUMN IF EXISTS banned, \
                   DROP COLUMN IF EXISTS locked, DROP COLUMN IF EXISTS last_sign_in_at",
            )
            .await?;
        Ok(())
    }
}
