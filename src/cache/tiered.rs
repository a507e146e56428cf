//! The `tiered` strategy: the bounded in-process cache in front of Redis.
//!
//! Every invalidation is applied locally, in Redis, and published on the channel
//! `<prefix>invalidate`; every instance drops the affected in-process entries on receipt and
//! acknowledges. The instance that made the change waits (up to [`ACK_WAIT`]) until every live
//! peer has acknowledged before it answers, so the change holds on the client's very next
//! request whichever instance serves it. Peers are known from heartbeats, published every
//! second and at once on subscribing. An instance that has heard nothing for three seconds, or
//! whose subscription breaks, clears its in-process tier and serves from Redis or the database
//! until it has subscribed again, so it never serves what it was not told about.
//!
//! Why a slow instance never serves what it was told too late: heartbeats carry the time they
//! were sent, and an instance uses its in-process tier only while the newest of its own
//! heartbeats that came back was sent less than [`OWN_LAG_LIMIT_MS`] ago. Messages arrive in
//! order, so every invalidation it has not applied yet was published after that heartbeat,
//! and the instance that published it is still waiting ([`ACK_WAIT`] is longer than the limit):
//! no client has been told of the change. Both times come from the instance's own clock. Peers
//! wait for an instance until they have not heard it for [`PEER_LIVE_MS`], longer than it can
//! go on using its tier after its last heartbeat; an instance whose own view of its peers is
//! stale waits for every peer it heard from in the last minute. An instance that stops
//! gracefully first stops using its tier and says so (`bye`), and its peers stop waiting for it
//! at once instead of for [`ACK_WAIT`] on every change until they stop hearing it.
//!
//! Payloads: `t:<token-hash>|<id>` (drop), `r:<token-hash>|<id>` (revoked: drop and keep a
//! tombstone), `u:<user-id>|<id>`, `*|<id>` (clear), `hb:<instance>`, `ack:<id>:<instance>`,
//! `bye:<instance>` (a stopping instance: its peers stop waiting for it);
//! `<id>` is `<instance>.<sequence>`.
//!
//! An observer ([`TieredCache::observe`], the command line) publishes invalidations and waits
//! for acknowledgements like an instance, but never announces itself (so no instance waits
//! for it after it exits), never acknowledges, and keeps no local tier.

use super::{CacheError, MemoryCache, RedisCache, SessionCache};
use crate::domain::CachedSession;
use crate::token::TokenHash;
use async_trait::async_trait;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::Notify;

const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// Silence longer than this means the subscription is not delivering.
const SILENCE_LIMIT_MS: i64 = 3_000;
/// The in-process tier is used only while the newest own heartbeat that came back was sent
/// less than this long ago.
const OWN_LAG_LIMIT_MS: i64 = 1_000;
/// A peer heard from within this long is waited for: longer than a peer can go on using its
/// in-process tier after the last heartbeat it sent.
const PEER_LIVE_MS: i64 = 3_000;
/// Longest wait for peers to acknowledge an invalidation; longer than [`OWN_LAG_LIMIT_MS`]. A
/// live peer answers within a millisecond on a quiet machine, a few hundred on a loaded one
/// (250 ms once proved too short on CI's two cores). A peer that died makes changes wait this
/// long until it is no longer live.
pub const ACK_WAIT: Duration = Duration::from_millis(1_500);

// An invalidation a peer has not applied is waited for longer than the peer may lag; the others
// wait for an instance for as long as it may use its tier after its last heartbeat.
const _: () = assert!(ACK_WAIT.as_millis() as i64 > OWN_LAG_LIMIT_MS);
const _: () = assert!(PEER_LIVE_MS > OWN_LAG_LIMIT_MS + 2 * HEARTBEAT_EVERY.as_millis() as i64);

/// Whether, at `now`, this instance's newest own heartbeat that came back was sent recently
/// enough (`own_sent`) for the local tier to be trusted (both in ms of this instance's clock).
/// It also shows the subscription delivering: the heartbeat came back through it. A time
/// after `now` is not trusted.
fn heard_recently(now: i64, own_sent: i64) -> bool {
    (0..OWN_LAG_LIMIT_MS).contains(&(now - own_sent))
}

/// Invalidations this instance published and the peers that have not acknowledged them yet.
type PendingAcks = HashMap<String, (HashSet<String>, Arc<Notify>)>;

