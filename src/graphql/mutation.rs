//! Mutation resolvers: validate, call one service function, map the result.

use super::context::{
    clear_tokens, issue_tokens, origin, require_caller, require_permission, require_session,
    require_user, services, CtxExt,
};
use super::types::*;
use crate::error::AppError;
use crate::events::EventType;
use crate::permission::Permission;
use crate::service::auth::LoginOutcome;
use crate::service::directory::{NewRole, NewUser, RoleChanges, UserChanges};
use crate::service::session_admin::Revocation;
use crate::service::session_data::DataChange;
use async_graphql::{Context, Json, Object, Result, ID};

pub struct Mutation;

fn ids(list: &[ID], what: &str) -> Result<Vec<i64>, AppError> {
    list.iter().map(|i| parse_id(i, what)).collect()
}

#[Object]
impl Mutation {
    /// Starts an anonymous session; returns the current session instead if there is one.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn create_anonymous_session(&self, ctx: &Context<'_>) -> Result<Session> {
        let req = ctx.request_ctx()?;
        if let Some(s) = req.session() {
            return Ok(Session::from_cached(&s));
        }
        let svc = services(ctx)?;
        let channel =
            (req.channel.id != svc.sessions.default_channel().id).then_some(req.channel.id);
        let issued = svc
            .sessions
            .create_anonymous_session(&origin(ctx)?, channel)
            .await?;
        issue_tokens(ctx, &issued)?;
        Ok(Session::from_cached(&issued.session))
    }

    /// Logs in with an identifier and password; always issues a new session token.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn login(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
        remember_me: Option<bool>,
    ) -> Result<LoginResult> {
        let req = ctx.request_ctx()?;
        req.one_password_check()?;
        let svc = services(ctx)?;
        let outcome = svc
            .auth
            .login(
                &username,
                &password,
                remember_me.unwrap_or(false),
                req.session(),
                &origin(ctx)?,
            )
            .await?;
        Ok(match outcome {
            LoginOutcome::Success { issued, user } => {
                issue_tokens(ctx, &issued)?;
                LoginResult::AuthenticationSuccess(AuthenticationSuccess {
                    user: CurrentUser::Owned(user),
                    session: Session::from_cached(&issued.session),
                })
            }
            LoginOutcome::InvalidCredentials => {
                LoginResult::InvalidCredentialsError(InvalidCredentialsError {
                    error_code: "INVALID_CREDENTIALS_ERROR".into(),
                    message: "the identifier or password is not correct".into(),
                })
            }
            LoginOutcome::NotVerified => LoginResult::NotVerifiedError(NotVerifiedError {
                error_code: "NOT_VERIFIED_ERROR".into(),
                message: "this account has not been verified".into(),
            }),
            LoginOutcome::TooManyAttempts {
                retry_after_seconds,
            } => LoginResult::TooManyAttemptsError(TooManyAttemptsError {
                error_code: "TOO_MANY_ATTEMPTS_ERROR".into(),
                message: "too many failed logins; try again later".into(),
                retry_after_seconds: retry_after_seconds.min(i32::MAX as i64) as i32,
            }),
        })
    }

    /// Ends this session only. False when there was no session.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn logout(&self, ctx: &Context<'_>) -> Result<bool> {
        let req = ctx.request_ctx()?;
        let Some(s) = req.session() else {
            clear_tokens(ctx)?;
            return Ok(false);
        };
        let ending = origin(ctx)?.event(EventType::LoggedOut).reason("logout");
        let ended = services(ctx)?
            .admin
            .revoke_session(s.id, None, &ending)
            .await?;
        req.set_session(None);
        clear_tokens(ctx)?;
        Ok(ended)
    }

    /// Ends every session of the logged-in user; returns how many were live.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn logout_everywhere(&self, ctx: &Context<'_>) -> Result<i32> {
        let s = require_user(ctx)?;
        let ending = origin(ctx)?
            .event(EventType::LoggedOut)
            .reason("logout_everywhere");
        let n = services(ctx)?
            .sessions
            .end_user_sessions(s.user_id().unwrap_or_default(), &ending)
            .await?;
        ctx.request_ctx()?.set_session(None);
        clear_tokens(ctx)?;
        Ok(n.min(i32::MAX as u64) as i32)
    }

    /// Rotates the session and refresh tokens (argument, else the `session_refresh` cookie).
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn refresh_session(
        &self,
        ctx: &Context<'_>,
        refresh_token: Option<String>,
    ) -> Result<RefreshSessionResult> {
        let req = ctx.request_ctx()?;
        let presented = refresh_token
            .or_else(|| req.refresh_cookie.clone())
            .unwrap_or_default();
        let svc = services(ctx)?;
        Ok(match svc.sessions.refresh_session(&presented, &origin(ctx)?).await? {
            Ok(issued) => {
                issue_tokens(ctx, &issued)?;
                let user = CurrentUser::of_session(&issued.session)
                    .ok_or_else(|| AppError::internal("refreshed session has no user"))?;
                RefreshSessionResult::AuthenticationSuccess(AuthenticationSuccess {
                    user,
                    session: Session::from_cached(&issued.session),
                })
            }
            Err(reason) => {
                RefreshSessionResult::InvalidRefreshTokenError(InvalidRefreshTokenError {
                    error_code: "INVALID_REFRESH_TOKEN_ERROR".into(),
                    message: match reason {
                        crate::service::session::RefreshFailure::Unknown => {
                            "the refresh token is not valid"
                        }
                        crate::service::session::RefreshFailure::Expired => {
                            "the session has expired"
                        }
                        crate::service::session::RefreshFailure::Superseded => {
                            "the refresh token was already used; use the newest one"
                        }
                        crate::service::session::RefreshFailure::Reused => {
                            "a superseded refresh token was reused; the session has been revoked"
                        }
                    }
                    .into(),
                    reason: reason.into(),
                })
            }
        })
    }

    /// Changes the caller's password and ends their other sessions.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> Result<bool> {
        let s = require_user(ctx)?;
        ctx.request_ctx()?.one_password_check()?;
        services(ctx)?
            .auth
            .change_password(&s, &current_password, &new_password, &origin(ctx)?)
            .await?;
        Ok(true)
    }

    /// Revokes one of the caller's own sessions (a device). False if it is not theirs.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn revoke_my_session(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let s = require_user(ctx)?;
        let id = parse_id(&id, "session")?;
        let ending = origin(ctx)?.event(EventType::SessionRevoked).reason("user");
        let revoked = services(ctx)?
            .admin
            .revoke_session(id, s.user_id(), &ending)
            .await?;
        if revoked && id == s.id {
            ctx.request_ctx()?.set_session(None);
            clear_tokens(ctx)?;
        }
        Ok(revoked)
    }

    /// Sets the session's active channel.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn set_active_channel(&self, ctx: &Context<'_>, token: String) -> Result<Session> {
        let s = require_session(ctx)?;
        let svc = services(ctx)?;
        let ch = svc
            .directory
            .channel_by_token(&token)
            .await?
            .ok_or_else(|| AppError::not_found("no channel has this token"))?;
        let updated = svc
            .sessions
            .set_active(&s, crate::service::ActiveChange::Channel(Some(ch.id)))
            .await?;
        ctx.request_ctx()?.set_session(Some(updated.clone()));
        Ok(Session::from_cached(&updated))
    }

    /// Writes the top-level keys of `set` into the session's data (merged, not replaced) and
    /// removes the keys in `unset`. With `expectedVersion`, applies only if `dataVersion` is
    /// still that (else CONFLICT, nothing changes). Keys are 1 to 64 characters and the data, as
    /// JSON, at most SESSION_DATA_MAX_BYTES (else BAD_USER_INPUT, nothing changes). Starts an
    /// anonymous session first when there is none (its token is returned as for createOrder).
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn update_session_data(
        &self,
        ctx: &Context<'_>,
        set: Option<Json<serde_json::Value>>,
        unset: Option<Vec<String>>,
        expected_version: Option<i32>,
    ) -> Result<Session> {
        let req = ctx.request_ctx()?;
        let svc = services(ctx)?;
        let set = match set.map(|j| j.0) {
            None | Some(serde_json::Value::Null) => Default::default(),
            Some(serde_json::Value::Object(map)) => map,
            Some(_) => return Err(AppError::bad_input("set must be a JSON object").into()),
        };
        let change = DataChange {
            set,
            unset: unset.unwrap_or_default(),
            expected_version: expected_version.map(i64::from),
        };
        // Everything that can be refused is refused before a session is started for it.
        change.validate()?;
        let s = match req.session() {
            Some(s) => s,
            None => {
                let size = serde_json::Value::Object(change.set.clone())
                    .to_string()
                    .len();
                let max = svc.config().session_data_max_bytes;
                if size > max {
                    return Err(AppError::bad_input(format!(
                        "the session data would be {size} bytes as JSON; at most {max} are allowed"
                    ))
                    .into());
                }
                if change.expected_version.is_some_and(|v| v != 0) {
                    return Err(AppError::version_conflict(
                        "there is no session yet: its data is at version 0",
                    )
                    .into());
                }
                let channel =
                    (req.channel.id != svc.sessions.default_channel().id).then_some(req.channel.id);
                let issued = svc
                    .sessions
                    .create_anonymous_session(&origin(ctx)?, channel)
                    .await?;
                issue_tokens(ctx, &issued)?;
                issued.session
            }
        };
        let updated = svc.sessions.update_session_data(&s, change).await?;
        req.set_session(Some(updated.clone()));
        Ok(Session::from_cached(&updated))
    }

    /// Creates an ACTIVE order owned by the caller and makes it the active order; starts an
    /// anonymous session first when there is none.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn create_order(&self, ctx: &Context<'_>) -> Result<Order> {
        let req = ctx.request_ctx()?;
        let svc = services(ctx)?;
        let s = match req.session() {
            Some(s) => s,
            None => {
                let channel =
                    (req.channel.id != svc.sessions.default_channel().id).then_some(req.channel.id);
                let issued = svc
                    .sessions
                    .create_anonymous_session(&origin(ctx)?, channel)
                    .await?;
                issue_tokens(ctx, &issued)?;
                issued.session
            }
        };
        let (order, updated) = svc.orders.create_order(&s, req.channel.id).await?;
        req.set_session(Some(updated));
        Ok(Order::one(order))
    }

    /// Makes one of the caller's orders the active order.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn set_active_order(&self, ctx: &Context<'_>, order_id: ID) -> Result<Session> {
        let s = require_session(ctx)?;
        let order_id = parse_id(&order_id, "order")?;
        let updated = services(ctx)?.orders.set_active_order(&s, order_id).await?;
        ctx.request_ctx()?.set_session(Some(updated.clone()));
        Ok(Session::from_cached(&updated))
    }

    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn unset_active_order(&self, ctx: &Context<'_>) -> Result<Session> {
        let s = require_session(ctx)?;
        let updated = services(ctx)?.orders.unset_active_order(&s).await?;
        ctx.request_ctx()?.set_session(Some(updated.clone()));
        Ok(Session::from_cached(&updated))
    }

    /// Moves the active order to PLACED and unsets it.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn place_order(&self, ctx: &Context<'_>) -> Result<Order> {
        let s = require_session(ctx)?;
        let svc = services(ctx)?;
        let order = svc.orders.place_order(&s).await?;
        ctx.request_ctx()?.set_session(Some(std::sync::Arc::new(
            s.with_active(None, s.active_channel_id),
        )));
        Ok(Order::one(order))
    }

    /// REVOKE_SESSION. False when there is no such live session within the caller's channels.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn revoke_session(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let caller = require_caller(ctx, Permission::RevokeSession)?;
        let id = parse_id(&id, "session")?;
        let n = services(ctx)?
            .admin
            .revoke_as(&caller, Revocation::Session(id), &origin(ctx)?)
            .await?;
        Ok(n > 0)
    }

    /// REVOKE_SESSION. Returns how many live sessions were ended.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn revoke_sessions_by_user(&self, ctx: &Context<'_>, user_id: ID) -> Result<i32> {
        let caller = require_caller(ctx, Permission::RevokeSession)?;
        let user_id = parse_id(&user_id, "user")?;
        let n = services(ctx)?
            .admin
            .revoke_as(&caller, Revocation::User(user_id), &origin(ctx)?)
            .await?;
        Ok(n.min(i32::MAX as u64) as i32)
    }

    /// REVOKE_SESSION. Returns how many live sessions were ended.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn revoke_sessions_by_active_order(
        &self,
        ctx: &Context<'_>,
        order_id: ID,
    ) -> Result<i32> {
        let caller = require_caller(ctx, Permission::RevokeSession)?;
        let order_id = parse_id(&order_id, "order")?;
        let n = services(ctx)?
            .admin
            .revoke_as(&caller, Revocation::ActiveOrder(order_id), &origin(ctx)?)
            .await?;
        Ok(n.min(i32::MAX as u64) as i32)
    }

    /// REVOKE_SESSION. Deletes expired and invalidated sessions of the channels where the
    /// caller holds it (and, for a super admin, session events past EVENT_RETENTION); returns
    /// how many sessions.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn clean_up_expired_sessions(&self, ctx: &Context<'_>) -> Result<i32> {
        let caller = require_caller(ctx, Permission::RevokeSession)?;
        let n = services(ctx)?.clean_up_as(&caller).await?;
        Ok(n.min(i32::MAX as u64) as i32)
    }

    /// SUPER_ADMIN. Empties the session cache; sessions are re-read from the database.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn clear_session_cache(&self, ctx: &Context<'_>) -> Result<bool> {
        require_permission(ctx, Permission::SuperAdmin)?;
        services(ctx)?.sessions.clear_cache().await?;
        Ok(true)
    }

    /// WRITE_USER.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn create_user(&self, ctx: &Context<'_>, input: CreateUserInput) -> Result<User> {
        let caller = require_caller(ctx, Permission::WriteUser)?;
        let role_ids = ids(input.role_ids.as_deref().unwrap_or_default(), "role")?;
        let created = services(ctx)?
            .directory
            .create_user(
                &caller,
                NewUser {
                    identifier: input.identifier,
                    password: input.password,
                    verified: input.verified.unwrap_or(true),
                    role_ids,
                },
                &origin(ctx)?,
            )
            .await?;
        Ok(User::one(created))
    }

    /// WRITE_USER. Setting `verified: false` or a new password ends the user's sessions.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn update_user(&self, ctx: &Context<'_>, input: UpdateUserInput) -> Result<User> {
        let caller = require_caller(ctx, Permission::WriteUser)?;
        let id = parse_id(&input.id, "user")?;
        let updated = services(ctx)?
            .directory
            .update_user(
                &caller,
                UserChanges {
                    id,
                    identifier: input.identifier,
                    verified: input.verified,
                    password: input.password,
                },
                &origin(ctx)?,
            )
            .await?;
        Ok(User::one(updated))
    }

    /// WRITE_USER. Deletes the user and ends their sessions.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn delete_user(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let caller = require_caller(ctx, Permission::WriteUser)?;
        let id = parse_id(&id, "user")?;
        Ok(services(ctx)?
            .directory
            .delete_user(&caller, id, &origin(ctx)?)
            .await?)
    }

    /// WRITE_USER.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn create_role(&self, ctx: &Context<'_>, input: CreateRoleInput) -> Result<Role> {
        let caller = require_caller(ctx, Permission::WriteUser)?;
        let channel_ids = ids(&input.channel_ids, "channel")?;
        let created = services(ctx)?
            .directory
            .create_role(
                &caller,
                NewRole {
                    code: input.code,
                    description: input.description.unwrap_or_default(),
                    permissions: input.permissions,
                    channel_ids,
                },
                &origin(ctx)?,
            )
            .await?;
        Ok(Role::one(created))
    }

    /// WRITE_USER. Takes effect on the next request of every holder of the role.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn update_role(&self, ctx: &Context<'_>, input: UpdateRoleInput) -> Result<Role> {
        let caller = require_caller(ctx, Permission::WriteUser)?;
        let id = parse_id(&input.id, "role")?;
        let channel_ids = input
            .channel_ids
            .as_deref()
            .map(|l| ids(l, "channel"))
            .transpose()?;
        let updated = services(ctx)?
            .directory
            .update_role(
                &caller,
                RoleChanges {
                    id,
                    description: input.description,
                    permissions: input.permissions,
                    channel_ids,
                },
                &origin(ctx)?,
            )
            .await?;
        Ok(Role::one(updated))
    }

    /// WRITE_USER.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn assign_role(&self, ctx: &Context<'_>, user_id: ID, role_id: ID) -> Result<User> {
        let caller = require_caller(ctx, Permission::WriteUser)?;
        let user_id = parse_id(&user_id, "user")?;
        let role_id = parse_id(&role_id, "role")?;
        Ok(User::one(
            services(ctx)?
                .directory
                .assign_role(&caller, user_id, role_id, &origin(ctx)?)
                .await?,
        ))
    }

    /// WRITE_USER.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn remove_role(&self, ctx: &Context<'_>, user_id: ID, role_id: ID) -> Result<User> {
        let caller = require_caller(ctx, Permission::WriteUser)?;
        let user_id = parse_id(&user_id, "user")?;
        let role_id = parse_id(&role_id, "role")?;
        Ok(User::one(
            services(ctx)?
                .directory
                .remove_role(&caller, user_id, role_id, &origin(ctx)?)
                .await?,
        ))
    }

    /// WRITE_CHANNEL. The token is generated when not given.
    #[graphql(complexity = "super::DB_FIELD + child_complexity")]
    async fn create_channel(
        &self,
        ctx: &Context<'_>,
        input: CreateChannelInput,
    ) -> Result<Channel> {
        require_permission(ctx, Permission::WriteChannel)?;
        let created = services(ctx)?
            .directory
            .create_channel(&input.code, input.token.as_deref())
            .await?;
        Ok(Channel(std::sync::Arc::new(created)))
    }
}
