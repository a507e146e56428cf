//! Orders and the session's active order.

use super::retry_deadlocks;
use super::session::Sessions;
use crate::cache::SessionStore;
use crate::clock::now_ms;
use crate::domain::CachedSession;
use crate::error::{AppError, AppResult};
use entity::{order, session};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QuerySelect, TransactionTrait,
};
use std::sync::Arc;

pub const ACTIVE: &str = "ACTIVE";
pub const PLACED: &str = "PLACED";
pub const CANCELLED: &str = "CANCELLED";

/// Whether the order belongs to the caller: their user, or this guest session.
fn owns(s: &CachedSession, o: &order::Model) -> bool {
    match s.user_id() {
        Some(uid) => o.user_id == Some(uid) || o.session_id == Some(s.id),
        None => o.user_id.is_none() && o.session_id == Some(s.id),
    }
}

/// The order service: orders and a session's active order.
pub struct Orders {
    db: sea_orm::DatabaseConnection,
    sessions: Sessions,
    store: Arc<SessionStore>,
}

impl Orders {
    pub(super) fn new(
        db: sea_orm::DatabaseConnection,
        sessions: Sessions,
        store: Arc<SessionStore>,
    ) -> Orders {
        Orders {
            db,
            sessions,
            store,
        }
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
        let created = retry_deadlocks(|| self.insert_active_order(s, channel_id)).await?;
        let updated = Arc::new(s.with_active(Some(created.id), s.active_channel_id));
        self.store.replace(updated.clone()).await;
        Ok((created, updated))
    }

    async fn insert_active_order(
        &self,
        s: &CachedSession,
        channel_id: i64,
    ) -> AppResult<order::Model> {
        let now = now_ms();
        let txn = self.db.begin().await?;
        // Check the session is live and lock its row before the insert: the order's foreign key
        // would take a shared lock on the row, which two concurrent creations then both try to
        // upgrade (a deadlock on MySQL). On error the transaction rolls back as it is dropped.
        self.sessions
            .write_active(&txn, s, s.active_order_id, s.active_channel_id)
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
            .write_active(&txn, s, Some(created.id), s.active_channel_id)
            .await?;
        txn.commit().await?;
        Ok(created)
    }

    pub async fn set_active_order(
        &self,
        s: &CachedSession,
        order_id: i64,
    ) -> AppResult<Arc<CachedSession>> {
        let o = self
            .order_by_id(order_id)
            .await?
            .filter(|o| owns(s, o))
            .ok_or_else(|| AppError::not_found("no such order among yours"))?;
        if o.state != ACTIVE {
            return Err(AppError::bad_input(format!(
                "the order is {}, not ACTIVE",
                o.state
            )));
        }
        self.sessions
            .set_active(s, Some(o.id), s.active_channel_id)
            .await
    }

    pub async fn unset_active_order(&self, s: &CachedSession) -> AppResult<Arc<CachedSession>> {
        self.sessions.set_active(s, None, s.active_channel_id).await
    }

    /// Moves the active order to `PLACED` and unsets it on every session that has it active.
    pub async fn place_order(&self, s: &CachedSession) -> AppResult<order::Model> {
        let order_id = s
            .active_order_id
            .ok_or_else(|| AppError::bad_input("there is no active order to place"))?;
        let o = self
            .order_by_id(order_id)
            .await?
            .filter(|o| owns(s, o))
            .ok_or_else(|| AppError::not_found("the active order no longer exists"))?;
        if o.state != ACTIVE {
            return Err(AppError::bad_input(format!(
                "the order is {}, not ACTIVE",
                o.state
            )));
        }
        let now = now_ms();
        let placed = order::Entity::update_many()
            .col_expr(order::Column::State, Expr::value(PLACED))
            .col_expr(order::Column::UpdatedAt, Expr::value(now))
            .filter(order::Column::Id.eq(o.id))
            .filter(order::Column::State.eq(ACTIVE))
            .exec(&self.db)
            .await?;
        if placed.rows_affected != 1 {
            return Err(AppError::bad_input(
                "the order was placed or changed concurrently",
            ));
        }
        let holders: Vec<String> = session::Entity::find()
            .select_only()
            .column(session::Column::TokenHash)
            .filter(session::Column::ActiveOrderId.eq(o.id))
            .into_tuple()
            .all(&self.db)
            .await?;
        // Revoked rows stay as they are: nothing may write to a revoked session.
        retry_deadlocks(|| async {
            session::Entity::update_many()
                .col_expr(
                    session::Column::ActiveOrderId,
                    Expr::value(Option::<i64>::None),
                )
                .filter(session::Column::ActiveOrderId.eq(o.id))
                .filter(session::Column::Invalidated.eq(false))
                .exec(&self.db)
                .await
                .map_err(AppError::from)
        })
        .await?;
        for hash in holders
            .iter()
            .filter_map(|h| crate::token::TokenHash::from_hex(h))
        {
            self.sessions.invalidate_token(&hash).await;
        }
        Ok(order::Model {
            state: PLACED.into(),
            updated_at: now,
            ..o
        })
    }
}
