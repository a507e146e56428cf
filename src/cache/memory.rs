//! The `memory` strategy: a bounded in-process cache (moka) with a per-user index, so one user's
//! sessions can be dropped without scanning the cache, and tombstones for revoked tokens, so a
//! request still in flight when its session was revoked cannot put the entry back.

use super::{CacheError, SessionCache, TOMBSTONE_TTL};
use crate::domain::CachedSession;
use crate::metrics::Metrics;
use crate::token::TokenHash;
use async_trait::async_trait;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

type UserIndex = Arc<Mutex<HashMap<i64, HashSet<TokenHash>>>>;

/// Stripes of the write lock: a tombstone check and the insert it allows happen under one lock
/// that revocation takes too, so they cannot interleave. Reads take no lock.
const WRITE_STRIPES: usize = 64;

pub struct MemoryCache {
    /// Token hash -> session, at most `capacity` entries, none older than the cache TTL.
    entries: Cache<TokenHash, Arc<CachedSession>>,
    /// User id -> token hashes of that user's cached sessions; kept in step by the eviction
    /// listener.
    by_user: UserIndex,
    /// Token hashes revoked within [`TOMBSTONE_TTL`]: never stored again. Consulted on writes
    /// only. Oldest first out when full: a new revocation matters more than an old one.
    tombstones: Cache<TokenHash, ()>,
    writes: [Mutex<()>; WRITE_STRIPES],
    metrics: Arc<Metrics>,
}

fn unindex(index: &UserIndex, user_id: i64, key: &TokenHash) {
    let mut map = index.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(keys) = map.get_mut(&user_id) {
        keys.remove(key);
        if keys.is_empty() {
            map.remove(&user_id);
        }
    }
}

impl MemoryCache {
    /// A cache of at most `capacity` sessions. Entries carry no expiry of their own: the session
    /// service checks every entry's age against `SESSION_CACHE_TTL` (and its session's expiry)
    /// on each read and reloads stale ones, so per-entry timers would only cost memory.
    pub fn new(capacity: u64, metrics: Arc<Metrics>) -> Self {
        let by_user: UserIndex = Arc::default();
        let index = by_user.clone();
        let entries = Cache::builder()
            .max_capacity(capacity)
            .eviction_listener(
                move |key: Arc<TokenHash>, value: Arc<CachedSession>, cause| {
                    // A replacement keeps the key cached: its index entry must stay.
                    if cause != RemovalCause::Replaced {
                        if let Some(user_id) = value.user_id() {
                            unindex(&index, user_id, &key);
                        }
                    }
                },
            )
            .build();
        let tombstones = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(TOMBSTONE_TTL)
            .eviction_policy(EvictionPolicy::lru())
            .build();
        MemoryCache {
            entries,
            by_user,
            tombstones,
            writes: std::array::from_fn(|_| Mutex::new(())),
            metrics,
        }
    }

    fn write_lock(&self, key: &TokenHash) -> std::sync::MutexGuard<'_, ()> {
        self.writes[usize::from(key.0[0]) % WRITE_STRIPES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries currently held, after pending evictions have run (for tests and metrics).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Synchronous lookup, for the tiered strategy and the hot path.
    pub fn get_sync(&self, key: &TokenHash) -> Option<Arc<CachedSession>> {
        let found = self.entries.get(key);
        self.metrics.cache_lookup("memory", found.is_some());
        found
    }

    /// Stores an entry unless its token was revoked; returns whether it was stored.
    pub fn insert_sync(&self, session: Arc<CachedSession>) -> bool {
        let _write = self.write_lock(&session.token_hash);
        if self.tombstones.contains_key(&session.token_hash) {
            return false;
        }
        // Never go back to older data (a read or write that started before an update of it).
        if self
            .entries
            .get(&session.token_hash)
            .is_some_and(|cur| cur.data_version > session.data_version)
        {
            return false;
        }
        if let Some(user_id) = session.user_id() {
            self.by_user
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(user_id)
                .or_default()
                .insert(session.token_hash);
        }
        self.entries.insert(session.token_hash, session);
        true
    }

    /// Drops an entry; the token may be cached again (its row changed, it was not revoked).
    pub fn delete_sync(&self, key: &TokenHash) {
        self.entries.invalidate(key);
    }

    /// Drops the entry of a revoked token and refuses to store it again for [`TOMBSTONE_TTL`].
    pub fn revoke_sync(&self, key: &TokenHash) {
        let _write = self.write_lock(key);
        self.tombstones.insert(*key, ());
        self.entries.invalidate(key);
    }

    pub fn delete_user_sync(&self, user_id: i64) {
        let keys = self
            .by_user
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&user_id)
            .unwrap_or_default();
        for key in keys {
            self.entries.invalidate(&key);
        }
    }

