//! An order, owned by a user or (before login) by the guest session that created it.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "order")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub code: String,
    /// `ACTIVE`, `PLACED` or `CANCELLED`.
    pub state: String,
    /// Owning user, once the order belongs to a logged-in customer.
    pub user_id: Option<i64>,
    /// Owning guest session while the order has no user.
    pub session_id: Option<i64>,
    pub channel_id: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ActiveModelBehavior for ActiveModel {}
