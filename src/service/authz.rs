//! Who may do what. Every admin operation of the service layer takes the [`Caller`] (their
//! permissions per channel) and decides here: which sessions, users and roles a permission
//! reaches (the channels of the roles that grant it), and who may grant or touch what.

use crate::domain::CachedUser;
use crate::error::{AppError, AppResult};
use crate::permission::{Permission, PermissionSet};
use entity::{role, role_channel, session, user, user_role};
use sea_orm::sea_query::{Expr, Query, SelectStatement};
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, ExprTrait, QueryFilter};
use std::collections::HashMap;

/// The permissions someone holds in one channel (through the roles linked to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub channel_id: i64,
    pub permissions: PermissionSet,
}

/// The channels in which a permission is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A super admin: every channel.
    All,
    Channels(Vec<i64>),
}

/// The user making an admin request, with what they hold where (from their cached session, so
/// it is as fresh as any permission check).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: i64,
    /// Holds `SUPER_ADMIN` in some channel: passes every rule and reaches everything.
    super_admin: bool,
    grants: Vec<Grant>,
}

impl Caller {
    pub fn new(user_id: i64, grants: Vec<Grant>) -> Caller {
        let super_admin = grants
            .iter()
            .any(|g| g.permissions.contains(Permission::SuperAdmin));
        Caller {
            user_id,
            super_admin,
            grants,
        }
    }

    pub fn of(user: &CachedUser) -> Caller {
        Caller::new(
            user.id,
            user.channels
                .iter()
                .map(|c| Grant {
                    channel_id: c.channel_id,
                    permissions: c.permissions,
                })
                .collect(),
        )
    }

    pub fn is_super_admin(&self) -> bool {
        self.super_admin
    }

    /// What the caller holds in a channel (everything, for a super admin).
    pub fn permissions_in(&self, channel_id: i64) -> PermissionSet {
        if self.super_admin {
            return PermissionSet::all();
        }
        self.grants
            .iter()
            .filter(|g| g.channel_id == channel_id)
            .fold(PermissionSet::default(), |acc, g| acc.union(g.permissions))
    }

    pub fn holds(&self, permission: Permission, channel_id: i64) -> bool {
        self.permissions_in(channel_id).contains(permission)
    }

    /// The channels where the caller holds `permission`.
    pub fn scope(&self, permission: Permission) -> Scope {
        if self.super_admin {
            return Scope::All;
        }
        let mut ids: Vec<i64> = self
            .grants
            .iter()
            .filter(|g| g.permissions.contains(permission))
            .map(|g| g.channel_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Scope::Channels(ids)
    }

    /// Whether the caller may create, change, assign or remove a role granting `permissions` in
    /// `channels`: they hold all of them, and `WRITE_USER`, in each of those channels.
    /// `SUPER_ADMIN` only a super admin holds, so only a super admin grants it.
    pub fn may_grant(&self, permissions: PermissionSet, channels: &[i64]) -> bool {
        if self.super_admin {
            return true;
        }
        if permissions.contains(Permission::SuperAdmin) {
            return false;
        }
        let mut needed = permissions;
        needed.insert(Permission::WriteUser);
        channels
            .iter()
            .all(|ch| self.permissions_in(*ch).contains_all(needed))
    }

    /// Whether the caller holds, channel by channel, everything `target` holds (so acting on the
    /// target cannot touch a privilege the caller lacks). A target holding `SUPER_ADMIN` is
    /// outranked by super admins only.
    pub fn outranks(&self, target: &[Grant]) -> bool {
        self.super_admin
            || target.iter().all(|g| {
                self.permissions_in(g.channel_id)
                    .contains_all(g.permissions)
            })
    }

    /// Whether the target holds a role in a channel where the caller holds `permission`.
    pub fn reaches(&self, permission: Permission, target: &[Grant]) -> bool {
        self.super_admin || target.iter().any(|g| self.holds(permission, g.channel_id))
    }
}

impl Scope {
    /// Sessions active in these channels; a session without an active channel is in the
    /// default channel.
    pub fn sessions(&self, default_channel_id: i64) -> Condition {
        match self {
            Scope::All => Condition::all(),
            Scope::Channels(ids) => {
                let mut cond =
                    Condition::any().add(session::Column::ActiveChannelId.is_in(ids.clone()));
                if ids.contains(&default_channel_id) {
                    cond = cond.add(session::Column::ActiveChannelId.is_null());
                }
                cond
            }
        }
    }

    /// Users holding a role in these channels.
    pub fn users(&self) -> Condition {
        match self {
            Scope::All => Condition::all(),
            Scope::Channels(ids) => Condition::all().add(
                user::Column::Id.in_subquery(
                    Query::select()
                        .column((user_role::Entity, user_role::Column::UserId))
                        .from(user_role::Entity)
                        .inner_join(
                            role_channel::Entity,
                            Expr::col((role_channel::Entity, role_channel::Column::RoleId))
                                .equals((user_role::Entity, user_role::Column::RoleId)),
                        )
                        .and_where(
                            Expr::col((role_channel::Entity, role_channel::Column::ChannelId))
                                .is_in(ids.clone()),
                        )
                        .to_owned(),
                ),
            ),
        }
    }

