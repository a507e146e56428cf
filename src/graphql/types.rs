//! GraphQL types of the contract. They wrap service results; entities never double as
//! GraphQL types.

use super::batch::{OrderBatch, RoleBatch, SessionBatch, UserBatch};
use super::context::{require_permission, services, CtxExt};
use super::events::SessionEvent;
use crate::clock::rfc3339;
use crate::domain::SessionData;
use crate::domain::{CachedSession, CachedUser, SessionKind};
use crate::error::AppError;
use crate::permission::{Permission, PermissionSet};
use crate::service::paging::Page;
use crate::service::session_data::parse_stored;
use async_graphql::{
    Context, Enum, InputObject, InputValueError, InputValueResult, Json, Object, OutputType,
    Result, Scalar, ScalarType, SimpleObject, Union, Value, ID,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use entity::{channel, order, role, session, user};
use std::sync::Arc;

/// RFC 3339 timestamp in UTC, held as milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime(pub i64);

/// RFC 3339 date and time in UTC, e.g. `2026-11-23T10:00:00.000Z`.
#[Scalar(name = "DateTime")]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|d| DateTime(d.timestamp_millis()))
                .map_err(|_| InputValueError::custom("expected an RFC 3339 date and time")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(rfc3339(self.0))
    }
}

/// Parses a GraphQL ID into a database id: a positive decimal integer.
pub fn parse_id(id: &ID, what: &str) -> Result<i64, AppError> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n > 0 && id.len() <= 19)
        .ok_or_else(|| {
            AppError::bad_input(format!(
                "invalid {what} ID '{}'",
                super::context::clip(id, 40)
            ))
        })
}

fn id(n: i64) -> ID {
    ID(n.to_string())
}

pub fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("c:{id}"))
}

pub fn decode_cursor(cursor: &str) -> Result<i64, AppError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("c:").and_then(|n| n.parse::<i64>().ok()))
        .ok_or_else(|| AppError::bad_input("invalid cursor"))
}

/// Validates `first`: 0 to 100, 20 when absent.
pub fn page_size(first: Option<i32>) -> Result<u64, AppError> {
    match first {
        None => Ok(20),
        Some(n @ 0..=100) => Ok(n as u64),
        Some(_) => Err(AppError::bad_input("first must be between 0 and 100")),
    }
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "SessionKind")]
pub enum GqlSessionKind {
    Anonymous,
    Authenticated,
}

impl From<SessionKind> for GqlSessionKind {
    fn from(k: SessionKind) -> Self {
        match k {
            SessionKind::Anonymous => GqlSessionKind::Anonymous,
            SessionKind::Authenticated => GqlSessionKind::Authenticated,
        }
    }
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum OrderState {
    Active,
    Placed,
    Cancelled,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "RefreshFailure")]
pub enum GqlRefreshFailure {
    Unknown,
    Expired,
    Superseded,
    Reused,
}

impl From<crate::service::session::RefreshFailure> for GqlRefreshFailure {
    fn from(f: crate::service::session::RefreshFailure) -> Self {
        use crate::service::session::RefreshFailure as F;
        match f {
            F::Unknown => GqlRefreshFailure::Unknown,
            F::Expired => GqlRefreshFailure::Expired,
            F::Superseded => GqlRefreshFailure::Superseded,
            F::Reused => GqlRefreshFailure::Reused,
        }
    }
}

pub struct Channel(pub Arc<channel::Model>);

#[Object]
impl Channel {
    async fn id(&self) -> ID {
        id(self.0.id)
    }
    async fn code(&self) -> &str {
        &self.0.code
    }
    async fn token(&self) -> &str {
        &self.0.token
    }
    async fn created_at(&self) -> DateTime {
        DateTime(self.0.created_at)
    }
}

/// A role; roles listed together load their channels together.
pub struct Role {
    row: role::Model,
    batch: Arc<RoleBatch>,
}

impl Role {
    pub fn one(row: role::Model) -> Role {
        Role {
            batch: RoleBatch::new([row.id]),
            row,
        }
    }

    pub fn list(rows: Vec<role::Model>) -> Vec<Role> {
        let batch = RoleBatch::new(rows.iter().map(|r| r.id));
        rows.into_iter()
            .map(|row| Role {
                row,
                batch: batch.clone(),
            })
            .collect()
    }
}

