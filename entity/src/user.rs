//! A user who can log in with an identifier and a password.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Unique login name (an email address or user name), at most 255 bytes.
    #[sea_orm(unique)]
    pub identifier: String,
    /// PHC string of an argon2id hash.
    #[sea_orm(column_type = "Text")]
    pub password_hash: String,
    pub verified: bool,
    pub created_at: i64,
    pub last_login_at: Option<i64>,
}

impl ActiveModelBehavior for ActiveModel {}
