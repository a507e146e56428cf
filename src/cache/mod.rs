//! The session cache: the [`SessionCache`] trait and its strategies, chosen by `SESSION_CACHE`.
//!
//! Entries are keyed by the token's SHA-256 and carry everything a request needs (including the
//! user's per-channel permissions), so a cached request makes no database query. Strategies are
//! fallible; the session service treats any cache error as a miss.
//!
//! [`PubSub`] (`pubsub`) is the Redis publish/subscribe facility other parts use to reach every
//! instance at once (the live session events).

mod memory;
pub mod pubsub;
mod read_batch;
pub mod redis;
mod store;
mod tiered;
mod windows;

pub use self::memory::MemoryCache;
pub use self::pubsub::PubSub;
pub use self::redis::RedisCache;
pub use self::store::{ReadTicket, SessionStore, WriteTicket};
pub use self::tiered::TieredCache;
pub use self::windows::RedisWindows;

use crate::domain::CachedSession;
use crate::token::TokenHash;
use async_trait::async_trait;
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
    /// A failure shared by the lookups of one batched call (its message says what failed).
    #[error("{0}")]
    Failed(std::sync::Arc<str>),
    /// This process could not send a lookup (too many waiting, or shutting down); Redis itself
    /// did not fail.
    #[error("redis lookup not sent: {0}")]
    Busy(&'static str),
    #[error("cached entry could not be decoded: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("cached entry could not be decoded: {0}")]
    DecodeEntry(#[from] rmp_serde::decode::Error),
    #[error("session could not be encoded for the cache: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
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
    /// Returns whether it was stored: an entry of a newer row (a higher `revision`) or a
    /// revoked token is never overwritten.
    async fn replace(&self, session: Arc<CachedSession>, ttl: Duration)
        -> Result<bool, CacheError>;
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
    /// Whether other processes read the entries this one writes (then a session that slides
    /// has its shared copy refreshed, so they see it slide).
    fn shares_entries(&self) -> bool {
        false
    }
    /// Waits until invalidations reach every other process as they would from a running
    /// instance (an observer learning who listens); nothing to wait for by default.
    async fn settle(&self) {}
    /// The process is stopping: stop serving from its own tier and tell the other processes
    /// not to wait for it; nothing to do by default.
    async fn leave(&self) {}
    /// `memory`, `redis` or `tiered`, for logs and metrics.
    fn name(&self) -> &'static str;
}
