//! The `memory` strategy: a bounded in-process cache with a per-user index, so one user's
//! sessions can be dropped without scanning the cache, and tombstones for revoked tokens, so a
//! request still in flight when its session was revoked cannot put the entry back, and per-user
//! marks, so a request still in flight when a user's sessions were dropped (a role or identifier
//! change) cannot put back an entry holding what was read before.
//!
//! The entries live in a `quick_cache` map: a lookup is a shared lock on one shard and a
//! reference bit, with no access log to replay later, which matters because every request
//! makes one. The tombstones, consulted on writes only, stay in moka for its per-entry expiry.

use super::{CacheError, SessionCache, TOMBSTONE_TTL};
use crate::domain::CachedSession;
use crate::metrics::Metrics;
use crate::token::TokenHash;
use async_trait::async_trait;
use moka::policy::EvictionPolicy;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

type UserIndex = HashMap<i64, HashSet<TokenHash>>;

type Entries = quick_cache::sync::Cache<
    TokenHash,
    Arc<CachedSession>,
    quick_cache::UnitWeighter,
    quick_cache::DefaultHashBuilder,
    Evicted,
>;

/// Stripes of the write lock: a tombstone check and the insert it allows happen under one lock
/// that revocation takes too, so they cannot interleave. Reads take no lock.
const WRITE_STRIPES: usize = 64;

pub struct MemoryCache {
    /// Token hash -> session, at most `capacity` entries.
    entries: Entries,
    /// User id -> token hashes of that user's cached sessions; kept in step on eviction
    /// ([`Evicted`]) and on removal.
    by_user: Mutex<UserIndex>,
    /// Token hashes revoked within [`TOMBSTONE_TTL`]: never stored again. Consulted on writes
    /// only. Oldest first out when full: a new revocation matters more than an old one.
    tombstones: moka::sync::Cache<TokenHash, ()>,
    /// User id -> when that user's entries were last dropped (ms), for [`TOMBSTONE_TTL`]: an
    /// entry whose user was read (`loaded_at`) at or before it is never stored. A request that
    /// read the session before a role change and writes it back after (a new active channel,
    /// session data) would otherwise put back the old grants for a whole cache TTL.
    user_marks: moka::sync::Cache<i64, i64>,
    /// When every entry was last dropped (ms): entries read at or before it are never stored.
    cleared_at: AtomicI64,
    writes: [Mutex<()>; WRITE_STRIPES],
    metrics: Arc<Metrics>,
}

/// Collects what one insert pushes out of the map: entries evicted to make room, and the
/// previous version of the key inserted (the map reports both the same way). The insert
/// takes the evicted ones out of the user index after the map's lock is released.
#[derive(Clone)]
struct Evicted;

impl quick_cache::Lifecycle<TokenHash, Arc<CachedSession>> for Evicted {
    type RequestState = Vec<(TokenHash, Arc<CachedSession>)>;

    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }

    fn on_evict(&self, out: &mut Self::RequestState, key: TokenHash, value: Arc<CachedSession>) {
        out.push((key, value));
    }
}

impl MemoryCache {
    /// A cache of at most `capacity` sessions. Entries carry no expiry of their own: the session
    /// service checks every entry's age against `SESSION_CACHE_TTL` (and its session's expiry)
    /// on each read and reloads stale ones, so per-entry timers would only cost memory.
    pub fn new(capacity: u64, metrics: Arc<Metrics>) -> Self {
        let items = usize::try_from(capacity).unwrap_or(usize::MAX);
        let entries = Entries::with(
            items,
            capacity,
            quick_cache::UnitWeighter,
            quick_cache::DefaultHashBuilder::default(),
            Evicted,
        );
        let tombstones = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(TOMBSTONE_TTL)
            .eviction_policy(EvictionPolicy::lru())
            .build();
        let user_marks = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(TOMBSTONE_TTL)
            .build();
        MemoryCache {
            entries,
            by_user: Mutex::default(),
            tombstones,
            user_marks,
            cleared_at: AtomicI64::new(0),
            writes: std::array::from_fn(|_| Mutex::new(())),
            metrics,
        }
    }

