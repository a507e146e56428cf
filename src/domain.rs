//! The session and its user as every layer sees them: what a request knows about its caller.
//!
//! A [`CachedSession`] is built from the database rows by the session service, kept by the
//! session cache (in process, in Redis, or both), and read by resolvers without a query. It
//! carries the user's identity and per-channel permissions ([`CachedUser`]), so a cached request
//! needs nothing else.

use crate::permission::PermissionSet;
use crate::token::TokenHash;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SessionKind {
    Anonymous,
    Authenticated,
}

impl SessionKind {
    pub fn as_db(self) -> &'static str {
        match self {
            SessionKind::Anonymous => "anonymous",
            SessionKind::Authenticated => "authenticated",
        }
    }

    pub fn from_db(s: &str) -> SessionKind {
        if s == "authenticated" {
            SessionKind::Authenticated
        } else {
            SessionKind::Anonymous
        }
    }
}

/// A user's permissions in one channel, denormalised into the cached session.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ChannelGrant {
    pub channel_id: i64,
    pub code: String,
    pub token: String,
    pub permissions: PermissionSet,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CachedUser {
    pub id: i64,
    pub identifier: String,
    pub verified: bool,
    pub channels: Vec<ChannelGrant>,
    /// The gateway check's headers for this user, rendered on first use and kept as long as
    /// the cached entry (never stored in Redis: each process renders its own).
    #[serde(skip)]
    pub gateway_headers: std::sync::OnceLock<Box<UserHeaders>>,
}

/// A user's `x-user-id` and `x-user-identifier` header values (the identifier is `None` when it
/// holds a byte a header cannot carry), and `x-permissions` for each set of permissions the user
/// can hold in a channel.
#[derive(Clone, Debug)]
pub struct UserHeaders {
    pub id: axum::http::HeaderValue,
    pub identifier: Option<axum::http::HeaderValue>,
    permissions: Vec<(PermissionSet, axum::http::HeaderValue)>,
}

impl UserHeaders {
    /// The `x-permissions` value of `set`, rendered already when it is one of the user's sets.
    pub fn permissions(&self, set: PermissionSet) -> Option<axum::http::HeaderValue> {
        match self.permissions.iter().find(|(s, _)| *s == set) {
            Some((_, v)) => Some(v.clone()),
            None => axum::http::HeaderValue::try_from(set.to_stored()).ok(),
        }
    }
}

impl CachedUser {
    pub fn new(id: i64, identifier: String, verified: bool, channels: Vec<ChannelGrant>) -> Self {
        CachedUser {
            id,
            identifier,
            verified,
            channels,
            gateway_headers: std::sync::OnceLock::new(),
        }
    }

    /// The gateway headers of this user, rendered once.
    pub fn gateway_headers(&self) -> &UserHeaders {
        self.gateway_headers.get_or_init(|| {
            // What a check can ask for: every permission (a super admin), the user's set in
            // each of their channels, or none (a channel where they hold nothing).
            let mut sets = vec![PermissionSet::default()];
            if self.is_super_admin() {
                sets.push(PermissionSet::all());
            } else {
                sets.extend(
                    self.channels
                        .iter()
                        .map(|c| self.permissions_in(c.channel_id)),
                );
            }
            sets.sort_unstable_by_key(|s| s.0);
            sets.dedup();
            Box::new(UserHeaders {
                id: axum::http::HeaderValue::from(self.id),
                identifier: axum::http::HeaderValue::from_bytes(self.identifier.as_bytes()).ok(),
                permissions: sets
                    .into_iter()
                    .filter_map(|s| {
                        Some((s, axum::http::HeaderValue::try_from(s.to_stored()).ok()?))
                    })
                    .collect(),
            })
        })
    }

    /// Whether the user holds `SUPER_ADMIN` in any channel: that passes every check.
    pub fn is_super_admin(&self) -> bool {
        self.channels.iter().any(|c| {
            c.permissions
                .contains(crate::permission::Permission::SuperAdmin)
        })
    }

