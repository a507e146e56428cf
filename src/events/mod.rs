//! Session events: every change to a session or an account, recorded in the same database
//! transaction as the change (the audit log in `session_event`), then fanned out live to
//! subscribers and, when configured, to webhooks.
//!
//! A service builds [`NewEvent`]s, calls [`EventLog::record`] with its open transaction, commits,
//! and only then hands the returned [`Event`]s to [`EventLog::publish`]: an event is published
//! only when its change happened. Events never carry a token, a token digest or a password.
//!
//! - `bus`: the live fan-out: a bounded broadcast per process, and with Redis, every other
//!   instance's events too (each exactly once).
//! - [`live`]: one subscriber's stream: its types and channel scope, its session re-checked
//!   while it runs, dropped when it falls behind.
//! - [`webhook`]: the outbox rows written with the events when webhooks are configured, and
//!   the worker that delivers them.

use crate::error::{AppError, AppResult};
use crate::service::ClientInfo;
use entity::session_event;
use sea_orm::ConnectionTrait;
use std::sync::Arc;
use tokio::sync::broadcast;

mod bus;
pub mod live;
pub mod webhook;

pub use bus::{EventBus, DEFAULT_SUBSCRIBER_BACKLOG};

/// What happened. The names are the GraphQL `SessionEventType` values and the stored `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    SessionCreated,
    LoginSucceeded,
    LoginFailed,
    LoginThrottled,
    SessionRefreshed,
    RefreshReuseDetected,
    LoggedOut,
    SessionRevoked,
    SessionExpired,
    PasswordChanged,
    UserCreated,
    UserUpdated,
    UserDeleted,
    RoleAssigned,
    RoleRemoved,
    RoleChanged,
}

impl EventType {
    pub const ALL: [EventType; 16] = [
        EventType::SessionCreated,
        EventType::LoginSucceeded,
        EventType::LoginFailed,
        EventType::LoginThrottled,
        EventType::SessionRefreshed,
        EventType::RefreshReuseDetected,
        EventType::LoggedOut,
        EventType::SessionRevoked,
        EventType::SessionExpired,
        EventType::PasswordChanged,
        EventType::UserCreated,
        EventType::UserUpdated,
        EventType::UserDeleted,
        EventType::RoleAssigned,
        EventType::RoleRemoved,
        EventType::RoleChanged,
    ];

    /// The stored and published name (`LOGIN_SUCCEEDED`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SessionCreated => "SESSION_CREATED",
            EventType::LoginSucceeded => "LOGIN_SUCCEEDED",
            EventType::LoginFailed => "LOGIN_FAILED",
            EventType::LoginThrottled => "LOGIN_THROTTLED",
            EventType::SessionRefreshed => "SESSION_REFRESHED",
            EventType::RefreshReuseDetected => "REFRESH_REUSE_DETECTED",
            EventType::LoggedOut => "LOGGED_OUT",
            EventType::SessionRevoked => "SESSION_REVOKED",
            EventType::SessionExpired => "SESSION_EXPIRED",
            EventType::PasswordChanged => "PASSWORD_CHANGED",
            EventType::UserCreated => "USER_CREATED",
            EventType::UserUpdated => "USER_UPDATED",
            EventType::UserDeleted => "USER_DELETED",
            EventType::RoleAssigned => "ROLE_ASSIGNED",
            EventType::RoleRemoved => "ROLE_REMOVED",
            EventType::RoleChanged => "ROLE_CHANGED",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// An event about to be recorded; the builder methods fill what the change knows.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: EventType,
    pub session_id: Option<i64>,
    pub user_id: Option<i64>,
    pub actor_user_id: Option<i64>,
    pub identifier: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub channel_id: Option<i64>,
    pub reason: Option<String>,
}

impl NewEvent {
    pub fn new(kind: EventType) -> NewEvent {
        NewEvent {
            kind,
            session_id: None,
            user_id: None,
            actor_user_id: None,
            identifier: None,
            ip_address: None,
            user_agent: None,
            channel_id: None,
            reason: None,
        }
    }

    pub fn session(mut self, id: i64) -> Self {
        self.session_id = Some(id);
        self
    }

    pub fn user(mut self, id: Option<i64>) -> Self {
        self.user_id = id;
        self
    }

    pub fn actor(mut self, id: Option<i64>) -> Self {
        self.actor_user_id = id;
        self
    }

    /// The identifier tried or concerned, cut to the column's 255 characters.
    pub fn identifier(mut self, identifier: &str) -> Self {
        self.identifier = Some(crate::service::session::truncate(identifier, 255).to_owned());
        self
    }