pub struct TieredCache {
    local: MemoryCache,
    remote: Arc<RedisCache>,
    /// Whether the invalidation subscription is live; while false the local tier is unused.
    subscribed: AtomicBool,
    /// When the newest of this instance's own heartbeats that came back was sent (ms; 0 until
    /// one came back since subscribing): every message published before it has been applied.
    own_sent: AtomicI64,
    /// Bumped on every invalidation, local or remote; shared with the session service so a read
    /// that overlaps an invalidation is not cached.
    epoch: Arc<AtomicU64>,
    channel: String,
    /// This instance's random name in heartbeats, message ids and acknowledgements.
    instance: String,
    /// Peers and when they were last heard from (ms).
    peers: Mutex<HashMap<String, i64>>,
    pending: Mutex<PendingAcks>,
    sequence: AtomicU64,
    /// Itself, for the acknowledgement tasks it spawns.
    me: Weak<TieredCache>,
    /// Publishes and listens only: no heartbeats, no acknowledgements, no local tier.
    observer: bool,
    /// Set when the process stops: no local tier, no heartbeats from then on.
    left: AtomicBool,
}

/// A message on the invalidation channel.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    Token(TokenHash, Option<String>),
    Revoked(TokenHash, Option<String>),
    User(i64, Option<String>),
    Clear(Option<String>),
    /// From an instance, with when it was sent (ms; absent from earlier versions).
    Heartbeat {
        from: String,
        sent: Option<i64>,
    },
    Ack {
        id: String,
        from: String,
    },
    /// An instance that is stopping: its peers stop waiting for it (until it is heard again).
    Bye {
        from: String,
    },
}

fn parse_message(payload: &str) -> Option<Message> {
    if let Some(rest) = payload.strip_prefix("hb:") {
        let (from, sent) = match rest.rsplit_once(':') {
            Some((from, sent)) => (from, Some(sent.parse().ok()?)),
            None => (rest, None),
        };
        return Some(Message::Heartbeat {
            from: from.to_string(),
            sent,
        });
    }
    if let Some(from) = payload.strip_prefix("bye:") {
        return (!from.is_empty()).then(|| Message::Bye {
            from: from.to_string(),
        });
    }
    if let Some(rest) = payload.strip_prefix("ack:") {
        let (id, from) = rest.rsplit_once(':')?;
        return Some(Message::Ack {
            id: id.to_string(),
            from: from.to_string(),
        });
    }
    let (body, id) = match payload.split_once('|') {
        Some((body, id)) => (body, Some(id.to_string())),
        None => (payload, None),
    };
    if body == "*" {
        return Some(Message::Clear(id));
    }
    let (kind, rest) = body.split_once(':')?;
    match kind {
        "t" => TokenHash::from_hex(rest).map(|h| Message::Token(h, id)),
        "r" => TokenHash::from_hex(rest).map(|h| Message::Revoked(h, id)),
        "u" => rest.parse().ok().map(|u| Message::User(u, id)),
        _ => None,
    }
}

/// The instance that published message `id`.
fn origin(id: &str) -> &str {
    id.rsplit_once('.').map_or(id, |(origin, _)| origin)
}

impl TieredCache {
    /// Builds the cache and starts its subscriber and heartbeat tasks (they stop when the cache
    /// is dropped).
    pub fn start(
        local: MemoryCache,
        remote: Arc<RedisCache>,
        epoch: Arc<AtomicU64>,
    ) -> Arc<TieredCache> {
        let cache = TieredCache::build(local, remote, epoch, false);
        tokio::spawn(heartbeat_loop(Arc::downgrade(&cache)));
        cache
    }