#[Object]
impl Role {
    async fn id(&self) -> ID {
        id(self.row.id)
    }
    async fn code(&self) -> &str {
        &self.row.code
    }
    async fn description(&self) -> &str {
        &self.row.description
    }
    async fn permissions(&self) -> Vec<Permission> {
        PermissionSet::from_stored(&self.row.permissions).to_vec()
    }
    async fn channels(&self, ctx: &Context<'_>) -> Result<Vec<Channel>> {
        let svc = services(ctx)?;
        Ok(self
            .batch
            .channels_of(svc, self.row.id)
            .await?
            .into_iter()
            .map(Channel)
            .collect())
    }
}

/// A user as shown to clients: a row from the database, or the user of the caller's own cached
/// session. The cached form answers `id`, `identifier` and `verified` without a query and loads
/// the row only when a field it does not hold (`createdAt`, `lastLoginAt`) is asked for. Users
/// listed together load their roles and session counts together.
pub enum User {
    Row {
        row: user::Model,
        batch: Arc<UserBatch>,
    },
    Cached {
        session: Arc<CachedSession>,
        row: tokio::sync::OnceCell<user::Model>,
        /// Made on first use: most reads of a cached user need only what the cache holds.
        batch: std::sync::OnceLock<Arc<UserBatch>>,
    },
}

impl User {
    pub fn one(row: user::Model) -> User {
        User::Row {
            batch: UserBatch::new([row.id]),
            row,
        }
    }

    pub fn list(rows: Vec<user::Model>) -> Vec<User> {
        let batch = UserBatch::new(rows.iter().map(|u| u.id));
        rows.into_iter()
            .map(|row| User::Row {
                row,
                batch: batch.clone(),
            })
            .collect()
    }

    /// The user of a cached session, if it has one.
    pub fn from_cached_session(session: &Arc<CachedSession>) -> Option<User> {
        session.user.as_ref()?;
        Some(User::Cached {
            session: session.clone(),
            row: tokio::sync::OnceCell::new(),
            batch: std::sync::OnceLock::new(),
        })
    }

    fn batch(&self) -> Result<&UserBatch, AppError> {
        match self {
            User::Row { batch, .. } => Ok(batch),
            User::Cached { session, batch, .. } => {
                let id = Self::cached(session)?.id;
                Ok(batch.get_or_init(|| UserBatch::new([id])))
            }
        }
    }

    fn cached(session: &CachedSession) -> Result<&CachedUser, AppError> {
        session
            .user
            .as_deref()
            .ok_or_else(|| AppError::internal("cached session lost its user"))
    }

    fn user_id(&self) -> Result<i64, AppError> {
        match self {
            User::Row { row, .. } => Ok(row.id),
            User::Cached { session, .. } => Ok(Self::cached(session)?.id),
        }
    }

    /// The database row, loaded at most once per value.
    async fn row(&self, ctx: &Context<'_>) -> Result<&user::Model> {
        match self {
            User::Row { row, .. } => Ok(row),
            User::Cached { session, row, .. } => {
                let id = Self::cached(session)?.id;
                Ok(row
                    .get_or_try_init(|| async {
                        services(ctx)?
                            .directory
                            .user_by_id(id)
                            .await?
                            .ok_or_else(|| AppError::not_found("no such user"))
                    })
                    .await?)
            }
        }
    }
}

