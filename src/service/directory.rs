//! Users, roles and channels, and the cached channel lookups every request makes.
//!
//! Every change that affects a user's permissions drops that user's cached sessions, so it
//! takes effect on their next request. Admin operations take the [`Caller`] and ask `authz`
//! whether they may, before anything is written.

use super::auth::{check_identifier, validate_new_password, Passwords, MAX_IDENTIFIER_BYTES};
use super::authz::Authz;
use super::authz::{Caller, RoleGrant};
use super::events::Origin;
use super::paging::{page_by_id, IdOrder, Page, PageRequest};
use super::session::Sessions;
use crate::clock::now_ms;
use crate::coalesce::{BatchCall, Coalescer, Limits};
use crate::error::{AppError, AppResult};
use crate::events::EventType;
use crate::permission::{Permission, PermissionSet};
use entity::{channel, role, role_channel, session, user, user_role};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Channels never change once created, so lookups by token and id are cached for good.
///
/// A token the cache does not know is looked up in the database, and lookups that wait at the
/// same time go out together (see [`crate::coalesce`]): one statement at a time answers every
/// token presented meanwhile. A request flooded with made-up `channel-token`s, each one new,
/// therefore costs the database one statement in flight, not one per request; and since every
/// token is looked up after its request arrived, a channel created a moment ago (on any
/// instance) is found at once.
pub struct ChannelDirectory {
    by_token: quick_cache::sync::Cache<String, Arc<channel::Model>>,
    by_id: quick_cache::sync::Cache<i64, Arc<channel::Model>>,
    lookups: Coalescer<TokenLookups>,
}

/// Most tokens one lookup statement reads.
const TOKENS_PER_LOOKUP: usize = 64;
/// Most token lookups waiting for a statement; beyond, a request fails as if the database
/// were overloaded.
const TOKEN_LOOKUP_QUEUE: usize = 4096;

/// Most channels kept in process (all of them, for any real deployment).
const CACHED_CHANNELS: usize = 10_000;

/// The statement behind [`ChannelDirectory::by_token`]'s misses.
struct TokenLookups {
    db: DatabaseConnection,
    /// Longest a statement may run (a hung one would hold every lookup queued behind it).
    timeout: Duration,
}

/// A token's channel, or the lookup's failure (shared by the callers of one statement).
type TokenAnswer = Result<Option<channel::Model>, Arc<DbErr>>;

impl BatchCall for TokenLookups {
    type Key = String;
    type Answer = TokenAnswer;

    async fn call(&self, asked: Vec<String>, _waited: Duration) -> Vec<TokenAnswer> {
        // Each token once: callers presenting the same token share its answer.
        let mut tokens: Vec<&str> = asked.iter().map(String::as_str).collect();
        tokens.sort_unstable();
        tokens.dedup();
        let lookup = channel::Entity::find()
            .filter(channel::Column::Token.is_in(tokens))
            .all(&self.db);
        let found = match tokio::time::timeout(self.timeout, lookup).await {
            Ok(found) => found,
            Err(_) => Err(unavailable(format!(
                "a channel lookup took longer than DATABASE_TIMEOUT ({:?})",
                self.timeout
            ))),
        };
        match found {
            // One statement answers many callers: each gets the row whose token is exactly
            // its own (the column compares byte for byte since the `exact_codes` migration,
            // and tokens with surrounding spaces, which MariaDB would still pad, are never
            // looked up).
            Ok(rows) => asked
                .iter()
                .map(|t| Ok(rows.iter().find(|ch| &ch.token == t).cloned()))
                .collect(),
            Err(e) => vec![Err(Arc::new(e)); asked.len()],
        }
    }

    fn not_sent(why: &'static str) -> TokenAnswer {
        Err(Arc::new(unavailable(format!(
            "a channel lookup was not sent to the database: {why}"
        ))))
    }
}

/// An error that `is_unavailable` classifies as such (`SERVICE_UNAVAILABLE`), with its cause.
fn unavailable(cause: String) -> DbErr {
    DbErr::Conn(sea_orm::RuntimeErr::Internal(cause))
}