    fn write_lock(&self, key: &TokenHash) -> MutexGuard<'_, ()> {
        self.writes[usize::from(key.0[0]) % WRITE_STRIPES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn index(&self) -> MutexGuard<'_, UserIndex> {
        self.by_user.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries currently held (for tests and metrics).
    pub fn entry_count(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Synchronous lookup, for the tiered strategy and the hot path.
    pub fn get_sync(&self, key: &TokenHash) -> Option<Arc<CachedSession>> {
        let found = self.entries.get(key);
        self.metrics.cache_lookup("memory", found.is_some());
        found
    }

    /// Stores an entry unless its token was revoked, or it was read before its user's entries
    /// (or all entries) were dropped; returns whether it was stored.
    pub fn insert_sync(&self, session: Arc<CachedSession>) -> bool {
        let pushed_out = {
            let _write = self.write_lock(&session.token_hash);
            if self.tombstones.contains_key(&session.token_hash)
                || self.read_before_a_drop(&session)
            {
                return false;
            }
            // Never go back to an older row (a read or write that started before a write).
            if self.entries.peek(&session.token_hash).is_some_and(|cur| {
                cur.revision > session.revision || cur.data_version > session.data_version
            }) {
                return false;
            }
            if let Some(user_id) = session.user_id() {
                self.index()
                    .entry(user_id)
                    .or_default()
                    .insert(session.token_hash);
            }
            self.entries
                .insert_with_lifecycle(session.token_hash, session)
        };
        for (key, old) in pushed_out {
            if let Some(user_id) = old.user_id() {
                self.unindex_unless_cached(user_id, &key);
            }
        }
        true
    }

    /// Whether `session` was read at or before a drop of its user's entries or of all entries
    /// (the same millisecond counts: a needless miss is harmless, stale grants are not).
    fn read_before_a_drop(&self, session: &CachedSession) -> bool {
        if session.loaded_at <= self.cleared_at.load(Ordering::Acquire) {
            return true;
        }
        session
            .user_id()
            .and_then(|user_id| self.user_marks.get(&user_id))
            .is_some_and(|dropped_at| session.loaded_at <= dropped_at)
    }

    /// Takes `key` out of `user_id`'s index entry unless the map holds it for that user now:
    /// under the key's write lock, so an insert of the same key (which indexes, then stores)
    /// cannot fall in between and be left cached but unindexed, out of `delete_user`'s reach.
    fn unindex_unless_cached(&self, user_id: i64, key: &TokenHash) {
        let _write = self.write_lock(key);
        let cached_for = self.entries.peek(key).and_then(|s| s.user_id());
        if cached_for == Some(user_id) {
            return;
        }
        let mut index = self.index();
        if let Some(keys) = index.get_mut(&user_id) {
            keys.remove(key);
            if keys.is_empty() {
                index.remove(&user_id);
            }
        }
    }

    /// Drops an entry; the token may be cached again (its row changed, it was not revoked).
    pub fn delete_sync(&self, key: &TokenHash) {
        if let Some((key, session)) = self.entries.remove(key) {
            if let Some(user_id) = session.user_id() {
                self.unindex_unless_cached(user_id, &key);
            }
        }
    }

    /// Drops the entry of a revoked token and refuses to store it again for [`TOMBSTONE_TTL`].
    pub fn revoke_sync(&self, key: &TokenHash) {
        let removed = {
            let _write = self.write_lock(key);
            self.tombstones.insert(*key, ());
            self.entries.remove(key)
        };
        if let Some((key, session)) = removed {
            if let Some(user_id) = session.user_id() {
                self.unindex_unless_cached(user_id, &key);
            }
        }
    }

    /// Drops a user's entries and marks the user (see `user_marks`): the `memory` strategy's
    /// invalidation after a change to the user.
    pub fn delete_user_sync(&self, user_id: i64) {
        // Marked first: an insert checking after this refuses entries read before it; one that
        // checked before overlaps this drop, and is in the set below or undone by the store
        // (its epoch moved during the write).
        let now = crate::clock::now_ms();
        self.user_marks
            .entry(user_id)
            .and_upsert_with(|cur| cur.map_or(now, |e| (*e.value()).max(now)));
        self.forget_user_sync(user_id);
    }

    /// Drops a user's entries without marking the user: for the tiered strategy's local tier,
    /// whose entries come through Redis, which refuses stale writes itself (a mark here, taken
    /// at this instance's clock, would also refuse entries other instances read after the
    /// change, and send this user's lookups to Redis until it expired).
    pub fn forget_user_sync(&self, user_id: i64) {
        let keys = self.index().remove(&user_id).unwrap_or_default();
        // Each under its key's write lock: an insert of the key that already indexed it (in
        // the set just taken) finishes storing first, and is then dropped here.
        for key in keys {
            let _write = self.write_lock(&key);
            self.entries.remove(&key);
        }
    }

    /// Drops every entry and refuses entries read before now (`clearSessionCache` on the
    /// `memory` strategy).
    pub fn clear_sync(&self) {
        self.cleared_at
            .fetch_max(crate::clock::now_ms(), Ordering::AcqRel);
        self.forget_all_sync();
    }

    /// Drops every entry without a mark: the tiered strategy's local tier (subscription lost or
    /// regained, a peer's clear), as for [`Self::forget_user_sync`]. A mark there would keep
    /// every session already in Redis out of the local tier until it was read again.
    pub fn forget_all_sync(&self) {
        // Every write lock, in order (nothing else holds two), so no insert is between
        // indexing and storing while the map and the index are emptied.
        let _writes: Vec<_> = self
            .writes
            .iter()
            .map(|w| w.lock().unwrap_or_else(PoisonError::into_inner))
            .collect();
        self.entries.clear();
        self.index().clear();
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
    async fn dropped_and_revoked_entries_leave_the_user_index() {
        let cache = MemoryCache::new(100, Arc::default());
        let sessions: Vec<_> = (0..20).map(|i| session(Some(i % 3))).collect();
        for s in &sessions {
            cache.set(s.clone(), Duration::from_secs(60)).await.unwrap();
        }
        for (i, s) in sessions.iter().enumerate() {
            if i % 2 == 0 {
                cache.delete(&s.token_hash).await.unwrap();
            } else {
                cache.revoke(&s.token_hash).await.unwrap();
            }
        }
        assert_eq!(cache.entry_count(), 0);
        assert!(cache.by_user.lock().unwrap().is_empty(), "index kept keys");
        // A replacement keeps its key indexed: dropping the user still finds it.
        let s = session(Some(7));
        cache.set(s.clone(), Duration::from_secs(60)).await.unwrap();
        let newer = CachedSession::for_tests(s.token_hash, Some(7), 1);
        assert!(cache.replace(newer, Duration::from_secs(60)).await.unwrap());
        cache.delete_user(7).await.unwrap();
        assert!(cache.get(&s.token_hash).await.unwrap().is_none());
    }

    /// Inserts, drops, revocations, per-user drops, clears and evictions of the same keys from
    /// several threads at once: whatever the interleaving, every cached session stays in its
    /// user's index (else `delete_user` would miss it and a permission change would not reach
    /// it).
    #[test]
    fn every_cached_session_stays_indexed_under_concurrent_writes() {
        let cache = Arc::new(MemoryCache::new(16, Arc::default()));
        let keys: Arc<Vec<(TokenHash, i64)>> = Arc::new(
            (0..48)
                .map(|i| (token::generate().hash, i64::from(i % 5)))
                .collect(),
        );
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (cache, keys) = (cache.clone(), keys.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let x: u64 = rand::random();
                        let (key, user) = keys[(x % keys.len() as u64) as usize];
                        match (x >> 40) % 64 {
                            0 => cache.delete_user_sync(user),
                            1 if (x >> 50).is_multiple_of(16) => cache.clear_sync(),
                            2 if (x >> 50).is_multiple_of(8) => cache.revoke_sync(&key),
                            n if n % 2 == 0 => cache.delete_sync(&key),
                            _ => {
                                cache.insert_sync(CachedSession::for_tests(key, Some(user), 0));
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let index = cache.by_user.lock().unwrap();
        for (key, user) in keys.iter() {
            if cache.entries.peek(key).is_some() {
                assert!(
                    index.get(user).is_some_and(|k| k.contains(key)),
                    "a cached session of user {user} is not indexed"
                );
            }
        }
    }

    /// A request that read a session before its user's entries were dropped (a role change)
    /// and writes it back after (a new active channel) must not put the old grants back; an
    /// entry read after the drop is stored, and other users are not concerned.
    #[tokio::test]
    async fn entries_read_before_a_drop_of_their_user_are_not_stored_again() {
        let cache = MemoryCache::new(100, Arc::default());
        let read_before = |user: i64| {
            let s = session(Some(user));
            let mut old = s.with_active(None, None);
            old.loaded_at -= 5;
            Arc::new(old)
        };
        let (a, b) = (read_before(1), read_before(2));
        assert!(cache.insert_sync(a.clone()));
        cache.delete_user(1).await.unwrap();
        assert!(!cache.insert_sync(a.clone()), "the old grants came back");
        assert!(cache.get(&a.token_hash).await.unwrap().is_none());
        assert!(
            cache.insert_sync(b.clone()),
            "another user's entry is refused"
        );
        let mut fresh = a.with_active(None, None);
        fresh.loaded_at = crate::clock::now_ms() + 1;
        assert!(
            cache.insert_sync(Arc::new(fresh)),
            "an entry read after the drop"
        );

        cache.clear().await.unwrap();
        assert!(!cache.insert_sync(b), "an entry read before a clear");
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
        // Read again after the drops (entries read before them are refused, see below).
        for s in [&revoked, &dropped] {
            let mut again = s.with_active(None, None);
            again.loaded_at = crate::clock::now_ms() + 1;
            let again = Arc::new(again);
            cache
                .set(again.clone(), Duration::from_secs(60))
                .await
                .unwrap();
            cache.replace(again, Duration::from_secs(60)).await.unwrap();
        }
        assert!(cache.get(&revoked.token_hash).await.unwrap().is_none());
        assert!(cache.get(&dropped.token_hash).await.unwrap().is_some());
    }
}
