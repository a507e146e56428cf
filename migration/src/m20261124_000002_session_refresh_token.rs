//! `session_refresh_token`: every refresh token a session has rotated out (hash only), so reuse
//! detection covers the whole token family, not just the last rotation. Filled from the
//! `previous_refresh_hash` of existing sessions.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SessionRefreshToken {
    Table,
    Hash,
    SessionId,
    SupersededAt,
}

#[derive(DeriveIden)]
enum Session {
    Table,
    Id,
    PreviousRefreshHash,
    RefreshRotatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SessionRefreshToken::Table)
                    .col(string_len(SessionRefreshToken::Hash, 64).primary_key())
                    .col(big_integer(SessionRefreshToken::SessionId))
                    .col(big_integer(SessionRefreshToken::SupersededAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_session_refresh_token_session")
                            .from(SessionRefreshToken::Table, SessionRefreshToken::SessionId)
                            .to(Session::Table, Session::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // The cascade deletes by session id.
        manager
            .create_index(
                Index::create()
                    .name("idx_session_refresh_token_session")
                    .table(SessionRefreshToken::Table)
                    .col(SessionRefreshToken::SessionId)
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(SessionRefreshToken::Table)
                    .columns([
                        SessionRefreshToken::Hash,
                        SessionRefreshToken::SessionId,
                        SessionRefreshToken::SupersededAt,
                    ])
                    .select_from(
                        Query::select()
                            .column(Session::PreviousRefreshHash)
                            .column(Session::Id)
                            .expr(Expr::col(Session::RefreshRotatedAt).if_null(0))
                            .from(Session::Table)
                            .and_where(Expr::col(Session::PreviousRefreshHash).is_not_null())
                            .to_owned(),
                    )
                    .map_err(|e| DbErr::Migration(e.to_string()))?
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SessionRefreshToken::Table).to_owned())
            .await
    }
}
