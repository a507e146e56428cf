//! Orders and the session's active order.

use super::retry_deadlocks;
use super::session::{ActiveChange, Sessions};
use crate::cache::WriteTicket;
use crate::clock::now_ms;
use crate::domain::CachedSession;
use crate::error::{AppError, AppResult};
use entity::{order, session};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};
use std::sync::Arc;

pub const ACTIVE: &str = "ACTIVE";
pub const PLACED: &str = "PLACED";
pub const CANCELLED: &str = "CANCELLED";

/// The caller's orders: their user's, or this guest session's.
fn mine(s: &CachedSession) -> Condition {
    match s.user_id() {
        Some(uid) => Condition::any()
            .add(order::Column::UserId.eq(uid))
            .add(order::Column::SessionId.eq(s.id)),
        None => Condition::all()
            .add(order::Column::UserId.is_null())
            .add(order::Column::SessionId.eq(s.id)),
    }
}

/// The order service: orders and a session's active order.
pub struct Orders {
    db: sea_orm::DatabaseConnection,
    sessions: Sessions,
}

impl Orders {
    pub(super) fn new(db: sea_orm::DatabaseConnection, sessions: Sessions) -> Orders {
        Orders { db, sessions }
    }

    pub async fn order_by_id(&self, id: i64) -> AppResult<Option<order::Model>> {
        Ok(order::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// Creates an `ACTIVE` order owned by the caller and makes it the session's active order.
    /// One transaction: if the session was revoked meanwhile, no order is left behind
    /// (`UNAUTHENTICATED`).
    pub async fn create_order(
        &self,
        s: &CachedSession,
        channel_id: i64,
    ) -> AppResult<(order::Model, Arc<CachedSession>)> {
        retry_deadlocks(|| self.insert_active_order(s, channel_id)).await
    }

    async fn insert_active_order(
        &self,
        s: &CachedSession,
        channel_id: i64,
    ) -> AppResult<(order::Model, Arc<CachedSession>)> {
        let now = now_ms();
        let txn = self.db.begin().await?;
        // Check the session is live and lock its row before the insert: the order's foreign key
        // would take a shared lock on the row, which two concurrent creations then both try to
        // upgrade (a deadlock on MySQL). On error the transaction rolls back as it is dropped.
        self.sessions
            .write_active(&txn, s, ActiveChange::Lock)
            .await?;
        let created = order::Entity::insert(order::ActiveModel {
            code: Set(crate::token::random_string(12).to_uppercase()),
            state: Set(ACTIVE.into()),
            user_id: Set(s.user_id()),
            session_id: Set(if s.user.is_some() { None } else { Some(s.id) }),
            channel_id: Set(channel_id),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        })
        .exec_with_returning(&txn)
        .await?;
        self.sessions
            .write_active(&txn, s, ActiveChange::Order(Some(created.id)))
            .await?;
        let updated = self.sessions.commit_through(txn, s).await?;
        Ok((created, updated))
    }

    /// Locks one of the caller's orders for the rest of `txn` and checks that it is `ACTIVE`.
    /// The lock is a write of the state to itself, limited to the caller's orders (another
    /// caller's order is `NOT_FOUND` and unchanged): a write lock on every backend (SQLite has
    /// no `FOR UPDATE`), and one that PostgreSQL's foreign-key checks from session rows do not
    /// wait for.
    async fn lock_active_order(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        s: &CachedSession,
        order_id: i64,
        missing: &'static str,
    ) -> AppResult<order::Model> {
        let locked = order::Entity::update_many()
            .col_expr(order::Column::State, Expr::col(order::Column::State))
            .filter(order::Column::Id.eq(order_id))
            .filter(mine(s))
            .exec(txn)
            .await?;
        if locked.rows_affected == 0 {
            return Err(AppError::not_found(missing));
        }
        // Locked above, so still the caller's.
        let o = order::Entity::find_by_id(order_id)
            .one(txn)
            .await?
            .ok_or_else(|| AppError::not_found(missing))?;
        if o.state != ACTIVE {
            return Err(AppError::bad_input(format!(
                "the order is {}, not ACTIVE",
                o.state
            )));
        }
        Ok(o)
    }

    /// Makes one of the caller's `ACTIVE` orders the session's active order. Locks the session
    /// row, then the order (the order of `placeOrder` and of the login's carry-over), so a
    /// concurrent `placeOrder` either finishes first (then this is `BAD_USER_INPUT`) or waits
    /// and then finds this session among the order's holders.
    pub async fn set_active_order(
        &self,
        s: &CachedSession,
        order_id: i64,
    ) -> AppResult<Arc<CachedSession>> {
        retry_deadlocks(|| async {
            let txn = self.db.begin().await?;
            self.sessions
                .write_active(&txn, s, ActiveChange::Lock)
                .await?;
            self.lock_active_order(&txn, s, order_id, "no such order among yours")
                .await?;
            self.sessions
                .write_active(&txn, s, ActiveChange::Order(Some(order_id)))
                .await?;
            self.sessions.commit_through(txn, s).await
        })
        .await
    }

    pub async fn unset_active_order(&self, s: &CachedSession) -> AppResult<Arc<CachedSession>> {
        self.sessions.set_active(s, ActiveChange::Order(None)).await
    }

    /// Moves the session's active order to `PLACED` and unsets it on every session that has it
    /// active. One transaction, which first locks the caller's row (a session revoked meanwhile
    /// is `UNAUTHENTICATED` and places nothing), then the order, then its holders' rows.
    pub async fn place_order(&self, s: &CachedSession) -> AppResult<order::Model> {
        let (placed, holders, ticket) = retry_deadlocks(|| self.place_active_order(s)).await?;
        // In a task of its own: a request dropped after the commit still drops the entries.
        let store = self.sessions.store.clone();
        let _ = tokio::spawn(async move {
            for hash in holders
                .iter()
                .filter_map(|h| crate::token::TokenHash::from_hex(h))
            {
                store.invalidate_written(&hash, ticket).await;
            }
        })
        .await;
        Ok(placed)
    }

    async fn place_active_order(
        &self,
        s: &CachedSession,
    ) -> AppResult<(order::Model, Vec<String>, WriteTicket)> {
        let txn = self.db.begin().await?;
        self.sessions
            .write_active(&txn, s, ActiveChange::Lock)
            .await?;
        // The order the row has active now (the request's copy may be older).
        let order_id: Option<i64> = session::Entity::find_by_id(s.id)
            .select_only()
            .column(session::Column::ActiveOrderId)
            .into_tuple::<Option<i64>>()
            .one(&txn)
            .await?
            .flatten();
        let order_id =
            order_id.ok_or_else(|| AppError::bad_input("there is no active order to place"))?;
        let o = self
            .lock_active_order(&txn, s, order_id, "the active order no longer exists")
            .await?;
        let now = now_ms();
        order::Entity::update_many()
            .col_expr(order::Column::State, Expr::value(PLACED))
            .col_expr(order::Column::UpdatedAt, Expr::value(now))
            .filter(order::Column::Id.eq(o.id))
            .exec(&txn)
            .await?;
        let holders: Vec<String> = session::Entity::find()
            .select_only()
            .column(session::Column::TokenHash)
            .filter(session::Column::ActiveOrderId.eq(o.id))
            .lock_exclusive()
            .into_tuple()
            .all(&txn)
            .await?;
        // Taken while the holders' rows are locked: a write of one of them that committed
        // before, caching late, cannot undo the drop below.
        let ticket = self.sessions.store.write_ticket();
        // Revoked rows stay as they are: nothing may write to a revoked session.
        super::session::revise_sessions()
            .col_expr(
                session::Column::ActiveOrderId,
                Expr::value(Option::<i64>::None),
            )
            .filter(session::Column::ActiveOrderId.eq(o.id))
            .filter(session::Column::Invalidated.eq(false))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        let placed = order::Model {
            state: PLACED.into(),
            updated_at: now,
            ..o
        };
        Ok((placed, holders, ticket))
    }
}
