//! Calls that wait at the same time go out together: one call answers every key queued while
//! the earlier calls were out, instead of one call each. Used where a server-side round trip
//! costs far more than the work per key: the session lookups on Redis (`cache::read_batch`)
//! and the session reads on the database (`service::session_read`).
//!
//! No task sits in between: a caller that finds fewer than `max_in_flight` calls out makes its
//! own call (nothing is queued then: keys queue only while every call is out); one that finds
//! them all out queues, and the next call to finish sends the queue (up to `max_batch` keys a
//! call; the rest wait for the next). A lone caller therefore costs what one call of its own
//! did. A call carrying queued keys runs as a task of its own, so that a caller that goes away
//! (a closed connection) cannot take the others' answers with it, and keys whose callers went
//! away before their call was sent are left out.
//!
//! A key that waited longer than `max_wait` for a call is not sent: its caller gets
//! [`BatchCall::not_sent`] when the next call goes out, so that a stalled backend cannot hold
//! callers longer than the wait they were promised.
//!
//! A key is always sent after its caller asked, so a call sees every write that completed
//! before the caller asked, exactly as a call of its own would.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The call that answers a batch of keys.
pub(crate) trait BatchCall: Send + Sync + 'static {
    type Key: Send + 'static;
    type Answer: Send + 'static;

    /// One answer per key, in the keys' order. A call that fails answers every key with the
    /// failure. `waited` is how long the longest-waiting key waited for the call (zero for a
    /// caller that made its own): a caller promised an answer within some time bounds the call
    /// by what is left of it, without a timer of its own per key.
    fn call(
        &self,
        keys: Vec<Self::Key>,
        waited: Duration,
    ) -> impl Future<Output = Vec<Self::Answer>> + Send;

    /// The answer for a key that could not be sent: the queue was full, the call was lost
    /// (its task ended without answering), or the server is shutting down.
    fn not_sent(why: &'static str) -> Self::Answer;
}

/// How many calls may be out, how large one may be, how many keys may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_in_flight: usize,
    pub max_batch: usize,
    /// Beyond this many waiting keys a caller gets [`BatchCall::not_sent`] at once.
    pub queue: usize,
    /// Longest a key waits in the queue; past it, it is answered [`BatchCall::not_sent`].
    pub max_wait: Duration,
}

struct Waiting<C: BatchCall> {
    key: C::Key,
    reply: oneshot::Sender<C::Answer>,
    since: Instant,
}

/// Keys waiting for a call, and how many calls are out.
struct State<C: BatchCall> {
    queue: Vec<Waiting<C>>,
    in_flight: usize,
}

struct Inner<C: BatchCall> {
    caller: C,
    limits: Limits,
    state: Mutex<State<C>>,
}

impl<C: BatchCall> Inner<C> {
    fn state(&self) -> MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the next batch off `queue`: up to `max_batch` keys whose callers still wait;
    /// callers that gave up are skipped and those that waited too long answered, until the
    /// batch has a key or the queue is empty.
    fn take_queued(&self, queue: &mut Vec<Waiting<C>>) -> Vec<Waiting<C>> {
        let now = Instant::now();
        let mut batch = Vec::new();
        while batch.is_empty() && !queue.is_empty() {
            let room = self.limits.max_batch.min(queue.len());
            for waiting in queue.drain(..room) {
                if waiting.reply.is_closed() {
                    continue;
                }
                if now.duration_since(waiting.since) > self.limits.max_wait {
                    let _ = waiting
                        .reply
                        .send(C::not_sent("waited too long for a call"));
                    continue;
                }
                batch.push(waiting);
            }
        }
        batch
    }
}

/// One call out: when it ends (or its future is dropped), the slot is freed, and the queue, if
/// any, goes out in a new call.
struct Slot<C: BatchCall>(Arc<Inner<C>>);