/// A shared lookup failure as the caller's own error: unavailable stays unavailable, with
/// its cause.
fn lookup_err(e: &DbErr) -> AppError {
    if crate::error::is_unavailable(e) {
        AppError::from(unavailable(format!("channel lookup: {e}")))
    } else {
        AppError::from(DbErr::Custom(format!("channel lookup failed: {e}")))
    }
}

/// Whether `code` is one that [`check_code`] keeps as it is (trimmed, 1 to 255 bytes, no
/// control characters): a channel token that is not cannot exist.
fn possible_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 255
        && code.trim() == code
        && !code.chars().any(char::is_control)
}

impl ChannelDirectory {
    /// Lookups of unknown tokens go to `db`, one statement at a time, each waiting at most
    /// `timeout` for its turn and running at most as long. `known` (every channel, read at
    /// start-up) is cached at once, so that only channels created later are ever looked up.
    pub fn new(
        db: DatabaseConnection,
        timeout: Duration,
        known: Vec<channel::Model>,
    ) -> ChannelDirectory {
        let limits = Limits {
            max_in_flight: 1,
            max_batch: TOKENS_PER_LOOKUP,
            queue: TOKEN_LOOKUP_QUEUE,
            max_wait: timeout,
        };
        let directory = ChannelDirectory {
            by_token: quick_cache::sync::Cache::new(CACHED_CHANNELS),
            by_id: quick_cache::sync::Cache::new(CACHED_CHANNELS),
            lookups: Coalescer::new(TokenLookups { db, timeout }, limits),
        };
        for ch in known {
            directory.remember(ch);
        }
        directory
    }

    /// Every channel, for [`ChannelDirectory::new`] (as many as it keeps).
    pub async fn load_all<C: ConnectionTrait>(db: &C) -> AppResult<Vec<channel::Model>> {
        Ok(channel::Entity::find()
            .order_by_asc(channel::Column::Id)
            .limit(CACHED_CHANNELS as u64)
            .all(db)
            .await?)
    }

    pub(crate) fn remember(&self, ch: channel::Model) -> Arc<channel::Model> {
        let ch = Arc::new(ch);
        self.by_token.insert(ch.token.clone(), ch.clone());
        self.by_id.insert(ch.id, ch.clone());
        ch
    }

    /// The channel whose token is `token`. A token no channel could have (empty, too long,
    /// with surrounding spaces, which creation trims, or control characters, which it
    /// refuses) is answered without a lookup.
    pub async fn by_token(&self, token: &str) -> AppResult<Option<Arc<channel::Model>>> {
        if let Some(ch) = self.by_token.get(token) {
            return Ok(Some(ch));
        }
        if !possible_code(token) {
            return Ok(None);
        }
        match self.lookups.ask(token.to_string()).await {
            Ok(found) => Ok(found.map(|ch| self.remember(ch))),
            Err(e) => Err(lookup_err(&e)),
        }
    }

    pub async fn by_id<C: ConnectionTrait>(
        &self,
        db: &C,
        id: i64,
    ) -> AppResult<Option<Arc<channel::Model>>> {
        if let Some(ch) = self.by_id.get(&id) {
            return Ok(Some(ch));
        }
        let found = channel::Entity::find_by_id(id).one(db).await?;
        Ok(found.map(|ch| self.remember(ch)))
    }
}

pub struct NewUser {
    pub identifier: String,
    pub password: String,
    pub verified: bool,
    pub role_ids: Vec<i64>,
}

pub struct UserChanges {
    pub id: i64,
    pub identifier: Option<String>,
    pub verified: Option<bool>,
    pub password: Option<String>,
}

pub struct NewRole {
    pub code: String,
    pub description: String,
    pub permissions: Vec<Permission>,
    pub channel_ids: Vec<i64>,
}

pub struct RoleChanges {
    pub id: i64,
    pub description: Option<String>,
    pub permissions: Option<Vec<Permission>>,
    pub channel_ids: Option<Vec<i64>>,
}

fn check_code(what: &str, code: &str) -> AppResult<String> {
    let code = code.trim();
    if !possible_code(code) {
        return Err(AppError::bad_input(format!(
            "{what} must be 1 to 255 bytes, without control characters"
        )));
    }
    Ok(code.to_string())
}

/// Longest role description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;

