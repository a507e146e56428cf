//! The admin view of sessions: filtered listings with cursor pagination, statistics,
//! revocation, and the clean-up of expired and invalidated sessions. Listings, statistics and
//! revocations reach only sessions active in the caller's channels (see `authz`).

use super::authz::Authz;
use super::authz::Caller;
use super::events::Origin;
use super::paging::{page_by_id, IdOrder, Page, PageRequest};
use super::retry_deadlocks;
use super::session::live_condition;
use super::session::{Lifetimes, Sessions};
use crate::clock::now_ms;
use crate::config::Config;
use crate::domain::SessionKind;
use crate::error::AppResult;
use crate::events::{EventType, NewEvent};
use crate::metrics::Metrics;
use crate::permission::Permission;
use entity::session;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use std::sync::Arc;

/// Filters of the `sessions` listing (already validated).
#[derive(Default)]
pub struct SessionFilter {
    pub user_id: Option<i64>,
    pub kind: Option<SessionKind>,
    pub channel_id: Option<i64>,
    pub active_order_id: Option<i64>,
    pub include_expired: bool,
    pub include_invalidated: bool,
}

/// The sessions an admin revocation names.
#[derive(Clone, Copy, Debug)]
pub enum Revocation {
    Session(i64),
    User(i64),
    ActiveOrder(i64),
    /// Every session (the command line's `sessions revoke --all`).
    All,
}