impl<C: BatchCall> Drop for Slot<C> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.queue.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Shutting down: the queued callers get `not_sent` answers.
            state.queue.clear();
            return;
        };
        let batch = self.0.take_queued(&mut state.queue);
        if batch.is_empty() {
            return;
        }
        state.in_flight += 1;
        drop(state);
        runtime.spawn(call_queued(Slot(self.0.clone()), batch));
    }
}

/// One call for queued keys, holding `slot`; every caller in it gets its answer.
async fn call_queued<C: BatchCall>(slot: Slot<C>, batch: Vec<Waiting<C>>) {
    // The queue is in arrival order: the first key waited longest.
    let waited = batch.first().map_or(Duration::ZERO, |w| w.since.elapsed());
    let (keys, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.key, w.reply)).unzip();
    let mut answers = slot.0.caller.call(keys, waited).await.into_iter();
    for reply in replies {
        let answer = answers
            .next()
            .unwrap_or_else(|| C::not_sent("the call gave fewer answers than keys"));
        let _ = reply.send(answer);
    }
}

/// Sends the keys of callers waiting at the same time in one call (see the module docs).
pub(crate) struct Coalescer<C: BatchCall> {
    inner: Arc<Inner<C>>,
}

impl<C: BatchCall> Clone for Coalescer<C> {
    fn clone(&self) -> Self {
        Coalescer {
            inner: self.inner.clone(),
        }
    }
}

impl<C: BatchCall> Coalescer<C> {
    pub fn new(caller: C, limits: Limits) -> Coalescer<C> {
        let limits = Limits {
            max_in_flight: limits.max_in_flight.max(1),
            max_batch: limits.max_batch.max(1),
            ..limits
        };
        Coalescer {
            inner: Arc::new(Inner {
                caller,
                limits,
                state: Mutex::new(State {
                    queue: Vec::new(),
                    in_flight: 0,
                }),
            }),
        }
    }

    /// What makes the calls.
    pub fn caller(&self) -> &C {
        &self.inner.caller
    }

