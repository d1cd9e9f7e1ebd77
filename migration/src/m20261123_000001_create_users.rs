//! `users`: one row per live Clerk user.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Users::Id).uuid().not_null().primary_key())
                    // Unique constraints also index the two lookup columns.
                    .col(
                        ColumnDef::new(Users::ClerkUserId)
                            .text()
                            .not_null()
                            .unique_key(),
                    )
                    // Nullable: Clerk allows sign-ups without an email address.
                    .col(ColumnDef::new(Users::Email).text().null().unique_key())
                    .col(ColumnDef::new(Users::FirstName).text().null())
                    .col(ColumnDef::new(Users::LastName).text().null())
                    .col(
                        ColumnDef::new(Users::MicrosoftCalendarConnected)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(
                        ColumnDef::new(Users::GoogleCalendarConnected)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    // Clerk's `updated_at` (ms since the epoch): the version that makes stale
                    // events change nothing.
                    .col(
                        ColumnDef::new(Users::ClerkUpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Users::ClerkCreatedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Users::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        ColumnDef::new(Users::UpdatedAt)
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
            .drop_table(Table::drop().table(Users::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Users {
    Table,
    Id,
    ClerkUserId,
    Email,
    FirstName,
    LastName,
    MicrosoftCalendarConnected,
    GoogleCalendarConnected,
    ClerkUpdatedAt,
    ClerkCreatedAt,
    CreatedAt,
    UpdatedAt,
}
