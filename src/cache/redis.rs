//! The `redis` strategy: entries shared by every instance, under a configurable key prefix, on
//! a single Redis or a Redis Cluster.
//!
//! Keys (`P` is `REDIS_KEY_PREFIX`; the `{…}` part is the cluster hash tag):
//! - `P{t:<token-hash>}`: an anonymous session (an entry), or `@<user-id>` pointing at the
//!   user's slot, or `!` (a tombstone: this token was revoked or its entry dropped; kept a
//!   minute so that a read of the database, or a write, that raced it cannot cache the session
//!   again).
//! - `P{u:<id>}:s:<token-hash>`: an authenticated session (an entry).
//!
//! An entry is the cached session in MessagePack with field names (`rmp-serde`): decoding it
//! costs about half of what JSON did on every Redis read. Entries in JSON (a `{` first byte,
//! which no MessagePack map starts with), written by an earlier version during a rolling
//! upgrade, are still read.
//! - `P{u:<id>}:idx`: the set of that user's cached token hashes.
//! - `P{u:<id>}:inv`: when the user's sessions were last dropped (ms); entries read from the
//!   database before that are refused.
//! - `P{th:<hash>}`: a throttling counter (a sorted set of attempt times), written only by the
//!   scripts of `service::throttle` through [`RedisCache::run_script`].
//!
//! A user's index, entries and invalidation mark share one hash slot, so dropping them all is
//! one atomic script even on a cluster. Entry TTLs are the shorter of the cache TTL and the time
//! left to expiry. Every call is bounded by `REDIS_TIMEOUT`; the caller treats errors and
//! timeouts as misses.

use super::read_batch::ReadBatcher;
use super::{CacheError, SessionCache};
use crate::config::RedisTarget;
use crate::domain::CachedSession;
use crate::token::TokenHash;
use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, ToRedisArgs, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long a tombstone stays: longer than any database read or write it must outlast.
const TOMBSTONE_MS: u64 = super::TOMBSTONE_TTL.as_millis() as u64;

/// Per-call limit of the bulk `clear` (SCAN pages and their UNLINKs).
const CLEAR_CALL_LIMIT: Duration = Duration::from_secs(5);

/// Runs a Redis call within `limit`.
pub(super) async fn bounded_for<T>(
    limit: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, CacheError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CacheError::Timeout(limit)),
    }
}

/// Slots of [`Decoded`] (a power of two). Tokens whose hashes share a slot evict each other and
/// are decoded on every lookup: with 4,096 slots a fifth of 1,000 busy sessions did (the
/// benchmark's Redis rows); with 16,384, one in twenty.
const DECODED_SLOTS: usize = 16384;
/// Larger entries are decoded every time: the table holds at most [`DECODED_SLOTS`] × this many
/// bytes of entries (32 MiB). A session without data decodes to about its entry's size plus
/// fixed fields (plain strings and numbers).
const DECODED_MAX_BYTES: usize = 2048;
/// Session data is kept decoded only while it takes at most this much memory (as [`data_cost`]
/// counts it): data decodes into JSON values of 32 bytes or more each, from as little as one
/// byte of MessagePack (an empty array), so a crafted 2 KiB entry could take 64 KiB decoded.
/// Bounded so, a slot holds at most about 8.5 KiB (the entry, its strings decoded, fixed fields,
/// the data), and the table about 136 MiB however the data is shaped; typical sessions take
/// well under 1 KiB.
const DECODED_MAX_DATA_COST: usize = 4096;

/// About the memory a session's data takes decoded: 32 bytes per value, plus its strings and
/// keys.
fn data_cost(data: &crate::domain::SessionData) -> usize {
    fn value(v: &serde_json::Value) -> usize {
        32 + match v {
            serde_json::Value::String(s) => s.len(),
            serde_json::Value::Array(items) => items.iter().map(value).sum(),
            serde_json::Value::Object(map) => map.iter().map(|(k, v)| k.len() + value(v)).sum(),
            _ => 0,
        }
    }
    data.iter().map(|(k, v)| k.len() + value(v)).sum()
}

/// The last entry decoded for a token: a lookup that gets the very same bytes back from Redis
/// reuses its session instead of decoding it again (decoding is most of a lookup's CPU). Redis
/// stays the judge of every lookup: a tombstone, a missing entry or changed bytes never reach
/// this. Shared, like the in-process cache's entries, so its activity counters are too: after
/// a slide whose write to Redis failed, this instance retries it at the next write interval
/// rather than on the next request (the database has the activity either way).
struct Decoded {
    bytes: Box<[u8]>,
    session: Arc<CachedSession>,
}