    /// Roles linked to at least one of these channels.
    pub fn roles(&self) -> Condition {
        match self {
            Scope::All => Condition::all(),
            Scope::Channels(ids) => Condition::all().add(
                role::Column::Id.in_subquery(
                    Query::select()
                        .column(role_channel::Column::RoleId)
                        .from(role_channel::Entity)
                        .and_where(Expr::col(role_channel::Column::ChannelId).is_in(ids.clone()))
                        .to_owned(),
                ),
            ),
        }
    }
}

/// A role as the rules see it: what it grants and where.
pub struct RoleGrant {
    pub role: role::Model,
    pub permissions: PermissionSet,
    pub channel_ids: Vec<i64>,
}

fn forbidden_grant() -> AppError {
    AppError::forbidden(
        "you can only grant permissions you hold, with WRITE_USER, in every channel of the role; \
         SUPER_ADMIN only a super admin grants",
    )
}

/// The authorization rules that need the bootstrap's ids: who outranks whom, who may grant
/// what, which sessions a caller's permission reaches.
#[derive(Clone)]
pub struct Authz {
    db: sea_orm::DatabaseConnection,
    /// Id of the `SUPER_ADMIN` role.
    pub(super) super_admin_role_id: i64,
    /// Id of the superadmin user, who cannot be deleted or lose that role.
    pub(super) superadmin_user_id: i64,
    /// Sessions without an active channel are in this one.
    pub(super) default_channel_id: i64,
}

impl Authz {
    pub(super) fn new(
        db: sea_orm::DatabaseConnection,
        super_admin_role_id: i64,
        superadmin_user_id: i64,
        default_channel_id: i64,
    ) -> Authz {
        Authz {
            db,
            super_admin_role_id,
            superadmin_user_id,
            default_channel_id,
        }
    }

    /// The sessions a caller's `permission` reaches.
    pub(crate) fn session_scope(&self, caller: &Caller, permission: Permission) -> Condition {
        caller.scope(permission).sessions(self.default_channel_id)
    }

    /// What each of `user_ids` holds, per channel, in one query (users without roles in any
    /// channel are absent).
    pub(crate) async fn grants_of<C: ConnectionTrait>(
        &self,
        db: &C,
        user_ids: &[i64],
    ) -> AppResult<HashMap<i64, Vec<Grant>>> {
        let mut out: HashMap<i64, Vec<Grant>> = HashMap::new();
        if user_ids.is_empty() {
            return Ok(out);
        }
        let stmt: SelectStatement = Query::select()
            .column((user_role::Entity, user_role::Column::UserId))
            .column((role_channel::Entity, role_channel::Column::ChannelId))
            .column((role::Entity, role::Column::Permissions))
            .from(user_role::Entity)
            .inner_join(
                role::Entity,
                Expr::col((role::Entity, role::Column::Id))
                    .equals((user_role::Entity, user_role::Column::RoleId)),
            )
            .inner_join(
                role_channel::Entity,
                Expr::col((role_channel::Entity, role_channel::Column::RoleId))
                    .equals((user_role::Entity, user_role::Column::RoleId)),
            )
            .and_where(
                Expr::col((user_role::Entity, user_role::Column::UserId)).is_in(user_ids.to_vec()),
            )
            .to_owned();
        for row in db.query_all(&stmt).await? {
            let user_id: i64 = row.try_get("", "user_id")?;
            let channel_id: i64 = row.try_get("", "channel_id")?;
            let permissions =
                PermissionSet::from_stored(&row.try_get::<String>("", "permissions")?);
            let grants = out.entry(user_id).or_default();
            match grants.iter_mut().find(|g| g.channel_id == channel_id) {
                Some(g) => g.permissions = g.permissions.union(permissions),
                None => grants.push(Grant {
                    channel_id,
                    permissions,
                }),
            }
        }
        Ok(out)
    }

    /// `FORBIDDEN` unless the caller may change this user (password, flags, roles, deletion):
    /// the user holds a role in a channel where the caller holds `WRITE_USER`, and nothing the
    /// caller does not hold. A user with no role at all (a customer) is in no channel: only super
    /// admins change them, or a channel admin could give them a role and then take the account.
    ///
    /// Checked before the write, outside its transaction: on SQLite a transaction that reads
    /// before it writes can fail to take the write lock. A role granted to the target in between
    /// is a change only someone holding it could make.
    pub(crate) async fn authorize_user_change(
        &self,
        caller: &Caller,
        user_id: i64,
    ) -> AppResult<()> {
        if caller.is_super_admin() {
            return Ok(());
        }
        let grants = self
            .grants_of(&self.db, &[user_id])
            .await?
            .remove(&user_id)
            .unwrap_or_default();
        if !caller.reaches(Permission::WriteUser, &grants) {
            return Err(AppError::forbidden(
                "this user holds no role in a channel where you hold WRITE_USER",
            ));
        }
        if !caller.outranks(&grants) {
            return Err(AppError::forbidden(
                "this user holds permissions you do not hold; only a super admin can change them",
            ));
        }
        Ok(())
    }

