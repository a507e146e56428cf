//! The per-request GraphQL context (the caller's session and channel, the client's address,
//! the tokens resolvers issued or cleared) and the helpers resolvers use: permission checks (and
//! the [`Caller`] handed to admin operations) and recording issued or cleared tokens, which the
//! HTTP layer writes as headers and cookies once execution ends.

use crate::domain::CachedSession;
use crate::error::AppError;
use crate::permission::Permission;
use crate::service::authz::Caller;
use crate::service::events::Origin;
use crate::service::{ClientInfo, Issued, SharedServices};
use async_graphql::Context;
use entity::channel;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The client's address and user agent, turned into strings only when asked: only mutations
/// that create sessions need them, and the transport decides where they come from.
pub struct LazyClientInfo(Box<dyn Fn() -> ClientInfo + Send + Sync>);

impl LazyClientInfo {
    pub fn new(read: impl Fn() -> ClientInfo + Send + Sync + 'static) -> Self {
        LazyClientInfo(Box::new(read))
    }

    /// The address and user agent as strings (the session layer caps what it stores).
    pub fn info(&self) -> ClientInfo {
        (self.0)()
    }
}

/// A change to the tokens the client holds, recorded by a resolver.
pub enum TokenChange {
    /// A session was created or rotated: hand the client these tokens.
    Issued {
        token: String,
        refresh_token: Option<String>,
        /// How long the client should keep them under remember-me (the session's absolute
        /// lifetime); `None` for as long as the client runs.
        remember_for: Option<Duration>,
    },
    /// The session ended: the client should forget its tokens.
    Cleared,
}

/// The token changes of one request, in the order resolvers made them. The HTTP layer keeps a
/// clone and writes them out once execution ends.
#[derive(Clone, Default)]
pub struct TokenChanges(Arc<Mutex<Vec<TokenChange>>>);

impl TokenChanges {
    fn record(&self, change: TokenChange) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(change);
    }

    /// The changes recorded so far, leaving none.
    pub fn take(&self) -> Vec<TokenChange> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

pub struct RequestContext {
    /// The caller's session; replaced when a mutation logs in, out or refreshes.
    session: Mutex<Option<Arc<CachedSession>>>,
    /// The request's channel: `channel-token` header, else the session's, else the default.
    pub channel: Arc<channel::Model>,
    /// The client's address and user agent, recorded on the sessions it creates.
    pub client: LazyClientInfo,
    /// The refresh token the client presented outside the query (the HTTP layer reads it from
    /// its cookie), for `refreshSession` without an argument.
    pub refresh_cookie: Option<String>,
    /// Tokens issued or cleared by this request's resolvers.
    tokens: TokenChanges,
    /// Whether a `login` or `changePassword` already ran in this request (see
    /// [`RequestContext::one_password_check`]).
    password_checked: std::sync::atomic::AtomicBool,
}

impl RequestContext {
    pub fn new(
        session: Option<Arc<CachedSession>>,
        channel: Arc<channel::Model>,
        client: LazyClientInfo,
        refresh_cookie: Option<String>,
        tokens: TokenChanges,
    ) -> Self {
        RequestContext {
            session: Mutex::new(session),
            channel,
            client,
            refresh_cookie,
            tokens,
            password_checked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// One password check per request: a second `login` or `changePassword` in one document
    /// (aliases) is `BAD_USER_INPUT` and checks nothing, so one request cannot multiply the
    /// attempts, events and webhook deliveries the throttle allows per request.
    pub fn one_password_check(&self) -> Result<(), AppError> {
        if self
            .password_checked
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Err(AppError::bad_input(
                "one login or changePassword per request",
            ));
        }
        Ok(())
    }

    pub fn session(&self) -> Option<Arc<CachedSession>> {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_session(&self, s: Option<Arc<CachedSession>>) {
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = s;
    }
}

pub trait CtxExt {
    fn request_ctx(&self) -> Result<&RequestContext, AppError>;
}

impl CtxExt for Context<'_> {
    fn request_ctx(&self) -> Result<&RequestContext, AppError> {
        self.data::<RequestContext>()
            .map_err(|_| AppError::internal("request context missing"))
    }
}

pub fn services<'a>(ctx: &Context<'a>) -> Result<&'a SharedServices, AppError> {
    ctx.data::<SharedServices>()
        .map_err(|_| AppError::internal("services missing from the schema"))
}

/// At most `max` characters of untrusted input, for error messages.
pub fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The caller's session, or `UNAUTHENTICATED`.
pub fn require_session(ctx: &Context<'_>) -> Result<Arc<CachedSession>, AppError> {
    ctx.request_ctx()?
        .session()
        .ok_or_else(|| AppError::unauthenticated("a session is required"))
}

/// The caller's session with a logged-in user, or `UNAUTHENTICATED`.
pub fn require_user(ctx: &Context<'_>) -> Result<Arc<CachedSession>, AppError> {
    ctx.request_ctx()?
        .session()
        .filter(|s| s.user.is_some())
        .ok_or_else(|| AppError::unauthenticated("you must be logged in"))
}

/// The caller's session if they hold `permission` in the request's channel (or `SUPER_ADMIN`).
pub fn require_permission(
    ctx: &Context<'_>,
    permission: Permission,
) -> Result<Arc<CachedSession>, AppError> {
    let s = require_user(ctx)?;
    let channel_id = ctx.request_ctx()?.channel.id;
    let allowed = s
        .user
        .as_ref()
        .is_some_and(|u| u.is_super_admin() || u.permissions_in(channel_id).contains(permission));
    if !allowed {
        return Err(AppError::forbidden(format!(
            "the {} permission is required in this channel",
            permission.name()
        )));
    }
    Ok(s)
}

/// The caller of an admin operation, once they hold `permission` in the request's channel; the
/// service decides what the operation may reach.
pub fn require_caller(ctx: &Context<'_>, permission: Permission) -> Result<Caller, AppError> {
    let s = require_permission(ctx, permission)?;
    s.user
        .as_deref()
        .map(Caller::of)
        .ok_or_else(|| AppError::unauthenticated("you must be logged in"))
}

/// Who makes this request and from where, for the events its changes record: the logged-in
/// user, the client's address and user agent, and the request's channel.
pub fn origin(ctx: &Context<'_>) -> Result<Origin, AppError> {
    let req = ctx.request_ctx()?;
    Ok(Origin {
        actor_user_id: req.session().and_then(|s| s.user_id()),
        client: req.client.info(),
        channel_id: Some(req.channel.id),
    })
}

/// Records newly issued tokens for the client and makes their session the request's.
pub fn issue_tokens(ctx: &Context<'_>, issued: &Issued) -> Result<(), AppError> {
    let config = &services(ctx)?.config();
    let req = ctx.request_ctx()?;
    req.tokens.record(TokenChange::Issued {
        token: issued.token.clone(),
        refresh_token: issued.refresh_token.clone(),
        remember_for: issued
            .session
            .remember_me
            .then_some(config.session_absolute_timeout),
    });
    req.set_session(Some(issued.session.clone()));
    Ok(())
}

/// Records that the client should forget its tokens: its session ended (logout, logout
/// everywhere, or the caller revoked it).
pub fn clear_tokens(ctx: &Context<'_>) -> Result<(), AppError> {
    ctx.request_ctx()?.tokens.record(TokenChange::Cleared);
    Ok(())
}
