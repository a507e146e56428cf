//! The cache staleness protocol, behind one value the session service talks to.
//!
//! The service says "cache this read, which started at T" ([`SessionStore::start_read`] then
//! [`SessionStore::put_read`]), "cache this new session", "this row changed"
//! ([`SessionStore::replace`]) and "drop these" (token, revoked token, user, everything); the
//! store decides what that means for the configured strategy:
//!
//! - **Epochs**: every invalidation (local, or heard from another instance by the tiered
//!   strategy) bumps a counter. A database read that overlapped an invalidation is not cached,
//!   and a local write that raced one is undone, so a read can never put back what a change
//!   just dropped. Shared tiers refuse such writes themselves (tombstones, per-user marks).
//! - **Failures**: a cache call that fails is a miss for reads; an invalidation that fails is
//!   retried in the background until it succeeds or every entry it concerned has expired (one
//!   cache TTL). A replacement that fails drops the old entry instead.
//! - **Unknown tokens**: well-formed tokens that exist nowhere are remembered briefly, so
//!   repeated garbage costs no query; `clear` forgets them.
//! - **Sliding**: a session that slid far enough has its shared copy refreshed off the request
//!   path, so other instances see it slide (strategies without a shared copy skip this).

use super::{CacheError, MemoryCache, RedisCache, SessionCache, TieredCache};
use crate::clock::now_ms;
use crate::config::CacheMode;
use crate::domain::CachedSession;
use crate::metrics::Metrics;
use crate::token::TokenHash;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The session cache with its staleness protocol; one per process, shared by all requests.
pub struct SessionStore {
    cache: Arc<dyn SessionCache>,
    /// Bumped by every invalidation (the tiered strategy bumps it for remote ones too).
    epoch: Arc<AtomicU64>,
    unknown: moka::sync::Cache<TokenHash, ()>,
    /// The newest row revision written through, per token, for one cache TTL. An entry of an
    /// older row (a write, or a database read, that lost a race with a newer write) is never
    /// cached, even after a conflict between writes dropped the newer entry.
    revision_floor: moka::sync::Cache<TokenHash, Arc<AtomicI64>>,
    /// Tickets of writes to session rows, taken while the row is locked (so, for one row, in
    /// the order the database applies the writes).
    write_seq: AtomicU64,
    /// The newest write ticket whose entry was cached, per token: an older write's entry,
    /// arriving late, is not cached over it.
    written_seq: moka::sync::Cache<TokenHash, Arc<tokio::sync::Mutex<u64>>>,
    metrics: Arc<Metrics>,
    cache_ttl_ms: i64,
    idle_ms: i64,
}

/// A write of a session row in progress: its place in the order of writes (see
/// [`SessionStore::write_ticket`]).
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct WriteTicket(u64);

/// A database read in progress: what the store knew when it started.
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct ReadTicket {
    epoch: u64,
    /// When the read started (ms); the entry it produces carries this as `loaded_at`.
    pub started_at: i64,
}

/// A cache invalidation, kept so it can be retried.
#[derive(Clone, Copy)]
enum Invalidation {
    Token(TokenHash),
    Revoke(TokenHash),
    User(i64),
    Clear,
}

impl Invalidation {
    async fn apply(&self, cache: &dyn SessionCache) -> Result<(), CacheError> {
        match self {
            Invalidation::Token(hash) => cache.delete(hash).await,
            Invalidation::Revoke(hash) => cache.revoke(hash).await,
            Invalidation::User(id) => cache.delete_user(*id).await,
            Invalidation::Clear => cache.clear().await,
        }
    }

    fn op(&self) -> &'static str {
        match self {
            Invalidation::Token(_) => "delete",
            Invalidation::Revoke(_) => "revoke",
            Invalidation::User(_) => "delete_user",
            Invalidation::Clear => "clear",
        }
    }
}

impl SessionStore {
    /// The store for `SESSION_CACHE`: `redis` and `tiered` need `redis` (configuration
    /// validation guarantees it; without it the in-process cache is used).
    pub fn for_mode(
        mode: CacheMode,
        redis: Option<Arc<RedisCache>>,
        capacity: u64,
        metrics: Arc<Metrics>,
        cache_ttl: Duration,
        idle: Duration,
    ) -> SessionStore {
        let epoch = Arc::new(AtomicU64::new(0));
        let memory = || MemoryCache::new(capacity, metrics.clone());
        let cache: Arc<dyn SessionCache> = match (mode, redis) {
            (CacheMode::Redis, Some(r)) => r,
            (CacheMode::Tiered, Some(r)) => TieredCache::start(memory(), r, epoch.clone()),
            _ => Arc::new(memory()),
        };
        SessionStore::new(cache, epoch, metrics, cache_ttl, idle)
    }

