//! `jwt_key`: the Ed25519 keys that sign session JWTs, shared by every instance. Each row says
//! when it signs (`sign_from` .. `sign_until`) and until when it is published in the JWKS
//! (`publish_until`: the end of signing plus the longest token lifetime).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum JwtKey {
    Table,
    Kid,
    PrivateKey,
    PublicKey,
    CreatedAt,
    SignFrom,
    SignUntil,
    PublishUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(JwtKey::Table)
                    // Random, so instances that create a key at the same moment never collide.
                    .col(string_len(JwtKey::Kid, 64).primary_key())
                    .col(text(JwtKey::PrivateKey))
                    .col(string_len(JwtKey::PublicKey, 64))
                    .col(big_integer(JwtKey::CreatedAt))
                    .col(big_integer(JwtKey::SignFrom))
                    .col(big_integer(JwtKey::SignUntil))
                    .col(big_integer(JwtKey::PublishUntil))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jwt_key_publish_until")
                    .table(JwtKey::Table)
                    .col(JwtKey::PublishUntil)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(JwtKey::Table).to_owned())
            .await
    }
}
