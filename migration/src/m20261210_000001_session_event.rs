//! `session_event`: the append-only audit log of session and account changes. Each row is
//! written in the same transaction as the change it records. No foreign keys: the history
//! outlives the sessions and users it names.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SessionEvent {
    Table,
    Id,
    Kind,
    At,
    SessionId,
    UserId,
    ActorUserId,
    Identifier,
    IpAddress,
    UserAgent,
    ChannelId,
    Reason,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SessionEvent::Table)
                    .col(big_pk_auto(SessionEvent::Id))
                    .col(string_len(SessionEvent::Kind, 32))
                    .col(big_integer(SessionEvent::At))
                    .col(big_integer_null(SessionEvent::SessionId))
                    .col(big_integer_null(SessionEvent::UserId))
                    .col(big_integer_null(SessionEvent::ActorUserId))
                    .col(string_len_null(SessionEvent::Identifier, 255))
                    .col(string_len_null(SessionEvent::IpAddress, 64))
                    .col(string_len_null(SessionEvent::UserAgent, 512))
                    .col(big_integer_null(SessionEvent::ChannelId))
                    .col(string_len_null(SessionEvent::Reason, 64))
                    .to_owned(),
            )
            .await?;
        // Listings are newest first by id; each filter has an index that ends in `id`, so a
        // filtered page is an index range scan.
        let indexes: [(&str, Vec<SessionEvent>); 5] = [
            (
                "idx_session_event_user",
                vec![SessionEvent::UserId, SessionEvent::Id],
            ),
            (
                "idx_session_event_session",
                vec![SessionEvent::SessionId, SessionEvent::Id],
            ),
            (
                "idx_session_event_kind",
                vec![SessionEvent::Kind, SessionEvent::Id],
            ),
            (
                "idx_session_event_channel",
                vec![SessionEvent::ChannelId, SessionEvent::Id],
            ),
            // Time-filtered listings are ordered by (at, id); retention deletes by `at`.
            (
                "idx_session_event_at",
                vec![SessionEvent::At, SessionEvent::Id],
            ),
        ];
        for (name, cols) in indexes {
            let mut index = Index::create();
            index.name(name).table(SessionEvent::Table);
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SessionEvent::Table).to_owned())
            .await
    }
}
