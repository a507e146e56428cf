//! The initial schema: channels, roles, users, orders and the single `session` table, with an
//! index for every lookup the server makes and for the expiry clean-up.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Channel {
    Table,
    Id,
    Code,
    Token,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Role {
    Table,
    Id,
    Code,
    Description,
    Permissions,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RoleChannel {
    Table,
    RoleId,
    ChannelId,
}

#[derive(DeriveIden)]
enum User {
    Table,
    Id,
    Identifier,
    PasswordHash,
    Verified,
    CreatedAt,
    LastLoginAt,
}

#[derive(DeriveIden)]
enum UserRole {
    Table,
    UserId,
    RoleId,
}

#[derive(DeriveIden)]
enum Order {
    Table,
    Id,
    Code,
    State,
    UserId,
    SessionId,
    ChannelId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Session {
    Table,
    Id,
    Kind,
    TokenHash,
    TokenIssuedAt,
    RefreshHash,
    PreviousRefreshHash,
    RefreshRotatedAt,
    UserId,
    AuthenticationStrategy,
    ActiveOrderId,
    ActiveChannelId,
    Invalidated,
    RememberMe,
    CreatedAt,
    LastActiveAt,
    AbsoluteExpiresAt,
    IpAddress,
    UserAgent,
}

fn fk(
    name: &str,
    from: (impl IntoIden, impl IntoIden),
    to: (impl IntoIden, impl IntoIden),
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(to.0, to.1)
        .on_delete(on_delete)
        .to_owned()
}

fn index(name: &str, table: impl IntoIden, cols: &[&'static str]) -> IndexCreateStatement {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for col in cols {
        stmt.col(Alias::new(*col));
    }
    stmt.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Channel::Table)
                    .col(big_pk_auto(Channel::Id))
                    .col(string_len_uniq(Channel::Code, 255))
                    .col(string_len_uniq(Channel::Token, 255))
                    .col(big_integer(Channel::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Role::Table)
                    .col(big_pk_auto(Role::Id))
                    .col(string_len_uniq(Role::Code, 255))
                    .col(text(Role::Description))
                    .col(text(Role::Permissions))
                    .col(big_integer(Role::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RoleChannel::Table)
                    .col(big_integer(RoleChannel::RoleId))
                    .col(big_integer(RoleChannel::ChannelId))
                    .primary_key(
                        Index::create()
                            .col(RoleChannel::RoleId)
                            .col(RoleChannel::ChannelId),
                    )
                    .foreign_key(&mut fk(
                        "fk_role_channel_role",
                        (RoleChannel::Table, RoleChannel::RoleId),
                        (Role::Table, Role::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut fk(
                        "fk_role_channel_channel",
                        (RoleChannel::Table, RoleChannel::ChannelId),
                        (Channel::Table, Channel::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(User::Table)
                    .col(big_pk_auto(User::Id))
                    .col(string_len_uniq(User::Identifier, 255))
                    .col(text(User::PasswordHash))
                    .col(boolean(User::Verified))
                    .col(big_integer(User::CreatedAt))
                    .col(big_integer_null(User::LastLoginAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UserRole::Table)
                    .col(big_integer(UserRole::UserId))
                    .col(big_integer(UserRole::RoleId))
                    .primary_key(Index::create().col(UserRole::UserId).col(UserRole::RoleId))
                    .foreign_key(&mut fk(
                        "fk_user_role_user",
                        (UserRole::Table, UserRole::UserId),
                        (User::Table, User::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut fk(
                        "fk_user_role_role",
                        (UserRole::Table, UserRole::RoleId),
                        (Role::Table, Role::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        // Reverse lookup for "every user holding this role" (role changes invalidate them).
        manager
            .create_index(index("idx_user_role_role", UserRole::Table, &["role_id"]))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Session::Table)
                    .col(big_pk_auto(Session::Id))
                    .col(string_len(Session::Kind, 16))
                    .col(string_len_uniq(Session::TokenHash, 64))
                    .col(big_integer(Session::TokenIssuedAt))
                    .col(string_len_null(Session::RefreshHash, 64).unique_key())
                    .col(string_len_null(Session::PreviousRefreshHash, 64))
                    .col(big_integer_null(Session::RefreshRotatedAt))
                    .col(big_integer_null(Session::UserId))
                    .col(string_len_null(Session::AuthenticationStrategy, 64))
                    .col(big_integer_null(Session::ActiveOrderId))
                    .col(big_integer_null(Session::ActiveChannelId))
                    .col(boolean(Session::Invalidated))
                    .col(boolean(Session::RememberMe))
                    .col(big_integer(Session::CreatedAt))
                    .col(big_integer(Session::LastActiveAt))
                    .col(big_integer(Session::AbsoluteExpiresAt))
                    .col(string_len_null(Session::IpAddress, 64))
                    .col(text_null(Session::UserAgent))
                    .foreign_key(&mut fk(
                        "fk_session_user",
                        (Session::Table, Session::UserId),
                        (User::Table, User::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut fk(
                        "fk_session_active_channel",
                        (Session::Table, Session::ActiveChannelId),
                        (Channel::Table, Channel::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Order::Table)
                    .col(big_pk_auto(Order::Id))
                    .col(string_len_uniq(Order::Code, 64))
                    .col(string_len(Order::State, 16))
                    .col(big_integer_null(Order::UserId))
                    .col(big_integer_null(Order::SessionId))
                    .col(big_integer(Order::ChannelId))
                    .col(big_integer(Order::CreatedAt))
                    .col(big_integer(Order::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_order_user",
                        (Order::Table, Order::UserId),
                        (User::Table, User::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .foreign_key(&mut fk(
                        "fk_order_session",
                        (Order::Table, Order::SessionId),
                        (Session::Table, Session::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .foreign_key(&mut fk(
                        "fk_order_channel",
                        (Order::Table, Order::ChannelId),
                        (Channel::Table, Channel::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;

        // session.active_order_id -> order.id is added after both tables exist. SQLite cannot
        // add a foreign key to an existing table, so there the service layer keeps it consistent
        // (orders are never deleted, only moved between states).
        if manager.get_database_backend() != sea_orm::DatabaseBackend::Sqlite {
            manager
                .create_foreign_key(fk(
                    "fk_session_active_order",
                    (Session::Table, Session::ActiveOrderId),
                    (Order::Table, Order::Id),
                    ForeignKeyAction::SetNull,
                ))
                .await?;
        }

        for stmt in [
            index("idx_session_user", Session::Table, &["user_id"]),
            index(
                "idx_session_prev_refresh",
                Session::Table,
                &["previous_refresh_hash"],
            ),
            index(
                "idx_session_active_order",
                Session::Table,
                &["active_order_id"],
            ),
            index(
                "idx_session_active_channel",
                Session::Table,
                &["active_channel_id"],
            ),
            // Expiry clean-up and the live/expired filters of the admin listing.
            index(
                "idx_session_last_active",
                Session::Table,
                &["last_active_at"],
            ),
            index(
                "idx_session_absolute_expiry",
                Session::Table,
                &["absolute_expires_at"],
            ),
            index("idx_session_invalidated", Session::Table, &["invalidated"]),
            index("idx_order_user", Order::Table, &["user_id"]),
            index("idx_order_session", Order::Table, &["session_id"]),
            index(
                "idx_role_channel_channel",
                RoleChannel::Table,
                &["channel_id"],
            ),
        ] {
            manager.create_index(stmt).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DatabaseBackend::Sqlite {
            manager
                .drop_foreign_key(
                    ForeignKey::drop()
                        .name("fk_session_active_order")
                        .table(Session::Table)
                        .to_owned(),
                )
                .await?;
        }
        for table in [
            Order::Table.into_iden(),
            Session::Table.into_iden(),
            UserRole::Table.into_iden(),
            User::Table.into_iden(),
            RoleChannel::Table.into_iden(),
            Role::Table.into_iden(),
            Channel::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