    /// The store of a short-lived process that changes what running instances cache (the
    /// command line): with Redis, invalidations go to Redis and to the tiered instances'
    /// channel ([`TieredCache::observe`]); without, there is nothing shared to invalidate.
    pub fn for_operator(
        redis: Option<Arc<RedisCache>>,
        metrics: Arc<Metrics>,
        cache_ttl: Duration,
        idle: Duration,
    ) -> SessionStore {
        let cache: Arc<dyn SessionCache> = match redis {
            Some(r) => TieredCache::observe(r, metrics.clone()),
            None => Arc::new(MemoryCache::new(1, metrics.clone())),
        };
        SessionStore::new(cache, Arc::new(AtomicU64::new(0)), metrics, cache_ttl, idle)
    }

    /// See [`SessionCache::settle`]: call before invalidating from a process that just started.
    pub async fn settle(&self) {
        self.cache.settle().await;
    }

    /// The process is stopping (see [`SessionCache::leave`]).
    pub async fn leave(&self) {
        self.cache.leave().await;
    }

    /// `epoch` must be the counter the strategy was built with (the tiered strategy bumps it
    /// when another instance invalidates).
    pub fn new(
        cache: Arc<dyn SessionCache>,
        epoch: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
        cache_ttl: Duration,
        idle: Duration,
    ) -> SessionStore {
        SessionStore {
            cache,
            epoch,
            unknown: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(cache_ttl.min(Duration::from_secs(300)))
                .build(),
            revision_floor: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_ttl)
                .build(),
            write_seq: AtomicU64::new(1),
            written_seq: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(cache_ttl)
                .build(),
            metrics,
            cache_ttl_ms: crate::clock::ms(cache_ttl),
            idle_ms: crate::clock::ms(idle),
        }
    }

    /// `memory`, `redis` or `tiered`, for logs and metrics.
    pub fn name(&self) -> &'static str {
        self.cache.name()
    }

    /// The cached entry of a token, fresh or not (a failing cache is a miss).
    pub async fn get(&self, hash: &TokenHash) -> Option<Arc<CachedSession>> {
        match self.cache.get(hash).await {
            Ok(found) => found,
            Err(e) => {
                self.failed("get", e);
                None
            }
        }
    }

    /// Whether an entry is recent enough to answer without the database.
    pub fn is_fresh(&self, s: &CachedSession, now: i64) -> bool {
        now - s.loaded_at < self.cache_ttl_ms
    }

    /// Whether the token was recently found to exist nowhere.
    pub fn is_known_unknown(&self, hash: &TokenHash) -> bool {
        self.unknown.contains_key(hash)
    }

    /// Remembers that a token exists nowhere (or names a dead session, which never returns).
    pub fn remember_unknown(&self, hash: &TokenHash) {
        self.unknown.insert(*hash, ());
    }

    /// Starts a database read whose result may be cached with [`SessionStore::put_read`].
    pub fn start_read(&self) -> ReadTicket {
        ReadTicket {
            epoch: self.epoch.load(Ordering::Acquire),
            started_at: now_ms(),
        }
    }

    /// Caches an entry read from the database, unless an invalidation overlapped the read.
    pub async fn put_read(&self, s: Arc<CachedSession>, read: ReadTicket) {
        if self.epoch.load(Ordering::Acquire) != read.epoch || self.older_than_written(&s) {
            return;
        }
        if let Err(e) = self.cache.set(s.clone(), self.ttl_for(&s, now_ms())).await {
            self.failed("set", e);
            return;
        }
        // An invalidation that ran between the check above and the set must win. Redis refuses
        // stale writes by itself (tombstones, user marks); only the in-process tier needs undoing.
        if self.epoch.load(Ordering::Acquire) != read.epoch {
            self.cache.evict_local(&s.token_hash);
        }
    }

    /// Caches a session just created, so the client's next request is a hit. A brand-new token
    /// cannot have a stale entry anywhere.
    pub async fn put_new(&self, s: Arc<CachedSession>) {
        let read = self.start_read();
        self.put_read(s, read).await;
    }

    /// Replaces a cached entry after a write to its row (write-through). If the cache cannot
    /// take the new version, the old one is dropped instead, so it cannot outlive the write.
    pub async fn replace(&self, s: Arc<CachedSession>) {
        if s.revision > 0 {
            let floor = self
                .revision_floor
                .get_with(s.token_hash, || Arc::new(AtomicI64::new(0)));
            if floor.fetch_max(s.revision, Ordering::AcqRel) > s.revision {
                // A newer write of the row got here first: neither copy is trusted.
                self.invalidate(Invalidation::Token(s.token_hash)).await;
                return;
            }
        }
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        match self
            .cache
            .replace(s.clone(), self.ttl_for(&s, now_ms()))
            .await
        {
            Ok(true) => {}
            // Refused: a newer revision of the row is cached, the token was dropped, or the
            // entry was read before its user's entries were dropped (whatever is cached may
            // then be older than this write). Neither copy is trusted: the next read reloads.
            Ok(false) => {
                self.invalidate(Invalidation::Token(s.token_hash)).await;
                return;
            }
            Err(e) => {
                self.failed("replace", e);
                self.invalidate(Invalidation::Token(s.token_hash)).await;
                return;
            }
        }
        if self.epoch.load(Ordering::Acquire) != epoch {
            self.cache.evict_local(&s.token_hash);
        }
    }

    /// A ticket for a write of a session row, to be taken while the transaction holds the row
    /// locked and used with [`SessionStore::replace_written`] after it commits.
    pub fn write_ticket(&self) -> WriteTicket {
        WriteTicket(self.write_seq.fetch_add(1, Ordering::AcqRel))
    }

    /// [`SessionStore::replace`] for a committed write of the row, unless a later write of it
    /// (a higher ticket) has already been cached here: concurrent writes of one session that
    /// finish out of order leave the last one's entry.
    pub async fn replace_written(&self, s: Arc<CachedSession>, ticket: WriteTicket) {
        let slot = self.written_seq.get_with(s.token_hash, Default::default);
        let mut newest = slot.lock().await;
        if ticket.0 < *newest {
            return;
        }
        *newest = ticket.0;
        self.replace(s).await;
    }

    /// Drops a token's entry after a committed write of its row that does not cache the row
    /// itself (a write of many rows, like `placeOrder` unsetting the order everywhere): a write
    /// with a lower ticket that is replacing late cannot put its entry back after the drop.
    pub async fn invalidate_written(&self, hash: &TokenHash, ticket: WriteTicket) {
        let slot = self.written_seq.get_with(*hash, Default::default);
        let mut newest = slot.lock().await;
        *newest = (*newest).max(ticket.0);
        self.invalidate(Invalidation::Token(*hash)).await;
    }

    /// Whether a newer revision of the session's row has been written through meanwhile.
    fn older_than_written(&self, s: &CachedSession) -> bool {
        self.revision_floor
            .get(&s.token_hash)
            .is_some_and(|floor| floor.load(Ordering::Acquire) > s.revision)
    }

    /// Drops an expired session's entry (it is dead; a failure only costs a later miss).
    pub async fn drop_expired(&self, hash: &TokenHash) {
        if let Err(e) = self.cache.delete(hash).await {
            self.failed("delete", e);
        }
    }

    /// The session slid far enough to be written: refresh a shared copy too, off the request
    /// path, so other instances see it slide. No-op when entries are not shared.
    pub fn slid(&self, s: &Arc<CachedSession>, now: i64) {
        if !self.cache.shares_entries() {
            return;
        }
        let cache = self.cache.clone();
        let entry = s.clone();
        let ttl = self.ttl_for(s, now);
        tokio::spawn(async move {
            let _ = cache.set(entry, ttl).await;
        });
    }

    /// Drops one token's cached entry after its row changed; the token stays usable.
    pub async fn invalidate_token(&self, hash: &TokenHash) {
        self.invalidate(Invalidation::Token(*hash)).await;
    }

    /// Drops a dead token's cached entry (session revoked, token rotated out or replaced at
    /// login) and keeps it out of the cache for [`super::TOMBSTONE_TTL`], whatever requests
    /// still in flight with it try to write back.
    pub async fn revoke(&self, hash: &TokenHash) {
        self.invalidate(Invalidation::Revoke(*hash)).await;
    }

    /// Drops every cached entry of one user (after a change to the user or their roles).
    pub async fn invalidate_user(&self, user_id: i64) {
        self.invalidate(Invalidation::User(user_id)).await;
    }

    /// Drops every entry, and the memory of unknown tokens.
    pub async fn clear(&self) {
        self.unknown.invalidate_all();
        self.invalidate(Invalidation::Clear).await;
    }

    /// How long an entry may stay cached: the cache TTL, or less if it expires sooner.
    fn ttl_for(&self, s: &CachedSession, now: i64) -> Duration {
        let left = (s.expires_at(self.idle_ms) - now).max(1);
        let ttl = (self.cache_ttl_ms - (now - s.loaded_at)).max(1);
        Duration::from_millis(left.min(ttl) as u64)
    }

    fn failed(&self, op: &str, err: CacheError) {
        self.metrics.error("redis");
        tracing::warn!(cache = self.cache.name(), op, error = %err, "session cache call failed; using the database");
    }

    /// Applies an invalidation. If the cache cannot take it now (Redis down or slow), it is
    /// retried in the background until it succeeds or every entry it could concern has expired
    /// anyway (one cache TTL).
    async fn invalidate(&self, what: Invalidation) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let Err(e) = what.apply(self.cache.as_ref()).await else {
            return;
        };
        self.failed(what.op(), e);
        let cache = self.cache.clone();
        let give_up_after = Duration::from_millis(self.cache_ttl_ms as u64);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut delay = Duration::from_millis(100);
            while started.elapsed() < give_up_after {
                tokio::time::sleep(delay).await;
                if what.apply(cache.as_ref()).await.is_ok() {
                    tracing::info!(op = what.op(), "deferred cache invalidation applied");
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token;

    fn with_data_version(hash: TokenHash, data_version: i64) -> Arc<CachedSession> {
        CachedSession::for_tests(hash, None, data_version)
    }

    /// An in-process store: 100 entries, a one-minute cache TTL, a one-hour idle timeout.
    fn memory_store() -> SessionStore {
        SessionStore::for_mode(
            CacheMode::Memory,
            None,
            100,
            Arc::new(Metrics::default()),
            Duration::from_secs(60),
            Duration::from_secs(3600),
        )
    }

    async fn cached_version(store: &SessionStore, hash: &TokenHash) -> Option<i64> {
        store.get(hash).await.map(|s| s.data_version)
    }

    /// Concurrent writes of one session's data reach the cache out of order (21, then 19,
    /// then 20): the conflict drops the newest entry, and neither the late write nor a database
    /// read that started before write 21 may then cache older data.
    #[tokio::test]
    async fn out_of_order_data_writes_never_leave_older_data_cached() {
        let store = memory_store();
        let hash = token::generate().hash;
        let stale_read = store.start_read();
        store.replace(with_data_version(hash, 21)).await;
        assert_eq!(cached_version(&store, &hash).await, Some(21));
        store.replace(with_data_version(hash, 19)).await;
        assert_eq!(cached_version(&store, &hash).await, None);
        store.replace(with_data_version(hash, 20)).await;
        assert_eq!(cached_version(&store, &hash).await, None);
        // A read that started after the conflict and still saw version 20 in the database.
        let read = store.start_read();
        store.put_read(with_data_version(hash, 20), read).await;
        assert_eq!(cached_version(&store, &hash).await, None);
        store
            .put_read(with_data_version(hash, 20), stale_read)
            .await;
        assert_eq!(cached_version(&store, &hash).await, None);
        // The current data is cached again.
        let read = store.start_read();
        store.put_read(with_data_version(hash, 21), read).await;
        assert_eq!(cached_version(&store, &hash).await, Some(21));
    }

    /// Two writes of one session's active columns (same data version) finish out of order:
    /// the entry of the write the database applied last stays cached; nor does a late write
    /// come back after a later drop.
    #[tokio::test]
    async fn a_late_earlier_write_does_not_replace_a_later_one_or_a_drop() {
        let store = memory_store();
        let hash = token::generate().hash;
        let with_channel = |channel: i64| {
            let mut s = with_data_version(hash, 3).with_active(Some(7), Some(channel));
            s.loaded_at = crate::clock::now_ms();
            Arc::new(s)
        };
        let cached_channel = || async { store.get(&hash).await.and_then(|s| s.active_channel_id) };
        let first = store.write_ticket();
        let second = store.write_ticket();
        store.replace_written(with_channel(2), second).await;
        store.replace_written(with_channel(1), first).await;
        assert_eq!(cached_channel().await, Some(2));
        let third = store.write_ticket();
        store.replace_written(with_channel(3), third).await;
        assert_eq!(cached_channel().await, Some(3));
        // A write committed before a drop of the row (placeOrder's), replacing after it.
        let before = store.write_ticket();
        let drop = store.write_ticket();
        store.invalidate_written(&hash, drop).await;
        store.replace_written(with_channel(4), before).await;
        assert_eq!(cached_channel().await, None);
    }
}