/// A direct-mapped table of [`Decoded`] by token hash (already uniformly random): bounded in
/// count and entry size, one short lock per lookup, a collision only costs a decode.
struct DecodedTable(Box<[std::sync::Mutex<Option<Arc<Decoded>>>]>);

impl DecodedTable {
    fn new() -> DecodedTable {
        DecodedTable((0..DECODED_SLOTS).map(|_| Default::default()).collect())
    }

    fn slot(&self, hash: &TokenHash) -> &std::sync::Mutex<Option<Arc<Decoded>>> {
        let i = u16::from_le_bytes([hash.0[0], hash.0[1]]) as usize & (DECODED_SLOTS - 1);
        &self.0[i]
    }

    /// The session `bytes` hold for `hash`, decoded at most once while they stay the same;
    /// `None` for an entry of another token (never written so: treated as a miss).
    fn session(
        &self,
        hash: &TokenHash,
        bytes: Vec<u8>,
    ) -> Result<Option<Arc<CachedSession>>, CacheError> {
        let slot = self.slot(hash);
        let known = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(d) = known.filter(|d| d.session.token_hash == *hash && *d.bytes == *bytes) {
            return Ok(Some(d.session.clone()));
        }
        let session = Arc::new(decode_entry(&bytes)?);
        if session.token_hash != *hash {
            return Ok(None);
        }
        let small_data = match &session.data {
            Some(data) => data_cost(data) <= DECODED_MAX_DATA_COST,
            None => true,
        };
        if bytes.len() <= DECODED_MAX_BYTES && small_data {
            let decoded = Arc::new(Decoded {
                bytes: bytes.into_boxed_slice(),
                session: session.clone(),
            });
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(decoded);
        }
        Ok(Some(session))
    }

    fn forget(&self, hash: &TokenHash) {
        let mut slot = self
            .slot(hash)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_some_and(|d| d.session.token_hash == *hash) {
            *slot = None;
        }
    }
}

/// A cached session from its entry: MessagePack, or JSON from an earlier version.
fn decode_entry(bytes: &[u8]) -> Result<CachedSession, CacheError> {
    if bytes.first() == Some(&b'{') {
        return Ok(serde_json::from_slice(bytes)?);
    }
    Ok(rmp_serde::from_slice(bytes)?)
}

