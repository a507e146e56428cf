//! The session cache: the [`SessionCache`] trait and its strategies, chosen by `SESSION_CACHE`.
//!
//! Entries are keyed by the token's SHA-256 and carry everything a request needs (including the
//! user's per-channel permissions), so a cached request makes no database query. Strategies are
//! fallible; the session service treats any cache error as a miss.

mod memory;
pub mod redis;
mod tiered;

pub use self::memory::MemoryCache;
pub use self::redis::RedisCache;
pub use self::tiered::TieredCache;

use crate::permission::PermissionSet;
use crate::token::TokenHash;
use async_trait::async_trait;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a revoked token stays refused (its tombstone): longer than any database read or
/// write in flight when it was revoked, which could otherwise cache the session again.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

#[derive(thiserror::Error, Debug)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cached entry could not be decoded: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("{0}")]
    Config(String),
}

/// A cache of sessions keyed by token hash, shared by all requests of a process.
#[async_trait]
pub trait SessionCache: Send + Sync {
    /// The entry for a token, if cached.
    async fn get(&self, key: &TokenHash) -> Result<Option<Arc<CachedSession>>, CacheError>;
    /// Stores an entry for at most `ttl` (the shorter of the cache TTL and the time to expiry).
    async fn set(&self, session: Arc<CachedSession>, ttl: Duration) -> Result<(), CacheError>;
    /// Stores a new version of an entry that other processes may hold (after a write to the
    /// session's row). Strategies with a per-process tier make the others drop their copies.
    async fn replace(&self, session: Arc<CachedSession>, ttl: Duration) -> Result<(), CacheError> {
        self.set(session, ttl).await
    }
    /// Drops the entry of one token (its row changed; the token may be cached again).
    async fn delete(&self, key: &TokenHash) -> Result<(), CacheError>;
    /// Drops the entry of a revoked token and refuses to store it again for [`TOMBSTONE_TTL`]
    /// (`set` and `replace` become no-ops for it), so a request that was in flight when the
    /// session was revoked cannot put it back.
    async fn revoke(&self, key: &TokenHash) -> Result<(), CacheError>;
    /// Drops every entry of one user, without scanning the cache.
    async fn delete_user(&self, user_id: i64) -> Result<(), CacheError>;
    /// Drops every entry this server wrote (and nothing else).
    async fn clear(&self) -> Result<(), CacheError>;
    /// Drops an entry from this process's tier only, if there is one (used to undo a local
    /// write that raced an invalidation; shared tiers refuse such writes themselves).
    fn evict_local(&self, _key: &TokenHash) {}
    /// `memory`, `redis` or `tiered`, for logs and metrics.
    fn name(&self) -> &'static str;
}

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
}

impl CachedUser {
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