    /// An observer: it invalidates in Redis and tells the instances, and once
    /// [`SessionCache::settle`] has heard their heartbeats it waits for their acknowledgements,
    /// but no instance ever waits for it.
    pub fn observe(
        remote: Arc<RedisCache>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<TieredCache> {
        let local = MemoryCache::new(1, metrics);
        TieredCache::build(local, remote, Arc::new(AtomicU64::new(0)), true)
    }

    fn build(
        local: MemoryCache,
        remote: Arc<RedisCache>,
        epoch: Arc<AtomicU64>,
        observer: bool,
    ) -> Arc<TieredCache> {
        let cache = Arc::new_cyclic(|me| TieredCache {
            observer,
            left: AtomicBool::new(false),
            me: me.clone(),
            channel: format!("{}invalidate", remote.prefix()),
            instance: crate::token::random_string(6),
            local,
            remote,
            subscribed: AtomicBool::new(false),
            own_sent: AtomicI64::new(0),
            epoch,
            peers: Mutex::default(),
            pending: Mutex::default(),
            sequence: AtomicU64::new(0),
        });
        tokio::spawn(subscribe_loop(Arc::downgrade(&cache)));
        cache
    }

    /// Whether the local tier may be used right now.
    fn local_usable(&self) -> bool {
        !self.observer
            && !self.left.load(Ordering::Acquire)
            && self.subscribed.load(Ordering::Acquire)
            && heard_recently(
                crate::clock::now_ms(),
                self.own_sent.load(Ordering::Acquire),
            )
    }

    /// Forgets the local tier (subscription lost or regained).
    fn drop_local(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.local.forget_all_sync();
    }

    fn apply(&self, msg: Message) {
        let now = crate::clock::now_ms();
        let id = match msg {
            Message::Token(hash, id) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.local.delete_sync(&hash);
                id
            }
            Message::Revoked(hash, id) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.local.revoke_sync(&hash);
                id
            }
            Message::User(user_id, id) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.local.forget_user_sync(user_id);
                id
            }
            Message::Clear(id) => {
                self.drop_local();
                id
            }
            Message::Heartbeat { from, sent } => {
                if from == self.instance {
                    // Never later than now: a heartbeat claiming a future time (a forged
                    // message) must not keep the local tier in use.
                    if let Some(sent) = sent {
                        self.own_sent.fetch_max(sent.min(now), Ordering::AcqRel);
                    }
                } else {
                    self.peers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(from, now);
                }
                None
            }
            Message::Bye { from } => {
                // A forged one costs at most one heartbeat interval of waiting for the peer:
                // its next heartbeat makes it live again.
                if from != self.instance {
                    self.peers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&from);
                    let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    for (waiting, notify) in pending.values_mut() {
                        if waiting.remove(&from) {
                            notify.notify_one();
                        }
                    }
                }
                None
            }
            Message::Ack { id, from } => {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((waiting, notify)) = pending.get_mut(&id) {
                    waiting.remove(&from);
                    notify.notify_one();
                }
                None
            }
        };
        // Applied: tell the instance that is waiting on it.
        if let Some(id) = id.filter(|id| origin(id) != self.instance && !self.observer) {
            if let Some(me) = self.me.upgrade() {
                tokio::spawn(async move {
                    let _ = me.publish(format!("ack:{id}:{}", me.instance)).await;
                });
            }
        }
    }

    /// Peers heard from recently enough to be expected to acknowledge; every peer heard from in
    /// the last minute while this instance's own heartbeats do not come back in time (it may
    /// not have heard the others lately either).
    fn live_peers(&self) -> HashSet<String> {
        let now = crate::clock::now_ms();
        let own_view_stale =
            !self.observer && now - self.own_sent.load(Ordering::Acquire) >= OWN_LAG_LIMIT_MS;
        let live_for = if own_view_stale { 60_000 } else { PEER_LIVE_MS };
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.retain(|_, heard| now - *heard < 60_000);
        peers
            .iter()
            .filter(|(_, heard)| now - **heard < live_for)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Publishes an invalidation and waits until every live peer has applied it (or
    /// [`ACK_WAIT`] has passed).
    async fn broadcast(&self, body: String) -> Result<(), CacheError> {
        let id = format!(
            "{}.{}",
            self.instance,
            self.sequence.fetch_add(1, Ordering::Relaxed)
        );
        let waiting = self.live_peers();
        let notify = Arc::new(Notify::new());
        if !waiting.is_empty() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.clone(), (waiting, notify.clone()));
        }
        let published = self.publish(format!("{body}|{id}")).await;
        if published.is_ok() {
            let all_acked = async {
                loop {
                    let done = self
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&id)
                        .is_none_or(|(waiting, _)| waiting.is_empty());
                    if done {
                        return;
                    }
                    notify.notified().await;
                }
            };
            if tokio::time::timeout(ACK_WAIT, all_acked).await.is_err() {
                tracing::warn!("an instance did not acknowledge a cache invalidation in time");
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        published
    }

    /// `hb:<instance>:<sent ms>`.
    fn heartbeat(&self) -> String {
        format!("hb:{}:{}", self.instance, crate::clock::now_ms())
    }

    async fn publish(&self, payload: String) -> Result<(), CacheError> {
        let mut conn = self.remote.conn();
        self.remote
            .bounded(
                redis::cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(payload)
                    .query_async::<i64>(&mut conn),
            )
            .await
            .map(|_| ())
    }
}