/// A role's description: free text of at most [`MAX_DESCRIPTION_BYTES`], line breaks and tabs
/// allowed, no other control characters (PostgreSQL refuses a NUL in text outright).
fn check_description(description: &str) -> AppResult<()> {
    if description.len() > MAX_DESCRIPTION_BYTES
        || description
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(AppError::bad_input(format!(
            "description must be at most {MAX_DESCRIPTION_BYTES} bytes, without control \
             characters other than line breaks and tabs"
        )));
    }
    Ok(())
}

/// The directory service: users, roles and channels, with the authorization rules for
/// changing them.
pub struct Directory {
    db: DatabaseConnection,
    /// Ends and drops sessions when an account changes.
    sessions: Sessions,
    authz: Authz,
    channels: Arc<ChannelDirectory>,
    passwords: Arc<Passwords>,
}

impl Directory {
    fn events(&self) -> &crate::events::EventLog {
        self.sessions.events()
    }

    pub(super) fn new(
        db: DatabaseConnection,
        sessions: Sessions,
        authz: Authz,
        channels: Arc<ChannelDirectory>,
        passwords: Arc<Passwords>,
    ) -> Directory {
        Directory {
            db,
            sessions,
            authz,
            channels,
            passwords,
        }
    }

    /// A channel by id (kept in process once read).
    pub async fn channel_by_id(&self, id: i64) -> AppResult<Option<Arc<channel::Model>>> {
        self.channels.by_id(&self.db, id).await
    }

    /// A channel by its token (kept in process once read).
    pub async fn channel_by_token(&self, token: &str) -> AppResult<Option<Arc<channel::Model>>> {
        self.channels.by_token(token).await
    }

    // ---- users ----