/// A connection to a single Redis or a cluster; both reconnect on their own.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Connects to `target`; calls wait at most `timeout`.
pub async fn connect(target: &RedisTarget, timeout: Duration) -> Result<RedisConn, CacheError> {
    let connect_timeout = Duration::from_secs(2).max(timeout);
    match target {
        RedisTarget::Single(url) => {
            let client = redis::Client::open(url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Ok(RedisConn::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
        RedisTarget::Cluster(nodes) => {
            let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(connect_timeout)
                .response_timeout(timeout)
                .build()?;
            Ok(RedisConn::Cluster(client.get_async_connection().await?))
        }
    }
}

/// Appends `P{t:<token-hash>}`, the token's pointer key, to `out`. The hash stays last: the
/// `read_entries` script (`read_batch`) takes it back from the key's end (its 64 hex digits
/// before the closing brace) to name the entry in the user's slot.
pub(super) fn push_pointer_key(out: &mut String, prefix: &str, hash: &TokenHash) {
    out.push_str(prefix);
    out.push_str("{t:");
    hash.push_hex(out);
    out.push('}');
}

/// KEYS: a pointer. Unlinks it unless it is a tombstone (`!`).
const UNLINK_UNLESS_TOMBSTONE: &str =
    "if redis.call('GET', KEYS[1]) == '!' then return 0 end return redis.call('UNLINK', KEYS[1])";

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

/// Shared Redis access: the session cache, and the namespaced keys other parts keep there
/// (login throttling, invalidation messages).
pub struct RedisCache {
    conn: RedisConn,
    target: RedisTarget,
    /// Namespace of every key written; `clear` deletes only keys under it.
    prefix: String,
    /// Longest wait for any single Redis call.
    timeout: Duration,
    /// The cache TTL: no entry lives longer, so a user index kept this long outlives them all.
    index_ttl: Duration,
    scripts: Scripts,
    metrics: Arc<crate::metrics::Metrics>,
    /// When a Redis call last failed (ms): an invalidation may have been lost then (Redis down,
    /// or restarted from its persisted data), so entries read from the database before it are
    /// not trusted.
    failed_at: std::sync::atomic::AtomicI64,
    /// On a single Redis, lookups go out together through the `read_entries` script (see
    /// `read_batch`); without it (a cluster, where a script must name every key it reads), or
    /// once Redis refused the script, lookups follow pointers with a second GET.
    batcher: Option<ReadBatcher>,
    decoded: DecodedTable,
}

struct Scripts {
    /// KEYS: pointer. ARGV: value, ttl ms, revision and data version ('' for a
    /// pointer). Sets unless the token has a tombstone or holds a newer revision or newer data.
    set_unless_revoked: redis::Script,
    /// KEYS: entry, index, invalidation mark. ARGV: value, ttl ms, token hash, loaded-at ms,
    /// index ttl ms, revision, data version. Sets unless the user's sessions were dropped after
    /// the entry was read, or the entry holds a newer revision or newer data.
    set_user_entry: redis::Script,
    /// KEYS: index, invalidation mark. ARGV: entry key prefix, now ms, mark ttl ms.
    drop_user: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            set_unless_revoked: redis::Script::new(&with_newer(
                r#"
                local cur = redis.call('GET', KEYS[1])
                if cur == '!' then return 0 end
                if cur and ARGV[3] ~= '' and NEWER(cur, ARGV[3], ARGV[4]) then return 0 end
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                return 1
                "#,
            )),
            set_user_entry: redis::Script::new(&with_newer(
                r#"
                local mark = tonumber(redis.call('GET', KEYS[3]) or '0')
                if mark >= tonumber(ARGV[4]) then return 0 end
                local cur = redis.call('GET', KEYS[1])
                if cur and NEWER(cur, ARGV[6], ARGV[7]) then return 0 end
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                redis.call('SADD', KEYS[2], ARGV[3])
                redis.call('PEXPIRE', KEYS[2], ARGV[5])
                return 1
                "#,
            )),
            drop_user: redis::Script::new(
                r"
                local members = redis.call('SMEMBERS', KEYS[1])
                for _, m in ipairs(members) do redis.call('DEL', ARGV[1] .. m) end
                redis.call('DEL', KEYS[1])
                redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
                return #members
                ",
            ),
        }
    }
}

/// `script` with `NEWER(entry, revision, data_version)`: whether a stored entry (MessagePack, read
/// with Redis's own `cmsgpack`; or JSON of an earlier version, whose first field is the data
/// version) holds a newer row revision or newer data than the entry about to be written. Writes
/// never replace such an entry, so the cache never goes back to an older session row; the data
/// version still counts for entries written by instances of a version before the revision.
fn with_newer(script: &str) -> String {
    const NEWER: &str = r#"
        local function NEWER(entry, revision, data_version)
            local r, d
            if string.sub(entry, 1, 1) == '{' then
                d = tonumber(string.match(entry, '^{"data_version":(%d+)'))
            else
                local ok, t = pcall(cmsgpack.unpack, entry)
                if ok and type(t) == 'table' then
                    r, d = tonumber(t['revision']), tonumber(t['data_version'])
                end
            end
            return (r ~= nil and r > tonumber(revision)) or (d ~= nil and d > tonumber(data_version))
        end
    "#;
    format!("{NEWER}{script}")
}

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

impl RedisCache {
    pub async fn connect(
        target: RedisTarget,
        prefix: &str,
        timeout: Duration,
        index_ttl: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, CacheError> {
        let conn = connect(&target, timeout).await?;
        let batcher = matches!(conn, RedisConn::Single(_))
            .then(|| ReadBatcher::new(conn.clone(), prefix, timeout));
        Ok(RedisCache {
            conn,
            target,
            prefix: prefix.to_string(),
            timeout,
            index_ttl,
            scripts: Scripts::new(),
            metrics,
            failed_at: std::sync::atomic::AtomicI64::new(0),
            batcher,
            decoded: DecodedTable::new(),
        })
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    fn pointer_key(&self, hash: &TokenHash) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 68);
        push_pointer_key(&mut key, &self.prefix, hash);
        key
    }

    /// `P{u:<id>}`: the hash slot of a user's entries, index and invalidation mark.
    fn user_slot(&self, user_id: i64) -> String {
        let mut slot = String::with_capacity(self.prefix.len() + 96);
        slot.push_str(&self.prefix);
        slot.push_str("{u:");
        slot.push_str(itoa::Buffer::new().format(user_id));
        slot.push('}');
        slot
    }

    /// `P{u:<id>}:s:<token-hash>`: an authenticated session's entry (the `read_entries` script in `read_batch`
    /// builds the same key).
    fn entry_key(&self, user_id: i64, hash: &TokenHash) -> String {
        let mut key = self.user_slot(user_id);
        key.push_str(":s:");
        hash.push_hex(&mut key);
        key
    }

    /// Runs a Redis call within `REDIS_TIMEOUT`.
    pub async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        let result = bounded_for(self.timeout, fut).await;
        if result.is_err() {
            self.failed_at
                .store(crate::clock::now_ms(), std::sync::atomic::Ordering::Release);
        }
        result
    }

    /// The token's pointer or entry in one round trip shared with the other lookups waiting
    /// (the `read_entries` script), on a single Redis that accepts it; `None` when lookups must
    /// use GETs instead.
    async fn read_with_script(
        &self,
        key: &TokenHash,
    ) -> Result<Option<Option<Vec<u8>>>, CacheError> {
        let Some(batcher) = self.batcher.as_ref().filter(|b| b.enabled()) else {
            return Ok(None);
        };
        // Bounded by the batcher: a lookup waits at most the timeout, queue and call together.
        let answer = batcher.read(*key).await;
        // Only a failure of Redis may have lost an invalidation.
        if answer
            .as_ref()
            .is_err_and(|e| !matches!(e, CacheError::Busy(_)))
        {
            self.failed_at
                .store(crate::clock::now_ms(), std::sync::atomic::Ordering::Release);
        }
        answer
    }

    /// Runs `script` with `key` as its only key (one hash slot, so it runs on a cluster too) and
    /// `args` as its arguments, within `REDIS_TIMEOUT`.
    pub async fn run_script<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        key: &str,
        args: impl ToRedisArgs,
    ) -> Result<T, CacheError> {
        let mut conn = self.conn.clone();
        let mut call = script.key(key);
        call.arg(args);
        self.bounded(call.invoke_async(&mut conn)).await
    }

    /// Answers PING within the timeout (for `/health`).
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(|_| ())
    }

    /// The master nodes of the cluster (or the one server), for per-node commands like SCAN.
    async fn masters(&self) -> Result<Vec<String>, CacheError> {
        let RedisTarget::Cluster(_) = &self.target else {
            return Ok(vec![self.target.any_node().to_string()]);
        };
        let mut conn = self.conn.clone();
        let nodes: String = self
            .bounded(redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn))
            .await?;
        Ok(nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|addr| format!("redis://{}", addr.split('@').next().unwrap_or(addr)))
            .collect())
    }

    /// Follows the token's pointer to its entry (anonymous entries sit at the pointer).
    async fn lookup(&self, key: &TokenHash) -> Result<Option<Arc<CachedSession>>, CacheError> {
        let raw = match self.read_with_script(key).await? {
            Some(raw) => raw,
            // On a cluster a script must name every key it reads, and the entry's key is in
            // another slot than the pointer's: a second GET follows the pointer below.
            None => {
                self.bounded(
                    redis::cmd("GET")
                        .arg(self.pointer_key(key))
                        .query_async(&mut self.conn.clone()),
                )
                .await?
            }
        };
        let bytes = match raw {
            None => return Ok(None),
            Some(b) if b == b"!" => return Ok(None),
            Some(b) if b.first() == Some(&b'@') => {
                let user_id = std::str::from_utf8(&b[1..])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok());
                let Some(user_id) = user_id else {
                    return Ok(None);
                };
                let raw: Option<Vec<u8>> = self
                    .bounded(
                        redis::cmd("GET")
                            .arg(self.entry_key(user_id, key))
                            .query_async(&mut self.conn.clone()),
                    )
                    .await?;
                match raw {
                    Some(b) => b,
                    None => return Ok(None),
                }
            }
            Some(b) => b,
        };
        self.decoded.session(key, bytes)
    }

    /// Stores an entry unless it is stale (its token was revoked, or its user's sessions were
    /// dropped after it was read); returns whether it was stored.
    pub async fn store(
        &self,
        session: Arc<CachedSession>,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let body = rmp_serde::to_vec_named(&*session)?;
        let mut conn = self.conn.clone();
        let pointer = self.pointer_key(&session.token_hash);
        let pointer_value: Vec<u8> = match session.user_id() {
            None => body,
            Some(user_id) => {
                let slot = self.user_slot(user_id);
                let hex = session.token_hash.to_hex();
                let mut call = self
                    .scripts
                    .set_user_entry
                    .key(self.entry_key(user_id, &session.token_hash));
                call.key(format!("{slot}:idx"))
                    .key(format!("{slot}:inv"))
                    .arg(body)
                    .arg(ms(ttl))
                    .arg(&hex)
                    .arg(session.loaded_at)
                    .arg(ms(self.index_ttl))
                    .arg(session.revision)
                    .arg(session.data_version);
                let stored: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
                if stored == 0 {
                    return Ok(false); // read before the user's sessions were dropped: stale
                }
                format!("@{user_id}").into_bytes()
            }
        };
        // Anonymous entries live at the pointer: never go back to an older row there.
        let (revision, data_version) = if session.user.is_none() {
            (
                session.revision.to_string(),
                session.data_version.to_string(),
            )
        } else {
            (String::new(), String::new())
        };
        let mut call = self.scripts.set_unless_revoked.key(pointer);
        call.arg(pointer_value)
            .arg(ms(ttl))
            .arg(revision)
            .arg(data_version);
        let stored: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(stored == 1)
    }
}