#[Object]
impl User {
    async fn id(&self) -> Result<ID> {
        Ok(id(self.user_id()?))
    }
    async fn identifier(&self) -> Result<&str> {
        Ok(match self {
            User::Row { row, .. } => &row.identifier,
            User::Cached { session, .. } => &Self::cached(session)?.identifier,
        })
    }
    async fn verified(&self) -> Result<bool> {
        Ok(match self {
            User::Row { row, .. } => row.verified,
            User::Cached { session, .. } => Self::cached(session)?.verified,
        })
    }
    /// The user's roles that the caller may see, as `roles` shows them: all to the user
    /// themselves and to super admins, else those with a channel where the caller holds
    /// `READ_USER` (none without it), so a user reached through a listed session or `user`
    /// does not show what they hold in the caller's other channels.
    async fn roles(&self, ctx: &Context<'_>) -> Result<Vec<Role>> {
        let svc = services(ctx)?;
        let user_id = self.user_id()?;
        let (roles, batch) = self.batch()?.roles_of(svc, user_id).await?;
        // Decided from the caller's cached grants, without building a `Caller` per user listed.
        let session = ctx.request_ctx()?.session();
        let viewer = session.as_deref().and_then(|s| s.user.as_deref());
        let sees_all = viewer.is_some_and(|v| v.id == user_id || v.is_super_admin());
        let mut visible = Vec::with_capacity(roles.len());
        for row in roles.iter() {
            let shown = sees_all
                || match viewer {
                    None => false,
                    Some(v) => batch
                        .channels_of(svc, row.id)
                        .await?
                        .iter()
                        .any(|c| v.permissions_in(c.id).contains(Permission::ReadUser)),
                };
            if shown {
                visible.push(Role {
                    row: row.clone(),
                    batch: batch.clone(),
                });
            }
        }
        Ok(visible)
    }
    async fn created_at(&self, ctx: &Context<'_>) -> Result<DateTime> {
        Ok(DateTime(self.row(ctx).await?.created_at))
    }
    async fn last_login_at(&self, ctx: &Context<'_>) -> Result<Option<DateTime>> {
        Ok(self.row(ctx).await?.last_login_at.map(DateTime))
    }
    async fn active_session_count(&self, ctx: &Context<'_>) -> Result<i32> {
        let svc = services(ctx)?;
        Ok(self
            .batch()?
            .live_sessions_of(svc, self.user_id()?)
            .await?
            .min(i32::MAX as u64) as i32)
    }
}

#[derive(SimpleObject)]
pub struct ChannelPermissions {
    pub channel_id: ID,
    pub channel_code: String,
    pub channel_token: String,
    pub permissions: Vec<Permission>,
}

/// The logged-in user: read straight from the cached session (no copy of its grants), or a
/// user a mutation just produced.
pub enum CurrentUser {
    Owned(CachedUser),
    OfSession(Arc<CachedSession>),
}

impl CurrentUser {
    /// The user of `session`, if it has one.
    pub fn of_session(session: &Arc<CachedSession>) -> Option<CurrentUser> {
        session.user.as_ref()?;
        Some(CurrentUser::OfSession(session.clone()))
    }

    fn user(&self) -> Result<&CachedUser, AppError> {
        match self {
            CurrentUser::Owned(u) => Ok(u),
            CurrentUser::OfSession(s) => User::cached(s),
        }
    }
}

#[Object]
impl CurrentUser {
    async fn id(&self) -> Result<ID> {
        Ok(id(self.user()?.id))
    }
    async fn identifier(&self) -> Result<&str> {
        Ok(&self.user()?.identifier)
    }
    async fn verified(&self) -> Result<bool> {
        Ok(self.user()?.verified)
    }
    async fn channels(&self) -> Result<Vec<ChannelPermissions>> {
        Ok(self
            .user()?
            .channels
            .iter()
            .map(|c| ChannelPermissions {
                channel_id: id(c.channel_id),
                channel_code: c.code.clone(),
                channel_token: c.token.clone(),
                permissions: c.permissions.to_vec(),
            })
            .collect())
    }
}

/// An order; orders listed together load their users together.
pub struct Order {
    row: order::Model,
    batch: Arc<OrderBatch>,
}

impl Order {
    pub fn one(row: order::Model) -> Order {
        Order {
            batch: OrderBatch::new(row.user_id),
            row,
        }
    }
}

#[Object]
impl Order {
    async fn id(&self) -> ID {
        id(self.row.id)
    }
    async fn code(&self) -> &str {
        &self.row.code
    }
    async fn state(&self) -> OrderState {
        match self.row.state.as_str() {
            crate::service::order::PLACED => OrderState::Placed,
            crate::service::order::CANCELLED => OrderState::Cancelled,
            _ => OrderState::Active,
        }
    }
    async fn user(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let Some(uid) = self.row.user_id else {
            return Ok(None);
        };
        let found = self.batch.user(services(ctx)?, uid).await?;
        Ok(found.map(|(row, batch)| User::Row { row, batch }))
    }
    async fn channel(&self, ctx: &Context<'_>) -> Result<Channel> {
        let svc = services(ctx)?;
        let ch = svc
            .directory
            .channel_by_id(self.row.channel_id)
            .await?
            .ok_or_else(|| AppError::internal("order channel missing"))?;
        Ok(Channel(ch))
    }
    async fn created_at(&self) -> DateTime {
        DateTime(self.row.created_at)
    }
    async fn updated_at(&self) -> DateTime {
        DateTime(self.row.updated_at)
    }
}

