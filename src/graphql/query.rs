//! Query resolvers: validate, call one service function, map the result.

use super::context::{require_caller, require_permission, require_user, services, CtxExt};
use super::events::{connection, SessionEventFilterInput};
use super::types::*;
use crate::error::AppError;
use crate::permission::Permission;
use crate::service::paging::PageRequest;
use crate::service::session_admin::SessionFilter;
use async_graphql::{Context, Object, Result, ID};

pub struct Query;

/// Most sessions `mySessions` returns when the client gives no `first`.
const MY_SESSIONS_CAP: u64 = 100;

fn opt_id(id: &Option<ID>, what: &str) -> Result<Option<i64>, AppError> {
    id.as_ref().map(|i| parse_id(i, what)).transpose()
}

#[Object]
impl Query {
    /// The session making this request; null without a valid session.
    async fn active_session(&self, ctx: &Context<'_>) -> Result<Option<Session>> {
        Ok(ctx
            .request_ctx()?
            .session()
            .map(|s| Session::from_cached(&s)))
    }

    /// A short-lived JWT of this session (Ed25519, `alg: EdDSA`) for services that verify
    /// sessions themselves with the keys at `/.well-known/jwks.json`; `aud` is `audience` when
    /// given. Null without a live session.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn session_jwt(
        &self,
        ctx: &Context<'_>,
        audience: Option<String>,
    ) -> Result<Option<SessionJwt>> {
        let req = ctx.request_ctx()?;
        let Some(session) = req.session() else {
            return Ok(None);
        };
        let permissions = crate::service::identify::permissions_in(&session, req.channel.id);
        let jwt = services(ctx)?
            .jwt
            .session_jwt(&session, &req.channel, permissions, audience.as_deref())
            .await?;
        Ok(Some(SessionJwt {
            token: jwt.token,
            expires_at: DateTime(jwt.expires_at),
        }))
    }

    /// The logged-in user with their permissions per channel; null unless logged in.
    async fn me(&self, ctx: &Context<'_>) -> Result<Option<CurrentUser>> {
        Ok(ctx
            .request_ctx()?
            .session()
            .and_then(|s| CurrentUser::of_session(&s)))
    }

    /// The channel of this request.
    async fn active_channel(&self, ctx: &Context<'_>) -> Result<Channel> {
        Ok(Channel(ctx.request_ctx()?.channel.clone()))
    }

    /// The session's active order, if any.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn active_order(&self, ctx: &Context<'_>) -> Result<Option<Order>> {
        let Some(order_id) = ctx.request_ctx()?.session().and_then(|s| s.active_order_id) else {
            return Ok(None);
        };
        Ok(services(ctx)?
            .orders
            .order_by_id(order_id)
            .await?
            .map(Order::one))
    }

    /// The logged-in user's live sessions (devices), newest first: at most `first` (0 to 100;
    /// 100 when absent), after the session whose `cursor` is `after`.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn my_sessions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Vec<Session>> {
        let s = require_user(ctx)?;
        let uid = s.user_id().unwrap_or_default();
        // Without `first` the whole list used to come back; 100 keeps that for any ordinary
        // user while bounding what one request can make the database return.
        let first = match first {
            Some(n) => page_size(Some(n))?,
            None => MY_SESSIONS_CAP,
        };
        let after = after.as_deref().map(decode_cursor).transpose()?;
        let rows = services(ctx)?
            .admin
            .sessions_of_user(uid, first, after)
            .await?;
        Ok(Session::list(rows))
    }

    /// Sessions newest first; expired and invalidated ones only when the filter asks. READ_SESSION.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn sessions(
        &self,
        ctx: &Context<'_>,
        filter: Option<SessionFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<SessionConnection> {
        let caller = require_caller(ctx, Permission::ReadSession)?;
        let first = page_size(first)?;
        let after = after.as_deref().map(decode_cursor).transpose()?;
        let f = match filter {
            Some(f) => SessionFilter {
                user_id: opt_id(&f.user_id, "user")?,
                kind: f.kind.map(|k| match k {
                    GqlSessionKind::Anonymous => crate::domain::SessionKind::Anonymous,
                    GqlSessionKind::Authenticated => crate::domain::SessionKind::Authenticated,
                }),
                channel_id: opt_id(&f.channel_id, "channel")?,
                active_order_id: opt_id(&f.active_order_id, "order")?,
                include_expired: f.include_expired.unwrap_or(false),
                include_invalidated: f.include_invalidated.unwrap_or(false),
            },
            None => SessionFilter::default(),
        };
        let asks = ctx.look_ahead();
        let page = services(ctx)?
            .admin
            .list_sessions(&caller, &f, first, after, asks.field("totalCount").exists())
            .await?;
        Ok(Connection::new(
            page,
            Session::list,
            asks.field("edges").exists(),
        ))
    }

    /// One session by id, live or not. READ_SESSION.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn session(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Session>> {
        let caller = require_caller(ctx, Permission::ReadSession)?;
        let id = parse_id(&id, "session")?;
        Ok(services(ctx)?
            .admin
            .session_by_id(&caller, id)
            .await?
            .map(Session::from_model))
    }

    /// Counts of sessions by state. READ_SESSION.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn session_stats(&self, ctx: &Context<'_>) -> Result<SessionStats> {
        let caller = require_caller(ctx, Permission::ReadSession)?;
        let (anonymous, authenticated, expired, invalidated) =
            services(ctx)?.admin.session_stats(&caller).await?;
        let clamp = |n: u64| n.min(i32::MAX as u64) as i32;
        Ok(SessionStats {
            anonymous: clamp(anonymous),
            authenticated: clamp(authenticated),
            expired_awaiting_cleanup: clamp(expired),
            invalidated: clamp(invalidated),
        })
    }

    /// Session events recorded in the channels where the caller holds READ_SESSION (every
    /// channel for a super admin), newest first: at most `first` (0 to 100, 20 when absent),
    /// after the event whose `cursor` is `after`.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn session_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<SessionEventFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<SessionEventConnection> {
        let caller = require_caller(ctx, Permission::ReadSession)?;
        let filter = filter.unwrap_or_default().validate()?;
        let asks = ctx.look_ahead();
        let req = PageRequest {
            first: page_size(first)?,
            after: after.as_deref().map(decode_cursor).transpose()?,
            with_total: asks.field("totalCount").exists(),
        };
        let page = services(ctx)?
            .events
            .list_session_events(&caller, &filter, req)
            .await?;
        Ok(connection(page, asks.field("edges").exists()))
    }

    /// The logged-in user's own events (logins with address and user agent, failed logins on
    /// their identifier, revocations, password changes), newest first; paged like
    /// `sessionEvents`.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn my_session_events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<SessionEventConnection> {
        let s = require_user(ctx)?;
        let uid = s.user_id().unwrap_or_default();
        let asks = ctx.look_ahead();
        let req = PageRequest {
            first: page_size(first)?,
            after: after.as_deref().map(decode_cursor).transpose()?,
            with_total: asks.field("totalCount").exists(),
        };
        let page = services(ctx)?.events.events_of_user(uid, req).await?;
        Ok(connection(page, asks.field("edges").exists()))
    }

    /// Users in id order. READ_USER.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<UserConnection> {
        let caller = require_caller(ctx, Permission::ReadUser)?;
        let first = page_size(first)?;
        let after = after.as_deref().map(decode_cursor).transpose()?;
        let asks = ctx.look_ahead();
        let page = services(ctx)?
            .directory
            .list_users(&caller, first, after, asks.field("totalCount").exists())
            .await?;
        Ok(Connection::new(
            page,
            User::list,
            asks.field("edges").exists(),
        ))
    }

    /// One user by id. READ_USER.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn user(&self, ctx: &Context<'_>, id: ID) -> Result<Option<User>> {
        let caller = require_caller(ctx, Permission::ReadUser)?;
        let id = parse_id(&id, "user")?;
        Ok(services(ctx)?
            .directory
            .visible_user(&caller, id)
            .await?
            .map(User::one))
    }

    /// Roles in the channels where the caller holds READ_USER.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn roles(&self, ctx: &Context<'_>) -> Result<Vec<Role>> {
        let caller = require_caller(ctx, Permission::ReadUser)?;
        Ok(Role::list(
            services(ctx)?.directory.list_roles(&caller).await?,
        ))
    }

    /// Every channel. READ_CHANNEL.
    async fn channels(&self, ctx: &Context<'_>) -> Result<Vec<Channel>> {
        require_permission(ctx, Permission::ReadChannel)?;
        Ok(services(ctx)?
            .directory
            .list_channels()
            .await?
            .into_iter()
            .map(|c| Channel(std::sync::Arc::new(c)))
            .collect())
    }
}
