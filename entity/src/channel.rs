//! A sales channel: requests are scoped to one, and role permissions are granted per channel.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channel")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Human-readable unique code; the default channel's is `default`.
    #[sea_orm(unique)]
    pub code: String,
    /// Unique token clients send in the `channel-token` header.
    #[sea_orm(unique)]
    pub token: String,
    pub created_at: i64,
}

impl ActiveModelBehavior for ActiveModel {}
