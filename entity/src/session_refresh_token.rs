//! Every refresh token a session has rotated out, so that reuse of any of them is recognised
//! however many rotations happened since. The current token is `session.refresh_hash`.
//!
//! Only SHA-256 digests (hex) are stored. Rows go with their session (`ON DELETE CASCADE`).
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "session_refresh_token")]
pub struct Model {
    /// SHA-256 of the superseded refresh token, lowercase hex.
    #[sea_orm(primary_key, auto_increment = false)]
    pub hash: String,
    pub session_id: i64,
    /// When the rotation that superseded this token happened (start of its reuse grace).
    pub superseded_at: i64,
}

impl ActiveModelBehavior for ActiveModel {}
