//! Session events as the services see them: who made a change and from where ([`Origin`], the
//! fields every event of a request shares), the `sessionEvents` / `mySessionEvents` listings
//! (channel-scoped like sessions), and retention (`EVENT_RETENTION`).

use super::authz::{Caller, Scope};
use super::paging::{page_by_id, IdOrder, Page, PageRequest};
use super::session::ClientInfo;
use crate::clock::{ms, now_ms};
use crate::config::Config;
use crate::error::AppResult;
use crate::events::{Event, EventType, NewEvent};
use crate::permission::Permission;
use entity::session_event;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, ExprTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use std::sync::Arc;

/// Who made a change and from where: the request's logged-in user (the admin who acted, or the
/// user themself), its client address and user agent, and its channel. Every event a request
/// records carries these, so channel scoping works for every event type.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub actor_user_id: Option<i64>,
    pub client: ClientInfo,
    /// The request's channel (for the clean-up, which has no request: the session's channel).
    pub channel_id: Option<i64>,
}

impl Origin {
    /// An event of this origin, to be completed with what the change knows.
    pub fn event(&self, kind: EventType) -> NewEvent {
        NewEvent::new(kind)
            .actor(self.actor_user_id)
            .client(&self.client)
            .channel(self.channel_id)
    }

    /// The same origin acting as `user_id` (a login acts as the user it logs in).
    pub fn acting_as(&self, user_id: i64) -> Origin {
        Origin {
            actor_user_id: Some(user_id),
            ..self.clone()
        }
    }
}

/// Filters of the `sessionEvents` listing (already validated). `since` is inclusive, `until`
/// exclusive, both UTC milliseconds.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only these types; empty: every type.
    pub types: Vec<EventType>,
    pub user_id: Option<i64>,
    pub session_id: Option<i64>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl EventFilter {
    fn condition(&self) -> Condition {
        let mut cond = Condition::all();
        if !self.types.is_empty() {
            let mut kinds: Vec<&'static str> = self.types.iter().map(|t| t.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            cond = cond.add(session_event::Column::Kind.is_in(kinds));
        }
        if let Some(id) = self.user_id {
            cond = cond.add(session_event::Column::UserId.eq(id));
        }
        if let Some(id) = self.session_id {
            cond = cond.add(session_event::Column::SessionId.eq(id));
        }
        if let Some(since) = self.since {
            cond = cond.add(session_event::Column::At.gte(since));
        }
        if let Some(until) = self.until {
            cond = cond.add(session_event::Column::At.lt(until));
        }
        cond
    }
}

/// Events recorded in these channels. Every event a request records carries the request's
/// channel; one without a channel is seen by super admins only.
fn events_in(scope: &Scope) -> Condition {
    match scope {
        Scope::All => Condition::all(),
        Scope::Channels(ids) => {
            Condition::all().add(session_event::Column::ChannelId.is_in(ids.clone()))
        }
    }
}

fn events(page: Page<session_event::Model>) -> Page<Event> {
    Page {
        // A kind this version does not know (written by a newer one) is left out.
        items: page
            .items
            .into_iter()
            .filter_map(Event::from_model)
            .collect(),
        total: page.total,
        has_next: page.has_next,
        has_previous: page.has_previous,
    }
}

/// The session event service: the listings and retention (recording happens in the services
/// that make the changes, through the shared [`crate::events::EventLog`]).
pub struct SessionEvents {
    db: DatabaseConnection,
    /// `EVENT_RETENTION`, `CLEANUP_BATCH_SIZE`.
    config: Arc<Config>,
}

impl SessionEvents {
    pub(super) fn new(db: DatabaseConnection, config: Arc<Config>) -> SessionEvents {
        SessionEvents { db, config }
    }

    /// Events recorded in the caller's `READ_SESSION` channels, newest first; `after` is the id
    /// of the last event of the previous page.
    pub async fn list_session_events(
        &self,
        caller: &Caller,
        filter: &EventFilter,
        req: PageRequest,
    ) -> AppResult<Page<Event>> {
        let cond = filter
            .condition()
            .add(events_in(&caller.scope(Permission::ReadSession)));
        let query = session_event::Entity::find().filter(cond);
        if filter.since.is_none() && filter.until.is_none() {
            let page = page_by_id(
                &self.db,
                query,
                session_event::Column::Id,
                IdOrder::Descending,
                req,
            )
            .await?;
            return Ok(events(page));
        }
        self.page_by_time(query, req).await
    }

