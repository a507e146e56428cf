//! The GraphQL face of session events: the `SessionEventType` enum and the `SessionEvent` type,
//! shared by the `sessionEvents` / `mySessionEvents` listings and the subscription.

use crate::error::AppError;
use crate::events::{Event, EventType};
use crate::graphql::context::services;
use crate::graphql::types::{parse_id, Connection, DateTime, SessionEventConnection};
use crate::service::events::EventFilter;
use crate::service::paging::Page;
use async_graphql::{Context, Enum, InputObject, Object, Result, ID};
use std::sync::Arc;

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "SessionEventType")]
pub enum GqlSessionEventType {
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

impl From<EventType> for GqlSessionEventType {
    fn from(t: EventType) -> Self {
        use GqlSessionEventType as G;
        match t {
            EventType::SessionCreated => G::SessionCreated,
            EventType::LoginSucceeded => G::LoginSucceeded,
            EventType::LoginFailed => G::LoginFailed,
            EventType::LoginThrottled => G::LoginThrottled,
            EventType::SessionRefreshed => G::SessionRefreshed,
            EventType::RefreshReuseDetected => G::RefreshReuseDetected,
            EventType::LoggedOut => G::LoggedOut,
            EventType::SessionRevoked => G::SessionRevoked,
            EventType::SessionExpired => G::SessionExpired,
            EventType::PasswordChanged => G::PasswordChanged,
            EventType::UserCreated => G::UserCreated,
            EventType::UserUpdated => G::UserUpdated,
            EventType::UserDeleted => G::UserDeleted,
            EventType::RoleAssigned => G::RoleAssigned,
            EventType::RoleRemoved => G::RoleRemoved,
            EventType::RoleChanged => G::RoleChanged,
        }
    }
}

impl From<GqlSessionEventType> for EventType {
    fn from(t: GqlSessionEventType) -> Self {
        use GqlSessionEventType as G;
        match t {
            G::SessionCreated => EventType::SessionCreated,
            G::LoginSucceeded => EventType::LoginSucceeded,
            G::LoginFailed => EventType::LoginFailed,
            G::LoginThrottled => EventType::LoginThrottled,
            G::SessionRefreshed => EventType::SessionRefreshed,
            G::RefreshReuseDetected => EventType::RefreshReuseDetected,
            G::LoggedOut => EventType::LoggedOut,
            G::SessionRevoked => EventType::SessionRevoked,
            G::SessionExpired => EventType::SessionExpired,
            G::PasswordChanged => EventType::PasswordChanged,
            G::UserCreated => EventType::UserCreated,
            G::UserUpdated => EventType::UserUpdated,
            G::UserDeleted => EventType::UserDeleted,
            G::RoleAssigned => EventType::RoleAssigned,
            G::RoleRemoved => EventType::RoleRemoved,
            G::RoleChanged => EventType::RoleChanged,
        }
    }
}

/// One recorded event, from a listing or the live subscription.
pub struct SessionEvent(pub Arc<Event>);

fn opt_id(n: Option<i64>) -> Option<ID> {
    n.map(|n| ID(n.to_string()))
}

#[Object]
impl SessionEvent {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> GqlSessionEventType {
        self.0.kind.into()
    }
    async fn at(&self) -> DateTime {
        DateTime(self.0.at)
    }
    async fn session_id(&self) -> Option<ID> {
        opt_id(self.0.session_id)
    }
    async fn user_id(&self) -> Option<ID> {
        opt_id(self.0.user_id)
    }
    async fn actor_user_id(&self) -> Option<ID> {
        opt_id(self.0.actor_user_id)
    }
    async fn identifier(&self) -> Option<&str> {
        self.0.identifier.as_deref()
    }
    async fn ip_address(&self) -> Option<&str> {
        self.0.ip_address.as_deref()
    }
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
    /// The code of the channel the change happened in (channels are kept in process).
    async fn channel_code(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        let Some(cid) = self.0.channel_id else {
            return Ok(None);
        };
        let svc = services(ctx)?;
        Ok(svc
            .directory
            .channel_by_id(cid)
            .await?
            .map(|c| c.code.clone()))
    }
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
}

/// The filters of `sessionEvents`. `since` is inclusive and `until` exclusive; an empty
/// `types` list is the same as none (every type).
#[derive(InputObject, Default)]
#[graphql(name = "SessionEventFilter")]
pub struct SessionEventFilterInput {
    pub types: Option<Vec<GqlSessionEventType>>,
    pub user_id: Option<ID>,
    pub session_id: Option<ID>,
    pub since: Option<DateTime>,
    pub until: Option<DateTime>,
}

impl SessionEventFilterInput {
    /// The service filter, or `BAD_USER_INPUT` for a malformed id.
    pub fn validate(self) -> Result<EventFilter, AppError> {
        let id = |id: Option<ID>, what: &str| id.as_ref().map(|i| parse_id(i, what)).transpose();
        Ok(EventFilter {
            types: self
                .types
                .unwrap_or_default()
                .into_iter()
                .map(EventType::from)
                .collect(),
            user_id: id(self.user_id, "user")?,
            session_id: id(self.session_id, "session")?,
            since: self.since.map(|d| d.0),
            until: self.until.map(|d| d.0),
        })
    }
}

/// The connection of a page of events.
pub fn connection(page: Page<Event>, with_edges: bool) -> SessionEventConnection {
    let page = Page {
        items: page.items.into_iter().map(Arc::new).collect::<Vec<_>>(),
        total: page.total,
        has_next: page.has_next,
        has_previous: page.has_previous,
    };
    Connection::new(
        page,
        |items| items.into_iter().map(SessionEvent).collect(),
        with_edges,
    )
}