    /// `FORBIDDEN` unless every one of `users` is outranked by the caller (see
    /// [`Caller::outranks`]): revoking the sessions of a more privileged user, or changing a
    /// role they hold, is refused.
    pub(crate) async fn authorize_acting_on<C: ConnectionTrait>(
        &self,
        db: &C,
        caller: &Caller,
        users: &[i64],
    ) -> AppResult<()> {
        if caller.is_super_admin() || users.is_empty() {
            return Ok(());
        }
        let grants = self.grants_of(db, users).await?;
        let outranked = users
            .iter()
            .all(|u| caller.outranks(grants.get(u).map(Vec::as_slice).unwrap_or_default()));
        if !outranked {
            return Err(AppError::forbidden(
                "a user concerned holds permissions you do not hold; only a super admin can do this",
            ));
        }
        Ok(())
    }

    /// `FORBIDDEN` unless the caller may grant `permissions` in `channels`.
    pub(crate) fn authorize_grant(
        &self,
        caller: &Caller,
        permissions: PermissionSet,
        channels: &[i64],
    ) -> AppResult<()> {
        if caller.may_grant(permissions, channels) {
            Ok(())
        } else {
            Err(forbidden_grant())
        }
    }

    /// The roles `role_ids` with their permissions and channels (two queries); `NOT_FOUND`
    /// when one does not exist.
    pub(crate) async fn role_grants<C: ConnectionTrait>(
        &self,
        db: &C,
        role_ids: &[i64],
    ) -> AppResult<Vec<RoleGrant>> {
        let mut ids = role_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let roles = role::Entity::find()
            .filter(role::Column::Id.is_in(ids.clone()))
            .all(db)
            .await?;
        if roles.len() != ids.len() {
            return Err(AppError::not_found(if ids.len() == 1 {
                "no such role"
            } else {
                "one or more roles do not exist"
            }));
        }
        let links = role_channel::Entity::find()
            .filter(role_channel::Column::RoleId.is_in(ids))
            .all(db)
            .await?;
        Ok(roles
            .into_iter()
            .map(|role| RoleGrant {
                permissions: PermissionSet::from_stored(&role.permissions),
                channel_ids: links
                    .iter()
                    .filter(|l| l.role_id == role.id)
                    .map(|l| l.channel_id)
                    .collect(),
                role,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ps: &[Permission]) -> PermissionSet {
        ps.iter().copied().collect()
    }

    fn grant(channel_id: i64, ps: &[Permission]) -> Grant {
        Grant {
            channel_id,
            permissions: set(ps),
        }
    }

    use Permission::*;

    #[test]
    fn permissions_hold_in_their_channels_only() {
        let c = Caller::new(7, vec![grant(2, &[ReadSession, WriteUser])]);
        assert!(!c.is_super_admin());
        assert!(c.holds(ReadSession, 2));
        assert!(!c.holds(ReadSession, 1));
        assert_eq!(c.scope(ReadSession), Scope::Channels(vec![2]));
        assert_eq!(c.scope(ReadUser), Scope::Channels(vec![]));
        let root = Caller::new(1, vec![grant(1, &[SuperAdmin])]);
        assert!(root.holds(ReadUser, 99));
        assert_eq!(root.scope(ReadUser), Scope::All);
    }

    #[test]
    fn grants_need_every_permission_and_write_user_in_every_channel() {
        let c = Caller::new(
            7,
            vec![
                grant(1, &[ReadSession, WriteUser]),
                grant(2, &[ReadSession]),
            ],
        );
        assert!(c.may_grant(set(&[ReadSession]), &[1]));
        assert!(c.may_grant(set(&[]), &[]));
        assert!(
            !c.may_grant(set(&[ReadSession]), &[1, 2]),
            "no WRITE_USER in 2"
        );
        assert!(!c.may_grant(set(&[ReadUser]), &[1]), "READ_USER not held");
        assert!(!c.may_grant(set(&[SuperAdmin]), &[]));
        let root = Caller::new(1, vec![grant(1, &[SuperAdmin])]);
        assert!(root.may_grant(set(&[SuperAdmin, ReadUser]), &[1, 2, 3]));
    }

    #[test]
    fn outranking_is_per_channel() {
        let c = Caller::new(7, vec![grant(1, &[ReadSession, WriteUser])]);
        assert!(c.outranks(&[]));
        assert!(c.outranks(&[grant(1, &[ReadSession])]));
        assert!(c.outranks(&[grant(1, &[])]));
        assert!(!c.outranks(&[grant(2, &[ReadSession])]));
        assert!(!c.outranks(&[grant(1, &[SuperAdmin])]));
        assert!(c.reaches(WriteUser, &[grant(1, &[])]));
        assert!(!c.reaches(WriteUser, &[grant(2, &[])]));
        assert!(!c.reaches(WriteUser, &[]));
    }
}