    pub fn clear_sync(&self) {
        self.entries.invalidate_all();
        self.by_user
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[async_trait]
impl SessionCache for MemoryCache {
    async fn get(&self, key: &TokenHash) -> Result<Option<Arc<CachedSession>>, CacheError> {
        Ok(self.get_sync(key))
    }

    async fn set(&self, session: Arc<CachedSession>, _ttl: Duration) -> Result<(), CacheError> {
        // Expiry is checked on every read, so the cache-wide TTL is enough here.
        self.insert_sync(session);
        Ok(())
    }

    async fn replace(
        &self,
        session: Arc<CachedSession>,
        _ttl: Duration,
    ) -> Result<bool, CacheError> {
        Ok(self.insert_sync(session))
    }

    async fn delete(&self, key: &TokenHash) -> Result<(), CacheError> {
        self.delete_sync(key);
        Ok(())
    }

    async fn revoke(&self, key: &TokenHash) -> Result<(), CacheError> {
        self.revoke_sync(key);
        Ok(())
    }

    async fn delete_user(&self, user_id: i64) -> Result<(), CacheError> {
        self.delete_user_sync(user_id);
        Ok(())
    }

    async fn clear(&self) -> Result<(), CacheError> {
        self.clear_sync();
        Ok(())
    }

    fn evict_local(&self, key: &TokenHash) {
        self.delete_sync(key);
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token;

    fn session(user: Option<i64>) -> Arc<CachedSession> {
        CachedSession::for_tests(token::generate().hash, user, 0)
    }

    #[tokio::test]
    async fn capacity_bound_holds_under_more_inserts() {
        let cache = MemoryCache::new(100, Arc::default());
        for i in 0..1000 {
            cache
                .set(session(Some(i % 7)), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert!(cache.entry_count() <= 100, "held {}", cache.entry_count());
        // Evicted entries leave the user index too, so it cannot grow without bound either.
        let indexed: usize = cache
            .by_user
            .lock()
            .unwrap()
            .values()
            .map(|s| s.len())
            .sum();
        assert!(indexed <= 100, "index held {indexed}");
    }

    #[tokio::test]
    async fn delete_user_drops_only_that_users_sessions() {
        let cache = MemoryCache::new(100, Arc::default());
        let (a1, a2, b) = (session(Some(1)), session(Some(1)), session(Some(2)));
        for s in [&a1, &a2, &b] {
            cache.set(s.clone(), Duration::from_secs(60)).await.unwrap();
        }
        cache.delete_user(1).await.unwrap();
        assert!(cache.get(&a1.token_hash).await.unwrap().is_none());
        assert!(cache.get(&a2.token_hash).await.unwrap().is_none());
        assert!(cache.get(&b.token_hash).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_revoked_token_cannot_be_stored_again_but_a_dropped_one_can() {
        let cache = MemoryCache::new(100, Arc::default());
        let (revoked, dropped) = (session(Some(1)), session(None));
        for s in [&revoked, &dropped] {
            cache.set(s.clone(), Duration::from_secs(60)).await.unwrap();
        }
        cache.revoke(&revoked.token_hash).await.unwrap();
        cache.delete(&dropped.token_hash).await.unwrap();
        cache.delete_user(1).await.unwrap();
        cache.clear().await.unwrap();
        for s in [&revoked, &dropped] {
            cache.set(s.clone(), Duration::from_secs(60)).await.unwrap();
            cache
                .replace(s.clone(), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert!(cache.get(&revoked.token_hash).await.unwrap().is_none());
        assert!(cache.get(&dropped.token_hash).await.unwrap().is_some());
    }
}
