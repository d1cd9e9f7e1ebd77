//! `backfill_checkpoints`: where `worker backfill` stopped, so that it can resume.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(BackfillCheckpoints::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(BackfillCheckpoints::Name)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    // Offset in Clerk's user list (oldest first) of the next page to read.
                    .col(
                        ColumnDef::new(BackfillCheckpoints::NextOffset)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(BackfillCheckpoints::FinishedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(BackfillCheckpoints::UpdatedAt)
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
                    .table(BackfillCheckpoints::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum BackfillCheckpoints {
    Table,
    Name,
    NextOffset,
    FinishedAt,
    UpdatedAt,
}