/// A session as shown to clients: the caller's own (the cached form, shared, not copied) or
/// a row from the database.
/// Sessions listed together load their users and orders together.
pub enum Session {
    Cached(Arc<CachedSession>),
    Row(Box<session::Model>, Arc<SessionBatch>),
}

impl Session {
    pub fn from_cached(s: &Arc<CachedSession>) -> Session {
        Session::Cached(s.clone())
    }

    pub fn from_model(m: session::Model) -> Session {
        let batch = SessionBatch::new(m.user_id, m.active_order_id);
        Session::Row(Box::new(m), batch)
    }

    pub fn list(rows: Vec<session::Model>) -> Vec<Session> {
        let batch = SessionBatch::new(
            rows.iter().filter_map(|m| m.user_id),
            rows.iter().filter_map(|m| m.active_order_id),
        );
        rows.into_iter()
            .map(|m| Session::Row(Box::new(m), batch.clone()))
            .collect()
    }

    fn session_id(&self) -> i64 {
        match self {
            Session::Cached(s) => s.id,
            Session::Row(m, _) => m.id,
        }
    }

    fn last_active(&self) -> i64 {
        match self {
            Session::Cached(s) => s.last_active(),
            Session::Row(m, _) => m.last_active_at,
        }
    }

    fn absolute_expiry(&self) -> i64 {
        match self {
            Session::Cached(s) => s.absolute_expires_at,
            Session::Row(m, _) => m.absolute_expires_at,
        }
    }
}

#[Object(name = "Session")]
impl Session {
    async fn id(&self) -> ID {
        id(self.session_id())
    }
    /// This session's place in a listing: pass it as `after` (to `mySessions` or `sessions`)
    /// to continue with the sessions older than it.
    async fn cursor(&self) -> String {
        encode_cursor(self.session_id())
    }
    async fn kind(&self) -> GqlSessionKind {
        match self {
            Session::Cached(s) => s.kind.into(),
            Session::Row(m, _) => SessionKind::from_db(&m.kind).into(),
        }
    }
    /// Whether this is the session making the request.
    async fn current(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(ctx
            .request_ctx()?
            .session()
            .is_some_and(|s| s.id == self.session_id()))
    }
    async fn invalidated(&self) -> bool {
        matches!(self, Session::Row(m, _) if m.invalidated)
    }
    /// The caller's own session answers from its cached user; a listed row loads the user.
    async fn user(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let (uid, batch) = match self {
            Session::Cached(s) => return Ok(User::from_cached_session(s)),
            Session::Row(m, batch) => (m.user_id, batch),
        };
        let Some(uid) = uid else {
            return Ok(None);
        };
        let found = batch.user(services(ctx)?, uid).await?;
        Ok(found.map(|(row, batch)| User::Row { row, batch }))
    }
    async fn authentication_strategy(&self) -> Option<&str> {
        match self {
            Session::Cached(s) => s.authentication_strategy.as_deref(),
            Session::Row(m, _) => m.authentication_strategy.as_deref(),
        }
    }
    async fn active_order(&self, ctx: &Context<'_>) -> Result<Option<Order>> {
        let svc = services(ctx)?;
        match self {
            Session::Cached(s) => match s.active_order_id {
                Some(oid) => Ok(svc.orders.order_by_id(oid).await?.map(Order::one)),
                None => Ok(None),
            },
            Session::Row(m, batch) => match m.active_order_id {
                Some(oid) => Ok(batch
                    .order(svc, oid)
                    .await?
                    .map(|(row, batch)| Order { row, batch })),
                None => Ok(None),
            },
        }
    }
    async fn active_channel(&self, ctx: &Context<'_>) -> Result<Option<Channel>> {
        let active_channel = match self {
            Session::Cached(s) => s.active_channel_id,
            Session::Row(m, _) => m.active_channel_id,
        };
        let Some(cid) = active_channel else {
            return Ok(None);
        };
        let svc = services(ctx)?;
        Ok(svc.directory.channel_by_id(cid).await?.map(Channel))
    }
    async fn created_at(&self) -> DateTime {
        DateTime(match self {
            Session::Cached(s) => s.created_at,
            Session::Row(m, _) => m.created_at,
        })
    }
    async fn last_active_at(&self) -> DateTime {
        DateTime(self.last_active())
    }
    async fn expires_at(&self, ctx: &Context<'_>) -> Result<DateTime> {
        let lifetimes = services(ctx)?.sessions.lifetimes();
        Ok(DateTime(
            lifetimes.expires_at(self.last_active(), self.absolute_expiry()),
        ))
    }
    async fn absolute_expires_at(&self) -> DateTime {
        DateTime(self.absolute_expiry())
    }
    /// The application's own data (a JSON object; null when empty). The caller's own session
    /// always shows it; other sessions only to callers holding READ_SESSION in the request's
    /// channel.
    async fn data(&self, ctx: &Context<'_>) -> Result<Option<Json<Arc<SessionData>>>> {
        let m = match self {
            Session::Cached(s) => return Ok(s.data.clone().map(Json)),
            Session::Row(m, _) => m,
        };
        let own = ctx.request_ctx()?.session().is_some_and(|s| s.id == m.id);
        if !own && require_permission(ctx, Permission::ReadSession).is_err() {
            return Ok(None);
        }
        Ok(parse_stored(m.data.as_deref()).map(Json))
    }
    /// Incremented by every successful `updateSessionData`; pass it as `expectedVersion`.
    async fn data_version(&self) -> i32 {
        let v = match self {
            Session::Cached(s) => s.data_version,
            Session::Row(m, _) => m.data_version,
        };
        v.clamp(0, i32::MAX as i64) as i32
    }
    async fn ip_address(&self) -> Option<&str> {
        match self {
            Session::Cached(s) => s.ip_address.as_deref(),
            Session::Row(m, _) => m.ip_address.as_deref(),
        }
    }
    async fn user_agent(&self) -> Option<&str> {
        match self {
            Session::Cached(s) => s.user_agent.as_deref(),
            Session::Row(m, _) => m.user_agent.as_deref(),
        }
    }
}

