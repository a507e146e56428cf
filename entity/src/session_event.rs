//! One recorded change to a session or an account (the audit log). Append-only: rows are
//! inserted with the change they record and deleted only by retention. Never holds a token,
//! a token digest or a password.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "session_event")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The event type, as the GraphQL enum spells it (`LOGIN_SUCCEEDED`, ...).
    pub kind: String,
    pub at: i64,
    pub session_id: Option<i64>,
    /// The user the event is about (the session's user, the changed account).
    pub user_id: Option<i64>,
    /// Who made the change: the admin who revoked, or the user themself.
    pub actor_user_id: Option<i64>,
    /// The identifier that was tried (failed and throttled logins) or the account's identifier.
    pub identifier: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    /// The channel the change happened in (channels are never deleted).
    pub channel_id: Option<i64>,
    /// Why: `REUSED`, `idle`, `absolute`, `admin`, `logout`, ...
    pub reason: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