/// The admin service over sessions: listings, statistics, revocations, the expiry clean-up.
pub struct SessionAdmin {
    db: sea_orm::DatabaseConnection,
    sessions: Sessions,
    authz: Authz,
    lifetimes: Lifetimes,
    /// `CLEANUP_BATCH_SIZE`.
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl SessionAdmin {
    pub(super) fn new(
        db: sea_orm::DatabaseConnection,
        sessions: Sessions,
        authz: Authz,
        lifetimes: Lifetimes,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> SessionAdmin {
        SessionAdmin {
            db,
            sessions,
            authz,
            lifetimes,
            config,
            metrics,
        }
    }

    fn filter_condition(&self, f: &SessionFilter, now: i64) -> Condition {
        let mut cond = Condition::all();
        if let Some(id) = f.user_id {
            cond = cond.add(session::Column::UserId.eq(id));
        }
        if let Some(kind) = f.kind {
            cond = cond.add(session::Column::Kind.eq(kind.as_db()));
        }
        if let Some(id) = f.channel_id {
            // A session without an active channel is in the default channel.
            cond = if id == self.authz.default_channel_id {
                cond.add(
                    Condition::any()
                        .add(session::Column::ActiveChannelId.eq(id))
                        .add(session::Column::ActiveChannelId.is_null()),
                )
            } else {
                cond.add(session::Column::ActiveChannelId.eq(id))
            };
        }
        if let Some(id) = f.active_order_id {
            cond = cond.add(session::Column::ActiveOrderId.eq(id));
        }
        if !f.include_invalidated {
            cond = cond.add(session::Column::Invalidated.eq(false));
        }
        if !f.include_expired {
            cond = cond
                .add(session::Column::LastActiveAt.gt(now - self.lifetimes.idle_ms))
                .add(session::Column::AbsoluteExpiresAt.gt(now));
        }
        cond
    }

    /// Sessions active in the caller's `READ_SESSION` channels, newest first; `after` is the id
    /// of the last session of the previous page.
    pub async fn list_sessions(
        &self,
        caller: &Caller,
        f: &SessionFilter,
        first: u64,
        after: Option<i64>,
        with_total: bool,
    ) -> AppResult<Page<session::Model>> {
        let cond = self
            .filter_condition(f, now_ms())
            .add(self.authz.session_scope(caller, Permission::ReadSession));
        let req = PageRequest {
            first,
            after,
            with_total,
        };
        let sessions = session::Entity::find().filter(cond);
        page_by_id(
            &self.db,
            sessions,
            session::Column::Id,
            IdOrder::Descending,
            req,
        )
        .await
    }

    /// One session, live or not, if it is active in the caller's `READ_SESSION` channels.
    pub async fn session_by_id(
        &self,
        caller: &Caller,
        id: i64,
    ) -> AppResult<Option<session::Model>> {
        Ok(session::Entity::find_by_id(id)
            .filter(self.authz.session_scope(caller, Permission::ReadSession))
            .one(&self.db)
            .await?)
    }

    /// At most `first` live sessions of one user, newest first; `after` is the id of the last
    /// session of the previous page.
    pub async fn sessions_of_user(
        &self,
        user_id: i64,
        first: u64,
        after: Option<i64>,
    ) -> AppResult<Vec<session::Model>> {
        let live = session::Entity::find()
            .filter(live_condition(now_ms(), &self.lifetimes))
            .filter(session::Column::UserId.eq(user_id));
        let req = PageRequest {
            first,
            after,
            with_total: false,
        };
        let page = page_by_id(
            &self.db,
            live,
            session::Column::Id,
            IdOrder::Descending,
            req,
        );
        Ok(page.await?.items)
    }

    /// Revokes one session, recording `ending`; `owner` restricts it to that user's sessions.
    /// False when there is no such (live) session.
    pub async fn revoke_session(
        &self,
        id: i64,
        owner: Option<i64>,
        ending: &NewEvent,
    ) -> AppResult<bool> {
        let mut cond = Condition::all().add(session::Column::Id.eq(id));
        if let Some(user_id) = owner {
            cond = cond.add(session::Column::UserId.eq(user_id));
        }
        Ok(self
            .sessions
            .invalidate_sessions(cond, ending, Vec::new())
            .await?
            > 0)
    }

    /// An admin revocation: ends the sessions `what` names that are active in the caller's
    /// `REVOKE_SESSION` channels (others are left alone, as if absent) and returns how many were
    /// live. `FORBIDDEN`, with nothing revoked, when one of them belongs to a user holding a
    /// permission the caller does not hold (`SUPER_ADMIN` included).
    pub async fn revoke_as(
        &self,
        caller: &Caller,
        what: Revocation,
        origin: &Origin,
    ) -> AppResult<u64> {
        let mut cond = Condition::all()
            .add(match what {
                Revocation::Session(id) => session::Column::Id.eq(id),
                Revocation::User(id) => session::Column::UserId.eq(id),
                Revocation::ActiveOrder(id) => session::Column::ActiveOrderId.eq(id),
                Revocation::All => session::Column::Invalidated.eq(false),
            })
            .add(self.authz.session_scope(caller, Permission::RevokeSession));
        if !caller.is_super_admin() {
            let owners: Vec<Option<i64>> = session::Entity::find()
                .select_only()
                .column(session::Column::UserId)
                .distinct()
                .filter(cond.clone())
                .filter(session::Column::Invalidated.eq(false))
                .into_tuple()
                .all(&self.db)
                .await?;
            let owners: Vec<i64> = owners.into_iter().flatten().collect();
            self.authz
                .authorize_acting_on(&self.db, caller, &owners)
                .await?;
            // Only sessions of the users just checked (a new owner's would not be).
            cond = cond.add(
                Condition::any()
                    .add(session::Column::UserId.is_null())
                    .add(session::Column::UserId.is_in(owners)),
            );
        }
        let revoked = origin.event(EventType::SessionRevoked).reason("admin");
        let n = self
            .sessions
            .invalidate_sessions(cond, &revoked, Vec::new())
            .await?;
        if let Revocation::User(user_id) = what {
            // Like `end_user_sessions`: also drops entries cached while we were revoking.
            self.sessions.invalidate_user(user_id).await;
        }
        Ok(n)
    }

    /// Counts of the sessions active in the caller's `READ_SESSION` channels:
    /// `(anonymous live, authenticated live, expired awaiting clean-up, invalidated)`.
    pub async fn session_stats(&self, caller: &Caller) -> AppResult<(u64, u64, u64, u64)> {
        let now = now_ms();
        let live = live_condition(now, &self.lifetimes);
        let scope = self.authz.session_scope(caller, Permission::ReadSession);
        let count = |cond: Condition| {
            session::Entity::find()
                .filter(cond)
                .filter(scope.clone())
                .count(&self.db)
        };
        let anonymous = count(
            live.clone()
                .add(session::Column::Kind.eq(SessionKind::Anonymous.as_db())),
        )
        .await?;
        let authenticated =
            count(live.add(session::Column::Kind.eq(SessionKind::Authenticated.as_db()))).await?;
        let expired = count(
            Condition::all()
                .add(session::Column::Invalidated.eq(false))
                .add(
                    Condition::any()
                        .add(session::Column::LastActiveAt.lte(now - self.lifetimes.idle_ms))
                        .add(session::Column::AbsoluteExpiresAt.lte(now)),
                ),
        )
        .await?;
        let invalidated =
            count(Condition::all().add(session::Column::Invalidated.eq(true))).await?;
        Ok((anonymous, authenticated, expired, invalidated))
    }

    /// Deletes expired and invalidated sessions in batches of `CLEANUP_BATCH_SIZE` until none
    /// is left, every channel's (the background clean-up) or, for `cleanUpExpiredSessions`,
    /// those of the channels where `caller` holds `REVOKE_SESSION`; returns how many were
    /// deleted.
    pub async fn clean_up_expired_sessions(&self, caller: Option<&Caller>) -> AppResult<u64> {
        let now = now_ms();
        // The stored activity may lag by up to the write interval: never delete a session that
        // could still be in use.
        let idle_cutoff = now - self.lifetimes.idle_ms - self.lifetimes.write_interval_ms;
        let doomed = Condition::all()
            .add(
                Condition::any()
                    .add(session::Column::Invalidated.eq(true))
                    .add(session::Column::LastActiveAt.lt(idle_cutoff))
                    .add(session::Column::AbsoluteExpiresAt.lte(now)),
            )
            .add(match caller {
                Some(caller) => self.authz.session_scope(caller, Permission::RevokeSession),
                None => Condition::all(),
            });
        let mut total = 0u64;
        loop {
            let doomed_ids: Vec<i64> = session::Entity::find()
                .select_only()
                .column(session::Column::Id)
                .filter(doomed.clone())
                .order_by_asc(session::Column::Id)
                .limit(self.config.cleanup_batch_size)
                .into_tuple()
                .all(&self.db)
                .await?;
            if doomed_ids.is_empty() {
                break;
            }
            let (deleted, recorded) =
                retry_deadlocks(|| self.delete_expired_batch(&doomed_ids, now)).await?;
            total += deleted;
            self.sessions.events().publish(recorded);
            tokio::task::yield_now().await;
        }
        self.metrics.session_event("cleaned_up", total);
        if total > 0 {
            tracing::info!(
                deleted = total,
                "cleaned up expired and invalidated sessions"
            );
        }
        Ok(total)
    }

    /// Deletes one batch of the clean-up and records `SESSION_EXPIRED` (reason `absolute` or
    /// `idle`) for each session that had not been revoked (a revoked one got its event then),
    /// in one transaction: the events are copied from the rows by the database just before
    /// they go. When another clean-up (another instance) deleted some of the rows first, the
    /// batch is rolled back and left to the next read, so each session is recorded once.
    /// Returns how many were deleted and the events.
    async fn delete_expired_batch(
        &self,
        ids: &[i64],
        now: i64,
    ) -> AppResult<(u64, Vec<crate::events::Event>)> {
        let txn = self.db.begin().await?;
        if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
            // A batch of the clean-up need not wait for its commit to reach the disk: lost in
            // a crash, it is only expired sessions left for the next clean-up (with their
            // events and outbox rows, which are in the same transaction), never a half-done
            // batch. The clean-up then costs one disk flush less per batch.
            txn.execute_unprepared("SET LOCAL synchronous_commit TO OFF")
                .await?;
        }
        // Guest orders keep existing without their session.
        entity::order::Entity::update_many()
            .col_expr(
                entity::order::Column::SessionId,
                sea_orm::sea_query::Expr::value(Option::<i64>::None),
            )
            .filter(entity::order::Column::SessionId.is_in(ids.iter().copied()))
            .exec(&txn)
            .await?;
        // The clean-up has no request: the session's channel scopes the event.
        let recorded = self
            .sessions
            .events()
            .record_expired(&txn, now, self.authz.default_channel_id, ids)
            .await?;
        let deleted = session::Entity::delete_many()
            .filter(session::Column::Id.is_in(ids.iter().copied()))
            .exec(&txn)
            .await?;
        if deleted.rows_affected != ids.len() as u64 {
            txn.rollback().await?;
            return Ok((0, Vec::new()));
        }
        txn.commit().await?;
        Ok((deleted.rows_affected, recorded))
    }
}