#[derive(SimpleObject)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub has_previous_page: bool,
    pub start_cursor: Option<String>,
    pub end_cursor: Option<String>,
}

impl PageInfo {
    pub fn new(
        first: Option<i64>,
        last: Option<i64>,
        has_next: bool,
        has_previous: bool,
    ) -> PageInfo {
        PageInfo {
            has_next_page: has_next,
            has_previous_page: has_previous,
            start_cursor: first.map(encode_cursor),
            end_cursor: last.map(encode_cursor),
        }
    }
}

/// A listed value's place in its listing.
pub trait Listed {
    fn list_id(&self) -> i64;
}

impl Listed for Session {
    fn list_id(&self) -> i64 {
        self.session_id()
    }
}

impl Listed for SessionEvent {
    fn list_id(&self) -> i64 {
        self.0.id
    }
}

impl Listed for User {
    fn list_id(&self) -> i64 {
        self.user_id().unwrap_or_default()
    }
}

#[derive(SimpleObject)]
#[graphql(
    concrete(name = "SessionEdge", params(Session)),
    concrete(name = "UserEdge", params(User)),
    concrete(name = "SessionEventEdge", params(SessionEvent))
)]
pub struct Edge<T: OutputType> {
    pub cursor: String,
    pub node: T,
}

/// A page of a listing. `nodes` mirrors `edges`; both come from one query.
#[derive(SimpleObject)]
#[graphql(
    concrete(name = "SessionConnection", params(Session)),
    concrete(name = "UserConnection", params(User)),
    concrete(name = "SessionEventConnection", params(SessionEvent))
)]
pub struct Connection<T: OutputType>
where
    Edge<T>: OutputType,
{
    pub edges: Vec<Edge<T>>,
    pub nodes: Vec<T>,
    pub page_info: PageInfo,
    pub total_count: i32,
}

impl<T: OutputType + Listed> Connection<T>
where
    Edge<T>: OutputType,
{
    /// The connection of one page; `edges` are built only when the query asks for them
    /// (each edge holds its own handle on the same row).
    pub fn new<R>(page: Page<R>, values: impl Fn(Vec<R>) -> Vec<T>, with_edges: bool) -> Self
    where
        R: Clone,
    {
        let nodes = values(page.items.clone());
        let edges = if with_edges {
            values(page.items)
                .into_iter()
                .map(|node| Edge {
                    cursor: encode_cursor(node.list_id()),
                    node,
                })
                .collect()
        } else {
            Vec::new()
        };
        Connection {
            page_info: PageInfo::new(
                nodes.first().map(Listed::list_id),
                nodes.last().map(Listed::list_id),
                page.has_next,
                page.has_previous,
            ),
            total_count: page.total.unwrap_or(0).min(i32::MAX as u64) as i32,
            edges,
            nodes,
        }
    }
}

