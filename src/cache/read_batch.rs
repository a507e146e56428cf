//! Lookups on a single Redis that wait at the same time go out together: one `read_entries`
//! script call answers every lookup queued, instead of one call each. Under load this saves
//! Redis most of its per-command work and the server part of its per-call encoding, parsing
//! and wake-ups.
//!
//! No task sits in between: a lookup that finds fewer than [`MAX_IN_FLIGHT`] calls out makes
//! its own call, taking along whatever lookups are queued; one that finds them all out queues,
//! and the next call to finish sends the queue (up to 128 lookups a call; the rest wait for
//! the next). A lone lookup therefore costs what one call of its own did. A call carrying
//! other lookups runs as a task of its own, so that a caller that goes away (a closed
//! connection) cannot take the others' answers with it. Each call reads the
//! keys in order, and Redis runs a script atomically, so a lookup sent after a write completed
//! sees it, exactly as a call of its own would.

use super::redis::{bounded_for, RedisConn};
use super::CacheError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// Most lookups in one call.
const MAX_BATCH: usize = 128;
/// Most calls out at once.
const MAX_IN_FLIGHT: usize = 4;
/// Most lookups queued; beyond this a lookup fails at once (a cache miss, which does not make
/// the cache distrust its entries: Redis did not fail) rather than wait.
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

/// Lookups waiting for a call, and how many calls are out.
#[derive(Default)]
struct State {
    queue: Vec<Lookup>,
    in_flight: usize,
}

struct Inner {
    conn: RedisConn,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    /// Cleared when Redis refuses the script (a proxy that checks the keys a script touches).
    enabled: AtomicBool,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Moves the queued lookups whose callers still wait into `batch`, up to [`MAX_BATCH`].
fn take_queued(queue: &mut Vec<Lookup>, batch: &mut Vec<Lookup>) {
    let room = MAX_BATCH.saturating_sub(batch.len()).min(queue.len());
    batch.extend(queue.drain(..room).filter(Lookup::wanted));
}

/// One call out: when it ends (or its future is dropped), the slot is freed, and the queue, if
/// any, goes out in a new call.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.queue.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Shutting down: the queued callers get "dropped" answers (cache misses).
            state.queue.clear();
            return;
        };
        // Callers that gave up are skipped; keep taking until a live one or the end.
        let mut batch = Vec::new();
        while batch.is_empty() && !state.queue.is_empty() {
            take_queued(&mut state.queue, &mut batch);
        }
        if batch.is_empty() {
            return;
        }
        state.in_flight += 1;
        drop(state);
        runtime.spawn(call_in_slot(Slot(self.0.clone()), batch));
    }
}

async fn call_in_slot(slot: Slot, batch: Vec<Lookup>) {
    call(&slot.0, batch).await;
}

pub(super) struct ReadBatcher {
    inner: Arc<Inner>,
}

impl ReadBatcher {
    pub(super) fn new(conn: RedisConn, prefix: &str, timeout: Duration) -> ReadBatcher {
        ReadBatcher {
            inner: Arc::new(Inner {
                conn,
                script: redis::Script::new(READ_ENTRIES),
                prefix: prefix.to_string(),
                timeout,
                enabled: AtomicBool::new(true),
                state: Mutex::default(),
            }),
        }
    }

    /// Whether lookups may go through the script.
    pub(super) fn enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// The raw value for the token whose pointer key is `pointer` and hash `hash_hex`.
    pub(super) async fn read(&self, pointer: String, hash_hex: String) -> Reply {
        let (reply, answer) = oneshot::channel();
        let lookup = Lookup {
            pointer,
            hash_hex,
            reply,
        };
        let batch = {
            let mut state = self.inner.state();
            if state.in_flight < MAX_IN_FLIGHT {
                state.in_flight += 1;
                let mut batch = vec![lookup];
                take_queued(&mut state.queue, &mut batch);
                Some(batch)
            } else if state.queue.len() < QUEUE {
                state.queue.push(lookup);
                None
            } else {
                return Err(CacheError::Busy("too many Redis lookups waiting"));
            }
        };
        if let Some(batch) = batch {
            let slot = Slot(self.inner.clone());
            if batch.len() == 1 {
                call(&self.inner, batch).await;
                drop(slot);
            } else {
                tokio::spawn(call_in_slot(slot, batch));
            }
        }
        answer
            .await
            .unwrap_or_else(|_| Err(CacheError::Busy("a Redis lookup was dropped")))
    }
}

/// One script call for `batch`; every lookup in it gets its answer.
async fn call(caller: &Inner, batch: Vec<Lookup>) {
    let mut invocation = caller.script.prepare_invoke();
    for lookup in &batch {
        invocation.key(&lookup.pointer);
    }
    invocation.arg(&caller.prefix);
    for lookup in &batch {
        invocation.arg(&lookup.hash_hex);
    }
    let mut conn = caller.conn.clone();
    let result = bounded_for(
        caller.timeout,
        invocation.invoke_async::<Vec<Option<Vec<u8>>>>(&mut conn),
    )
    .await;
    match result {
        Ok(values) if values.len() == batch.len() => {
            for (lookup, value) in batch.into_iter().zip(values) {
                let _ = lookup.reply.send(Ok(Some(value)));
            }
        }
        Ok(values) => {
            let why: Arc<str> = format!(
                "redis: the lookup script answered {} values for {} keys",
                values.len(),
                batch.len()
            )
            .into();
            answer_all(batch, || Err(CacheError::Failed(why.clone())));
        }
        Err(CacheError::Redis(e)) if refuses_scripts(&e) => {
            if caller.enabled.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    error = %e,
                    "Redis refused the one-round-trip lookup script; lookups use GETs"
                );
            }
            answer_all(batch, || Ok(None));
        }
        Err(CacheError::Timeout(limit)) => answer_all(batch, || Err(CacheError::Timeout(limit))),
        Err(e) => {
            let why: Arc<str> = e.to_string().into();
            answer_all(batch, || Err(CacheError::Failed(why.clone())));
        }
    }
}

fn answer_all(batch: Vec<Lookup>, reply: impl Fn() -> Reply) {
    for lookup in batch {
        let _ = lookup.reply.send(reply());
    }
}
