//! The `redis` strategy: entries shared by every instance, under a configurable key prefix.
//!
//! Keys: `<prefix>s:<token-hash-hex>` holds a session (JSON) with a TTL of the shorter of the
//! cache TTL and the time left to expiry; `<prefix>u:<user-id>` is a set of that user's token
//! hashes, so one user's sessions are dropped without a scan. Every call is bounded by
//! `REDIS_TIMEOUT`; the caller treats errors and timeouts as misses.

use super::{CacheError, CachedSession, SessionCache};
use crate::token::TokenHash;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub struct RedisCache {
    conn: ConnectionManager,
    /// Namespace of every key written; `clear` deletes only keys under it.
    prefix: String,
    /// Longest wait for any single Redis call.
    timeout: Duration,
    /// The cache TTL: no entry lives longer, so a user index kept this long outlives them all.
    index_ttl: Duration,
    /// Deletes a user's index and every session it names, atomically.
    delete_user_script: redis::Script,
}

/// Escapes the glob characters of a prefix for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisCache {
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        index_ttl: Duration,
    ) -> Result<Self, CacheError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2).max(timeout)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(RedisCache {
            conn,
            prefix: prefix.to_string(),
            timeout,
            index_ttl,
            delete_user_script: redis::Script::new(
                r"
                local members = redis.call('SMEMBERS', KEYS[1])
                for _, m in ipairs(members) do redis.call('DEL', ARGV[1] .. m) end
                redis.call('DEL', KEYS[1])
                return #members
                ",
            ),
        })
    }

    fn session_key(&self, hash: &TokenHash) -> String {
        format!("{}s:{}", self.prefix, hash.to_hex())
    }

    fn user_key(&self, user_id: i64) -> String {
        format!("{}u:{}", self.prefix, user_id)
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        }
    }

    /// Answers PING within the timeout (for `/health`).
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl SessionCache for RedisCache {
    async fn get(&self, key: &TokenHash) -> Result<Option<Arc<CachedSession>>, CacheError> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = self.bounded(conn.get(self.session_key(key))).await?;
        match raw {
            Some(bytes) => Ok(Some(Arc::new(serde_json::from_slice(&bytes)?))),
            None => Ok(None),
        }
    }

    async fn set(&self, session: Arc<CachedSession>, ttl: Duration) -> Result<(), CacheError> {
        let ttl_ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let body = serde_json::to_vec(&*session)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.session_key(&session.token_hash))
            .arg(body)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        if let Some(user_id) = session.user_id() {
            let index = self.user_key(user_id);
            // Every set pushes the index's expiry to a full cache TTL, past every member's own
            // expiry; members whose keys expired go with the index when the user goes quiet.
            let index_ttl_ms = self.index_ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
            pipe.cmd("SADD")
                .arg(&index)
                .arg(session.token_hash.to_hex())
                .ignore();
            pipe.cmd("PEXPIRE").arg(&index).arg(index_ttl_ms).ignore();
        }
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }

    async fn delete(&self, key: &TokenHash) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.del::<_, ()>(self.session_key(key))).await
    }

    async fn delete_user(&self, user_id: i64) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let session_prefix = format!("{}s:", self.prefix);
        let mut invocation = self.delete_user_script.key(self.user_key(user_id));
        invocation.arg(session_prefix);
        self.bounded(invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    async fn clear(&self) -> Result<(), CacheError> {
        // SCAN + DEL of our own namespace only: never FLUSHDB, other tenants share the server.
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .bounded(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            if !keys.is_empty() {
                self.bounded(conn.del::<_, ()>(keys)).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn prefix_globs_are_escaped() {
        assert_eq!(glob_escape("app:*[x]"), "app:\\*\\[x\\]");
    }
}
