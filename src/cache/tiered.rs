//! The `tiered` strategy: the bounded in-process cache in front of Redis.
//!
//! Every invalidation is applied locally, in Redis, and published on the channel
//! `<prefix>invalidate`; every instance drops the affected in-process entries on receipt. Each
//! instance also publishes a heartbeat every second: an instance that has heard nothing for
//! three seconds, or whose subscription breaks, clears its in-process tier and serves from Redis
//! or the database until it has subscribed again, so it never serves what it was not told about.

use super::{CacheError, CachedSession, MemoryCache, RedisCache, SessionCache};
use crate::token::TokenHash;
use async_trait::async_trait;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Silence longer than this means the subscription is not delivering.
const SILENCE_LIMIT_MS: i64 = 3_000;

pub struct TieredCache {
    local: MemoryCache,
    remote: Arc<RedisCache>,
    /// Whether the invalidation subscription is live; while false the local tier is unused.
    subscribed: AtomicBool,
    /// When the subscription last delivered anything (ms), heartbeats included.
    last_heard: AtomicI64,
    /// Bumped on every invalidation, local or remote; shared with the session service so a read
    /// that overlaps an invalidation is not cached.
    epoch: Arc<AtomicU64>,
    channel: String,
    instance: String,
}

/// An invalidation message: `t:<hash>`, `u:<user-id>`, `*` (clear) or `hb:<instance>`.
enum Message {
    Token(TokenHash),
    User(i64),
    Clear,
    Heartbeat,
}

fn parse_message(payload: &str) -> Option<Message> {
    if payload == "*" {
        return Some(Message::Clear);
    }
    let (kind, rest) = payload.split_once(':')?;
    match kind {
        "t" => TokenHash::from_hex(rest).map(Message::Token),
        "u" => rest.parse().ok().map(Message::User),
        "hb" => Some(Message::Heartbeat),
        _ => None,
    }
}

impl TieredCache {
    /// Builds the cache and starts its subscriber and heartbeat tasks (they stop when the cache
    /// is dropped).
    pub fn start(
        local: MemoryCache,
        remote: Arc<RedisCache>,
        epoch: Arc<AtomicU64>,
    ) -> Arc<TieredCache> {
        let cache = Arc::new(TieredCache {
            channel: format!("{}invalidate", remote.prefix()),
            instance: crate::token::random_string(6),
            local,
            remote,
            subscribed: AtomicBool::new(false),
            last_heard: AtomicI64::new(0),
            epoch,
        });
        tokio::spawn(subscribe_loop(Arc::downgrade(&cache)));
        tokio::spawn(heartbeat_loop(Arc::downgrade(&cache)));
        cache
    }

    /// Whether the local tier may be used right now.
    fn local_usable(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
            && crate::clock::now_ms() - self.last_heard.load(Ordering::Acquire) < SILENCE_LIMIT_MS
    }

    /// Forgets the local tier (subscription lost or regained).
    fn drop_local(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.local.clear_sync();
    }

    fn apply(&self, msg: Message) {
        self.last_heard
            .store(crate::clock::now_ms(), Ordering::Release);
        match msg {
            Message::Token(hash) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.local.delete_sync(&hash);
            }
            Message::User(id) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.local.delete_user_sync(id);
            }
            Message::Clear => self.drop_local(),
            Message::Heartbeat => {}
        }
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
        let subscribed = async {
            let client = redis::Client::open(node.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(pubsub)) => {
                let Some(c) = cache.upgrade() else { return };
                // Whatever happened while unsubscribed was not heard: start from empty.
                c.drop_local();
                c.last_heard
                    .store(crate::clock::now_ms(), Ordering::Release);
                c.subscribed.store(true, Ordering::Release);
                tracing::info!("tiered cache subscribed to invalidations");
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
        let payload = format!("hb:{}", c.instance);
        let _ = c.publish(payload).await;
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

    async fn replace(&self, session: Arc<CachedSession>, ttl: Duration) -> Result<(), CacheError> {
        let hash = session.token_hash;
        self.set(session, ttl).await?;
        self.publish(format!("t:{}", hash.to_hex())).await
    }

    async fn delete(&self, key: &TokenHash) -> Result<(), CacheError> {
        self.local.delete_sync(key);
        let remote = self.remote.delete(key).await;
        let published = self.publish(format!("t:{}", key.to_hex())).await;
        remote.and(published)
    }

    async fn delete_user(&self, user_id: i64) -> Result<(), CacheError> {
        self.local.delete_user_sync(user_id);
        let remote = self.remote.delete_user(user_id).await;
        let published = self.publish(format!("u:{user_id}")).await;
        remote.and(published)
    }

    async fn clear(&self) -> Result<(), CacheError> {
        self.local.clear_sync();
        let remote = self.remote.clear().await;
        let published = self.publish("*".to_string()).await;
        remote.and(published)
    }

    fn evict_local(&self, key: &TokenHash) {
        self.local.delete_sync(key);
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
        assert!(
            matches!(parse_message(&format!("t:{}", h.to_hex())), Some(Message::Token(x)) if x == h)
        );
        assert!(matches!(parse_message("u:42"), Some(Message::User(42))));
        assert!(matches!(parse_message("*"), Some(Message::Clear)));
        assert!(matches!(parse_message("hb:abc"), Some(Message::Heartbeat)));
        assert!(parse_message("t:zz").is_none());
        assert!(parse_message("nonsense").is_none());
    }
}
