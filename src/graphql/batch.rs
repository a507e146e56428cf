//! Per-request batches against N+1 queries: the values of one listing share a batch, and the
//! first of them to resolve a related field (a session's user, a user's roles, a role's
//! channels, …) loads it for all of them in one statement; the others wait for that load and
//! read their part. Nothing waits on a timer, so the statement count of a request is fixed by
//! its shape, not by scheduling. A value resolved on its own is a batch of one.

use crate::error::AppResult;
use crate::service::Services;
use entity::{channel, order, role, user};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// A map loaded at most once, on first use, for every key of a batch.
struct Loaded<V>(OnceCell<HashMap<i64, V>>);

impl<V> Default for Loaded<V> {
    fn default() -> Self {
        Loaded(OnceCell::new())
    }
}

impl<V> Loaded<V> {
    async fn get<F, Fut>(&self, load: F) -> AppResult<&HashMap<i64, V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = AppResult<HashMap<i64, V>>>,
    {
        self.0.get_or_try_init(load).await
    }
}

/// Ids of a batch, without repeats.
fn ids(keys: impl IntoIterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = keys.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Users listed together (a page of users, or the users of a page of sessions or orders).
#[derive(Default)]
pub struct UserBatch {
    ids: Vec<i64>,
    roles: Loaded<Vec<role::Model>>,
    /// The batch every role of these users belongs to (so their channels load together).
    role_batch: OnceCell<Arc<RoleBatch>>,
    session_counts: Loaded<u64>,
}

impl UserBatch {
    pub fn new(ids: impl IntoIterator<Item = i64>) -> Arc<UserBatch> {
        Arc::new(UserBatch {
            ids: self::ids(ids),
            ..Default::default()
        })
    }

    /// The roles of one user of the batch, and the batch of all the batch's roles.
    pub async fn roles_of(
        &self,
        svc: &Services,
        user_id: i64,
    ) -> AppResult<(&[role::Model], Arc<RoleBatch>)> {
        let all = self
            .roles
            .get(|| svc.loads.roles_of_users(&self.ids))
            .await?;
        let batch = self
            .role_batch
            .get_or_init(|| async { RoleBatch::new(all.values().flatten().map(|r| r.id)) })
            .await
            .clone();
        Ok((all.get(&user_id).map(Vec::as_slice).unwrap_or(&[]), batch))
    }

    /// How many live sessions one user of the batch has.
    pub async fn live_sessions_of(&self, svc: &Services, user_id: i64) -> AppResult<u64> {
        let counts = self
            .session_counts
            .get(|| svc.loads.live_session_counts(&self.ids))
            .await?;
        Ok(counts.get(&user_id).copied().unwrap_or(0))
    }
}

/// Roles listed together.
#[derive(Default)]
pub struct RoleBatch {
    ids: Vec<i64>,
    channels: Loaded<Vec<Arc<channel::Model>>>,
}

impl RoleBatch {
    pub fn new(ids: impl IntoIterator<Item = i64>) -> Arc<RoleBatch> {
        Arc::new(RoleBatch {
            ids: self::ids(ids),
            ..Default::default()
        })
    }

    pub async fn channels_of(
        &self,
        svc: &Services,
        role_id: i64,
    ) -> AppResult<Vec<Arc<channel::Model>>> {
        let all = self
            .channels
            .get(|| svc.loads.channels_of_roles(&self.ids))
            .await?;
        Ok(all.get(&role_id).cloned().unwrap_or_default())
    }
}

/// The users a batch of sessions or orders points at, loaded together.
#[derive(Default)]
struct UsersOf {
    ids: Vec<i64>,
    rows: Loaded<user::Model>,
    batch: OnceCell<Arc<UserBatch>>,
}

impl UsersOf {
    fn new(ids: impl IntoIterator<Item = i64>) -> UsersOf {
        UsersOf {
            ids: self::ids(ids),
            ..Default::default()
        }
    }

    async fn get(
        &self,
        svc: &Services,
        user_id: i64,
    ) -> AppResult<Option<(user::Model, Arc<UserBatch>)>> {
        let rows = self.rows.get(|| svc.loads.users_by_ids(&self.ids)).await?;
        let batch = self
            .batch
            .get_or_init(|| async { UserBatch::new(rows.keys().copied()) })
            .await
            .clone();
        Ok(rows.get(&user_id).map(|u| (u.clone(), batch)))
    }
}

/// Sessions listed together (a page of `sessions` or `mySessions`).
#[derive(Default)]
pub struct SessionBatch {
    users: UsersOf,
    order_ids: Vec<i64>,
    orders: Loaded<order::Model>,
    order_batch: OnceCell<Arc<OrderBatch>>,
}

impl SessionBatch {
    /// A batch of sessions with these (user, active order) ids.
    pub fn new(
        user_ids: impl IntoIterator<Item = i64>,
        order_ids: impl IntoIterator<Item = i64>,
    ) -> Arc<SessionBatch> {
        Arc::new(SessionBatch {
            users: UsersOf::new(user_ids),
            order_ids: ids(order_ids),
            ..Default::default()
        })
    }

    pub async fn user(
        &self,
        svc: &Services,
        user_id: i64,
    ) -> AppResult<Option<(user::Model, Arc<UserBatch>)>> {
        self.users.get(svc, user_id).await
    }

    pub async fn order(
        &self,
        svc: &Services,
        order_id: i64,
    ) -> AppResult<Option<(order::Model, Arc<OrderBatch>)>> {
        let rows = self
            .orders
            .get(|| svc.loads.orders_by_ids(&self.order_ids))
            .await?;
        let batch = self
            .order_batch
            .get_or_init(|| async { OrderBatch::new(rows.values().filter_map(|o| o.user_id)) })
            .await
            .clone();
        Ok(rows.get(&order_id).map(|o| (o.clone(), batch)))
    }
}

/// Orders listed together.
#[derive(Default)]
pub struct OrderBatch {
    users: UsersOf,
}

impl OrderBatch {
    pub fn new(user_ids: impl IntoIterator<Item = i64>) -> Arc<OrderBatch> {
        Arc::new(OrderBatch {
            users: UsersOf::new(user_ids),
        })
    }

    pub async fn user(
        &self,
        svc: &Services,
        user_id: i64,
    ) -> AppResult<Option<(user::Model, Arc<UserBatch>)>> {
        self.users.get(svc, user_id).await
    }
}