    /// The request's address and user agent, cut to their columns (64 and 512 bytes) like the
    /// session's own copy: a huge `User-Agent` must not make the change fail.
    pub fn client(mut self, client: &ClientInfo) -> Self {
        let cut = |s: &Option<String>, max| {
            s.as_deref()
                .map(|s| crate::service::session::truncate(s, max).to_owned())
        };
        self.ip_address = cut(&client.ip_address, 64);
        self.user_agent = cut(&client.user_agent, 512);
        self
    }

    pub fn channel(mut self, id: Option<i64>) -> Self {
        self.channel_id = id;
        self
    }

    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(crate::service::session::truncate(reason, 64).to_owned());
        self
    }
}

/// A recorded event, as listed, subscribed to and sent to webhooks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub id: i64,
    pub kind: EventType,
    /// UTC milliseconds.
    pub at: i64,
    pub session_id: Option<i64>,
    pub user_id: Option<i64>,
    pub actor_user_id: Option<i64>,
    pub identifier: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub channel_id: Option<i64>,
    pub reason: Option<String>,
}

impl Event {
    /// The event a stored row holds; `None` for a kind this version does not know.
    pub fn from_model(m: session_event::Model) -> Option<Event> {
        Some(Event {
            id: m.id,
            kind: EventType::parse(&m.kind)?,
            at: m.at,
            session_id: m.session_id,
            user_id: m.user_id,
            actor_user_id: m.actor_user_id,
            identifier: m.identifier,
            ip_address: m.ip_address,
            user_agent: m.user_agent,
            channel_id: m.channel_id,
            reason: m.reason,
        })
    }
}

/// The event log of this process: records events in a change's transaction and publishes them
/// once it has committed. Cheap to clone.
#[derive(Clone, Default)]
pub struct EventLog {
    /// Live fan-out to subscribers.
    bus: EventBus,
    /// The configured webhooks (`WEBHOOK_URLS`): events they want get outbox rows.
    webhooks: Option<Arc<webhook::Webhooks>>,
}

impl EventLog {
    pub fn new(bus: EventBus) -> EventLog {
        EventLog {
            bus,
            webhooks: None,
        }
    }

    /// The same log, also queueing the events `webhooks` wants for delivery.
    pub fn with_webhooks(mut self, webhooks: Option<Arc<webhook::Webhooks>>) -> EventLog {
        self.webhooks = webhooks;
        self
    }

    /// Writes `events` with `db` (the change's own transaction), stamped `at`, with their
    /// webhook outbox rows, and returns them with their ids, to be handed to
    /// [`EventLog::publish`] once the transaction has committed. Many events (a bulk
    /// revocation, a clean-up batch) go in one multi-row insert per [`INSERT_CHUNK`] events.
    pub async fn record<C: ConnectionTrait>(
        &self,
        db: &C,
        at: i64,
        events: Vec<NewEvent>,
    ) -> AppResult<Vec<Event>> {
        let mut recorded = Vec::with_capacity(events.len());
        for chunk in events.chunks(INSERT_CHUNK) {
            recorded.extend(insert_returning(db, at, chunk).await?);
        }
        if let Some(webhooks) = &self.webhooks {
            webhooks.enqueue(db, at, &recorded).await?;
        }
        Ok(recorded)
    }

    /// Records `SESSION_EXPIRED` for the sessions `ids` that are about to be deleted by the
    /// clean-up, in its transaction `db`: one `INSERT ... SELECT` over their rows (a revoked
    /// session got its event when it was revoked, so only those not invalidated are recorded;
    /// the reason is `absolute` past the absolute lifetime, else `idle`; a session without a
    /// channel is scoped to `default_channel`). The database copies the rows itself, so a
    /// batch costs one statement with one bound id per session, and only the columns an event
    /// needs come back.
    pub async fn record_expired<C: ConnectionTrait>(
        &self,
        db: &C,
        at: i64,
        default_channel: i64,
        ids: &[i64],
    ) -> AppResult<Vec<Event>> {
        let mut recorded = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            recorded.extend(insert_expired(db, at, default_channel, chunk).await?);
        }
        if let Some(webhooks) = &self.webhooks {
            webhooks.enqueue(db, at, &recorded).await?;
        }
        Ok(recorded)
    }

    /// Hands committed events to the live subscribers, and wakes the webhook worker.
    pub fn publish(&self, events: Vec<Event>) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.committed(&events);
        }
        self.bus.publish(events);
    }

    /// The live fan-out (for the subscription streams).
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// A new live subscriber (see [`EventBus::subscribe`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.bus.subscribe()
    }
}

/// Events per multi-row insert: 10 bound values a row stays far below every backend's limit on
/// bound parameters (SQLite 32766, PostgreSQL 65535).
pub const INSERT_CHUNK: usize = 1000;