    /// A page of a listing filtered by time, newest first by `(at, id)`: the `(at, id)` index
    /// serves any window as a range scan, where id order would scan every newer event to
    /// reach a window in the past. `at` follows id except between events recorded within the
    /// same moment, so the order is the same as the other listings' but for those. The cursor
    /// stays an event id; its `at` is looked up.
    async fn page_by_time(
        &self,
        query: sea_orm::Select<session_event::Entity>,
        req: PageRequest,
    ) -> AppResult<Page<Event>> {
        use sea_orm::PaginatorTrait;
        let total = if req.with_total {
            Some(query.clone().count(&self.db).await?)
        } else {
            None
        };
        let mut query = query;
        if let Some(after) = req.after {
            let at: Option<i64> = session_event::Entity::find_by_id(after)
                .select_only()
                .column(session_event::Column::At)
                .into_tuple()
                .one(&self.db)
                .await?;
            query = match at {
                // A row-value comparison, which the `(at, id)` index serves as a range.
                Some(at) => query.filter(
                    Expr::tuple([
                        Expr::col(session_event::Column::At),
                        Expr::col(session_event::Column::Id),
                    ])
                    .lt(Expr::tuple([Expr::val(at), Expr::val(after)])),
                ),
                // Deleted by retention: everything after it is older still.
                None => query.filter(session_event::Column::Id.lt(after)),
            };
        }
        let mut items = query
            .order_by_desc(session_event::Column::At)
            .order_by_desc(session_event::Column::Id)
            .limit(req.first.saturating_add(1))
            .all(&self.db)
            .await?;
        let has_next = items.len() as u64 > req.first;
        items.truncate(usize::try_from(req.first).unwrap_or(usize::MAX));
        Ok(events(Page {
            items,
            total,
            has_next,
            has_previous: req.after.is_some(),
        }))
    }

    /// The events about one user (their logins, failed logins on their identifier, revocations,
    /// password and account changes), newest first, whatever the channel. What another user
    /// did to them (an admin's revocation or change) comes without that admin's address and
    /// user agent: the user sees that it happened and who did it, not where the admin sits.
    pub async fn events_of_user(&self, user_id: i64, req: PageRequest) -> AppResult<Page<Event>> {
        let query = session_event::Entity::find().filter(session_event::Column::UserId.eq(user_id));
        let page = page_by_id(
            &self.db,
            query,
            session_event::Column::Id,
            IdOrder::Descending,
            req,
        )
        .await?;
        let mut page = events(page);
        for e in &mut page.items {
            if e.actor_user_id.is_some_and(|actor| actor != user_id) {
                e.ip_address = None;
                e.user_agent = None;
            }
        }
        Ok(page)
    }

    /// Deletes events older than `EVENT_RETENTION` in batches of `CLEANUP_BATCH_SIZE`; returns
    /// how many were deleted.
    pub async fn clean_up_old_events(&self) -> AppResult<u64> {
        let cutoff = now_ms().saturating_sub(ms(self.config.event_retention));
        let mut total = 0u64;
        loop {
            // Oldest first by the `at` index; deleting by id keeps each statement small.
            let ids: Vec<i64> = session_event::Entity::find()
                .select_only()
                .column(session_event::Column::Id)
                .filter(session_event::Column::At.lt(cutoff))
                .order_by_asc(session_event::Column::At)
                .limit(self.config.cleanup_batch_size)
                .into_tuple()
                .all(&self.db)
                .await?;
            if ids.is_empty() {
                break;
            }
            let deleted = session_event::Entity::delete_many()
                .filter(session_event::Column::Id.is_in(ids))
                .exec(&self.db)
                .await?;
            total += deleted.rows_affected;
            if deleted.rows_affected == 0 {
                // Another instance deleted this batch meanwhile; the next read moves on.
                tokio::task::yield_now().await;
            }
        }
        if total > 0 {
            tracing::info!(
                deleted = total,
                "deleted session events past EVENT_RETENTION"
            );
        }
        Ok(total)
    }
}
