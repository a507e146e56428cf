//! Related rows for many parents in one statement each, so that a listing of N sessions or
//! users costs a fixed number of statements rather than N (the GraphQL layer's per-request
//! batches call these; see `graphql::batch`).
//!
//! Every function returns an empty map without a statement when given no ids, and each id at
//! most once however often it is given.

use super::directory::ChannelDirectory;
use super::session::live_condition;
use super::session::Lifetimes;
use crate::clock::now_ms;
use crate::error::AppResult;
use entity::{channel, order, role, role_channel, session, user, user_role};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, JoinType, QueryFilter, QueryOrder, QuerySelect,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Ids without repeats, in order (stable statements for the database's plan cache).
fn distinct(ids: &[i64]) -> Vec<i64> {
    ids.iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// A role with the id of the user (or channel link) it was reached through.
#[derive(FromQueryResult)]
struct HeldRole {
    holder_id: i64,
    id: i64,
    code: String,
    description: String,
    permissions: String,
    created_at: i64,
}

/// A channel with the id of the role linked to it.
#[derive(FromQueryResult)]
struct LinkedChannel {
    holder_id: i64,
    id: i64,
    code: String,
    token: String,
    created_at: i64,
}

#[derive(FromQueryResult)]
struct UserCount {
    user_id: i64,
    n: i64,
}

/// Related rows of a listing (users, orders, roles, channels, session counts), for many
/// parents in one statement each.
pub struct Loads {
    db: sea_orm::DatabaseConnection,
    lifetimes: Lifetimes,
    channels: Arc<ChannelDirectory>,
}

impl Loads {
    pub(super) fn new(
        db: sea_orm::DatabaseConnection,
        lifetimes: Lifetimes,
        channels: Arc<ChannelDirectory>,
    ) -> Loads {
        Loads {
            db,
            lifetimes,
            channels,
        }
    }

    /// Users by id; ids of deleted users are absent.
    pub async fn users_by_ids(&self, ids: &[i64]) -> AppResult<HashMap<i64, user::Model>> {
        let ids = distinct(ids);
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = user::Entity::find()
            .filter(user::Column::Id.is_in(ids))
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|u| (u.id, u)).collect())
    }

    /// Orders by id; ids of deleted orders are absent.
    pub async fn orders_by_ids(&self, ids: &[i64]) -> AppResult<HashMap<i64, order::Model>> {
        let ids = distinct(ids);
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = order::Entity::find()
            .filter(order::Column::Id.is_in(ids))
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|o| (o.id, o)).collect())
    }

    /// Each user's roles in id order, in one statement (`role` joined with `user_role`).
    pub async fn roles_of_users(&self, ids: &[i64]) -> AppResult<HashMap<i64, Vec<role::Model>>> {
        let ids = distinct(ids);
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let held = role::Entity::find()
            .join_rev(JoinType::InnerJoin, user_role_to_role())
            .filter(user_role::Column::UserId.is_in(ids))
            .column_as(
                Expr::col((user_role::Entity, user_role::Column::UserId)),
                "holder_id",
            )
            .order_by_asc(role::Column::Id)
            .into_model::<HeldRole>()
            .all(&self.db)
            .await?;
        let mut out: HashMap<i64, Vec<role::Model>> = HashMap::new();
        for h in held {
            out.entry(h.holder_id).or_default().push(role::Model {
                id: h.id,
                code: h.code,
                description: h.description,
                permissions: h.permissions,
                created_at: h.created_at,
            });
        }
        Ok(out)
    }

    /// Each role's channels in id order, in one statement (`channel` joined with
    /// `role_channel`); the channels read are kept in process for the lookups of later requests.
    pub async fn channels_of_roles(
        &self,
        ids: &[i64],
    ) -> AppResult<HashMap<i64, Vec<Arc<channel::Model>>>> {
        let ids = distinct(ids);
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let linked = channel::Entity::find()
            .join_rev(JoinType::InnerJoin, role_channel_to_channel())
            .filter(role_channel::Column::RoleId.is_in(ids))
            .column_as(
                Expr::col((role_channel::Entity, role_channel::Column::RoleId)),
                "holder_id",
            )
            .order_by_asc(channel::Column::Id)
            .into_model::<LinkedChannel>()
            .all(&self.db)
            .await?;
        let mut out: HashMap<i64, Vec<Arc<channel::Model>>> = HashMap::new();
        for l in linked {
            let ch = self.channels.remember(channel::Model {
                id: l.id,
                code: l.code,
                token: l.token,
                created_at: l.created_at,
            });
            out.entry(l.holder_id).or_default().push(ch);
        }
        Ok(out)
    }

    /// How many live sessions each user has, in one grouped statement; users without one are
    /// absent (count 0).
    pub async fn live_session_counts(&self, user_ids: &[i64]) -> AppResult<HashMap<i64, u64>> {
        let ids = distinct(user_ids);
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = session::Entity::find()
            .select_only()
            .column(session::Column::UserId)
            .column_as(Expr::from(Func::count(Expr::col(session::Column::Id))), "n")
            .filter(live_condition(now_ms(), &self.lifetimes))
            .filter(session::Column::UserId.is_in(ids))
            .group_by(session::Column::UserId)
            .into_model::<UserCount>()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.user_id, r.n.max(0) as u64))
            .collect())
    }
}

/// `user_role.role_id → role.id`, for joining a user's roles.
fn user_role_to_role() -> sea_orm::RelationDef {
    user_role::Entity::belongs_to(role::Entity)
        .from(user_role::Column::RoleId)
        .to(role::Column::Id)
        .into()
}

/// `role_channel.channel_id → channel.id`, for joining a role's channels.
fn role_channel_to_channel() -> sea_orm::RelationDef {
    role_channel::Entity::belongs_to(channel::Entity)
        .from(role_channel::Column::ChannelId)
        .to(channel::Column::Id)
        .into()
}