/// One multi-row `INSERT ... RETURNING *` of `events`, read back as recorded events in id
/// order (RETURNING rows come in no promised order). PostgreSQL, SQLite (3.35+) and MariaDB
/// (10.5+) support RETURNING on insert; sea-query leaves it out for MySQL, so it is appended.
async fn insert_returning<C: ConnectionTrait>(
    db: &C,
    at: i64,
    events: &[NewEvent],
) -> AppResult<Vec<Event>> {
    use sea_orm::sea_query::{Query, SimpleExpr};
    use sea_orm::{DbBackend, FromQueryResult};
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut insert = Query::insert();
    insert.into_table(session_event::Entity).columns([
        session_event::Column::Kind,
        session_event::Column::At,
        session_event::Column::SessionId,
        session_event::Column::UserId,
        session_event::Column::ActorUserId,
        session_event::Column::Identifier,
        session_event::Column::IpAddress,
        session_event::Column::UserAgent,
        session_event::Column::ChannelId,
        session_event::Column::Reason,
    ]);
    for e in events {
        let row: [SimpleExpr; 10] = [
            e.kind.as_str().into(),
            at.into(),
            e.session_id.into(),
            e.user_id.into(),
            e.actor_user_id.into(),
            e.identifier.clone().into(),
            e.ip_address.clone().into(),
            e.user_agent.clone().into(),
            e.channel_id.into(),
            e.reason.clone().into(),
        ];
        insert
            .values(row)
            .map_err(|_| AppError::internal("session event row does not match its columns"))?;
    }
    insert.returning_all();
    let backend = db.get_database_backend();
    let mut statement = backend.build(&insert);
    if backend == DbBackend::MySql {
        statement.sql.push_str(" RETURNING *");
    }
    let rows = db.query_all_raw(statement).await?;
    let mut recorded = Vec::with_capacity(rows.len());
    for row in &rows {
        let model = session_event::Model::from_query_result(row, "")?;
        recorded.extend(Event::from_model(model));
    }
    if recorded.len() != events.len() {
        return Err(AppError::internal("session events were not all recorded"));
    }
    recorded.sort_unstable_by_key(|e| e.id);
    Ok(recorded)
}

/// One `INSERT INTO session_event ... SELECT ... FROM session` of `SESSION_EXPIRED` for the
/// live (not invalidated) sessions among `ids`, returning what an event needs, in id order.
async fn insert_expired<C: ConnectionTrait>(
    db: &C,
    at: i64,
    default_channel: i64,
    ids: &[i64],
) -> AppResult<Vec<Event>> {
    use entity::session;
    use sea_orm::sea_query::{CaseStatement, Expr, Func, Query};
    use sea_orm::{ColumnTrait, DbBackend};
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let reason = CaseStatement::new()
        .case(session::Column::AbsoluteExpiresAt.lte(at), "absolute")
        .finally("idle");
    let rows = Query::select()
        .expr(Expr::val(EventType::SessionExpired.as_str()))
        .expr(Expr::val(at))
        .column(session::Column::Id)
        .column(session::Column::UserId)
        .expr(Func::coalesce([
            Expr::col(session::Column::ActiveChannelId),
            Expr::val(default_channel),
        ]))
        .expr(reason)
        .from(session::Entity)
        .and_where(session::Column::Id.is_in(ids.iter().copied()))
        .and_where(session::Column::Invalidated.eq(false))
        .to_owned();
    let mut insert = Query::insert();
    insert
        .into_table(session_event::Entity)
        .columns([
            session_event::Column::Kind,
            session_event::Column::At,
            session_event::Column::SessionId,
            session_event::Column::UserId,
            session_event::Column::ChannelId,
            session_event::Column::Reason,
        ])
        .select_from(rows)
        .map_err(|_| AppError::internal("SESSION_EXPIRED rows do not match their columns"))?;
    let returned = [
        session_event::Column::Id,
        session_event::Column::SessionId,
        session_event::Column::UserId,
        session_event::Column::ChannelId,
        session_event::Column::Reason,
    ];
    insert.returning(Query::returning().columns(returned));
    let backend = db.get_database_backend();
    let mut statement = backend.build(&insert);
    if backend == DbBackend::MySql {
        statement
            .sql
            .push_str(" RETURNING id, session_id, user_id, channel_id, reason");
    }
    let rows = db.query_all_raw(statement).await?;
    let mut recorded = Vec::with_capacity(rows.len());
    for row in &rows {
        recorded.push(Event {
            id: row.try_get_by_index(0)?,
            kind: EventType::SessionExpired,
            at,
            session_id: row.try_get_by_index(1)?,
            user_id: row.try_get_by_index(2)?,
            actor_user_id: None,
            identifier: None,
            ip_address: None,
            user_agent: None,
            channel_id: row.try_get_by_index(3)?,
            reason: row.try_get_by_index(4)?,
        });
    }
    recorded.sort_unstable_by_key(|e| e.id);
    Ok(recorded)
}
