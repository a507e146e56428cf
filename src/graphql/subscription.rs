//! The `Subscription` root: `sessionEvents(types)`, the live stream of session events for
//! callers holding `READ_SESSION`, served over WebSocket (see `http/websocket.rs`, which
//! authenticates the connection and hands over its [`LiveCredentials`]).

use super::context::{require_caller, services, CtxExt};
use super::events::{GqlSessionEventType, SessionEvent};
use crate::error::AppError;
use crate::events::live::{self, Audience};
use crate::permission::Permission;
use crate::service::authz::{Caller, Scope};
use crate::service::session::Activity;
use crate::service::SharedServices;
use crate::token::TokenHash;
use async_graphql::{Context, Result, Subscription as GqlSubscription};
use futures_util::{Stream, StreamExt};

pub struct Subscription;

/// What a WebSocket connection authenticated with, kept so its subscriptions can identify the
/// caller again while they run (a revoked or expired session, or a lost permission, ends them).
#[derive(Clone)]
pub struct LiveCredentials {
    pub token: TokenHash,
    /// The connection's `channel-token`, if it named a channel.
    pub channel_token: Option<String>,
}

/// The channels where the holder of `creds` may read sessions now, or why they may not:
/// `UNAUTHENTICATED` once their session has ended, `FORBIDDEN` without `READ_SESSION` in the
/// connection's channel. The session comes from the cache like any request's.
pub async fn live_scope(
    svc: &SharedServices,
    creds: &LiveCredentials,
    activity: Activity,
) -> Result<Scope, AppError> {
    let identity = svc
        .sessions
        .identify_as(Some(&creds.token), creds.channel_token.as_deref(), activity)
        .await?;
    if !identity.permissions().contains(Permission::ReadSession) {
        return Err(
            match identity.session.as_ref().and_then(|s| s.user.as_ref()) {
                None => AppError::unauthenticated(
                    "a live session of a logged-in user is required (it ended, or was never valid)",
                ),
                Some(_) => {
                    AppError::forbidden("the READ_SESSION permission is required in this channel")
                }
            },
        );
    }
    let user = identity
        .session
        .as_ref()
        .and_then(|s| s.user.as_deref())
        .ok_or_else(|| AppError::unauthenticated("you must be logged in"))?;
    Ok(Caller::of(user).scope(Permission::ReadSession))
}

#[GqlSubscription]
impl Subscription {
    /// Session events as they happen, on every instance: those of `types` (all when absent)
    /// in channels where the caller holds `READ_SESSION` (every channel for a super admin).
    /// The stream ends, with an error, when the caller's session ends or loses the permission,
    /// or when the subscriber falls too far behind.
    async fn session_events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<GqlSessionEventType>>,
    ) -> Result<impl Stream<Item = Result<SessionEvent>>> {
        require_caller(ctx, Permission::ReadSession)?;
        let svc = services(ctx)?.clone();
        let creds = ctx
            .data::<LiveCredentials>()
            .map_err(|_| AppError::unauthenticated("subscriptions are served over WebSocket"))?
            .clone();
        // The session as it is now, not as it was when the connection opened.
        let scope = live_scope(&svc, &creds, Activity::Slide).await?;
        let audience = Audience {
            types: types.map(|t| t.into_iter().map(Into::into).collect()),
            scope,
            default_channel_id: svc.sessions.default_channel().id,
            session_id: ctx.request_ctx()?.session().map(|s| s.id),
        };
        let recheck_svc = svc.clone();
        let recheck = move || {
            let svc = recheck_svc.clone();
            let creds = creds.clone();
            // The re-check observes: an open subscription alone does not keep the
            // session from idling out.
            async move { live_scope(&svc, &creds, Activity::Observe).await }
        };
        Ok(live::stream(svc.sessions.events().bus(), audience, recheck)
            .map(|item| item.map(SessionEvent).map_err(async_graphql::Error::from)))
    }
}