#[async_trait]
impl SessionCache for RedisCache {
    async fn get(&self, key: &TokenHash) -> Result<Option<Arc<CachedSession>>, CacheError> {
        let found = self
            .lookup(key)
            .await?
            .filter(|s| s.loaded_at > self.failed_at.load(std::sync::atomic::Ordering::Acquire));
        self.metrics.cache_lookup("redis", found.is_some());
        Ok(found)
    }

    async fn set(&self, session: Arc<CachedSession>, ttl: Duration) -> Result<(), CacheError> {
        self.store(session, ttl).await.map(|_| ())
    }

    async fn replace(
        &self,
        session: Arc<CachedSession>,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        self.store(session, ttl).await
    }

    async fn delete(&self, key: &TokenHash) -> Result<(), CacheError> {
        self.decoded.forget(key);
        let mut conn = self.conn.clone();
        self.bounded(
            redis::cmd("SET")
                .arg(self.pointer_key(key))
                .arg("!")
                .arg("PX")
                .arg(TOMBSTONE_MS)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Every drop already leaves a tombstone here (other instances may be reading the old
    /// row), so a revocation is a drop.
    async fn revoke(&self, key: &TokenHash) -> Result<(), CacheError> {
        self.delete(key).await
    }

    async fn delete_user(&self, user_id: i64) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let slot = self.user_slot(user_id);
        let mut call = self.scripts.drop_user.key(format!("{slot}:idx"));
        call.key(format!("{slot}:inv"))
            .arg(format!("{slot}:s:"))
            .arg(crate::clock::now_ms())
            .arg(ms(self.index_ttl).max(TOMBSTONE_MS));
        self.bounded(call.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    async fn clear(&self) -> Result<(), CacheError> {
        // SCAN + UNLINK of our own namespace on every master: never FLUSHDB, other tenants
        // may share the server. A bulk operation, so each call may take longer than a lookup.
        let limit = CLEAR_CALL_LIMIT.max(self.timeout);
        let pattern = format!("{}*", glob_escape(&self.prefix));
        for node in self.masters().await? {
            let client = redis::Client::open(node.as_str())?;
            let mut conn = bounded_for(limit, client.get_multiplexed_async_connection()).await?;
            let mut cursor: u64 = 0;
            loop {
                let scan = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .to_owned();
                let (next, keys): (u64, Vec<String>) =
                    bounded_for(limit, scan.query_async(&mut conn)).await?;
                // Entries, pointers and indexes go; what guards against stale writes stays (the
                // tombstones of revoked tokens, the users' invalidation marks), and so do the
                // login and session-creation throttles: a clear must not hand out fresh attempts.
                let mut pipe = redis::pipe();
                let mut any = false;
                for key in &keys {
                    let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
                        continue;
                    };
                    if rest.starts_with("{th:") || rest.ends_with(":inv") {
                        continue;
                    }
                    any = true;
                    // One command per key (keys of one node may span slots), one round trip
                    // per page; a pointer only unless it is a tombstone, checked atomically.
                    if rest.starts_with("{t:") {
                        pipe.cmd("EVAL")
                            .arg(UNLINK_UNLESS_TOMBSTONE)
                            .arg(1)
                            .arg(key)
                            .ignore();
                    } else {
                        pipe.cmd("UNLINK").arg(key).ignore();
                    }
                }
                if any {
                    bounded_for(limit, pipe.query_async::<()>(&mut conn)).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    fn shares_entries(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_session() -> CachedSession {
        use crate::domain::{CachedUser, ChannelGrant, SessionKind};
        use crate::permission::{Permission, PermissionSet};
        use std::sync::atomic::AtomicI64;
        let data = serde_json::json!({
            "locale": "de-CH", "n": -3, "big": u64::MAX, "pi": 3.25, "none": null,
            "nested": { "list": [1, "zwei", { "drei": true }], "emoji": "🛒 \"q\"" }
        });
        CachedSession {
            revision: 11,
            data_version: 7,
            id: 42,
            token_hash: crate::token::generate().hash,
            kind: SessionKind::Authenticated,
            user: Some(Box::new(CachedUser::new(
                9,
                "zoë@example.com".into(),
                true,
                vec![ChannelGrant {
                    channel_id: 2,
                    code: "shop".into(),
                    token: "shop-token".into(),
                    permissions: [Permission::ReadSession, Permission::WriteOrder]
                        .into_iter()
                        .collect::<PermissionSet>(),
                }],
            ))),
            authentication_strategy: Some("native".into()),
            active_order_id: Some(5),
            active_channel_id: None,
            created_at: 1_700_000_000_000,
            token_issued_at: 1_700_000_000_001,
            absolute_expires_at: 1_800_000_000_000,
            remember_me: true,
            ip_address: Some("2001:db8::1".into()),
            user_agent: Some("Mozilla/5.0 (X11)".into()),
            last_active_at: AtomicI64::new(1_700_000_000_500),
            persisted_active_at: AtomicI64::new(1_700_000_000_400),
            loaded_at: 1_700_000_000_300,
            data: data.as_object().cloned().map(Arc::new),
        }
    }

    /// Every field survives the MessagePack entry, and a JSON entry (an earlier version's)
    /// still decodes to the same session.
    #[test]
    fn entries_round_trip_in_messagepack_and_json() {
        let session = full_session();
        let expected = format!("{session:?}");
        let packed = rmp_serde::to_vec_named(&session).expect("encodes");
        assert_ne!(packed.first(), Some(&b'{'));
        assert_ne!(packed.first(), Some(&b'@'));
        assert_ne!(packed.first(), Some(&b'!'));
        let from_packed = decode_entry(&packed).expect("decodes");
        assert_eq!(format!("{from_packed:?}"), expected);
        let json = serde_json::to_vec(&session).expect("encodes");
        let from_json = decode_entry(&json).expect("decodes");
        assert_eq!(format!("{from_json:?}"), expected);
        assert!(
            decode_entry(b"\x81\xa2id").is_err(),
            "a cut entry is an error, not a panic"
        );
        assert!(decode_entry(b"{\"id\":").is_err());
    }

    /// The same bytes for the same token give back the session decoded the first time, except
    /// for sessions whose data would take much memory decoded (a crafted data entry decodes to
    /// many times its size): those are decoded every time.
    #[test]
    fn sessions_with_large_decoded_data_are_not_kept() {
        let table = DecodedTable::new();
        let mut plain = full_session();
        plain.data = None;
        let small = full_session();
        let mut large = full_session();
        let many_empty_arrays = serde_json::Value::Array(vec![serde_json::json!([]); 500]);
        large.data = serde_json::json!({ "a": many_empty_arrays })
            .as_object()
            .cloned()
            .map(Arc::new);
        for (session, kept) in [(plain, true), (small, true), (large, false)] {
            let bytes = rmp_serde::to_vec_named(&session).expect("encodes");
            let hash = session.token_hash;
            let first = table.session(&hash, bytes.clone()).unwrap().unwrap();
            let again = table.session(&hash, bytes.clone()).unwrap().unwrap();
            assert_eq!(Arc::ptr_eq(&first, &again), kept, "{} bytes", bytes.len());
            // Small as an entry: only the decoded form is large.
            assert!(bytes.len() <= DECODED_MAX_BYTES);
        }
    }

    #[test]
    fn prefix_globs_are_escaped() {
        assert_eq!(glob_escape("app:*[x]"), "app:\\*\\[x\\]");
    }
}