    /// The call's answer for `key`.
    pub async fn ask(&self, key: C::Key) -> C::Answer {
        let queued = {
            let mut state = self.inner.state();
            if state.in_flight < self.inner.limits.max_in_flight {
                // Keys queue only while every call is out, and a finishing call sends them:
                // with a call free, nothing waits, and this key goes alone.
                state.in_flight += 1;
                Err(key)
            } else if state.queue.len() < self.inner.limits.queue {
                let (reply, answer) = oneshot::channel();
                state.queue.push(Waiting {
                    key,
                    reply,
                    since: Instant::now(),
                });
                Ok(answer)
            } else {
                return C::not_sent("too many calls waiting");
            }
        };
        match queued {
            Ok(answer) => answer
                .await
                .unwrap_or_else(|_| C::not_sent("the call was dropped")),
            Err(key) => {
                let _slot = Slot(self.inner.clone());
                self.inner
                    .caller
                    .call(vec![key], Duration::ZERO)
                    .await
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| C::not_sent("the call gave no answer"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::task::JoinHandle;

    /// How long a call takes, and how long the tests let spawned callers queue.
    const PAUSE: Duration = Duration::from_millis(200);
    const SETTLE: Duration = Duration::from_millis(50);

    /// Doubles each key after a pause, recording each call's size.
    struct Doubler {
        calls: Mutex<Vec<usize>>,
        out: AtomicUsize,
        most_out: AtomicUsize,
    }

    impl BatchCall for Arc<Doubler> {
        type Key = u64;
        type Answer = Result<u64, &'static str>;

        async fn call(&self, keys: Vec<u64>, _waited: Duration) -> Vec<Self::Answer> {
            let out = self.out.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_out.fetch_max(out, Ordering::SeqCst);
            self.calls.lock().unwrap().push(keys.len());
            tokio::time::sleep(PAUSE).await;
            self.out.fetch_sub(1, Ordering::SeqCst);
            keys.into_iter().map(|k| Ok(k * 2)).collect()
        }

        fn not_sent(why: &'static str) -> Self::Answer {
            Err(why)
        }
    }

    /// A coalescer over a fresh [`Doubler`] (whose key waits are never too long unless
    /// `max_wait` says so).
    fn doubler(
        max_in_flight: usize,
        max_batch: usize,
        queue: usize,
        max_wait: Duration,
    ) -> (Arc<Doubler>, Arc<Coalescer<Arc<Doubler>>>) {
        let d = Arc::new(Doubler {
            calls: Mutex::new(Vec::new()),
            out: AtomicUsize::new(0),
            most_out: AtomicUsize::new(0),
        });
        let limits = Limits {
            max_in_flight,
            max_batch,
            queue,
            max_wait,
        };
        (d.clone(), Arc::new(Coalescer::new(d, limits)))
    }

    const LONG: Duration = Duration::from_secs(60);

    /// `key` asked by a task of its own.
    fn ask_later(
        c: &Arc<Coalescer<Arc<Doubler>>>,
        key: u64,
    ) -> JoinHandle<Result<u64, &'static str>> {
        let c = c.clone();
        tokio::spawn(async move { c.ask(key).await })
    }

    fn calls(d: &Doubler) -> Vec<usize> {
        d.calls.lock().unwrap().clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_calls_and_each_gets_its_own_answer() {
        let (d, c) = doubler(2, 16, 1000, LONG);
        let tasks: Vec<_> = (0..200u64).map(|k| (k, ask_later(&c, k))).collect();
        for (k, t) in tasks {
            assert_eq!(t.await.unwrap(), Ok(k * 2));
        }
        let calls = calls(&d);
        assert_eq!(calls.iter().sum::<usize>(), 200);
        assert!(calls.iter().all(|&n| (1..=16).contains(&n)), "{calls:?}");
        assert!(calls.len() <= 40, "{} calls for 200 keys", calls.len());
        assert!(d.most_out.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test]
    async fn a_lone_caller_makes_its_own_call_and_a_full_queue_refuses() {
        let (d, c) = doubler(1, 4, 2, LONG);
        assert_eq!(c.ask(21).await, Ok(42));
        assert_eq!(calls(&d), vec![1]);
        // One call out, two waiting: the fourth caller is refused at once.
        let first = ask_later(&c, 1);
        tokio::time::sleep(SETTLE).await;
        let queued: Vec<_> = (2..4u64).map(|k| ask_later(&c, k)).collect();
        tokio::time::sleep(SETTLE).await;
        assert_eq!(c.ask(9).await, Err("too many calls waiting"));
        assert_eq!(first.await.unwrap(), Ok(2));
        for (k, t) in (2..4u64).zip(queued) {
            assert_eq!(t.await.unwrap(), Ok(k * 2));
        }
        assert_eq!(calls(&d), vec![1, 1, 2]);
    }

    #[tokio::test]
    async fn callers_that_went_away_are_not_sent() {
        let (d, c) = doubler(1, 8, 100, LONG);
        let first = ask_later(&c, 1);
        tokio::time::sleep(SETTLE).await;
        let gone: Vec<_> = (10..13u64).map(|k| ask_later(&c, k)).collect();
        let kept = ask_later(&c, 5);
        tokio::time::sleep(SETTLE).await;
        for t in &gone {
            t.abort();
        }
        assert_eq!(first.await.unwrap(), Ok(2));
        assert_eq!(kept.await.unwrap(), Ok(10));
        assert_eq!(calls(&d), vec![1, 1]);
    }

    #[tokio::test]
    async fn a_key_that_waited_past_max_wait_is_not_sent() {
        let (d, c) = doubler(1, 8, 100, Duration::from_millis(20));
        let first = ask_later(&c, 1);
        tokio::time::sleep(SETTLE).await;
        // Queued behind a 200 ms call with 20 ms to wait: refused when the call ends.
        let started = Instant::now();
        assert_eq!(c.ask(2).await, Err("waited too long for a call"));
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert_eq!(first.await.unwrap(), Ok(2));
        // Nothing waits now: the next key goes out at once.
        assert_eq!(c.ask(3).await, Ok(6));
        assert_eq!(calls(&d), vec![1, 1]);
    }
}
