//! `webhook_outbox`: the session events still to be POSTed, one row per event and webhook URL,
//! inserted in the transaction of the change that made the event and deleted once delivered
//! (or given up). No foreign key: a row names its event by id only.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookOutbox {
    Table,
    Id,
    EventId,
    Url,
    CreatedAt,
    NextAttemptAt,
    Attempts,
    Claim,
    LastError,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookOutbox::Table)
                    .col(big_pk_auto(WebhookOutbox::Id))
                    .col(big_integer(WebhookOutbox::EventId))
                    .col(string_len(WebhookOutbox::Url, 2048))
                    .col(big_integer(WebhookOutbox::CreatedAt))
                    .col(big_integer(WebhookOutbox::NextAttemptAt))
                    .col(integer(WebhookOutbox::Attempts).default(0))
                    .col(string_len_null(WebhookOutbox::Claim, 32))
                    .col(string_len_null(WebhookOutbox::LastError, 512))
                    .to_owned(),
            )
            .await?;
        // The worker takes the rows that are due, oldest first.
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_outbox_due")
                    .table(WebhookOutbox::Table)
                    .col(WebhookOutbox::NextAttemptAt)
                    .col(WebhookOutbox::Id)
                    .to_owned(),
            )
            .await?;
        // The pending-age metric reads the oldest row.
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_outbox_created")
                    .table(WebhookOutbox::Table)
                    .col(WebhookOutbox::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookOutbox::Table).to_owned())
            .await
    }
}