pub type SessionConnection = Connection<Session>;
pub type UserConnection = Connection<User>;
pub type SessionEventConnection = Connection<SessionEvent>;

/// A short-lived signed JWT of the current session, verifiable with the keys at
/// `/.well-known/jwks.json`.
#[derive(SimpleObject)]
pub struct SessionJwt {
    pub token: String,
    pub expires_at: DateTime,
}

#[derive(SimpleObject)]
pub struct SessionStats {
    pub anonymous: i32,
    pub authenticated: i32,
    pub expired_awaiting_cleanup: i32,
    pub invalidated: i32,
}

#[derive(InputObject)]
#[graphql(name = "SessionFilter")]
pub struct SessionFilterInput {
    pub user_id: Option<ID>,
    pub kind: Option<GqlSessionKind>,
    pub channel_id: Option<ID>,
    pub active_order_id: Option<ID>,
    pub include_expired: Option<bool>,
    pub include_invalidated: Option<bool>,
}

#[derive(InputObject)]
pub struct CreateUserInput {
    pub identifier: String,
    pub password: String,
    pub verified: Option<bool>,
    pub role_ids: Option<Vec<ID>>,
}

#[derive(InputObject)]
pub struct UpdateUserInput {
    pub id: ID,
    pub identifier: Option<String>,
    pub verified: Option<bool>,
    pub password: Option<String>,
}

#[derive(InputObject)]
pub struct CreateRoleInput {
    pub code: String,
    pub description: Option<String>,
    pub permissions: Vec<Permission>,
    pub channel_ids: Vec<ID>,
}

#[derive(InputObject)]
pub struct UpdateRoleInput {
    pub id: ID,
    pub description: Option<String>,
    pub permissions: Option<Vec<Permission>>,
    pub channel_ids: Option<Vec<ID>>,
}

#[derive(InputObject)]
pub struct CreateChannelInput {
    pub code: String,
    pub token: Option<String>,
}

#[derive(SimpleObject)]
pub struct AuthenticationSuccess {
    pub user: CurrentUser,
    pub session: Session,
}

#[derive(SimpleObject)]
pub struct InvalidCredentialsError {
    pub error_code: String,
    pub message: String,
}

#[derive(SimpleObject)]
pub struct NotVerifiedError {
    pub error_code: String,
    pub message: String,
}

#[derive(SimpleObject)]
pub struct TooManyAttemptsError {
    pub error_code: String,
    pub message: String,
    pub retry_after_seconds: i32,
}

#[derive(SimpleObject)]
pub struct InvalidRefreshTokenError {
    pub error_code: String,
    pub message: String,
    pub reason: GqlRefreshFailure,
}

#[derive(Union)]
pub enum LoginResult {
    AuthenticationSuccess(AuthenticationSuccess),
    InvalidCredentialsError(InvalidCredentialsError),
    NotVerifiedError(NotVerifiedError),
    TooManyAttemptsError(TooManyAttemptsError),
}

#[derive(Union)]
pub enum RefreshSessionResult {
    AuthenticationSuccess(AuthenticationSuccess),
    InvalidRefreshTokenError(InvalidRefreshTokenError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn cursors_round_trip(id in any::<i64>()) {
            prop_assert_eq!(decode_cursor(&encode_cursor(id)).ok(), Some(id));
        }

        #[test]
        fn arbitrary_cursors_never_panic(raw in any::<String>()) {
            let _ = decode_cursor(&raw);
        }

        /// Valid base64url of arbitrary bytes, and of near-cursor text: decoded only when the
        /// text is exactly `c:` and an integer.
        #[test]
        fn decoded_cursors_are_exactly_the_encoded_ones(
            bytes in proptest::collection::vec(any::<u8>(), 0..40),
            text in "c?:?[-+]?[0-9]{0,25}x?",
        ) {
            let _ = decode_cursor(&URL_SAFE_NO_PAD.encode(&bytes));
            let decoded = decode_cursor(&URL_SAFE_NO_PAD.encode(&text)).ok();
            let expected = text.strip_prefix("c:").and_then(|n| n.parse::<i64>().ok());
            prop_assert_eq!(decoded, expected);
        }
    }
}
