//! A role: a set of permissions granted in a set of channels (see `role_channel`).
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "role")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub code: String,
    #[sea_orm(column_type = "Text")]
    pub description: String,
    /// Permission names joined by commas, e.g. `READ_SESSION,REVOKE_SESSION`.
    #[sea_orm(column_type = "Text")]
    pub permissions: String,
    pub created_at: i64,
}

impl ActiveModelBehavior for ActiveModel {}