    pub async fn user_by_id(&self, id: i64) -> AppResult<Option<user::Model>> {
        Ok(user::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// A user by identifier, normalized as logins are.
    pub async fn user_by_identifier(&self, identifier: &str) -> AppResult<Option<user::Model>> {
        let identifier = entity::user::normalize_identifier(identifier);
        Ok(user::Entity::find()
            .filter(user::Column::Identifier.eq(identifier))
            .one(&self.db)
            .await?)
    }

    /// One user, if they hold a role in a channel where the caller holds `READ_USER`.
    pub async fn visible_user(&self, caller: &Caller, id: i64) -> AppResult<Option<user::Model>> {
        Ok(user::Entity::find_by_id(id)
            .filter(caller.scope(Permission::ReadUser).users())
            .one(&self.db)
            .await?)
    }

    /// Users holding a role in a channel where the caller holds `READ_USER`, in id order.
    pub async fn list_users(
        &self,
        caller: &Caller,
        first: u64,
        after: Option<i64>,
        with_total: bool,
    ) -> AppResult<Page<user::Model>> {
        let scope = caller.scope(Permission::ReadUser).users();
        let req = PageRequest {
            first,
            after,
            with_total,
        };
        let users = user::Entity::find().filter(scope);
        page_by_id(&self.db, users, user::Column::Id, IdOrder::Ascending, req).await
    }

    /// Creates a user with roles the caller may grant.
    pub async fn create_user(
        &self,
        caller: &Caller,
        new: NewUser,
        origin: &Origin,
    ) -> AppResult<user::Model> {
        let identifier = check_identifier(&new.identifier)?;
        if identifier.is_empty() {
            return Err(AppError::bad_input("identifier must not be empty"));
        }
        validate_new_password(&new.password)?;
        for r in self.authz.role_grants(&self.db, &new.role_ids).await? {
            self.authz
                .authorize_grant(caller, r.permissions, &r.channel_ids)?;
        }
        let hash = self.passwords.hash(&new.password).await?;
        let txn = self.db.begin().await?;
        // Checked again under the roles' locks: a concurrent `updateRole` waits, so the user
        // gets exactly the roles that were checked.
        for role_id in unique(&new.role_ids) {
            lock_role(&txn, role_id).await?;
        }
        let grants = self.authz.role_grants(&txn, &new.role_ids).await?;
        for r in &grants {
            self.authz
                .authorize_grant(caller, r.permissions, &r.channel_ids)?;
        }
        let created = user::Entity::insert(user::ActiveModel {
            identifier: Set(identifier),
            password_hash: Set(hash),
            verified: Set(new.verified),
            created_at: Set(now_ms()),
            last_login_at: Set(None),
            ..Default::default()
        })
        .exec_with_returning(&txn)
        .await
        .map_err(|e| AppError::conflict(e, "a user with this identifier"))?;
        link_roles(&txn, created.id, &new.role_ids).await?;
        let mut events = vec![origin
            .event(EventType::UserCreated)
            .user(Some(created.id))
            .identifier(&created.identifier)];
        for role in &grants {
            events.push(
                origin
                    .event(EventType::RoleAssigned)
                    .user(Some(created.id))
                    .reason(&role.role.code),
            );
        }
        let recorded = self.events().record(&txn, now_ms(), events).await?;
        txn.commit().await?;
        self.events().publish(recorded);
        Ok(created)
    }

    pub async fn update_user(
        &self,
        caller: &Caller,
        changes: UserChanges,
        origin: &Origin,
    ) -> AppResult<user::Model> {
        let existing = self
            .user_by_id(changes.id)
            .await?
            .ok_or_else(|| AppError::not_found("no such user"))?;
        self.authz
            .authorize_user_change(caller, existing.id)
            .await?;
        let mut model: user::ActiveModel = existing.clone().into();
        if let Some(identifier) = &changes.identifier {
            let identifier = check_identifier(identifier)?;
            if identifier.is_empty() {
                return Err(AppError::bad_input(format!(
                    "identifier must be 1 to {MAX_IDENTIFIER_BYTES} bytes"
                )));
            }
            model.identifier = Set(identifier);
        }
        if let Some(verified) = changes.verified {
            model.verified = Set(verified);
        }
        let mut ends_sessions = changes.verified == Some(false);
        if let Some(password) = &changes.password {
            validate_new_password(password)?;
            model.password_hash = Set(self.passwords.hash(password).await?);
            ends_sessions = true;
        }
        let ending =
            origin
                .event(EventType::SessionRevoked)
                .reason(if changes.password.is_some() {
                    "password_changed"
                } else {
                    "unverified"
                });
        // The user's sessions end in the change's transaction: a new password or a withdrawn
        // verification never lands without them ending.
        let (updated, ended, recorded) = super::retry_deadlocks(|| async {
            let txn = self.db.begin().await?;
            let updated = user::Entity::update(model.clone())
                .exec(&txn)
                .await
                .map_err(|e| AppError::conflict(e, "a user with this identifier"))?;
            let mut events = vec![origin
                .event(EventType::UserUpdated)
                .user(Some(updated.id))
                .identifier(&updated.identifier)];
            if changes.password.is_some() {
                events.push(
                    origin
                        .event(EventType::PasswordChanged)
                        .user(Some(updated.id))
                        .reason("admin"),
                );
            }
            let mut ended = None;
            if ends_sessions {
                let filter = sea_orm::Condition::all().add(session::Column::UserId.eq(updated.id));
                let (e, revoked) = self.sessions.end_in(&txn, filter, &ending).await?;
                events.extend(revoked);
                ended = Some(e);
            }
            let recorded = self.events().record(&txn, now_ms(), events).await?;
            txn.commit().await?;
            Ok((updated, ended, recorded))
        })
        .await?;
        self.events().publish(recorded);
        if let Some(ended) = ended {
            self.sessions.ended(ended).await;
        }
        self.sessions.invalidate_user(updated.id).await;
        Ok(updated)
    }

    pub async fn delete_user(&self, caller: &Caller, id: i64, origin: &Origin) -> AppResult<bool> {
        let Some(existing) = self.user_by_id(id).await? else {
            return Ok(false);
        };
        self.authz.authorize_user_change(caller, id).await?;
        if id == self.authz.superadmin_user_id {
            return Err(AppError::bad_input("the superadmin user cannot be deleted"));
        }
        let ending = origin
            .event(EventType::SessionRevoked)
            .reason("user_deleted");
        self.sessions.end_user_sessions(id, &ending).await?;
        let txn = self.db.begin().await?;
        // Explicit deletes, so the outcome does not depend on the backend enforcing cascades.
        session::Entity::delete_many()
            .filter(session::Column::UserId.eq(id))
            .exec(&txn)
            .await?;
        user_role::Entity::delete_many()
            .filter(user_role::Column::UserId.eq(id))
            .exec(&txn)
            .await?;
        entity::order::Entity::update_many()
            .col_expr(
                entity::order::Column::UserId,
                Expr::value(Option::<i64>::None),
            )
            .filter(entity::order::Column::UserId.eq(id))
            .exec(&txn)
            .await?;
        let deleted = user::Entity::delete_by_id(id).exec(&txn).await?;
        if deleted.rows_affected != 1 {
            // Deleted meanwhile by another request, which recorded it.
            txn.rollback().await?;
            self.sessions.invalidate_user(id).await;
            return Ok(false);
        }
        let event = origin
            .event(EventType::UserDeleted)
            .user(Some(id))
            .identifier(&existing.identifier);
        let recorded = self.events().record(&txn, now_ms(), vec![event]).await?;
        txn.commit().await?;
        self.events().publish(recorded);
        self.sessions.invalidate_user(id).await;
        Ok(true)
    }

    /// Gives a user a role the caller may grant; the user must be within the caller's reach or
    /// hold no role yet.
    pub async fn assign_role(
        &self,
        caller: &Caller,
        user_id: i64,
        role_id: i64,
        origin: &Origin,
    ) -> AppResult<user::Model> {
        let user = self
            .user_by_id(user_id)
            .await?
            .ok_or_else(|| AppError::not_found("no such user"))?;
        let role = self.one_role_grant(role_id).await?;
        self.authz.authorize_user_change(caller, user_id).await?;
        self.authz
            .authorize_grant(caller, role.permissions, &role.channel_ids)?;
        // Checked again under the role's lock: a concurrent `updateRole` waits, so what is
        // assigned is the role that was checked.
        let txn = self.db.begin().await?;
        lock_role(&txn, role_id).await?;
        let role = self
            .authz
            .role_grants(&txn, &[role_id])
            .await?
            .pop()
            .ok_or_else(|| AppError::not_found("no such role"))?;
        self.authz
            .authorize_grant(caller, role.permissions, &role.channel_ids)?;
        let held = user_role::Entity::find()
            .filter(user_role::Column::UserId.eq(user_id))
            .filter(user_role::Column::RoleId.eq(role_id))
            .one(&txn)
            .await?
            .is_some();
        let mut recorded = Vec::new();
        if !held {
            link_roles(&txn, user_id, &[role_id]).await?;
            let event = origin
                .event(EventType::RoleAssigned)
                .user(Some(user_id))
                .reason(&role.role.code);
            recorded = self.events().record(&txn, now_ms(), vec![event]).await?;
        }
        txn.commit().await?;
        self.events().publish(recorded);
        self.sessions.invalidate_user(user_id).await;
        Ok(user)
    }

    pub async fn remove_role(
        &self,
        caller: &Caller,
        user_id: i64,
        role_id: i64,
        origin: &Origin,
    ) -> AppResult<user::Model> {
        let user = self
            .user_by_id(user_id)
            .await?
            .ok_or_else(|| AppError::not_found("no such user"))?;
        let role = self.one_role_grant(role_id).await?;
        self.authz.authorize_user_change(caller, user_id).await?;
        self.authz
            .authorize_grant(caller, role.permissions, &role.channel_ids)?;
        if user_id == self.authz.superadmin_user_id && role_id == self.authz.super_admin_role_id {
            return Err(AppError::bad_input(
                "the superadmin user cannot lose the SUPER_ADMIN role",
            ));
        }
        let txn = self.db.begin().await?;
        let removed = user_role::Entity::delete_many()
            .filter(user_role::Column::UserId.eq(user_id))
            .filter(user_role::Column::RoleId.eq(role_id))
            .exec(&txn)
            .await?;
        let mut recorded = Vec::new();
        if removed.rows_affected > 0 {
            let event = origin
                .event(EventType::RoleRemoved)
                .user(Some(user_id))
                .reason(&role.role.code);
            recorded = self.events().record(&txn, now_ms(), vec![event]).await?;
        }
        txn.commit().await?;
        self.events().publish(recorded);
        self.sessions.invalidate_user(user_id).await;
        Ok(user)
    }

    // ---- roles ----

    async fn one_role_grant(&self, role_id: i64) -> AppResult<RoleGrant> {
        self.authz
            .role_grants(&self.db, &[role_id])
            .await?
            .pop()
            .ok_or_else(|| AppError::not_found("no such role"))
    }

    /// Roles linked to a channel where the caller holds `READ_USER`.
    pub async fn list_roles(&self, caller: &Caller) -> AppResult<Vec<role::Model>> {
        Ok(role::Entity::find()
            .filter(caller.scope(Permission::ReadUser).roles())
            .order_by_asc(role::Column::Id)
            .all(&self.db)
            .await?)
    }

    async fn require_channels(&self, channel_ids: &[i64]) -> AppResult<()> {
        for id in channel_ids {
            if self.channels.by_id(&self.db, *id).await?.is_none() {
                return Err(AppError::not_found(format!("channel {id} does not exist")));
            }
        }
        Ok(())
    }

    pub async fn create_role(
        &self,
        caller: &Caller,
        new: NewRole,
        origin: &Origin,
    ) -> AppResult<role::Model> {
        let code = check_code("role code", &new.code)?;
        check_description(&new.description)?;
        self.require_channels(&new.channel_ids).await?;
        let permissions: PermissionSet = new.permissions.into_iter().collect();
        self.authz
            .authorize_grant(caller, permissions, &new.channel_ids)?;
        let txn = self.db.begin().await?;
        let created = role::Entity::insert(role::ActiveModel {
            code: Set(code),
            description: Set(new.description),
            permissions: Set(permissions.to_stored()),
            created_at: Set(now_ms()),
            ..Default::default()
        })
        .exec_with_returning(&txn)
        .await
        .map_err(|e| AppError::conflict(e, "a role with this code"))?;
        link_channels(&txn, created.id, &new.channel_ids).await?;
        let event = origin.event(EventType::RoleChanged).reason(&created.code);
        let recorded = self.events().record(&txn, now_ms(), vec![event]).await?;
        txn.commit().await?;
        self.events().publish(recorded);
        Ok(created)
    }

    /// Changes a role the caller may grant, into one they may grant: before and after, they
    /// hold its permissions (and `WRITE_USER`) in each of its channels.
    pub async fn update_role(
        &self,
        caller: &Caller,
        changes: RoleChanges,
        origin: &Origin,
    ) -> AppResult<role::Model> {
        if let Some(description) = &changes.description {
            check_description(description)?;
        }
        if let Some(ids) = &changes.channel_ids {
            self.require_channels(ids).await?;
        }
        let permissions = changes
            .permissions
            .map(|p| p.into_iter().collect::<PermissionSet>());
        let txn = self.db.begin().await?;
        // The role row is locked first, so concurrent changes of one role wait for each other
        // and the state checked below is the one this change replaces: two changes each allowed
        // alone (one adding a permission, one moving the role) cannot combine into a role the
        // caller may not grant. A write first also spares SQLite a read-to-write upgrade.
        lock_role(&txn, changes.id).await?;
        let existing = self
            .authz
            .role_grants(&txn, &[changes.id])
            .await?
            .pop()
            .ok_or_else(|| AppError::not_found("no such role"))?;
        self.authz
            .authorize_grant(caller, existing.permissions, &existing.channel_ids)?;
        let new_permissions = permissions.unwrap_or(existing.permissions);
        let new_channels = unique(
            changes
                .channel_ids
                .as_deref()
                .unwrap_or(&existing.channel_ids),
        );
        self.authz
            .authorize_grant(caller, new_permissions, &new_channels)?;
        if changes.id == self.authz.super_admin_role_id {
            return Err(AppError::bad_input(
                "the SUPER_ADMIN role cannot be changed",
            ));
        }
        if new_permissions != existing.permissions || new_channels != unique(&existing.channel_ids)
        {
            // What a role grants is part of every holder's privileges: changing it is a change
            // to each of them, allowed only on users the caller may change (as `removeRole`).
            let holders: Vec<i64> = user_role::Entity::find()
                .select_only()
                .column(user_role::Column::UserId)
                .filter(user_role::Column::RoleId.eq(changes.id))
                .into_tuple()
                .all(&txn)
                .await?;
            self.authz
                .authorize_acting_on(&txn, caller, &holders)
                .await?;
        }
        let mut model: role::ActiveModel = existing.role.into();
        if let Some(description) = changes.description {
            model.description = Set(description);
        }
        if let Some(permissions) = permissions {
            model.permissions = Set(permissions.to_stored());
        }
        let updated = role::Entity::update(model).exec(&txn).await?;
        if let Some(ids) = &changes.channel_ids {
            role_channel::Entity::delete_many()
                .filter(role_channel::Column::RoleId.eq(updated.id))
                .exec(&txn)
                .await?;
            link_channels(&txn, updated.id, ids).await?;
        }
        let event = origin.event(EventType::RoleChanged).reason(&updated.code);
        let recorded = self.events().record(&txn, now_ms(), vec![event]).await?;
        txn.commit().await?;
        self.events().publish(recorded);
        self.invalidate_role_holders(updated.id).await?;
        Ok(updated)
    }

    /// Drops the cached sessions of everyone holding a role whose grants changed.
    async fn invalidate_role_holders(&self, role_id: i64) -> AppResult<()> {
        let holders: Vec<i64> = user_role::Entity::find()
            .select_only()
            .column(user_role::Column::UserId)
            .filter(user_role::Column::RoleId.eq(role_id))
            .into_tuple()
            .all(&self.db)
            .await?;
        for user_id in holders {
            self.sessions.invalidate_user(user_id).await;
        }
        Ok(())
    }

    // ---- channels ----

    pub async fn list_channels(&self) -> AppResult<Vec<channel::Model>> {
        Ok(channel::Entity::find()
            .order_by_asc(channel::Column::Id)
            .all(&self.db)
            .await?)
    }

    pub async fn create_channel(
        &self,
        code: &str,
        token: Option<&str>,
    ) -> AppResult<channel::Model> {
        let code = check_code("channel code", code)?;
        let token = match token {
            Some(t) => check_code("channel token", t)?,
            None => crate::token::random_string(16),
        };
        let txn = self.db.begin().await?;
        let created = channel::Entity::insert(channel::ActiveModel {
            code: Set(code),
            token: Set(token),
            created_at: Set(now_ms()),
            ..Default::default()
        })
        .exec_with_returning(&txn)
        .await
        .map_err(|e| AppError::conflict(e, "a channel with this code or token"))?;
        // The SUPER_ADMIN role covers every channel, like Vendure's.
        link_channels(&txn, self.authz.super_admin_role_id, &[created.id]).await?;
        txn.commit().await?;
        self.invalidate_role_holders(self.authz.super_admin_role_id)
            .await?;
        Ok(created)
    }
}

// ---- start-up: find or create, without authorization ----
//
// Start-up has no caller to check: these make sure a row exists, and are safe to run from several
// instances starting at once.

/// The row `find` finds, else the one `insert` creates. When another instance inserted it between
/// the two (the insert fails on the unique key), that instance's row; any other failure is
/// returned.
async fn find_or_insert<T, Find, Found, Insert, Inserted>(
    find: Find,
    insert: Insert,
) -> AppResult<T>
where
    Find: Fn() -> Found,
    Found: Future<Output = Result<Option<T>, DbErr>>,
    Insert: FnOnce() -> Inserted,
    Inserted: Future<Output = AppResult<T>>,
{
    if let Some(row) = find().await? {
        return Ok(row);
    }
    match insert().await {
        Ok(row) => Ok(row),
        Err(insert_failed) => find().await?.ok_or(insert_failed),
    }
}

/// The channel `code`, created (with a random token) when missing.
pub async fn ensure_channel<C: ConnectionTrait>(db: &C, code: &str) -> AppResult<channel::Model> {
    let find = || {
        channel::Entity::find()
            .filter(channel::Column::Code.eq(code))
            .one(db)
    };
    find_or_insert(find, || async {
        Ok(channel::Entity::insert(channel::ActiveModel {
            code: Set(code.to_string()),
            token: Set(crate::token::random_string(16)),
            created_at: Set(now_ms()),
            ..Default::default()
        })
        .exec_with_returning(db)
        .await?)
    })
    .await
}

/// The `SUPER_ADMIN` role: every permission, in every channel (`create_channel` links each new
/// channel to it).
pub async fn ensure_super_admin_role<C: ConnectionTrait>(db: &C) -> AppResult<role::Model> {
    let every_channel: Vec<i64> = channel::Entity::find()
        .select_only()
        .column(channel::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    ensure_role(
        db,
        "SUPER_ADMIN",
        "Super administrator: every permission in every channel",
        Permission::ALL.into_iter().collect(),
        &every_channel,
    )
    .await
}

/// The role `code`, created with `description` and `permissions` when missing (an existing
/// role is left as it is), and linked to `channel_ids`.
async fn ensure_role<C: ConnectionTrait>(
    db: &C,
    code: &str,
    description: &str,
    permissions: PermissionSet,
    channel_ids: &[i64],
) -> AppResult<role::Model> {
    let find = || {
        role::Entity::find()
            .filter(role::Column::Code.eq(code))
            .one(db)
    };
    let role = find_or_insert(find, || async {
        Ok(role::Entity::insert(role::ActiveModel {
            code: Set(code.to_string()),
            description: Set(description.to_string()),
            permissions: Set(permissions.to_stored()),
            created_at: Set(now_ms()),
            ..Default::default()
        })
        .exec_with_returning(db)
        .await?)
    })
    .await?;
    link_channels(db, role.id, channel_ids).await?;
    Ok(role)
}

/// The first user (lowest id) holding role `role_id`: the superadmin created on the first start,
/// whatever it has been renamed to since (it can be neither deleted nor lose the role).
pub async fn first_holder_of<C: ConnectionTrait>(
    db: &C,
    role_id: i64,
) -> AppResult<Option<user::Model>> {
    let Some(link) = user_role::Entity::find()
        .filter(user_role::Column::RoleId.eq(role_id))
        .order_by_asc(user_role::Column::UserId)
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    Ok(user::Entity::find_by_id(link.user_id).one(db).await?)
}

/// The verified user `identifier` (normalized as logins are), created with `password` when
/// missing (an existing user keeps theirs), holding `role_ids`.
pub async fn ensure_user<C: ConnectionTrait>(
    db: &C,
    passwords: &Passwords,
    identifier: &str,
    password: &str,
    role_ids: &[i64],
) -> AppResult<user::Model> {
    let identifier = check_identifier(identifier)?;
    let find = || {
        user::Entity::find()
            .filter(user::Column::Identifier.eq(identifier.as_str()))
            .one(db)
    };
    let user = find_or_insert(find, || async {
        let hash = passwords.hash(password).await?;
        Ok(user::Entity::insert(user::ActiveModel {
            identifier: Set(identifier.clone()),
            password_hash: Set(hash),
            verified: Set(true),
            created_at: Set(now_ms()),
            last_login_at: Set(None),
            ..Default::default()
        })
        .exec_with_returning(db)
        .await?)
    })
    .await?;
    link_roles(db, user.id, role_ids).await?;
    Ok(user)
}

async fn link_roles<C: ConnectionTrait>(db: &C, user_id: i64, role_ids: &[i64]) -> AppResult<()> {
    let rows: Vec<user_role::ActiveModel> = unique(role_ids)
        .into_iter()
        .map(|role_id| user_role::ActiveModel {
            user_id: Set(user_id),
            role_id: Set(role_id),
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    user_role::Entity::insert_many(rows)
        .on_conflict_do_nothing_on([user_role::Column::UserId, user_role::Column::RoleId])
        .exec(db)
        .await?;
    Ok(())
}

/// Takes the write lock of a role's row for the rest of the transaction (a no-op update).
async fn lock_role<C: ConnectionTrait>(db: &C, role_id: i64) -> AppResult<()> {
    role::Entity::update_many()
        .col_expr(role::Column::Code, Expr::col(role::Column::Code))
        .filter(role::Column::Id.eq(role_id))
        .exec(db)
        .await?;
    Ok(())
}

async fn link_channels<C: ConnectionTrait>(
    db: &C,
    role_id: i64,
    channel_ids: &[i64],
) -> AppResult<()> {
    let rows: Vec<role_channel::ActiveModel> = unique(channel_ids)
        .into_iter()
        .map(|channel_id| role_channel::ActiveModel {
            role_id: Set(role_id),
            channel_id: Set(channel_id),
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    role_channel::Entity::insert_many(rows)
        .on_conflict_do_nothing_on([
            role_channel::Column::RoleId,
            role_channel::Column::ChannelId,
        ])
        .exec(db)
        .await?;
    Ok(())
}

fn unique(ids: &[i64]) -> Vec<i64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}