async fn subscribe_loop(cache: Weak<TieredCache>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(c) = cache.upgrade() else { return };
        let node = c.remote.target().any_node().to_string();
        let channel = c.channel.clone();
        drop(c);
        let subscribed = super::pubsub::open_subscription(&node, &channel);
        match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(pubsub)) => {
                let Some(c) = cache.upgrade() else { return };
                // Whatever happened while unsubscribed was not heard: start from empty.
                c.drop_local();
                // The local tier waits for the heartbeat announced just below to come back.
                c.own_sent.store(0, Ordering::Release);
                c.subscribed.store(true, Ordering::Release);
                tracing::info!("tiered cache subscribed to invalidations");
                // Announce at once, so peers wait for this instance's acknowledgements.
                if !c.observer {
                    let _ = c.publish(c.heartbeat()).await;
                }
                drop(c);
                backoff = Duration::from_millis(100);
                let mut messages = pubsub.into_on_message();
                loop {
                    let next = tokio::time::timeout(
                        Duration::from_millis(SILENCE_LIMIT_MS as u64),
                        messages.next(),
                    )
                    .await;
                    let Some(c) = cache.upgrade() else { return };
                    match next {
                        Ok(Some(msg)) => {
                            if let Some(m) = msg
                                .get_payload::<String>()
                                .ok()
                                .as_deref()
                                .and_then(parse_message)
                            {
                                c.apply(m);
                            }
                        }
                        // Silence is no news to an observer: it keeps no local tier, and no
                        // instance may be running.
                        Err(_) if c.observer => {}
                        // Closed, or silent for too long (heartbeats stopped arriving).
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "tiered cache cannot subscribe to invalidations")
            }
            Err(_) => tracing::warn!("tiered cache subscription timed out"),
        }
        let Some(c) = cache.upgrade() else { return };
        if c.subscribed.swap(false, Ordering::AcqRel) {
            tracing::warn!("tiered cache lost its invalidation subscription; serving from Redis and the database");
        }
        c.drop_local();
        drop(c);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn heartbeat_loop(cache: Weak<TieredCache>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tick.tick().await;
        let Some(c) = cache.upgrade() else { return };
        // Only a subscribed instance acknowledges: one that is not must not be waited for.
        if c.subscribed.load(Ordering::Acquire) && !c.left.load(Ordering::Acquire) {
            let _ = c.publish(c.heartbeat()).await;
        }
    }
}

