//! The per-request GraphQL context (the caller's session, channel and connection info) and the
//! helpers resolvers use: permission checks (and the [`Caller`] handed to admin operations) and
//! issuing tokens as headers and cookies.

use crate::domain::CachedSession;
use crate::error::AppError;
use crate::permission::Permission;
use crate::service::authz::Caller;
use crate::service::{ClientInfo, Issued, SharedServices};
use async_graphql::Context;
use entity::channel;
use std::sync::{Arc, Mutex, PoisonError};

/// Where the request's token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Bearer,
    Cookie,
}

/// Where the request came from, kept raw: only mutations that create sessions need strings.
pub struct ClientSource {
    pub ip: Option<std::net::IpAddr>,
    pub user_agent: Option<axum::http::HeaderValue>,
}

impl ClientSource {
    /// The address and user agent as strings (the session layer caps what it stores).
    pub fn info(&self) -> ClientInfo {
        ClientInfo {
            ip_address: self.ip.map(|ip| ip.to_string()),
            user_agent: self
                .user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

pub struct RequestContext {
    /// The caller's session; replaced when a mutation logs in, out or refreshes.
    session: Mutex<Option<Arc<CachedSession>>>,
    /// The request's channel: `channel-token` header, else the session's, else the default.
    pub channel: Arc<channel::Model>,
    pub client: ClientSource,
    pub token_source: Option<TokenSource>,
    /// The `session_refresh` cookie, for `refreshSession` without an argument.
    pub refresh_cookie: Option<String>,
}

impl RequestContext {
    pub fn new(
        session: Option<Arc<CachedSession>>,
        channel: Arc<channel::Model>,
        client: ClientSource,
        token_source: Option<TokenSource>,
        refresh_cookie: Option<String>,
    ) -> Self {
        RequestContext {
            session: Mutex::new(session),
            channel,
            client,
            token_source,
            refresh_cookie,
        }
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

/// Session cookie attributes shared by setting and clearing.
fn cookie(
    name: &str,
    value: &str,
    same_site: &str,
    path: &str,
    secure: bool,
    max_age: Option<i64>,
) -> String {
    let mut c = format!("{name}={value}; HttpOnly; SameSite={same_site}; Path={path}");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

pub fn session_cookie(token: &str, secure: bool, max_age: Option<i64>) -> String {
    cookie("session", token, "Lax", "/", secure, max_age)
}

pub fn refresh_cookie(token: &str, secure: bool, max_age: Option<i64>) -> String {
    cookie(
        "session_refresh",
        token,
        "Strict",
        "/graphql",
        secure,
        max_age,
    )
}

/// Hands newly issued tokens to the client: `session-token` / `refresh-token` headers, and in
/// cookie mode the `session` / `session_refresh` cookies.
pub fn issue_tokens(ctx: &Context<'_>, issued: &Issued) -> Result<(), AppError> {
    let svc = services(ctx)?;
    let config = &svc.config;
    ctx.insert_http_header("session-token", issued.token.clone());
    if let Some(refresh) = &issued.refresh_token {
        ctx.insert_http_header("refresh-token", refresh.clone());
    }
    if config.token_method.cookie {
        let max_age = issued
            .session
            .remember_me
            .then_some(config.session_absolute_timeout.as_secs() as i64);
        ctx.append_http_header(
            "set-cookie",
            session_cookie(&issued.token, config.cookie_secure, max_age),
        );
        if let Some(refresh) = &issued.refresh_token {
            ctx.append_http_header(
                "set-cookie",
                refresh_cookie(refresh, config.cookie_secure, max_age),
            );
        }
    }
    ctx.request_ctx()?.set_session(Some(issued.session.clone()));
    Ok(())
}

/// Clears the session cookies (logout, or a dead token presented by cookie).
pub fn clear_cookies(ctx: &Context<'_>) -> Result<(), AppError> {
    let svc = services(ctx)?;
    if svc.config.token_method.cookie {
        let secure = svc.config.cookie_secure;
        ctx.append_http_header("set-cookie", session_cookie("", secure, Some(0)));
        ctx.append_http_header("set-cookie", refresh_cookie("", secure, Some(0)));
    }
    Ok(())
}
