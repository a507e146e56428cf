//! Lookups on a single Redis that wait at the same time go out together (see
//! [`crate::coalesce`]): one `read_entries` script call answers every lookup queued, instead of
//! one call each. Under load this saves Redis most of its per-command work and the server part
//! of its per-call encoding, parsing and wake-ups. Each call reads the keys in order, and Redis
//! runs a script atomically, so a lookup sent after a write completed sees it, exactly as a
//! call of its own would.

use super::redis::{bounded_for, RedisConn};
use super::CacheError;
use crate::coalesce::{BatchCall, Coalescer, Limits};
use crate::token::TokenHash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most lookups in one call, most calls out at once, most lookups queued (beyond that a lookup
/// fails at once: a cache miss, which does not make the cache distrust its entries, since Redis
/// did not fail); a lookup also gives up after waiting the Redis timeout for a call, and a call
/// for queued lookups may only take what is left of the timeout of the one that waited longest,
/// so that no lookup waits longer in all (without a timer per lookup).
///
/// Two calls out: every call costs the server a write and a read on the socket, about as much
/// as the rest of its lookups' work; with two out instead of four, calls are about twice as
/// large and the server spends about 4 % less CPU per request (the benchmark's Redis row with
/// users, three runs each), while one call can still be sent as the other's answer comes back.
fn limits(timeout: Duration) -> Limits {
    Limits {
        max_in_flight: 2,
        max_batch: 128,
        queue: 4096,
        max_wait: timeout,
    }
}

/// KEYS: the tokens' pointers, `P{t:<hash>}`. ARGV: the key prefix `P`. For each token, the
/// pointer's value or, when it points at a user's slot (`@<user id>`), the entry there,
/// `P{u:<id>}:s:<hash>` (nil when absent). The hash (64 hex digits) is taken from the pointer
/// key rather than sent again: a lookup costs Redis two `GET`s and no argument of its own.
const READ_ENTRIES: &str = r"
    local call, byte, sub = redis.call, string.byte, string.sub
    local prefix = ARGV[1]
    local out = {}
    for i = 1, #KEYS do
        local key = KEYS[i]
        local v = call('GET', key)
        if v and byte(v, 1) == 64 then
            v = call('GET', prefix .. '{u:' .. sub(v, 2) .. '}:s:' .. sub(key, -65, -2))
        end
        out[i] = v or false
    end
    return out
";

/// What a lookup gets back: the raw value (`Some`), or `None` when Redis refused the script
/// and the caller must follow the pointer with GETs.
pub(super) type Reply = Result<Option<Option<Vec<u8>>>, CacheError>;

/// Whether Redis refused the script itself, for good: an ACL without EVAL/EVALSHA, a proxy
/// that checks the keys a script touches, a server without scripting. Busy, loading, read-only
/// or out-of-memory answers pass, and are failures like any other.
fn refuses_scripts(e: &redis::RedisError) -> bool {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        return false;
    }
    match e.code() {
        Some("NOPERM" | "CROSSSLOT") => true,
        Some("ERR") => {
            let detail = e.detail().unwrap_or_default().to_ascii_lowercase();
            [
                "unknown command",
                "not supported",
                "not allowed",
                "disabled",
            ]
            .iter()
            .any(|m| detail.contains(m))
        }
        _ => false,
    }
}

struct ScriptCalls {
    conn: RedisConn,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    /// Cleared when Redis refuses the script (a proxy that checks the keys a script touches).
    enabled: AtomicBool,
}

impl BatchCall for ScriptCalls {
    type Key = TokenHash;
    type Answer = Reply;

    async fn call(&self, batch: Vec<TokenHash>, waited: Duration) -> Vec<Reply> {
        // Each key is copied into the command: one buffer serves them all.
        let mut invocation = self.script.prepare_invoke();
        let mut buf = String::with_capacity(self.prefix.len() + 68);
        for hash in &batch {
            buf.clear();
            super::redis::push_pointer_key(&mut buf, &self.prefix, hash);
            invocation.key(buf.as_str());
        }
        invocation.arg(&self.prefix);
        let mut conn = self.conn.clone();
        // Each lookup waits at most the Redis timeout in all, queue included.
        let result = bounded_for(
            self.timeout.saturating_sub(waited),
            invocation.invoke_async::<Vec<Option<Vec<u8>>>>(&mut conn),
        )
        .await;
        let n = batch.len();
        let all = |reply: &dyn Fn() -> Reply| (0..n).map(|_| reply()).collect();
        match result {
            Ok(values) if values.len() == n => values.into_iter().map(|v| Ok(Some(v))).collect(),
            Ok(values) => {
                let why: Arc<str> = format!(
                    "redis: the lookup script answered {} values for {n} keys",
                    values.len(),
                )
                .into();
                all(&|| Err(CacheError::Failed(why.clone())))
            }
            Err(CacheError::Redis(e)) if refuses_scripts(&e) => {
                if self.enabled.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "Redis refused the one-round-trip lookup script; lookups use GETs"
                    );
                }
                all(&|| Ok(None))
            }
            Err(CacheError::Timeout(limit)) => all(&|| Err(CacheError::Timeout(limit))),
            Err(e) => {
                let why: Arc<str> = e.to_string().into();
                all(&|| Err(CacheError::Failed(why.clone())))
            }
        }
    }

    fn not_sent(why: &'static str) -> Reply {
        Err(CacheError::Busy(why))
    }
}

pub(super) struct ReadBatcher {
    calls: Coalescer<ScriptCalls>,
}

impl ReadBatcher {
    pub(super) fn new(conn: RedisConn, prefix: &str, timeout: Duration) -> ReadBatcher {
        let calls = ScriptCalls {
            conn,
            script: redis::Script::new(READ_ENTRIES),
            prefix: prefix.to_string(),
            timeout,
            enabled: AtomicBool::new(true),
        };
        ReadBatcher {
            calls: Coalescer::new(calls, limits(timeout)),
        }
    }

    /// Whether lookups may go through the script.
    pub(super) fn enabled(&self) -> bool {
        self.calls.caller().enabled.load(Ordering::Relaxed)
    }

    /// The raw value for the token whose hash is `hash`.
    pub(super) async fn read(&self, hash: TokenHash) -> Reply {
        self.calls.ask(hash).await
    }
}
