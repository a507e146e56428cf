//! Who is calling: the session a request presents and the channel it runs in, found with one
//! call before any resolver runs.

use super::session::{Activity, Sessions};
use crate::domain::CachedSession;
use crate::error::{AppError, AppResult};
use crate::permission::PermissionSet;
use crate::token::TokenHash;
use entity::channel;
use std::sync::Arc;

/// The session and channel of one request.
pub struct Identity {
    /// The live session the token names; `None` without a token or for a dead one.
    pub session: Option<Arc<CachedSession>>,
    /// The `channel-token` header's channel, else the session's active channel, else the
    /// default channel.
    pub channel: Arc<channel::Model>,
}

impl Identity {
    /// What the session's user holds in the request's channel (every permission for a super
    /// admin, who passes every check); nothing for anonymous sessions.
    pub fn permissions(&self) -> PermissionSet {
        match &self.session {
            Some(s) => permissions_in(s, self.channel.id),
            None => PermissionSet::default(),
        }
    }
}

/// What `session`'s user holds in channel `channel_id`, as permission checks see it.
pub fn permissions_in(session: &CachedSession, channel_id: i64) -> PermissionSet {
    match &session.user {
        Some(u) if u.is_super_admin() => PermissionSet::all(),
        Some(u) => u.permissions_in(channel_id),
        None => PermissionSet::default(),
    }
}

impl Sessions {
    /// Resolves the presented token (cache first, then the database) and the channel. Both
    /// come from memory on a warm cache: channels are kept in process once read.
    ///
    /// An unknown `channel_token` is `NOT_FOUND`: a request must not silently run in another
    /// channel than the one it names.
    pub async fn identify(
        &self,
        token: Option<&TokenHash>,
        channel_token: Option<&str>,
    ) -> AppResult<Identity> {
        self.identify_as(token, channel_token, Activity::Slide)
            .await
    }

    /// [`Self::identify`], moving the session's activity forward or not: a live subscription's
    /// periodic re-check observes the session without keeping it from idling out.
    pub async fn identify_as(
        &self,
        token: Option<&TokenHash>,
        channel_token: Option<&str>,
        activity: Activity,
    ) -> AppResult<Identity> {
        let session = match token {
            Some(hash) => self.resolve(hash, activity).await.inspect_err(|_| {
                self.metrics.error("database");
            })?,
            None => None,
        };
        let channel = match channel_token {
            Some(token) => self
                .channels
                .by_token(token)
                .await?
                .ok_or_else(|| AppError::not_found("no channel has this channel-token"))?,
            None => match session.as_ref().and_then(|s| s.active_channel_id) {
                // A session's channel that no longer exists falls back to the default.
                Some(id) => self
                    .channels
                    .by_id(&self.db, id)
                    .await?
                    .unwrap_or_else(|| self.default_channel.clone()),
                None => self.default_channel.clone(),
            },
        };
        Ok(Identity { session, channel })
    }
}
