//! Sliding-window counters shared by every instance through Redis (the throttles' shared
//! half): a counter is one sorted set of event times, and a reservation is one script on that
//! one key, so concurrent instances can never admit more than the limit between them.

use super::{CacheError, RedisCache};
use std::sync::Arc;

/// The counters of one Redis connection.
pub struct RedisWindows {
    redis: Arc<RedisCache>,
    /// KEYS: the counter. ARGV: now ms, drop events at or before this ms, max, member, ttl ms.
    /// Returns {1, 0} when reserved, else {0, time of the event that must age out first}.
    reserve: redis::Script,
    /// KEYS: the counter. ARGV: member.
    release: redis::Script,
    /// KEYS: the counter.
    clear: redis::Script,
}

impl RedisWindows {
    pub fn new(redis: Arc<RedisCache>) -> RedisWindows {
        RedisWindows {
            redis,
            reserve: redis::Script::new(
                r"
                redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
                local max = tonumber(ARGV[3])
                local n = redis.call('ZCARD', KEYS[1])
                if n >= max then
                    local first = redis.call('ZRANGE', KEYS[1], n - max, n - max, 'WITHSCORES')
                    return {0, tonumber(first[2])}
                end
                redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
                redis.call('PEXPIRE', KEYS[1], ARGV[5])
                return {1, 0}
                ",
            ),
            release: redis::Script::new("return redis.call('ZREM', KEYS[1], ARGV[1])"),
            clear: redis::Script::new("return redis.call('DEL', KEYS[1])"),
        }
    }

    /// The Redis key of a counter: hashed, so identifiers are neither stored nor able to
    /// smuggle hash-tag braces into the key.
    fn key(&self, counter: &str) -> String {
        format!(
            "{}{{th:{}}}",
            self.redis.prefix(),
            &crate::token::TokenHash::of(counter).to_hex()[..32]
        )
    }

    /// Adds event `member` at `now` to `counter` if it holds fewer than `max` events in the
    /// window. `Ok(Err(t))`: refused, and `t` (ms) is when the event that must age out first
    /// happened.
    pub async fn reserve(
        &self,
        counter: &str,
        member: &str,
        now: i64,
        window_ms: i64,
        max: u32,
    ) -> Result<Result<(), i64>, CacheError> {
        let (reserved, first) = self
            .redis
            .run_script::<(i64, i64)>(
                &self.reserve,
                &self.key(counter),
                (now, now - window_ms, max, member, window_ms),
            )
            .await?;
        Ok(if reserved == 1 { Ok(()) } else { Err(first) })
    }

    /// Takes event `member` back out of `counter`.
    pub async fn release(&self, counter: &str, member: &str) -> Result<(), CacheError> {
        self.redis
            .run_script::<i64>(&self.release, &self.key(counter), member)
            .await
            .map(|_| ())
    }

    /// Forgets every event of `counter`.
    pub async fn clear(&self, counter: &str) -> Result<(), CacheError> {
        self.redis
            .run_script::<i64>(&self.clear, &self.key(counter), Vec::<String>::new())
            .await
            .map(|_| ())
    }
}