    pub fn permissions_in(&self, channel_id: i64) -> PermissionSet {
        self.channels
            .iter()
            .filter(|c| c.channel_id == channel_id)
            .fold(PermissionSet::default(), |acc, c| acc.union(c.permissions))
    }
}

/// Everything a request needs to know about its session.
///
/// `last_active_at` is atomic so that the in-process cache can slide a session's expiry on every
/// hit without cloning or locking the entry.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CachedSession {
    /// The row's revision (see `entity::session::Model::revision`): a cache never replaces an
    /// entry with one of a lower revision. Declared first, so it is the first field of the
    /// serialised entry (the Redis strategy reads it there).
    #[serde(default)]
    pub revision: i64,
    /// The version of `data` (`Session.dataVersion`, compared by data updates).
    #[serde(default)]
    pub data_version: i64,
    pub id: i64,
    pub token_hash: TokenHash,
    pub kind: SessionKind,
    /// Boxed: anonymous sessions, the majority, then cost one pointer.
    pub user: Option<Box<CachedUser>>,
    pub authentication_strategy: Option<Box<str>>,
    pub active_order_id: Option<i64>,
    pub active_channel_id: Option<i64>,
    pub created_at: i64,
    pub token_issued_at: i64,
    pub absolute_expires_at: i64,
    pub remember_me: bool,
    pub ip_address: Option<Box<str>>,
    pub user_agent: Option<Box<str>>,
    /// Latest activity seen (ms); moves forward on every request.
    pub last_active_at: AtomicI64,
    /// Latest activity written (or queued to be written) to the database (ms).
    pub persisted_active_at: AtomicI64,
    /// When the database read that produced this entry started (ms): older than the cache TTL
    /// means stale, and a user invalidation after it means the entry must not be cached.
    pub loaded_at: i64,
    /// The application's own data (`Session.data`); `None` when empty.
    #[serde(default)]
    pub data: Option<Arc<SessionData>>,
}

/// The application's data of one session: a JSON object.
pub type SessionData = serde_json::Map<String, serde_json::Value>;

impl CachedSession {
    /// A live session for the unit and integration tests of the caches (the server builds
    /// sessions from rows only), loaded now: `user`'s (by id, without grants) or anonymous,
    /// with revision and data version `data_version` and the data `{"v": data_version}`.
    #[doc(hidden)]
    pub fn for_tests(token_hash: TokenHash, user: Option<i64>, data_version: i64) -> Arc<Self> {
        let now = crate::clock::now_ms();
        let mut data = SessionData::new();
        data.insert("v".to_string(), data_version.into());
        Arc::new(CachedSession {
            revision: data_version,
            data_version,
            data: Some(Arc::new(data)),
            id: 1,
            token_hash,
            kind: if user.is_some() {
                SessionKind::Authenticated
            } else {
                SessionKind::Anonymous
            },
            user: user.map(|id| Box::new(CachedUser::new(id, format!("user{id}"), true, vec![]))),
            authentication_strategy: None,
            active_order_id: None,
            active_channel_id: None,
            created_at: now,
            token_issued_at: now,
            absolute_expires_at: i64::MAX,
            remember_me: false,
            ip_address: None,
            user_agent: None,
            last_active_at: AtomicI64::new(now),
            persisted_active_at: AtomicI64::new(now),
            loaded_at: now,
        })
    }
}

impl CachedSession {
    pub fn last_active(&self) -> i64 {
        self.last_active_at.load(Ordering::Relaxed)
    }

    /// `min(lastActiveAt + idle, createdAt + absolute)`.
    pub fn expires_at(&self, idle_ms: i64) -> i64 {
        (self.last_active().saturating_add(idle_ms)).min(self.absolute_expires_at)
    }

    pub fn user_id(&self) -> Option<i64> {
        self.user.as_ref().map(|u| u.id)
    }
}
