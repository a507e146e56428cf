//! One table for both kinds of session, told apart by `kind` (`anonymous` or `authenticated`).
//!
//! Only SHA-256 digests of tokens are stored (hex), never the tokens themselves.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "session")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Discriminator: `anonymous` or `authenticated`.
    pub kind: String,
    /// SHA-256 of the current session token, lowercase hex.
    #[sea_orm(unique)]
    pub token_hash: String,
    /// When the current session token was issued (for `SESSION_TOKEN_TTL`).
    pub token_issued_at: i64,
    /// SHA-256 of the current refresh token; authenticated sessions only.
    #[sea_orm(unique)]
    pub refresh_hash: Option<String>,
    /// SHA-256 of the refresh token that the last rotation superseded. Still written so an older
    /// server can read it; reuse detection reads every superseded token from
    /// `session_refresh_token`.
    pub previous_refresh_hash: Option<String>,
    /// When the last rotation happened (start of the reuse grace window).
    pub refresh_rotated_at: Option<i64>,
    pub user_id: Option<i64>,
    pub authentication_strategy: Option<String>,
    pub active_order_id: Option<i64>,
    pub active_channel_id: Option<i64>,
    /// Set on revocation; the row stays (for audit) until clean-up deletes it.
    pub invalidated: bool,
    /// Whether the cookie was issued with a Max-Age ("remember me").
    pub remember_me: bool,
    pub created_at: i64,
    /// May lag the real last activity by up to `SESSION_ACTIVITY_WRITE_INTERVAL`.
    pub last_active_at: i64,
    pub absolute_expires_at: i64,
    pub ip_address: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub user_agent: Option<String>,
    /// The application's own data: a JSON object, NULL when empty. Deleted on revocation.
    #[sea_orm(column_type = "Text", nullable)]
    pub data: Option<String>,
    /// Incremented by every update of `data`; updates compare it, so none is lost.
    pub data_version: i64,
    /// Incremented by every write of what the cache holds of the row (active order and
    /// channel, data, token, revocation; not the activity time). Caches compare it, so they
    /// never go back to an older row.
    pub revision: i64,
}

impl ActiveModelBehavior for ActiveModel {}