#[async_trait]
impl SessionCache for TieredCache {
    async fn get(&self, key: &TokenHash) -> Result<Option<Arc<CachedSession>>, CacheError> {
        let usable = self.local_usable();
        if usable {
            if let Some(s) = self.local.get_sync(key) {
                return Ok(Some(s));
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let found = self.remote.get(key).await?;
        if let Some(s) = &found {
            // Same rule as the session service: an invalidation heard during the Redis read
            // wins over what the read returned.
            if usable && self.epoch.load(Ordering::Acquire) == epoch {
                self.local.insert_sync(s.clone());
                if self.epoch.load(Ordering::Acquire) != epoch {
                    self.local.delete_sync(key);
                }
            }
        }
        Ok(found)
    }

    async fn set(&self, session: Arc<CachedSession>, ttl: Duration) -> Result<(), CacheError> {
        // Only what Redis accepted goes in the local tier: Redis knows of revocations and user
        // invalidations this instance may not have heard of yet.
        if self.remote.store(session.clone(), ttl).await? && self.local_usable() {
            self.local.insert_sync(session);
        }
        Ok(())
    }

    async fn replace(
        &self,
        session: Arc<CachedSession>,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let hash = session.token_hash;
        let stored = self.remote.store(session.clone(), ttl).await?;
        if stored && self.local_usable() {
            self.local.insert_sync(session);
        } else {
            self.local.delete_sync(&hash);
        }
        self.broadcast(format!("t:{}", hash.to_hex())).await?;
        Ok(stored)
    }

    async fn delete(&self, key: &TokenHash) -> Result<(), CacheError> {
        self.local.delete_sync(key);
        let remote = self.remote.delete(key).await;
        let published = self.broadcast(format!("t:{}", key.to_hex())).await;
        remote.and(published)
    }

    async fn revoke(&self, key: &TokenHash) -> Result<(), CacheError> {
        // The local tombstone also stops a `set` of this instance whose Redis write went
        // through just before the revocation from putting the entry in the local tier.
        self.local.revoke_sync(key);
        let remote = self.remote.revoke(key).await;
        let published = self.broadcast(format!("r:{}", key.to_hex())).await;
        remote.and(published)
    }

    async fn delete_user(&self, user_id: i64) -> Result<(), CacheError> {
        self.local.forget_user_sync(user_id);
        let remote = self.remote.delete_user(user_id).await;
        let published = self.broadcast(format!("u:{user_id}")).await;
        remote.and(published)
    }

    async fn clear(&self) -> Result<(), CacheError> {
        self.local.forget_all_sync();
        let remote = self.remote.clear().await;
        let published = self.broadcast("*".to_string()).await;
        remote.and(published)
    }

    fn evict_local(&self, key: &TokenHash) {
        self.local.delete_sync(key);
    }

    fn shares_entries(&self) -> bool {
        true
    }

    /// No local tier and no heartbeats from now on, then `bye` to the peers.
    async fn leave(&self) {
        if self.observer || self.left.swap(true, Ordering::AcqRel) {
            return;
        }
        self.drop_local();
        if let Err(e) = self.publish(format!("bye:{}", self.instance)).await {
            tracing::warn!(error = %e, "could not tell the other instances this one is leaving; they wait for it until they stop hearing it");
        }
    }

    /// An observer waits (up to two seconds) to be subscribed, then one heartbeat period, so
    /// it knows every live instance and waits for their acknowledgements.
    async fn settle(&self) {
        if !self.observer {
            return;
        }
        let subscribed = async {
            while !self.subscribed.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), subscribed)
            .await
            .is_err()
        {
            tracing::warn!("not subscribed to the cache invalidation channel: instances with SESSION_CACHE=tiered learn of this change from Redis only when their local copy expires");
            return;
        }
        tokio::time::sleep(HEARTBEAT_EVERY + Duration::from_millis(250)).await;
    }

    fn name(&self) -> &'static str {
        "tiered"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        let h = crate::token::generate().hash;
        assert_eq!(
            parse_message(&format!("t:{}|ab.1", h.to_hex())),
            Some(Message::Token(h, Some("ab.1".into())))
        );
        assert_eq!(
            parse_message(&format!("t:{}", h.to_hex())),
            Some(Message::Token(h, None))
        );
        assert_eq!(
            parse_message(&format!("r:{}|ab.2", h.to_hex())),
            Some(Message::Revoked(h, Some("ab.2".into())))
        );
        assert_eq!(
            parse_message("u:42|x.7"),
            Some(Message::User(42, Some("x.7".into())))
        );
        assert_eq!(
            parse_message("*|x.8"),
            Some(Message::Clear(Some("x.8".into())))
        );
        assert_eq!(
            parse_message("hb:abc"),
            Some(Message::Heartbeat {
                from: "abc".into(),
                sent: None
            })
        );
        assert_eq!(
            parse_message("hb:a-b_c:1700000000123"),
            Some(Message::Heartbeat {
                from: "a-b_c".into(),
                sent: Some(1_700_000_000_123)
            })
        );
        assert!(parse_message("hb:abc:soon").is_none());
        assert_eq!(
            parse_message("bye:a-b_c"),
            Some(Message::Bye {
                from: "a-b_c".into()
            })
        );
        assert!(parse_message("bye:").is_none());
        assert_eq!(
            parse_message("ack:x-y.9:peer"),
            Some(Message::Ack {
                id: "x-y.9".into(),
                from: "peer".into()
            })
        );
        assert_eq!(origin("x-y.9"), "x-y");
        assert!(parse_message("t:zz").is_none());
        assert!(parse_message("nonsense").is_none());
    }

    /// Hearing messages is not enough: an instance whose newest own heartbeat that came back
    /// was sent a while ago is behind on its messages (or no longer heard by its peers), and
    /// may not have applied an invalidation whose publisher already stopped waiting.
    #[test]
    fn the_local_tier_needs_a_fresh_own_heartbeat_back() {
        let now = 100_000;
        assert!(heard_recently(now, now - 900));
        // Messages arrive, but they were sent long ago: the subscriber lags.
        assert!(!heard_recently(now, now - OWN_LAG_LIMIT_MS));
        assert!(!heard_recently(now, 0));
        // A silent subscription: no heartbeat came back.
        assert!(!heard_recently(now, now - SILENCE_LIMIT_MS));
        // A heartbeat claiming to come from the future.
        assert!(!heard_recently(now, now + 60_000));
    }
}
