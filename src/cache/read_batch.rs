//! Lookups on a single Redis that wait at the same time go out together: one `read_entries`
//! script call answers every lookup queued, instead of one call each. Under load this saves
//! Redis most of its per-command work and the server most of its per-call encoding, parsing
//! and wake-ups; alone, a lookup goes out at once, as before.
//!
//! One task per [`RedisCache`](super::RedisCache) collects the lookups: it sends whatever is
//! queued as one call while fewer than [`MAX_IN_FLIGHT`] calls are out, so lookups arriving
//! while calls are out wait for the next one. Each call reads the keys in order, and Redis runs
//! a script atomically, so a lookup sent after a write completed sees it, exactly as a call of
//! its own would.

use super::redis::RedisConn;
use super::CacheError;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most lookups in one call.
const MAX_BATCH: usize = 128;
/// Most calls out at once.
const MAX_IN_FLIGHT: usize = 4;
/// Lookups that may wait for the collector before callers wait to queue.
const QUEUE: usize = 4096;

/// KEYS: the tokens' pointers. ARGV: the key prefix, then each token's hash. For each token,
/// the pointer's value or, when it points at a user's slot, the entry there (nil when absent).
const READ_ENTRIES: &str = r"
    local out = {}
    for i, key in ipairs(KEYS) do
        local v = redis.call('GET', key)
        if v and string.sub(v, 1, 1) == '@' then
            v = redis.call('GET', ARGV[1] .. '{u:' .. string.sub(v, 2) .. '}:s:' .. ARGV[i + 1])
        end
        out[i] = v or false
    end
    return out
";

/// What a lookup gets back: the raw value (`Some`), or `None` when Redis refused the script
/// and the caller must follow the pointer with GETs.
pub(super) type Reply = Result<Option<Option<Vec<u8>>>, CacheError>;

struct Lookup {
    pointer: String,
    hash_hex: String,
    reply: oneshot::Sender<Reply>,
}

impl Lookup {
    fn wanted(&self) -> bool {
        !self.reply.is_closed()
    }
}

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

/// The shared parts of every call.
struct Caller {
    conn: RedisConn,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    /// Cleared when Redis refuses the script (a proxy that checks the keys a script touches).
    enabled: Arc<AtomicBool>,
}

pub(super) struct ReadBatcher {
    queue: mpsc::Sender<Lookup>,
    enabled: Arc<AtomicBool>,
}

impl ReadBatcher {
    /// Starts the collector; it stops when the batcher is dropped.
    pub(super) fn start(conn: RedisConn, prefix: &str, timeout: Duration) -> ReadBatcher {
        let (queue, rx) = mpsc::channel(QUEUE);
        let enabled = Arc::new(AtomicBool::new(true));
        let caller = Arc::new(Caller {
            conn,
            script: redis::Script::new(READ_ENTRIES),
            prefix: prefix.to_string(),
            timeout,
            enabled: enabled.clone(),
        });
        tokio::spawn(collect(rx, caller));
        ReadBatcher { queue, enabled }
    }

    /// Whether lookups may go through the script.
    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The raw value for the token whose pointer key is `pointer` and hash `hash_hex`.
    pub(super) async fn read(&self, pointer: String, hash_hex: String) -> Reply {
        let (reply, answer) = oneshot::channel();
        let lookup = Lookup {
            pointer,
            hash_hex,
            reply,
        };
        if self.queue.send(lookup).await.is_err() {
            return Err(CacheError::Failed(
                "the Redis lookup task has stopped".into(),
            ));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(CacheError::Failed("a Redis lookup was dropped".into())))
    }
}

async fn collect(mut rx: mpsc::Receiver<Lookup>, caller: Arc<Caller>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = rx.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(first) = first else { break };
                // Lookups whose callers gave up (timed out) are not sent.
                let mut batch: Vec<Lookup> = Some(first).into_iter().filter(Lookup::wanted).collect();
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(lookup) if lookup.wanted() => batch.push(lookup),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    in_flight.push(call(caller.clone(), batch));
                }
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// One script call for `batch`; every lookup in it gets its answer.
async fn call(caller: Arc<Caller>, batch: Vec<Lookup>) {
    let mut invocation = caller.script.prepare_invoke();
    for lookup in &batch {
        invocation.key(&lookup.pointer);
    }
    invocation.arg(&caller.prefix);
    for lookup in &batch {
        invocation.arg(&lookup.hash_hex);
    }
    let mut conn = caller.conn.clone();
    let result = tokio::time::timeout(
        caller.timeout,
        invocation.invoke_async::<Vec<Option<Vec<u8>>>>(&mut conn),
    )
    .await;
    match result {
        Ok(Ok(values)) if values.len() == batch.len() => {
            for (lookup, value) in batch.into_iter().zip(values) {
                let _ = lookup.reply.send(Ok(Some(value)));
            }
        }
        Ok(Ok(values)) => {
            let why: Arc<str> = format!(
                "the lookup script answered {} values for {} keys",
                values.len(),
                batch.len()
            )
            .into();
            answer_all(batch, || Err(CacheError::Failed(why.clone())));
        }
        Ok(Err(e)) if refuses_scripts(&e) => {
            if caller.enabled.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    error = %e,
                    "Redis refused the one-round-trip lookup script; lookups use GETs"
                );
            }
            answer_all(batch, || Ok(None));
        }
        Ok(Err(e)) => {
            let why: Arc<str> = e.to_string().into();
            answer_all(batch, || Err(CacheError::Failed(why.clone())));
        }
        Err(_) => answer_all(batch, || Err(CacheError::Timeout(caller.timeout))),
    }
}

fn answer_all(batch: Vec<Lookup>, reply: impl Fn() -> Reply) {
    for lookup in batch {
        let _ = lookup.reply.send(reply());
    }
}
