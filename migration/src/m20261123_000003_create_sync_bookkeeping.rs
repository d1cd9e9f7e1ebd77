//! What the worker's idempotency needs:
//! - `processed_events`: the Svix message ids already applied (duplicates are acked without
//!   effect); pruned after a retention period, since Svix stops retrying after about 28 hours.
//! - `deleted_users`: tombstones that stop a late event from bringing a deleted user back. They
//!   hold no personal data: only a SHA-256 of the Clerk user id and the time of deletion.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ProcessedEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ProcessedEvents::SvixId)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ProcessedEvents::EventType).text().not_null())
                    .col(
                        ColumnDef::new(ProcessedEvents::ProcessedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_processed_events_processed_at")
                    .table(ProcessedEvents::Table)
                    .col(ProcessedEvents::ProcessedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeletedUsers::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(DeletedUsers::ClerkUserIdSha256)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(DeletedUsers::DeletedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(DeletedUsers::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(ProcessedEvents::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ProcessedEvents {
    Table,
    SvixId,
    EventType,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum DeletedUsers {
    Table,
    ClerkUserIdSha256,
    DeletedAt,
}
